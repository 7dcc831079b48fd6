//! The planner: the paper's allocation MILP, linearised, with MIG placement inside the model.
//!
//! Pure: no I/O, no clocks except the [`Clock`] passed in, no HiGHS (a [`Solver`] is passed
//! in). Design note with the full formulation: `docs/planner.md`.
//!
//! ## Model
//! Decision: `M(t,v,p)` MIG instances of profile `p` running variant `v` of task `t`, each
//! with the (MPS level, batch) that the latency split selects; `y(c)` GPUs laid out as
//! layout class `c`; `R` the root demand when maximising demand.
//!
//! * **Latency (Eqs. 2–3), exact by enumeration.** The planner enumerates per-task levels
//!   `L̂(t)` (every distinct Pareto-optimal profiled latency when there are at most
//!   `max_levels` of them, else a geometric grid snapped to profiled values) and keeps the
//!   assignments that satisfy `Σ_{t∈p} 2·L̂(t) ≤ SLO` on every path and are maximal. Within a
//!   split, each `(t,v,p)` uses the highest-throughput (MPS, batch) with `L ≤ L̂(t)`: the
//!   profile's cost and placement do not depend on MPS or batch, and demand and accuracy
//!   are counted on routed load, so this is a dominance reduction, not a restriction.
//! * **Demand (Eqs. 4–6).** Where every allowed variant of `t` has the same fan-out to `t'`
//!   and `t`'s own demand is fixed, the downstream demand is the exact constant; otherwise
//!   `t` is routed: continuous columns `r ≤ h·M` carry the items/s the plan routes to each
//!   of its instance columns, and `t'` receives `Σ F·r` (see `add_app_rows`).
//! * **Accuracy (Eqs. 10–13), conservative.** With `d_t = 1 − Â(t)/a_max(t)`, the
//!   Weierstrass inequality `Π(1−d) ≥ 1 − Σ d` gives `A_obj ≥ 1 − Σ_t W_t·d_t / A_max`, and
//!   `d_t ≤ Λ_t / (a_max(t)·ρ_t·R)` where `Λ_t = Σ r·(a_max − A_v)` over the load routed
//!   to each column (a task that may run a less accurate variant is routed) and `ρ_t·R` is
//!   the least demand `t` can see. Both steps only under-estimate accuracy, so every plan
//!   meets the paper's non-linear constraint (checked by [`crate::evaluate`]).
//! * **Placement (beyond the paper).** Per MIG profile, instances used ≤ `Σ_c y(c)·n_c(p)`
//!   and `Σ_c y(c) ≤ GPUs`, over the distinct profile multisets of maximal legal layouts.
//!   Exact: decoding gives every instance a GPU and a start slot.
//! * **Objective (Eq. 14).** `max α·A_lb − β·slices − ε·GPUs` at fixed demand, or `max R`
//!   (then fewest slices) for the maximum serviceable demand.
//!
//! Splits are solved best-LP-bound first and skipped when their LP bound cannot beat the
//! incumbent by more than the MIP gap, so the reported gap covers the whole enumeration.
//! At fixed demand, each later split's MILP also carries the incumbent as a cutoff row
//! (objective ≥ incumbent + the larger of the relative and the absolute gap): the solver
//! stops once it proves the split cannot beat it (reported as infeasible; the cutoff then
//! stands in for that split's bound). Valid bounds from whole instances (per-task
//! slice-cover rows at fixed demand, an upper bound on `R` when maximising demand) tighten
//! every split's LP relaxation without changing its integer optimum. When maximising
//! demand, the first split's MILP stops within [`FIND_GAP`] and every split is then settled
//! by a probe at fixed `R = c` (the incumbent plus the margin; the model is monotone in
//! `R`, so a probe without a plan proves the split cannot beat the incumbent), which
//! carries the slice-cover rows at `c`.

use crate::milp::{Milp, SolveOptions, Solver, SolverError, Status};
use crate::spaces::SearchSpace;
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::{GpuModel, GpuSpec, LayoutClass};
use jigsaw_protocol::plan::{GpuPlan, InstancePlan, Plan, SolveStats, TaskPlan, VariantShare};
use jigsaw_protocol::profile::ProfileTable;
use std::collections::{BTreeMap, HashSet};

/// Planner settings (from the coordinator's config).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerConfig {
    /// Wall-clock limit for one planner run, seconds.
    pub time_limit_s: f64,
    /// Relative MIP gap at which a split's MILP stops.
    pub mip_rel_gap: f64,
    /// Relative gap on the maximum serviceable demand `R` (the larger of this and
    /// `mip_rel_gap` applies when maximising demand): the search stops once no split can
    /// raise `R` by more than this share.
    pub max_demand_rel_gap: f64,
    /// α of Eq. 14.
    pub alpha: f64,
    /// β of Eq. 14; `None` = 1 / available slices (the paper's 1/28 for 4 GPUs).
    pub beta: Option<f64>,
    /// Most latency levels per task before a grid is used.
    pub max_levels: usize,
    /// Absolute MIP gap at fixed demand, in slices (× β): 1.0 stops within one slice of the optimum.
    pub abs_gap_slices: f64,
    /// Failure-domain spread of the cluster plan.
    pub spread: Spread,
    /// Cluster plan: objective bonus per instance kept where it runs, in slices (0–0.99).
    pub keep_weight_slices: f64,
}

/// Failure-domain spread of a cluster plan (`[planner] spread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spread {
    /// `node` when the cluster has at least two alive nodes, else `none`.
    #[default]
    Auto,
    /// Every task's capacity on at least two nodes where capacity allows.
    Node,
    /// No spread requirement.
    None,
}

impl std::str::FromStr for Spread {
    type Err = String;
    fn from_str(s: &str) -> Result<Spread, String> {
        match s {
            "auto" => Ok(Spread::Auto),
            "node" => Ok(Spread::Node),
            "none" => Ok(Spread::None),
            other => Err(format!("must be `auto`, `node` or `none`, got `{other}`")),
        }
    }
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            time_limit_s: 30.0,
            mip_rel_gap: 1e-4,
            max_demand_rel_gap: 0.01,
            alpha: 1.0,
            beta: None,
            max_levels: 10,
            abs_gap_slices: 1.0,
            spread: Spread::Auto,
            keep_weight_slices: 0.5,
        }
    }
}

/// Objective weight per GPU used (a tie-break towards fewer GPUs).
pub const EPS_GPU: f64 = 1e-6;
/// Objective weight per slice when maximising demand (a tie-break towards fewer slices).
pub const EPS_SLICE_MAX_DEMAND: f64 = 1e-6;

/// When maximising demand, the relative gap at which the first split's MILP stops; probes
/// at fixed `R` settle the rest (`docs/planner.md`, "Search over splits").
pub const FIND_GAP: f64 = 0.05;

/// β of Eq. 14: the configured value or 1 / available slices.
pub fn beta_of(cfg: &PlannerConfig, gpus: usize) -> f64 {
    cfg.beta.unwrap_or(1.0 / (7.0 * gpus as f64).max(1.0))
}

/// What to optimise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Serve `demand` requests/s at the best α·accuracy − β·slices.
    MinCost {
        /// Root demand, requests/s.
        demand: f64,
    },
    /// Find the largest serviceable root demand.
    MaxDemand,
}

/// One planning problem.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    /// The application.
    pub app: &'a AppSpec,
    /// Profiles.
    pub profiles: &'a ProfileTable,
    /// GPU model.
    pub gpu: GpuModel,
    /// GPUs available.
    pub gpus: usize,
    /// Search space.
    pub space: SearchSpace,
}

/// Monotonic time source, passed in so the core has no clock of its own.
pub trait Clock {
    /// Seconds since an arbitrary origin.
    fn now_s(&self) -> f64;
}

/// Why no plan came back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// No profile row for a task in this space: profile it or widen the space.
    #[error("no profile rows for task `{task}` on {gpu} in search space {space} (need rows for {need})")]
    MissingProfiles {
        /// Task.
        task: String,
        /// GPU model.
        gpu: GpuModel,
        /// Space.
        space: SearchSpace,
        /// What rows would do.
        need: String,
    },
    /// A path cannot meet the latency SLO even with the fastest configuration of every task.
    #[error("latency SLO {slo_ms:.1} ms cannot be met on path {path}: its fastest configurations need 2 x {min_ms:.1} ms = {need:.1} ms, {short:.1} ms over")]
    LatencyInfeasible {
        /// The path, `a -> b`.
        path: String,
        /// Σ fastest p95 along the path.
        min_ms: f64,
        /// 2 × min_ms.
        need: f64,
        /// SLO.
        slo_ms: f64,
        /// need − SLO.
        short: f64,
    },
    /// The static latency budget of a task (spaces without T) is below its fastest p95.
    #[error("search space {space}: task `{task}` gets a static latency budget of {budget_ms:.1} ms but its fastest configuration needs {min_ms:.1} ms")]
    StaticBudget {
        /// Space.
        space: SearchSpace,
        /// Task.
        task: String,
        /// Budget.
        budget_ms: f64,
        /// Fastest p95.
        min_ms: f64,
    },
    /// The demand cannot be served.
    #[error("{demand:.1} req/s cannot be served by {app} in {space} on {gpus} x {gpu}: {binding}")]
    Infeasible {
        /// App.
        app: String,
        /// Space.
        space: SearchSpace,
        /// Requested demand.
        demand: f64,
        /// GPUs.
        gpus: usize,
        /// GPU model.
        gpu: GpuModel,
        /// Which constraint binds.
        binding: String,
    },
    /// Nothing feasible found within the time limit.
    #[error("no feasible plan found within the {0:.1} s time limit; raise planner.time_limit_s")]
    Timeout(f64),
    /// The solver failed.
    #[error(transparent)]
    Solver(#[from] SolverError),
}

/// One profiled operating point of a (task, variant, MIG profile).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    pub(crate) mps: u8,
    pub(crate) batch: u32,
    pub(crate) l: f64,
    pub(crate) h: f64,
}

/// A (task, variant, profile) with its Pareto frontier of (latency, throughput) points,
/// sorted by latency ascending (throughput strictly ascending along it).
#[derive(Debug, Clone)]
pub(crate) struct Opt {
    pub(crate) t: usize,
    pub(crate) v: usize,
    pub(crate) p: usize,
    pub(crate) frontier: Vec<Point>,
}

impl Opt {
    pub(crate) fn best_within(&self, level: f64) -> Option<Point> {
        let i = self.frontier.partition_point(|pt| pt.l <= level + 1e-9);
        i.checked_sub(1).map(|i| self.frontier[i])
    }
}

/// Everything derived from the problem that does not depend on the split.
pub(crate) struct Prepared<'a> {
    pub(crate) pb: Problem<'a>,
    pub(crate) spec: &'static GpuSpec,
    pub(crate) opts: Vec<Opt>,
    pub(crate) classes: Vec<LayoutClass>,
    pub(crate) paths: Vec<Vec<usize>>,
    /// Per task: κ_t (accuracy-row coefficient per unit of lost accuracy mass), or `None`
    /// when ρ_t = 0 (only max-accuracy variants allowed).
    pub(crate) kappa: Vec<Option<f64>>,
    pub(crate) amax_task: Vec<f64>,
    pub(crate) a_max: f64,
    /// Per task: Some(ρ) when its demand is a fixed multiple of R.
    pub(crate) fixed_rho: Vec<Option<f64>>,
    /// Per task: whether the plan routes its items by load: the items it passes on depend on
    /// the plan (a child's demand from it is not a fixed multiple of R), or it may serve
    /// with a less accurate variant (accuracy is counted on the load each variant gets).
    /// Such a task's columns carry routed-load columns `r` (items/s routed to them), and the
    /// plan routes its items by them.
    pub(crate) routed: Vec<bool>,
    /// Per task: the least demand multiplier ρ_t (fan-outs at their minimum).
    pub(crate) rho_min: Vec<f64>,
    /// Per task: static slice budget (spaces without T).
    pub(crate) slice_budget: Vec<Option<f64>>,
    /// Per task: latency levels.
    pub(crate) levels: Vec<Vec<f64>>,
    pub(crate) exact_levels: bool,
}

/// Allowed variants of task `t` in the space.
fn allowed_variants(app: &AppSpec, space: SearchSpace, t: usize) -> Vec<usize> {
    if space.a {
        (0..app.tasks[t].variants.len()).collect()
    } else {
        vec![app.best_variant(t)]
    }
}

/// Whether MIG profile `p` (with `mps`) is allowed in the space.
fn allowed_segment(spec: &GpuSpec, space: SearchSpace, p: usize, mps: u8) -> bool {
    let prof = &spec.profiles[p];
    if !prof.plannable() {
        return false;
    }
    space.s || (prof.compute_slices == 7 && mps == 1)
}

fn pareto(mut pts: Vec<Point>) -> Vec<Point> {
    pts.sort_by(|a, b| {
        a.l.total_cmp(&b.l).then(b.h.total_cmp(&a.h)).then(a.mps.cmp(&b.mps)).then(a.batch.cmp(&b.batch))
    });
    let mut out: Vec<Point> = Vec::new();
    for p in pts {
        if out.last().is_none_or(|q| p.h > q.h + 1e-12) {
            out.push(p);
        }
    }
    out
}

/// Path weights f_p: the share of leaf requests that take path p when every task runs its
/// most accurate variant (the paper leaves f_p undefined for fan-out graphs).
pub fn path_weights(app: &AppSpec, paths: &[Vec<usize>]) -> Vec<f64> {
    let raw: Vec<f64> =
        paths.iter().map(|p| p.windows(2).map(|w| app.fanout(w[0], app.best_variant(w[0]), w[1])).product()).collect();
    let sum: f64 = raw.iter().sum();
    if sum > 0.0 {
        raw.iter().map(|r| r / sum).collect()
    } else {
        vec![1.0 / paths.len() as f64; paths.len()]
    }
}

pub(crate) fn prepare<'a>(pb: Problem<'a>, cfg: &PlannerConfig) -> Result<Prepared<'a>, PlanError> {
    let app = pb.app;
    let spec = pb.gpu.spec();
    let nt = app.tasks.len();
    let opts = options(&pb, spec)?;
    let min_l: Vec<f64> = (0..nt)
        .map(|t| opts.iter().filter(|o| o.t == t).map(|o| o.frontier[0].l).fold(f64::INFINITY, f64::min))
        .collect();
    let paths = app.paths();
    let half = app.latency_slo_ms / 2.0;
    for p in &paths {
        let s: f64 = p.iter().map(|&t| min_l[t]).sum();
        if s > half + 1e-9 {
            return Err(PlanError::LatencyInfeasible {
                path: p.iter().map(|&t| app.tasks[t].name.as_str()).collect::<Vec<_>>().join(" -> "),
                min_ms: s,
                need: 2.0 * s,
                slo_ms: app.latency_slo_ms,
                short: 2.0 * s - app.latency_slo_ms,
            });
        }
    }

    // Accuracy constants.
    let f = path_weights(app, &paths);
    let amax_task: Vec<f64> = (0..nt).map(|t| app.tasks[t].variants[app.best_variant(t)].accuracy).collect();
    let amax_path: Vec<f64> = paths.iter().map(|p| p.iter().map(|&t| amax_task[t]).product()).collect();
    let a_max: f64 = f.iter().zip(&amax_path).map(|(a, b)| a * b).sum();
    let order = app.topo_order().map_err(|e| PlanError::MissingProfiles {
        task: e.to_string(),
        gpu: pb.gpu,
        space: pb.space,
        need: "an acyclic graph".into(),
    })?;
    let (rho_min, fixed_rho) = demand_multipliers(app, pb.space, &order);
    let kappa: Vec<Option<f64>> = (0..nt)
        .map(|t| {
            let w: f64 = paths
                .iter()
                .zip(&f)
                .filter(|(p, _)| p.contains(&t))
                .map(|(p, fp)| {
                    fp * amax_task[t] * p.iter().filter(|&&u| u != t).map(|&u| amax_task[u]).product::<f64>()
                })
                .sum();
            (rho_min[t] > 1e-12).then(|| w / (amax_task[t] * rho_min[t]))
        })
        .collect();
    // Routed: the items a task passes on depend on the plan, or it may serve with a less
    // accurate variant (its accuracy is then counted on the load routed to each variant).
    let routed: Vec<bool> = (0..nt)
        .map(|u| {
            let lossy = kappa[u].is_some()
                && allowed_variants(app, pb.space, u)
                    .into_iter()
                    .any(|v| app.tasks[u].variants[v].accuracy < amax_task[u] - 1e-12);
            lossy || app.children(u).into_iter().any(|t| fixed_items(app, pb.space, &fixed_rho, u, t).is_none())
        })
        .collect();

    let classes = layout_classes(spec, pb.space);

    // Latency levels.
    let mut slice_budget = vec![None; nt];
    let (levels, exact_levels) = if pb.space.t {
        let mut exact = true;
        let levels = (0..nt)
            .map(|t| {
                let (ls, exact_t) = latency_levels(t, &opts, &paths, &min_l, half, cfg.max_levels);
                exact &= exact_t;
                ls
            })
            .collect();
        (levels, exact)
    } else {
        let (budgets, shares) = static_budgets(app, pb, spec, &opts, &paths);
        let budgets_slices = slice_budgets(&shares, pb.gpus, pb.space.s);
        for t in 0..nt {
            if budgets[t] + 1e-9 < min_l[t] {
                return Err(PlanError::StaticBudget {
                    space: pb.space,
                    task: app.tasks[t].name.clone(),
                    budget_ms: budgets[t],
                    min_ms: min_l[t],
                });
            }
            slice_budget[t] = Some(budgets_slices[t]);
        }
        (budgets.into_iter().map(|b| vec![b]).collect(), true)
    };

    Ok(Prepared {
        pb,
        spec,
        opts,
        classes,
        paths,
        kappa,
        amax_task,
        a_max,
        fixed_rho,
        routed,
        rho_min,
        slice_budget,
        levels,
        exact_levels,
    })
}

/// Every allowed (task, variant, MIG profile) option with its Pareto frontier of operating
/// points, from one pass over the profile table; an error names a task left without any.
fn options(pb: &Problem<'_>, spec: &GpuSpec) -> Result<Vec<Opt>, PlanError> {
    let app = pb.app;
    let nt = app.tasks.len();
    let mut opts = Vec::new();
    // One pass over the profile table: operating points grouped by (task, variant, profile).
    let mut points: BTreeMap<(usize, usize, usize), Vec<Point>> = BTreeMap::new();
    for r in pb.profiles.rows().filter(|r| r.gpu == pb.gpu) {
        let Some(t) = app.task_index(&r.task) else { continue };
        let Some(v) = app.tasks[t].variants.iter().position(|x| x.name == r.variant) else { continue };
        let Some(p) = spec.profile_index(&r.mig_profile) else { continue };
        if allowed_segment(spec, pb.space, p, r.mps) {
            points.entry((t, v, p)).or_default().push(Point {
                mps: r.mps,
                batch: r.batch,
                l: r.p95_ms,
                h: r.throughput_rps,
            });
        }
    }
    for t in 0..nt {
        let mut any = false;
        for v in allowed_variants(app, pb.space, t) {
            for p in 0..spec.profiles.len() {
                if let Some(pts) = points.remove(&(t, v, p)) {
                    any = true;
                    opts.push(Opt { t, v, p, frontier: pareto(pts) });
                }
            }
        }
        if !any {
            let need = if pb.space.s {
                "any allowed variant on any MIG profile".to_string()
            } else {
                format!(
                    "the whole-GPU profile {} with MPS 1",
                    spec.profiles.iter().find(|p| p.compute_slices == 7).map_or("7g", |p| p.name)
                )
            };
            return Err(PlanError::MissingProfiles {
                task: app.tasks[t].name.clone(),
                gpu: pb.gpu,
                space: pb.space,
                need,
            });
        }
    }
    Ok(opts)
}

/// Items per request that `u` passes to its child `t` when that is a fixed multiple of R
/// (u's demand is, and every variant of u allowed in `space` has the same fan-out to t).
fn fixed_items(app: &AppSpec, space: SearchSpace, fixed_rho: &[Option<f64>], u: usize, t: usize) -> Option<f64> {
    let fanouts: Vec<f64> = allowed_variants(app, space, u).into_iter().map(|v| app.fanout(u, v, t)).collect();
    let constant = fanouts.iter().all(|&x| (x - fanouts[0]).abs() <= 1e-12);
    match (fixed_rho[u], constant) {
        (Some(r), true) => Some(r * fanouts[0]),
        _ => None,
    }
}

/// ρ_min (the least demand multiplier of each task) and the fixed ρ of tasks whose demand is
/// a fixed multiple of the root demand, in topological `order`.
fn demand_multipliers(app: &AppSpec, space: SearchSpace, order: &[usize]) -> (Vec<f64>, Vec<Option<f64>>) {
    let nt = app.tasks.len();
    let mut rho_min = vec![0.0; nt];
    let mut fixed_rho: Vec<Option<f64>> = vec![None; nt];
    for &t in order {
        let parents = app.parents(t);
        if parents.is_empty() {
            rho_min[t] = 1.0;
            fixed_rho[t] = Some(1.0);
            continue;
        }
        let mut fixed = Some(0.0);
        for &u in &parents {
            let fs: Vec<f64> = allowed_variants(app, space, u).into_iter().map(|v| app.fanout(u, v, t)).collect();
            let lo = fs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = fs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            rho_min[t] += rho_min[u] * lo;
            fixed = match (fixed, fixed_rho[u]) {
                (Some(acc), Some(r)) if hi - lo <= 1e-12 => Some(acc + r * lo),
                _ => None,
            };
        }
        fixed_rho[t] = fixed;
    }
    (rho_min, fixed_rho)
}

/// The layout classes the planner may use: plannable profiles (whole GPUs only without S),
/// without classes another class covers (instances may leave slots of a layout empty).
fn layout_classes(spec: &GpuSpec, space: SearchSpace) -> Vec<LayoutClass> {
    let allowed_prof = |p: &jigsaw_protocol::catalogue::MigProfile| p.plannable() && (space.s || p.compute_slices == 7);
    // A class whose per-profile counts are covered by another class's is never needed:
    // instances may leave slots of a layout empty.
    let all = spec.layout_classes(allowed_prof);
    let covers = |a: &LayoutClass, b: &LayoutClass| a.counts.iter().zip(&b.counts).all(|(x, y)| x >= y);
    all.iter()
        .enumerate()
        .filter(|(i, c)| {
            !all.iter().enumerate().any(|(j, d)| j != *i && covers(d, c) && (d.counts != c.counts || j < *i))
        })
        .map(|(_, c)| c.clone())
        .collect()
}

/// The latency levels (candidate p95 budgets, ms) of task `t` under T: every frontier
/// latency that fits its tightest path, thinned to at most `max_levels` on a geometric grid
/// (`false`: thinned, so the levels are no longer exact).
fn latency_levels(
    t: usize,
    opts: &[Opt],
    paths: &[Vec<usize>],
    min_l: &[f64],
    half: f64,
    max_levels: usize,
) -> (Vec<f64>, bool) {
    // Most this task can get: half the SLO minus the fastest of the others on its tightest path.
    let cap = paths
        .iter()
        .filter(|p| p.contains(&t))
        .map(|p| half - p.iter().filter(|&&u| u != t).map(|&u| min_l[u]).sum::<f64>())
        .fold(f64::INFINITY, f64::min);
    let mut ls: Vec<f64> = opts
        .iter()
        .filter(|o| o.t == t)
        .flat_map(|o| o.frontier.iter().map(|p| p.l))
        .filter(|&l| l <= cap + 1e-9)
        .collect();
    ls.sort_by(f64::total_cmp);
    ls.dedup_by(|a, b| (*a - *b).abs() <= 1e-9);
    // A task alone on all its paths needs only its largest level.
    let alone = paths.iter().filter(|p| p.contains(&t)).all(|p| p.len() == 1);
    if alone {
        return (ls.last().copied().into_iter().collect(), true);
    }
    if ls.len() <= max_levels {
        return (ls, true);
    }
    let (lo, hi) = (ls[0], ls[ls.len() - 1]);
    let k = max_levels.max(2);
    let mut grid: Vec<f64> = (0..k)
        .map(|i| {
            let target = lo * (hi / lo).powf(i as f64 / (k - 1) as f64);
            let j = ls.partition_point(|&l| l <= target + 1e-9);
            ls[j.saturating_sub(1)]
        })
        .collect();
    grid.dedup_by(|a, b| (*a - *b).abs() <= 1e-9);
    (grid, false)
}

/// Appendix B's task-graph-uninformed budgets: per-task latency budget (ms of p95) and share
/// of the GPU slices.
///
/// * Latency: each path's `SLO/2` is split in proportion to the worst-case latency of each
///   task's most accurate variant — its slowest allowed segment at batch 1; a task on
///   several paths takes the smallest share.
/// * Slices: each task's demand under the most accurate variants (fan-out products), divided
///   by the best throughput per slice of its most accurate variant within that latency
///   budget, normalised to shares.
fn static_budgets(
    app: &AppSpec,
    pb: Problem<'_>,
    spec: &GpuSpec,
    opts: &[Opt],
    paths: &[Vec<usize>],
) -> (Vec<f64>, Vec<f64>) {
    let nt = app.tasks.len();
    let worst: Vec<f64> = (0..nt)
        .map(|t| {
            let bv = app.best_variant(t);
            pb.profiles
                .rows()
                .filter(|r| {
                    r.task == app.tasks[t].name
                        && r.variant == app.tasks[t].variants[bv].name
                        && r.gpu == pb.gpu
                        && r.batch == 1
                })
                .filter(|r| {
                    spec.profile_index(&r.mig_profile).is_some_and(|p| allowed_segment(spec, pb.space, p, r.mps))
                })
                .map(|r| r.p95_ms)
                .fold(0.0, f64::max)
        })
        .collect();
    let half = app.latency_slo_ms / 2.0;
    let budgets: Vec<f64> = (0..nt)
        .map(|t| {
            paths
                .iter()
                .filter(|p| p.contains(&t))
                .map(|p| half * worst[t] / p.iter().map(|&u| worst[u]).sum::<f64>().max(1e-12))
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    // Demand multipliers under the best variants.
    let order = app.topo_order().unwrap_or_default();
    let mut rho = vec![0.0; nt];
    for &t in &order {
        let ps = app.parents(t);
        rho[t] =
            if ps.is_empty() { 1.0 } else { ps.iter().map(|&u| rho[u] * app.fanout(u, app.best_variant(u), t)).sum() };
    }
    let need: Vec<f64> = (0..nt)
        .map(|t| {
            let bv = app.best_variant(t);
            let per_slice = opts
                .iter()
                .filter(|o| o.t == t && o.v == bv)
                .filter_map(|o| o.best_within(budgets[t]).map(|pt| pt.h / f64::from(spec.profiles[o.p].slice_cost())))
                .fold(0.0, f64::max);
            if per_slice > 0.0 {
                rho[t] / per_slice
            } else {
                0.0
            }
        })
        .collect();
    let sum: f64 = need.iter().sum();
    let shares = need.iter().map(|n| if sum > 0.0 { n / sum } else { 1.0 / nt as f64 }).collect();
    (budgets, shares)
}

/// Static per-task slice budgets from shares. With spatial partitioning a task gets its
/// share of the slices (at least one); without it, whole GPUs: at least one per task when
/// there are enough GPUs, the rest by largest remainder.
fn slice_budgets(shares: &[f64], gpus: usize, spatial: bool) -> Vec<f64> {
    let total = 7.0 * gpus as f64;
    if spatial {
        return shares.iter().map(|s| (s * total).max(1.0)).collect();
    }
    let n = shares.len();
    let mut whole: Vec<usize> =
        shares.iter().map(|s| ((s * gpus as f64).floor() as usize).max(usize::from(gpus >= n))).collect();
    let mut rest: Vec<usize> = (0..n).collect();
    rest.sort_by(|&a, &b| {
        let ra = shares[a] * gpus as f64 - whole[a] as f64;
        let rb = shares[b] * gpus as f64 - whole[b] as f64;
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let mut i = 0;
    while whole.iter().sum::<usize>() < gpus && n > 0 {
        whole[rest[i % n]] += 1;
        i += 1;
    }
    while whole.iter().sum::<usize>() > gpus {
        // Minimum of one each overshot: take from the largest.
        let (j, _) = whole.iter().enumerate().max_by_key(|(j, w)| (**w, std::cmp::Reverse(*j))).unwrap_or((0, &0));
        whole[j] -= 1;
    }
    whole.into_iter().map(|w| 7.0 * w as f64).collect()
}

/// Maximal level assignments (indices into `levels[t]`) that satisfy every path.
fn enumerate_splits(levels: &[Vec<f64>], paths: &[Vec<usize>], half: f64) -> Vec<Vec<usize>> {
    let nt = levels.len();
    let fits = |a: &[usize]| paths.iter().all(|p| p.iter().map(|&t| levels[t][a[t]]).sum::<f64>() <= half + 1e-9);
    let mut out = Vec::new();
    let mut cur = vec![0usize; nt];
    fn rec(
        t: usize,
        cur: &mut Vec<usize>,
        levels: &[Vec<f64>],
        paths: &[Vec<usize>],
        half: f64,
        out: &mut Vec<Vec<usize>>,
        fits: &dyn Fn(&[usize]) -> bool,
    ) {
        if t == cur.len() {
            if fits(cur) {
                let maximal = (0..cur.len()).all(|u| {
                    cur[u] + 1 >= levels[u].len() || {
                        let mut c = cur.clone();
                        c[u] += 1;
                        !fits(&c)
                    }
                });
                if maximal {
                    out.push(cur.clone());
                }
            }
            return;
        }
        for i in 0..levels[t].len() {
            cur[t] = i;
            // Prune: assigned tasks at their level, unassigned at their minimum.
            let ok = paths.iter().all(|p| {
                p.iter().map(|&u| if u <= t { levels[u][cur[u]] } else { levels[u][0] }).sum::<f64>() <= half + 1e-9
            });
            if !ok {
                break;
            }
            rec(t + 1, cur, levels, paths, half, out, fits);
        }
        cur[t] = 0;
    }
    rec(0, &mut cur, levels, paths, half, &mut out, &fits);
    out
}

/// The columns of one split: for every option, its best point within the task's level.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    pub(crate) levels: Vec<f64>,
    pub(crate) cols: Vec<(usize, Point)>,
}

struct Built {
    milp: Milp,
    /// The app's instance and routed-load columns.
    cols: AppCols,
    y_cols: Vec<usize>,
    r_col: Option<usize>,
}

fn build(prep: &Prepared<'_>, split: &Split, goal: Goal, cfg: &PlannerConfig) -> Built {
    let pb = prep.pb;
    let g = pb.gpus as f64;
    let beta = beta_of(cfg, pb.gpus);
    let mut m = Milp {
        maximize: true,
        offset: match goal {
            Goal::MinCost { .. } => cfg.alpha,
            Goal::MaxDemand => 0.0,
        },
        ..Milp::default()
    };
    let (r_col, root) = match goal {
        Goal::MaxDemand => {
            let r = m.col(1.0, 0.0, f64::INFINITY, false);
            (Some(r), Root::Column(r))
        }
        Goal::MinCost { demand } => (None, Root::Fixed(demand)),
    };
    let cost = |o: &Opt| -> f64 {
        let slices = f64::from(prep.spec.profiles[o.p].slice_cost());
        match goal {
            Goal::MinCost { .. } => -(beta * slices),
            Goal::MaxDemand => -EPS_SLICE_MAX_DEMAND * slices,
        }
    };
    let item_cost = |o: &Opt| -> f64 {
        match goal {
            Goal::MinCost { demand } => -cfg.alpha * prep.accuracy_per_item(o, demand),
            Goal::MaxDemand => 0.0,
        }
    };
    let cols = add_app_rows(&mut m, prep, split, root, &cost, &item_cost);
    let m_cols = &cols.m;
    add_slice_bounds(&mut m, prep, m_cols, goal, r_col);
    // y columns.
    // At fixed demand the layout counts are continuous here and made integral by `repack`
    // (exact whenever the repacked layout fits the GPUs, else the split is re-solved with
    // integer `y`); when maximising demand the GPUs are the binding resource, so `y` is
    // integer from the start.
    let y_integer = matches!(goal, Goal::MaxDemand);
    let y_cols: Vec<usize> = prep.classes.iter().map(|_| m.col(-EPS_GPU, 0.0, g, y_integer)).collect();
    let profiles: Vec<(usize, usize)> = m_cols.iter().map(|&(c, oi, _)| (c, prep.opts[oi].p)).collect();
    add_placement_rows(&mut m, prep.spec, &prep.classes, &profiles, &y_cols, g);
    Built { milp: m, cols, y_cols, r_col }
}

/// Most capacity (req/s) that columns `(slice cost, throughput)` give with at most `s`
/// slices, for every `s` in `0..=max` (an unbounded knapsack: instance limits and placement
/// are ignored, so this over-estimates what a plan can get, never under-estimates).
fn capacity_by_slices(cols: &[(usize, f64)], max: usize) -> Vec<f64> {
    let mut f = vec![0.0f64; max + 1];
    for s in 1..=max {
        let mut best = f[s - 1];
        for &(c, h) in cols {
            if c <= s {
                best = best.max(f[s - c] + h);
            }
        }
        f[s] = best;
    }
    f
}

/// Fewest slices whose capacity by [`capacity_by_slices`] reaches `need` (with a small
/// tolerance towards fewer, so the bound never cuts off a plan the solver would accept);
/// `f.len()` when none does.
fn min_slices(f: &[f64], need: f64) -> usize {
    let need = need * (1.0 - 1e-7) - 1e-6;
    f.iter().position(|&c| c >= need).unwrap_or(f.len())
}

/// Valid bounds from integer instance counts that the LP relaxation misses (they cut off
/// no integer solution, so the MILP's optimum is unchanged; they only tighten its LP bound,
/// which prunes splits and shortens the search).
///
/// Each task `t` needs capacity of at least `ρ_t·R` (its least demand) from its own columns,
/// and whole instances of them: with `f_t(S)` the most capacity `S` slices of its columns
/// give, it needs at least `S_t(R) = min{S : f_t(S) ≥ ρ_t·R}` slices.
/// * Fixed demand: the row `Σ_{j∈t} s_j·M_j ≥ S_t(R)` per task.
/// * Maximum demand: `R` is at most the largest `R` with `Σ_t S_t(R) ≤` the slice cost of
///   the GPUs (the costliest layout class per GPU); that is the `R` column's upper bound.
fn add_slice_bounds(
    m: &mut Milp,
    prep: &Prepared<'_>,
    m_cols: &[(usize, usize, Point)],
    goal: Goal,
    r_col: Option<usize>,
) {
    let spec = prep.spec;
    let nt = prep.pb.app.tasks.len();
    let task_cols = |t: usize| -> Vec<(usize, usize, Point)> {
        m_cols.iter().filter(|(_, oi, _)| prep.opts[*oi].t == t).copied().collect()
    };
    let cost = |oi: usize| usize::from(spec.profiles[prep.opts[oi].p].slice_cost());
    match (goal, r_col) {
        (Goal::MinCost { demand }, _) => add_cover_rows(m, prep, m_cols, demand),
        (Goal::MaxDemand, Some(r)) => {
            let max = slice_capacity(prep);
            let caps: Vec<Vec<f64>> = (0..nt)
                .map(|t| {
                    capacity_by_slices(
                        &task_cols(t).iter().map(|&(_, oi, pt)| (cost(oi), pt.h)).collect::<Vec<_>>(),
                        max,
                    )
                })
                .collect();
            let tasks: Vec<usize> = (0..nt).filter(|&t| prep.rho_min[t] > 1e-12).collect();
            if let Some(ub) = demand_bound(&tasks, &caps, &prep.rho_min, max) {
                // Relative slack only: a bound of 0 (not even one instance per task fits)
                // must keep R at 0, not at a tolerance the solver meets with instance
                // counts that round to nothing.
                m.cols[r].ub = m.cols[r].ub.min(ub * (1.0 + 1e-6));
            }
            // Any R > 0 needs an instance of every task with demand.
            for &t in &tasks {
                let coefs: Vec<(usize, f64)> = task_cols(t).iter().map(|&(c, _, _)| (c, 1.0)).collect();
                m.row(1.0, f64::INFINITY, coefs);
            }
        }
        (Goal::MaxDemand, None) => {}
    }
}

/// Per task `t`, the row `Σ_{j∈t} s_j·M_j ≥ S_t(demand)`: whole instances of `t`'s columns
/// that serve its least demand `ρ_t·demand` need at least that many slices (see
/// [`add_slice_bounds`]). Valid wherever the root demand is at least `demand`: at fixed
/// demand, and when maximising demand under a cutoff `R ≥ demand`.
fn add_cover_rows(m: &mut Milp, prep: &Prepared<'_>, m_cols: &[(usize, usize, Point)], demand: f64) {
    let spec = prep.spec;
    let cost = |oi: usize| usize::from(spec.profiles[prep.opts[oi].p].slice_cost());
    let max = slice_capacity(prep);
    for t in 0..prep.pb.app.tasks.len() {
        let need = prep.rho_min[t] * demand;
        if need <= 0.0 {
            continue;
        }
        let cols: Vec<(usize, usize, Point)> =
            m_cols.iter().filter(|(_, oi, _)| prep.opts[*oi].t == t).copied().collect();
        let cap = capacity_by_slices(&cols.iter().map(|&(_, oi, pt)| (cost(oi), pt.h)).collect::<Vec<_>>(), max);
        let s_t = min_slices(&cap, need);
        if s_t == 0 {
            continue;
        }
        m.row(s_t as f64, f64::INFINITY, cols.iter().map(|&(c, oi, _)| (c, cost(oi) as f64)).collect());
    }
}

/// The GPUs' slice cost: the costliest layout class per GPU, times GPUs.
fn slice_capacity(prep: &Prepared<'_>) -> usize {
    let spec = prep.spec;
    let per_gpu = prep
        .classes
        .iter()
        .map(|c| {
            c.counts
                .iter()
                .enumerate()
                .map(|(p, &n)| usize::from(n) * usize::from(spec.profiles[p].slice_cost()))
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    per_gpu * prep.pb.gpus
}

/// The largest root demand `R` with `Σ_t S_t(R) ≤ max`, where `S_t(R)` is the fewest slices
/// whose capacity `caps[t]` reaches `ρ_t·R`; `None` when `tasks` (those with positive
/// demand) is empty.
///
/// `Σ_t S_t(R)` is non-decreasing in `R`: the largest feasible `R` is the largest candidate
/// `f_t(S)/ρ_t` that fits, found by bisection over the sorted candidates.
fn demand_bound(tasks: &[usize], caps: &[Vec<f64>], rho: &[f64], max: usize) -> Option<f64> {
    let fits = |r: f64| tasks.iter().map(|&t| min_slices(&caps[t], rho[t] * r)).sum::<usize>() <= max;
    let mut cand: Vec<f64> = tasks.iter().flat_map(|&t| caps[t].iter().map(move |&c| c / rho[t])).collect();
    cand.sort_by(f64::total_cmp);
    cand.dedup();
    // cand[0] = 0 always fits. No candidate lies strictly between cand[k-1] and cand[k], so
    // an R in that interval needs the slices of cand[k] (or of none when k is past the
    // end), which do not fit: R ≤ cand[k-1].
    let k = cand.partition_point(|&r| fits(r));
    (!tasks.is_empty() && k > 0).then(|| cand[k - 1])
}

/// How an app's root demand enters its demand and accuracy rows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Root {
    /// A fixed root demand, requests/s.
    Fixed(f64),
    /// A column holding the root demand.
    Column(usize),
}

impl Prepared<'_> {
    /// The objective's accuracy term per item/s routed to an instance of option `o`: its
    /// share of the conservative bound on lost accuracy, κ_t·(a_max(t) − A_v) / (A_max·demand);
    /// 0 for a most accurate variant.
    pub(crate) fn accuracy_per_item(&self, o: &Opt, demand: f64) -> f64 {
        let loss = self.amax_task[o.t] - self.pb.app.tasks[o.t].variants[o.v].accuracy;
        self.kappa[o.t].map_or(0.0, |k| k * loss / (self.a_max * demand))
    }
}

/// One app's columns in a MILP, from [`add_app_rows`].
pub(crate) struct AppCols {
    /// Instance columns `M` as (column, option index, point).
    pub(crate) m: Vec<(usize, usize, Point)>,
    /// Per instance column, its routed-load column `r` (for the tasks in
    /// [`Prepared::routed`]): the items/s the plan routes to the column's instances.
    pub(crate) r: Vec<Option<usize>>,
}

impl AppCols {
    /// The instances of column `k` of this app in `x`, each with the load the plan routes
    /// to it set (`load_rps`; left 0 for tasks routed by throughput, which [`summarize`]
    /// fills in).
    pub(crate) fn instances(&self, prep: &Prepared<'_>, k: usize, x: &[f64]) -> Vec<InstancePlan> {
        let (c, oi, pt) = self.m[k];
        let n = x[c].round().max(0.0) as usize;
        let load = self.r[k].map_or(0.0, |r| x[r].max(0.0) / n.max(1) as f64);
        (0..n).map(|_| InstancePlan { load_rps: load, ..prep.instance(oi, pt) }).collect()
    }
}

/// Add one app's instance columns `M(t,v,p)` (objective coefficient from `cost`) and
/// routed-load columns (objective coefficient per item/s from `item_cost`) with its demand
/// rows (Eqs. 4–6), accuracy row (Eqs. 10–13) and static per-task slice budgets (spaces
/// without T) to `m`. The joint cluster planner calls this once per app on one shared MILP.
///
/// **Routed load.** A task `u` in [`Prepared::routed`] (variable fan-out over its variants,
/// a demand that is not a fixed multiple of R, or a less accurate variant allowed) gets a
/// continuous column `r_j ≤ h_j·M_j` per instance column `j`: the items/s routed to it,
/// with `Σ_j r_j = D(u)`; the child's demand is `Σ_j F_j·r_j`, and the accuracy row counts
/// `r_j·(a_max − A_j)`. (Charging the child for u's capacity, `Σ_j F_j·h_j·M_j`, as the
/// paper's capacity-weighted fan-out does, passes the integer surplus of every instance
/// down the graph; charging accuracy on capacity counts the surplus of a less accurate
/// instance as lost accuracy although no request reaches it.) The plan routes u's items in
/// proportion to `r`. With `D(u) = Σ_j r_j ≥ ρ_min(u)·R`, the accuracy row still bounds
/// the routed accuracy conservatively.
pub(crate) fn add_app_rows(
    m: &mut Milp,
    prep: &Prepared<'_>,
    split: &Split,
    root: Root,
    cost: &dyn Fn(&Opt) -> f64,
    item_cost: &dyn Fn(&Opt) -> f64,
) -> AppCols {
    let pb = prep.pb;
    let app = pb.app;
    let spec = prep.spec;
    let nt = app.tasks.len();
    let g = pb.gpus as f64;
    let mut m_cols = Vec::new();
    for &(oi, pt) in &split.cols {
        let o = &prep.opts[oi];
        let prof = &spec.profiles[o.p];
        let loss = prep.amax_task[o.t] - app.tasks[o.t].variants[o.v].accuracy;
        if loss > 1e-12 && prep.kappa[o.t].is_none() {
            continue; // ρ_t = 0: only max-accuracy variants may serve t
        }
        let ub = f64::from(prof.max_instances) * g;
        let c = m.col(cost(o), 0.0, ub, true);
        m_cols.push((c, oi, pt));
    }
    let r_cols: Vec<Option<usize>> = m_cols
        .iter()
        .map(|&(c, oi, pt)| {
            prep.routed[prep.opts[oi].t].then(|| {
                let r = m.col(item_cost(&prep.opts[oi]), 0.0, f64::INFINITY, false);
                m.row(f64::NEG_INFINITY, 0.0, vec![(r, 1.0), (c, -pt.h)]);
                r
            })
        })
        .collect();
    let (demand, r_col) = match root {
        Root::Fixed(d) => (d, None),
        Root::Column(r) => (1.0, Some(r)),
    };
    // Demand rows: what serves t (its capacity, or for a routed task the load routed to its
    // columns, which the capacity bounds) covers what reaches it.
    let cols_of = |t: usize| m_cols.iter().zip(&r_cols).filter(move |((_, oi, _), _)| prep.opts[*oi].t == t);
    for t in 0..nt {
        let mut coefs: Vec<(usize, f64)> = cols_of(t)
            .map(|(&(c, _, pt), r)| match r {
                Some(r) => (*r, 1.0),
                None => (c, pt.h),
            })
            .collect();
        let mut rhs = 0.0;
        let parents = app.parents(t);
        if parents.is_empty() {
            rhs = demand;
        }
        for &u in &parents {
            match fixed_items(app, pb.space, &prep.fixed_rho, u, t) {
                Some(items) => rhs += items * demand,
                None => {
                    for (&(_, oi, _), r) in cols_of(u) {
                        let r = r.expect("a parent with plan-dependent items is routed");
                        coefs.push((r, -app.fanout(u, prep.opts[oi].v, t)));
                    }
                }
            }
        }
        let (lo, hi) = if prep.routed[t] { (rhs, rhs) } else { (rhs, f64::INFINITY) };
        match r_col {
            Some(r) => {
                if rhs != 0.0 {
                    coefs.push((r, -rhs));
                }
                m.row(lo - rhs, hi - rhs, coefs);
            }
            None => m.row(lo, hi, coefs),
        }
    }
    // Accuracy row: Σ κ_t Λ_t ≤ (1 − SLO) A_max R, Λ_t = Σ_j r_j·(a_max(t) − A_j) (a task
    // with a less accurate variant is routed).
    let budget = (1.0 - app.accuracy_slo) * prep.a_max;
    let mut acc: Vec<(usize, f64)> = Vec::new();
    for (&(_, oi, _), r) in m_cols.iter().zip(&r_cols) {
        let o = &prep.opts[oi];
        let loss = prep.amax_task[o.t] - app.tasks[o.t].variants[o.v].accuracy;
        if let (Some(k), true) = (prep.kappa[o.t], loss > 1e-12) {
            let r = r.expect("a task with a less accurate variant is routed");
            acc.push((r, k * loss));
        }
    }
    if !acc.is_empty() {
        match r_col {
            Some(r) => {
                acc.push((r, -budget));
                m.row(f64::NEG_INFINITY, 0.0, acc);
            }
            None => m.row(f64::NEG_INFINITY, budget * demand, acc),
        }
    }
    // Static per-task slice budgets (no T).
    for t in 0..nt {
        if let Some(b) = prep.slice_budget[t] {
            let coefs = m_cols
                .iter()
                .filter(|(_, oi, _)| prep.opts[*oi].t == t)
                .map(|&(c, oi, _)| (c, f64::from(spec.profiles[prep.opts[oi].p].slice_cost())))
                .collect();
            m.row(f64::NEG_INFINITY, b + 1e-9, coefs);
        }
    }
    AppCols { m: m_cols, r: r_cols }
}

/// Placement rows: per MIG profile, the instances of `m_cols` (column, profile index) fit the
/// slots of the layout counts `y_cols` (one per class), and `Σ y ≤ gpus`.
pub(crate) fn add_placement_rows(
    m: &mut Milp,
    spec: &GpuSpec,
    classes: &[LayoutClass],
    m_cols: &[(usize, usize)],
    y_cols: &[usize],
    gpus: f64,
) {
    for (p, _) in spec.profiles.iter().enumerate() {
        let mut coefs: Vec<(usize, f64)> = m_cols.iter().filter(|(_, q)| *q == p).map(|&(c, _)| (c, 1.0)).collect();
        if coefs.is_empty() {
            continue;
        }
        for (ci, cl) in classes.iter().enumerate() {
            if cl.counts[p] > 0 {
                coefs.push((y_cols[ci], -f64::from(cl.counts[p])));
            }
        }
        m.row(f64::NEG_INFINITY, 0.0, coefs);
    }
    m.row(f64::NEG_INFINITY, gpus, y_cols.iter().map(|&c| (c, 1.0)).collect());
}

/// Run the planner.
pub fn plan(
    pb: Problem<'_>,
    goal: Goal,
    cfg: &PlannerConfig,
    solver: &dyn Solver,
    clock: &dyn Clock,
) -> Result<Plan, PlanError> {
    let t0 = clock.now_s();
    let prep = prepare(pb, cfg)?;
    let half = pb.app.latency_slo_ms / 2.0;
    let assignments = enumerate_splits(&prep.levels, &prep.paths, half);
    let splits_total = assignments.len();
    // Build columns per split; deduplicate identical column sets and drop dominated ones.
    let mut splits: Vec<Split> = Vec::new();
    let mut seen: HashSet<Vec<(usize, u8, u32)>> = HashSet::new();
    for a in &assignments {
        let levels: Vec<f64> = a.iter().enumerate().map(|(t, &i)| prep.levels[t][i]).collect();
        let cols: Vec<(usize, Point)> =
            prep.opts.iter().enumerate().filter_map(|(oi, o)| o.best_within(levels[o.t]).map(|pt| (oi, pt))).collect();
        let sig: Vec<(usize, u8, u32)> = cols.iter().map(|(oi, pt)| (*oi, pt.mps, pt.batch)).collect();
        if seen.insert(sig) {
            splits.push(Split { levels, cols });
        }
    }
    let dominated = |a: &Split, b: &Split| -> bool {
        // b dominates a when b offers every option of a at an operating point with at least
        // its throughput: a column's cost is its slices, accuracy and downstream demand are
        // counted on the load routed to it (or, for a task that is not routed, downstream
        // demand is fixed), so every plan of a is a plan of b with the same objective.
        let pb: BTreeMap<usize, f64> = b.cols.iter().map(|(oi, pt)| (*oi, pt.h)).collect();
        a.cols.iter().all(|(oi, pt)| pb.get(oi).is_some_and(|&h| h >= pt.h))
    };
    let keep: Vec<bool> = (0..splits.len())
        .map(|i| {
            !(0..splits.len())
                .any(|j| j != i && dominated(&splits[i], &splits[j]) && !(dominated(&splits[j], &splits[i]) && j > i))
        })
        .collect();
    let splits: Vec<Split> = splits.into_iter().zip(keep).filter(|(_, k)| *k).map(|(s, _)| s).collect();

    // LP bounds.
    let deadline = t0 + cfg.time_limit_s;
    let mut bounded: Vec<(f64, usize, Built)> = Vec::new();
    for (i, s) in splits.iter().enumerate() {
        let built = build(&prep, s, goal, cfg);
        let left = deadline - clock.now_s();
        if left <= 0.0 {
            return Err(PlanError::Timeout(cfg.time_limit_s));
        }
        let lp = solver.solve(
            &built.milp,
            SolveOptions {
                relax: true,
                time_limit_s: left,
                mip_rel_gap: cfg.mip_rel_gap,
                mip_abs_gap: 0.0,
                presolve: true,
                heuristics: true,
            },
        )?;
        if lp.status == Status::Optimal || lp.status == Status::TimeLimitFeasible {
            bounded.push((lp.objective, i, built));
        }
    }
    bounded.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

    // At fixed demand, stop within `abs_gap_slices` slices of objective (default one): the slice term moves in
    // steps of β, so a tighter proof only reorders near-ties.
    let abs_gap = match goal {
        Goal::MinCost { .. } => cfg.abs_gap_slices * beta_of(cfg, pb.gpus),
        Goal::MaxDemand => 0.0,
    };
    let rel_gap = match goal {
        Goal::MinCost { .. } => cfg.mip_rel_gap,
        Goal::MaxDemand => cfg.mip_rel_gap.max(cfg.max_demand_rel_gap),
    };
    // A split's MILP: the goal's gaps, without HiGHS's presolve (`docs/planner.md`,
    // "Solver settings").
    let split_opts = |left: f64| SolveOptions {
        relax: false,
        time_limit_s: left,
        mip_rel_gap: rel_gap,
        mip_abs_gap: abs_gap,
        presolve: false,
        heuristics: true,
    };
    // What a split must beat the incumbent `obj` by to matter: the relative gap or the
    // absolute one, whichever is larger (pruning by LP bound and the cutoff row use it).
    let must_beat = |obj: f64| obj + (rel_gap * obj.abs().max(1e-9)).max(abs_gap);
    let mut best: Option<(f64, usize, Vec<f64>)> = None; // (objective, bounded index, x)
    let mut bound = f64::NEG_INFINITY;
    let (mut solved, mut pruned) = (0usize, 0usize);
    let mut timed_out = false;
    // The cutoff model of a split: its MILP with the row objective ≥ `c`.
    let cut_model = |built: &Built, c: f64| -> Milp {
        let mut m = built.milp.clone();
        let coefs =
            m.cols.iter().enumerate().filter(|(_, col)| col.cost != 0.0).map(|(j, col)| (j, col.cost)).collect();
        m.row(c - m.offset, f64::INFINITY, coefs);
        if let Some(r) = built.r_col {
            // Maximising demand, the objective is R less tie-breaks: the cutoff asks for
            // R ≥ c, where whole instances of each task need the slices of
            // `add_cover_rows` (the LP alone spreads fractional instances).
            m.cols[r].lb = m.cols[r].lb.max(c);
            add_cover_rows(&mut m, &prep, &built.cols.m, c);
        }
        m
    };
    // The feasibility probe of a split when maximising demand: R fixed at `c`, the cover
    // rows at `c`, fewest slices (then GPUs) as the objective.
    let probe_model = |built: &Built, r: usize, c: f64| -> Milp {
        let mut m = built.milp.clone();
        for (j, col) in m.cols.iter_mut().enumerate() {
            col.cost = if j == r { 0.0 } else { col.cost / EPS_SLICE_MAX_DEMAND };
        }
        m.cols[r].lb = c;
        m.cols[r].ub = c;
        add_cover_rows(&mut m, &prep, &built.cols.m, c);
        m
    };
    for (k, (lp_bound, _, built)) in bounded.iter().enumerate() {
        if let Some((obj, _, _)) = &best {
            if *lp_bound <= must_beat(*obj) {
                pruned += 1;
                bound = bound.max(*lp_bound);
                continue;
            }
        }
        let left = deadline - clock.now_s();
        if left <= 0.0 {
            timed_out = true;
            bound = bound.max(*lp_bound);
            continue;
        }
        if let Some(r) = built.r_col {
            // Maximising demand. The first split's MILP stops within `FIND_GAP` (the last
            // percent is what its search spends most of its time on); every split is then
            // settled by probes: "does it serve R = c", c the least demand that beats the
            // incumbent by the goal's margin. The model is monotone in R, so a probe
            // without a plan proves the split cannot beat the incumbent; one with a plan
            // is the new incumbent, and the split is then solved under the cutoff. With R fixed, the
            // whole-instance cover rows at c are as tight as at fixed demand (the plain
            // model cannot carry them: its R is a column) and fewest slices as the
            // objective guides the search; most probes end at the root.
            let mut proved = *lp_bound;
            if best.is_none() {
                let opts = SolveOptions { mip_rel_gap: rel_gap.max(FIND_GAP), ..split_opts(left) };
                let sol = solver.solve(&built.milp, opts)?;
                solved += 1;
                match sol.status {
                    Status::Optimal | Status::TimeLimitFeasible => {
                        if sol.bound.is_finite() {
                            proved = proved.min(sol.bound.max(sol.objective));
                        }
                        best = Some((sol.objective, k, sol.x));
                    }
                    Status::TimeLimitNoSolution => {
                        timed_out = true;
                        bound = bound.max(if sol.bound.is_finite() { sol.bound.min(proved) } else { proved });
                        continue;
                    }
                    Status::Infeasible => continue,
                }
            }
            let c = must_beat(best.as_ref().map_or(f64::NEG_INFINITY, |b| b.0));
            if proved <= c {
                bound = bound.max(proved);
                continue;
            }
            let left = deadline - clock.now_s();
            if left <= 0.0 {
                timed_out = true;
                bound = bound.max(proved);
                continue;
            }
            let sol = solver.solve(
                &probe_model(built, r, c),
                SolveOptions { mip_rel_gap: 1.0, heuristics: false, ..split_opts(left) },
            )?;
            solved += 1;
            match sol.status {
                Status::Infeasible => {
                    bound = bound.max(c);
                    continue;
                }
                Status::TimeLimitNoSolution => {
                    timed_out = true;
                    bound = bound.max(proved);
                    continue;
                }
                Status::Optimal | Status::TimeLimitFeasible => {
                    // A plan at R = c beats the incumbent: keep it, then search the split
                    // for the most it serves, under the cutoff this plan sets (below).
                    best = Some((built.milp.objective(&sol.x), k, sol.x));
                }
            }
        }
        let left = deadline - clock.now_s();
        if left <= 0.0 {
            timed_out = true;
            bound = bound.max(*lp_bound);
            continue;
        }
        // A split only matters if it beats the incumbent by more than the gap: ask for that
        // as a row (objective ≥ cutoff), so the solver can stop as soon as it proves the
        // split cannot. Infeasible under the cutoff = the split's optimum is below it.
        // The margin is `must_beat`'s: a split that cannot beat the incumbent by more than
        // the gap the solver is asked to close anyway does not matter. It is a row, not
        // a solver option (an option's sense is easy to misread for a maximisation, and a
        // solution that meets the row meets the model).
        let cutoff = best.as_ref().map(|(obj, _, _)| must_beat(*obj));
        let cut_milp;
        let milp = match cutoff {
            Some(c) => {
                cut_milp = cut_model(built, c);
                &cut_milp
            }
            None => &built.milp,
        };
        let sol = solver.solve(milp, split_opts(left))?;
        solved += 1;
        match sol.status {
            Status::Infeasible if cutoff.is_some() => {
                bound = bound.max(cutoff.unwrap_or(f64::NEG_INFINITY));
            }
            Status::Optimal | Status::TimeLimitFeasible => {
                bound = bound.max(if sol.bound.is_finite() { sol.bound } else { *lp_bound });
                if best.as_ref().is_none_or(|(o, _, _)| sol.objective > *o) {
                    best = Some((sol.objective, k, sol.x));
                }
            }
            Status::TimeLimitNoSolution => {
                timed_out = true;
                // The split's optimum is at most what its search proved (under a cutoff
                // row: at most the cutoff, or the proved bound if that is higher).
                let proved = if sol.bound.is_finite() { sol.bound.min(*lp_bound) } else { *lp_bound };
                bound = bound.max(match cutoff {
                    Some(c) => proved.max(c),
                    None => proved,
                });
            }
            Status::Infeasible => {}
        }
    }
    let Some((_, k, x)) = best else {
        if timed_out {
            return Err(PlanError::Timeout(cfg.time_limit_s));
        }
        return match goal {
            Goal::MinCost { demand } => {
                let max = plan(pb, Goal::MaxDemand, cfg, solver, clock);
                match max {
                    Ok(max) if max.demand_rps >= demand => Ok(plan_above(pb, demand, max, cfg, solver, clock)),
                    other => Err(infeasible(&prep, goal, Some(other), cfg, solver, clock)),
                }
            }
            Goal::MaxDemand => Err(infeasible(&prep, goal, None, cfg, solver, clock)),
        };
    };
    if let (Goal::MaxDemand, Some(r)) = (goal, bounded[k].2.r_col) {
        // A root demand within the solver's integrality tolerance of 0 (instance counts of
        // ~1e-6 read as 0) places nothing: no demand is served. Every task with demand needs
        // an instance.
        let cols = &bounded[k].2.cols.m;
        let placed = (0..pb.app.tasks.len())
            .filter(|&t| prep.rho_min[t] > 1e-12)
            .all(|t| cols.iter().any(|&(c, oi, _)| prep.opts[oi].t == t && x[c].round() >= 1.0));
        if x[r] <= 1e-9 || !placed {
            return Err(infeasible(&prep, goal, None, cfg, solver, clock));
        }
    }
    let (_, si, built) = &bounded[k];
    let mut x = x;
    if !repack(&prep, built, &mut x, solver, (deadline - clock.now_s()).max(0.05))? {
        // The continuous layout counts do not round to a packing on the GPUs: solve this
        // split again with integer layout counts.
        let mut exact = built.milp.clone();
        for &c in &built.y_cols {
            exact.cols[c].integer = true;
        }
        let left = deadline - clock.now_s();
        if left <= 0.0 {
            return Err(PlanError::Timeout(cfg.time_limit_s));
        }
        let sol = solver.solve(&exact, split_opts(left))?;
        match sol.status {
            Status::Optimal | Status::TimeLimitFeasible => {
                x = sol.x;
                repack(&prep, built, &mut x, solver, (deadline - clock.now_s()).max(0.05))?;
            }
            Status::TimeLimitNoSolution => return Err(PlanError::Timeout(cfg.time_limit_s)),
            Status::Infeasible => return Err(infeasible(&prep, goal, None, cfg, solver, clock)),
        }
    }
    let objective = built.milp.objective(&x);
    let bound = bound.max(objective);
    let gap = (bound - objective).abs() / objective.abs().max(1e-9);
    let stats = SolveStats {
        solve_ms: (clock.now_s() - t0) * 1e3,
        gap,
        objective,
        bound,
        splits_total,
        splits_solved: solved,
        splits_pruned: pruned,
        note: None,
        latency_levels: if prep.exact_levels { "exact".into() } else { format!("grid of {} per task", cfg.max_levels) },
    };
    Ok(decode(&prep, &splits[*si], built, &x, goal, stats))
}

/// Fallback when a demand below the maximum is infeasible in the model.
///
/// With accuracy counted on routed load the model is monotone in demand, so this guards
/// against solver tolerances only. (It was written for the capacity-counted accuracy
/// bound, which divided lost accuracy by the demand and could reject a small demand.) A
/// plan for the maximum serviceable demand R* ≥ `demand` meets every paper constraint at
/// `demand` too (capacity scales, accuracy and latency do not change), so plan at R* and
/// relabel; the plan says so in `stats.note`.
fn plan_above(
    pb: Problem<'_>,
    demand: f64,
    max: Plan,
    cfg: &PlannerConfig,
    solver: &dyn Solver,
    clock: &dyn Clock,
) -> Plan {
    let at = max.demand_rps * (1.0 - 1e-9);
    let mut p = plan(pb, Goal::MinCost { demand: at }, cfg, solver, clock).unwrap_or(max);
    let scale = demand / p.demand_rps;
    for t in &mut p.tasks {
        t.demand_rps *= scale;
    }
    for i in p.gpus.iter_mut().flat_map(|g| &mut g.instances) {
        i.load_rps *= scale;
    }
    p.stats.note = Some(format!(
        "planned for {:.1} req/s: at {demand:.1} req/s the conservative accuracy bound (lost accuracy per unit of demand) admits no plan, and a plan for a higher demand meets every constraint at the lower one",
        p.demand_rps
    ));
    p.demand_rps = demand;
    p
}

/// Re-choose the layout counts `y` for the chosen instances so they use the fewest GPUs.
/// The main MILP stops at the MIP gap, which is far coarser than its GPU tie-break; this
/// small exact MILP (one column per layout class) closes that.
/// Returns whether the instances fit the available GPUs.
fn repack(
    prep: &Prepared<'_>,
    built: &Built,
    x: &mut [f64],
    solver: &dyn Solver,
    time_s: f64,
) -> Result<bool, PlanError> {
    let nprof = prep.spec.profiles.len();
    let mut need = vec![0.0; nprof];
    for &(c, oi, _) in &built.cols.m {
        need[prep.opts[oi].p] += x[c].round();
    }
    let mut m = Milp::default();
    let ys: Vec<usize> = prep.classes.iter().map(|_| m.col(1.0, 0.0, prep.pb.gpus as f64, true)).collect();
    for (p, &n) in need.iter().enumerate() {
        if n > 0.0 {
            let coefs = prep
                .classes
                .iter()
                .zip(&ys)
                .filter(|(cl, _)| cl.counts[p] > 0)
                .map(|(cl, &y)| (y, f64::from(cl.counts[p])))
                .collect();
            m.row(n, f64::INFINITY, coefs);
        }
    }
    m.row(f64::NEG_INFINITY, prep.pb.gpus as f64, ys.iter().map(|&y| (y, 1.0)).collect());
    let sol = solver.solve(&m, SolveOptions::milp(time_s, 0.0))?;
    if !matches!(sol.status, Status::Optimal | Status::TimeLimitFeasible) {
        return Ok(false);
    }
    let integral = built.y_cols.iter().all(|&c| (x[c] - x[c].round()).abs() <= 1e-6);
    let before: f64 = built.y_cols.iter().map(|&c| x[c].round()).sum();
    let after: f64 = sol.x.iter().map(|v| v.round()).sum();
    if !integral || after < before {
        for (&c, v) in built.y_cols.iter().zip(&sol.x) {
            x[c] = v.round();
        }
    }
    Ok(true)
}

/// The error for "no plan": says which constraint binds. `max` is the maximum-demand
/// result when the caller already has it.
fn infeasible(
    prep: &Prepared<'_>,
    goal: Goal,
    max: Option<Result<Plan, PlanError>>,
    cfg: &PlannerConfig,
    solver: &dyn Solver,
    clock: &dyn Clock,
) -> PlanError {
    let pb = prep.pb;
    let demand = match goal {
        Goal::MinCost { demand } => demand,
        Goal::MaxDemand => 0.0,
    };
    let binding = match goal {
        Goal::MaxDemand => {
            // Would any demand be served without the accuracy SLO? (The relaxed app has an
            // accuracy SLO of ~0, so this recursion is one level deep.)
            let without_accuracy = (pb.app.accuracy_slo > 1e-6).then(|| {
                let mut relaxed = pb.app.clone();
                relaxed.accuracy_slo = 1e-9;
                plan(Problem { app: &relaxed, ..pb }, Goal::MaxDemand, cfg, solver, clock)
            });
            match without_accuracy {
                Some(Ok(p)) => format!(
                    "the accuracy SLO {:.2} binds: without it this space serves {:.1} req/s (at {:.4} of the maximum accuracy); with it, none",
                    pb.app.accuracy_slo, p.demand_rps, p.accuracy
                ),
                _ => format!(
                    "placement binds: one instance per task within the latency SLO does not fit on {} GPU(s){}",
                    pb.gpus,
                    if pb.space.t { "" } else { " under the static per-task budgets" }
                ),
            }
        }
        Goal::MinCost { .. } => match max.unwrap_or_else(|| plan(pb, Goal::MaxDemand, cfg, solver, clock)) {
            Ok(p) => format!(
                "GPU capacity binds: the most this space serves under the latency and accuracy SLOs is {:.1} req/s{}",
                p.demand_rps,
                if pb.space.t { "" } else { " (with static per-task budgets)" }
            ),
            Err(e) => format!("even the maximum-demand search fails: {e}"),
        },
    };
    PlanError::Infeasible { app: pb.app.name.clone(), space: pb.space, demand, gpus: pb.gpus, gpu: pb.gpu, binding }
}

fn decode(prep: &Prepared<'_>, split: &Split, built: &Built, x: &[f64], goal: Goal, stats: SolveStats) -> Plan {
    let spec = prep.spec;
    let demand = match (goal, built.r_col) {
        (Goal::MinCost { demand }, _) => demand,
        (Goal::MaxDemand, Some(r)) => x[r],
        (Goal::MaxDemand, None) => 0.0,
    };
    // Instances, grouped by profile, in a deterministic order.
    let mut by_profile: BTreeMap<usize, Vec<InstancePlan>> = BTreeMap::new();
    for (k, &(_, oi, _)) in built.cols.m.iter().enumerate() {
        by_profile.entry(prep.opts[oi].p).or_default().extend(built.cols.instances(prep, k, x));
    }
    let counts: Vec<usize> = built.y_cols.iter().map(|&yc| (x[yc].round() as i64).max(0) as usize).collect();
    let gpus = fill_layouts(spec, &prep.classes, &counts, by_profile);
    summarize(prep, &split.levels, gpus, demand, stats)
}

/// Lay out `counts[c]` GPUs of each class `c` and fill their slots with the instances,
/// grouped by profile index; GPUs left empty are dropped. The placement rows guarantee that
/// every instance finds a slot.
pub(crate) fn fill_layouts(
    spec: &GpuSpec,
    classes: &[LayoutClass],
    counts: &[usize],
    by_profile: BTreeMap<usize, Vec<InstancePlan>>,
) -> Vec<GpuPlan> {
    // GPUs from layout classes; instances fill slots GPU by GPU.
    // (free slots as (profile, start), instances placed)
    type Slots = Vec<(usize, u8)>;
    let mut gpus: Vec<(Slots, Vec<InstancePlan>)> = Vec::new();
    for (ci, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            let slots = classes[ci].representative.placements.iter().map(|p| (p.profile, p.start)).collect();
            gpus.push((slots, Vec::new()));
        }
    }
    // Put GPUs that can take the largest instances first, so the fill is stable.
    gpus.sort_by_key(|(slots, _)| {
        std::cmp::Reverse(slots.iter().map(|(p, _)| spec.profiles[*p].compute_slices).max().unwrap_or(0))
    });
    for (p, insts) in by_profile {
        let mut it = insts.into_iter();
        'outer: for (slots, placed) in gpus.iter_mut() {
            for &(sp, start) in slots.iter() {
                if sp == p {
                    match it.next() {
                        Some(mut inst) => {
                            inst.start = start;
                            placed.push(inst);
                        }
                        None => break 'outer,
                    }
                }
            }
        }
        debug_assert!(it.next().is_none(), "placement rows guarantee enough slots");
    }
    gpus.into_iter()
        .filter(|(_, placed)| !placed.is_empty())
        .enumerate()
        .map(|(i, (_, mut placed))| {
            placed.sort_by_key(|p| p.start);
            GpuPlan { gpu: i, instances: placed }
        })
        .collect()
}

impl Prepared<'_> {
    /// The instance (start slot 0) of option `oi` at operating point `pt`.
    pub(crate) fn instance(&self, oi: usize, pt: Point) -> InstancePlan {
        let o = &self.opts[oi];
        let app = self.pb.app;
        let prof = &self.spec.profiles[o.p];
        InstancePlan {
            mig_profile: prof.name.into(),
            start: 0,
            slices: prof.slice_cost(),
            mps: pt.mps,
            task: app.tasks[o.t].name.clone(),
            variant: app.tasks[o.t].variants[o.v].name.clone(),
            batch: pt.batch,
            p95_ms: pt.l,
            throughput_rps: pt.h,
            app: app.name.clone(),
            load_rps: 0.0,
        }
    }
}

/// The plan of one app whose instances are `gpus`, at root `demand`. Items are routed to
/// the instances of a task in [`Prepared::routed`] in proportion to the `load_rps` the
/// decode set from the routed-load columns, and to the others (or when a routed task's
/// loads are all 0) in proportion to throughput. Per-task demand and accuracy follow the
/// paper's definitions with those routing shares in place of capacity shares, and every
/// instance's `load_rps` is set to its share of its task's demand. `levels` are the latency
/// budgets of the split the instances come from.
pub(crate) fn summarize(
    prep: &Prepared<'_>,
    levels: &[f64],
    mut gpus: Vec<GpuPlan>,
    demand: f64,
    stats: SolveStats,
) -> Plan {
    let pb = prep.pb;
    let app = pb.app;
    let spec = prep.spec;
    let nt = app.tasks.len();
    let task_of = |i: &InstancePlan| app.task_index(&i.task);
    let variant_of =
        |t: usize, i: &InstancePlan| app.tasks[t].variants.iter().position(|v| v.name == i.variant).unwrap_or(0);
    // Routing weight per instance, and per task their sum.
    let by_load: Vec<bool> = (0..nt)
        .map(|t| {
            prep.routed[t] && gpus.iter().flat_map(|g| &g.instances).any(|i| task_of(i) == Some(t) && i.load_rps > 0.0)
        })
        .collect();
    let weight = |t: usize, i: &InstancePlan| if by_load[t] { i.load_rps.max(0.0) } else { i.throughput_rps };
    // Per task and variant: (instances, capacity, routing weight).
    let mut cap = vec![BTreeMap::<usize, (u32, f64, f64)>::new(); nt];
    for i in gpus.iter().flat_map(|g| &g.instances) {
        if let Some(t) = task_of(i) {
            let e = cap[t].entry(variant_of(t, i)).or_insert((0, 0.0, 0.0));
            e.0 += 1;
            e.1 += i.throughput_rps;
            e.2 += weight(t, i);
        }
    }
    let total: Vec<f64> = cap.iter().map(|m| m.values().map(|e| e.1).sum()).collect();
    let wsum: Vec<f64> = cap.iter().map(|m| m.values().map(|e| e.2).sum()).collect();
    let mut dem = vec![0.0; nt];
    for &t in &app.topo_order().unwrap_or_default() {
        let ps = app.parents(t);
        dem[t] = if ps.is_empty() {
            demand
        } else {
            ps.iter()
                .map(|&u| {
                    let fhat = if wsum[u] > 0.0 {
                        cap[u].iter().map(|(&v, e)| e.2 * app.fanout(u, v, t)).sum::<f64>() / wsum[u]
                    } else {
                        0.0
                    };
                    dem[u] * fhat
                })
                .sum()
        };
    }
    for i in gpus.iter_mut().flat_map(|g| &mut g.instances) {
        if let Some(t) = task_of(i) {
            // A variant's share as routed; within one variant, in proportion to throughput
            // (the fan-out is the same, so any split is as good, and the solver's choice
            // among them is arbitrary: plans of the same state must not differ by it).
            let e = cap[t][&variant_of(t, i)];
            let w = if e.1 > 0.0 { e.2 * i.throughput_rps / e.1 } else { 0.0 };
            // To 0.001 items/s, so that solver round-off does not make plans differ.
            let load = if wsum[t] > 0.0 { dem[t] * w / wsum[t] } else { 0.0 };
            i.load_rps = (load * 1e3).round() / 1e3;
        }
    }
    let ahat: Vec<f64> = (0..nt)
        .map(|t| {
            if wsum[t] > 0.0 {
                cap[t].iter().map(|(&v, e)| e.2 * app.tasks[t].variants[v].accuracy).sum::<f64>() / wsum[t]
            } else {
                0.0
            }
        })
        .collect();
    let f = path_weights(app, &prep.paths);
    let accuracy =
        prep.paths.iter().zip(&f).map(|(p, fp)| fp * p.iter().map(|&t| ahat[t]).product::<f64>()).sum::<f64>()
            / prep.a_max;
    let slowest: Vec<f64> = (0..nt)
        .map(|t| {
            gpus.iter()
                .flat_map(|g| &g.instances)
                .filter(|i| i.task == app.tasks[t].name)
                .map(|i| i.p95_ms)
                .fold(0.0, f64::max)
        })
        .collect();
    let latency_bound_ms =
        prep.paths.iter().map(|p| p.iter().map(|&t| 2.0 * slowest[t]).sum::<f64>()).fold(0.0, f64::max);
    let tasks: Vec<TaskPlan> = (0..nt)
        .map(|t| TaskPlan {
            task: app.tasks[t].name.clone(),
            latency_budget_ms: levels[t],
            slowest_p95_ms: slowest[t],
            demand_rps: dem[t],
            capacity_rps: total[t],
            slices: gpus
                .iter()
                .flat_map(|g| &g.instances)
                .filter(|i| i.task == app.tasks[t].name)
                .map(|i| u32::from(i.slices))
                .sum(),
            variants: cap[t]
                .iter()
                .map(|(&v, e)| VariantShare {
                    variant: app.tasks[t].variants[v].name.clone(),
                    accuracy: app.tasks[t].variants[v].accuracy,
                    instances: e.0,
                    capacity_rps: e.1,
                    weight: if wsum[t] > 0.0 { e.2 / wsum[t] } else { 0.0 },
                })
                .collect(),
        })
        .collect();
    let slices_used = tasks.iter().map(|t| t.slices).sum();
    let compute_slices = gpus
        .iter()
        .flat_map(|g| &g.instances)
        .map(|i| spec.profile_index(&i.mig_profile).map_or(0, |p| u32::from(spec.profiles[p].compute_slices)))
        .sum();
    Plan {
        app: app.name.clone(),
        space: pb.space.to_string(),
        gpu_model: pb.gpu,
        gpus_available: pb.gpus,
        demand_rps: demand,
        accuracy,
        accuracy_slo: app.accuracy_slo,
        latency_bound_ms,
        latency_slo_ms: app.latency_slo_ms,
        slices_used,
        compute_slices,
        gpus_used: gpus.len(),
        tasks,
        gpus,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::{capacity_by_slices, demand_bound, min_slices};

    #[test]
    fn whole_instances_need_more_slices_than_the_lp() {
        // 1 slice: 10 req/s, 2 slices: 25 req/s, 3 slices: 30 req/s.
        let f = capacity_by_slices(&[(1, 10.0), (2, 25.0), (3, 30.0)], 6);
        assert_eq!(f, vec![0.0, 10.0, 25.0, 35.0, 50.0, 60.0, 75.0]);
        // The LP covers 26 req/s with 26/12.5 = 2.08 slices; whole instances need 3.
        assert_eq!(min_slices(&f, 26.0), 3);
        assert_eq!(min_slices(&f, 25.0), 2);
        assert_eq!(min_slices(&f, 0.0), 0);
        // Not coverable within the slices: one past the end.
        assert_eq!(min_slices(&f, 76.0), f.len());
    }

    #[test]
    fn the_demand_bound_counts_whole_instances_of_every_task() {
        // Task 0: 10 req/s per weight unit; task 1: 5 req/s per unit and twice the demand
        // multiplier. 6 units in all.
        let caps = vec![capacity_by_slices(&[(1, 10.0)], 6), capacity_by_slices(&[(1, 5.0)], 6)];
        // R = 12: task 0 needs 2 units (12 req/s), task 1 needs 24 req/s = 5 units: 7 > 6.
        // R = 10: 1 + 4 = 5 units; the next candidate, R = 12.5 (task 1 at 5 units), needs
        // 2 + 5 = 7. The LP would allow R = 6 / (1/10 + 2/5) = 12.
        let r = demand_bound(&[0, 1], &caps, &[1.0, 2.0], 6).expect("bounded");
        assert!((r - 10.0).abs() < 1e-9, "{r}");
        // No task with demand: no bound.
        assert_eq!(demand_bound(&[], &caps, &[1.0, 2.0], 6), None);
        // A budget that covers nothing keeps R at 0.
        assert_eq!(demand_bound(&[0, 1], &caps, &[1.0, 2.0], 1), Some(0.0));
    }
}
