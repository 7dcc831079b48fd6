//! A scripted transition run on an in-process simulated cluster: real node runtimes (actor
//! tree, Raft, control loop, data plane with timed in-process workers) over the simulated
//! transport, simulated GPUs with a chosen MIG reconfiguration latency, the real HiGHS
//! planner and the social example app. Load runs at a fraction of the planned demand while
//! the app's demand steps 2× up and back down; each step is one plan transition.
//!
//! It runs on tokio's paused clock (the caller builds the runtime, see [`runtime`]), so every
//! figure is **simulated time**: link delays, MIG latency and batch times are modelled, the
//! planner's own solve time is not (it happens before the commit that figures start from).
//!
//! Per step ([`Config::step_ms`]) it checks, summed over the live nodes:
//! * no stage reached a node for an instance that does not serve there (`misrouted`: a
//!   frontend routed to an instance that was not ready or already gone);
//! * no stage was cut by its instance stopping before it answered (`cut`: an instance
//!   destroyed with work in flight);
//! * no MIG memory slice is held by two instances.
//!
//! Used by `jigsaw bench transition` (figures) and `agent/tests/transition_sim.rs` (the same
//! run with crashes and link cuts, invariants asserted).

use crate::actors::Backend;
use crate::core::netsim::LinkConfig;
use crate::dataplane::Inference;
use crate::gpu::sim::SimGpu;
use crate::node::{highs_planner, NodeHandle, NodeSpec, Timing};
use crate::transport::net::{SimHub, SimTransport, Transport};
use jigsaw_coordinator::PlannerConfig;
use jigsaw_protocol::cluster::AppEntry;
use jigsaw_protocol::infer::{InferRequest, Tensor, TensorData};
use jigsaw_protocol::rng::SplitMix64;
use jigsaw_protocol::wire::{ClientReply, ClientRequest, WireMessage};
use jigsaw_protocol::GpuModel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the link delays, the faults and the load's choice of frontend.
    pub seed: u64,
    /// Nodes (the first three are voters).
    pub nodes: usize,
    /// Simulated H100 GPUs per node.
    pub gpus_per_node: usize,
    /// Simulated latency of one MIG create or destroy.
    pub mig_latency: Duration,
    /// Transitions (demand changes) to run.
    pub transitions: usize,
    /// The low demand, requests/s; the high one is twice it.
    pub demand_rps: f64,
    /// Load as a fraction of the planned demand (of the lower of the two plans while a
    /// transition runs).
    pub load: f64,
    /// Per step: chance of crashing a node (restarted 1–3 s later; a voter majority stays).
    pub crash_p: f64,
    /// Per step: chance of cutting a link between two nodes (healed 0.5–2 s later).
    pub cut_p: f64,
    /// Step of the checks and of the load, ms.
    pub step_ms: u64,
    /// Longest a transition may take before the run gives up on it, s.
    pub transition_timeout_s: u64,
    /// Link model.
    pub link: LinkConfig,
    /// SYNTHETIC churn: rotate every plan's per-GPU targets by the epoch across the
    /// cluster's GPUs, so each transition moves every instance to another GPU (the real
    /// planner's plans for 1× and 2× demand often differ only in MPS levels and batches on
    /// the same instances, which needs no MIG change).
    pub rotate: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            nodes: 3,
            gpus_per_node: 2,
            mig_latency: Duration::ZERO,
            transitions: 10,
            demand_rps: 100.0,
            load: 0.7,
            crash_p: 0.0,
            cut_p: 0.0,
            step_ms: 10,
            transition_timeout_s: 60,
            link: LinkConfig { min_delay_us: 200, max_delay_us: 2_000, drop: 0.0 },
            rotate: true,
        }
    }
}

/// Requests by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Sent.
    pub sent: u64,
    /// Answered ok.
    pub ok: u64,
    /// Dropped by a queue (early or stale).
    pub dropped: u64,
    /// Failed otherwise (unavailable, deadline missed, error, overloaded).
    pub failed: u64,
}

/// One transition.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Plan epoch it went to.
    pub epoch: u64,
    /// Demand registered, requests/s.
    pub demand_rps: f64,
    /// Load during it, requests/s.
    pub load_rps: f64,
    /// From the demand change to the plan's commit (solve + Raft), ms.
    pub change_to_commit_ms: f64,
    /// From the commit until every node finished the break phase (the last old instance is
    /// destroyed), ms; `None` if it did not within the timeout.
    pub commit_to_broken_ms: Option<f64>,
    /// MIG instances created and destroyed by the transition (live layouts before and after).
    pub created: usize,
    /// See `created`.
    pub destroyed: usize,
    /// Requests sent from the demand change until the transition finished, by outcome.
    pub requests: Counts,
}

/// What a run saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per transition.
    pub rows: Vec<Row>,
    /// Every request of the run (warm-up and settling included), by outcome.
    pub total: Counts,
    /// Requests not answered ok, by outcome name (`early_drop`, `unavailable`, …).
    pub not_ok: BTreeMap<String, u64>,
    /// Invariant violations (empty: none), with the simulated time they were seen at.
    pub violations: Vec<String>,
    /// Stages routed to an instance that did not serve (summed over live nodes, last seen).
    pub misrouted: u64,
    /// Stages cut by their instance stopping.
    pub cut: u64,
}

/// The paused-clock runtime a run needs.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()
}

/// The HiGHS planner, its targets rotated across GPUs by epoch when `rotate` (see
/// [`Config::rotate`]).
fn planner(rotate: bool) -> crate::node::PlanFn {
    // A short solve limit: the paused clock stands still while HiGHS runs (a blocking task).
    let base = highs_planner(PlannerConfig { time_limit_s: 2.0, ..PlannerConfig::default() }, Some(1));
    if !rotate {
        return base;
    }
    Arc::new(move |state, epoch, live, observed| {
        let mut p = base(state, epoch, live, observed);
        let gpus: Vec<(String, String)> =
            state.alive_members().flat_map(|m| m.gpus.iter().map(|g| (m.node.clone(), g.uuid.clone()))).collect();
        if gpus.is_empty() {
            return p;
        }
        let targets: Vec<_> =
            gpus.iter().map(|(n, g)| p.nodes.get(n).and_then(|m| m.get(g)).cloned().unwrap_or_default()).collect();
        let k = epoch as usize % gpus.len();
        let mut nodes: BTreeMap<String, BTreeMap<String, Vec<_>>> = BTreeMap::new();
        for (j, (n, g)) in gpus.iter().enumerate() {
            nodes.entry(n.clone()).or_default().insert(g.clone(), targets[(j + k) % gpus.len()].clone());
        }
        p.nodes = nodes;
        p
    })
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

struct Cluster {
    cfg: Config,
    hub: Arc<SimHub>,
    root: PathBuf,
    nodes: BTreeMap<usize, NodeHandle<SimTransport>>,
    /// Per node: (misrouted, cut) last read (so counts of a crashed node are kept).
    faults: BTreeMap<usize, (u64, u64)>,
    faults_before: (u64, u64),
}

impl Cluster {
    fn spec(&self, i: usize) -> NodeSpec {
        let all: Vec<(String, String)> = (0..self.cfg.nodes).map(|j| (node_name(j), format!("sim:{j}"))).collect();
        let voters = self.cfg.nodes.min(3);
        NodeSpec {
            name: node_name(i),
            addr: format!("sim:{i}"),
            eligible: i < voters,
            voters: all[..voters].to_vec(),
            seeds: all.iter().filter(|(n, _)| *n != node_name(i)).take(voters).cloned().collect(),
            data_dir: self.root.join(node_name(i)),
            timing: Timing {
                heartbeat_ms: 200,
                tick_ms: 20,
                election_ms: (500 + 97 * i as u64, 501 + 97 * i as u64),
                push_timeout_ms: 5_000,
            },
            planner: planner(self.cfg.rotate),
            gpus: (0..self.cfg.gpus_per_node)
                .map(|g| {
                    let s = self.cfg.seed.wrapping_mul(1000).wrapping_add((i * 16 + g) as u64);
                    Box::new(SimGpu::new(GpuModel::H100_80gb, s, self.cfg.mig_latency)) as Backend
                })
                .collect(),
            simulate_latency: true,
            launcher: None,
            max_in_flight: 4096,
            // The script steps the demand itself; measured demand must not re-plan too.
            control: jigsaw_coordinator::control::ControlConfig { follow_demand: false, ..Default::default() },
        }
    }

    async fn start(&mut self, i: usize) -> Result<(), String> {
        let name = node_name(i);
        let t = SimTransport::new(self.hub.clone(), &name);
        let hub = self.hub.clone();
        let h = NodeHandle::start(self.spec(i), t, |handler| {
            hub.attach(&name, handler);
            None
        })
        .await
        .map_err(|e| format!("start {name}: {e}"))?;
        self.nodes.insert(i, h);
        Ok(())
    }

    async fn crash(&mut self, i: usize) {
        if let Some(h) = self.nodes.remove(&i) {
            let (m, c) = self.faults.remove(&i).unwrap_or_default();
            self.faults_before.0 += m;
            self.faults_before.1 += c;
            self.hub.detach(h.name());
            h.stop().await;
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
        let req = ClientRequest::register(entry);
        for i in 0..self.cfg.nodes.min(3) {
            let r = client.request(&node_name(i), "", WireMessage::Client(req.clone()), Duration::from_secs(2)).await;
            if let Ok(WireMessage::ClientReply(ClientReply::Done { .. })) = r {
                return true;
            }
        }
        false
    }

    /// The committed plan epoch the coordinator knows (0: none or no coordinator).
    fn committed(&self) -> u64 {
        self.nodes
            .values()
            .filter(|h| h.is_coordinator())
            .filter_map(|h| h.committed().plan)
            .map(|p| p.epoch)
            .max()
            .unwrap_or(0)
    }

    /// Every live MIG instance: (node, GPU, start, profile).
    fn layout(&self) -> std::collections::BTreeSet<(String, String, u8, String)> {
        let mut out = std::collections::BTreeSet::new();
        for h in self.nodes.values() {
            for g in h.applied().1 {
                for i in g.live {
                    out.insert((h.name().to_string(), g.uuid.clone(), i.start, i.mig_profile));
                }
            }
        }
        out
    }

    /// Whether every live node applied `epoch` (finished its break phase).
    fn broken(&self, epoch: u64) -> bool {
        !self.nodes.is_empty() && self.nodes.values().all(|h| h.applied().0 >= epoch)
    }

    /// Check the invariants; returns the violations seen now.
    fn check(&mut self, t_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (i, h) in &self.nodes {
            let f = h.plane().local().transition_faults();
            let prev = self.faults.insert(*i, f).unwrap_or_default();
            if f.0 > prev.0 {
                out.push(format!(
                    "t={t_ms}ms: {} stage(s) reached {} for an instance not serving there",
                    f.0 - prev.0,
                    h.name()
                ));
            }
            if f.1 > prev.1 {
                out.push(format!("t={t_ms}ms: {} stage(s) cut by an instance of {} stopping", f.1 - prev.1, h.name()));
            }
            for g in &h.applied().1 {
                let spec = g.model.spec();
                let mut used = [false; 8];
                for inst in &g.live {
                    let Some(p) = spec.profile_index(&inst.mig_profile) else { continue };
                    for s in inst.start..inst.start + spec.profiles[p].mem_slices {
                        if used[usize::from(s)] {
                            out.push(format!("t={t_ms}ms: slice {s} of {} held twice", g.uuid));
                        }
                        used[usize::from(s)] = true;
                    }
                }
            }
        }
        out
    }

    fn totals(&self) -> (u64, u64) {
        let (mut m, mut c) = self.faults_before;
        for f in self.faults.values() {
            m += f.0;
            c += f.1;
        }
        (m, c)
    }
}

/// Outcome counters shared with the request tasks.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    not_ok: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn counts(&self, sent: u64) -> Counts {
        Counts {
            sent,
            ok: self.ok.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

fn request() -> InferRequest {
    let n: usize = crate::dataplane::plane::INPUT_SHAPE.iter().product::<u64>() as usize;
    InferRequest {
        id: None,
        inputs: vec![Tensor {
            name: "input".into(),
            shape: crate::dataplane::plane::INPUT_SHAPE.to_vec(),
            datatype: "FP32".into(),
            data: TensorData::Fp32(vec![0.5; n]),
        }],
        outputs: vec![],
    }
}

struct Load {
    rng: SplitMix64,
    carry: f64,
    sent: u64,
    total: Arc<Tally>,
    /// Tally of the current transition window, if one runs.
    window: Option<(Arc<Tally>, u64)>,
}

impl Load {
    /// Send this step's share of `rps` through random live frontends.
    fn step(&mut self, c: &Cluster, rps: f64, step_ms: u64) {
        self.carry += rps * step_ms as f64 / 1e3;
        let live: Vec<usize> = c.nodes.keys().copied().collect();
        while self.carry >= 1.0 && !live.is_empty() {
            self.carry -= 1.0;
            let i = live[self.rng.below(live.len() as u64) as usize];
            let plane = c.nodes[&i].plane();
            let fut = plane.infer("social", request(), None);
            self.sent += 1;
            let total = self.total.clone();
            let window = self.window.as_mut().map(|(t, sent)| {
                *sent += 1;
                t.clone()
            });
            tokio::spawn(async move {
                let r = fut.await;
                let tallies = std::iter::once(total).chain(window);
                for t in tallies {
                    let n = match &r {
                        Ok(_) => &t.ok,
                        Err(e) if matches!(e.outcome(), "early_drop" | "stale_drop") => &t.dropped,
                        Err(_) => &t.failed,
                    };
                    n.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = &r {
                        *t.not_ok
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(e.outcome().to_string())
                            .or_default() += 1;
                    }
                }
            });
        }
    }
}

/// Run the script: start the cluster, register the app at the low demand and wait for its
/// first plan to be applied, then run `cfg.transitions` demand changes (2× up, back down,
/// …) under load, each until every node finished its break phase; then let the last
/// requests finish. Err: the cluster could not be started or never planned the app.
pub async fn run(cfg: Config) -> Result<Report, String> {
    let root = std::path::Path::new(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
        .join(format!("jigsaw-transition-{}-{}", std::process::id(), cfg.seed));
    let _ = std::fs::remove_dir_all(&root);
    let hub = SimHub::start(cfg.seed, cfg.link);
    let mut c = Cluster {
        cfg: cfg.clone(),
        hub,
        root: root.clone(),
        nodes: BTreeMap::new(),
        faults: BTreeMap::new(),
        faults_before: (0, 0),
    };
    for i in 0..cfg.nodes {
        c.start(i).await?;
    }
    let step = Duration::from_millis(cfg.step_ms.max(1));
    let origin = Instant::now();
    let now_ms = |o: Instant| o.elapsed().as_millis() as u64;
    let mut violations = Vec::new();
    let mut rng = SplitMix64::new(cfg.seed ^ 0x7472_616e);
    let mut down: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut cuts: Vec<(usize, usize, Instant)> = Vec::new();
    let mut load = Load { rng: SplitMix64::new(cfg.seed), carry: 0.0, sent: 0, total: Arc::default(), window: None };

    // The first plan, without faults or load.
    let t0 = Instant::now();
    let mut registered = false;
    while !(registered && c.committed() > 0 && c.broken(c.committed())) {
        if t0.elapsed() > Duration::from_secs(120) {
            return Err("the cluster did not plan and apply the app within 120 s".into());
        }
        if !registered {
            registered = c.register(cfg.demand_rps).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(2) {
        load.step(&c, cfg.load * cfg.demand_rps, cfg.step_ms);
        tokio::time::sleep(step).await;
    }

    let mut rows = Vec::new();
    let mut demand = cfg.demand_rps;
    let trace = std::env::var_os("JIGSAW_SIM_TRACE").is_some();
    for k in 0..cfg.transitions {
        let next = if k % 2 == 0 { 2.0 * cfg.demand_rps } else { cfg.demand_rps };
        let rps = cfg.load * demand.min(next);
        let before = c.committed();
        let tally = Arc::new(Tally::default());
        load.window = Some((tally.clone(), 0));
        let changed = Instant::now();
        let layout_before = c.layout();
        let mut committed_at = None;
        let mut epoch = 0;
        let mut broken_at = None;
        let mut asked = false;
        while changed.elapsed() < Duration::from_secs(cfg.transition_timeout_s) {
            if !asked {
                asked = c.register(next).await;
            }
            load.step(&c, rps, cfg.step_ms);
            tokio::time::sleep(step).await;
            let t = now_ms(origin);
            violations.extend(c.check(t));
            // Faults.
            if rng.unit() < cfg.crash_p {
                let i = rng.below(cfg.nodes as u64) as usize;
                let voters_down = down.keys().filter(|&&j| j < 3).count();
                if !down.contains_key(&i) && (i >= 3 || voters_down == 0) && c.nodes.len() > 1 {
                    if trace {
                        eprintln!("t={t}ms crash n{i}");
                    }
                    c.crash(i).await;
                    down.insert(i, Instant::now() + Duration::from_millis(1_000 + rng.below(2_000)));
                }
            }
            if rng.unit() < cfg.cut_p {
                let (a, b) = (rng.below(cfg.nodes as u64) as usize, rng.below(cfg.nodes as u64) as usize);
                if a != b {
                    if trace {
                        eprintln!("t={t}ms cut n{a}-n{b}");
                    }
                    c.hub.set_cut(&node_name(a), &node_name(b), true);
                    cuts.push((a, b, Instant::now() + Duration::from_millis(500 + rng.below(1_500))));
                }
            }
            for (i, _) in down.clone().into_iter().filter(|(_, at)| *at <= Instant::now()) {
                down.remove(&i);
                if trace {
                    eprintln!("t={}ms restart n{i}", now_ms(origin));
                }
                c.start(i).await?;
            }
            let hub = c.hub.clone();
            cuts.retain(|&(a, b, at)| {
                let keep = at > Instant::now();
                if !keep {
                    hub.set_cut(&node_name(a), &node_name(b), false);
                }
                keep
            });
            let e = c.committed();
            if trace && changed.elapsed().as_millis() % 1000 < u128::from(cfg.step_ms) {
                let applied: Vec<u64> = c.nodes.values().map(|h| h.applied().0).collect();
                eprintln!(
                    "t={t}ms transition {k}: committed {e} (before {before}), applied {applied:?}, down {down:?}"
                );
            }
            if committed_at.is_none() && asked && e > before {
                committed_at = Some(Instant::now());
                epoch = e;
            }
            if committed_at.is_some() && down.is_empty() && c.broken(epoch) {
                broken_at = Some(Instant::now());
                break;
            }
        }
        let sent = load.window.take().map_or(0, |w| w.1);
        let layout_after = c.layout();
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        rows.push(Row {
            epoch,
            demand_rps: next,
            load_rps: rps,
            change_to_commit_ms: committed_at.map_or(f64::NAN, |t| ms(changed, t)),
            commit_to_broken_ms: committed_at.zip(broken_at).map(|(a, b)| ms(a, b)),
            created: layout_after.difference(&layout_before).count(),
            destroyed: layout_before.difference(&layout_after).count(),
            requests: tally.counts(sent),
        });
        // Let the requests of this window finish (one SLO and then some), under the new load.
        demand = next;
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(1) {
            load.step(&c, cfg.load * demand, cfg.step_ms);
            tokio::time::sleep(step).await;
            violations.extend(c.check(now_ms(origin)));
        }
        if let Some(r) = rows.last_mut() {
            r.requests = tally.counts(r.requests.sent);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    violations.extend(c.check(now_ms(origin)));
    let (misrouted, cut) = c.totals();
    let total = load.total.counts(load.sent);
    let not_ok = load.total.not_ok.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for i in c.nodes.keys().copied().collect::<Vec<_>>() {
        c.crash(i).await;
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(Report { rows, total, not_ok, violations, misrouted, cut })
}
