//! Benchmarks that print figures: `jigsaw bench cluster`, `jigsaw bench mesh` and
//! `jigsaw bench dataplane`
//! (`jigsaw bench planner` lives with the planner commands in [`crate::planning`]).

pub mod cluster;
pub mod dataplane;
pub mod mesh;
