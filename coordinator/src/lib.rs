//! # jigsaw-coordinator
//!
//! The planner and everything it needs, as pure code: no sockets, no clocks (a
//! [`planner::Clock`] is passed in), no HiGHS calls outside the [`milp::Solver`] it is
//! given.
//!
//! * [`planner`]: the A+S+T allocation MILP with placement inside the model.
//! * [`milp`]: the solver-agnostic MILP and the [`Solver`] trait; `highs` (cargo feature
//!   `highs`, off by default): the HiGHS backend, so the pure planner builds and unit-tests
//!   without compiling HiGHS.
//! * [`evaluate`]: the independent evaluator of the paper's non-linear constraints.
//! * [`spaces`]: the eight search spaces of the paper's Figure 3.
//! * [`analyze`]: the maximum-serviceable-demand experiment and its SVG chart.
//! * [`synth`]: the analytic (synthetic) profile model for the example applications,
//!   calibrated to measured profiles.
//! * [`calibrate`]: fitting the profile model's constants to measured profiles, and its
//!   leave-one-model-out cross-validation.
//! * [`measured`]: measured profiles from outside jigsaw (the ParvaGPU format), parsed and
//!   converted to profile tables.
//! * [`randapp`]: seeded random (synthetic) applications for planner benchmarks and tests.
//! * [`assign`]: mapping a plan's logical GPUs onto physical GPUs, sticky to live layouts.
//!
//! * [`joint`]: one MILP over every app on one GPU model (apps share GPUs), with shedding by
//!   priority.
//! * [`cluster_plan`]: planning every registered app on the cluster's alive GPUs (joint,
//!   sticky to what runs, spread over nodes).
//! * [`forecast`]: demand forecasters (the paper's rule, Holt with quantile headroom) and
//!   their backtest; [`trace`]: arrival traces (the Azure LLM trace format, binning, a seeded
//!   synthetic diurnal trace).
//! * [`replan`]: when to re-plan for a new demand (hysteresis band, SLO violations, minimum
//!   interval, floor), a pure policy.
//! * [`control`]: the coordinator's control loop (membership, failure detection, re-planning,
//!   plan distribution) as a pure state machine; the agent's Raft leader drives it.

pub mod analyze;
pub mod assign;
pub mod calibrate;
pub mod cluster_plan;
pub mod control;
pub mod evaluate;
pub mod forecast;
#[cfg(feature = "highs")]
pub mod highs;
pub mod joint;
pub mod measured;
pub mod milp;
pub mod planner;
pub mod randapp;
pub mod replan;
pub mod routing;
pub mod spaces;
pub mod synth;
pub mod trace;
pub mod transition;

#[cfg(feature = "highs")]
pub use highs::HighsSolver;
pub use milp::Solver;
pub use planner::{plan, Clock, Goal, PlanError, PlannerConfig, Problem};
pub use spaces::SearchSpace;
