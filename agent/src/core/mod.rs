//! The agent's pure cores: plain Rust with no sockets, clocks, sleeps or spawns. Time and
//! randomness are passed in; the actors and tasks around them turn messages into calls here
//! and execute what comes back. `agent/clippy.toml` lists the clock, socket and spawn
//! functions this module may not call (`disallowed-methods` / `disallowed-types`); every
//! other module of the crate opts out of that list in `lib.rs`.
//!
//! * [`batch`]: per-task batching, admission at root tasks and early dropping on a
//!   caller-supplied clock.
//! * [`demand`]: the frontend's demand meter (cumulative per-app and per-task counters for
//!   heartbeats).
//! * [`node_plan`]: a node's epoch fencing and the order it applies a plan in.
//! * [`plan_fence`]: which plan pushes a node may take (the sender is the coordinator it
//!   knows, the epoch at most the committed one it can verify).
//! * [`diff`]: the MIG/MPS plan diff (live layout → target layout as steps).
//! * [`netsim`]: the in-memory network model behind the simulated transport (virtual time,
//!   seeded delay, loss and partitions).
//! * [`peers`]: the frontend's suspect list (transport failures, peers silent through
//!   repeated hedges).
//! * [`leader`]: which Raft term this node coordinates and the term-fenced control state.

pub mod batch;
pub mod demand;
pub mod diff;
pub mod leader;
pub mod netsim;
pub mod node_plan;
pub mod peers;
pub mod plan_fence;
