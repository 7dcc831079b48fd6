//! The data plane (the data-plane issue), built as pure cores first:
//!
//! * [`batch`]: per-task batching with early and stale dropping on a caller-supplied clock.
//!
//! Workers, routing, the inference API, the profiler and the load generator are not built
//! yet; see the README's status.

pub mod batch;
