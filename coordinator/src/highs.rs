//! The HiGHS backend of [`Solver`] (cargo feature `highs`).
//!
//! HiGHS caveat (`shared/research/deps.md`): its `threads` option is process-global. The
//! first solve in a process fixes it; [`HighsSolver`] therefore sets it only when
//! configured, and a later different value is reported as an error rather than a panic.

use crate::milp::{Milp, Solution, SolveOptions, Solver, SolverError, Status};
use std::sync::atomic::{AtomicU32, Ordering};

static HIGHS_THREADS: AtomicU32 = AtomicU32::new(0);

/// HiGHS, through the `highs` crate.
#[derive(Debug, Clone, Default)]
pub struct HighsSolver {
    /// Threads (process-global in HiGHS; `None` keeps HiGHS's default).
    pub threads: Option<u32>,
}

impl Solver for HighsSolver {
    fn solve(&self, milp: &Milp, opts: SolveOptions) -> Result<Solution, SolverError> {
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
            other => return Err(SolverError::Backend(format!("HiGHS model status {other:?}"))),
        };
        if status == Status::Infeasible {
            return Ok(Solution { status, x: Vec::new(), objective: f64::NAN, bound: f64::NAN });
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
            return Ok(Solution { status, x: Vec::new(), objective: f64::NAN, bound });
        }
        let x = solved.get_solution().columns().to_vec();
        let objective = milp.objective(&x);
        let integer = !opts.relax && milp.cols.iter().any(|c| c.integer);
        let bound = if integer {
            solved.double_info_value(c"mip_dual_bound").map_or(objective, |b| b + milp.offset)
        } else {
            objective
        };
        Ok(Solution { status, x, objective, bound })
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
        let opts = SolveOptions { relax: false, time_limit_s: 10.0, mip_rel_gap: 1e-9, mip_abs_gap: 0.0 };
        let s = HighsSolver::default().solve(&m, opts).expect("solves");
        assert_eq!(s.status, Status::Optimal);
        assert!((s.objective - 13.0).abs() < 1e-6, "{s:?}");
        assert!(m.is_feasible(&s.x, 1e-6));
        let lp = HighsSolver::default().solve(&m, SolveOptions { relax: true, ..opts }).expect("solves");
        assert!(lp.objective >= s.objective - 1e-9);
    }

    #[test]
    fn infeasible_is_a_status() {
        let mut m = Milp::default();
        let a = m.col(1.0, 0.0, 1.0, true);
        m.row(2.0, f64::INFINITY, vec![(a, 1.0)]);
        let s = HighsSolver::default()
            .solve(&m, SolveOptions { relax: false, time_limit_s: 5.0, mip_rel_gap: 1e-6, mip_abs_gap: 0.0 })
            .expect("solves");
        assert_eq!(s.status, Status::Infeasible);
    }
}
