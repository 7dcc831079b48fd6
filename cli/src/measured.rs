//! `jigsaw profiles import` and `jigsaw profiles calibrate`: the file handling around the
//! pure parser ([`jigsaw_coordinator::measured`]) and the calibrated profile model
//! ([`jigsaw_coordinator::synth`]).

use crate::args::ImportFormat;
use anyhow::{bail, Context, Result};
use jigsaw_coordinator::synth::{self, Constants};
use jigsaw_coordinator::{calibrate, measured};
use jigsaw_protocol::catalogue::GpuModel;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The `*.csv` files of `dir`, sorted by name, with their stems.
pub fn csv_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "csv") {
            let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_string);
            let stem = stem.with_context(|| format!("{}: file name is not UTF-8", path.display()))?;
            files.push((stem, path));
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: no .csv files", dir.display());
    }
    Ok(files)
}

/// `jigsaw profiles import`: convert every source file of `dir`; the model name (task and
/// variant) is the file stem. Every file is checked before anything is written.
pub fn cmd_import(format: ImportFormat, dir: &Path, gpu: GpuModel, out: Option<&Path>) -> Result<String> {
    let ImportFormat::Parvagpu = format;
    let mut converted = Vec::new();
    for (model, path) in csv_files(dir)? {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {shown}"))?;
        let file = measured::parse_parvagpu(&text, &shown, gpu)?;
        let source = format!("prof_data/{model}.csv");
        let csv =
            measured::to_profile_table(&file, &model, &model, gpu).to_csv(&measured::provenance(&source, &file, gpu));
        converted.push((model, file, csv));
    }
    let mut report = String::new();
    if let Some(out) = out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    for (model, file, csv) in &converted {
        let copies: Vec<String> = file
            .skipped
            .iter()
            .filter(|(_, s)| matches!(s, measured::Skip::CopyOf(_)))
            .map(|(l, s)| format!("line {l} {s}"))
            .collect();
        let dest = match out {
            Some(o) => {
                let p = o.join(format!("{model}.csv"));
                std::fs::write(&p, csv).with_context(|| format!("writing {}", p.display()))?;
                format!("wrote {}", p.display())
            }
            None => "checked (no --out: nothing written)".to_string(),
        };
        let _ = writeln!(
            report,
            "{model}: {} rows, {} skipped; {dest}{}",
            file.points.len(),
            file.skipped.len(),
            if copies.is_empty() { String::new() } else { format!("\n  {}", copies.join("\n  ")) }
        );
    }
    Ok(report)
}

/// The measured samples of every `<model>.csv` in `data`, described by `apps/<model>.toml`.
pub fn load_measured(data: &Path, apps: &Path) -> Result<Vec<(String, Vec<calibrate::Sample>)>> {
    let mut out = Vec::new();
    for (model, path) in csv_files(data)? {
        let table = crate::planning::load_profiles(&path)?;
        let app = crate::planning::load_app(&apps.join(format!("{model}.toml")))?;
        out.push((model, calibrate::samples(&app, &table, &path.display().to_string())?));
    }
    Ok(out)
}

fn pct(x: f64) -> String {
    format!("{:5.1}", 100.0 * x)
}

fn table(title: &str, rows: &[calibrate::ModelResult], goal: bool) -> String {
    let mut s = format!("{title}\n");
    let _ = writeln!(
        s,
        "{:<12} {:>5} | latency %: {:>5} {:>5} {:>6} | throughput %: {:>5} {:>5} {:>6}{}",
        "model",
        "rows",
        "med",
        "p90",
        "max",
        "med",
        "p90",
        "max",
        if goal { " | goal  | mem" } else { "" }
    );
    for r in rows {
        let ok = [r.latency, r.throughput].iter().all(|e| e.median <= 0.15 && e.p90 <= 0.35);
        let _ = writeln!(
            s,
            "{:<12} {:>5} |            {} {} {:>6} |               {} {} {:>6}{}",
            r.model,
            r.rows,
            pct(r.latency.median),
            pct(r.latency.p90),
            pct(r.latency.max),
            pct(r.throughput.median),
            pct(r.throughput.p90),
            pct(r.throughput.max),
            if goal {
                format!(" | {:<5} | {:>3}", if ok { "met" } else { "MISS" }, r.memory_misses)
            } else {
                String::new()
            }
        );
    }
    s
}

fn constants(c: &Constants) -> String {
    Constants::NAMES.iter().zip(c.to_array()).map(|(n, v)| format!("{n} {v:.4}")).collect::<Vec<_>>().join(", ")
}

/// `jigsaw profiles calibrate`: the baseline and the leave-one-model-out table.
pub fn cmd_calibrate(data: &Path, apps: &Path) -> Result<String> {
    let models = load_measured(data, apps)?;
    if models.len() < 2 {
        bail!("{}: leave-one-model-out needs at least two models", data.display());
    }
    let mut out = format!(
        "profile model vs measured profiles in {} ({} models; rows: MPS 1-4, batch 1-128; errors are |predicted / measured - 1| of the mean batch latency and the segment throughput)\n\n",
        data.display(),
        models.len()
    );
    out += &table(
        "baseline: the uncalibrated model (no host cost, FP16 weights), same rows",
        &calibrate::baseline(&models),
        false,
    );
    out += "\n";
    let lomo = calibrate::leave_one_model_out(&models);
    out += &table(
        "calibrated, leave-one-model-out: constants fitted on the other models, this one never seen (goal: median <= 15 %, p90 <= 35 %; mem = measured rows the memory check would drop)",
        &lomo,
        true,
    );
    out += "\nconstants fitted without each model:\n";
    for r in &lomo {
        if let Some(c) = &r.constants {
            let _ = writeln!(out, "  without {:<12} {}", r.model, constants(c));
        }
    }
    let all: Vec<calibrate::Sample> = models.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let c = calibrate::fit(&all);
    let _ = writeln!(out, "fitted on all {} models ({} rows): {}", models.len(), all.len(), constants(&c));
    let _ = writeln!(out, "shipped (synth::CALIBRATED):     {}", constants(&synth::CALIBRATED));
    Ok(out)
}
