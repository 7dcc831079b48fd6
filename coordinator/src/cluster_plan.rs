//! Planning a whole cluster: every registered application on the alive GPUs, jointly.
//!
//! Apps are grouped by GPU model (each takes the most numerous alive model its profiles
//! cover) and each group is planned as one MILP ([`crate::joint`]), so MIG instances of
//! different apps share GPUs. The instances are then placed on the physical GPUs:
//!
//! * **Keep what runs.** The MILP rewards instances that already run (per app, task,
//!   variant and MIG profile), and [`place`] first leaves every such instance in its live
//!   slot, then puts new ones into free legal slots of GPUs in use before it opens an empty
//!   GPU. When that greedy placement needs more GPUs than the MILP's layout, the layout is
//!   mapped onto physical GPUs by [`assign_gpus`] instead (sticky per GPU). The plan counts
//!   instances kept, moved, created and destroyed.
//! * **Failure domains.** With `spread` (`[planner] spread`, default on with ≥ 2 alive
//!   nodes) every task gets at least two instances where capacity allows, and placement puts
//!   a task's next instance on a node that has none of it yet when a slot is free there. Each
//!   app reports the root demand it still serves after the loss of its worst single node.
//!
//! Every alive GPU gets a target, empty when no app uses it, so agents release segments of
//! apps that went away. Pure: the solver and clock are passed in.

use crate::assign::{assign_gpus, AssignError, PhysicalGpu};
use crate::joint::{plan_joint, JointApp, JointOptions, LiveCounts};
use crate::milp::Solver;
use crate::planner::{plan, Clock, Goal, PlannerConfig, Problem, Spread};
use crate::spaces::SearchSpace;
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::{GpuSpec, Placement, PlacementError};
use jigsaw_protocol::cluster::{AppPlacement, ClusterPlan, ClusterState, PlanChanges};
use jigsaw_protocol::plan::{GpuPlan, InstancePlan, Plan};
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

/// The alive GPUs of `state` with their live layouts.
fn physical_gpus(state: &ClusterState, live: &LiveLayouts) -> Vec<PhysicalGpu> {
    state
        .alive_members()
        .flat_map(|m| {
            m.gpus.iter().map(|g| PhysicalGpu {
                node: m.node.clone(),
                uuid: g.uuid.clone(),
                model: g.model,
                live: live.get(&(m.node.clone(), g.uuid.clone())).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

/// The most numerous model among `gpus` that `profiles` cover (ties: the smaller model).
fn model_for(profiles: &ProfileTable, gpus: &[PhysicalGpu]) -> Option<(GpuModel, usize)> {
    let mut counts: BTreeMap<GpuModel, usize> = BTreeMap::new();
    for g in gpus {
        if profiles.rows().any(|r| r.gpu == g.model) {
            *counts.entry(g.model).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(m, n)| (*n, std::cmp::Reverse(*m)))
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
    let t0 = clock.now_s();
    let physical = physical_gpus(state, live);
    let mut nodes: BTreeMap<String, BTreeMap<String, Vec<InstancePlan>>> = BTreeMap::new();
    for g in &physical {
        nodes.entry(g.node.clone()).or_default().insert(g.uuid.clone(), Vec::new());
    }
    let space: SearchSpace = state.config.space.parse().unwrap_or(SearchSpace::FULL);
    let alive_nodes = state.alive_members().filter(|m| !m.gpus.is_empty()).count();
    let spread = match cfg.spread {
        Spread::Node => true,
        Spread::None => false,
        Spread::Auto => alive_nodes >= 2,
    };
    let mut placements: BTreeMap<String, AppPlacement> = BTreeMap::new();
    let mut groups: BTreeMap<GpuModel, Vec<(String, AppSpec, ProfileTable, f64)>> = BTreeMap::new();
    for entry in state.apps.values() {
        let (app, mut profiles) = match entry.parse() {
            Ok(p) => (p.spec, p.profiles),
            Err(e) => {
                let note = format!("invalid registration: {e}");
                placements.insert(entry.name.clone(), AppPlacement::unplaced(&entry.name, entry.demand_rps, note));
                continue;
            }
        };
        merge_observed(&mut profiles, observed);
        match model_for(&profiles, &physical) {
            Some((model, _)) => {
                groups.entry(model).or_default().push((entry.name.clone(), app, profiles, entry.demand_rps))
            }
            None => {
                let note = "no alive GPU of a model its profiles cover".to_string();
                placements.insert(entry.name.clone(), AppPlacement::unplaced(&entry.name, entry.demand_rps, note));
            }
        }
    }
    let mut notes = Vec::new();
    let (mut lower, mut lp) = (0u32, 0u32);
    for (model, apps) in &groups {
        let phys: Vec<PhysicalGpu> = physical.iter().filter(|g| g.model == *model).cloned().collect();
        let mut counts: LiveCounts = BTreeMap::new();
        for g in &phys {
            for i in &g.live {
                *counts
                    .entry((i.app.clone(), i.task.clone(), i.variant.clone(), i.mig_profile.clone()))
                    .or_default() += 1;
            }
        }
        let joint_apps: Vec<JointApp<'_>> = apps
            .iter()
            .map(|(_, app, profiles, demand)| JointApp { app, profiles, demand: *demand, priority: app.priority })
            .collect();
        let opts = JointOptions {
            min_instances: if spread { 2 } else { 1 },
            live: counts,
            keep_weight_slices: cfg.keep_weight_slices,
        };
        let out = plan_joint(&joint_apps, *model, phys.len(), space, cfg, &opts, solver, clock);
        lower += out.stats.lower_bound_gpus as u32;
        lp += out.stats.lp_bound_gpus as u32;
        notes.extend(out.stats.notes.iter().map(|n| format!("{model}: {n}")));
        let instances: Vec<InstancePlan> = out
            .apps
            .iter()
            .filter_map(|a| a.plan.as_ref().ok())
            .flat_map(|p| p.gpus.iter().flat_map(|g| g.instances.iter().cloned()))
            .collect();
        let spec = model.spec();
        let targets: Vec<Vec<InstancePlan>> = match place_cluster(
            spec,
            *model,
            &phys,
            &instances,
            spread,
            &out.gpus,
            out.stats.gpus_used,
        ) {
            Ok(p) => {
                if p.extra_gpus > 0 {
                    notes.push(format!(
                            "{model}: {} GPU(s) beyond the plan's layout hold new instances, so that they serve before the old ones stop",
                            p.extra_gpus
                        ));
                }
                p.targets
            }
            Err(e) => {
                notes.push(format!("{model}: {e}"));
                vec![Vec::new(); phys.len()]
            }
        };
        for (g, t) in phys.iter().zip(&targets) {
            nodes.entry(g.node.clone()).or_default().insert(g.uuid.clone(), t.clone());
        }
        for (a, (name, ..)) in out.apps.iter().zip(apps) {
            let p = match &a.plan {
                Ok(p) => AppPlacement {
                    planned_rps: p.demand_rps,
                    accuracy: p.accuracy,
                    note: p.stats.note.clone(),
                    priority: a.priority,
                    worst_node_loss: worst_node_loss(p, &phys, &targets),
                    ..AppPlacement::unplaced(name, a.requested_rps, String::new())
                },
                Err(e) => {
                    AppPlacement { priority: a.priority, ..AppPlacement::unplaced(name, a.requested_rps, e.clone()) }
                }
            };
            placements.insert(name.clone(), p);
        }
    }
    let mut plan = ClusterPlan {
        epoch,
        inputs: state.plan_inputs(),
        nodes,
        apps: placements.into_values().collect(),
        stats: Default::default(),
    };
    plan.stats.lower_bound_gpus = lower;
    plan.stats.lp_bound_gpus = lp;
    plan.stats.notes = notes;
    finish(&mut plan, live);
    plan.stats.solve_ms = (clock.now_s() - t0) * 1e3;
    plan
}

/// Fill in the per-app GPU, slice and instance counts and the plan's totals and changes
/// from the targets.
fn finish(plan: &mut ClusterPlan, live: &LiveLayouts) {
    let mut gpus_of: BTreeMap<&str, std::collections::BTreeSet<(&str, &str)>> = BTreeMap::new();
    let mut slices_of: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let (mut used, mut slices) = (0u32, 0u32);
    for (node, gs) in &plan.nodes {
        for (uuid, insts) in gs {
            used += u32::from(!insts.is_empty());
            for i in insts {
                let cs = compute_slices(i);
                slices += cs;
                gpus_of.entry(&i.app).or_default().insert((node, uuid));
                let e = slices_of.entry(&i.app).or_default();
                e.0 += cs;
                e.1 += 1;
            }
        }
    }
    for a in &mut plan.apps {
        a.gpus = gpus_of.get(a.app.as_str()).map_or(0, |s| s.len());
        let (s, n) = slices_of.get(a.app.as_str()).copied().unwrap_or_default();
        a.compute_slices = s;
        a.instances = n;
    }
    plan.stats.gpus_used = used;
    plan.stats.compute_slices = slices;
    plan.stats.changes = changes(live, &plan.nodes);
}

/// Compute slices of an instance (its profile's "g" number).
fn compute_slices(i: &InstancePlan) -> u32 {
    i.mig_profile.split('g').next().and_then(|g| g.parse().ok()).unwrap_or(u32::from(i.slices))
}

/// Instances kept, moved, created and destroyed from `live` to `target`.
pub fn changes(live: &LiveLayouts, target: &BTreeMap<String, BTreeMap<String, Vec<InstancePlan>>>) -> PlanChanges {
    type Key<'a> = (&'a str, &'a str, &'a str);
    let slot = |node: &str, uuid: &str, i: &InstancePlan| {
        (
            node.to_string(),
            uuid.to_string(),
            i.mig_profile.clone(),
            i.start,
            i.app.clone(),
            i.task.clone(),
            i.variant.clone(),
        )
    };
    let mut old: BTreeMap<_, u32> = BTreeMap::new();
    for ((node, uuid), insts) in live {
        for i in insts {
            *old.entry(slot(node, uuid, i)).or_default() += 1;
        }
    }
    let mut c = PlanChanges::default();
    let mut created: BTreeMap<Key<'_>, u32> = BTreeMap::new();
    for (node, gs) in target {
        for (uuid, insts) in gs {
            for i in insts {
                match old.get_mut(&slot(node, uuid, i)) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        c.kept += 1;
                    }
                    _ => *created.entry((&i.app, &i.task, &i.variant)).or_default() += 1,
                }
            }
        }
    }
    let mut destroyed: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    for ((_, _, _, _, app, task, variant), n) in old {
        if n > 0 {
            *destroyed.entry((app, task, variant)).or_default() += n;
        }
    }
    for ((app, task, variant), n) in &created {
        let d = destroyed.get_mut(&(app.to_string(), task.to_string(), variant.to_string()));
        let m = d.as_ref().map_or(0, |d| (**d).min(*n));
        if let Some(d) = d {
            *d -= m;
        }
        c.moved += m;
        c.created += n - m;
    }
    c.destroyed = destroyed.values().sum();
    c
}

/// Root demand of the app of `plan` still served when its worst single node is lost: per
/// node, the least ratio over tasks of capacity left to the task's demand, times the planned
/// root demand (at most that demand).
fn worst_node_loss(plan: &Plan, phys: &[PhysicalGpu], targets: &[Vec<InstancePlan>]) -> Option<(String, f64)> {
    let mut per_node: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for (g, t) in phys.iter().zip(targets) {
        for i in t.iter().filter(|i| i.app == plan.app) {
            *per_node.entry(&g.node).or_default().entry(&i.task).or_default() += i.throughput_rps;
        }
    }
    let mut worst: Option<(String, f64)> = None;
    for node in per_node.keys() {
        let served = plan
            .tasks
            .iter()
            .map(|t| {
                let left: f64 = per_node
                    .iter()
                    .filter(|(n, _)| *n != node)
                    .map(|(_, caps)| caps.get(t.task.as_str()).copied().unwrap_or(0.0))
                    .sum();
                if t.demand_rps > 0.0 {
                    left / t.demand_rps
                } else {
                    1.0
                }
            })
            .fold(1.0_f64, f64::min)
            * plan.demand_rps;
        if worst.as_ref().is_none_or(|(_, w)| served < *w) {
            worst = Some((node.to_string(), served));
        }
    }
    worst
}

/// A placement of a group's instances ([`place_cluster`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// Target per physical GPU.
    pub targets: Vec<Vec<InstancePlan>>,
    /// Target instances that can only be created once live instances are destroyed.
    pub late: usize,
    /// GPUs used beyond the MILP's layout (and spread's allowance) so that fewer are late.
    pub extra_gpus: usize,
}

/// Place a group's `instances` on its physical GPUs `phys` (all of `model`), given the
/// MILP's `layout` of `gpus_used` GPUs. Candidates: the first-fit [`place`] within that many
/// GPUs (spread may open one more per node for a task's second instance), the
/// make-before-break [`place`] (any GPU), and the layout mapped onto the physical GPUs one to
/// one ([`assign_gpus`], sticky per GPU). The one with the fewest instances late (see
/// [`late_instances`]) wins, then (with spread) the one with fewest tasks whose instances
/// all sit on one node, then the one with fewest GPUs beyond the layout, the earlier on a
/// tie: so capacity stays up through a transition, even at the price of GPUs the layout
/// leaves idle (reported as `extra_gpus`), and a fresh cluster (nothing late anywhere)
/// gets the first fit, with spread, when it fits in the layout's GPUs, else the layout.
pub fn place_cluster(
    spec: &GpuSpec,
    model: GpuModel,
    phys: &[PhysicalGpu],
    instances: &[InstancePlan],
    spread: bool,
    layout: &[GpuPlan],
    gpus_used: usize,
) -> Result<Placed, AssignError> {
    let used = |t: &Vec<Vec<InstancePlan>>| t.iter().filter(|g| !g.is_empty()).count();
    let nodes = phys.iter().map(|g| g.node.as_str()).collect::<std::collections::BTreeSet<_>>().len();
    let limit = |spread: bool| if spread { gpus_used + nodes.saturating_sub(1) } else { gpus_used };
    let plain = spread
        .then(|| place(spec, phys, instances, true, false))
        .flatten()
        .filter(|t| used(t) <= limit(true))
        .or_else(|| place(spec, phys, instances, false, false).filter(|t| used(t) <= limit(false)));
    let first = place(spec, phys, instances, spread, true);
    let assigned = assign_gpus(model, layout, phys).map(|a| {
        let mut t = vec![Vec::new(); phys.len()];
        for x in a {
            t[x.physical] = x.instances;
        }
        t
    });
    // With spread: tasks with two or more instances that all sit on one node.
    let unspread = |t: &Vec<Vec<InstancePlan>>| -> usize {
        if !spread {
            return 0;
        }
        let mut on: BTreeMap<(&str, &str), (usize, std::collections::BTreeSet<&str>)> = BTreeMap::new();
        for (g, insts) in phys.iter().zip(t) {
            for i in insts {
                let e = on.entry((i.app.as_str(), i.task.as_str())).or_default();
                e.0 += 1;
                e.1.insert(g.node.as_str());
            }
        }
        on.values().filter(|(n, nodes)| *n >= 2 && nodes.len() < 2).count()
    };
    let placed = |targets: Vec<Vec<InstancePlan>>| {
        let late = late_instances(spec, phys, &targets);
        let extra_gpus = used(&targets).saturating_sub(limit(spread));
        (unspread(&targets), Placed { targets, late, extra_gpus })
    };
    // Fewest late instances, then (with spread) fewest tasks on one node, then fewest GPUs
    // beyond the layout: the greedy candidates in order (the earlier wins a tie); the
    // mapping, last, only when strictly better, and it alone says why nothing fits. (Without
    // the GPU count, a first fit that needed more GPUs than the layout beat the layout
    // itself when nothing ran yet: 112 GPUs for a 108-GPU layout.)
    let key = |(u, p): &(usize, Placed)| (p.late, *u, p.extra_gpus);
    let best = [plain, first].into_iter().flatten().map(placed).reduce(|a, b| if key(&b) < key(&a) { b } else { a });
    match (best, assigned.map(placed)) {
        (Some(b), Ok(a)) if key(&a) < key(&b) => Ok(a.1),
        (Some(b), _) => Ok(b.1),
        (None, mapped) => mapped.map(|a| a.1),
    }
}

/// Target instances of `targets` (per physical GPU of `phys`) that cannot serve right after
/// the make step of a transition: those that overlap a live instance in another slot (they
/// are created only once it is destroyed) and those that take over a live instance's slot
/// with other workers (app, task, variant or MPS level: the workers restart). A target in
/// a live slot with the same workers, at most another batch size, serves throughout.
pub fn late_instances(spec: &GpuSpec, phys: &[PhysicalGpu], targets: &[Vec<InstancePlan>]) -> usize {
    let at = |i: &InstancePlan| spec.profile_index(&i.mig_profile).map(|p| Placement { profile: p, start: i.start });
    let same_workers = |a: &InstancePlan, b: &InstancePlan| {
        a.app == b.app && a.task == b.task && a.variant == b.variant && a.mps == b.mps
    };
    phys.iter()
        .zip(targets)
        .map(|(g, t)| {
            let live: Vec<Placement> = g.live.iter().filter_map(at).collect();
            t.iter()
                .filter(|i| {
                    let Some(p) = at(i) else { return false };
                    match g.live.iter().find(|l| at(l) == Some(p)) {
                        Some(l) => !same_workers(l, i),
                        None => matches!(spec.check_placement(&live, p), Err(PlacementError::Overlap { .. })),
                    }
                })
                .count()
        })
        .sum()
}

/// Place `instances` on the physical GPUs `phys` (all of `spec`'s model):
/// * an instance that matches a live one (same app, task, variant, profile and MPS level;
///   the same batch size preferred, a batch change restarts nothing) stays in its slot;
///   without `make_first`, then also one at another MPS level (its workers restart);
/// * the rest, largest first, go to the first legal slot of a GPU in use, then of an empty
///   GPU, preferring (with `spread`) nodes that do not host the task yet. With
///   `make_first` a slot that no live instance occupies comes first, on any GPU (such an
///   instance is created and serves before anything is torn down); failing that, a live
///   instance of the same work at another MPS level restarts its workers in place (no MIG
///   change); failing that, a slot that frees up only once the instance there is destroyed.
///
/// Returns the target per physical GPU, or `None` when some instance finds no slot.
pub fn place(
    spec: &GpuSpec,
    phys: &[PhysicalGpu],
    instances: &[InstancePlan],
    spread: bool,
    make_first: bool,
) -> Option<Vec<Vec<InstancePlan>>> {
    let mut todo: Vec<Option<InstancePlan>> = instances.iter().cloned().map(Some).collect();
    let mut targets: Vec<Vec<InstancePlan>> = vec![Vec::new(); phys.len()];
    let mut taken: Vec<Vec<Placement>> = vec![Vec::new(); phys.len()];
    let same_work = |t: &InstancePlan, l: &InstancePlan| {
        t.app == l.app && t.task == l.task && t.variant == l.variant && t.mig_profile == l.mig_profile
    };
    // Keep: the same batch first, then another batch; without `make_first`, then also
    // another MPS level (its workers restart).
    let passes: &[(bool, bool)] =
        if make_first { &[(true, true), (true, false)] } else { &[(true, true), (false, false)] };
    for &(same_mps, same_batch) in passes {
        for (j, g) in phys.iter().enumerate() {
            for l in &g.live {
                let Some(p) = spec.profile_index(&l.mig_profile) else { continue };
                let at = Placement { profile: p, start: l.start };
                if spec.check_placement(&taken[j], at).is_err() {
                    continue;
                }
                let hit = todo.iter_mut().find(|t| {
                    t.as_ref().is_some_and(|t| {
                        same_work(t, l) && (!same_mps || t.mps == l.mps) && (!same_batch || t.batch == l.batch)
                    })
                });
                if let Some(slot) = hit {
                    let mut inst = slot.take().expect("matched");
                    inst.start = l.start;
                    taken[j].push(at);
                    targets[j].push(inst);
                }
            }
        }
    }
    let live_at = |j: usize| -> Vec<Placement> {
        phys[j]
            .live
            .iter()
            .filter_map(|l| spec.profile_index(&l.mig_profile).map(|p| Placement { profile: p, start: l.start }))
            .collect()
    };
    let mut rest: Vec<InstancePlan> = todo.into_iter().flatten().collect();
    let width = |i: &InstancePlan| spec.profile_index(&i.mig_profile).map_or(0, |p| spec.profiles[p].mem_slices);
    rest.sort_by(|a, b| width(b).cmp(&width(a)).then_with(|| (&a.app, &a.task).cmp(&(&b.app, &b.task))));
    for inst in rest {
        let p = spec.profile_index(&inst.mig_profile)?;
        let hosts = |node: &str| {
            phys.iter()
                .zip(&targets)
                .any(|(g, t)| g.node == node && t.iter().any(|i| i.app == inst.app && i.task == inst.task))
        };
        let mut order: Vec<usize> = (0..phys.len()).collect();
        order.sort_by_key(|&j| (spread && hosts(&phys[j].node), targets[j].is_empty(), j));
        let first_fit = |j: usize, occupied: &[Placement]| {
            spec.profiles[p]
                .starts
                .iter()
                .map(|&s| Placement { profile: p, start: s })
                .find(|&at| spec.check_placement(occupied, at).is_ok())
                .map(|at| (j, at))
        };
        let free_of_live = || {
            order.iter().find_map(|&j| {
                // Legal next to the target so far and clear of every live instance (a live
                // one kept in place is in both).
                let mut occupied = taken[j].clone();
                occupied.extend(live_at(j).into_iter().filter(|l| !taken[j].contains(l)));
                first_fit(j, &occupied)
            })
        };
        let restart_in_place = || {
            order.iter().find_map(|&j| {
                phys[j]
                    .live
                    .iter()
                    .filter(|l| same_work(&inst, l))
                    .map(|l| Placement { profile: p, start: l.start })
                    .find(|&at| spec.check_placement(&taken[j], at).is_ok())
                    .map(|at| (j, at))
            })
        };
        let found = if make_first { free_of_live().or_else(restart_in_place) } else { None }
            .or_else(|| order.iter().find_map(|&j| first_fit(j, &taken[j])));
        let (j, at) = found?;
        let mut inst = inst;
        inst.start = at.start;
        taken[j].push(at);
        targets[j].push(inst);
    }
    for t in &mut targets {
        t.sort_by_key(|i| i.start);
    }
    Some(targets)
}

/// The sequential planner this crate used before the joint one: apps one after another in
/// name order, each min-cost on the whole GPUs the earlier ones left (apps never share a
/// GPU). Kept as the baseline of `jigsaw bench cluster` and of the joint planner's tests.
pub fn plan_cluster_sequential(
    state: &ClusterState,
    epoch: u64,
    live: &LiveLayouts,
    observed: &[ProfileRow],
    cfg: &PlannerConfig,
    solver: &dyn Solver,
    clock: &dyn Clock,
) -> ClusterPlan {
    let t0 = clock.now_s();
    let mut free = physical_gpus(state, live);
    let mut nodes: BTreeMap<String, BTreeMap<String, Vec<InstancePlan>>> = BTreeMap::new();
    for g in &free {
        nodes.entry(g.node.clone()).or_default().insert(g.uuid.clone(), Vec::new());
    }
    let space: SearchSpace = state.config.space.parse().unwrap_or(SearchSpace::FULL);
    let mut apps = Vec::new();
    for entry in state.apps.values() {
        let unplaced = |note: String| AppPlacement::unplaced(&entry.name, entry.demand_rps, note);
        let (app, mut profiles) = match entry.parse() {
            Ok(p) => (p.spec, p.profiles),
            Err(e) => {
                apps.push(unplaced(format!("invalid registration: {e}")));
                continue;
            }
        };
        merge_observed(&mut profiles, observed);
        let Some((model, n)) = model_for(&profiles, &free) else {
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
            gpus: used.len(),
            planned_rps: p.demand_rps,
            accuracy: p.accuracy,
            note,
            priority: app.priority,
            compute_slices: p.compute_slices,
            instances: used.iter().map(|g| g.instances.len() as u32).sum(),
            ..AppPlacement::unplaced(&entry.name, entry.demand_rps, String::new())
        });
    }
    let mut plan = ClusterPlan { epoch, inputs: state.plan_inputs(), nodes, apps, stats: Default::default() };
    finish(&mut plan, live);
    plan.stats.solve_ms = (clock.now_s() - t0) * 1e3;
    plan
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

    fn inst(app: &str, task: &str, profile: &str, start: u8) -> InstancePlan {
        InstancePlan { app: app.into(), ..jigsaw_protocol::testing::instance(task, profile, start) }
    }

    fn phys(node: &str, n: usize, live: Vec<InstancePlan>) -> PhysicalGpu {
        PhysicalGpu { node: node.into(), uuid: format!("GPU-{node}-{n}"), model: GpuModel::H100_80gb, live }
    }

    fn layout(t: &[InstancePlan]) -> Vec<(String, u8, String)> {
        t.iter().map(|i| (i.mig_profile.clone(), i.start, i.app.clone())).collect()
    }

    #[test]
    fn placement_keeps_live_instances_and_fills_gpus_in_use_first() {
        let spec = GpuModel::H100_80gb.spec();
        // n0/0 runs a's 3g at slot 4; n0/1 and n1/0 are empty.
        let physical =
            vec![phys("n0", 0, vec![inst("a", "t", "3g.40gb", 4)]), phys("n0", 1, vec![]), phys("n1", 0, vec![])];
        let want = vec![inst("b", "u", "4g.40gb", 0), inst("a", "t", "3g.40gb", 0), inst("b", "u", "1g.10gb", 0)];
        let t = place(spec, &physical, &want, false, false).expect("fits");
        assert_eq!(layout(&t[0]), vec![("4g.40gb".into(), 0, "b".into()), ("3g.40gb".into(), 4, "a".into())]);
        assert_eq!(layout(&t[1]), vec![("1g.10gb".into(), 0, "b".into())], "the next GPU, not a third");
        assert!(t[2].is_empty());
        // With spread, b's second instance avoids node n0, which already hosts b/u.
        let t = place(spec, &physical, &want, true, false).expect("fits");
        assert_eq!(layout(&t[2]), vec![("1g.10gb".into(), 0, "b".into())], "{t:?}");
        // Too much for the GPUs: no placement.
        let seven: Vec<InstancePlan> = (0..4).map(|_| inst("c", "v", "7g.80gb", 0)).collect();
        assert!(place(spec, &physical, &seven, false, false).is_none());
    }

    /// New work goes where nothing runs yet, so it serves before the old work is torn down.
    #[test]
    fn placement_makes_before_it_breaks_where_the_gpus_allow() {
        let spec = GpuModel::H100_80gb.spec();
        let old = inst("a", "t", "3g.40gb", 0);
        let physical = vec![phys("n0", 0, vec![old.clone()]), phys("n0", 1, vec![])];
        let starts =
            |p: &Placed| -> Vec<Vec<u8>> { p.targets.iter().map(|g| g.iter().map(|i| i.start).collect()).collect() };
        let layout = |want: &[InstancePlan]| vec![GpuPlan { gpu: 0, instances: want.to_vec() }];
        let one = |want: &[InstancePlan]| {
            place_cluster(spec, GpuModel::H100_80gb, &physical, want, false, &layout(want), 1).expect("fits")
        };
        // Another variant on the same profile: slot 4 of the same GPU, not the old slot 0.
        let other = InstancePlan { variant: "w".into(), ..old.clone() };
        let p = one(std::slice::from_ref(&other));
        assert_eq!((starts(&p), p.late, p.extra_gpus), (vec![vec![4], vec![]], 0, 0));
        // The same work at another MPS level: a fresh slot too while one is free.
        let remps = InstancePlan { mps: 2, ..old.clone() };
        assert_eq!(starts(&one(std::slice::from_ref(&remps))), vec![vec![4], vec![]]);
        // A batch change alone stays where it runs (its workers take it without a restart).
        let rebatch = InstancePlan { batch: 32, ..old.clone() };
        assert_eq!(starts(&one(std::slice::from_ref(&rebatch))), vec![vec![0], vec![]]);
        // No free slot on the GPU in use (b keeps slot 4): the MPS change goes to the idle
        // GPU (an extra GPU, reported) rather than restart in place, where it would not serve
        // until its workers are back.
        let b = inst("b", "u", "3g.40gb", 4);
        let physical = vec![phys("n0", 0, vec![old.clone(), b.clone()]), phys("n0", 1, vec![])];
        let two = |want: &[InstancePlan]| {
            place_cluster(spec, GpuModel::H100_80gb, &physical, want, false, &layout(want), 1).expect("fits")
        };
        let p = two(&[remps.clone(), b.clone()]);
        assert_eq!((starts(&p), p.late, p.extra_gpus), (vec![vec![4], vec![0]], 0, 1));
        assert_eq!(p.targets[1][0].mps, 2);
        // With no idle GPU it restarts in place (one late), not destroyed and re-created.
        let single = vec![physical[0].clone()];
        let want = [remps.clone(), b.clone()];
        let p = place_cluster(spec, GpuModel::H100_80gb, &single, &want, false, &layout(&want), 1).expect("fits");
        assert_eq!((starts(&p), p.late, p.extra_gpus, p.targets[0][0].mps), (vec![vec![0, 4]], 1, 0, 2));
        // A 4g where a 3g and the kept 3g run: in place it could only be created after the
        // 3g at 0 is gone, so it opens the idle GPU.
        let big = inst("a", "t", "4g.40gb", 0);
        let p = two(&[big.clone(), b.clone()]);
        assert_eq!((starts(&p), p.late, p.extra_gpus), (vec![vec![4], vec![0]], 0, 1));
        let plain = place(spec, &physical, &[big, b], false, false).expect("fits");
        assert_eq!(late_instances(spec, &physical, &plain), 1, "first fit: {plain:?}");
        // A fresh cluster (nothing live): nothing is late, the compact plan wins.
        let fresh = vec![phys("n0", 0, vec![]), phys("n0", 1, vec![])];
        let want = vec![inst("a", "t", "3g.40gb", 0), inst("b", "u", "3g.40gb", 0)];
        let p = place_cluster(spec, GpuModel::H100_80gb, &fresh, &want, false, &layout(&want), 1).expect("fits");
        assert_eq!((starts(&p), p.late, p.extra_gpus), (vec![vec![0, 4], vec![]], 0, 0));
    }

    /// Nothing runs yet and first fit (largest first) needs a GPU more than the MILP's
    /// layout: the layout itself is placed.
    #[test]
    fn a_fresh_cluster_gets_the_layout_when_first_fit_needs_more_gpus() {
        let model = GpuModel::A100_80gb;
        let spec = model.spec();
        let on = |ps: &[(&str, u8)]| -> Vec<InstancePlan> {
            ps.iter().enumerate().map(|(k, &(p, s))| inst(if k % 2 == 0 { "a" } else { "b" }, "t", p, s)).collect()
        };
        let layout = vec![
            GpuPlan {
                gpu: 0,
                instances: on(&[("1g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3), ("1g.20gb", 4), ("1g.20gb", 6)]),
            },
            GpuPlan { gpu: 1, instances: on(&[("3g.40gb", 0), ("2g.20gb", 4), ("1g.20gb", 6)]) },
        ];
        let want: Vec<InstancePlan> = layout.iter().flat_map(|g| g.instances.clone()).collect();
        let fresh: Vec<PhysicalGpu> =
            (0..4).map(|n| PhysicalGpu { node: "n0".into(), uuid: format!("g{n}"), model, live: vec![] }).collect();
        let used = |t: &[Vec<InstancePlan>]| t.iter().filter(|g| !g.is_empty()).count();
        let first_fit = place(spec, &fresh, &want, false, false).expect("fits");
        assert_eq!(used(&first_fit), 3, "the case needs first fit to be worse: {first_fit:?}");
        let p = place_cluster(spec, model, &fresh, &want, false, &layout, 2).expect("fits");
        assert_eq!((used(&p.targets), p.late, p.extra_gpus), (2, 0, 0), "{:?}", p.targets);
        for g in &p.targets {
            let pl: Vec<Placement> = g
                .iter()
                .map(|i| Placement { profile: spec.profile_index(&i.mig_profile).expect("known"), start: i.start })
                .collect();
            assert!(spec.check_layout(&pl).is_ok(), "{g:?}");
        }
    }

    #[test]
    fn changes_count_kept_moved_created_destroyed() {
        let mut live = LiveLayouts::new();
        live.insert(("n0".into(), "g0".into()), vec![inst("a", "t", "1g.10gb", 0), inst("a", "t", "1g.10gb", 1)]);
        live.insert(("n1".into(), "g1".into()), vec![inst("b", "u", "3g.40gb", 0)]);
        let mut target: BTreeMap<String, BTreeMap<String, Vec<InstancePlan>>> = BTreeMap::new();
        // a/t: one kept at slot 0, the slot-1 one moves to n1; b/u destroyed; c/w created.
        target.entry("n0".into()).or_default().insert("g0".into(), vec![inst("a", "t", "1g.10gb", 0)]);
        target
            .entry("n1".into())
            .or_default()
            .insert("g1".into(), vec![inst("a", "t", "1g.10gb", 4), inst("c", "w", "2g.20gb", 0)]);
        let c = changes(&live, &target);
        assert_eq!(c, PlanChanges { kept: 1, moved: 1, created: 1, destroyed: 1 });
    }
}
