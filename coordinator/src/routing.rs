//! The routing table: where each application's tasks run, derived from a committed cluster
//! plan and the replicated state. Pure and deterministic, so every coordinator derives the
//! same table for the same epoch.
//!
//! Per task: every planned instance is a target weighted by its profiled throughput; the
//! task's latency budget L̂(t) is the slowest instance's batch p95 (what the planner allowed);
//! `downstream_ms` is the fastest the rest of the graph can go (the longest path below the
//! task of each task's fastest batch-of-one latency), which the queues use for early drops.

use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::cluster::{ClusterPlan, ClusterState};
use jigsaw_protocol::profile::{ProfileRow, ProfileTable};
use jigsaw_protocol::route::{AppRoute, RoutingTable, Target, TaskRoute};

/// Stale-drop threshold used when an app does not say otherwise, ms (paper §3.3).
pub const DEFAULT_STALE_MS: f64 = 20.0;

/// Derive the routing table of `plan` from `state`. Apps whose registration no longer
/// parses, or that have no instance in the plan, are left out.
pub fn routing_table(state: &ClusterState, plan: &ClusterPlan) -> RoutingTable {
    let addr = |node: &str| state.members.get(node).map(|m| m.addr.clone()).unwrap_or_default();
    let mut apps = Vec::new();
    for entry in state.apps.values() {
        let Ok(spec) = AppSpec::parse(&entry.spec_toml, &entry.name) else { continue };
        let Ok(table) = ProfileTable::parse_csv(&entry.profiles_csv, &entry.name) else { continue };
        let mut targets: Vec<Vec<Target>> = vec![Vec::new(); spec.tasks.len()];
        let mut used: Vec<ProfileRow> = Vec::new();
        for (node, gpus) in &plan.nodes {
            for (uuid, insts) in gpus {
                for i in insts.iter().filter(|i| i.app == spec.name && i.mps > 0) {
                    let Some(t) = spec.task_index(&i.task) else { continue };
                    targets[t].push(Target {
                        node: node.clone(),
                        addr: addr(node),
                        gpu: uuid.clone(),
                        start: i.start,
                        mig_profile: i.mig_profile.clone(),
                        variant: i.variant.clone(),
                        mps: i.mps,
                        batch: i.batch,
                        weight: i.throughput_rps.max(1e-9),
                    });
                    for r in table.rows() {
                        let same = r.task == i.task
                            && r.variant == i.variant
                            && r.mig_profile == i.mig_profile
                            && r.mps == i.mps;
                        if same && !used.contains(r) {
                            used.push(r.clone());
                        }
                    }
                }
            }
        }
        if targets.iter().all(Vec::is_empty) {
            continue;
        }
        let mut route = AppRoute { spec, tasks: Vec::new(), stale_ms: DEFAULT_STALE_MS, profiles: used };
        let budget: Vec<f64> = (0..route.spec.tasks.len())
            .map(|t| {
                let task = &route.spec.tasks[t].name;
                targets[t].iter().filter_map(|g| route.batch_ms(task, g, g.batch)).fold(0.0, f64::max)
            })
            .collect();
        let fastest: Vec<f64> = (0..route.spec.tasks.len())
            .map(|t| {
                let task = &route.spec.tasks[t].name;
                targets[t].iter().filter_map(|g| route.batch_ms(task, g, 1)).fold(f64::INFINITY, f64::min)
            })
            .map(|v| if v.is_finite() { v } else { 0.0 })
            .collect();
        let order = route.spec.topo_order().unwrap_or_default();
        let mut below = vec![0.0f64; route.spec.tasks.len()];
        for &t in order.iter().rev() {
            below[t] = route.spec.children(t).iter().map(|&c| fastest[c] + below[c]).fold(0.0, f64::max);
        }
        route.tasks = (0..route.spec.tasks.len())
            .map(|t| TaskRoute {
                task: route.spec.tasks[t].name.clone(),
                budget_ms: budget[t],
                downstream_ms: below[t],
                targets: std::mem::take(&mut targets[t]),
            })
            .collect();
        apps.push(route);
    }
    RoutingTable { epoch: plan.epoch, apps }
}
