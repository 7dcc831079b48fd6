//! The routing table: where each application's tasks run, derived from a committed cluster
//! plan and the replicated state. Pure and deterministic, so every coordinator derives the
//! same table for the same epoch.
//!
//! Per task: every planned instance is a target weighted by the load the plan routes to it
//! (`InstancePlan::load_rps`; by its profiled throughput in plans without loads); the
//! task's latency budget L̂(t) is the slowest instance's batch p95 (what the planner allowed);
//! `downstream_ms` is the fastest the rest of the graph can go (the longest path below the
//! task of each task's fastest batch-of-one latency), which the queues use for early drops.

use jigsaw_protocol::cluster::{ClusterPlan, ClusterState, ParsedApp};
use jigsaw_protocol::profile::ProfileRow;
use jigsaw_protocol::route::{AppRoute, RoutingTable, Target, TaskRoute};

/// Stale-drop threshold used when an app does not say otherwise, ms (paper §3.3).
pub const DEFAULT_STALE_MS: f64 = 20.0;

/// Derive the routing table of `plan` from `state`. Apps whose registration no longer
/// parses, or that have no instance in the plan, are left out.
pub fn routing_table(state: &ClusterState, plan: &ClusterPlan) -> RoutingTable {
    let addr = |node: &str| state.members.get(node).map(|m| m.addr.clone()).unwrap_or_default();
    let mut apps = Vec::new();
    for entry in state.apps.values() {
        let Ok(ParsedApp { spec, profiles: table }) = entry.parse() else { continue };
        let mut targets: Vec<Vec<Target>> = vec![Vec::new(); spec.tasks.len()];
        let mut loads: Vec<Vec<f64>> = vec![Vec::new(); spec.tasks.len()];
        let mut used: Vec<ProfileRow> = Vec::new();
        for (node, gpus) in &plan.nodes {
            for (uuid, insts) in gpus {
                for i in insts.iter().filter(|i| i.app == spec.name && i.mps > 0) {
                    let Some(t) = spec.task_index(&i.task) else { continue };
                    targets[t].push(Target::of(node, &addr(node), uuid, i));
                    loads[t].push(i.load_rps);
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
        for (ts, ls) in targets.iter_mut().zip(&loads) {
            Target::by_load(ts, ls);
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

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::cluster::{AppEntry, Member};
    use jigsaw_protocol::plan::InstancePlan;
    use jigsaw_protocol::profile::ProfileTable;
    use std::collections::BTreeMap;

    const SPEC: &str = include_str!("../../examples/apps/traffic.toml");
    const CSV: &str = include_str!("../../examples/profiles/traffic-h100-80gb.csv");

    fn inst(task: &str, variant: &str, start: u8, batch: u32, app: &str) -> InstancePlan {
        let t = ProfileTable::parse_csv(CSV, "t").expect("csv");
        let r = t.get(task, variant, jigsaw_protocol::GpuModel::H100_80gb, "1g.10gb", 1, batch).expect("row");
        InstancePlan {
            variant: variant.into(),
            batch,
            p95_ms: r.p95_ms,
            throughput_rps: r.throughput_rps,
            app: app.into(),
            ..jigsaw_protocol::testing::instance(task, "1g.10gb", start)
        }
    }

    #[test]
    fn targets_weights_budgets_and_downstream_follow_the_plan() {
        let mut st = ClusterState::default();
        let entry = AppEntry {
            name: "traffic".into(),
            spec_toml: SPEC.into(),
            profiles_csv: CSV.into(),
            demand_rps: 100.0,
            demand_auto: false,
        };
        st.apps.insert("traffic".into(), entry);
        for (n, a) in [("n1", "10.0.0.1:7400"), ("n2", "10.0.0.2:7400")] {
            let m = Member { node: n.into(), addr: a.into(), eligible: true, gpus: vec![], alive: true };
            st.members.insert(n.into(), m);
        }
        // detect's instances carry planned loads; the others (as in plans written before
        // loads existed) do not.
        let d1 = InstancePlan { load_rps: 30.0, ..inst("detect", "yolov5s", 0, 8, "traffic") };
        let d2 = InstancePlan { load_rps: 50.0, ..inst("detect", "yolov5s", 1, 16, "traffic") };
        let mk = inst("make", "efficientnet-b0", 2, 16, "traffic");
        let pe = inst("person", "vgg11", 3, 8, "traffic");
        let other = inst("make", "efficientnet-b0", 4, 16, "someone-else");
        let mut nodes = BTreeMap::new();
        nodes.insert("n1".to_string(), BTreeMap::from([("GPU-a".to_string(), vec![d1.clone(), mk.clone()])]));
        nodes.insert("n2".to_string(), BTreeMap::from([("GPU-b".to_string(), vec![d2.clone(), pe.clone(), other])]));
        let plan = ClusterPlan { epoch: 4, inputs: String::new(), nodes, apps: vec![], stats: Default::default() };
        let t = routing_table(&st, &plan);
        assert_eq!(t.epoch, 4);
        let r = t.app("traffic").expect("routed");
        let det = &r.tasks[0];
        assert_eq!(det.task, "detect");
        assert_eq!(det.targets.len(), 2);
        let n2 = det.targets.iter().find(|x| x.node == "n2").expect("n2 target");
        assert_eq!(
            (n2.addr.as_str(), n2.gpu.as_str(), n2.start, n2.weight, n2.capacity_rps),
            ("10.0.0.2:7400", "GPU-b", 1, 50.0, d2.throughput_rps)
        );
        // Without loads a task is weighted by throughput.
        assert_eq!(r.tasks[1].targets[0].weight, mk.throughput_rps);
        // L̂(detect) is the slowest instance's p95 at its batch.
        assert!((det.budget_ms - d1.p95_ms.max(d2.p95_ms)).abs() < 1e-9);
        // Downstream of detect: the slower of make's and person's batch-of-one latency.
        let one = |task: &str, i: &InstancePlan| r.batch_ms(task, &Target::of("", "", "", i), 1).expect("curve");
        let want = one("make", &mk).max(one("person", &pe));
        assert!((det.downstream_ms - want).abs() < 1e-9, "{} vs {want}", det.downstream_ms);
        assert_eq!(r.tasks[1].downstream_ms, 0.0);
        // Only this app's instances, and only the configurations in use, are carried.
        assert_eq!(r.tasks[1].targets.len(), 1, "the other app's instance is not a target");
        assert!(r.profiles.iter().all(|p| p.mig_profile == "1g.10gb" && p.mps == 1));
        assert!(r.profiles.iter().any(|p| p.task == "person" && p.variant == "vgg11"));
        assert!(!r.profiles.iter().any(|p| p.variant == "yolov5x"));
    }
}
