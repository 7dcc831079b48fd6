//! # jigsaw-agent
//!
//! The per-node agent and the `jigsaw` command-line tool.
//!
//! * [`node`]: the node runtime: actor tree + Raft + transport + the coordinator's control
//!   loop (pure, in `jigsaw_coordinator::control`), the same in a process and in simulation.
//! * [`actors`]: the ractor supervision tree (node agent → GPU actors → segment actors).
//! * [`raft`]: openraft glue: type config, the redb store, Raft RPCs over the transport.
//! * [`transport`]: QUIC + mutual TLS, the cluster CA, the request/reply transport trait
//!   and its in-memory twin.
//! * [`gpu`]: the GPU backend trait, the MIG/MPS simulator, the NVML backend, the pure plan
//!   diff; [`node_plan`]: the node's epoch fencing, as a pure core.
//! * [`dataplane`]: the data plane's pure cores (batching and dropping so far).
//! * [`local`]: `jigsaw agent`, `up`, `down`, `status`, `app`; [`cli`] and [`config`]: the
//!   command line and operator config.
//!
//! Design note for the mesh protocols: `docs/mesh.md`.

pub mod actors;
pub mod bench_dataplane;
pub mod bench_mesh;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod gpu;
pub mod local;
pub mod node;
pub mod node_plan;
pub mod raft;
pub mod transport;
