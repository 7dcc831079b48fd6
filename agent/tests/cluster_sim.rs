//! Seeded simulation of a jigsaw cluster: real node runtimes (actor tree, openraft with the
//! redb store, control loop) over the in-memory transport, on tokio's paused clock, with
//! crashes, restarts, link cuts and delays drawn from the seed. After every step it checks:
//! * at most one coordinator per Raft term (over the whole run);
//! * no node's applied plan epoch ever decreases (across its restarts too);
//! * no MIG memory slice is held by two instances on any GPU;
//!
//! and after the faults heal, that every node converges to the latest plan.
//!
//! A failure panics with the seed; rerun it alone with `JIGSAW_SIM_SEED=<seed>`.
//! `JIGSAW_SIM_SEEDS=<n>` sets how many seeds run (default 200).
//!
//! The plans here come from a cheap deterministic planner that moves every GPU between
//! different MIG layouts at each epoch (to stress reconfiguration); one seed also runs with
//! the real HiGHS planner and the example app (`real_planner_cluster`).

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests are shells, not pure cores

use jigsaw_agent::actors::Backend;
use jigsaw_agent::core::netsim::LinkConfig;
use jigsaw_agent::gpu::sim::SimGpu;
use jigsaw_agent::node::{highs_planner, NodeHandle, NodeSpec, PlanFn, Timing};
use jigsaw_agent::transport::net::{SimHub, SimTransport, Transport};
use jigsaw_coordinator::PlannerConfig;
use jigsaw_protocol::cluster::{AppEntry, ClusterPlan};
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::rng::SplitMix64;
use jigsaw_protocol::wire::{ApplyOutcome, ClientReply, ClientRequest, PushPhase, Role, WireMessage};
use jigsaw_protocol::GpuModel;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Rng(SplitMix64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.0.unit() <= p
    }
}

/// The scenario, as data.
#[derive(Debug, Clone)]
struct Scenario {
    nodes: usize,
    eligible: usize,
    gpus_per_node: usize,
    fault_secs: u64,
    heal_secs: u64,
    step_ms: u64,
    crash_p: f64,
    cut_p: f64,
    app_p: f64,
    link: LinkConfig,
    /// Report a measured profile point on the last node and check it reaches the coordinator.
    observe: bool,
}

const DEFAULT: Scenario = Scenario {
    nodes: 5,
    eligible: 3,
    gpus_per_node: 2,
    fault_secs: 20,
    heal_secs: 30,
    step_ms: 100,
    crash_p: 0.01,
    cut_p: 0.02,
    app_p: 0.01,
    link: LinkConfig { min_delay_us: 200, max_delay_us: 5_000, drop: 0.01 },
    observe: false,
};

fn inst(profile: &str, start: u8, slices: u8, task: &str, mps: u8) -> InstancePlan {
    InstancePlan { slices, mps, ..jigsaw_protocol::testing::instance(task, profile, start) }
}

/// Deterministic toy planner: each alive GPU gets one of several layouts chosen by epoch.
fn toy_planner() -> PlanFn {
    Arc::new(|state, epoch, _live, _observed| {
        let layouts: [Vec<InstancePlan>; 4] = [
            vec![inst("7g.80gb", 0, 7, "a", 1)],
            vec![inst("4g.40gb", 0, 4, "a", 2), inst("3g.40gb", 4, 3, "b", 1)],
            vec![inst("3g.40gb", 0, 3, "b", 2), inst("2g.20gb", 4, 2, "a", 1), inst("1g.10gb", 6, 1, "c", 1)],
            vec![],
        ];
        let mut nodes: BTreeMap<String, BTreeMap<String, Vec<InstancePlan>>> = BTreeMap::new();
        let mut k = epoch as usize + state.apps.len();
        for m in state.alive_members() {
            for g in &m.gpus {
                nodes.entry(m.node.clone()).or_default().insert(g.uuid.clone(), layouts[k % 4].clone());
                k += 1;
            }
        }
        ClusterPlan { epoch, inputs: state.plan_inputs(), nodes, apps: vec![], stats: Default::default() }
    })
}

/// A measured point for a configuration the social app registered (slower than registered).
fn observed_row() -> jigsaw_protocol::ProfileRow {
    let csv = include_str!("../../examples/profiles/social-h100-80gb.csv");
    let t = jigsaw_protocol::ProfileTable::parse_csv(csv, "social").expect("profiles");
    let mut r = t.rows().next().expect("a row").clone();
    r.p95_ms *= 1.5;
    r
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn gpus(i: usize, per: usize, seed: u64) -> Vec<Backend> {
    (0..per)
        .map(|g| {
            let s = seed.wrapping_mul(1000).wrapping_add((i * 16 + g) as u64);
            Box::new(SimGpu::new(GpuModel::H100_80gb, s, Duration::from_millis(50))) as Backend
        })
        .collect()
}

struct Sim {
    sc: Scenario,
    seed: u64,
    hub: Arc<SimHub>,
    root: PathBuf,
    planner: PlanFn,
    nodes: BTreeMap<usize, NodeHandle<SimTransport>>,
    leaders: BTreeMap<u64, BTreeSet<String>>,
    applied: BTreeMap<String, u64>,
    control: jigsaw_coordinator::control::ControlConfig,
}

impl Sim {
    fn spec(&self, i: usize) -> NodeSpec {
        let all: Vec<(String, String)> = (0..self.sc.nodes).map(|j| (node_name(j), format!("sim:{j}"))).collect();
        NodeSpec {
            name: node_name(i),
            addr: format!("sim:{i}"),
            eligible: i < self.sc.eligible,
            voters: all[..self.sc.eligible].to_vec(),
            seeds: all.iter().filter(|(n, _)| *n != node_name(i)).take(self.sc.eligible).cloned().collect(),
            data_dir: self.root.join(node_name(i)),
            timing: Timing {
                heartbeat_ms: 200,
                tick_ms: 100,
                election_ms: (500 + 97 * i as u64, 501 + 97 * i as u64),
                push_timeout_ms: 5_000,
            },
            planner: self.planner.clone(),
            gpus: gpus(i, self.sc.gpus_per_node, self.seed),
            simulate_latency: true,
            launcher: None,
            max_in_flight: 4096,
            control: self.control,
        }
    }

    async fn start(&mut self, i: usize) {
        let name = node_name(i);
        let t = SimTransport::new(self.hub.clone(), &name);
        let hub = self.hub.clone();
        let h = NodeHandle::start(self.spec(i), t, |handler| {
            hub.attach(&name, handler);
            None
        })
        .await
        .unwrap_or_else(|e| panic!("seed {}: start {name}: {e}", self.seed));
        self.nodes.insert(i, h);
    }

    async fn crash(&mut self, i: usize) {
        if let Some(h) = self.nodes.remove(&i) {
            self.hub.detach(h.name());
            h.stop().await;
        }
    }

    fn check(&mut self, when: &str) {
        let seed = self.seed;
        for h in self.nodes.values() {
            if let Some((term, true)) = h.raft_view() {
                let set = self.leaders.entry(term).or_default();
                set.insert(h.name().to_string());
                assert!(set.len() <= 1, "seed {seed} ({when}): two coordinators in term {term}: {set:?}");
            }
            let (epoch, inv) = h.applied();
            let prev = self.applied.entry(h.name().to_string()).or_insert(0);
            assert!(epoch >= *prev, "seed {seed} ({when}): {} applied epoch went {prev} -> {epoch}", h.name());
            *prev = epoch;
            for g in &inv {
                let spec = g.model.spec();
                let mut used = [false; 8];
                for i in &g.live {
                    let p = spec.profile_index(&i.mig_profile).expect("known profile");
                    for s in i.start..i.start + spec.profiles[p].mem_slices {
                        assert!(!used[s as usize], "seed {seed} ({when}): slice {s} of {} held twice", g.uuid);
                        used[s as usize] = true;
                    }
                }
            }
        }
    }

    async fn register(&self, demand: f64) -> bool {
        let client = SimTransport::admin(self.hub.clone(), "operator");
        let entry = AppEntry {
            name: "social".into(),
            spec_toml: include_str!("../../examples/apps/social.toml").into(),
            profiles_csv: include_str!("../../examples/profiles/social-h100-80gb.csv").into(),
            demand_rps: demand,
            demand_auto: false,
        };
        // One request id for every attempt: a retry of a registration whose reply was lost is
        // answered with the first outcome.
        let req = ClientRequest::register(entry);
        for i in 0..self.sc.eligible {
            let r = client.request(&node_name(i), "", WireMessage::Client(req.clone()), Duration::from_secs(2)).await;
            if let Ok(WireMessage::ClientReply(ClientReply::Done { .. })) = r {
                return true;
            }
        }
        false
    }

    /// The latest committed plan among live eligible nodes.
    fn latest_plan(&self) -> Option<ClusterPlan> {
        self.nodes.values().filter_map(|h| h.committed().plan).max_by_key(|p| p.epoch)
    }

    fn converged(&self) -> Result<(), String> {
        let plan = self.latest_plan().ok_or("no plan committed")?;
        let leader = self.nodes.values().find(|h| h.is_coordinator()).ok_or("no coordinator")?;
        let state = leader.committed();
        if state.plan_inputs() != plan.inputs {
            return Err(format!("plan epoch {} is not for the current membership", plan.epoch));
        }
        for (i, h) in &self.nodes {
            let _ = i;
            let (epoch, inv) = h.applied();
            if epoch != plan.epoch {
                return Err(format!("{} applied epoch {epoch}, latest is {}", h.name(), plan.epoch));
            }
            let want = plan.nodes.get(h.name()).cloned().unwrap_or_default();
            for g in &inv {
                let mut live: Vec<(String, u8)> = g.live.iter().map(|x| (x.mig_profile.clone(), x.start)).collect();
                let mut target: Vec<(String, u8)> = want
                    .get(&g.uuid)
                    .map(|t| t.iter().map(|x| (x.mig_profile.clone(), x.start)).collect())
                    .unwrap_or_default();
                live.sort();
                target.sort();
                if live != target {
                    return Err(format!("{} GPU {} has {live:?}, plan wants {target:?}", h.name(), g.uuid));
                }
            }
        }
        Ok(())
    }
}

async fn run(seed: u64, sc: Scenario, planner: PlanFn) -> (ClusterPlan, usize) {
    let root = std::path::Path::new(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
        .join(format!("jigsaw-sim-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let hub = SimHub::start(seed, sc.link);
    let mut sim = Sim {
        sc: sc.clone(),
        seed,
        hub,
        root: root.clone(),
        planner,
        nodes: BTreeMap::new(),
        leaders: BTreeMap::new(),
        applied: BTreeMap::new(),
        control: Default::default(),
    };
    for i in 0..sc.nodes {
        sim.start(i).await;
    }
    let mut rng = Rng(SplitMix64::new(seed));
    let mut down: BTreeMap<usize, u64> = BTreeMap::new();
    let mut cuts: Vec<(usize, usize, u64)> = Vec::new();
    let steps = sc.fault_secs * 1000 / sc.step_ms;
    let mut registered = false;
    for step in 0..steps {
        let now = step * sc.step_ms;
        tokio::time::sleep(Duration::from_millis(sc.step_ms)).await;
        sim.check(&format!("t={now}ms"));
        if !registered && now >= 3_000 {
            registered = sim.register(100.0).await; // retried until a coordinator takes it
        }
        if rng.chance(sc.app_p) {
            sim.register(50.0 + rng.below(100) as f64).await;
        }
        // Keep a majority of voters up so progress is possible, but crash anyone else.
        if rng.chance(sc.crash_p) {
            let i = rng.below(sc.nodes as u64) as usize;
            let voters_down = down.keys().filter(|&&j| j < sc.eligible).count();
            if !down.contains_key(&i) && (i >= sc.eligible || voters_down + 1 < sc.eligible.div_ceil(2) + 1) {
                sim.crash(i).await;
                down.insert(i, now + 1_000 + rng.below(4_000));
            }
        }
        if rng.chance(sc.cut_p) {
            let (a, b) = (rng.below(sc.nodes as u64) as usize, rng.below(sc.nodes as u64) as usize);
            if a != b {
                sim.hub.set_cut(&node_name(a), &node_name(b), true);
                cuts.push((a, b, now + 500 + rng.below(3_000)));
            }
        }
        for (i, _) in down.clone().into_iter().filter(|(_, at)| *at <= now) {
            down.remove(&i);
            sim.start(i).await;
        }
        cuts.retain(|&(a, b, at)| {
            if at <= now {
                sim.hub.set_cut(&node_name(a), &node_name(b), false);
                false
            } else {
                true
            }
        });
    }
    // Heal: restart the crashed, heal links, and wait for convergence.
    sim.hub.heal_all();
    for i in std::mem::take(&mut down).into_keys() {
        sim.start(i).await;
    }
    for _ in 0..300 {
        if registered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(sc.step_ms)).await;
        registered = sim.register(100.0).await;
    }
    assert!(registered, "seed {seed}: no coordinator accepted the app within 30 s of healing");
    let heal_steps = sc.heal_secs * 1000 / sc.step_ms;
    let mut last = Err(String::new());
    for step in 0..heal_steps {
        tokio::time::sleep(Duration::from_millis(sc.step_ms)).await;
        sim.check(&format!("heal t={}ms", step * sc.step_ms));
        last = sim.converged();
        if last.is_ok() {
            break;
        }
    }
    if let Err(e) = last {
        panic!("seed {seed}: did not converge within {} s after healing: {e}", sc.heal_secs);
    }
    if sc.observe {
        let last = sc.nodes - 1;
        let row = observed_row();
        sim.nodes[&last].report_observed(vec![row.clone()]);
        let leader = sim.nodes.values().find(|h| h.is_coordinator()).map(|h| h.name().to_string());
        let leader = leader.unwrap_or_else(|| panic!("seed {seed}: no coordinator after convergence"));
        let client = SimTransport::admin(sim.hub.clone(), "operator");
        let mut seen = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(sc.step_ms)).await;
            let r = client.request(&leader, "", WireMessage::Client(ClientRequest::status()), Duration::from_secs(2));
            if let Ok(WireMessage::ClientReply(ClientReply::Status(s))) = r.await {
                if s.observed.contains(&row) {
                    seen = true;
                    break;
                }
            }
        }
        assert!(seen, "seed {seed}: an observed profile point never reached the coordinator");
    }
    let plan = sim.latest_plan().expect("converged on a plan");
    let terms = sim.leaders.len();
    for i in sim.nodes.keys().copied().collect::<Vec<_>>() {
        sim.crash(i).await;
    }
    let _ = std::fs::remove_dir_all(&root);
    (plan, terms)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime")
}

fn run_seed(seed: u64, sc: Scenario, planner: PlanFn) -> (ClusterPlan, usize) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime().block_on(run(seed, sc, planner))));
    match r {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cluster simulation FAILED for seed {seed}; rerun with JIGSAW_SIM_SEED={seed}");
            std::panic::resume_unwind(e)
        }
    }
}

#[test]
fn seeded_cluster_simulation() {
    let seeds: Vec<u64> = match std::env::var("JIGSAW_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("JIGSAW_SIM_SEED is a u64")],
        Err(_) => {
            let n: u64 = std::env::var("JIGSAW_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
            (1..=n).collect()
        }
    };
    let mut epochs = 0;
    let mut elections = 0;
    for &seed in &seeds {
        let (p, t) = run_seed(seed, DEFAULT, toy_planner());
        epochs += p.epoch;
        elections += t;
    }
    eprintln!("{} seeds: {epochs} plan epochs committed, {elections} terms with a coordinator", seeds.len());
    // Non-vacuity: faults really forced re-planning and re-election.
    assert!(epochs >= 3 * seeds.len() as u64, "too few epochs: {epochs}");
    assert!(elections >= seeds.len(), "too few terms: {elections}");
}

#[test]
fn real_planner_cluster() {
    let sc = Scenario { crash_p: 0.005, cut_p: 0.0, app_p: 0.0, fault_secs: 10, observe: true, ..DEFAULT };
    let (plan, _) = run_seed(7, sc, highs_planner(PlannerConfig::default(), Some(1)));
    eprintln!("real planner: epoch {}, apps {:?}", plan.epoch, plan.apps);
    assert_eq!(plan.apps.len(), 1, "{plan:?}");
    assert!(plan.apps[0].gpus >= 1 && plan.apps[0].planned_rps >= 100.0 - 1e-6, "app placed in full: {plan:?}");
    let instances: usize = plan.nodes.values().flat_map(|g| g.values()).map(Vec::len).sum();
    assert!(instances >= 2, "the plan runs segments: {plan:?}");
}

/// Only voters may send Raft RPCs or push plans: a non-voter agent's forged push (even one
/// naming itself as coordinator) and vote request are refused, and nothing changes.
#[test]
fn non_voters_cannot_push_plans_or_vote() {
    runtime().block_on(async {
        let sc = Scenario { nodes: 2, eligible: 1, ..DEFAULT };
        let mut sim = sim_of(sc, "auth", 1, DEFAULT.link);
        let root = sim.root.clone();
        sim.start(0).await;
        let rogue = SimTransport::new(sim.hub.clone(), "n1");
        let t = Duration::from_secs(2);
        for coordinator in ["n1", "n0"] {
            let push = WireMessage::PlanPush {
                epoch: u64::MAX,
                coordinator: coordinator.into(),
                gpus: BTreeMap::new(),
                routes: Default::default(),
                phase: PushPhase::All,
            };
            let r = rogue.request("n0", "", push, t).await.expect("reply");
            assert!(matches!(r, WireMessage::Forbidden { needed: Role::Node, .. }), "{coordinator}: {r:?}");
        }
        let vote = WireMessage::Raft { rpc: jigsaw_protocol::wire::RaftRpc::Vote, body: b"{}".to_vec() };
        let r = rogue.request("n0", "", vote, t).await.expect("reply");
        assert!(matches!(r, WireMessage::Forbidden { needed: Role::Node, .. }), "{r:?}");
        assert_eq!(sim.nodes[&0].applied().0, 0, "no plan was applied");
        sim.crash(0).await;
        let _ = std::fs::remove_dir_all(&root);
    });
}

/// The plan-push fence (`agent::core::plan_fence`) and the state files, end to end:
/// * a node whose `applied-plan.json` and `routes.json` were torn starts anyway (the files
///   set aside as `*.corrupt`) and applies the plan the coordinator pushes;
/// * a voter that is not the coordinator pushes epoch `u64::MAX` to every node (itself
///   included): refused everywhere, nothing persisted; a push under the coordinator's own
///   name with an epoch beyond the committed one is refused too;
/// * the next real plan is still applied by every node.
#[test]
fn a_rogue_voter_cannot_wedge_a_node_and_torn_state_files_are_set_aside() {
    runtime().block_on(async {
        let sc = Scenario { nodes: 4, eligible: 3, ..DEFAULT };
        let quiet = LinkConfig { min_delay_us: 200, max_delay_us: 2_000, drop: 0.0 };
        let mut sim = sim_of(sc.clone(), "rogue", 3, quiet);
        let root = sim.root.clone();
        // The non-voter n3 crashed mid-write on a file system that did not keep the order.
        let dir3 = root.join(node_name(3));
        std::fs::create_dir_all(&dir3).expect("data dir");
        std::fs::write(dir3.join("applied-plan.json"), br#"{"epoch": 7, "gpus": {"GPU-"#).expect("torn plan");
        std::fs::write(dir3.join("routes.json"), br#"{"epo"#).expect("torn routes");
        for i in 0..sc.nodes {
            sim.start(i).await;
        }
        assert_eq!(sim.nodes[&3].applied().0, 0, "n3 starts empty");
        for f in ["applied-plan.json", "routes.json"] {
            assert!(dir3.join(format!("{f}.corrupt")).exists(), "the torn {f} is kept aside");
        }

        let converge = |sim: &Sim, at_least: u64| {
            sim.converged().and_then(|()| match sim.latest_plan() {
                Some(p) if p.epoch >= at_least => Ok(p.epoch),
                _ => Err("no new plan yet".to_string()),
            })
        };
        let mut registered = false;
        let mut epoch = Err(String::new());
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !registered {
                registered = sim.register(100.0).await;
                continue;
            }
            epoch = converge(&sim, 1);
            if epoch.is_ok() {
                break;
            }
        }
        let epoch = epoch.unwrap_or_else(|e| panic!("no convergence: {e}"));
        let leader = sim.nodes.values().find(|h| h.is_coordinator()).expect("a coordinator").name().to_string();
        let rogue = (0..sc.eligible).map(node_name).find(|n| *n != leader).expect("another voter");

        let push = |coordinator: &str| WireMessage::PlanPush {
            epoch: u64::MAX,
            coordinator: coordinator.into(),
            gpus: BTreeMap::new(),
            routes: jigsaw_protocol::route::RoutingTable { epoch: u64::MAX, apps: vec![] },
            phase: PushPhase::Make,
        };
        let refused = |r: Result<WireMessage, _>, needle: &str| match r {
            Ok(WireMessage::PlanReport { outcome: ApplyOutcome::Rejected { reason }, .. }) => {
                assert!(reason.contains(needle), "{reason}")
            }
            other => panic!("expected a refusal ({needle}), got {other:?}"),
        };
        let t = Duration::from_secs(4);
        let from_rogue = SimTransport::new(sim.hub.clone(), &rogue);
        for i in 0..sc.nodes {
            let r = from_rogue.request(&node_name(i), "", push(&rogue), t).await;
            refused(r, "this node's coordinator is");
        }
        let forged = SimTransport::new(sim.hub.clone(), &leader);
        refused(forged.request(&node_name(3), "", push(&leader), t).await, "beyond the committed epoch");
        refused(forged.request(&rogue, "", push(&leader), t).await, "beyond the committed epoch");

        for i in 0..sc.nodes {
            let name = node_name(i);
            assert_eq!(sim.nodes[&i].applied().0, epoch, "{name} kept its plan");
            let dir = root.join(&name);
            let saved: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("applied-plan.json")).expect("saved plan"))
                    .expect("json");
            assert_eq!(saved["epoch"].as_u64(), Some(epoch), "{name} persisted nothing of the rogue push");
            let routes: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("routes.json")).expect("saved routes")).expect("json");
            assert_eq!(routes["epoch"].as_u64(), Some(epoch), "{name} kept its routes");
        }

        // A real change: the next plan is applied by every node, the once-torn n3 included.
        assert!(sim.register(150.0).await, "the coordinator takes the new demand");
        let mut next = Err(String::new());
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            next = converge(&sim, epoch + 1);
            if next.is_ok() {
                break;
            }
        }
        next.unwrap_or_else(|e| panic!("the next real plan was not applied everywhere: {e}"));
        for i in sim.nodes.keys().copied().collect::<Vec<_>>() {
            sim.crash(i).await;
        }
        let _ = std::fs::remove_dir_all(&root);
    });
}

/// The coordinator checks heartbeats at its edge: over the wire, a node claiming 10,000
/// GPUs is refused with an error naming the field (and does not become a member), and
/// NaN, zero, 1e300 and 10,000 junk-keyed observed rows never reach the planner's observed
/// set while the good row of the same heartbeat does.
#[test]
fn heartbeats_are_checked_at_the_coordinators_edge() {
    runtime().block_on(async {
        let sc = Scenario { nodes: 2, eligible: 1, ..DEFAULT };
        let quiet = LinkConfig { min_delay_us: 200, max_delay_us: 2_000, drop: 0.0 };
        let mut sim = sim_of(sc, "edge", 5, quiet);
        let root = sim.root.clone();
        sim.start(0).await;
        let mut registered = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            registered = sim.register(100.0).await;
            if registered {
                break;
            }
        }
        assert!(registered, "n0 coordinates and took the app");
        let n1 = SimTransport::new(sim.hub.clone(), "n1");
        let t = Duration::from_secs(2);
        let gpu = |i: usize| jigsaw_protocol::cluster::GpuInventory {
            uuid: format!("GPU-{i}"),
            model: GpuModel::H100_80gb,
            live: vec![],
        };
        let hb = |gpus, observed| jigsaw_protocol::wire::Heartbeat {
            node: "n1".into(),
            addr: "sim:1".into(),
            eligible: false,
            gpus,
            applied_epoch: 0,
            observed,
            demand: vec![],
        };
        let huge = WireMessage::Heartbeat(hb((0..10_000).map(gpu).collect(), vec![]));
        match n1.request("n0", "", huge, t).await {
            Ok(WireMessage::Error { message, retry: false }) => {
                assert!(message.contains("`gpus`") && message.contains("10000"), "{message}")
            }
            other => panic!("expected the heartbeat refused, got {other:?}"),
        }

        let good = observed_row();
        let mut rows: Vec<_> = [f64::NAN, 0.0, 1e300]
            .into_iter()
            .map(|p95_ms| jigsaw_protocol::ProfileRow { p95_ms, ..good.clone() })
            .collect();
        rows.extend((0..10_000).map(|i| jigsaw_protocol::ProfileRow { task: format!("junk-{i}"), ..good.clone() }));
        rows.push(good.clone());
        let r = n1.request("n0", "", WireMessage::Heartbeat(hb(vec![gpu(0)], rows)), t).await;
        assert!(matches!(r, Ok(WireMessage::HeartbeatReply { accepted: true, .. })), "accepted: {r:?}");
        let operator = SimTransport::admin(sim.hub.clone(), "operator");
        let status = operator.request("n0", "", WireMessage::Client(ClientRequest::status()), t).await;
        let Ok(WireMessage::ClientReply(ClientReply::Status(s))) = status else { panic!("status: {status:?}") };
        assert_eq!(s.observed, vec![good], "only the good row reaches the planner's observed set");
        let n1_status = s.nodes.iter().find(|n| n.node == "n1").expect("n1 recorded");
        assert_eq!(n1_status.gpus.len(), 1, "from the accepted heartbeat, not the refused one");
        sim.crash(0).await;
        let _ = std::fs::remove_dir_all(&root);
    });
}

/// A simulation of `sc` with no random faults (the tests below inject their own).
fn quiet_sim(sc: Scenario, tag: &str) -> Sim {
    let link = sc.link;
    sim_of(sc, tag, 1, link)
}

/// A simulation of `sc` on links `link` with seed `seed`, its data under a fresh directory
/// named by `tag` (in memory where `/dev/shm` exists).
fn sim_of(sc: Scenario, tag: &str, seed: u64, link: LinkConfig) -> Sim {
    let root = std::path::Path::new(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
        .join(format!("jigsaw-sim-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    Sim {
        hub: SimHub::start(seed, link),
        sc,
        seed,
        root,
        planner: toy_planner(),
        nodes: BTreeMap::new(),
        leaders: BTreeMap::new(),
        applied: BTreeMap::new(),
        control: Default::default(),
    }
}

impl Sim {
    /// Wait (virtual time) until a node coordinates; its index.
    async fn coordinator(&self) -> usize {
        for _ in 0..300 {
            if let Some((i, _)) = self.nodes.iter().find(|(_, h)| h.is_coordinator()) {
                return *i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no coordinator within 30 s");
    }

    /// Send `req` to node `i` as the operator.
    async fn ask(&self, i: usize, req: &ClientRequest) -> Option<ClientReply> {
        let client = SimTransport::admin(self.hub.clone(), "operator");
        match client.request(&node_name(i), "", WireMessage::Client(req.clone()), Duration::from_secs(2)).await {
            Ok(WireMessage::ClientReply(r)) => Some(r),
            _ => None,
        }
    }
}

const QUIET: Scenario = Scenario {
    crash_p: 0.0,
    cut_p: 0.0,
    app_p: 0.0,
    link: LinkConfig { min_delay_us: 200, max_delay_us: 2_000, drop: 0.0 },
    ..DEFAULT
};

/// An operator change whose reply is lost: the client retries with the same request id and
/// is told the outcome of the first attempt (the app was removed, once), where a plain
/// resend used to report "no app named `social`" for a removal that had succeeded. A new
/// request (new id) for the same change is applied afresh and says what it finds.
#[test]
fn a_retried_operator_change_reports_its_first_outcome() {
    runtime().block_on(async {
        let mut sim = quiet_sim(Scenario { nodes: 1, eligible: 1, ..QUIET }, "lost-reply");
        sim.start(0).await;
        let c = sim.coordinator().await;
        assert!(sim.register(100.0).await, "registered");
        assert!(sim.nodes[&c].committed().apps.contains_key("social"));

        let remove = ClientRequest::remove("social");
        sim.hub.lose_replies(&node_name(c), 1);
        assert_eq!(sim.ask(c, &remove).await, None, "the first reply is lost");
        assert!(sim.nodes[&c].committed().apps.is_empty(), "yet the app was removed");
        let retry = sim.ask(c, &remove).await;
        match retry {
            Some(ClientReply::Done { message, .. }) => assert!(message.contains("`social` removed"), "{message}"),
            other => panic!("the retry must report the removal: {other:?}"),
        }
        let state = sim.nodes[&c].committed();
        let ClientRequest::RemoveApp { id, .. } = remove else { unreachable!() };
        assert_eq!(state.requests.iter().filter(|(r, _)| *r == id).count(), 1, "applied once");
        match sim.ask(c, &ClientRequest::remove("social")).await {
            Some(ClientReply::Invalid { message }) => assert!(message.contains("no app named"), "{message}"),
            other => panic!("a new removal finds no app: {other:?}"),
        }
        sim.crash(0).await;
        let _ = std::fs::remove_dir_all(&sim.root);
    });
}

/// An app whose profile table is mostly a comment of control characters, `bytes` long in
/// all: valid, and the worst case for JSON (each such byte was six in a JSON log entry).
fn big_app(i: usize, bytes: usize) -> AppEntry {
    let spec =
        include_str!("../../examples/apps/social.toml").replacen("name = \"social\"", &format!("name = \"big{i}\""), 1);
    let csv = include_str!("../../examples/profiles/social-h100-80gb.csv");
    let pad = bytes.saturating_sub(csv.len() + 3);
    let profiles_csv = format!("# {}\n{csv}", "\u{1}".repeat(pad));
    let (entry, _) = AppEntry::from_sources(spec, "big.toml", profiles_csv, "big.csv", 10.0).expect("a valid app");
    entry
}

/// Registrations that together exceed a frame (five of nearly 4 MiB) reach a voter that was
/// down while they were made: the catch-up AppendEntries is split rather than retried
/// forever. The status, too large for one frame, arrives in pages.
#[test]
fn large_registrations_replicate_and_the_status_pages() {
    runtime().block_on(async {
        let mut sim = quiet_sim(Scenario { nodes: 3, eligible: 3, gpus_per_node: 1, ..QUIET }, "large");
        for i in 0..3 {
            sim.start(i).await;
        }
        let c = sim.coordinator().await;
        let f = (c + 1) % 3;
        sim.crash(f).await;
        let apps: Vec<AppEntry> =
            (0..5).map(|i| big_app(i, jigsaw_protocol::cluster::MAX_APP_PROFILES - 4096)).collect();
        let total: usize = apps.iter().map(|a| a.profiles_csv.len()).sum();
        assert!(total > jigsaw_protocol::wire::MAX_FRAME, "{total} bytes of profiles");
        for a in &apps {
            match sim.ask(c, &ClientRequest::register(a.clone())).await {
                Some(ClientReply::Done { .. }) => {}
                other => panic!("register {}: {other:?}", a.name),
            }
        }
        sim.start(f).await;
        let mut caught_up = false;
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if sim.nodes[&f].committed().apps.len() == apps.len() {
                caught_up = true;
                break;
            }
        }
        assert!(caught_up, "the restarted voter has {} of {} apps", sim.nodes[&f].committed().apps.len(), apps.len());
        let client = SimTransport::admin(sim.hub.clone(), "operator");
        let c = sim.coordinator().await;
        let status = jigsaw_agent::node::fetch_status(client.as_ref(), &node_name(c), "", Duration::from_secs(5))
            .await
            .expect("the status arrives");
        assert_eq!(status.state.apps.len(), apps.len());
        for a in &apps {
            assert_eq!(status.state.apps.get(&a.name), Some(a), "{} arrives whole", a.name);
        }
        for i in 0..3 {
            sim.crash(i).await;
        }
        let _ = std::fs::remove_dir_all(&sim.root);
    });
}

/// The node handler's role checks, on the in-memory twin (the same handler QUIC serves; the
/// sender's role stands in for its certificate's): a node may ask for the status but not
/// register or remove apps; the operator (admin) may, but cannot heartbeat, leave or send
/// stages; a node's heartbeat must carry its own name, never another node's or a loopback
/// name.
#[test]
fn roles_are_enforced_by_the_node_handler() {
    runtime().block_on(async {
        let sc = Scenario { nodes: 2, eligible: 1, ..DEFAULT };
        let mut sim = sim_of(sc, "roles", 2, LinkConfig { drop: 0.0, ..DEFAULT.link });
        let root = sim.root.clone();
        sim.start(0).await;
        for _ in 0..100 {
            if sim.nodes[&0].is_coordinator() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(sim.nodes[&0].is_coordinator(), "n0 leads its one-voter group");
        let t = Duration::from_secs(2);
        let node = SimTransport::new(sim.hub.clone(), "n1");
        let admin = SimTransport::admin(sim.hub.clone(), "admin");
        let entry = AppEntry {
            name: "social".into(),
            spec_toml: include_str!("../../examples/apps/social.toml").into(),
            profiles_csv: include_str!("../../examples/profiles/social-h100-80gb.csv").into(),
            demand_rps: 10.0,
            demand_auto: false,
        };
        // Operator commands that change the cluster: admin only.
        for req in [ClientRequest::register(entry.clone()), ClientRequest::remove("social")] {
            let r = node.request("n0", "", WireMessage::Client(req), t).await.expect("reply");
            assert!(
                matches!(&r, WireMessage::Forbidden { needed: Role::Admin, message } if message.contains("admin")),
                "{r:?}"
            );
        }
        assert!(sim.nodes[&0].committed().apps.is_empty(), "nothing registered by a node certificate");
        // The status is the one query a node may make (its status page asks the coordinator).
        let r = node.request("n0", "", WireMessage::Client(ClientRequest::status()), t).await.expect("reply");
        assert!(matches!(r, WireMessage::ClientReply(ClientReply::Status(_))), "{r:?}");
        let r = admin.request("n0", "", WireMessage::Client(ClientRequest::register(entry)), t).await;
        assert!(matches!(r, Ok(WireMessage::ClientReply(ClientReply::Done { .. }))), "{r:?}");
        // Node messages: node certificates only, each under its own name.
        let hb = |name: &str| {
            WireMessage::Heartbeat(jigsaw_protocol::wire::Heartbeat {
                node: name.into(),
                addr: "sim:1".into(),
                eligible: false,
                gpus: vec![],
                applied_epoch: 0,
                observed: vec![],
                demand: vec![],
            })
        };
        for msg in [hb("admin"), WireMessage::Leave { node: "admin".into() }] {
            let r = admin.request("n0", "", msg, t).await.expect("reply");
            assert!(matches!(r, WireMessage::Forbidden { needed: Role::Node, .. }), "{r:?}");
        }
        for claim in ["n0", "localhost", "127.0.0.1", "admin"] {
            let r = node.request("n0", "", hb(claim), t).await.expect("reply");
            assert!(
                matches!(&r, WireMessage::Forbidden { needed: Role::Node, message } if message.contains(claim)),
                "heartbeat claiming {claim}: {r:?}"
            );
        }
        let r = node.request("n0", "", hb("n1"), t).await.expect("reply");
        assert!(matches!(r, WireMessage::HeartbeatReply { accepted: true, .. }), "own name: {r:?}");
        assert!(sim.nodes[&0].committed().members.keys().all(|m| m == "n0" || m == "n1"), "no forged member");
        sim.crash(0).await;
        let _ = std::fs::remove_dir_all(&root);
    });
}

/// Load on the simulated cluster changes and the planned demand follows it: the frontends'
/// counters travel with heartbeats, the coordinator forecasts per control interval and
/// commits `SetDemand`, and the real planner re-plans for it; when the load stops, the
/// planned demand falls back to the registered floor. Waits on committed state only.
#[test]
fn planned_demand_follows_measured_load() {
    use jigsaw_agent::dataplane::Inference as _;
    use jigsaw_protocol::infer::{InferRequest, Tensor, TensorData};
    runtime().block_on(async {
        let sc = Scenario { nodes: 2, eligible: 1, ..QUIET };
        let mut sim = sim_of(sc.clone(), "demand", 11, sc.link);
        sim.planner = highs_planner(PlannerConfig::default(), Some(1));
        let policy = jigsaw_coordinator::replan::ReplanPolicy {
            interval_ms: 2_000,
            min_interval_ms: 6_000,
            warmup_intervals: 2,
            ..Default::default()
        };
        sim.control = jigsaw_coordinator::control::ControlConfig { policy, ..Default::default() };
        for i in 0..sc.nodes {
            sim.start(i).await;
        }
        let c = sim.coordinator().await;
        assert!(sim.register(10.0).await, "registered");
        let planned = |sim: &Sim| sim.nodes[&c].committed().apps.get("social").map_or(0.0, |a| a.demand_rps);
        // Wait until node 0's frontend routes the app.
        let plane = sim.nodes[&0].plane();
        let mut meta = None;
        for _ in 0..600 {
            meta = plane.app("social");
            if meta.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let meta = meta.expect("social is routed within 60 s");
        let shape: Vec<u64> = meta.inputs[0].shape.iter().map(|&d| d.max(1) as u64).collect();
        let len = shape.iter().product::<u64>() as usize;
        let request = InferRequest {
            id: None,
            inputs: vec![Tensor {
                name: meta.inputs[0].name.clone(),
                shape,
                datatype: "FP32".into(),
                data: TensorData::Fp32(vec![0.5; len]),
            }],
            outputs: vec![],
        };
        // 40 req/s, open loop, until the planned demand follows (at most 120 s).
        let mut followed = None;
        for tick in 0..4_800u64 {
            let (p, r) = (plane.clone(), request.clone());
            tokio::spawn(async move {
                let _ = p.infer("social", r, None).await;
            });
            tokio::time::sleep(Duration::from_millis(25)).await;
            if tick % 40 == 0 && planned(&sim) >= 30.0 {
                followed = Some(planned(&sim));
                break;
            }
        }
        let up = followed.unwrap_or_else(|| panic!("planned demand did not follow 40 req/s: {}", planned(&sim)));
        assert!(up <= 80.0, "planned for about the measured rate plus headroom, got {up}");
        let st = sim.nodes[&c].committed();
        eprintln!(
            "seed 11: 40 req/s offered; planned {up} req/s ({}); plan {:?}",
            st.demand["social"].reason,
            st.plan.map(|p| p.apps)
        );
        let state = sim.nodes[&c].committed();
        let record = &state.demand["social"];
        assert!(record.changes >= 1 && record.registered_rps == 10.0, "{record:?}");
        // Load stops: back to the registered floor, and a plan is committed for it.
        let mut down = false;
        for _ in 0..1_200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let st = sim.nodes[&c].committed();
            if planned(&sim) == 10.0 && st.plan.as_ref().is_some_and(|p| p.inputs == st.plan_inputs()) {
                down = true;
                break;
            }
        }
        assert!(down, "planned demand did not return to the floor: {}", planned(&sim));
        for i in 0..sc.nodes {
            sim.crash(i).await;
        }
        let _ = std::fs::remove_dir_all(&sim.root);
    });
}
