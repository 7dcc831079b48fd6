//! The planner commands: `jigsaw plan`, `analyze max-demand`, `bench planner`,
//! `profiles synth` and `demo`, with the files they read and the text they print.

use crate::args::{Inputs, PlanArgs};
use anyhow::{bail, Context, Result};
use jigsaw_agent::config::Config;
use jigsaw_agent::node::WallClock;
use jigsaw_coordinator::analyze;
use jigsaw_coordinator::evaluate::evaluate;
use jigsaw_coordinator::planner::{Goal, PlannerConfig, Problem};
use jigsaw_coordinator::{synth, HighsSolver, SearchSpace};
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::plan::Plan;
use jigsaw_protocol::profile::{LatencyStat, ProfileTable, P95_OVER_MEAN};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Read and validate an app spec.
pub fn load_app(path: &Path) -> Result<AppSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading app spec {}", path.display()))?;
    Ok(AppSpec::parse(&text, &path.display().to_string())?)
}

/// Read a profile CSV.
pub fn load_profiles(path: &Path) -> Result<ProfileTable> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading profiles {}", path.display()))?;
    Ok(ProfileTable::parse_csv(&text, &path.display().to_string())?)
}

/// The planner settings of `--config` (defaults without one) and the solver they ask for.
pub fn planner_config(cli_config: Option<&Path>) -> Result<(PlannerConfig, HighsSolver)> {
    let (cfg, path) = match cli_config {
        Some(p) => (Config::load(&p.display().to_string())?, p.display().to_string()),
        None => (Config::default(), "<defaults>".to_string()),
    };
    let threads = cfg.planner.threads;
    Ok((cfg.planner_config(&path)?, HighsSolver { threads }))
}

fn check_inputs(i: &Inputs) -> Result<()> {
    if i.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    Ok(())
}

/// `jigsaw plan`.
pub fn cmd_plan(a: &PlanArgs, config: Option<&Path>) -> Result<String> {
    check_inputs(&a.inputs)?;
    if !(a.demand.is_finite() && a.demand > 0.0) {
        bail!("--demand must be a positive number of requests/s, got {}", a.demand);
    }
    let app = load_app(&a.inputs.app)?;
    let profiles = load_profiles(&a.inputs.profiles)?;
    let (cfg, solver) = planner_config(config)?;
    let pb = Problem { app: &app, profiles: &profiles, gpu: a.inputs.gpu, gpus: a.inputs.gpus, space: a.space };
    let plan = jigsaw_coordinator::plan(pb, Goal::MinCost { demand: a.demand }, &cfg, &solver, &WallClock::new())?;
    let report = evaluate(&plan, &app, &profiles);
    if !report.ok() {
        bail!("internal error: the planner returned a plan that fails the evaluator: {:?}", report.violations);
    }
    if a.json {
        return Ok(serde_json::to_string_pretty(&plan)? + "\n");
    }
    Ok(render_plan(&plan) + &latency_note(&profiles))
}

/// What the latencies of a mean-latency profile file mean for the plan (empty for p95 files).
pub fn latency_note(profiles: &ProfileTable) -> String {
    match profiles.latency_stat() {
        LatencyStat::P95 => String::new(),
        LatencyStat::Mean => format!(
            "profiles: measured MEAN batch latencies; the planner's p95 is {P95_OVER_MEAN} x mean (P95_OVER_MEAN, an assumption)\n"
        ),
    }
}

/// Human-readable plan.
pub fn render_plan(p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan for `{}` in {} on {} x {} at {:.1} req/s",
        p.app, p.space, p.gpus_available, p.gpu_model, p.demand_rps
    );
    let _ = writeln!(
        s,
        "  accuracy {:.4} of max (SLO {:.2}), latency bound {:.1} ms (SLO {:.0} ms), {} slices on {} GPU(s)",
        p.accuracy, p.accuracy_slo, p.latency_bound_ms, p.latency_slo_ms, p.slices_used, p.gpus_used
    );
    let _ = writeln!(
        s,
        "  solved in {:.0} ms, gap {:.2e}; latency splits {} enumerated, {} solved, {} pruned by bound; levels: {}",
        p.stats.solve_ms,
        p.stats.gap,
        p.stats.splits_total,
        p.stats.splits_solved,
        p.stats.splits_pruned,
        p.stats.latency_levels
    );
    if let Some(n) = &p.stats.note {
        let _ = writeln!(s, "  note: {n}");
    }
    let _ = writeln!(s, "tasks:");
    for t in &p.tasks {
        let _ = writeln!(
            s,
            "  {:<10} budget {:>7.1} ms  slowest p95 {:>7.1} ms  demand {:>9.1}/s  capacity {:>9.1}/s  {} slices",
            t.task, t.latency_budget_ms, t.slowest_p95_ms, t.demand_rps, t.capacity_rps, t.slices
        );
        for v in &t.variants {
            let _ = writeln!(
                s,
                "      {:<20} acc {:.4}  {:>3} inst  {:>9.1}/s  weight {:.3}",
                v.variant, v.accuracy, v.instances, v.capacity_rps, v.weight
            );
        }
    }
    let _ = writeln!(s, "gpus:");
    for g in &p.gpus {
        let parts: Vec<String> = g
            .instances
            .iter()
            .map(|i| format!("{}@{} {}/{} mps{} b{}", i.mig_profile, i.start, i.task, i.variant, i.mps, i.batch))
            .collect();
        let _ = writeln!(s, "  gpu {:>4}: {}", g.gpu, parts.join(" | "));
    }
    s
}

/// `jigsaw analyze max-demand`.
pub fn cmd_max_demand(inputs: &Inputs, svg_path: &Path, config: Option<&Path>) -> Result<String> {
    check_inputs(inputs)?;
    let app = load_app(&inputs.app)?;
    let profiles = load_profiles(&inputs.profiles)?;
    let (cfg, solver) = planner_config(config)?;
    let pb = Problem { app: &app, profiles: &profiles, gpu: inputs.gpu, gpus: inputs.gpus, space: SearchSpace::FULL };
    let rows = analyze::max_demand(pb, &SearchSpace::all(), &cfg, &solver, &WallClock::new());
    let slices = inputs.gpus * 7;
    let title = format!(
        "{}: max serviceable demand on {} x {} (profiles {})",
        app.name,
        inputs.gpus,
        inputs.gpu,
        inputs.profiles.display()
    );
    std::fs::write(svg_path, analyze::svg(&rows, &title, slices))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    let mut out = format!("{title}\n");
    out += &analyze::table(&rows, slices);
    let get = |sp: &str| rows.iter().find(|r| r.space.to_string() == sp).and_then(|r| r.demand);
    if let (Some(full), Some(at)) = (get("A+S+T"), get("A+T")) {
        let _ = writeln!(out, "A+S+T / A+T = {:.2}x (the paper reports 11.3x for its traffic app)", full / at);
    }
    out += &latency_note(&profiles);
    let _ = writeln!(out, "chart: {}", svg_path.display());
    Ok(out)
}

/// `jigsaw profiles synth`.
pub fn cmd_synth(app: &Path, gpu: GpuModel) -> Result<String> {
    let app = load_app(app)?;
    Ok(synth::generate(&app, gpu).to_csv(&synth::provenance(&app, gpu)))
}

/// The example apps: (name, app path, profile path).
pub fn examples(dir: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    ["social", "traffic", "ar"]
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                dir.join("apps").join(format!("{n}.toml")),
                dir.join("profiles").join(format!("{n}-h100-80gb.csv")),
            )
        })
        .collect()
}

/// `jigsaw bench planner`.
pub fn cmd_bench_planner(dir: &Path, gpus: &[usize], reps: usize, config: Option<&Path>) -> Result<String> {
    let (cfg, solver) = planner_config(config)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "planner bench: min-cost plan at 60% of the max serviceable demand, A+S+T, h100-80gb (synthetic profiles)"
    );
    let _ = writeln!(
        out,
        "time limit {} s, mip gap {}, median of {} run(s)",
        cfg.time_limit_s,
        cfg.mip_rel_gap,
        reps.max(1)
    );
    let _ = writeln!(
        out,
        "{:<8} {:>6} {:>10} {:>11} {:>11} {:>9} {:>8} {:>10}",
        "app", "GPUs", "demand/s", "max-dem ms", "plan ms", "gap", "slices", "splits"
    );
    for (name, app_path, prof_path) in examples(dir) {
        let app = load_app(&app_path)?;
        let profiles = load_profiles(&prof_path)?;
        for &g in gpus {
            let pb =
                Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: g, space: SearchSpace::FULL };
            let clock = WallClock::new();
            let mut md_times = Vec::new();
            let mut max = None;
            for _ in 0..reps.max(1) {
                let p = jigsaw_coordinator::plan(pb, Goal::MaxDemand, &cfg, &solver, &clock)?;
                md_times.push(p.stats.solve_ms);
                max = Some(p);
            }
            let max = max.context("no run")?;
            let demand = (0.6 * max.demand_rps * 10.0).floor() / 10.0;
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..reps.max(1) {
                let p = jigsaw_coordinator::plan(pb, Goal::MinCost { demand }, &cfg, &solver, &clock)?;
                let rep = evaluate(&p, &app, &profiles);
                if !rep.ok() {
                    bail!("plan fails the evaluator: {:?}", rep.violations);
                }
                times.push(p.stats.solve_ms);
                last = Some(p);
            }
            let p = last.context("no run")?;
            let _ = writeln!(
                out,
                "{:<8} {:>6} {:>10.1} {:>11.0} {:>11.0} {:>9.1e} {:>8} {:>10}",
                name,
                g,
                demand,
                median(&mut md_times),
                median(&mut times),
                p.stats.gap,
                p.slices_used,
                format!("{}/{}", p.stats.splits_solved, p.stats.splits_total)
            );
        }
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `jigsaw demo`: plan every example app on 4 H100s at half its max demand.
pub fn cmd_demo(dir: &Path, config: Option<&Path>) -> Result<String> {
    let (cfg, solver) = planner_config(config)?;
    let mut out =
        String::from("jigsaw demo: planning the example apps on 4 x h100-80gb (SYNTHETIC profiles, no GPU needed)\n\n");
    for (_, app_path, prof_path) in examples(dir) {
        let app = load_app(&app_path)?;
        let profiles = load_profiles(&prof_path)?;
        let pb =
            Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 4, space: SearchSpace::FULL };
        let clock = WallClock::new();
        let max = jigsaw_coordinator::plan(pb, Goal::MaxDemand, &cfg, &solver, &clock)?;
        let demand = (max.demand_rps * 5.0).floor() / 10.0;
        let _ = writeln!(
            out,
            "`{}`: max serviceable demand {:.1} req/s; planning for {demand:.1} req/s",
            app.name, max.demand_rps
        );
        let p = jigsaw_coordinator::plan(pb, Goal::MinCost { demand }, &cfg, &solver, &clock)?;
        let rep = evaluate(&p, &app, &profiles);
        if !rep.ok() {
            bail!("plan fails the evaluator: {:?}", rep.violations);
        }
        out += &render_plan(&p);
        out += "  evaluator: all constraints hold\n\n";
    }
    Ok(out)
}
