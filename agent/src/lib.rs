//! # jigsaw-agent
//!
//! The per-node agent and the `jigsaw` command-line tool. Today it holds the CLI shell
//! around the planner ([`config`] and [`cli`]); the node actor tree, transport, GPU
//! backends and data plane arrive with the mesh and data-plane issues.

pub mod cli;
pub mod config;
