//! Benchmarks that print figures: `jigsaw bench cluster`, `jigsaw bench mesh`,
//! `jigsaw bench dataplane`, `jigsaw bench transition` and `jigsaw bench planner --random` (the example-app
//! `jigsaw bench planner` lives with the planner commands in [`crate::planning`]).

pub mod cluster;
pub mod dataplane;
pub mod mesh;
pub mod planner;
pub mod transition;
