//! The planner on seeded random apps (`randapp`, SYNTHETIC): every plan passes the
//! independent evaluator, and the split loop's cutoff (a split must beat the incumbent by
//! more than the gap, issue 12) does not make the objective worse than solving every
//! non-pruned split to the end, beyond the gap.

use jigsaw_coordinator::evaluate::evaluate;
use jigsaw_coordinator::milp::{Milp, Solution, SolveOptions, Solver, SolverError};
use jigsaw_coordinator::planner::{beta_of, plan, Clock, Goal, PlannerConfig, Problem};
use jigsaw_coordinator::{randapp, HighsSolver, SearchSpace};
use jigsaw_protocol::catalogue::GpuModel;

struct NoClock;
impl Clock for NoClock {
    fn now_s(&self) -> f64 {
        0.0
    }
}

/// HiGHS without cutoffs: `solve_with_cutoff` falls back to the trait's default (solve to
/// the end, then compare), which is how every split was solved before the cutoff.
struct NoCutoff(HighsSolver);
impl Solver for NoCutoff {
    fn solve(&self, milp: &Milp, opts: SolveOptions) -> Result<Solution, SolverError> {
        self.0.solve(milp, opts)
    }
}

/// Small random apps (at most 3 tasks) so that both runs finish well inside the limit.
fn small_apps(n: usize) -> Vec<u64> {
    (0..200)
        .map(|i| randapp::app_seed(12, i))
        .filter(|&s| randapp::generate(s, GpuModel::A100_40gb).tasks.len() <= 3)
        .take(n)
        .collect()
}

#[test]
fn cutoff_keeps_plans_feasible_and_objectives_within_the_gap() {
    let cfg = PlannerConfig { time_limit_s: 120.0, ..PlannerConfig::default() };
    let gpu = GpuModel::A100_40gb;
    let mut compared = 0;
    for seed in small_apps(6) {
        let (app, profiles) = randapp::generate_with_profiles(seed, gpu);
        for gpus in [1, 2] {
            let pb = Problem { app: &app, profiles: &profiles, gpu, gpus, space: SearchSpace::FULL };
            let reference = plan(pb, Goal::MaxDemand, &cfg, &NoCutoff(HighsSolver::default()), &NoClock);
            let fast = plan(pb, Goal::MaxDemand, &cfg, &HighsSolver::default(), &NoClock);
            let (Ok(reference), Ok(fast)) = (reference, fast) else {
                continue;
            };
            for p in [&reference, &fast] {
                let rep = evaluate(p, &app, &profiles);
                assert!(rep.ok(), "seed {seed:#x}, {gpus} GPUs: {:?}", rep.violations);
            }
            let tol = cfg.mip_rel_gap * reference.stats.objective.abs() + 1e-9;
            assert!(
                fast.stats.objective >= reference.stats.objective - tol,
                "seed {seed:#x}, {gpus} GPUs, max demand: {} vs {}",
                fast.stats.objective,
                reference.stats.objective
            );
            let demand = 0.5 * reference.demand_rps;
            let goal = Goal::MinCost { demand };
            let reference = plan(pb, goal, &cfg, &NoCutoff(HighsSolver::default()), &NoClock).expect("reference plan");
            let fast = plan(pb, goal, &cfg, &HighsSolver::default(), &NoClock).expect("plan");
            for p in [&reference, &fast] {
                let rep = evaluate(p, &app, &profiles);
                assert!(rep.ok(), "seed {seed:#x}, {gpus} GPUs, {demand} req/s: {:?}", rep.violations);
            }
            let tol = (cfg.mip_rel_gap * reference.stats.objective.abs()).max(cfg.abs_gap_slices * beta_of(&cfg, gpus))
                + 1e-9;
            assert!(
                fast.stats.objective >= reference.stats.objective - tol,
                "seed {seed:#x}, {gpus} GPUs, {demand} req/s: {} vs {}",
                fast.stats.objective,
                reference.stats.objective
            );
            compared += 1;
        }
    }
    assert!(compared >= 6, "only {compared} cases compared");
}
