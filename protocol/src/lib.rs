//! # jigsaw-protocol
//!
//! Every type that crosses a process or file boundary in jigsaw lives here, and nothing
//! else: this crate does no I/O beyond encoding and decoding.
//!
//! * [`app`]: application specs (task DAG, variants, fan-out, SLOs) and their validation.
//! * [`catalogue`]: the exact MIG GPU-instance profile tables of the supported GPU models,
//!   the placement rules and the enumeration of legal per-GPU layouts.
//! * [`profile`]: the profile CSV format (one row per task, variant, GPU, MIG profile, MPS
//!   level and batch size).
//! * [`plan`]: the plan the planner returns (documented for users in `docs/plan-json.md`).
//! * [`cluster`]: the replicated cluster state (apps, members, plan and epoch) and the
//!   commands of the Raft log that change it.
//! * [`heartbeat`]: the coordinator's edge check of a heartbeat (bounded inventory, sane
//!   observed rows naming registered tasks, demand rows naming registered apps).
//! * [`infer`]: the inference API's bodies (KServe Open Inference Protocol v2) and their
//!   validation.
//! * [`route`]: the routing table pushed with every plan, and the data plane's stage
//!   messages.
//! * [`rng`]: the seeded splitmix64 generator shared by everything that replays a seed.
//! * [`wire`]: the framed binary envelope (magic, version, size cap) used on the network.
//! * [`worker`]: the agent ↔ worker-process pipe protocol (same envelope and caps).
//! * `testing` (cargo feature `testing`): fixture builders for the workspace's tests.
//!
//! Errors are typed and name the field, line or byte offset that is wrong.

pub mod app;
pub mod catalogue;
pub mod cluster;
pub mod heartbeat;
pub mod infer;
pub mod plan;
pub mod profile;
pub mod rng;
pub mod route;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;
pub mod worker;

pub use app::{AppError, AppSpec, TaskSpec, VariantSpec};
pub use catalogue::{GpuModel, GpuSpec, Layout, MigProfile, MPS_LEVELS};
pub use plan::Plan;
pub use profile::{ProfileError, ProfileRow, ProfileTable, BATCH_SIZES};
