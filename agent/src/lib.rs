//! # jigsaw-agent
//!
//! The per-node agent and the `jigsaw` command-line tool. Today it holds the CLI shell
//! around the planner ([`config`] and [`cli`]) and the GPU layer's pure parts ([`gpu`]: the
//! backend trait, the MIG/MPS simulator and the plan diff) and the node's epoch-fenced plan
//! bookkeeping ([`node_plan`]), and the QUIC + mutual-TLS [`transport`]; the node actor tree,
//! NVML backend and data plane arrive with the mesh and data-plane issues.

pub mod actors;
pub mod cli;
pub mod config;
pub mod gpu;
pub mod local;
pub mod node;
pub mod node_plan;
pub mod raft;
pub mod transport;
