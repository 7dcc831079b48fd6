//! Property tests of the joint cluster planner on random sets of small apps.
//!
//! * Every GPU's target layout is legal as a whole (the catalogue's placement check).
//! * Every app's plan (its own instances, rebuilt from the physical targets) passes the
//!   independent evaluator: latency, demand and accuracy SLOs.
//! * The joint plan never uses more GPUs than the sequential planner (apps one by one on
//!   whole GPUs), and serves every app the sequential plan serves in full.
//! * Re-planning the same state over the joint plan's own layout keeps every instance
//!   (recorded failures are replayed by a plain test).
//!
//! Each case comes from a `u64` seed that proptest prints on failure.

use jigsaw_coordinator::cluster_plan::{plan_cluster, plan_cluster_sequential, LiveLayouts};
use jigsaw_coordinator::evaluate::evaluate;
use jigsaw_coordinator::planner::{plan, Clock, Goal, PlannerConfig, Problem, Spread};
use jigsaw_coordinator::{HighsSolver, SearchSpace};
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::catalogue::{GpuModel, Placement};
use jigsaw_protocol::cluster::{AppEntry, ClusterCommand, ClusterPlan, ClusterState, GpuInventory, Member};
use jigsaw_protocol::plan::{GpuPlan, Plan};
use jigsaw_protocol::profile::ProfileTable;
use proptest::prelude::*;

mod common;
use common::instance;

struct NoClock;
impl Clock for NoClock {
    fn now_s(&self) -> f64 {
        0.0
    }
}

fn cfg(spread: Spread) -> PlannerConfig {
    PlannerConfig { time_limit_s: 60.0, max_levels: 6, spread, ..PlannerConfig::default() }
}

/// A cluster of `nodes` × `gpus` H100s with the apps of `seeds` registered at `frac` of
/// their one-GPU maximum demand.
fn cluster(seeds: &[u64], frac: f64, nodes: usize, gpus: usize) -> (ClusterState, Vec<(AppSpec, ProfileTable)>) {
    let mut st = ClusterState::default();
    for n in 0..nodes {
        st.apply(&ClusterCommand::PutMember(Member {
            node: format!("n{n}"),
            addr: format!("10.0.0.{n}:7400"),
            eligible: true,
            gpus: (0..gpus)
                .map(|g| GpuInventory { uuid: format!("GPU-{n}-{g}"), model: GpuModel::H100_80gb, live: vec![] })
                .collect(),
            alive: true,
        }));
    }
    let mut apps = Vec::new();
    for &seed in seeds {
        let (mut app, profiles) = instance(seed, false, false);
        app.name = format!("app{seed}");
        let pb =
            Problem { app: &app, profiles: &profiles, gpu: GpuModel::H100_80gb, gpus: 1, space: SearchSpace::FULL };
        let Ok(max) = plan(pb, Goal::MaxDemand, &cfg(Spread::None), &HighsSolver::default(), &NoClock) else {
            continue;
        };
        let demand = (max.demand_rps * frac * 100.0).round() / 100.0;
        if demand <= 0.0 {
            continue;
        }
        let spec_toml = toml_of(&app);
        let entry = AppEntry {
            name: app.name.clone(),
            spec_toml,
            profiles_csv: profiles.to_csv(&[]),
            demand_rps: demand,
            demand_auto: false,
        };
        entry.parse().expect("generated registrations are valid");
        st.apply(&ClusterCommand::PutApp(entry));
        apps.push((app, profiles));
    }
    (st, apps)
}

/// The spec as registration text (the spec parser takes JSON as well as TOML).
fn toml_of(app: &AppSpec) -> String {
    serde_json::to_string(app).expect("specs serialise")
}

/// The plan of `app` made of its instances in the cluster plan's targets (one GPU per
/// physical GPU that hosts any).
fn app_plan(cp: &ClusterPlan, app: &str, template: &Plan) -> Plan {
    let mut gpus = Vec::new();
    for gs in cp.nodes.values() {
        for insts in gs.values() {
            let own: Vec<_> = insts.iter().filter(|i| i.app == app).cloned().collect();
            if !own.is_empty() {
                gpus.push(GpuPlan { gpu: gpus.len(), instances: own });
            }
        }
    }
    Plan { gpus_used: gpus.len(), gpus_available: cp.nodes.values().map(|g| g.len()).sum(), gpus, ..template.clone() }
}

/// The targets with the routed loads left out.
fn layout_of(cp: &ClusterPlan) -> LiveLayouts {
    let mut l = live_of(cp);
    l.values_mut().flatten().for_each(|i| i.load_rps = 0.0);
    l
}

fn live_of(cp: &ClusterPlan) -> LiveLayouts {
    cp.nodes.iter().flat_map(|(n, gs)| gs.iter().map(move |(u, i)| ((n.clone(), u.clone()), i.clone()))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn joint_plans_are_legal_meet_slos_and_beat_sequential(seed in any::<u64>(), n_apps in 2usize..5, frac in 0.05f64..0.6) {
        joint_case(seed, n_apps, frac)?;
    }
}

/// Cases proptest found failing once, replayed on every run: a re-plan dropped a kept
/// instance while the solver's gap tolerance was as large as one keep bonus (the first two);
/// the layout mapped onto the GPUs carried the solver's routed loads at the root column `R`
/// above the planned demand (the third).
#[test]
fn recorded_joint_cases_still_hold() {
    for (seed, n_apps, frac) in [
        (11_499_786_630_985_213_606, 4, 0.534_929_203_476_227_6),
        (5_092_523_125_497_928_073, 4, 0.294_620_069_418_024),
        (10_174_061_198_995_736_439, 2, 0.326_050_872_385_760_5),
    ] {
        if let Err(e) = joint_case(seed, n_apps, frac) {
            panic!("seed {seed}, {n_apps} apps, frac {frac}: {e}");
        }
    }
}

fn joint_case(seed: u64, n_apps: usize, frac: f64) -> Result<(), TestCaseError> {
    {
        let seeds: Vec<u64> = (0..n_apps as u64).map(|i| seed.wrapping_add(i.wrapping_mul(0x9E37_79B9))).collect();
        let (st, apps) = cluster(&seeds, frac, 2, 3);
        prop_assume!(apps.len() >= 2);
        let solver = HighsSolver::default();
        let c = cfg(Spread::None);
        let live = LiveLayouts::new();
        let joint = plan_cluster(&st, 1, &live, &[], &c, &solver, &NoClock);
        let seq = plan_cluster_sequential(&st, 1, &live, &[], &c, &solver, &NoClock);
        let spec = GpuModel::H100_80gb.spec();
        for (node, gs) in &joint.nodes {
            for (uuid, insts) in gs {
                let placements: Vec<Placement> = insts
                    .iter()
                    .map(|i| Placement {
                        profile: spec.profile_index(&i.mig_profile).expect("known profile"),
                        start: i.start,
                    })
                    .collect();
                prop_assert!(
                    spec.check_layout(&placements).is_ok(),
                    "seed {seed}: illegal layout on {node}/{uuid}: {insts:?}"
                );
            }
        }
        for (app, profiles) in &apps {
            let placed = joint.apps.iter().find(|a| a.app == app.name).expect("every app is reported");
            let seq_placed = seq.apps.iter().find(|a| a.app == app.name).expect("every app is reported");
            if seq_placed.planned_rps >= seq_placed.requested_rps * (1.0 - 1e-9) {
                prop_assert!(
                    placed.planned_rps >= placed.requested_rps * (1.0 - 1e-6),
                    "seed {seed}: sequential serves {} in full, joint plans {} of {} ({:?})",
                    app.name,
                    placed.planned_rps,
                    placed.requested_rps,
                    placed.note
                );
            }
            if placed.instances == 0 {
                continue;
            }
            // Rebuild the app's plan from the targets and check it independently.
            let pb = Problem { app, profiles, gpu: GpuModel::H100_80gb, gpus: 6, space: SearchSpace::FULL };
            let template =
                plan(pb, Goal::MinCost { demand: placed.planned_rps }, &c, &solver, &NoClock).expect("plannable alone");
            let mut p = app_plan(&joint, &app.name, &template);
            let rep0 = evaluate(&p, app, profiles);
            // The summary figures are recomputed from the rebuilt instances.
            p.accuracy = rep0.accuracy;
            p.slices_used = p.gpus.iter().flat_map(|g| &g.instances).map(|i| u32::from(i.slices)).sum();
            p.compute_slices = rep0.slices;
            p.tasks = template.tasks.clone();
            let rep = evaluate(&p, app, profiles);
            prop_assert!(rep.ok(), "seed {seed}: {} violates {:?}", app.name, rep.violations);
            prop_assert!(
                rep.accuracy >= app.accuracy_slo - 1e-6,
                "seed {seed}: {} accuracy {}",
                app.name,
                rep.accuracy
            );
        }
        prop_assert!(
            joint.stats.gpus_used <= seq.stats.gpus_used,
            "seed {seed}: joint uses {} GPUs, sequential {}",
            joint.stats.gpus_used,
            seq.stats.gpus_used
        );
        // Planning again over its own layout changes no instance. The loads routed between
        // variants of a task with variable fan-out may differ: any split that meets the rows
        // is as cheap, and which one the solver returns is its choice (within one variant
        // the split is canonical, in proportion to throughput).
        let again = plan_cluster(&st, 2, &live_of(&joint), &[], &c, &solver, &NoClock);
        prop_assert_eq!(
            layout_of(&again),
            layout_of(&joint),
            "seed {}: a re-plan of the same state moved instances ({:?})",
            seed,
            again.stats.changes
        );
        prop_assert_eq!(
            again.stats.changes.kept as usize,
            joint.nodes.values().flat_map(|g| g.values()).map(|i| i.len()).sum::<usize>()
        );
    }
    Ok(())
}

/// Spread: with two nodes every task of every app has capacity on both, and the reported
/// worst-case single-node loss is what the other node's instances serve.
#[test]
fn spread_puts_every_task_on_two_nodes() {
    // Small apps that fit on one GPU, on 4 nodes x 4 GPUs: spread must still open a GPU on a
    // second node rather than keep both instances of a task on one.
    let (st, apps) = cluster(&[11, 12, 13], 0.1, 4, 4);
    assert!(apps.len() >= 2, "enough generated apps");
    let cp = plan_cluster(&st, 1, &LiveLayouts::new(), &[], &cfg(Spread::Auto), &HighsSolver::default(), &NoClock);
    for (app, _) in &apps {
        let placed = cp.apps.iter().find(|a| a.app == app.name).expect("reported");
        assert!(placed.planned_rps >= placed.requested_rps * (1.0 - 1e-6), "{placed:?}");
        for t in &app.tasks {
            let nodes: Vec<&String> = cp
                .nodes
                .iter()
                .filter(|(_, gs)| gs.values().flatten().any(|i| i.app == app.name && i.task == t.name))
                .map(|(n, _)| n)
                .collect();
            assert!(nodes.len() >= 2, "{}/{} on {nodes:?}: {:#?}", app.name, t.name, cp.stats);
        }
        let (node, left) = placed.worst_node_loss.clone().expect("worst case reported");
        assert!(left > 0.0 && left <= placed.planned_rps + 1e-9, "{}: after losing {node}: {left}", app.name);
    }
}

/// Not vacuous: small apps that the sequential planner gives a GPU each fit on fewer GPUs
/// jointly, with GPUs shared between apps.
#[test]
fn small_apps_share_gpus_and_use_fewer_than_sequential() {
    let (st, apps) = cluster(&[1, 2, 3, 4], 0.05, 2, 3);
    assert!(apps.len() >= 3, "enough generated apps: {}", apps.len());
    let c = cfg(Spread::None);
    let live = LiveLayouts::new();
    let solver = HighsSolver::default();
    let joint = plan_cluster(&st, 1, &live, &[], &c, &solver, &NoClock);
    let seq = plan_cluster_sequential(&st, 1, &live, &[], &c, &solver, &NoClock);
    assert!(seq.stats.gpus_used as usize >= apps.len(), "sequential: a GPU per app at least: {:?}", seq.stats);
    assert!(joint.stats.gpus_used < seq.stats.gpus_used, "joint {:?} vs sequential {:?}", joint.stats, seq.stats);
    let shared = joint
        .nodes
        .values()
        .flat_map(|g| g.values())
        .any(|insts| insts.iter().map(|i| &i.app).collect::<std::collections::BTreeSet<_>>().len() > 1);
    assert!(shared, "no GPU hosts two apps: {:#?}", joint.nodes);
    assert!(
        joint.stats.lower_bound_gpus <= joint.stats.gpus_used && joint.stats.lp_bound_gpus <= joint.stats.gpus_used
    );
}

/// When not every app fits, the lower priority is shed first and the plan says by how much.
#[test]
fn lower_priorities_are_shed_first() {
    // Two apps, each alone able to fill one GPU, on one GPU; demand 80 % of that each.
    let (mut st, apps) = cluster(&[21, 22], 0.8, 1, 1);
    assert_eq!(apps.len(), 2);
    for (k, (app, _)) in apps.iter().enumerate() {
        let mut entry = st.apps[&app.name].clone();
        let mut spec = app.clone();
        spec.priority = if k == 0 { 1 } else { 5 };
        entry.spec_toml = toml_of(&spec);
        st.apply(&ClusterCommand::PutApp(entry));
    }
    let cp = plan_cluster(&st, 1, &LiveLayouts::new(), &[], &cfg(Spread::None), &HighsSolver::default(), &NoClock);
    let high = cp.apps.iter().find(|a| a.app == apps[1].0.name).expect("high");
    let low = cp.apps.iter().find(|a| a.app == apps[0].0.name).expect("low");
    assert_eq!((high.priority, low.priority), (5, 1));
    assert!(high.planned_rps >= high.requested_rps * (1.0 - 1e-6), "high priority served in full: {high:?}");
    assert!(low.shed_rps() > 0.0, "low priority shed: {low:?}");
    assert!(low.note.as_deref().unwrap_or("").contains("shed"), "{low:?}");
    assert!(cp.stats.notes.iter().any(|n| n.contains("shed by priority")), "{:?}", cp.stats.notes);
}

/// The demo's cluster (the three example apps at 200/400/100 req/s on 4 nodes x 4 H100s):
/// everything fits on few GPUs of one node, and spread must still put every task on two
/// nodes (it once left both instances of each task on node-1: worst case 0 req/s).
#[test]
fn spread_on_the_demo_cluster_survives_any_one_node() {
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let (mut st, _) = cluster(&[], 1.0, 4, 4);
    for (name, rps) in [("social", 200.0), ("traffic", 400.0), ("ar", 100.0)] {
        let read = |p: String| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        let entry = AppEntry {
            name: name.into(),
            spec_toml: read(format!("{ex}/apps/{name}.toml")),
            profiles_csv: read(format!("{ex}/profiles/{name}-h100-80gb.csv")),
            demand_rps: rps,
            demand_auto: false,
        };
        st.apply(&ClusterCommand::PutApp(entry));
    }
    let cp = plan_cluster(&st, 1, &LiveLayouts::new(), &[], &cfg(Spread::Auto), &HighsSolver::default(), &NoClock);
    for a in &cp.apps {
        assert!(a.planned_rps >= a.requested_rps * (1.0 - 1e-6), "{a:?}");
        let (node, left) = a.worst_node_loss.clone().expect("reported");
        assert!(left > 0.0, "{}: losing {node} leaves nothing: {:#?}", a.app, cp.nodes);
    }
}
