//! `jigsaw bench cluster`: the joint cluster planner against the lower bound, its LP bound
//! and the sequential planner, for a set of apps at several demand levels.

use crate::appset::{load_app_set, renamed};
use anyhow::{bail, Result};
use jigsaw_agent::node::WallClock;
use jigsaw_coordinator::cluster_plan::{plan_cluster, plan_cluster_sequential, LiveLayouts};
use jigsaw_coordinator::planner::{PlannerConfig, Spread};
use jigsaw_coordinator::HighsSolver;
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::cluster::{AppEntry, ClusterCommand, ClusterPlan, ClusterState, GpuInventory, Member};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// What `jigsaw bench cluster` runs.
#[derive(Debug, Clone)]
pub struct ClusterBench {
    /// App-set files.
    pub apps: Vec<PathBuf>,
    /// GPUs in the cluster.
    pub gpus: usize,
    /// GPUs per node.
    pub gpus_per_node: usize,
    /// GPU model.
    pub gpu: GpuModel,
    /// Demand multipliers (one row each).
    pub scales: Vec<f64>,
    /// Copies of the app set (renamed `NAME-k`), to scale the number of apps.
    pub copies: usize,
    /// Failure-domain spread.
    pub spread: Spread,
    /// Also run the sequential planner (slow on large clusters).
    pub sequential: bool,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Demand multiplier.
    pub scale: f64,
    /// Apps registered.
    pub apps: usize,
    /// GPUs with at least one instance.
    pub gpus_used: u32,
    /// Compute slices used.
    pub compute_slices: u32,
    /// ⌈Σ per-app compute slices / 7⌉.
    pub lower_bound_gpus: u32,
    /// LP bound of the joint MILP on GPUs.
    pub lp_bound_gpus: u32,
    /// Joint planner wall time, s.
    pub solve_s: f64,
    /// Apps planned below their demand.
    pub apps_shed: usize,
    /// Demand shed, requests/s.
    pub shed_rps: f64,
    /// Apps with at least one GPU shared with another app.
    pub apps_sharing: usize,
    /// GPUs of the sequential planner, when run.
    pub sequential_gpus: Option<u32>,
    /// Sequential planner wall time, s.
    pub sequential_s: Option<f64>,
    /// Notes of the joint plan.
    pub notes: Vec<String>,
}

fn state(entries: &[AppEntry], b: &ClusterBench, scale: f64) -> ClusterState {
    let mut st = ClusterState::default();
    let per = b.gpus_per_node.max(1);
    for n in 0..b.gpus.div_ceil(per) {
        let count = per.min(b.gpus - n * per);
        st.apply(&ClusterCommand::PutMember(Member {
            node: format!("node-{}", n + 1),
            addr: format!("10.0.{}.{}:7400", n / 250, n % 250 + 1),
            eligible: n < 3,
            gpus: (0..count)
                .map(|g| GpuInventory { uuid: format!("GPU-{}-{g}", n + 1), model: b.gpu, live: vec![] })
                .collect(),
            alive: true,
        }));
    }
    for e in entries {
        st.apply(&ClusterCommand::PutApp(AppEntry { demand_rps: e.demand_rps * scale, ..e.clone() }));
    }
    st
}

fn sharing(p: &ClusterPlan) -> usize {
    let mut apps = std::collections::BTreeSet::new();
    for gs in p.nodes.values() {
        for insts in gs.values() {
            let here: std::collections::BTreeSet<&str> = insts.iter().map(|i| i.app.as_str()).collect();
            if here.len() > 1 {
                apps.extend(here);
            }
        }
    }
    apps.len()
}

/// Run the bench; returns the rows.
pub fn run(b: &ClusterBench, cfg: &PlannerConfig, solver: &HighsSolver) -> Result<Vec<Row>> {
    if b.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    let mut base = Vec::new();
    for f in &b.apps {
        base.extend(load_app_set(f)?.apps);
    }
    let mut entries = Vec::new();
    for k in 0..b.copies.max(1) {
        for e in &base {
            entries.push(if b.copies > 1 { renamed(e, &format!("{}-{}", e.name, k + 1))? } else { e.clone() });
        }
    }
    let cfg = PlannerConfig { spread: b.spread, ..cfg.clone() };
    let mut rows = Vec::new();
    for &scale in &b.scales {
        let st = state(&entries, b, scale);
        let clock = WallClock::new();
        let joint = plan_cluster(&st, 1, &LiveLayouts::new(), &[], &cfg, solver, &clock);
        let (seq_gpus, seq_s) = if b.sequential {
            let clock = WallClock::new();
            let seq = plan_cluster_sequential(&st, 1, &LiveLayouts::new(), &[], &cfg, solver, &clock);
            (Some(seq.stats.gpus_used), Some(seq.stats.solve_ms / 1e3))
        } else {
            (None, None)
        };
        let shed: Vec<_> = joint.apps.iter().filter(|a| a.shed_rps() > 1e-6 * a.requested_rps.max(1.0)).collect();
        rows.push(Row {
            scale,
            apps: entries.len(),
            gpus_used: joint.stats.gpus_used,
            compute_slices: joint.stats.compute_slices,
            lower_bound_gpus: joint.stats.lower_bound_gpus,
            lp_bound_gpus: joint.stats.lp_bound_gpus,
            solve_s: joint.stats.solve_ms / 1e3,
            apps_shed: shed.len(),
            shed_rps: shed.iter().map(|a| a.shed_rps()).sum(),
            apps_sharing: sharing(&joint),
            sequential_gpus: seq_gpus,
            sequential_s: seq_s,
            notes: joint
                .stats
                .notes
                .iter()
                .cloned()
                .chain(shed.iter().map(|a| {
                    format!(
                        "shed {}: {:.1} of {:.1} req/s ({:.0} %)",
                        a.app,
                        a.shed_rps(),
                        a.requested_rps,
                        100.0 * a.shed_rps() / a.requested_rps.max(1e-9)
                    )
                }))
                .collect(),
        });
    }
    Ok(rows)
}

/// The rows as a table.
pub fn table(b: &ClusterBench, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster bench: {} x {} ({} per node), spread {:?}, joint planner vs bounds{}",
        b.gpus,
        b.gpu,
        b.gpus_per_node,
        b.spread,
        if b.sequential { " and the sequential planner" } else { "" }
    );
    let _ = writeln!(
        out,
        "{:>6} {:>5} {:>5} {:>7} {:>6} {:>6} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "scale", "apps", "GPUs", "slices", "lower", "LP", "solve s", "shed", "sharing", "seq GPUs", "seq s"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>6} {:>5} {:>5} {:>7} {:>6} {:>6} {:>8.2} {:>9} {:>8} {:>8} {:>8}",
            r.scale,
            r.apps,
            r.gpus_used,
            r.compute_slices,
            r.lower_bound_gpus,
            r.lp_bound_gpus,
            r.solve_s,
            format!("{}/{:.0}", r.apps_shed, r.shed_rps.abs()),
            r.apps_sharing,
            r.sequential_gpus.map_or("-".into(), |g| g.to_string()),
            r.sequential_s.map_or("-".into(), |s| format!("{s:.2}")),
        );
        for n in &r.notes {
            let _ = writeln!(out, "       note: {n}");
        }
    }
    let _ = writeln!(
        out,
        "GPUs: used by the joint plan; lower: ceil(sum of per-app compute slices / 7); LP: LP relaxation of the joint MILP; shed: apps/req/s below demand; sharing: apps on a GPU with another app"
    );
    out
}
