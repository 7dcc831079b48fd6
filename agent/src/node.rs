//! The node runtime: wires the actor tree, Raft, the transport and the coordinator's pure
//! control loop together. The same code runs in a `jigsaw agent` process (QUIC) and, many
//! nodes to a process, in the cluster simulation (in-memory transport, paused tokio clock).
//!
//! Tasks of a node:
//! * **inbound handler**: Raft RPCs to openraft, heartbeats to the control loop (or a
//!   redirect to the coordinator), plan pushes to the node agent actor, operator requests;
//! * **heartbeat loop**: every `heartbeat_ms`, send the node's inventory and applied epoch to
//!   the coordinator it knows (learnt from Raft metrics on eligible nodes, from heartbeat
//!   replies elsewhere), falling back to its seed peers in turn;
//! * **control loop** (acts only while this node leads Raft): every `tick_ms`, run
//!   [`Control::tick`] on the committed state and execute its actions: propose commands,
//!   solve plans, push plan parts (each in its own task, never blocking the loop).
//!
//! Time comes from tokio's clock, so the simulation's paused clock drives everything.

use crate::actors::{Backend, NodeAgent, NodeArgs, NodeMsg};
use crate::dataplane::plane::{DataPlane, LocalPlane, PlaneConfig, Segments};
use crate::dataplane::worker::{ExecutorKind, InProcessLauncher, Launcher};
use crate::raft::store::{self, StateMachine};
use crate::raft::{node_id, raft_config, serve_rpc, Raft, RaftNet, RaftNode};
use crate::transport::net::{BoxFuture, Handler, Peer, Transport};
use jigsaw_coordinator::cluster_plan::{plan_cluster, LiveLayouts};
use jigsaw_coordinator::control::{Action, Control, ControlConfig};
use jigsaw_coordinator::{Clock, HighsSolver, PlannerConfig};
use jigsaw_protocol::cluster::{AppEntry, ClusterCommand, ClusterPlan, ClusterState, GpuInventory};
use jigsaw_protocol::route::StageReply;
use jigsaw_protocol::wire::{ClientReply, ClientRequest, ClusterStatus, Heartbeat, WireMessage};
use jigsaw_protocol::{AppSpec, ProfileRow, ProfileTable};
use ractor::{Actor, ActorRef};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Timing of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// Control loop period, ms.
    pub tick_ms: u64,
    /// Raft election timeout range, ms.
    pub election_ms: (u64, u64),
    /// RPC timeout for pushes, ms.
    pub push_timeout_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { heartbeat_ms: 300, tick_ms: 100, election_ms: (500, 1_000), push_timeout_ms: 30_000 }
    }
}

/// Computes a cluster plan: `(state, epoch, live layouts, observed profiles) → plan`.
pub type PlanFn = Arc<dyn Fn(&ClusterState, u64, &LiveLayouts, &[ProfileRow]) -> ClusterPlan + Send + Sync>;

/// The real planner (HiGHS, wall-clock time limit).
pub fn highs_planner(cfg: PlannerConfig) -> PlanFn {
    Arc::new(move |state, epoch, live, observed| {
        let clock = crate::cli::WallClock::new();
        plan_cluster(state, epoch, live, observed, &cfg, &HighsSolver { threads: Some(1) }, &clock as &dyn Clock)
    })
}

/// Everything a node needs to start.
pub struct NodeSpec {
    /// Node id (its certificate name).
    pub name: String,
    /// Address it listens on, as peers dial it.
    pub addr: String,
    /// Coordinator-eligible (a Raft voter).
    pub eligible: bool,
    /// The initial Raft voters (name, address); the same on every eligible node.
    pub voters: Vec<(String, String)>,
    /// Peers to ask for the coordinator (name, address).
    pub seeds: Vec<(String, String)>,
    /// Data dir (Raft database, applied plan).
    pub data_dir: PathBuf,
    /// Timing.
    pub timing: Timing,
    /// The planner.
    pub planner: PlanFn,
    /// GPU backends.
    pub gpus: Vec<Backend>,
    /// Sleep for simulated reconfiguration latency.
    pub simulate_latency: bool,
    /// Starts the segment instances' workers (`None`: in-process workers with the timed
    /// executor, the simulator's default).
    pub launcher: Option<Arc<dyn Launcher>>,
    /// Requests this node's frontend runs at once before answering 429.
    pub max_in_flight: usize,
}

/// (task, variant, MIG profile, MPS level, batch) of an observed profile point.
type ObservedKey = (String, String, String, u8, u32);

struct Shared<T: Transport> {
    name: String,
    /// Voter names: only they may send Raft RPCs or push plans.
    voters: Vec<String>,
    addr: String,
    eligible: bool,
    seeds: Vec<(String, String)>,
    timing: Timing,
    planner: PlanFn,
    transport: Arc<T>,
    raft: Option<Raft>,
    sm: Option<StateMachine>,
    agent: ActorRef<NodeMsg>,
    inventory: watch::Receiver<(u64, Vec<GpuInventory>)>,
    coordinator: Mutex<Option<(String, String)>>,
    control: Mutex<Option<Control>>,
    origin: tokio::time::Instant,
    /// Profile points measured on this node (latest per configuration), sent with heartbeats.
    observed: Mutex<BTreeMap<ObservedKey, ProfileRow>>,
    /// Wakes the control loop early (a commit changed what it should do).
    kick: tokio::sync::Notify,
    /// Tasks spawned for proposals, solves and pushes; aborted when the node stops.
    spawned: Mutex<tokio::task::JoinSet<()>>,
    /// The data plane (frontend and local instances).
    plane: Arc<DataPlane<T>>,
}

/// A running node.
pub struct NodeHandle<T: Transport> {
    shared: Arc<Shared<T>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir or Raft store could not be opened: fix the path or permissions.
    #[error("storage: {0}")]
    Storage(String),
    /// Raft or the actor tree failed to start.
    #[error("startup: {0}")]
    Startup(String),
}

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Transport> Shared<T> {
    fn now_ms(&self) -> u64 {
        tokio::time::Instant::now().duration_since(self.origin).as_millis() as u64
    }

    fn state(&self) -> ClusterState {
        self.sm.as_ref().map(|s| s.snapshot_state().state).unwrap_or_default()
    }

    fn is_leader(&self) -> bool {
        lock(&self.control).is_some()
    }

    fn hint(&self) -> Option<(String, String)> {
        lock(&self.coordinator).clone()
    }

    fn heartbeat(&self) -> Heartbeat {
        let (applied_epoch, gpus) = self.inventory.borrow().clone();
        // Run-time refinement: latencies the local instances observed travel with heartbeats.
        let seen = self.plane.local().observed(20, |uuid| gpus.iter().find(|g| g.uuid == uuid).map(|g| g.model));
        if !seen.is_empty() {
            let mut o = lock(&self.observed);
            for r in seen {
                o.insert((r.task.clone(), r.variant.clone(), r.mig_profile.clone(), r.mps, r.batch), r);
            }
        }
        let observed = lock(&self.observed).values().cloned().collect();
        Heartbeat {
            node: self.name.clone(),
            addr: self.addr.clone(),
            eligible: self.eligible,
            gpus,
            applied_epoch,
            observed,
        }
    }

    async fn handle(self: Arc<Self>, peer: Peer, msg: WireMessage) -> WireMessage {
        match msg {
            WireMessage::Raft { .. } | WireMessage::PlanPush { .. } if !self.voters.iter().any(|v| peer.is(v)) => {
                WireMessage::Error {
                    message: "only coordinator-eligible nodes may send Raft RPCs or plans".into(),
                    retry: false,
                }
            }
            WireMessage::Raft { rpc, body } => match &self.raft {
                Some(r) => serve_rpc(r, rpc, &body).await,
                None => {
                    WireMessage::Error { message: format!("{} is not coordinator-eligible", self.name), retry: false }
                }
            },
            WireMessage::Heartbeat(hb) => {
                if !peer.is(&hb.node) {
                    return WireMessage::Error {
                        message: format!("heartbeat claims node `{}` but the certificate says otherwise", hb.node),
                        retry: false,
                    };
                }
                let now = self.now_ms();
                let accepted = match lock(&self.control).as_mut() {
                    Some(c) => {
                        c.heartbeat(now, hb);
                        true
                    }
                    None => false,
                };
                let coordinator = if accepted { Some((self.name.clone(), self.addr.clone())) } else { self.hint() };
                WireMessage::HeartbeatReply { accepted, coordinator, epoch: self.state().epoch }
            }
            WireMessage::Stage(req) => {
                let (id, item) = (req.id, req.item);
                let outcome = self.plane.local().serve_stage(req).await;
                WireMessage::StageReply(StageReply { id, item, outcome })
            }
            WireMessage::PlanPush { epoch, coordinator, gpus, routes } => {
                if !peer.is(&coordinator) || !self.voters.contains(&coordinator) {
                    return WireMessage::Error {
                        message: format!(
                            "plan push claims coordinator `{coordinator}` but the certificate says otherwise"
                        ),
                        retry: false,
                    };
                }
                // Routes first, so segments the plan creates find their app's description.
                if routes.epoch == epoch {
                    self.plane.local().set_routes(routes);
                }
                match ractor::call!(self.agent, |reply| NodeMsg::Push { epoch, gpus, reply }) {
                    Ok(outcome) => WireMessage::PlanReport { node: self.name.clone(), epoch, outcome },
                    Err(e) => WireMessage::Error { message: format!("node agent unavailable: {e}"), retry: true },
                }
            }
            WireMessage::Client(req) => WireMessage::ClientReply(self.client(req).await),
            other => WireMessage::Error { message: format!("unexpected request {other:?}"), retry: false },
        }
    }

    async fn client(&self, req: ClientRequest) -> ClientReply {
        let (Some(raft), true) = (&self.raft, self.is_leader()) else {
            return ClientReply::NotCoordinator { coordinator: self.hint() };
        };
        let cmd = match req {
            ClientRequest::Status => {
                let state = self.state();
                let m = raft.metrics().borrow().clone();
                let voters = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter_map(|id| m.membership_config.membership().get_node(&id).map(|n| n.name.clone()))
                    .collect();
                let (nodes, observed) = lock(&self.control)
                    .as_ref()
                    .map(|c| (c.status(self.now_ms(), &state), c.observed_profiles()))
                    .unwrap_or_default();
                return ClientReply::Status(Box::new(ClusterStatus {
                    coordinator: self.name.clone(),
                    term: m.current_term,
                    voters,
                    state,
                    nodes,
                    observed,
                }));
            }
            ClientRequest::RegisterApp(entry) => match validate_app(&entry) {
                Ok(()) => ClusterCommand::PutApp(entry),
                Err(message) => return ClientReply::Invalid { message },
            },
            ClientRequest::RemoveApp { name } => ClusterCommand::RemoveApp { name },
        };
        match raft.client_write(cmd).await {
            Ok(r) if r.data.applied => ClientReply::Done { message: r.data.message, epoch: r.data.epoch },
            Ok(r) => ClientReply::Invalid { message: r.data.message },
            Err(e) => match e.forward_to_leader() {
                Some(f) => ClientReply::NotCoordinator {
                    coordinator: f.leader_node.as_ref().map(|n| (n.name.clone(), n.addr.clone())),
                },
                None => ClientReply::NotCoordinator { coordinator: None },
            },
        }
    }

    /// Follow Raft leadership: create or drop the control state, learn the coordinator.
    fn observe_leadership(&self) {
        let Some(raft) = &self.raft else { return };
        let m = raft.metrics().borrow().clone();
        let me = node_id(&self.name);
        // openraft 0.9 does not step a leader down when it loses its quorum; a leader cut off
        // from the other voters stops acting as coordinator once its last quorum ack is older
        // than the shortest election timeout (a new leader may exist by then).
        let quorum_fresh = m.millis_since_quorum_ack.is_none_or(|ms| ms < self.timing.election_ms.0);
        let leading = m.current_leader == Some(me) && m.state.is_leader() && quorum_fresh;
        {
            let mut c = lock(&self.control);
            match (leading, c.is_some()) {
                (true, false) => {
                    tracing::info!(node = %self.name, term = m.current_term, "became coordinator");
                    let cfg = ControlConfig { push_timeout_ms: self.timing.push_timeout_ms, ..Default::default() };
                    *c = Some(Control::new(cfg, self.now_ms()));
                }
                (false, true) => {
                    tracing::info!(node = %self.name, "no longer coordinator");
                    *c = None;
                }
                _ => {}
            }
        }
        if let Some(leader) = m.current_leader {
            if let Some(n) = m.membership_config.membership().get_node(&leader) {
                *lock(&self.coordinator) = Some((n.name.clone(), n.addr.clone()));
            }
        }
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = lock(&self.spawned);
        while set.try_join_next().is_some() {}
        set.spawn(f);
    }

    fn execute(self: &Arc<Self>, actions: Vec<Action>, state: &ClusterState) {
        for a in actions {
            match a {
                Action::Propose(cmd) => {
                    let me = self.clone();
                    self.spawn(async move {
                        if let Some(r) = &me.raft {
                            match r.client_write(cmd).await {
                                Ok(_) => me.kick.notify_one(),
                                Err(e) => tracing::debug!(%e, "proposal not committed"),
                            }
                        }
                    });
                }
                Action::Solve { inputs, epoch } => {
                    let (live, observed) = lock(&self.control)
                        .as_ref()
                        .map(|c| (c.live_layouts(), c.observed_profiles()))
                        .unwrap_or_default();
                    let me = self.clone();
                    let state = state.clone();
                    self.spawn(async move {
                        // HiGHS runs for up to its time limit: keep it off the runtime's workers.
                        let planner = me.planner.clone();
                        let solved =
                            tokio::task::spawn_blocking(move || planner(&state, epoch, &live, &observed)).await;
                        match solved {
                            Ok(plan) => {
                                tracing::info!(node = %me.name, epoch, apps = ?plan.apps, "plan computed");
                                if let Some(r) = &me.raft {
                                    match r.client_write(ClusterCommand::CommitPlan(plan)).await {
                                        Ok(o) => tracing::info!(node = %me.name, "{}", o.data.message),
                                        Err(e) => tracing::debug!(%e, "plan not committed"),
                                    }
                                }
                            }
                            Err(e) => tracing::error!(node = %me.name, epoch, %e, "the planner failed"),
                        }
                        if let Some(c) = lock(&me.control).as_mut() {
                            c.solve_done(&inputs);
                        }
                        me.kick.notify_one(); // push the new plan now, not at the next tick
                    });
                }
                Action::Push { node, addr, epoch, gpus, routes } => {
                    let me = self.clone();
                    self.spawn(async move {
                        let routes = (*routes).clone();
                        let msg = WireMessage::PlanPush { epoch, coordinator: me.name.clone(), gpus, routes };
                        let timeout = Duration::from_millis(me.timing.push_timeout_ms);
                        let outcome = match me.transport.request(&node, &addr, msg, timeout).await {
                            Ok(WireMessage::PlanReport { outcome, .. }) => Some(outcome),
                            Ok(other) => {
                                tracing::warn!(%node, ?other, "unexpected reply to a plan push");
                                None
                            }
                            Err(e) => {
                                tracing::debug!(%node, %e, "plan push failed");
                                None
                            }
                        };
                        let now = me.now_ms();
                        if let Some(c) = lock(&me.control).as_mut() {
                            c.push_done(now, &node, epoch, outcome);
                        }
                    });
                }
            }
        }
    }

    async fn control_loop(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(self.timing.tick_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = self.kick.notified() => {}
            }
            self.observe_leadership();
            if !self.is_leader() {
                continue;
            }
            let state = self.state();
            let now = self.now_ms();
            let actions = match lock(&self.control).as_mut() {
                Some(c) => c.tick(now, &state),
                None => continue,
            };
            self.execute(actions, &state);
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(self.timing.heartbeat_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_seed = 0usize;
        loop {
            every.tick().await;
            let hb = self.heartbeat();
            if let Some(c) = lock(&self.control).as_mut() {
                c.heartbeat(self.now_ms(), hb);
                continue;
            }
            let target = match self.hint() {
                Some(t) if t.0 != self.name => t,
                _ if self.seeds.is_empty() => continue,
                _ => {
                    next_seed = (next_seed + 1) % self.seeds.len();
                    self.seeds[next_seed].clone()
                }
            };
            let timeout = Duration::from_millis(self.timing.heartbeat_ms * 3);
            match self.transport.request(&target.0, &target.1, WireMessage::Heartbeat(hb), timeout).await {
                Ok(WireMessage::HeartbeatReply { accepted, coordinator, .. }) => {
                    let hint = if accepted {
                        Some(target)
                    } else {
                        // Redirected: follow it; no hint: try the next seed.
                        coordinator.filter(|c| c.0 != self.name && c.0 != target.0)
                    };
                    *lock(&self.coordinator) = hint;
                }
                Ok(_) | Err(_) => {
                    *lock(&self.coordinator) = None;
                }
            }
        }
    }
}

/// Check an app registration: the spec and profiles parse and agree on the name.
pub fn validate_app(entry: &AppEntry) -> Result<(), String> {
    const MAX_SPEC: usize = 256 * 1024;
    const MAX_PROFILES: usize = 4 * 1024 * 1024;
    if entry.spec_toml.len() > MAX_SPEC || entry.profiles_csv.len() > MAX_PROFILES {
        return Err(format!(
            "app `{}` is too large: spec {} bytes (limit {MAX_SPEC}), profiles {} bytes (limit {MAX_PROFILES})",
            entry.name,
            entry.spec_toml.len(),
            entry.profiles_csv.len()
        ));
    }
    let app = AppSpec::parse(&entry.spec_toml, &format!("app `{}`", entry.name)).map_err(|e| e.to_string())?;
    if app.name != entry.name {
        return Err(format!("registration names app `{}` but the spec names `{}`", entry.name, app.name));
    }
    if !(entry.demand_rps.is_finite() && entry.demand_rps > 0.0) {
        return Err(format!("demand must be a positive number of requests/s, got {}", entry.demand_rps));
    }
    let profiles = ProfileTable::parse_csv(&entry.profiles_csv, &format!("profiles of `{}`", entry.name))
        .map_err(|e| e.to_string())?;
    for t in &app.tasks {
        if !profiles.rows().any(|r| r.task == t.name) {
            return Err(format!("the profiles have no row for task `{}`", t.name));
        }
    }
    Ok(())
}

impl<T: Transport> NodeHandle<T> {
    /// Start a node. `attach` registers the inbound handler with the transport (the QUIC
    /// server loop or the simulated hub).
    pub async fn start(
        spec: NodeSpec,
        transport: Arc<T>,
        attach: impl FnOnce(Handler) -> Option<JoinHandle<()>>,
    ) -> Result<NodeHandle<T>, StartError> {
        std::fs::create_dir_all(&spec.data_dir)
            .map_err(|e| StartError::Storage(format!("{}: {e}", spec.data_dir.display())))?;
        let (inv_tx, inv_rx) = watch::channel((0, Vec::new()));
        let launcher = spec.launcher.unwrap_or_else(|| Arc::new(InProcessLauncher(ExecutorKind::Timed)));
        let pcfg = PlaneConfig {
            max_in_flight: spec.max_in_flight,
            routes_file: Some(spec.data_dir.join("routes.json")),
            ..PlaneConfig::default()
        };
        let local = LocalPlane::new(pcfg, launcher);
        let plane = DataPlane::new(&spec.name, local.clone(), transport.clone());
        let args = NodeArgs {
            gpus: spec.gpus,
            simulate_latency: spec.simulate_latency,
            state_file: Some(spec.data_dir.join("applied-plan.json")),
            inventory: inv_tx,
            segments: Some(local as Arc<dyn Segments>),
        };
        let (agent, _) = Actor::spawn(None, NodeAgent, args).await.map_err(|e| StartError::Startup(e.to_string()))?;
        let (raft, sm) = if spec.eligible {
            let (log, sm) =
                store::open(&spec.data_dir.join("raft.redb")).map_err(|e| StartError::Storage(e.to_string()))?;
            let cfg = raft_config(spec.timing.election_ms.0, spec.timing.election_ms.1);
            let cfg = Arc::new(cfg.validate().map_err(|e| StartError::Startup(e.to_string()))?);
            let raft = Raft::new(node_id(&spec.name), cfg, RaftNet::new(transport.clone()), log, sm.clone())
                .await
                .map_err(|e| StartError::Startup(e.to_string()))?;
            let voters: BTreeMap<u64, RaftNode> =
                spec.voters.iter().map(|(n, a)| (node_id(n), RaftNode { name: n.clone(), addr: a.clone() })).collect();
            match raft.initialize(voters).await {
                Ok(()) => {}
                // Already initialised (a restart, or a peer initialised first): the log holds
                // the membership.
                Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(StartError::Startup(format!("Raft initialisation: {e}"))),
            }
            (Some(raft), Some(sm))
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            voters: spec.voters.iter().map(|(n, _)| n.clone()).collect(),
            name: spec.name,
            addr: spec.addr,
            eligible: spec.eligible,
            seeds: spec.seeds,
            timing: spec.timing,
            planner: spec.planner,
            transport,
            raft,
            sm,
            agent,
            inventory: inv_rx,
            coordinator: Mutex::new(None),
            control: Mutex::new(None),
            origin: tokio::time::Instant::now(),
            observed: Mutex::new(BTreeMap::new()),
            kick: tokio::sync::Notify::new(),
            spawned: Mutex::new(tokio::task::JoinSet::new()),
            plane,
        });
        let h = shared.clone();
        let handler: Handler =
            Arc::new(move |peer, msg| -> BoxFuture<WireMessage> { Box::pin(h.clone().handle(peer, msg)) });
        let mut tasks = Vec::new();
        if let Some(t) = attach(handler) {
            tasks.push(t);
        }
        tasks.push(tokio::spawn(shared.clone().control_loop()));
        tasks.push(tokio::spawn(shared.clone().heartbeat_loop()));
        Ok(NodeHandle { shared, tasks })
    }

    /// Record profile points measured on this node (the data plane's run-time latencies);
    /// they travel to the coordinator with the next heartbeats.
    pub fn report_observed(&self, rows: Vec<ProfileRow>) {
        let mut o = lock(&self.shared.observed);
        for r in rows {
            o.insert((r.task.clone(), r.variant.clone(), r.mig_profile.clone(), r.mps, r.batch), r);
        }
    }

    /// The node's data plane (its inference frontend).
    pub fn plane(&self) -> Arc<DataPlane<T>> {
        self.shared.plane.clone()
    }

    /// Node id.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether this node is the coordinator now.
    pub fn is_coordinator(&self) -> bool {
        self.shared.is_leader()
    }

    /// Raft term and whether this node leads in it (None for non-eligible nodes).
    pub fn raft_view(&self) -> Option<(u64, bool)> {
        let r = self.shared.raft.as_ref()?;
        let m = r.metrics().borrow().clone();
        Some((m.current_term, m.current_leader == Some(node_id(&self.shared.name)) && m.state.is_leader()))
    }

    /// The committed state as this node has applied it (default for non-eligible nodes).
    pub fn committed(&self) -> ClusterState {
        self.shared.state()
    }

    /// Applied epoch and inventory as this node publishes them.
    pub fn applied(&self) -> (u64, Vec<GpuInventory>) {
        self.shared.inventory.borrow().clone()
    }

    /// Stop everything (the in-process equivalent of the process exiting).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        lock(&self.shared.spawned).abort_all();
        if let Some(r) = &self.shared.raft {
            let _ = r.shutdown().await;
        }
        if let Some(sm) = &self.shared.sm {
            sm.close();
        }
        self.shared.agent.stop(None);
    }
}
