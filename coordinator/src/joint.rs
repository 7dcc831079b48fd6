//! Joint planning: one MILP over every app that runs on one GPU model, in which MIG
//! instances of different apps share GPUs.
//!
//! ## Decomposition
//! 1. **Per-app options.** Each app is first planned alone on all the GPUs (the per-app
//!    planner of [`crate::planner`]); its winning latency split (the per-task latency
//!    budgets) fixes which operating point each (task, variant, MIG profile) uses. An app
//!    the GPUs cannot serve at its demand even alone keeps the split of its maximum-demand
//!    plan.
//! 2. **One shared MILP.** Every app adds its instance columns, demand rows and accuracy row
//!    for that split (`planner::add_app_rows`); the layout counts `y(c)` and the
//!    per-profile placement rows are shared, so a GPU's layout is legal as a whole and
//!    instances of different apps sit side by side (each instance belongs to one app, so
//!    apps never share an MPS process). Lexicographic objective by weights: fewest GPUs,
//!    then fewest slices, then least (conservatively bounded) accuracy loss; a bonus per
//!    instance that keeps running where it runs now (`keep`), worth less than a slice.
//! 3. **Shedding by priority.** When the apps cannot all be served, each priority level, from
//!    the highest, maximises its served share of demand with the levels above held at what
//!    they got; then the GPUs are minimised for the served demands. The outcome says who was
//!    shed and by how much.
//!
//! Each app's root demand `R` is a column bounded below by its demand (a plan for a higher
//! demand meets every constraint at the lower one, see `plan_above` in the planner), so the
//! conservative accuracy bound never forces a needless fallback.
//!
//! **Bounds reported.** `lower_bound_gpus` = ⌈Σ per-app compute slices of the per-app plans
//! / 7⌉ (the bound: apps packed perfectly); `lp_bound_gpus` = the LP relaxation of
//! the shared MILP minimising GPUs (valid for the chosen splits). Pure: the solver and the
//! clock are passed in.

use crate::milp::{Milp, SolveOptions, Solver, Status};
use crate::planner::{
    add_app_rows, add_placement_rows, fill_layouts, plan, prepare, summarize, AppCols, Clock, Goal, PlanError,
    PlannerConfig, Prepared, Problem, Root, Split,
};
use crate::spaces::SearchSpace;
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::{GpuModel, COMPUTE_SLICES};
use jigsaw_protocol::plan::{GpuPlan, InstancePlan, Plan, SolveStats};
use jigsaw_protocol::profile::ProfileTable;
use std::collections::BTreeMap;

/// One app of a joint problem.
#[derive(Debug, Clone, Copy)]
pub struct JointApp<'a> {
    /// The application.
    pub app: &'a AppSpec,
    /// Its profiles.
    pub profiles: &'a ProfileTable,
    /// Root demand to serve, requests/s.
    pub demand: f64,
    /// Higher is served first when not every app fits.
    pub priority: u32,
}

/// Live instances per (app, task, variant, MIG profile): what `keep` rewards.
pub type LiveCounts = BTreeMap<(String, String, String, String), u32>;

/// Options of a joint solve.
#[derive(Debug, Clone, Default)]
pub struct JointOptions {
    /// Instances per task at least (2 for failure-domain spread), where capacity allows.
    pub min_instances: u32,
    /// Instances running now, per (app, task, variant, profile).
    pub live: LiveCounts,
    /// Objective bonus per kept instance, in slices (below 1: a slice saved still wins).
    pub keep_weight_slices: f64,
}

/// What one app got.
#[derive(Debug, Clone, PartialEq)]
pub struct AppOutcome {
    /// App name.
    pub app: String,
    /// Priority.
    pub priority: u32,
    /// Demand asked for, requests/s.
    pub requested_rps: f64,
    /// The app's plan (its instances in one pseudo-GPU, unplaced), or why it has none.
    pub plan: Result<Plan, String>,
    /// Compute slices of the per-app plan on all GPUs (for the lower bound).
    pub alone_compute_slices: u32,
}

impl AppOutcome {
    /// Demand planned for, requests/s (0 without a plan).
    pub fn planned_rps(&self) -> f64 {
        self.plan.as_ref().map_or(0.0, |p| p.demand_rps)
    }
}

/// Figures of a joint solve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JointStats {
    /// GPUs of the MILP's layout.
    pub gpus_used: usize,
    /// Compute slices used.
    pub compute_slices: u32,
    /// ⌈Σ per-app compute slices / 7⌉.
    pub lower_bound_gpus: usize,
    /// ⌈LP relaxation of the shared MILP, minimising GPUs⌉ (for the chosen splits).
    pub lp_bound_gpus: usize,
    /// Per-app pre-solves, ms.
    pub options_ms: f64,
    /// The shared MILP(s), ms.
    pub joint_ms: f64,
    /// Whether the shared MILP stopped at its time limit.
    pub timed_out: bool,
    /// How the plan was found (spread dropped, shedding, ...).
    pub notes: Vec<String>,
}

/// The result of [`plan_joint`].
#[derive(Debug, Clone, PartialEq)]
pub struct JointOutcome {
    /// Per app, in input order.
    pub apps: Vec<AppOutcome>,
    /// A legal layout of every instance on logical GPUs (the MILP's layout counts).
    pub gpus: Vec<GpuPlan>,
    /// Figures.
    pub stats: JointStats,
}

/// One app's columns in a built shared MILP.
struct Member {
    /// Index into the planned members.
    idx: usize,
    cols: AppCols,
    served: usize,
}

/// Plan every app of `apps` jointly on `gpus` GPUs of model `gpu`.
#[allow(clippy::too_many_arguments)]
pub fn plan_joint(
    apps: &[JointApp<'_>],
    gpu: GpuModel,
    gpus: usize,
    space: SearchSpace,
    cfg: &PlannerConfig,
    opts: &JointOptions,
    solver: &dyn Solver,
    clock: &dyn Clock,
) -> JointOutcome {
    let t0 = clock.now_s();
    let mut stats = JointStats::default();
    let mut outcomes: Vec<AppOutcome> = apps
        .iter()
        .map(|a| AppOutcome {
            app: a.app.name.clone(),
            priority: a.priority,
            requested_rps: a.demand,
            plan: Err("not planned".into()),
            alone_compute_slices: 0,
        })
        .collect();
    // 1. Per-app options: the latency split of each app's own best plan.
    let mut members: Vec<(usize, Prepared<'_>, Split, f64)> = Vec::new();
    for (i, a) in apps.iter().enumerate() {
        let pb = Problem { app: a.app, profiles: a.profiles, gpu, gpus, space };
        let alone = match plan(pb, Goal::MinCost { demand: a.demand }, cfg, solver, clock) {
            Ok(p) => Ok(p),
            Err(e) => match plan(pb, Goal::MaxDemand, cfg, solver, clock) {
                Ok(p) if p.demand_rps > 0.0 => Ok(p),
                _ => Err(e),
            },
        };
        let alone = match alone.and_then(|p| prepare(pb, cfg).map(|prep| (p, prep))) {
            Ok(x) => x,
            Err(e) => {
                outcomes[i].plan = Err(e.to_string());
                continue;
            }
        };
        let (p, prep) = alone;
        outcomes[i].alone_compute_slices = p.compute_slices;
        let levels: Vec<f64> = p.tasks.iter().map(|t| t.latency_budget_ms).collect();
        let cols =
            prep.opts.iter().enumerate().filter_map(|(oi, o)| o.best_within(levels[o.t]).map(|pt| (oi, pt))).collect();
        members.push((i, prep, Split { levels, cols }, a.demand));
    }
    stats.options_ms = (clock.now_s() - t0) * 1e3;
    let slices_sum: u32 = outcomes.iter().map(|o| o.alone_compute_slices).sum();
    stats.lower_bound_gpus = slices_sum.div_ceil(u32::from(COMPUTE_SLICES)) as usize;
    if members.is_empty() {
        return JointOutcome { apps: outcomes, gpus: Vec::new(), stats };
    }
    let spec = gpu.spec();
    let classes = &members[0].1.classes;
    let g = gpus as f64;
    // Weights: one GPU = 1; all slices together < 1; all accuracy terms < one slice; keep
    // bonus per instance = keep_weight_slices of a slice.
    let w_s = 1.0 / (f64::from(COMPUTE_SLICES) + 1.0) / (g + 1.0);
    let w_a = w_s / (members.len() as f64 + 1.0);
    let w_k = w_s * opts.keep_weight_slices.clamp(0.0, 0.99);
    // The solver may stop this far from the optimum. Below half a slice, the slice count is
    // optimal; below half a keep bonus, a re-plan of the same state keeps every instance: the
    // first plan is within `gap` of the best without keep, so an answer that drops one kept
    // instance is at least `w_k - 2 gap` worse than keeping all. No relative gap: one of
    // 1e-4 on an objective of hundreds of GPUs is worth more than a slice.
    let abs_gap = if w_k > 0.0 { 0.4 * w_k } else { 0.5 * w_s };
    // The shared MILPs (full, then the shedding levels and the settling solve) share one
    // deadline: twice the planner's limit from the start, since the per-app pre-solves above
    // each already had a limit of their own.
    let deadline = t0 + cfg.time_limit_s.max(0.0) * 2.0;

    // The shared model, parameterised by phase.
    #[derive(Clone, Copy, PartialEq)]
    enum Phase {
        /// Every app at least at its demand; objective: GPUs, slices, accuracy, keep.
        Full,
        /// Maximise the served share of the apps at `level`; levels above held.
        Shed(u32),
        /// Minimise cost with served demands held.
        Settle,
    }
    let build = |phase: Phase, min_instances: u32, held: &BTreeMap<usize, f64>| -> (Milp, Vec<Member>, Vec<usize>) {
        let mut m = Milp { maximize: true, ..Milp::default() };
        let mut built = Vec::new();
        for (idx, (i, prep, split, demand)) in members.iter().enumerate() {
            let a = &apps[*i];
            let (r_lb, r_ub) = match phase {
                Phase::Full => (*demand, f64::INFINITY),
                _ => (0.0, f64::INFINITY),
            };
            let r = m.col(0.0, r_lb, r_ub, false);
            // served = min(R, demand) as a column s ≤ R, s ≤ demand.
            let level_obj = match phase {
                Phase::Shed(l) if l == a.priority => 1.0 / demand.max(1e-9),
                _ => 0.0,
            };
            let s_lb = match phase {
                Phase::Full => *demand,
                _ => held.get(i).copied().unwrap_or(0.0),
            };
            let served = m.col(level_obj, s_lb.min(*demand), *demand, false);
            m.row(0.0, f64::INFINITY, vec![(r, 1.0), (served, -1.0)]);
            let cost_active = !matches!(phase, Phase::Shed(_));
            let demand = *demand;
            let cost = |o: &crate::planner::Opt| -> f64 {
                if !cost_active {
                    return 0.0;
                }
                -w_s * f64::from(spec.profiles[o.p].compute_slices)
            };
            let item_cost = |o: &crate::planner::Opt| -> f64 {
                if !cost_active {
                    return 0.0;
                }
                -w_a * prep.accuracy_per_item(o, demand)
            };
            let cols = add_app_rows(&mut m, prep, split, Root::Column(r), &cost, &item_cost);
            if min_instances > 1 {
                for t in 0..a.app.tasks.len() {
                    let coefs: Vec<(usize, f64)> =
                        cols.m.iter().filter(|(_, oi, _)| prep.opts[*oi].t == t).map(|&(c, _, _)| (c, 1.0)).collect();
                    m.row(f64::from(min_instances), f64::INFINITY, coefs);
                }
            }
            if cost_active && w_k > 0.0 {
                for &(c, oi, _) in &cols.m {
                    let o = &prep.opts[oi];
                    let key = (
                        a.app.name.clone(),
                        a.app.tasks[o.t].name.clone(),
                        a.app.tasks[o.t].variants[o.v].name.clone(),
                        spec.profiles[o.p].name.to_string(),
                    );
                    if let Some(&k) = opts.live.get(&key) {
                        let q = m.col(w_k, 0.0, f64::from(k), false);
                        m.row(f64::NEG_INFINITY, 0.0, vec![(q, 1.0), (c, -1.0)]);
                    }
                }
            }
            built.push(Member { idx, cols, served });
        }
        let y_cost = if matches!(phase, Phase::Shed(_)) { -1e-6 } else { -1.0 };
        let y: Vec<usize> = classes.iter().map(|_| m.col(y_cost, 0.0, g, true)).collect();
        let profiles: Vec<(usize, usize)> =
            built.iter().flat_map(|b| b.cols.m.iter().map(|&(c, oi, _)| (c, members[b.idx].1.opts[oi].p))).collect();
        add_placement_rows(&mut m, spec, classes, &profiles, &y, g);
        (m, built, y)
    };
    let solve = |m: &Milp, relax: bool, stats: &mut JointStats| -> Result<Option<Vec<f64>>, PlanError> {
        let left = (deadline - clock.now_s()).max(0.05);
        let sol = solver.solve(
            m,
            SolveOptions {
                relax,
                time_limit_s: left,
                mip_rel_gap: 0.0,
                mip_abs_gap: abs_gap,
                presolve: true,
                heuristics: true,
            },
        )?;
        Ok(match sol.status {
            Status::Optimal => Some(sol.x),
            Status::TimeLimitFeasible => {
                stats.timed_out = true;
                Some(sol.x)
            }
            Status::TimeLimitNoSolution => {
                stats.timed_out = true;
                None
            }
            Status::Infeasible => None,
        })
    };
    let t1 = clock.now_s();
    let none = BTreeMap::new();
    let mut result: Option<(Vec<f64>, Vec<Member>, Vec<usize>)> = None;
    let mut min_inst = opts.min_instances.max(1);
    loop {
        let (m, built, y) = build(Phase::Full, min_inst, &none);
        match solve(&m, false, &mut stats) {
            Ok(Some(x)) => {
                // LP bound on GPUs for the same rows.
                let mut lp = m.clone();
                for c in lp.cols.iter_mut() {
                    c.cost = 0.0;
                }
                for &c in &y {
                    lp.cols[c].cost = -1.0;
                }
                if let Ok(Some(lx)) = solve(&lp, true, &mut stats) {
                    let v: f64 = y.iter().map(|&c| lx[c]).sum();
                    stats.lp_bound_gpus = (v - 1e-6).ceil().max(0.0) as usize;
                }
                result = Some((x, built, y));
                break;
            }
            Ok(None) if min_inst > 1 => {
                stats.notes.push(format!(
                    "spread dropped: {min_inst} instances per task do not fit the {gpus} GPUs at the demanded rates"
                ));
                min_inst = 1;
            }
            Ok(None) => break,
            Err(e) => {
                stats.notes.push(format!("solver failed: {e}"));
                break;
            }
        }
    }
    if result.is_none() {
        // 2. Shed by priority, highest level first.
        let mut levels: Vec<u32> = members.iter().map(|(i, ..)| apps[*i].priority).collect();
        levels.sort_unstable_by(|a, b| b.cmp(a));
        levels.dedup();
        let mut held: BTreeMap<usize, f64> = BTreeMap::new();
        for l in levels {
            let (m, built, _) = build(Phase::Shed(l), 1, &held);
            if let Ok(Some(x)) = solve(&m, false, &mut stats) {
                for (b, (i, ..)) in built.iter().zip(&members) {
                    if apps[*i].priority == l {
                        held.insert(*i, (x[b.served] * (1.0 - 1e-7) - 1e-9).max(0.0));
                    }
                }
            }
        }
        let (m, built, y) = build(Phase::Settle, 1, &held);
        if let Ok(Some(x)) = solve(&m, false, &mut stats) {
            result = Some((x, built, y));
        }
        stats.notes.push("not every app fits at its demand: shed by priority (lowest first)".into());
    }
    stats.joint_ms = (clock.now_s() - t1) * 1e3;
    let Some((x, built, y)) = result else {
        for (i, ..) in &members {
            outcomes[*i].plan = Err(format!("no joint plan on {gpus} x {gpu} within the time limit"));
        }
        return JointOutcome { apps: outcomes, gpus: Vec::new(), stats };
    };
    // 3. Decode: every instance, one legal layout for all of them, then each app's plan
    //    with its own instances on those (logical) GPUs.
    let mut by_profile: BTreeMap<usize, Vec<InstancePlan>> = BTreeMap::new();
    for b in &built {
        let prep = &members[b.idx].1;
        for (k, &(_, oi, _)) in b.cols.m.iter().enumerate() {
            by_profile.entry(prep.opts[oi].p).or_default().extend(b.cols.instances(prep, k, &x));
        }
    }
    let counts: Vec<usize> = y.iter().map(|&c| x[c].round().max(0.0) as usize).collect();
    let mut laid = fill_layouts(spec, classes, &counts, by_profile);
    stats.gpus_used = laid.len();
    stats.compute_slices = laid
        .iter()
        .flat_map(|g| &g.instances)
        .filter_map(|i| spec.profile_index(&i.mig_profile))
        .map(|p| u32::from(spec.profiles[p].compute_slices))
        .sum();
    for b in &built {
        let (i, prep, split, demand) = &members[b.idx];
        let (i, demand) = (*i, *demand);
        let name = &apps[i].app.name;
        let own: Vec<GpuPlan> = laid
            .iter()
            .map(|g| GpuPlan {
                gpu: g.gpu,
                instances: g.instances.iter().filter(|x| &x.app == name).cloned().collect(),
            })
            .filter(|g| !g.instances.is_empty())
            .collect();
        let served = x[b.served].min(demand).max(0.0);
        let planned = if served >= demand * (1.0 - 1e-6) { demand } else { served };
        let priority = apps[i].priority;
        let stats_app = SolveStats {
            solve_ms: (clock.now_s() - t0) * 1e3,
            gap: 0.0,
            objective: 0.0,
            bound: 0.0,
            splits_total: 1,
            splits_solved: 1,
            splits_pruned: 0,
            latency_levels: "the split of the app's own plan".into(),
            note: (planned < demand)
                .then(|| format!("shed: planned {planned:.1} of {demand:.1} req/s (priority {priority})")),
        };
        outcomes[i].plan = if own.is_empty() {
            Err(format!("shed entirely: none of {demand:.1} req/s fits (priority {priority})"))
        } else {
            Ok(summarize(prep, &split.levels, own, planned, stats_app))
        };
        // The layout carries the app's instances as its plan has them: the solver's routed
        // loads are at the root demand column `R`, which may exceed the planned demand.
        if let Ok(p) = &outcomes[i].plan {
            for pg in &p.gpus {
                if let Some(lg) = laid.iter_mut().find(|l| l.gpu == pg.gpu) {
                    for (l, q) in lg.instances.iter_mut().filter(|l| &l.app == name).zip(&pg.instances) {
                        l.load_rps = q.load_rps;
                    }
                }
            }
        }
    }
    JointOutcome { apps: outcomes, gpus: laid, stats }
}
