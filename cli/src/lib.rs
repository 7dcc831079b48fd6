//! # jigsaw-cli
//!
//! The `jigsaw` command-line tool: the binary operators and scripts run. It owns argument
//! parsing (clap), error reporting (anyhow) and every subcommand, one module per group;
//! the node runtime it starts (`jigsaw agent`, `jigsaw up`) is the `jigsaw-agent` library.
//!
//! * [`args`]: the clap types of every command.
//! * [`cluster`]: `jigsaw agent` (one node from its config), `up` / `down` (a local cluster
//!   of agent processes on loopback with simulated GPUs), `status`, `app register|remove`
//!   (operator requests over QUIC with the admin certificate).
//! * [`planning`]: `plan`, `analyze max-demand`, `bench planner`, `profiles synth`, `demo`.
//! * [`load`]: `jigsaw load`, the open-loop load generator for the KServe v2 HTTP API, and
//!   its pure core ([`load::schedule`]: arrival schedules and outcome accounting).
//! * [`profile`]: `jigsaw profile`, measuring the profile table with real workers.
//! * [`measured`]: `profiles import` (measured profiles from other tools) and
//!   `profiles calibrate` (cross-validation of the calibrated profile model).
//! * [`bench`](mod@bench): `bench cluster` (the joint planner against its bounds), `bench mesh`
//!   (failover and plan distribution) and `bench dataplane`.
//! * [`forecast`]: `forecast backtest` (the demand forecasters on a real or synthetic trace).
//! * [`appset`]: app-set files (several apps with profiles and demands).
//! * [`ops`]: `config check` and `ca init|issue`.
//! * [`chaos`]: `jigsaw chaos`, kills and restarts agents under load and reports every window.
//! * [`replay`]: `jigsaw replay`, the paper's Figure 4: a trace replayed on local simulated
//!   clusters under A+S+T and the baselines, per interval and overall, with its pure core
//!   ([`replay::core`]: trace scaling, interval figures, tables, SVG).
//! * [`systemd`]: the notify protocol for `jigsaw agent` (`READY=1`, `WATCHDOG=1`,
//!   `STATUS=`, `STOPPING=1`), sent off the runtime's worker threads.

pub mod appset;
pub mod args;
pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod forecast;
pub mod load;
pub mod measured;
pub mod ops;
pub mod planning;
pub mod profile;
pub mod replay;
pub mod systemd;
