//! Planning a whole cluster: every registered application on the alive GPUs.
//!
//! Applications are planned one after another in name order, each with the min-cost goal on
//! the GPUs the earlier ones left, so each takes only the GPUs it needs; its logical GPUs are
//! then mapped onto physical GPUs with [`assign_gpus`], sticky to what runs now. An app that
//! cannot be served at its demand is planned at the largest demand the remaining GPUs serve
//! (the plan says so in its note); one that cannot be planned at all is left out with the
//! planner's diagnosis. Every alive GPU gets a target, empty when no app uses it, so agents
//! release segments of apps that went away. Pure: the solver and clock are passed in.

use crate::assign::{assign_gpus, PhysicalGpu};
use crate::milp::Solver;
use crate::planner::{plan, Clock, Goal, PlannerConfig, Problem};
use crate::spaces::SearchSpace;
use jigsaw_protocol::cluster::{AppPlacement, ClusterPlan, ClusterState};
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::{GpuModel, ProfileRow, ProfileTable};
use std::collections::BTreeMap;

/// Live layouts by (node, GPU UUID), from the agents' latest reports.
pub type LiveLayouts = BTreeMap<(String, String), Vec<InstancePlan>>;

/// Replace the rows of `profiles` that run-time observations measured again (only rows the
/// table already has: an observation never adds a configuration the app did not register).
/// Returns how many rows changed.
pub fn merge_observed(profiles: &mut ProfileTable, observed: &[ProfileRow]) -> usize {
    let mut n = 0;
    for r in observed {
        if profiles.get(&r.task, &r.variant, r.gpu, &r.mig_profile, r.mps, r.batch).is_some_and(|old| old != r) {
            profiles.insert(r.clone());
            n += 1;
        }
    }
    n
}

/// Plan every app of `state` on its alive members' GPUs, as epoch `epoch`, with run-time
/// `observed` profile points in place of the registered ones.
pub fn plan_cluster(
    state: &ClusterState,
    epoch: u64,
    live: &LiveLayouts,
    observed: &[ProfileRow],
    cfg: &PlannerConfig,
    solver: &dyn Solver,
    clock: &dyn Clock,
) -> ClusterPlan {
    let mut free: Vec<PhysicalGpu> = state
        .alive_members()
        .flat_map(|m| {
            m.gpus.iter().map(|g| PhysicalGpu {
                node: m.node.clone(),
                uuid: g.uuid.clone(),
                model: g.model,
                live: live.get(&(m.node.clone(), g.uuid.clone())).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let mut nodes: BTreeMap<String, BTreeMap<String, Vec<InstancePlan>>> = BTreeMap::new();
    for g in &free {
        nodes.entry(g.node.clone()).or_default().insert(g.uuid.clone(), Vec::new());
    }
    let space: SearchSpace = state.config.space.parse().unwrap_or(SearchSpace::FULL);
    let mut apps = Vec::new();
    for entry in state.apps.values() {
        let unplaced = |note: String| AppPlacement {
            app: entry.name.clone(),
            gpus: 0,
            planned_rps: 0.0,
            accuracy: 0.0,
            note: Some(note),
        };
        let (app, mut profiles) = match entry.parse() {
            Ok(p) => (p.spec, p.profiles),
            Err(e) => {
                apps.push(unplaced(format!("invalid registration: {e}")));
                continue;
            }
        };
        merge_observed(&mut profiles, observed);
        // The most numerous free model that the profiles cover.
        let mut counts: BTreeMap<GpuModel, usize> = BTreeMap::new();
        for g in &free {
            if profiles.rows().any(|r| r.gpu == g.model) {
                *counts.entry(g.model).or_default() += 1;
            }
        }
        let Some((&model, &n)) = counts.iter().max_by_key(|(m, n)| (**n, std::cmp::Reverse(**m))) else {
            apps.push(unplaced("no free GPU of a model its profiles cover".into()));
            continue;
        };
        let pb = Problem { app: &app, profiles: &profiles, gpu: model, gpus: n, space };
        let (p, note) = match plan(pb, Goal::MinCost { demand: entry.demand_rps }, cfg, solver, clock) {
            Ok(p) => {
                let note = p.stats.note.clone();
                (p, note)
            }
            Err(e) => match plan(pb, Goal::MaxDemand, cfg, solver, clock) {
                Ok(p) if p.demand_rps > 0.0 => {
                    let note = format!(
                        "planned {:.1} of {:.1} req/s on the {n} free {model} GPUs ({e})",
                        p.demand_rps, entry.demand_rps
                    );
                    (p, Some(note))
                }
                _ => {
                    apps.push(unplaced(e.to_string()));
                    continue;
                }
            },
        };
        let used: Vec<_> = p.gpus.iter().filter(|g| !g.instances.is_empty()).cloned().collect();
        let assigned = match assign_gpus(model, &used, &free) {
            Ok(a) => a,
            Err(e) => {
                apps.push(unplaced(e.to_string()));
                continue;
            }
        };
        let mut taken = Vec::new();
        for a in assigned.into_iter().filter(|a| a.logical.is_some()) {
            let g = &free[a.physical];
            nodes.entry(g.node.clone()).or_default().insert(g.uuid.clone(), a.instances);
            taken.push(a.physical);
        }
        taken.sort_unstable();
        for j in taken.iter().rev() {
            free.remove(*j);
        }
        apps.push(AppPlacement {
            app: entry.name.clone(),
            gpus: used.len(),
            planned_rps: p.demand_rps,
            accuracy: p.accuracy,
            note,
        });
    }
    ClusterPlan { epoch, inputs: state.plan_inputs(), nodes, apps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_replace_registered_rows_only() {
        let row = jigsaw_protocol::testing::row;
        let mut t = ProfileTable::from_rows([row("a", 5.0)]);
        assert_eq!(merge_observed(&mut t, &[row("a", 9.0), row("unknown", 1.0)]), 1);
        assert_eq!(t.len(), 1, "no new configuration");
        assert_eq!(t.get("a", "v", GpuModel::H100_80gb, "1g.10gb", 1, 8).map(|r| r.p95_ms), Some(9.0));
        assert_eq!(merge_observed(&mut t, &[row("a", 9.0)]), 0, "unchanged");
    }
}
