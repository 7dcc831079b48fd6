//! The data plane (the data-plane issue), built as pure cores first:
//!
//! * [`batch`]: per-task batching with early and stale dropping on a caller-supplied clock.
//! * [`load`]: the load generator's arrival schedules (seeded Poisson, trace files) and
//!   outcome accounting.
//!
//! Workers, routing, the inference API, the profiler and the `jigsaw load` command are not
//! built yet; see the README's status.

pub mod batch;
pub mod load;
