//! `jigsaw bench planner --random N`: the planner on N seeded random apps with SYNTHETIC
//! profiles (`jigsaw_coordinator::randapp`), apps nobody tuned the planner for.
//!
//! Per GPU count and app: the maximum serviceable demand R* (A+S+T), then a min-cost plan at
//! each `--levels` percentage of R*. Every plan is checked by the independent evaluator.
//! Printed per GPU count and goal: the distribution (median, p90, max) of wall time, MIP
//! gap and cost gap ([`Case::cost_gap`]), and the slowest case with the command that
//! reproduces it.

use crate::args::PlannerBenchArgs;
use crate::planning::planner_config;
use anyhow::{bail, Context, Result};
use jigsaw_agent::node::WallClock;
use jigsaw_coordinator::evaluate::evaluate;
use jigsaw_coordinator::milp::{Milp, Solution, SolveOptions, Solver, SolverError};
use jigsaw_coordinator::planner::{beta_of, Goal, PlanError, Problem};
use jigsaw_coordinator::{randapp, SearchSpace};
use jigsaw_protocol::plan::SolveStats;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One planner run.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// App index within the run (`--only` reproduces it).
    pub app: usize,
    /// The app's own seed (`randapp::app_seed(seed, app)`).
    pub app_seed: u64,
    /// Tasks of the app.
    pub tasks: usize,
    /// GPUs available.
    pub gpus: usize,
    /// `max-demand` or `min-cost NN%`.
    pub goal: String,
    /// Root demand planned for (R* for max-demand), req/s.
    pub demand: f64,
    /// Wall time of the `plan` call, ms.
    pub ms: f64,
    /// The planner's reported relative MIP gap (NaN when no plan came back).
    pub gap: f64,
    /// The gap as a share of the plan's cost: at fixed demand `(bound − objective) /
    /// (β·slices)`, the part of the plan's slices not proved necessary (the accuracy term
    /// counted in slices at its weight), which does not blow up when the objective is near
    /// 0; when maximising demand, the relative gap on `R`. NaN when no plan came back.
    pub cost_gap: f64,
    /// Objective of the returned plan (NaN when none).
    pub objective: f64,
    /// Latency splits enumerated / MILPs solved / pruned by bound.
    pub splits: (usize, usize, usize),
    /// `ok`, or the error.
    pub outcome: String,
    /// Whether the returned plan passes the evaluator (true when no plan came back).
    pub eval_ok: bool,
}

/// Distribution of one (GPU count, goal) group.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// GPUs.
    pub gpus: usize,
    /// Goal (`min-cost all` pools the levels).
    pub goal: String,
    /// Runs.
    pub n: usize,
    /// Runs without a plan (timeouts, infeasible, errors).
    pub no_plan: usize,
    /// Wall time median, p90, max, ms.
    pub ms: [f64; 3],
    /// Gap median, p90, max over runs with a plan.
    pub gap: [f64; 3],
    /// Cost gap ([`Case::cost_gap`]) median, p90, max over runs with a plan.
    pub cost_gap: [f64; 3],
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report<'a> {
    seed: u64,
    gpu: String,
    time_limit_s: f64,
    mip_rel_gap: f64,
    summaries: &'a [Summary],
    cases: &'a [Case],
}

/// Nearest-rank percentile `q ∈ (0, 1]` of `v` (NaN when empty).
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let k = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[k - 1]
}

/// [`Case::cost_gap`] of a plan with `stats` and `slices` (slice cost) found for `goal`,
/// with slice weight `beta`.
fn cost_gap(goal: Goal, stats: &SolveStats, slices: u32, beta: f64) -> f64 {
    match goal {
        Goal::MinCost { .. } => (stats.bound - stats.objective).max(0.0) / (beta * f64::from(slices.max(1))),
        Goal::MaxDemand => stats.gap,
    }
}

fn summarise(gpus: usize, goal: &str, cases: &[&Case]) -> Summary {
    let ms: Vec<f64> = cases.iter().map(|c| c.ms).collect();
    let gap: Vec<f64> = cases.iter().map(|c| c.gap).collect();
    let cost_gap: Vec<f64> = cases.iter().map(|c| c.cost_gap).collect();
    Summary {
        gpus,
        goal: goal.into(),
        n: cases.len(),
        no_plan: cases.iter().filter(|c| c.outcome != "ok").count(),
        ms: [percentile(&ms, 0.5), percentile(&ms, 0.9), percentile(&ms, 1.0)],
        gap: [percentile(&gap, 0.5), percentile(&gap, 0.9), percentile(&gap, 1.0)],
        cost_gap: [percentile(&cost_gap, 0.5), percentile(&cost_gap, 0.9), percentile(&cost_gap, 1.0)],
    }
}

/// A solver that writes every model it is asked to solve to `dir` (`--dump-milp`), then
/// hands it on.
struct Dumping<'a> {
    inner: &'a dyn Solver,
    dir: PathBuf,
    n: AtomicUsize,
}

impl Solver for Dumping<'_> {
    fn solve(&self, milp: &Milp, opts: SolveOptions) -> Result<Solution, SolverError> {
        #[derive(Serialize)]
        struct Dump<'m> {
            options: SolveOptions,
            milp: &'m Milp,
        }
        let path = self.dir.join(format!("{:05}.json", self.n.fetch_add(1, Ordering::SeqCst)));
        let text = serde_json::to_string(&Dump { options: opts, milp })
            .map_err(|e| SolverError::Backend(format!("--dump-milp: {e}")))?;
        std::fs::write(&path, text)
            .map_err(|e| SolverError::Backend(format!("--dump-milp: writing {}: {e}", path.display())))?;
        self.inner.solve(milp, opts)
    }
}

/// `jigsaw bench planner --random N`.
pub fn cmd_bench_random(a: &PlannerBenchArgs, config: Option<&Path>) -> Result<String> {
    let n = a.random.context("--random N is required")?;
    if let Some(i) = a.dump {
        let app = randapp::generate(randapp::app_seed(a.seed, i), a.gpu);
        return Ok(toml::to_string(&app)?);
    }
    let (mut cfg, highs) = planner_config(config)?;
    let dumping;
    let solver: &dyn Solver = match &a.dump_milp {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("--dump-milp: creating {}", dir.display()))?;
            dumping = Dumping { inner: &highs, dir: dir.clone(), n: AtomicUsize::new(0) };
            &dumping
        }
        None => &highs,
    };
    if let Some(t) = a.time_limit {
        if !(t.is_finite() && t > 0.0) {
            bail!("--time-limit must be a positive number of seconds, got {t}");
        }
        cfg.time_limit_s = t;
    }
    let gpus = a.gpus.clone().unwrap_or_else(|| vec![4, 8, 16, 120]);
    if gpus.contains(&0) {
        bail!("--gpus must be at least 1");
    }
    let indices: Vec<usize> = match a.only {
        Some(i) => vec![i],
        None => (0..n).collect(),
    };
    let apps: Vec<_> =
        indices.iter().map(|&i| (i, randapp::generate_with_profiles(randapp::app_seed(a.seed, i), a.gpu))).collect();
    let mut cases: Vec<Case> = Vec::new();
    for &g in &gpus {
        for (i, (app, profiles)) in &apps {
            let pb = Problem { app, profiles, gpu: a.gpu, gpus: g, space: SearchSpace::FULL };
            let run = |goal: Goal, label: String| -> Case {
                let clock = WallClock::new();
                let start = Instant::now();
                let res = jigsaw_coordinator::plan(pb, goal, &cfg, solver, &clock);
                let ms = start.elapsed().as_secs_f64() * 1e3;
                let base = Case {
                    app: *i,
                    app_seed: randapp::app_seed(a.seed, *i),
                    tasks: app.tasks.len(),
                    gpus: g,
                    goal: label,
                    demand: match goal {
                        Goal::MinCost { demand } => demand,
                        Goal::MaxDemand => f64::NAN,
                    },
                    ms,
                    gap: f64::NAN,
                    cost_gap: f64::NAN,
                    objective: f64::NAN,
                    splits: (0, 0, 0),
                    outcome: String::new(),
                    eval_ok: true,
                };
                match res {
                    Ok(p) => Case {
                        demand: p.demand_rps,
                        gap: p.stats.gap,
                        cost_gap: cost_gap(goal, &p.stats, p.slices_used, beta_of(&cfg, g)),
                        objective: p.stats.objective,
                        splits: (p.stats.splits_total, p.stats.splits_solved, p.stats.splits_pruned),
                        outcome: "ok".into(),
                        eval_ok: evaluate(&p, app, profiles).ok(),
                        ..base
                    },
                    Err(e) => Case {
                        outcome: match e {
                            PlanError::Timeout(_) => "timeout".into(),
                            PlanError::Infeasible { .. } => "infeasible".into(),
                            other => other.to_string(),
                        },
                        ..base
                    },
                }
            };
            let max = run(Goal::MaxDemand, "max-demand".into());
            let r = max.demand;
            let ok = max.outcome == "ok";
            cases.push(max);
            if ok {
                for &lv in &a.levels {
                    let demand = r * lv / 100.0;
                    cases.push(run(Goal::MinCost { demand }, format!("min-cost {lv:.0}%")));
                }
            }
        }
    }
    let mut summaries = Vec::new();
    for &g in &gpus {
        let of = |pred: &dyn Fn(&Case) -> bool| cases.iter().filter(|c| c.gpus == g && pred(c)).collect::<Vec<_>>();
        summaries.push(summarise(g, "max-demand", &of(&|c| c.goal == "max-demand")));
        for &lv in &a.levels {
            let label = format!("min-cost {lv:.0}%");
            summaries.push(summarise(g, &label, &of(&|c| c.goal == label)));
        }
        summaries.push(summarise(g, "min-cost all", &of(&|c| c.goal.starts_with("min-cost"))));
    }
    let bad: Vec<&Case> = cases.iter().filter(|c| !c.eval_ok).collect();
    if a.json {
        let rep = Report {
            seed: a.seed,
            gpu: a.gpu.to_string(),
            time_limit_s: cfg.time_limit_s,
            mip_rel_gap: cfg.mip_rel_gap,
            summaries: &summaries,
            cases: &cases,
        };
        return Ok(serde_json::to_string_pretty(&rep)? + "\n");
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "planner bench on {} random app(s) (SYNTHETIC apps and profiles, randapp), seed {}, A+S+T, {}",
        apps.len(),
        a.seed,
        a.gpu
    );
    let _ = writeln!(
        out,
        "time limit {} s, mip gap {}, abs gap {} slice(s); min-cost at {:?} % of each app's max demand",
        cfg.time_limit_s, cfg.mip_rel_gap, cfg.abs_gap_slices, a.levels
    );
    let _ = writeln!(
        out,
        "gap: relative MIP gap of the objective; cgap: at fixed demand (bound - objective) in slices over the plan's slices, at max demand the relative gap on R"
    );
    let _ = writeln!(
        out,
        "{:>5} {:<14} {:>4} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "GPUs",
        "goal",
        "n",
        "no plan",
        "ms p50",
        "ms p90",
        "ms max",
        "gap p50",
        "gap p90",
        "gap max",
        "cgap p50",
        "cgap p90",
        "cgap max"
    );
    for s in &summaries {
        let _ = writeln!(
            out,
            "{:>5} {:<14} {:>4} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>9.1e} {:>9.1e} {:>9.1e} {:>9.1e} {:>9.1e} {:>9.1e}",
            s.gpus,
            s.goal,
            s.n,
            s.no_plan,
            s.ms[0],
            s.ms[1],
            s.ms[2],
            s.gap[0],
            s.gap[1],
            s.gap[2],
            s.cost_gap[0],
            s.cost_gap[1],
            s.cost_gap[2]
        );
    }
    let repro = |c: &Case| {
        format!(
            "app {} (app seed {:#x}, {} tasks) on {} GPUs, {} at {:.1} req/s: {:.0} ms, gap {:.1e}, splits {}/{}/{} (enumerated/solved/pruned), {}\n    reproduce: jigsaw bench planner --random 1 --seed {} --only {} --gpus {} --gpu {}; spec: --dump {}",
            c.app, c.app_seed, c.tasks, c.gpus, c.goal, c.demand, c.ms, c.gap, c.splits.0, c.splits.1, c.splits.2,
            c.outcome, a.seed, c.app, c.gpus, a.gpu, c.app
        )
    };
    for &g in &gpus {
        for goal in ["max-demand", "min-cost"] {
            if let Some(c) =
                cases.iter().filter(|c| c.gpus == g && c.goal.starts_with(goal)).max_by(|x, y| x.ms.total_cmp(&y.ms))
            {
                let _ = writeln!(out, "slowest {goal} on {g} GPUs: {}", repro(c));
            }
        }
    }
    let no_plan: Vec<&Case> = cases.iter().filter(|c| c.outcome != "ok").collect();
    for c in no_plan.iter().take(10) {
        let _ = writeln!(out, "no plan: {}", repro(c));
    }
    if bad.is_empty() {
        let _ = writeln!(out, "evaluator: every returned plan meets every constraint");
    } else {
        for c in &bad {
            let _ = writeln!(out, "EVALUATOR FAILURE: {}", repro(c));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{cost_gap, percentile, Dumping, SolveStats};
    use jigsaw_coordinator::milp::{Milp, SolveOptions, Solver, Status};
    use jigsaw_coordinator::planner::Goal;
    use jigsaw_coordinator::HighsSolver;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn dumped_models_read_back_and_the_solve_goes_on() {
        let dir = std::env::temp_dir().join(format!("jigsaw-dump-milp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // max x + y, x + 2y <= 4, x <= 3 integer, y unbounded above.
        let mut m = Milp { maximize: true, ..Milp::default() };
        let x = m.col(1.0, 0.0, 3.0, true);
        let y = m.col(1.0, 0.0, f64::INFINITY, false);
        m.row(f64::NEG_INFINITY, 4.0, vec![(x, 1.0), (y, 2.0)]);
        let highs = HighsSolver::default();
        let dumping = Dumping { inner: &highs, dir: dir.clone(), n: AtomicUsize::new(0) };
        let opts = SolveOptions::milp(5.0, 1e-6);
        let sol = dumping.solve(&m, opts).unwrap();
        assert_eq!(sol.status, Status::Optimal);
        assert!((sol.objective - 3.5).abs() < 1e-6, "{}", sol.objective);
        dumping.solve(&m, SolveOptions { relax: true, ..opts }).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("00000.json")).unwrap()).unwrap();
        assert_eq!(first["options"]["relax"], false);
        assert_eq!(first["milp"]["cols"][0]["ub"], 3.0);
        assert!(first["milp"]["cols"][1]["ub"].is_null(), "infinite bounds are written as null");
        assert!(first["milp"]["rows"][0]["lb"].is_null());
        assert_eq!(first["milp"]["rows"][0]["coefs"][1][1], 2.0);
        let second: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("00001.json")).unwrap()).unwrap();
        assert_eq!(second["options"]["relax"], true);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cost_gap_is_the_unproved_share_of_the_slices() {
        let stats = SolveStats {
            solve_ms: 1.0,
            gap: 0.5,
            objective: 0.1,
            bound: 0.1 + 2.0 / 28.0,
            splits_total: 1,
            splits_solved: 1,
            splits_pruned: 0,
            latency_levels: "exact".into(),
            note: None,
        };
        // Two slices unproved (β = 1/28) of a 20-slice plan: 10 %, whatever the objective.
        let g = cost_gap(Goal::MinCost { demand: 10.0 }, &stats, 20, 1.0 / 28.0);
        assert!((g - 0.1).abs() < 1e-12, "{g}");
        // A bound below the objective (solver tolerance) is no gap.
        let tight = SolveStats { bound: 0.1 - 1e-9, ..stats.clone() };
        assert_eq!(cost_gap(Goal::MinCost { demand: 10.0 }, &tight, 20, 1.0 / 28.0), 0.0);
        // Maximum demand: the relative gap on R.
        assert_eq!(cost_gap(Goal::MaxDemand, &stats, 20, 1.0 / 28.0), 0.5);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.9), 9.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
        assert!(percentile(&[f64::NAN], 0.5).is_nan());
        assert_eq!(percentile(&[3.0, f64::NAN, 1.0], 1.0), 3.0);
    }
}
