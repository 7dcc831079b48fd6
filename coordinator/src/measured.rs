//! Measured profiles from outside jigsaw: the ParvaGPU profile format, parsed and converted
//! to the planner's profile table (`jigsaw profiles import --format parvagpu`).
//!
//! ParvaGPU (SC'24, repository `MunQ-Lee/ParvaGPU_SC24`, folder `prof_data/`, MIT licence)
//! measured eight PyTorch models on an A100 80GB over MIG instance × batch × MPS processes.
//! One file per model:
//!
//! ```text
//! Mig instance,Batch size,Workload Number,Throughput,Latency
//! 1,1,1,196.762,0.005
//! ```
//!
//! * `Mig instance`: GPCs (compute slices) of the MIG instance, 1, 2, 3, 4 or 7; mapped to
//!   the GPU's profile with that many compute slices and the fewest memory slices
//!   (`1g.10gb`, `2g.20gb`, `3g.40gb`, `4g.40gb`, `7g.80gb` on an A100 80GB);
//! * `Batch size`; `Workload Number`: identical MPS processes sharing the instance;
//! * `Throughput`: items/s of **one** process; `Latency`: **mean** seconds per batch of one
//!   process, rounded to 1 ms. `…,0,0` means not measured (or out of memory).
//!
//! Conversion ([`to_profile_table`]): the instance throughput is `Throughput × processes`;
//! the mean batch latency is taken as `Batch size / Throughput` (the same measurement,
//! without the 1 ms rounding; the parser checks that `Latency` agrees within rounding) and
//! written to a mean-latency profile file (`mean_ms` column, see
//! [`jigsaw_protocol::profile`]), from which the planner derives its p95 estimate. Rows
//! the planner cannot use are skipped and listed ([`Skip`]): not measured, MPS levels
//! above 4, batches outside [`BATCH_SIZES`], and **copies**: a row whose `Throughput` and
//! `Latency` are identical to the row with one process fewer (same instance and batch) is
//! taken for a copied line, not a measurement (the published files have six; resnet50's
//! `2,32,4` repeats `2,32,3`), and dropped, so the earlier row stands.
//!
//! The parser is pure: text in, points or a [`MeasuredError`] naming file, 1-based line
//! and 1-based character column out.

use jigsaw_protocol::catalogue::{GpuModel, MigProfile, MPS_LEVELS};
use jigsaw_protocol::profile::{LatencyStat, ProfileRow, ProfileTable, BATCH_SIZES, P95_OVER_MEAN};
use std::collections::BTreeMap;

/// The header of a ParvaGPU profile file.
pub const PARVAGPU_HEADER: &str = "Mig instance,Batch size,Workload Number,Throughput,Latency";

const COLUMNS: [&str; 5] = ["Mig instance", "Batch size", "Workload Number", "Throughput", "Latency"];

/// Largest gap, ms, allowed between `Latency` and `Batch size / Throughput` before a row is
/// rejected: the 1 ms rounding of `Latency`, plus 0.5 % of the mean for other exports.
pub const LATENCY_ROUNDING_MS: f64 = 0.5;

/// One measured configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredPoint {
    /// 1-based line in the source file.
    pub line: usize,
    /// MIG profile name (`3g.40gb`).
    pub mig_profile: &'static str,
    /// Batch size.
    pub batch: u32,
    /// MPS processes in the instance.
    pub procs: u8,
    /// Items/s of one process.
    pub proc_rps: f64,
    /// Mean seconds per batch of one process as the file states it (rounded).
    pub latency_s: f64,
}

impl MeasuredPoint {
    /// Mean batch latency of one process, ms: `batch / proc_rps`.
    pub fn mean_ms(&self) -> f64 {
        1e3 * f64::from(self.batch) / self.proc_rps
    }

    /// Items/s of the whole instance (all processes).
    pub fn instance_rps(&self) -> f64 {
        self.proc_rps * f64::from(self.procs)
    }
}

/// Why a row of a measured file is not converted.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// `…,0,0`: not measured or out of memory.
    NotMeasured,
    /// Identical to the row with one process fewer (that line): a copy, not a measurement.
    CopyOf(usize),
    /// More MPS processes than the planner considers (1–4).
    MpsLevel(u8),
    /// A batch size the planner does not consider.
    Batch(u32),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotMeasured => f.write_str("not measured (0,0)"),
            Skip::CopyOf(l) => write!(f, "identical to line {l} (one process fewer): a copy, dropped"),
            Skip::MpsLevel(k) => write!(f, "{k} MPS processes (the planner considers 1-4)"),
            Skip::Batch(b) => write!(f, "batch {b} (the planner considers {BATCH_SIZES:?})"),
        }
    }
}

/// A parsed measured file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasuredFile {
    /// The usable points, in file order.
    pub points: Vec<MeasuredPoint>,
    /// Skipped rows: (1-based line, why).
    pub skipped: Vec<(usize, Skip)>,
}

/// A malformed measured file: file, 1-based line, 1-based character column, the column's
/// name and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}:{line}:{column}: {field}: {message}")]
pub struct MeasuredError {
    /// File path.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based character column where the offending field starts.
    pub column: usize,
    /// Name of the offending column (`header` for the header line).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The MIG profile of `gpu` with `gpcs` compute slices and the fewest memory slices (the
/// plain `Ng` profile, not `1g.20gb` or `+me`).
pub fn profile_for_gpcs(gpu: GpuModel, gpcs: u8) -> Option<&'static MigProfile> {
    gpu.spec().profiles.iter().filter(|p| p.plannable() && p.compute_slices == gpcs).min_by_key(|p| p.mem_slices)
}

/// Parse a ParvaGPU profile file measured on `gpu`.
pub fn parse_parvagpu(text: &str, path: &str, gpu: GpuModel) -> Result<MeasuredFile, MeasuredError> {
    let err = |line: usize, column: usize, field: &str, message: String| MeasuredError {
        path: path.into(),
        line,
        column,
        field: field.into(),
        message,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)));
    let Some((_, header)) = lines.next() else {
        return Err(err(1, 1, "header", format!("empty file; expected `{PARVAGPU_HEADER}`")));
    };
    let header = header.strip_prefix('\u{feff}').unwrap_or(header);
    if header.trim() != PARVAGPU_HEADER {
        let (names, starts) = split(header);
        let at = names.iter().zip(COLUMNS).position(|(a, b)| a.trim() != b).unwrap_or(names.len().min(COLUMNS.len()));
        let column = starts.get(at).copied().unwrap_or(header.chars().count() + 1);
        return Err(err(1, column, "header", format!("expected `{PARVAGPU_HEADER}`, got `{}`", header.trim())));
    }
    let mut out = MeasuredFile::default();
    // (profile, batch, procs) -> (line, throughput, latency) of every measured row.
    let mut seen: BTreeMap<(&'static str, u32, u8), (usize, f64, f64)> = BTreeMap::new();
    for (ln, raw) in lines {
        if raw.trim().is_empty() {
            continue;
        }
        let (f, starts) = split(raw);
        if f.len() != COLUMNS.len() {
            let column = starts.get(COLUMNS.len()).copied().unwrap_or(raw.chars().count() + 1);
            let field = COLUMNS[f.len().min(COLUMNS.len() - 1)];
            return Err(err(
                ln,
                column,
                field,
                format!("expected {} comma-separated fields, got {}", COLUMNS.len(), f.len()),
            ));
        }
        let int = |c: usize| -> Result<u32, MeasuredError> {
            let v = f[c].trim();
            match v.parse::<u32>() {
                Ok(0) => Err(err(ln, starts[c], COLUMNS[c], "must be at least 1, got 0".into())),
                Ok(x) => Ok(x),
                Err(_) if v.parse::<f64>().is_ok_and(|x| x < 0.0) => {
                    Err(err(ln, starts[c], COLUMNS[c], format!("must not be negative, got `{v}`")))
                }
                Err(_) => Err(err(ln, starts[c], COLUMNS[c], format!("`{v}` is not a whole number"))),
            }
        };
        let num = |c: usize| -> Result<f64, MeasuredError> {
            let v = f[c].trim();
            let x: f64 = v.parse().map_err(|_| err(ln, starts[c], COLUMNS[c], format!("`{v}` is not a number")))?;
            if !x.is_finite() || x < 0.0 {
                return Err(err(ln, starts[c], COLUMNS[c], format!("must be a finite number >= 0, got `{v}`")));
            }
            Ok(x)
        };
        let gpcs = int(0)?;
        let profile = u8::try_from(gpcs).ok().and_then(|g| profile_for_gpcs(gpu, g)).ok_or_else(|| {
            let mut known: Vec<String> =
                gpu.spec().profiles.iter().filter(|p| p.plannable()).map(|p| p.compute_slices.to_string()).collect();
            known.dedup();
            err(
                ln,
                starts[0],
                COLUMNS[0],
                format!("no MIG profile of {gpu} has {gpcs} GPCs (known: {})", known.join(", ")),
            )
        })?;
        let batch = int(1)?;
        let procs =
            u8::try_from(int(2)?).map_err(|_| err(ln, starts[2], COLUMNS[2], "more than 255 processes".into()))?;
        let (rps, lat) = (num(3)?, num(4)?);
        let key = (profile.name, batch, procs);
        if let Some((first, ..)) = seen.get(&key) {
            return Err(err(ln, starts[0], COLUMNS[0], format!("configuration repeated (first on line {first})")));
        }
        if rps == 0.0 && lat == 0.0 {
            seen.insert(key, (ln, 0.0, 0.0));
            out.skipped.push((ln, Skip::NotMeasured));
            continue;
        }
        if rps == 0.0 || lat == 0.0 {
            let c = if rps == 0.0 { 3 } else { 4 };
            return Err(err(
                ln,
                starts[c],
                COLUMNS[c],
                "is 0 while the other measurement is not (0,0 = not measured)".into(),
            ));
        }
        let point = MeasuredPoint { line: ln, mig_profile: profile.name, batch, procs, proc_rps: rps, latency_s: lat };
        let gap = (lat * 1e3 - point.mean_ms()).abs();
        if gap > LATENCY_ROUNDING_MS + 0.005 * point.mean_ms() {
            return Err(err(
                ln,
                starts[4],
                COLUMNS[4],
                format!(
                    "{lat} s disagrees with Batch size / Throughput = {:.3} ms by more than the 1 ms rounding",
                    point.mean_ms()
                ),
            ));
        }
        seen.insert(key, (ln, rps, lat));
        let copy_of = procs
            .checked_sub(1)
            .and_then(|k| seen.get(&(profile.name, batch, k)))
            .filter(|(_, r, l)| *r == rps && *l == lat)
            .map(|(l, ..)| *l);
        if let Some(l) = copy_of {
            out.skipped.push((ln, Skip::CopyOf(l)));
        } else if !MPS_LEVELS.contains(&procs) {
            out.skipped.push((ln, Skip::MpsLevel(procs)));
        } else if !BATCH_SIZES.contains(&batch) {
            out.skipped.push((ln, Skip::Batch(batch)));
        } else {
            out.points.push(point);
        }
    }
    Ok(out)
}

/// Fields of a CSV line and the 1-based character column each starts at.
fn split(line: &str) -> (Vec<&str>, Vec<usize>) {
    let mut fields = Vec::new();
    let mut starts = Vec::new();
    let mut col = 1;
    for f in line.split(',') {
        fields.push(f);
        starts.push(col);
        col += f.chars().count() + 1;
    }
    (fields, starts)
}

/// The planner's profile table of one measured model: one row per usable point, with a
/// mean latency column ([`LatencyStat::Mean`]; the planner's p95 is `P95_OVER_MEAN` × mean).
pub fn to_profile_table(file: &MeasuredFile, task: &str, variant: &str, gpu: GpuModel) -> ProfileTable {
    let rows = file.points.iter().map(|p| ProfileRow {
        task: task.into(),
        variant: variant.into(),
        gpu,
        mig_profile: p.mig_profile.into(),
        mps: p.procs,
        batch: p.batch,
        // Rounded as the CSV writes it, so the file reads back to the same table.
        p95_ms: (p.mean_ms() * 1e3).round() / 1e3 * P95_OVER_MEAN,
        throughput_rps: (p.instance_rps() * 1e2).round() / 1e2,
    });
    ProfileTable::from_rows(rows).with_latency_stat(LatencyStat::Mean)
}

/// The comment lines of a converted file: source, licence, units and what was skipped.
pub fn provenance(source: &str, file: &MeasuredFile, gpu: GpuModel) -> Vec<String> {
    let mut c = vec![
        format!(
            "MEASURED profiles (not synthetic), converted by `jigsaw profiles import --format parvagpu` from {source}."
        ),
        "Source: ParvaGPU artifact (SC'24), github.com/MunQ-Lee/ParvaGPU_SC24, prof_data/;".into(),
        "Copyright (c) 2024 sslab6943 (the ParvaGPU authors), MIT licence: LICENSE in this folder.".into(),
        format!("Measured with PyTorch on {gpu}. mean_ms = MEAN batch latency of one MPS process"),
        "(Batch size / per-process Throughput); it is not a p95: the planner uses".into(),
        format!("{P95_OVER_MEAN} x mean as its p95 (P95_OVER_MEAN, an assumption). throughput_rps ="),
        "per-process Throughput x processes (the whole MIG instance).".into(),
    ];
    let mut by_reason: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (l, s) in &file.skipped {
        let key = match s {
            Skip::NotMeasured => "not measured (0,0)".to_string(),
            Skip::MpsLevel(_) => "5 MPS processes".to_string(),
            Skip::Batch(b) => format!("batch {b}"),
            Skip::CopyOf(_) => s.to_string(),
        };
        by_reason.entry(key).or_default().push(*l);
    }
    c.push(format!("{} rows kept; skipped:", file.points.len()));
    for (reason, lines) in by_reason {
        if lines.len() <= 3 {
            let ls: Vec<String> = lines.iter().map(usize::to_string).collect();
            c.push(format!("  {reason}: line {}", ls.join(", ")));
        } else {
            c.push(format!("  {reason}: {} rows", lines.len()));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: GpuModel = GpuModel::A100_80gb;

    fn parse(body: &str) -> Result<MeasuredFile, MeasuredError> {
        parse_parvagpu(&format!("{PARVAGPU_HEADER}\n{body}"), "m.csv", GPU)
    }

    #[test]
    fn converts_per_process_figures_to_instance_rows() {
        let f = parse("1,1,1,196.762,0.005\n1,1,2,125.968,0.008\n7,32,3,0,0\n7,256,1,4000,0.064\n").expect("parses");
        assert_eq!(f.points.len(), 2);
        assert_eq!(f.skipped, vec![(4, Skip::NotMeasured), (5, Skip::Batch(256))]);
        let t = to_profile_table(&f, "r", "r", GPU);
        assert_eq!(t.latency_stat(), LatencyStat::Mean);
        let r = t.get("r", "r", GPU, "1g.10gb", 2, 1).expect("row");
        assert!((r.throughput_rps - 251.94).abs() < 1e-9, "{}", r.throughput_rps);
        let mean = t.source_mean_ms(r).expect("mean");
        assert!((mean - 7.939).abs() < 1e-9, "{mean}"); // 1 / 125.968 s, rounded as written
                                                        // The converted table writes and reads back unchanged.
        let csv = t.to_csv(&provenance("m.csv", &f, GPU));
        assert!(csv.contains("MIT licence") && csv.contains("MEAN batch latency"));
        assert_eq!(ProfileTable::parse_csv(&csv, "out.csv").expect("reads back"), t);
    }

    #[test]
    fn gpcs_map_to_the_plain_profiles() {
        let names: Vec<&str> =
            [1, 2, 3, 4, 7].iter().filter_map(|&g| profile_for_gpcs(GPU, g)).map(|p| p.name).collect();
        assert_eq!(names, ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]);
    }

    #[test]
    fn a_row_equal_to_one_process_fewer_is_dropped_as_a_copy() {
        let f = parse("2,32,3,271.594,0.118\n2,32,4,271.594,0.118\n2,32,5,200.0,0.16\n").expect("parses");
        assert_eq!(f.points.iter().map(|p| p.procs).collect::<Vec<_>>(), [3]);
        assert_eq!(f.skipped, vec![(3, Skip::CopyOf(2)), (4, Skip::MpsLevel(5))]);
    }

    #[test]
    fn each_malformed_input_names_line_column_and_field() {
        let cases: [(&str, &str, &str); 10] = [
            ("1,1,1,abc,0.005", "m.csv:2:7: Throughput", "not a number"),
            ("1,1,1,-3.5,0.005", "m.csv:2:7: Throughput", ">= 0"),
            ("1,1,1,NaN,0.005", "m.csv:2:7: Throughput", ">= 0"),
            ("1,1,1,196.7,inf", "m.csv:2:13: Latency", ">= 0"),
            ("5,1,1,196.7,0.005", "m.csv:2:1: Mig instance", "no MIG profile of a100-80gb has 5 GPCs"),
            ("1,x,1,196.7,0.005", "m.csv:2:3: Batch size", "not a whole number"),
            ("1,1,-2,196.7,0.005", "m.csv:2:5: Workload Number", "negative"),
            ("1,1,1,196.7", "m.csv:2:12: Latency", "expected 5 comma-separated fields, got 4"),
            ("1,1,1,196.7,0.005,9", "m.csv:2:19: Latency", "got 6"),
            ("1,1,1,196.7,0.020", "m.csv:2:13: Latency", "disagrees"),
        ];
        for (row, at, what) in cases {
            // A good first row sits on line 2, so the bad one is on line 3.
            let e = parse(&format!("1,2,1,274.088,0.007\n{row}\n")).map(|_| ()).err();
            let e = e.unwrap_or_else(|| panic!("{row} should be rejected")).to_string();
            let at = at.replace(":2:", ":3:");
            assert!(e.starts_with(&at) && e.contains(what), "{row}: {e}");
        }
        let e = parse("1,1,1,196.7,0.005\n1,1,1,190.0,0.005\n").expect_err("repeat").to_string();
        assert!(e.starts_with("m.csv:3:1: Mig instance") && e.contains("first on line 2"), "{e}");
        let e = parse("1,1,1,0,0.005\n").expect_err("half zero").to_string();
        assert!(e.starts_with("m.csv:2:7: Throughput"), "{e}");
    }

    #[test]
    fn a_wrong_header_names_the_first_wrong_column() {
        let e = parse_parvagpu("Mig instance,Batch,Workload Number,Throughput,Latency\n", "h.csv", GPU);
        let e = e.expect_err("bad header").to_string();
        assert!(e.starts_with("h.csv:1:14: header: expected"), "{e}");
        let e = parse_parvagpu("", "h.csv", GPU).expect_err("empty").to_string();
        assert!(e.starts_with("h.csv:1:1: header: empty file"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(rows in proptest::collection::vec("[0-9.,e-]{0,30}", 0..6)) {
            let _ = parse(&rows.join("\n"));
        }
    }
}
