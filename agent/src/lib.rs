//! # jigsaw-agent
//!
//! The node runtime library: what one `jigsaw agent` process (one GPU node) runs. The
//! `jigsaw` binary (crate `jigsaw-cli`) parses the command line and starts it; this crate
//! has no argument parsing and no `anyhow`: every fallible call returns a typed error.
//!
//! * [`node`]: wiring of one node (the same in a process and in the cluster simulation),
//!   the inbound router and the operator service.
//! * [`coordinator`]: the coordinator actor (Raft leadership → the control loop).
//! * [`actors`]: the node agent's actor tree (node agent → GPU actors → segment actors).
//! * [`raft`]: openraft glue: type config, the redb store, Raft RPCs over the transport.
//! * [`transport`]: QUIC + mutual TLS, the cluster CA, the request/reply transport trait
//!   and its in-memory twin.
//! * [`gpu`]: the GPU backend trait, the MIG/MPS simulator, the NVML backend.
//! * [`dataplane`]: the frontend, instance queues, workers and the KServe v2 HTTP API.
//! * [`config`]: the operator's node config.
//! * [`metrics`]: the node's Prometheus metrics (`GET /metrics`, `docs/metrics.md`).
//! * [`persist`]: durable writes of the node's state files; corrupt ones set aside at start.
//! * [`status_page`]: the cluster status page (`GET /status`, `jigsaw status --html`).
//! * [`core`]: the pure cores (batching, epoch fencing, the plan-push fence, plan diff,
//!   network model, leadership), kept free of clocks, sockets and spawns by clippy.
//!
//! ## Supervision tree of a node
//!
//! ```text
//! node (NodeHandle)                        started by `jigsaw agent` / the simulation
//! ├── NodeAgent actor                      epoch-fenced plan application (core::node_plan)
//! │   └── GpuActor × GPUs                  owns its backend; slow NVML calls on a blocking thread
//! │       └── SegmentActor × instances     owns the instance's workers (data-plane attachment)
//! │           └── worker supervisor tasks  restart crashed `jigsaw worker` processes
//! ├── CoordinatorActor (eligible only)     Raft leadership → Control; its ticker task and
//! │   └── proposal / solve / push tasks    one task per action, results sent back with the term
//! ├── openraft (eligible only)             its own tasks; redb store
//! ├── heartbeat task                       inventory + observed profiles → the coordinator
//! ├── inbound router (transport handler)   one task per inbound request (QUIC server loop)
//! ├── data plane                           a pool driver task per instance queue; one task
//! │                                        per forwarded stage
//! └── HTTP API (axum, when configured)     one task per connection
//! ```
//!
//! Actors are linked (a failed GPU actor takes its GPU out of service, a failed segment
//! actor is restarted by its GPU actor). Tokio tasks are owned by the actor or handle that
//! spawned them and are aborted when it stops. Design notes: `docs/mesh.md` (mesh
//! protocols), `docs/dataplane.md` (requests).

// The pure cores obey the clock/socket/spawn bans of `agent/clippy.toml`; the shells do not.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod actors;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod config;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod coordinator;
pub mod core;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod dataplane;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod gpu;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod metrics;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod node;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod persist;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod raft;
pub mod status_page;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod transition_sim;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod transport;
