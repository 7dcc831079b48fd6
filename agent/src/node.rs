//! The node runtime: wires the actor tree, Raft, the transport, the coordinator actor and
//! the data plane together. The same code runs in a `jigsaw agent` process (QUIC) and, many
//! nodes to a process, in the cluster simulation (in-memory transport, paused tokio clock).
//!
//! What runs in a node (the supervision tree is drawn in the crate docs):
//! * the **node agent** actor tree ([`crate::actors`]): applies plan pushes to the GPUs;
//! * the **coordinator actor** ([`crate::coordinator`], coordinator-eligible nodes only):
//!   follows Raft leadership and, while leading, runs the control loop;
//! * the **heartbeat task**: every `heartbeat_ms`, sends the node's inventory, applied epoch
//!   and observed profile points to the coordinator it knows (learnt from Raft on eligible
//!   nodes, from heartbeat replies elsewhere), falling back to its seed peers in turn; it
//!   owns the observed points ([`NodeHandle::report_observed`] sends it more);
//! * the **inbound router**: each request from a peer goes to its service:
//!   Raft RPCs to openraft, heartbeats to the coordinator actor (or a redirect), plan pushes
//!   through the push fence ([`crate::core::plan_fence`]) to the node agent, data-plane
//!   stages straight to the local plane, operator requests to the operator service;
//! * the **push view** ([`PushView`]: the coordinator and the committed epoch this node can
//!   verify): kept from Raft's metrics and state machine on eligible nodes, from accepted
//!   heartbeat replies on the others.
//!
//! Time comes from tokio's clock, so the simulation's paused clock drives everything.

use crate::actors::{Backend, NodeAgent, NodeArgs, NodeMsg, OnAccept};
pub use crate::coordinator::PlanFn;
use crate::coordinator::{CoordinatorArgs, CoordinatorHandle};
use crate::core::leader::HeartbeatVerdict;
pub use crate::core::plan_fence::PushView;
use crate::core::plan_fence::{check_push, Unverified};
use crate::dataplane::plane::{stage_handler, DataPlane, LocalPlane, PlaneConfig, Segments};
use crate::dataplane::worker::{ExecutorKind, InProcessLauncher, Launcher};
use crate::raft::store::{self, StateMachine};
use crate::raft::{node_id, raft_config, serve_rpc, Raft, RaftNet, RaftNode};
use crate::transport::net::{BoxFuture, Handler, Peer, Transport};
use jigsaw_coordinator::cluster_plan::plan_cluster;
use jigsaw_coordinator::{Clock, HighsSolver, PlannerConfig};
use jigsaw_protocol::cluster::{AppEntry, ClusterCommand, ClusterState, GpuInventory, InvalidApp, ParsedApp};
use jigsaw_protocol::wire::{
    self, ApplyOutcome, ClientReply, ClientRequest, ClusterStatus, Heartbeat, Role, StatusCursor, StatusPages,
    WireMessage,
};
use jigsaw_protocol::ProfileRow;
use ractor::{Actor, ActorRef};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
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

/// The real planner (HiGHS, wall-clock time limit). `threads` comes from
/// `[planner].threads`; callers default it to 1 so a solve leaves the node's other cores to
/// the runtime (HiGHS's own default takes every core).
pub fn highs_planner(cfg: PlannerConfig, threads: Option<u32>) -> PlanFn {
    Arc::new(move |state, epoch, live, observed| {
        let clock = WallClock::new();
        plan_cluster(state, epoch, live, observed, &cfg, &HighsSolver { threads }, &clock as &dyn Clock)
    })
}

/// Wall clock for the planner (its time limit), started when created.
pub struct WallClock(std::time::Instant);

impl WallClock {
    /// Start now.
    pub fn new() -> Self {
        WallClock(std::time::Instant::now())
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for WallClock {
    fn now_s(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
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
    /// The control loop's knobs when this node coordinates (demand following, the re-plan
    /// policy; `push_timeout_ms` comes from `timing`).
    pub control: jigsaw_coordinator::control::ControlConfig,
}

/// (task, variant, MIG profile, MPS level, batch) of an observed profile point.
type ObservedKey = (String, String, String, u8, u32);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be created: fix the path or permissions.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Raft store could not be opened.
    #[error("Raft store: {0}")]
    Store(#[from] Box<openraft::StorageError<u64>>),
    /// An actor failed to start.
    #[error("actor start: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    /// Raft's configuration is invalid.
    #[error("Raft config: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    /// Raft failed to start or initialise.
    #[error("Raft startup: {0}")]
    Raft(String),
}

/// Check an app registration at the edge: [`AppEntry::parse`], and the size of the Raft
/// log entry that would replicate it ([`crate::raft::check_entry_fits`]).
pub fn validate_app(entry: &AppEntry) -> Result<ParsedApp, InvalidApp> {
    let parsed = entry.parse()?;
    crate::raft::check_entry_fits(&entry.name, &ClusterCommand::PutApp(entry.clone()))?;
    Ok(parsed)
}

/// Encoded statuses kept for paging, newest last: (token, bytes, when encoded).
type StatusEncodings = std::collections::VecDeque<(u64, Arc<Vec<u8>>, tokio::time::Instant)>;
type StatusCache = std::sync::Mutex<StatusEncodings>;

/// How many encoded statuses the coordinator keeps for clients fetching their pages, and for
/// how long.
const STATUS_CACHE: usize = 4;
const STATUS_CACHE_FOR: Duration = Duration::from_secs(60);

/// The coordinator as this node knows it (name, address), shared by the tasks that learn it.
type Hint = Arc<watch::Sender<Option<(String, String)>>>;

/// Who may push plans to this node, and up to which epoch (see [`crate::core::plan_fence`]).
type View = Arc<watch::Sender<PushView>>;

/// How long a plan push this node cannot verify yet is held before it is refused: a few
/// heartbeat periods (the view catches up within one Raft heartbeat on a voter, one
/// heartbeat round trip elsewhere), and well inside the coordinator's push timeout.
fn hold_time(t: Timing) -> Duration {
    Duration::from_millis((4 * t.heartbeat_ms).max(500).min(t.push_timeout_ms / 2))
}

/// Keep `view` at what this voter's Raft knows: the current leader, and the epoch of the
/// plan its state machine applied (committed entries only).
async fn follow_raft(raft: Raft, sm: StateMachine, view: View) {
    let mut metrics = raft.metrics();
    loop {
        let next = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            let leader = m.current_leader.and_then(|l| membership.get_node(&l)).map(|n| n.name.clone());
            PushView { leader, committed: sm.epoch() }
        };
        view.send_if_modified(|v| std::mem::replace(v, next.clone()) != next);
        if metrics.changed().await.is_err() {
            return; // Raft shut down
        }
    }
}

/// The operator service: `jigsaw status` and app registration, answered by the
/// coordinator (others redirect).
struct Operator {
    name: String,
    raft: Option<Raft>,
    sm: Option<StateMachine>,
    coordinator: Option<CoordinatorHandle>,
    hint: Hint,
    /// Statuses too large for one frame, kept while clients fetch their pages.
    pages: StatusCache,
}

impl Operator {
    fn state(&self) -> ClusterState {
        self.sm.as_ref().map(|s| s.snapshot_state().state).unwrap_or_default()
    }

    fn redirect(&self) -> ClientReply {
        ClientReply::NotCoordinator { coordinator: self.hint.borrow().clone() }
    }

    /// The cluster status, when this node coordinates (`None`: ask the coordinator).
    async fn status(&self) -> Option<ClusterStatus> {
        let (Some(raft), Some(coordinator)) = (&self.raft, &self.coordinator) else { return None };
        coordinator.leading()?;
        let Ok(Some((nodes, observed, demand))) = coordinator.status().await else { return None };
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.name.clone())).collect();
        let mut state = self.state();
        // Request ids are the state machine's bookkeeping, not status.
        state.requests.clear();
        Some(ClusterStatus {
            coordinator: self.name.clone(),
            term: m.current_term,
            voters,
            state,
            nodes,
            observed,
            demand,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, StatusEncodings> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status as a reply that fits a frame: whole when it encodes to at most
    /// [`wire::STATUS_PAGE`] bytes, else its first page (the encoding is kept for the rest).
    async fn status_reply(&self, page: Option<StatusCursor>) -> ClientReply {
        if let Some(StatusCursor { token, offset }) = page {
            let now = tokio::time::Instant::now();
            let mut cache = self.cache();
            cache.retain(|(_, _, at)| now.duration_since(*at) < STATUS_CACHE_FOR);
            let found = cache.iter().find(|(t, _, _)| *t == token).map(|(_, b, _)| b.clone());
            drop(cache);
            return match found.and_then(|bytes| wire::status_page(token, &bytes, offset)) {
                Some(p) => ClientReply::StatusPage(p),
                None => ClientReply::Invalid {
                    message: format!("status page {token}@{offset} is gone (expired or past the end); ask again"),
                },
            };
        }
        let Some(status) = self.status().await else { return self.redirect() };
        let bytes = match wire::encode_status(&status) {
            Ok(b) => b,
            Err(e) => return ClientReply::Invalid { message: format!("the status does not encode: {e}") },
        };
        if bytes.len() <= wire::STATUS_PAGE {
            return ClientReply::Status(Box::new(status));
        }
        let token = jigsaw_protocol::cluster::RequestId::fresh();
        let token = token.client ^ token.seq.rotate_left(32);
        let bytes = Arc::new(bytes);
        {
            let mut cache = self.cache();
            if cache.len() >= STATUS_CACHE {
                cache.pop_front();
            }
            cache.push_back((token, bytes.clone(), tokio::time::Instant::now()));
        }
        match wire::status_page(token, &bytes, 0) {
            Some(p) => ClientReply::StatusPage(p),
            None => ClientReply::Invalid { message: "empty status".into() },
        }
    }

    async fn serve(&self, req: ClientRequest) -> ClientReply {
        let (Some(raft), Some(coordinator)) = (&self.raft, &self.coordinator) else { return self.redirect() };
        if coordinator.leading().is_none() {
            return self.redirect();
        }
        let (id, cmd) = match req {
            ClientRequest::Status { page } => return self.status_reply(page).await,
            ClientRequest::RegisterApp { id, entry } => match validate_app(&entry) {
                Ok(_) => (id, ClusterCommand::PutApp(entry)),
                Err(e) => return ClientReply::Invalid { message: e.to_string() },
            },
            ClientRequest::RemoveApp { id, name } => (id, ClusterCommand::RemoveApp { name }),
            ClientRequest::SetConfig { id, config } => match validate_config(&config) {
                Ok(()) => (id, ClusterCommand::SetConfig(config)),
                Err(message) => return ClientReply::Invalid { message },
            },
        };
        // Applied at most once per request id: a retry (its first reply was lost) gets the
        // first outcome.
        match raft.client_write(ClusterCommand::Once { id, command: Box::new(cmd) }).await {
            Ok(r) if r.data.applied => {
                coordinator.kick();
                ClientReply::Done { message: r.data.message, epoch: r.data.epoch }
            }
            Ok(r) => ClientReply::Invalid { message: r.data.message },
            Err(e) => match e.forward_to_leader() {
                Some(f) => ClientReply::NotCoordinator {
                    coordinator: f.leader_node.as_ref().map(|n| (n.name.clone(), n.addr.clone())),
                },
                None => ClientReply::NotCoordinator { coordinator: None },
            },
        }
    }
}

/// Check operator-supplied cluster settings: a known search space, a failure timeout of
/// 0.5 s to 10 min.
fn validate_config(c: &jigsaw_protocol::cluster::ClusterConfig) -> Result<(), String> {
    c.space.parse::<jigsaw_coordinator::spaces::SearchSpace>().map_err(|e| format!("space: {e}"))?;
    if !(500..=600_000).contains(&c.dead_after_ms) {
        return Err(format!("dead_after_ms must be in 500..=600000, not {}", c.dead_after_ms));
    }
    Ok(())
}

/// Fetch the cluster status from node `to` (the coordinator): one request when it fits a
/// frame, else page by page ([`StatusPages`]; started over, up to three times, when the
/// coordinator no longer has the pages). `Err` carries the reply or failure that stopped it
/// (a redirect, for one).
pub async fn fetch_status<T: Transport>(
    transport: &T,
    to: &str,
    addr: &str,
    timeout: Duration,
) -> Result<ClusterStatus, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let mut pages = StatusPages::default();
        loop {
            let req = WireMessage::Client(pages.next_request());
            match transport.request(to, addr, req, timeout).await {
                Ok(WireMessage::ClientReply(ClientReply::Status(s))) => return Ok(*s),
                Ok(WireMessage::ClientReply(ClientReply::StatusPage(p))) => match pages.add(p) {
                    Ok(Some(s)) => return Ok(s),
                    Ok(None) => continue,
                    Err(e) => last = e.to_string(),
                },
                Ok(WireMessage::ClientReply(ClientReply::Invalid { message })) => last = message,
                Ok(other) => return Err(format!("{to}: unexpected reply {other:?}")),
                Err(e) => return Err(format!("{to}: {e}")),
            }
            break;
        }
    }
    Err(format!("{to}: status pages: {last}"))
}

/// The status page's source: the local coordinator's answer, or the coordinator's over the
/// transport.
fn status_source<T: Transport>(
    operator: Arc<Operator>,
    transport: Arc<T>,
    hint: Hint,
    timing: Timing,
) -> crate::dataplane::plane::StatusSource {
    Arc::new(move || {
        let (operator, transport, hint) = (operator.clone(), transport.clone(), hint.clone());
        Box::pin(async move {
            if let Some(s) = operator.status().await {
                return Some(s);
            }
            let target = hint.borrow().clone()?;
            let timeout = Duration::from_millis(timing.heartbeat_ms * 3);
            fetch_status(transport.as_ref(), &target.0, &target.1, timeout).await.ok()
        })
    })
}

/// Routes each inbound request to the service that owns it.
struct Router {
    name: String,
    /// This node's address, as peers dial it (the hint in an accepted heartbeat's reply).
    addr: String,
    /// Voter names: only they may send Raft RPCs or push plans.
    voters: Vec<String>,
    raft: Option<Raft>,
    agent: ActorRef<NodeMsg>,
    plane: Arc<LocalPlane>,
    stage: Handler,
    operator: Arc<Operator>,
    /// Who may push plans, up to which epoch.
    view: View,
    /// Wakes the heartbeat task for a beat now (a non-voter refreshing its view).
    beat_now: Arc<Notify>,
    /// How long an unverifiable push is held.
    hold: Duration,
}

impl Router {
    /// The push fence: wait (at most `hold`) until this node can verify a push of `epoch`
    /// from `sender`; nothing is persisted or changed meanwhile.
    async fn fence(&self, sender: &str, epoch: u64) -> Result<(), Unverified> {
        let mut view = self.view.subscribe();
        let deadline = tokio::time::Instant::now() + self.hold;
        loop {
            let why = match check_push(&view.borrow_and_update(), sender, epoch) {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if self.raft.is_none() {
                self.beat_now.notify_one(); // a non-voter learns its view from heartbeat replies
            }
            match tokio::time::timeout_at(deadline, view.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(why),
            }
        }
    }

    /// The answer to a heartbeat or a leave: whether it was recorded, and who coordinates.
    fn reply_to_member(&self, accepted: bool) -> WireMessage {
        let coordinator =
            if accepted { Some((self.name.clone(), self.addr.clone())) } else { self.operator.hint.borrow().clone() };
        WireMessage::HeartbeatReply { accepted, coordinator, epoch: self.operator.state().epoch }
    }

    async fn handle(self: Arc<Self>, peer: Peer, msg: WireMessage) -> WireMessage {
        if let Err(refused) = authorize(&peer, &msg) {
            return *refused;
        }
        match msg {
            WireMessage::Raft { .. } | WireMessage::PlanPush { .. } if !self.voters.iter().any(|v| peer.is(v)) => {
                forbidden(format!(
                    "only coordinator-eligible nodes may send Raft RPCs or plans, and `{}` is not one",
                    peer.name()
                ))
            }
            WireMessage::Raft { rpc, body } => match &self.raft {
                Some(r) => serve_rpc(r, rpc, &body).await,
                None => {
                    WireMessage::Error { message: format!("{} is not coordinator-eligible", self.name), retry: false }
                }
            },
            WireMessage::Heartbeat(hb) => {
                if !peer.is(&hb.node) {
                    return forbidden(format!(
                        "heartbeat claims node `{}` but the certificate is node `{}`'s",
                        hb.node,
                        peer.name()
                    ));
                }
                let verdict = match &self.operator.coordinator {
                    Some(c) => c.heartbeat(hb).await.unwrap_or(HeartbeatVerdict::NotLeading),
                    None => HeartbeatVerdict::NotLeading,
                };
                match verdict {
                    HeartbeatVerdict::Refused(e) => WireMessage::Error { message: e.to_string(), retry: false },
                    v => self.reply_to_member(v.recorded()),
                }
            }
            msg @ WireMessage::Stage(_) => (self.stage)(peer, msg).await,
            WireMessage::Leave { node } => {
                if !peer.is(&node) {
                    return forbidden(format!(
                        "leave names node `{node}` but the certificate is node `{}`'s",
                        peer.name()
                    ));
                }
                let accepted = match &self.operator.coordinator {
                    Some(c) if c.leading().is_some() => c.leave(&node).await.unwrap_or(false),
                    _ => false,
                };
                self.reply_to_member(accepted)
            }
            WireMessage::PlanPush { epoch, coordinator, gpus, routes, phase } => {
                if !peer.is(&coordinator) || !self.voters.contains(&coordinator) {
                    return forbidden(format!(
                        "plan push claims coordinator `{coordinator}` but the certificate is node `{}`'s",
                        peer.name()
                    ));
                }
                if let Err(why) = self.fence(&coordinator, epoch).await {
                    tracing::warn!(node = %self.name, "plan push refused: {why}");
                    let outcome = ApplyOutcome::Rejected { reason: why.to_string() };
                    return WireMessage::PlanReport { node: self.name.clone(), epoch, outcome };
                }
                // The routes of the epoch are installed (and persisted) once the node agent
                // has accepted the push, before any step runs, so segments the plan creates
                // find their app's description and a refused push leaves them alone.
                // In a transition (docs/transitions.md) the make and break phases only describe
                // the epoch's instances to the local pools; routes switch in the routes phase.
                let plane = self.plane.clone();
                let on_accept = (routes.epoch == epoch).then(|| {
                    OnAccept::new(move || match phase {
                        wire::PushPhase::Make | wire::PushPhase::Break => plane.prepare_routes(Arc::new(routes)),
                        wire::PushPhase::All | wire::PushPhase::Routes => plane.set_routes(routes),
                    })
                });
                match ractor::call!(self.agent, |reply| NodeMsg::Push { epoch, gpus, phase, on_accept, reply }) {
                    Ok(outcome) => WireMessage::PlanReport { node: self.name.clone(), epoch, outcome },
                    Err(e) => WireMessage::Error { message: format!("node agent unavailable: {e}"), retry: true },
                }
            }
            WireMessage::Client(req) => WireMessage::ClientReply(self.operator.serve(req).await),
            other => WireMessage::Error { message: format!("unexpected request {other:?}"), retry: false },
        }
    }
}

/// A refusal of something only a node certificate may send.
fn forbidden(message: String) -> WireMessage {
    WireMessage::Forbidden { needed: Role::Node, message }
}

/// The role a request needs from its sender's certificate:
///
/// * operator commands that change the cluster (`RegisterApp`, `RemoveApp`, `SetConfig`):
///   admin;
/// * `Status`, the one read-only operator query: admin or node (every node's status page
///   asks the coordinator for it with the node's own certificate);
/// * everything a node sends another (heartbeats, leaves, plan pushes, Raft RPCs,
///   data-plane stages, and anything else): node. Which node may send it (a heartbeat's
///   own name, a voter for Raft and plans) is checked after this, by the handler.
pub fn needed_role(msg: &WireMessage) -> Option<Role> {
    match msg {
        WireMessage::Client(ClientRequest::Status { .. }) => None,
        WireMessage::Client(
            ClientRequest::RegisterApp { .. } | ClientRequest::RemoveApp { .. } | ClientRequest::SetConfig { .. },
        ) => Some(Role::Admin),
        _ => Some(Role::Node),
    }
}

/// Refuse `msg` (with [`WireMessage::Forbidden`]) when `peer`'s role may not send it
/// ([`needed_role`]).
fn authorize(peer: &Peer, msg: &WireMessage) -> Result<(), Box<WireMessage>> {
    match needed_role(msg) {
        Some(needed) if needed != peer.role() => {
            let what = match msg {
                WireMessage::Client(ClientRequest::RegisterApp { .. }) => "registering an app",
                WireMessage::Client(ClientRequest::RemoveApp { .. }) => "removing an app",
                WireMessage::Client(ClientRequest::SetConfig { .. }) => "changing the cluster settings",
                WireMessage::Heartbeat(_) => "a heartbeat",
                WireMessage::Leave { .. } => "a leave",
                WireMessage::PlanPush { .. } => "a plan push",
                WireMessage::Raft { .. } => "a Raft RPC",
                WireMessage::Stage(_) => "a data-plane stage",
                _ => "this request",
            };
            Err(Box::new(WireMessage::Forbidden {
                needed,
                message: format!(
                    "{what} needs a certificate with role {needed}; `{}` presented one with role {}",
                    peer.name(),
                    peer.role()
                ),
            }))
        }
        _ => Ok(()),
    }
}

/// What the heartbeat task last learnt about this node's standing in the cluster; a new
/// value is published after every heartbeat (so its arrival also proves the task alive,
/// which is what a service manager's watchdog should see).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Heartbeats sent so far.
    pub beats: u64,
    /// The coordinator accepted this node's latest heartbeat (this node is a member).
    pub joined: bool,
    /// The coordinator that accepted it (this node's own name when it coordinates).
    pub coordinator: Option<String>,
    /// The plan epoch this node has applied.
    pub applied_epoch: u64,
    /// The committed plan epoch, as the coordinator said.
    pub committed_epoch: u64,
}

impl Health {
    /// Joined, with a coordinator, and the current plan applied: ready to serve.
    pub fn ready(&self) -> bool {
        self.joined && self.coordinator.is_some() && self.applied_epoch >= self.committed_epoch
    }
}

/// The heartbeat task: owns the observed profile points and the seed rotation.
struct Heartbeats<T: Transport> {
    name: String,
    addr: String,
    eligible: bool,
    seeds: Vec<(String, String)>,
    heartbeat_ms: u64,
    transport: Arc<T>,
    inventory: watch::Receiver<(u64, Vec<GpuInventory>)>,
    plane: Arc<LocalPlane>,
    coordinator: Option<CoordinatorHandle>,
    hint: Hint,
    reported: mpsc::UnboundedReceiver<Vec<ProfileRow>>,
    observed: BTreeMap<ObservedKey, ProfileRow>,
    sm: Option<StateMachine>,
    health: watch::Sender<Health>,
    /// The push view, which a non-voter learns from accepted replies (voters follow Raft).
    view: View,
    /// A beat now, not at the next period (a held push wants a fresh view).
    beat_now: Arc<Notify>,
    /// The last refusal logged (logged once, not every period).
    refused: Option<String>,
}

impl<T: Transport> Heartbeats<T> {
    fn record(&mut self, rows: Vec<ProfileRow>) {
        for r in rows {
            self.observed.insert((r.task.clone(), r.variant.clone(), r.mig_profile.clone(), r.mps, r.batch), r);
        }
    }

    fn heartbeat(&mut self) -> Heartbeat {
        let (applied_epoch, gpus) = self.inventory.borrow().clone();
        self.plane.metrics().plan_epoch.set(applied_epoch as i64);
        while let Ok(rows) = self.reported.try_recv() {
            self.record(rows);
        }
        // Run-time refinement: latencies the local instances observed travel with heartbeats.
        let seen = self.plane.observed(20, |uuid| gpus.iter().find(|g| g.uuid == uuid).map(|g| g.model));
        self.record(seen);
        Heartbeat {
            node: self.name.clone(),
            addr: self.addr.clone(),
            eligible: self.eligible,
            gpus,
            applied_epoch,
            observed: self.observed.values().cloned().collect(),
            demand: self.plane.demand_rows(),
        }
    }

    async fn run(mut self) {
        let mut every = tokio::time::interval(Duration::from_millis(self.heartbeat_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_seed = 0usize;
        let mut beats = 0u64;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.beat_now.notified() => {}
            }
            let hb = self.heartbeat();
            let applied_epoch = hb.applied_epoch;
            beats += 1;
            let (joined, coordinator, committed_epoch) = self.beat(hb, &mut next_seed).await;
            self.health.send_replace(Health { beats, joined, coordinator, applied_epoch, committed_epoch });
        }
    }

    /// Send one heartbeat: to the local coordinator actor when this node leads, else to the
    /// coordinator it knows or the next seed. Returns (accepted, by whom, committed epoch).
    async fn beat(&mut self, hb: Heartbeat, next_seed: &mut usize) -> (bool, Option<String>, u64) {
        if let Some(c) = &self.coordinator {
            if c.leading().is_some() {
                match c.heartbeat(hb.clone()).await {
                    Ok(HeartbeatVerdict::Recorded(_)) => {
                        let committed = self.sm.as_ref().map_or(0, StateMachine::epoch);
                        return (true, Some(self.name.clone()), committed);
                    }
                    Ok(HeartbeatVerdict::Refused(e)) => self.log_refusal(e.to_string()),
                    Ok(HeartbeatVerdict::NotLeading) | Err(_) => {}
                }
            }
        }
        let hinted = self.hint.borrow().clone();
        let target = match hinted {
            Some(t) if t.0 != self.name => t,
            _ if self.seeds.is_empty() => return (false, None, 0),
            _ => {
                *next_seed = (*next_seed + 1) % self.seeds.len();
                self.seeds[*next_seed].clone()
            }
        };
        let timeout = Duration::from_millis(self.heartbeat_ms * 3);
        let (hint, outcome) =
            match self.transport.request(&target.0, &target.1, WireMessage::Heartbeat(hb), timeout).await {
                // Accepted: keep it; redirected: follow it; no hint: try the next seed.
                Ok(WireMessage::HeartbeatReply { accepted: true, epoch, .. }) => {
                    let name = target.0.clone();
                    if !self.eligible {
                        // A non-voter's push view: the coordinator that took its heartbeat
                        // and the committed epoch it reported (voters follow their Raft).
                        let next = PushView { leader: Some(name.clone()), committed: epoch };
                        self.view.send_if_modified(|v| std::mem::replace(v, next.clone()) != next);
                    }
                    (Some(target), (true, Some(name), epoch))
                }
                Ok(WireMessage::HeartbeatReply { coordinator, epoch, .. }) => {
                    (coordinator.filter(|c| c.0 != self.name && c.0 != target.0), (false, None, epoch))
                }
                Ok(WireMessage::Error { message, .. }) => {
                    self.log_refusal(format!("{}: {message}", target.0));
                    (None, (false, None, 0))
                }
                Ok(_) | Err(_) => (None, (false, None, 0)),
            };
        self.hint.send_replace(hint);
        outcome
    }

    /// A heartbeat was refused (the coordinator's edge check): say so, once per reason.
    fn log_refusal(&mut self, why: String) {
        if self.refused.as_ref() != Some(&why) {
            tracing::error!(node = %self.name, "heartbeat refused by {why}");
            self.refused = Some(why);
        }
    }
}

/// A running node.
pub struct NodeHandle<T: Transport> {
    name: String,
    raft: Option<Raft>,
    sm: Option<StateMachine>,
    agent: ActorRef<NodeMsg>,
    coordinator: Option<CoordinatorHandle>,
    inventory: watch::Receiver<(u64, Vec<GpuInventory>)>,
    report: mpsc::UnboundedSender<Vec<ProfileRow>>,
    plane: Arc<DataPlane<T>>,
    health: watch::Receiver<Health>,
    tasks: Vec<JoinHandle<()>>,
    heartbeat_task: Option<JoinHandle<()>>,
    transport: Arc<T>,
    hint: Hint,
    seeds: Vec<(String, String)>,
    timing: Timing,
}

/// What [`NodeHandle::drain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// The coordinator recorded the leave (else the node is marked down only when its
    /// heartbeats time out).
    pub announced: bool,
    /// A plan committed after the leave (the one without this node) was seen.
    pub replanned: bool,
    /// Requests still unanswered when the wait ended (0 unless `max_wait` ran out).
    pub unanswered: u64,
    /// How long the drain took.
    pub waited: Duration,
}

/// A draining node waits until no stage request arrived for this long (other frontends have
/// switched to the routes without it).
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// How long a draining node waits for the re-plan without it before it goes by local
/// quiescence alone.
const DRAIN_REPLAN_WAIT: Duration = Duration::from_secs(5);

impl<T: Transport> NodeHandle<T> {
    /// Start a node. `attach` registers the inbound handler with the transport (the QUIC
    /// server loop or the simulated hub).
    pub async fn start(
        spec: NodeSpec,
        transport: Arc<T>,
        attach: impl FnOnce(Handler) -> Option<JoinHandle<()>>,
    ) -> Result<NodeHandle<T>, StartError> {
        std::fs::create_dir_all(&spec.data_dir)
            .map_err(|source| StartError::DataDir { path: spec.data_dir.clone(), source })?;
        let origin = tokio::time::Instant::now();
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
            segments: Some(local.clone() as Arc<dyn Segments>),
            metrics: Some(local.metrics().clone()),
        };
        let (agent, _) = Actor::spawn(None, NodeAgent, args).await?;
        let hint: Hint = Arc::new(watch::channel(None).0);
        let view: View = Arc::new(watch::channel(PushView::default()).0);
        let beat_now = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let (raft, sm, coordinator) = if spec.eligible {
            let (log, sm) = store::open(&spec.data_dir.join("raft.redb")).map_err(Box::new)?;
            let cfg = Arc::new(raft_config(spec.timing.election_ms.0, spec.timing.election_ms.1).validate()?);
            let raft = Raft::new(node_id(&spec.name), cfg, RaftNet::new(transport.clone()), log, sm.clone())
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            let voters: BTreeMap<u64, RaftNode> =
                spec.voters.iter().map(|(n, a)| (node_id(n), RaftNode { name: n.clone(), addr: a.clone() })).collect();
            match raft.initialize(voters).await {
                Ok(()) => {}
                // Already initialised (a restart, or a peer initialised first): the log holds
                // the membership.
                Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(StartError::Raft(format!("initialisation: {e}"))),
            }
            let (leading_tx, leading_rx) = watch::channel(None);
            let cargs = CoordinatorArgs {
                name: spec.name.clone(),
                tick_ms: spec.timing.tick_ms,
                election_min_ms: spec.timing.election_ms.0,
                push_timeout_ms: spec.timing.push_timeout_ms,
                control: spec.control,
                planner: spec.planner,
                transport: transport.clone(),
                raft: raft.clone(),
                sm: sm.clone(),
                leading: leading_tx,
                hint: hint.clone(),
                origin,
                metrics: local.metrics().clone(),
            };
            let coordinator = CoordinatorHandle::start(cargs, leading_rx).await?;
            tasks.push(tokio::spawn(follow_raft(raft.clone(), sm.clone(), view.clone())));
            (Some(raft), Some(sm), Some(coordinator))
        } else {
            (None, None, None)
        };
        let operator = Operator {
            name: spec.name.clone(),
            raft: raft.clone(),
            sm: sm.clone(),
            coordinator: coordinator.clone(),
            hint: hint.clone(),
            pages: StatusCache::default(),
        };
        let operator = Arc::new(operator);
        plane.set_status_source(status_source(operator.clone(), transport.clone(), hint.clone(), spec.timing));
        let router = Arc::new(Router {
            name: spec.name.clone(),
            addr: spec.addr.clone(),
            voters: spec.voters.iter().map(|(n, _)| n.clone()).collect(),
            raft: raft.clone(),
            agent: agent.clone(),
            plane: local.clone(),
            stage: stage_handler(local.clone()),
            operator,
            view: view.clone(),
            beat_now: beat_now.clone(),
            hold: hold_time(spec.timing),
        });
        let handler: Handler =
            Arc::new(move |peer, msg| -> BoxFuture<WireMessage> { Box::pin(router.clone().handle(peer, msg)) });
        if let Some(t) = attach(handler) {
            tasks.push(t);
        }
        let (report, reported) = mpsc::unbounded_channel();
        let (health_tx, health) = watch::channel(Health::default());
        let (router_transport, router_hint, router_seeds) = (transport.clone(), hint.clone(), spec.seeds.clone());
        let heartbeats = Heartbeats {
            name: spec.name.clone(),
            addr: spec.addr,
            eligible: spec.eligible,
            seeds: spec.seeds,
            heartbeat_ms: spec.timing.heartbeat_ms,
            transport,
            inventory: inv_rx.clone(),
            plane: local,
            coordinator: coordinator.clone(),
            hint,
            reported,
            observed: BTreeMap::new(),
            sm: sm.clone(),
            health: health_tx,
            view,
            beat_now,
            refused: None,
        };
        let heartbeat_task = Some(tokio::spawn(heartbeats.run()));
        Ok(NodeHandle {
            name: spec.name,
            raft,
            sm,
            agent,
            coordinator,
            inventory: inv_rx,
            report,
            plane,
            health,
            tasks,
            heartbeat_task,
            transport: router_transport,
            hint: router_hint,
            seeds: router_seeds,
            timing: spec.timing,
        })
    }

    /// Record profile points measured on this node (the data plane's run-time latencies);
    /// they travel to the coordinator with the next heartbeats.
    pub fn report_observed(&self, rows: Vec<ProfileRow>) {
        let _ = self.report.send(rows);
    }

    /// The node's data plane (its inference frontend).
    pub fn plane(&self) -> Arc<DataPlane<T>> {
        self.plane.clone()
    }

    /// The node's health as its heartbeat task last saw it; changes after every heartbeat.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Node id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this node is the coordinator now.
    pub fn is_coordinator(&self) -> bool {
        self.coordinator.as_ref().is_some_and(|c| c.leading().is_some())
    }

    /// Raft term and whether this node leads in it (None for non-eligible nodes).
    pub fn raft_view(&self) -> Option<(u64, bool)> {
        let r = self.raft.as_ref()?;
        let m = r.metrics().borrow().clone();
        Some((m.current_term, m.current_leader == Some(node_id(&self.name)) && m.state.is_leader()))
    }

    /// The committed state as this node has applied it (default for non-eligible nodes).
    pub fn committed(&self) -> ClusterState {
        self.sm.as_ref().map(|s| s.snapshot_state().state).unwrap_or_default()
    }

    /// Applied epoch and inventory as this node publishes them.
    pub fn applied(&self) -> (u64, Vec<GpuInventory>) {
        self.inventory.borrow().clone()
    }

    /// Leave the cluster gracefully, before [`NodeHandle::stop`]: stop admitting requests
    /// (503 `unavailable`), stop heartbeating, tell the coordinator (which marks this node
    /// down at once and re-plans without it, so routes move away), then wait until every
    /// admitted request is answered and stage requests from other frontends have stopped
    /// arriving, for at most `max_wait`.
    pub async fn drain(&mut self, max_wait: Duration) -> DrainReport {
        let started = tokio::time::Instant::now();
        self.plane.start_draining();
        if let Some(h) = self.heartbeat_task.take() {
            h.abort();
        }
        let first = self.announce_leave().await;
        let announced = first.is_some();
        let mut replanned = false;
        let mut last_stages = self.plane.local().stages_taken();
        let mut quiet_since = tokio::time::Instant::now();
        let mut next_ask = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if let (Some(e0), false) = (first, replanned) {
                if now >= next_ask {
                    next_ask = now + Duration::from_millis(200);
                    replanned = self.announce_leave().await.is_some_and(|e| e > e0);
                }
            }
            let stages = self.plane.local().stages_taken();
            if stages != last_stages {
                last_stages = stages;
                quiet_since = now;
            }
            let unanswered = self.plane.in_flight() as u64 + self.plane.local().pending();
            // Without a re-plan in sight (the coordinator itself stopping, say), local
            // quiescence alone decides after a while.
            let replan_done = replanned || !announced || now.duration_since(started) >= DRAIN_REPLAN_WAIT;
            let settled = replan_done && now.duration_since(quiet_since) >= DRAIN_QUIET;
            if (unanswered == 0 && settled) || now.duration_since(started) >= max_wait {
                return DrainReport { announced, replanned, unanswered, waited: now.duration_since(started) };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tell the coordinator this node leaves; the committed epoch it reported, if it
    /// recorded the leave.
    async fn announce_leave(&self) -> Option<u64> {
        if let Some(c) = self.coordinator.as_ref().filter(|c| c.leading().is_some()) {
            return c.leave(&self.name).await.unwrap_or(false).then(|| self.committed().epoch);
        }
        let hinted = self.hint.borrow().clone();
        let mut targets: Vec<(String, String)> = hinted.into_iter().collect();
        targets.extend(self.seeds.iter().cloned());
        let timeout = Duration::from_millis(self.timing.heartbeat_ms * 3);
        for (name, addr) in targets.iter().filter(|t| t.0 != self.name) {
            let msg = WireMessage::Leave { node: self.name.clone() };
            match self.transport.request(name, addr, msg, timeout).await {
                Ok(WireMessage::HeartbeatReply { accepted: true, epoch, .. }) => return Some(epoch),
                Ok(WireMessage::HeartbeatReply { coordinator: Some((n, a)), .. }) if n != self.name => {
                    let msg = WireMessage::Leave { node: self.name.clone() };
                    if let Ok(WireMessage::HeartbeatReply { accepted: true, epoch, .. }) =
                        self.transport.request(&n, &a, msg, timeout).await
                    {
                        return Some(epoch);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Stop everything (the in-process equivalent of the process exiting).
    pub async fn stop(self) {
        if let Some(h) = &self.heartbeat_task {
            h.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(c) = &self.coordinator {
            c.stop().await;
        }
        if let Some(r) = &self.raft {
            let _ = r.shutdown().await;
        }
        if let Some(sm) = &self.sm {
            sm.close();
        }
        self.agent.stop(None);
    }
}
