//! `jigsaw bench transition`: make-before-break plan transitions under load, on an
//! in-process simulated cluster ([`jigsaw_agent::transition_sim`]: three nodes with two
//! simulated H100s each, the real HiGHS planner, the social example app, timed in-process
//! workers). Load runs at 70 % of the planned demand while the demand steps 2× up and back
//! down; per transition it prints the time from the plan's commit until every node
//! finished its break phase (the last old MIG instance destroyed), the MIG instances
//! created and destroyed, and the requests sent during the transition by outcome.
//!
//! Figures are **simulated time** (tokio's paused clock: link delays, MIG latency and batch
//! times are modelled; the planner's own solve is before the commit and not counted). By
//! default the plans are rotated across GPUs each epoch (SYNTHETIC churn: every transition
//! moves every instance, `--no-rotate` keeps the planner's own placement). `RUST_LOG` turns
//! on the nodes' logs (stderr).

use anyhow::{anyhow, Result};
use jigsaw_agent::transition_sim::{run, runtime, Config, Report};
use std::fmt::Write as _;
use std::time::Duration;

/// What `jigsaw bench transition` runs.
#[derive(Debug, Clone)]
pub struct TransitionBench {
    /// Simulated MIG create/destroy latency, ms.
    pub mig_latency_ms: u64,
    /// Transitions.
    pub steps: usize,
    /// The low demand, requests/s (the high one is twice it).
    pub demand_rps: f64,
    /// Rotate the plans across GPUs (synthetic churn).
    pub rotate: bool,
    /// Seed.
    pub seed: u64,
}

/// Run the bench.
pub fn bench(b: &TransitionBench) -> Result<Report> {
    // The nodes' own logs on stderr when asked for (`RUST_LOG=jigsaw_agent::dataplane=debug`
    // names every dropped stage); quiet otherwise, so the table stays readable.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ =
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).try_init();
    }
    let cfg = Config {
        seed: b.seed,
        mig_latency: Duration::from_millis(b.mig_latency_ms),
        transitions: b.steps,
        demand_rps: b.demand_rps,
        rotate: b.rotate,
        ..Config::default()
    };
    let rt = runtime()?;
    rt.block_on(run(cfg)).map_err(|e| anyhow!("transition bench: {e}"))
}

/// The report as a table.
pub fn table(b: &TransitionBench, r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "transitions on a simulated cluster (3 nodes x 2 H100, social app, load 70 % of plan), MIG latency {} ms, \
         plans {}; simulated time",
        b.mig_latency_ms,
        if b.rotate { "rotated across GPUs (SYNTHETIC churn)" } else { "as planned" }
    );
    let _ = writeln!(
        s,
        "{:>5} {:>8} {:>8} {:>10} {:>12} {:>7} {:>9} {:>6} {:>5} {:>7} {:>6}",
        "epoch", "demand", "load", "commit_ms", "broken_ms", "created", "destroyed", "sent", "ok", "dropped", "failed"
    );
    for row in &r.rows {
        let broken = row.commit_to_broken_ms.map_or("timeout".to_string(), |v| format!("{v:.0}"));
        let q = row.requests;
        let _ = writeln!(
            s,
            "{:>5} {:>8.0} {:>8.0} {:>10.0} {:>12} {:>7} {:>9} {:>6} {:>5} {:>7} {:>6}",
            row.epoch,
            row.demand_rps,
            row.load_rps,
            row.change_to_commit_ms,
            broken,
            row.created,
            row.destroyed,
            q.sent,
            q.ok,
            q.dropped,
            q.failed
        );
    }
    let done: Vec<f64> = r.rows.iter().filter_map(|x| x.commit_to_broken_ms).collect();
    let max = done.iter().copied().fold(0.0, f64::max);
    let mean = if done.is_empty() { 0.0 } else { done.iter().sum::<f64>() / done.len() as f64 };
    let w = r.rows.iter().fold((0, 0, 0, 0), |a, x| {
        (a.0 + x.requests.sent, a.1 + x.requests.ok, a.2 + x.requests.dropped, a.3 + x.requests.failed)
    });
    let _ = writeln!(
        s,
        "transitions: {} of {} finished; commit -> last old instance destroyed: mean {mean:.0} ms, max {max:.0} ms",
        done.len(),
        r.rows.len()
    );
    let _ = writeln!(s, "during transitions: sent {}, ok {}, dropped {}, failed {}", w.0, w.1, w.2, w.3);
    let _ = writeln!(
        s,
        "whole run (warm-up and settling included): sent {}, ok {}, dropped {}, failed {} {:?}",
        r.total.sent, r.total.ok, r.total.dropped, r.total.failed, r.not_ok
    );
    let _ = writeln!(
        s,
        "invariants: {} stage(s) routed to an instance not serving, {} stage(s) cut by an instance stopping, {} violation(s)",
        r.misrouted,
        r.cut,
        r.violations.len()
    );
    s
}
