//! A solver-agnostic MILP description and the [`Solver`] trait. The HiGHS backend is
//! `crate::highs` (cargo feature `highs`), so the planner core builds and tests without
//! compiling HiGHS.
//!
//! The planner builds [`Milp`] values (plain data) and never touches HiGHS itself, so the
//! model can be inspected, tested and solved by another backend.

/// One column.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Column {
    /// Objective coefficient.
    pub cost: f64,
    /// Lower bound.
    pub lb: f64,
    /// Upper bound (may be `f64::INFINITY`).
    pub ub: f64,
    /// Integer column.
    pub integer: bool,
}

/// One row `lb ≤ Σ coef·x ≤ ub`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    /// Lower bound (may be `-inf`).
    pub lb: f64,
    /// Upper bound (may be `inf`).
    pub ub: f64,
    /// `(column, coefficient)` pairs.
    pub coefs: Vec<(usize, f64)>,
}

/// A mixed-integer linear program (serialised by `jigsaw bench planner --dump-milp`;
/// infinite bounds become `null`).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Milp {
    /// Maximise (true) or minimise.
    pub maximize: bool,
    /// Columns.
    pub cols: Vec<Column>,
    /// Rows.
    pub rows: Vec<Row>,
    /// Constant added to the objective.
    pub offset: f64,
}

impl Milp {
    /// Add a column and return its index.
    pub fn col(&mut self, cost: f64, lb: f64, ub: f64, integer: bool) -> usize {
        self.cols.push(Column { cost, lb, ub, integer });
        self.cols.len() - 1
    }

    /// Add a row.
    pub fn row(&mut self, lb: f64, ub: f64, coefs: Vec<(usize, f64)>) {
        self.rows.push(Row { lb, ub, coefs });
    }

    /// Objective value of `x`.
    pub fn objective(&self, x: &[f64]) -> f64 {
        self.offset + self.cols.iter().zip(x).map(|(c, v)| c.cost * v).sum::<f64>()
    }

    /// Whether `x` satisfies bounds, rows and integrality within `tol`.
    pub fn is_feasible(&self, x: &[f64], tol: f64) -> bool {
        self.cols
            .iter()
            .zip(x)
            .all(|(c, &v)| v >= c.lb - tol && v <= c.ub + tol && (!c.integer || (v - v.round()).abs() <= tol))
            && self.rows.iter().all(|r| {
                let a: f64 = r.coefs.iter().map(|&(j, k)| k * x[j]).sum();
                let scale = 1.0 + r.lb.abs().min(r.ub.abs()).min(1e9);
                a >= r.lb - tol * scale && a <= r.ub + tol * scale
            })
    }
}

/// Outcome of a solve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Proven optimal within the gap tolerance.
    Optimal,
    /// A feasible solution, stopped by the time limit.
    TimeLimitFeasible,
    /// No feasible solution exists.
    Infeasible,
    /// Stopped by the time limit with no feasible solution.
    TimeLimitNoSolution,
}

/// A solution.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Status.
    pub status: Status,
    /// Column values (empty unless a solution exists).
    pub x: Vec<f64>,
    /// Objective value.
    pub objective: f64,
    /// Best proven bound on the objective (also after a time limit without a solution,
    /// when the search proved one; `NaN` when none is known).
    pub bound: f64,
}

/// A solver failure (not infeasibility, which is a [`Status`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SolverError {
    /// The backend failed; retrying will not help, report the model.
    #[error("MILP solver failed: {0}")]
    Backend(String),
    /// A process-global setting conflicts with an earlier one; restart the process.
    #[error("HiGHS threads were already set to {was} in this process; cannot switch to {want} (HiGHS threads are process-global)")]
    Threads {
        /// Previous value.
        was: u32,
        /// Requested value.
        want: u32,
    },
}

/// Options of one solve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SolveOptions {
    /// Solve the LP relaxation only.
    pub relax: bool,
    /// Wall-clock limit, seconds.
    pub time_limit_s: f64,
    /// Relative MIP gap.
    pub mip_rel_gap: f64,
    /// Absolute MIP gap (0 = none).
    pub mip_abs_gap: f64,
    /// Let the backend presolve a MILP (a hint: the planner's small split MILPs solve faster
    /// without HiGHS's presolve, the joint cluster MILP much slower; `docs/planner.md`,
    /// "Solver settings").
    pub presolve: bool,
    /// Let the backend run its costly heuristics at the root of a MILP (HiGHS: the RENS and
    /// RINS sub-MIPs and the root reduced-cost heuristic). A hint: a solve that is expected
    /// to prove that no solution beats a cutoff spends most of its root node in them
    /// (`docs/planner.md`, "Solver settings").
    pub heuristics: bool,
}

impl SolveOptions {
    /// A MILP solve with the backend's defaults: the relative gap and time limit given, no
    /// absolute gap, presolve and heuristics on.
    pub fn milp(time_limit_s: f64, mip_rel_gap: f64) -> SolveOptions {
        SolveOptions { relax: false, time_limit_s, mip_rel_gap, mip_abs_gap: 0.0, presolve: true, heuristics: true }
    }
}

/// A MILP backend.
pub trait Solver {
    /// Solve `milp`.
    fn solve(&self, milp: &Milp, opts: SolveOptions) -> Result<Solution, SolverError>;
}
