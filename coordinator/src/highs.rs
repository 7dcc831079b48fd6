//! The HiGHS backend of [`Solver`] (cargo feature `highs`).
//!
//! HiGHS caveat (`shared/research/deps.md`): its `threads` option is process-global. The
//! first solve in a process fixes it; [`HighsSolver`] therefore sets it only when
//! configured, and a later different value is reported as an error rather than a panic.
//!
//! MILPs whose caller asks for it ([`SolveOptions::presolve`] false: the planner's split
//! MILPs) run with HiGHS's presolve off: on those models it spent more than it saved
//! (`docs/planner.md`, "Solver settings"). A solve that HiGHS ends with a status that is no
//! answer (`Unknown`: seen on an infeasible LP relaxation whose dual simplex stalled,
//! which the interior-point solver proves infeasible) is repeated in the time left with the
//! next settings of `ATTEMPTS`; only when every one fails is it an error.

use crate::milp::{Milp, Solution, SolveOptions, Solver, SolverError, Status};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

static HIGHS_THREADS: AtomicU32 = AtomicU32::new(0);

/// HiGHS, through the `highs` crate.
#[derive(Debug, Clone, Default)]
pub struct HighsSolver {
    /// Threads (process-global in HiGHS; `None` keeps HiGHS's default).
    pub threads: Option<u32>,
}

/// HiGHS settings of one attempt at a solve.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// HiGHS presolve.
    presolve: bool,
    /// The interior-point LP solver instead of HiGHS's choice (for a MILP: of its LPs).
    ipm: bool,
}

/// The attempts at a solve, in order: a MILP whose caller turned presolve off first without
/// it, then with it; then with the interior-point LP solver.
const ATTEMPTS: [Attempt; 3] = [
    Attempt { presolve: false, ipm: false },
    Attempt { presolve: true, ipm: false },
    Attempt { presolve: true, ipm: true },
];

impl Solver for HighsSolver {
    fn solve(&self, milp: &Milp, opts: SolveOptions) -> Result<Solution, SolverError> {
        let integer = !opts.relax && milp.cols.iter().any(|c| c.integer);
        // Presolve stays on for an LP and where the caller asks for it: the attempts start
        // at the second of the list.
        let attempts = if integer && !opts.presolve { &ATTEMPTS[..] } else { &ATTEMPTS[1..] };
        let start = Instant::now();
        let mut last = None;
        for &a in attempts {
            let left = opts.time_limit_s - start.elapsed().as_secs_f64();
            if last.is_some() && left <= 0.0 {
                break;
            }
            match self.run(milp, SolveOptions { time_limit_s: left.max(0.001), ..opts }, a)? {
                Ok(sol) => return Ok(sol),
                Err(status) => last = Some(status),
            }
        }
        Err(SolverError::Backend(format!(
            "HiGHS model status {:?} with every setting tried ({} attempt(s))",
            last.unwrap_or(highs::HighsModelStatus::Unknown),
            attempts.len()
        )))
    }
}

impl HighsSolver {
    /// One HiGHS run; `Ok(Err(status))` when HiGHS ended with a status that is neither a
    /// result nor an error of the model (`Unknown`, `SolveError`, ...).
    fn run(
        &self,
        milp: &Milp,
        opts: SolveOptions,
        attempt: Attempt,
    ) -> Result<Result<Solution, highs::HighsModelStatus>, SolverError> {
        let mut pb = highs::RowProblem::default();
        let cols: Vec<highs::Col> = milp
            .cols
            .iter()
            .map(|c| pb.add_column_with_integrality(c.cost, c.lb..=c.ub, c.integer && !opts.relax))
            .collect();
        for r in &milp.rows {
            let coefs: Vec<(highs::Col, f64)> = r.coefs.iter().map(|&(j, k)| (cols[j], k)).collect();
            pb.add_row(r.lb..=r.ub, coefs);
        }
        let sense = if milp.maximize { highs::Sense::Maximise } else { highs::Sense::Minimise };
        let mut model = pb.try_optimise(sense).map_err(|e| SolverError::Backend(format!("{e:?}")))?;
        model.make_quiet();
        let set = |m: &mut highs::Model, k: &str, v: f64| {
            m.try_set_option(k, v).map_err(|e| SolverError::Backend(format!("option {k}: {e:?}")))
        };
        set(&mut model, "time_limit", opts.time_limit_s.max(0.001))?;
        set(&mut model, "mip_rel_gap", opts.mip_rel_gap)?;
        if opts.mip_abs_gap > 0.0 {
            set(&mut model, "mip_abs_gap", opts.mip_abs_gap)?;
        }
        model
            .try_set_option("random_seed", 0)
            .map_err(|e| SolverError::Backend(format!("option random_seed: {e:?}")))?;
        let text = |m: &mut highs::Model, k: &str, v: &str| {
            m.try_set_option(k, v).map_err(|e| SolverError::Backend(format!("option {k}: {e:?}")))
        };
        if !attempt.presolve {
            text(&mut model, "presolve", "off")?;
        }
        if !opts.heuristics && !opts.relax {
            for k in ["mip_heuristic_run_rens", "mip_heuristic_run_rins", "mip_heuristic_run_root_reduced_cost"] {
                model.try_set_option(k, false).map_err(|e| SolverError::Backend(format!("option {k}: {e:?}")))?;
            }
        }
        if attempt.ipm {
            text(&mut model, "solver", "ipm")?;
            text(&mut model, "mip_lp_solver", "ipm")?;
        }
        if let Some(t) = self.threads {
            let was = HIGHS_THREADS.load(Ordering::SeqCst);
            if was != 0 && was != t {
                return Err(SolverError::Threads { was, want: t });
            }
            HIGHS_THREADS.store(t, Ordering::SeqCst);
            model
                .try_set_option("threads", t as i32)
                .map_err(|e| SolverError::Backend(format!("option threads: {e:?}")))?;
        }
        let solved = model.try_solve().map_err(|e| SolverError::Backend(format!("{e:?}")))?;
        use highs::HighsModelStatus as S;
        let has_solution = matches!(solved.primal_solution_status(), highs::HighsSolutionStatus::Feasible);
        let status = match solved.status() {
            S::Optimal => Status::Optimal,
            S::Infeasible | S::UnboundedOrInfeasible => Status::Infeasible,
            S::ReachedTimeLimit | S::ReachedInterrupt | S::ReachedIterationLimit if has_solution => {
                Status::TimeLimitFeasible
            }
            S::ReachedTimeLimit | S::ReachedInterrupt | S::ReachedIterationLimit => Status::TimeLimitNoSolution,
            S::ModelEmpty => Status::Optimal,
            other => return Ok(Err(other)),
        };
        if status == Status::Infeasible {
            return Ok(Ok(Solution { status, x: Vec::new(), objective: f64::NAN, bound: f64::NAN }));
        }
        if status == Status::TimeLimitNoSolution {
            // No solution, but the search may have proved a bound on the optimum.
            let bound = if opts.relax {
                f64::NAN
            } else {
                solved
                    .double_info_value(c"mip_dual_bound")
                    .ok()
                    .filter(|b| b.is_finite())
                    .map_or(f64::NAN, |b| b + milp.offset)
            };
            return Ok(Ok(Solution { status, x: Vec::new(), objective: f64::NAN, bound }));
        }
        let x = solved.get_solution().columns().to_vec();
        let objective = milp.objective(&x);
        let integer = !opts.relax && milp.cols.iter().any(|c| c.integer);
        let bound = if integer {
            solved.double_info_value(c"mip_dual_bound").map_or(objective, |b| b + milp.offset)
        } else {
            objective
        };
        Ok(Ok(Solution { status, x, objective, bound }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knapsack() {
        // max 5a + 4b + 3c, 2a + 3b + c <= 5, 4a + b + 2c <= 11, 3a + 4b + 2c <= 8, integer.
        let mut m = Milp { maximize: true, ..Milp::default() };
        let a = m.col(5.0, 0.0, 10.0, true);
        let b = m.col(4.0, 0.0, 10.0, true);
        let c = m.col(3.0, 0.0, 10.0, true);
        m.row(f64::NEG_INFINITY, 5.0, vec![(a, 2.0), (b, 3.0), (c, 1.0)]);
        m.row(f64::NEG_INFINITY, 11.0, vec![(a, 4.0), (b, 1.0), (c, 2.0)]);
        m.row(f64::NEG_INFINITY, 8.0, vec![(a, 3.0), (b, 4.0), (c, 2.0)]);
        let opts = SolveOptions::milp(10.0, 1e-9);
        let s = HighsSolver::default().solve(&m, opts).expect("solves");
        assert_eq!(s.status, Status::Optimal);
        assert!((s.objective - 13.0).abs() < 1e-6, "{s:?}");
        assert!(m.is_feasible(&s.x, 1e-6));
        let lp = HighsSolver::default().solve(&m, SolveOptions { relax: true, ..opts }).expect("solves");
        assert!(lp.objective >= s.objective - 1e-9);
        // The heuristics hint changes how HiGHS searches, not what it proves; without
        // presolve as well (the planner's proofs under a cutoff).
        for presolve in [true, false] {
            let quiet = SolveOptions { heuristics: false, presolve, ..opts };
            let h = HighsSolver::default().solve(&m, quiet).expect("solves");
            assert_eq!(h.status, Status::Optimal);
            assert!((h.objective - 13.0).abs() < 1e-6, "{h:?}");
            // Under a cutoff above the optimum the model is infeasible.
            let mut cut = m.clone();
            cut.row(13.5, f64::INFINITY, vec![(a, 5.0), (b, 4.0), (c, 3.0)]);
            assert_eq!(HighsSolver::default().solve(&cut, quiet).expect("solves").status, Status::Infeasible);
        }
    }

    /// A dumped model (`jigsaw bench planner --dump-milp`; JSON, infinite bounds as null).
    fn dumped(text: &str) -> (Milp, SolveOptions) {
        let v: serde_json::Value = serde_json::from_str(text).expect("json");
        let num = |x: &serde_json::Value, none: f64| x.as_f64().unwrap_or(none);
        let m = &v["milp"];
        let mut milp = Milp { maximize: m["maximize"].as_bool().expect("maximize"), ..Milp::default() };
        milp.offset = num(&m["offset"], 0.0);
        for c in m["cols"].as_array().expect("cols") {
            milp.col(
                num(&c["cost"], 0.0),
                num(&c["lb"], f64::NEG_INFINITY),
                num(&c["ub"], f64::INFINITY),
                c["integer"].as_bool().expect("integer"),
            );
        }
        for r in m["rows"].as_array().expect("rows") {
            let coefs = r["coefs"]
                .as_array()
                .expect("coefs")
                .iter()
                .map(|p| (p[0].as_u64().expect("col") as usize, p[1].as_f64().expect("coef")))
                .collect();
            milp.row(num(&r["lb"], f64::NEG_INFINITY), num(&r["ub"], f64::INFINITY), coefs);
        }
        let o = &v["options"];
        let opts = SolveOptions {
            relax: o["relax"].as_bool().expect("relax"),
            time_limit_s: 10.0,
            mip_rel_gap: num(&o["mip_rel_gap"], 1e-4),
            mip_abs_gap: num(&o["mip_abs_gap"], 0.0),
            presolve: o["presolve"].as_bool().unwrap_or(true),
            heuristics: o["heuristics"].as_bool().unwrap_or(true),
        };
        (milp, opts)
    }

    /// Found by `jigsaw bench planner --random 6 --seed 2` (app 5, 8 GPUs, min-cost at 90 %):
    /// the LP relaxation of a latency split that cannot serve the demand. HiGHS's dual
    /// simplex stalls on it and ends with model status `Unknown`, which failed the whole
    /// planner run; the interior-point solver proves it infeasible.
    #[test]
    fn a_stalled_lp_is_retried_until_it_has_an_answer() {
        let (milp, opts) = dumped(include_str!("../tests/fixtures/highs-stalled-lp.json"));
        assert!(opts.relax);
        let s = HighsSolver::default().solve(&milp, opts).expect("an answer after a retry");
        assert_eq!(s.status, Status::Infeasible);
    }

    #[test]
    fn infeasible_is_a_status() {
        let mut m = Milp::default();
        let a = m.col(1.0, 0.0, 1.0, true);
        m.row(2.0, f64::INFINITY, vec![(a, 1.0)]);
        let s = HighsSolver::default().solve(&m, SolveOptions::milp(5.0, 1e-6)).expect("solves");
        assert_eq!(s.status, Status::Infeasible);
    }
}
