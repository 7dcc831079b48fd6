//! Property tests of the planner on random small applications and profiles.
//!
//! * Every plan the planner returns passes the independent evaluator.
//! * On instances small enough for brute force (one GPU, one operating point per
//!   (task, variant, MIG profile)), the MILP's objective equals the optimum found by
//!   enumerating every instance count, for both goals.
//!
//! Each case is generated from a `u64` seed; proptest prints the failing seed, and
//! `instance(seed)` rebuilds it.

use jigsaw_coordinator::evaluate::evaluate;
use jigsaw_coordinator::planner::{
    beta_of, plan, Clock, Goal, PlanError, PlannerConfig, Problem, EPS_GPU, EPS_SLICE_MAX_DEMAND,
};
use jigsaw_coordinator::{HighsSolver, SearchSpace};
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::profile::ProfileTable;
use proptest::prelude::*;

mod common;
use common::instance;
use std::collections::BTreeMap;

struct NoClock;
impl Clock for NoClock {
    fn now_s(&self) -> f64 {
        0.0
    }
}

fn cfg() -> PlannerConfig {
    PlannerConfig {
        time_limit_s: 60.0,
        mip_rel_gap: 1e-9,
        max_demand_rel_gap: 1e-9,
        abs_gap_slices: 0.0,
        max_levels: 64,
        ..PlannerConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random apps (fan-out, fork and chain graphs), random profiles, every space, 1–3 GPUs:
    /// whatever the planner returns passes the evaluator.
    #[test]
    fn returned_plans_are_feasible(seed in any::<u64>(), gpus in 1usize..4, space_i in 0usize..8, demand_frac in 0.1f64..1.2) {
        let (app, profiles) = instance(seed, false, false);
        let space = SearchSpace::all()[space_i];
        let pb = Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus, space };
        let c = PlannerConfig { max_levels: 6, ..cfg() };
        match plan(pb, Goal::MaxDemand, &c, &HighsSolver::default(), &NoClock) {
            Ok(max) => {
                let rep = evaluate(&max, &app, &profiles);
                prop_assert!(rep.ok(), "seed {seed}: max-demand plan fails: {:?}", rep.violations);
                let demand = max.demand_rps * demand_frac;
                match plan(pb, Goal::MinCost { demand }, &c, &HighsSolver::default(), &NoClock) {
                    Ok(p) => {
                        let rep = evaluate(&p, &app, &profiles);
                        prop_assert!(rep.ok(), "seed {seed}: plan fails: {:?}", rep.violations);
                        prop_assert!(demand_frac <= 1.0 + 1e-9, "seed {seed}: served more than the max demand");
                    }
                    Err(PlanError::Infeasible { .. }) => prop_assert!(demand_frac > 1.0 - 1e-6, "seed {seed}: below max demand but infeasible"),
                    Err(e) => prop_assert!(false, "seed {seed}: {e}"),
                }
            }
            Err(PlanError::Infeasible { .. } | PlanError::LatencyInfeasible { .. } | PlanError::StaticBudget { .. }) => {}
            Err(e) => prop_assert!(false, "seed {seed}: {e}"),
        }
    }

    /// Brute force over every instance count on one GPU.
    #[test]
    fn milp_matches_brute_force(seed in any::<u64>()) {
        let (app, profiles) = instance(seed, true, true);
        let pb = Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 1, space: SearchSpace::FULL };
        let bf = brute_force(&app, &profiles);
        let c = cfg();
        match (plan(pb, Goal::MaxDemand, &c, &HighsSolver::default(), &NoClock), bf.max_demand) {
            (Ok(p), Some((r, _))) => {
                prop_assert!((p.demand_rps - r).abs() <= 1e-6 * r.max(1.0), "seed {seed}: MILP max demand {} vs brute force {r}", p.demand_rps);
                // Min cost at 70 % of the max demand.
                let d = 0.7 * r;
                let p = plan(pb, Goal::MinCost { demand: d }, &c, &HighsSolver::default(), &NoClock);
                let best = bf.min_cost_objective(d);
                match (p, best) {
                    (Ok(p), Some(o)) => {
                        prop_assert!(p.stats.note.is_none(), "seed {seed}: fallback used although the model has a plan");
                        prop_assert!((p.stats.objective - o).abs() <= 1e-6, "seed {seed}: MILP objective {} vs brute force {o}", p.stats.objective);
                        let rep = evaluate(&p, &app, &profiles);
                        prop_assert!(rep.ok(), "seed {seed}: {:?}", rep.violations);
                    }
                    (p, o) => prop_assert!(false, "seed {seed}: MILP {:?} vs brute force {o:?}", p.map(|p| p.stats.objective)),
                }
            }
            (Err(_), None) => {}
            (p, b) => prop_assert!(false, "seed {seed}: MILP {:?} vs brute force {b:?}", p.map(|p| p.demand_rps)),
        }
    }
}

/// A task's capacity as (capacity, accuracy loss per item) pieces, most accurate first.
type Pieces = Vec<(f64, f64)>;

/// One feasible configuration: per column (t, v, profile) an instance count.
struct Config {
    counts: Vec<u32>,
}

struct BruteForce {
    cols: Vec<Col>,
    configs: Vec<Config>,
    max_demand: Option<(f64, f64)>,
    app: AppSpec,
}

#[derive(Clone)]
struct Col {
    t: usize,
    v: usize,
    cost: f64,
    l: f64,
    h: f64,
    p: usize,
}

/// The planner's model stated directly (docs/planner.md), for apps with one path
/// (1–2 tasks), constant fan-out F, one GPU:
/// * latency: Σ_t 2·max{L of used columns of t} ≤ SLO;
/// * demand: C_a ≥ R, C_b ≥ F·R;
/// * accuracy: Σ_t Λ_t / (a_max(t)·ρ_t) ≤ (1 − SLO_a)·R, Λ_t = Σ r·(a_max − A_v) over the
///   load r routed to each column, the task's demand filled most accurate columns first
///   (the least Λ_t any routing gets);
/// * objective at demand R: 1 − Σ_t Λ_t/(a_max ρ_t R) − β·Σ cost − ε·[any instance];
///   max demand: R − ε_s·Σ cost.
fn brute_force(app: &AppSpec, profiles: &ProfileTable) -> BruteForce {
    let spec = GpuModel::H100_80gb.spec();
    let mut cols = Vec::new();
    for r in profiles.rows() {
        let t = app.task_index(&r.task).expect("task");
        let v = app.tasks[t].variants.iter().position(|x| x.name == r.variant).expect("variant");
        let p = spec.profile_index(&r.mig_profile).expect("profile");
        cols.push(Col { t, v, cost: f64::from(spec.profiles[p].slice_cost()), l: r.p95_ms, h: r.throughput_rps, p });
    }
    let classes = spec.layout_classes(|p| p.plannable());
    let mut configs = Vec::new();
    let mut counts = vec![0u32; cols.len()];
    fn rec(i: usize, counts: &mut Vec<u32>, cols: &[Col], out: &mut Vec<Config>, fits: &dyn Fn(&[u32]) -> bool) {
        if i == cols.len() {
            out.push(Config { counts: counts.clone() });
            return;
        }
        loop {
            rec(i + 1, counts, cols, out, fits);
            counts[i] += 1;
            if !fits(counts) {
                counts[i] = 0;
                return;
            }
        }
    }
    let fits = |c: &[u32]| {
        let mut per = vec![0u32; spec.profiles.len()];
        for (k, n) in c.iter().enumerate() {
            per[cols[k].p] += n;
        }
        classes.iter().any(|cl| cl.counts.iter().zip(&per).all(|(a, b)| u32::from(*a) >= *b))
    };
    rec(0, &mut counts, &cols, &mut configs, &fits);
    let mut bf = BruteForce { cols, configs, max_demand: None, app: app.clone() };
    bf.max_demand = bf.max_demand_search();
    bf
}

impl BruteForce {
    /// Per task its capacity as (capacity, accuracy loss per item) pieces sorted by loss,
    /// and the configuration's slice cost; `None` when it breaks the latency SLO.
    fn stats(&self, c: &Config) -> Option<(Vec<Pieces>, f64)> {
        let app = &self.app;
        let nt = app.tasks.len();
        let mut pieces = vec![Vec::new(); nt];
        let mut lhat = vec![0.0f64; nt];
        let mut cost = 0.0;
        for (k, &n) in c.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let col = &self.cols[k];
            pieces[col.t].push((f64::from(n) * col.h, self.amax(col.t) - app.tasks[col.t].variants[col.v].accuracy));
            lhat[col.t] = lhat[col.t].max(col.l);
            cost += f64::from(n) * col.cost;
        }
        for p in &mut pieces {
            p.sort_by(|a, b| a.1.total_cmp(&b.1));
        }
        let lat: f64 = lhat.iter().map(|l| 2.0 * l).sum();
        (lat <= app.latency_slo_ms + 1e-9).then_some((pieces, cost))
    }

    /// The least accuracy loss Λ of routing `demand` items/s over `pieces` (most accurate
    /// first); `None` when they cannot carry it.
    fn least_loss(pieces: &[(f64, f64)], demand: f64) -> Option<f64> {
        let (mut left, mut loss) = (demand, 0.0);
        for &(cap, l) in pieces {
            let take = left.min(cap);
            loss += take * l;
            left -= take;
        }
        (left <= 1e-9 * demand.max(1.0)).then_some(loss)
    }

    /// Σ_t Λ_t(ρ_t·R) / (a_max(t)·ρ_t·R): the accuracy bound's lost share at root demand `r`.
    fn lost_share(&self, pieces: &[Pieces], r: f64) -> Option<f64> {
        let rho = self.rho();
        let mut sum = 0.0;
        for (t, p) in pieces.iter().enumerate() {
            sum += Self::least_loss(p, rho[t] * r)? / (self.amax(t) * rho[t] * r);
        }
        Some(sum)
    }

    fn rho(&self) -> Vec<f64> {
        let app = &self.app;
        (0..app.tasks.len()).map(|t| if t == 0 { 1.0 } else { app.fanout(0, 0, t) }).collect()
    }

    fn amax(&self, t: usize) -> f64 {
        self.app.tasks[t].variants.iter().map(|v| v.accuracy).fold(0.0, f64::max)
    }

    /// The largest root demand a configuration serves, and its slice cost. The lost share
    /// Λ(R)/R is non-decreasing in R (Λ is convex with Λ(0) = 0: the most accurate capacity
    /// fills first), so the demands that meet the accuracy SLO form an interval from 0: its
    /// end is the capacity limit or, by bisection, where the lost share reaches 1 − SLO.
    fn r_max(&self, c: &Config) -> Option<(f64, f64)> {
        let (pieces, cost) = self.stats(c)?;
        let rho = self.rho();
        let hi = (0..pieces.len())
            .map(|t| pieces[t].iter().map(|p| p.0).sum::<f64>() / rho[t])
            .fold(f64::INFINITY, f64::min);
        let budget = 1.0 - self.app.accuracy_slo;
        let ok = |r: f64| self.lost_share(&pieces, r).is_some_and(|s| s <= budget * (1.0 + 1e-12));
        if hi.is_nan() || hi <= 0.0 {
            return None;
        }
        if ok(hi) {
            return Some((hi, cost));
        }
        let (mut lo, mut up) = (0.0, hi);
        for _ in 0..200 {
            let mid = 0.5 * (lo + up);
            if ok(mid) {
                lo = mid;
            } else {
                up = mid;
            }
        }
        (lo > 1e-9).then_some((lo, cost))
    }

    fn max_demand_search(&self) -> Option<(f64, f64)> {
        let mut best: Option<(f64, f64)> = None;
        for c in &self.configs {
            if let Some((hi, cost)) = self.r_max(c) {
                let obj = hi - EPS_SLICE_MAX_DEMAND * cost;
                if best.is_none_or(|(_, o)| obj > o) {
                    best = Some((hi, obj));
                }
            }
        }
        best
    }

    fn min_cost_objective(&self, demand: f64) -> Option<f64> {
        let beta = beta_of(&PlannerConfig::default(), 1);
        let rho = self.rho();
        let mut best: Option<f64> = None;
        for c in &self.configs {
            let Some((pieces, cost)) = self.stats(c) else { continue };
            let ok =
                (0..pieces.len()).all(|t| pieces[t].iter().map(|p| p.0).sum::<f64>() >= rho[t] * demand * (1.0 - 1e-9));
            let Some(acc_loss) = self.lost_share(&pieces, demand) else { continue };
            if !ok || acc_loss > (1.0 - self.app.accuracy_slo) * (1.0 + 1e-9) {
                continue;
            }
            let used = c.counts.iter().any(|&n| n > 0);
            let obj = 1.0 - acc_loss - beta * cost - if used { EPS_GPU } else { 0.0 };
            best = Some(best.map_or(obj, |b: f64| b.max(obj)));
        }
        best
    }
}

#[test]
fn brute_force_has_many_configurations() {
    // Guards the oracle itself: a broken enumeration would make the property vacuous.
    let (app, profiles) = instance(7, true, true);
    let bf = brute_force(&app, &profiles);
    assert!(bf.configs.len() > 50, "{}", bf.configs.len());
    let mut per_task: BTreeMap<usize, usize> = BTreeMap::new();
    for c in &bf.cols {
        *per_task.entry(c.t).or_default() += 1;
    }
    assert_eq!(per_task.len(), app.tasks.len());
}

/// Guards the brute-force property against vacuity: on fixed seeds most instances are
/// solvable (so the comparison runs) and some optima mix variants within a task.
#[test]
fn brute_force_cases_are_not_vacuous() {
    let (mut compared, mut mixed) = (0, 0);
    for seed in 0..100u64 {
        let (app, profiles) = instance(seed, true, true);
        let pb =
            Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 1, space: SearchSpace::FULL };
        let bf = brute_force(&app, &profiles);
        if let (Ok(p), Some((r, _))) =
            (plan(pb, Goal::MaxDemand, &cfg(), &HighsSolver::default(), &NoClock), bf.max_demand)
        {
            assert!((p.demand_rps - r).abs() <= 1e-6 * r.max(1.0), "seed {seed}");
            compared += 1;
            mixed += usize::from(p.tasks.iter().any(|t| t.variants.len() > 1));
        }
    }
    assert!(compared >= 80 && mixed >= 5, "compared {compared}, mixed {mixed}");
}

/// Found by CI (seed printed by `returned_plans_are_feasible`): in A+S on one GPU, 10 % of
/// the maximum demand was rejected by the conservative accuracy bound. The planner now
/// falls back to a plan for a higher demand, which the evaluator accepts at the lower one.
/// (Since fan-out is charged on routed load rather than capacity, that first seed,
/// 4233806847892241256, is served directly; since accuracy is too, the model is monotone
/// in demand and this one is served directly as well, without the fallback.)
#[test]
fn low_demand_below_the_maximum_is_served() {
    let (app, profiles) = instance(14520126549339523386, false, false);
    let space: SearchSpace = "A+S".parse().expect("space");
    let pb = Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 1, space };
    let c = PlannerConfig { max_levels: 6, ..cfg() };
    let max = plan(pb, Goal::MaxDemand, &c, &HighsSolver::default(), &NoClock).expect("max");
    let p = plan(pb, Goal::MinCost { demand: 0.1 * max.demand_rps }, &c, &HighsSolver::default(), &NoClock)
        .expect("a demand below the maximum is served");
    let rep = evaluate(&p, &app, &profiles);
    assert!(rep.ok(), "{:?}", rep.violations);
    assert!((p.demand_rps - 0.1 * max.demand_rps).abs() < 1e-9);
    assert!(
        p.stats.note.is_none(),
        "accuracy on routed load is monotone in demand: no fallback, got {:?}",
        p.stats.note
    );
}

/// Routed load (`docs/planner.md`): with variable fan-out a task's items reach its children
/// in proportion to the load the plan routes to each of its instances, not to their
/// capacity. Every plan passes the evaluator (which routes by the plan's loads), and on
/// some seeds a child is provisioned below what charging the parent's whole capacity
/// (`Σ F(u,v,t)·H` over the parent's instances) would need, so the check is not vacuous.
#[test]
fn variable_fanout_is_charged_on_routed_load() {
    let (mut plans, mut below) = (0, 0);
    for seed in 0..30u64 {
        let (app, profiles) = instance(seed, false, false);
        let pb =
            Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 2, space: SearchSpace::FULL };
        let c = PlannerConfig { max_levels: 6, ..cfg() };
        let Ok(max) = plan(pb, Goal::MaxDemand, &c, &HighsSolver::default(), &NoClock) else { continue };
        let half = plan(pb, Goal::MinCost { demand: 0.5 * max.demand_rps }, &c, &HighsSolver::default(), &NoClock);
        for p in std::iter::once(&max).chain(half.as_ref().ok()) {
            let rep = evaluate(p, &app, &profiles);
            assert!(rep.ok(), "seed {seed}: {:?}", rep.violations);
            plans += 1;
            let insts: Vec<_> = p.gpus.iter().flat_map(|g| &g.instances).collect();
            for t in 0..app.tasks.len() {
                let [u] = app.parents(t)[..] else { continue };
                let charged: f64 = insts
                    .iter()
                    .filter(|i| i.task == app.tasks[u].name)
                    .map(|i| {
                        let v = app.tasks[u].variants.iter().position(|v| v.name == i.variant).expect("variant");
                        app.fanout(u, v, t) * i.throughput_rps
                    })
                    .sum();
                below += usize::from(p.tasks[t].capacity_rps < charged * (1.0 - 1e-6));
            }
        }
    }
    assert!(plans >= 20 && below >= 3, "plans {plans}, children below the capacity charge {below}");
}

/// Found by `returned_plans_are_feasible` (a 48-case run; 256 cases since): in A (whole GPUs, static budgets) on
/// one GPU a 3-task app cannot place one instance per task, and the bound on R was 0 plus
/// an absolute slack of 1e-6 req/s, which the solver met with instance counts that round
/// to nothing: a "plan" for 1e-6 req/s with two tasks unplaced. It is an error that says
/// placement binds.
#[test]
fn a_zero_demand_bound_is_no_plan() {
    let (app, profiles) = instance(6664245951780222433, false, false);
    let space = SearchSpace::all()[2];
    let pb = Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 1, space };
    let c = PlannerConfig { max_levels: 6, ..cfg() };
    match plan(pb, Goal::MaxDemand, &c, &HighsSolver::default(), &NoClock) {
        Err(PlanError::Infeasible { binding, .. }) => assert!(binding.contains("placement binds"), "{binding}"),
        other => panic!("expected no plan, got {:?}", other.map(|p| (p.demand_rps, p.gpus))),
    }
}
