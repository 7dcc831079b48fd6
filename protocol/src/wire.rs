//! The framed wire envelope.
//!
//! ```text
//! +---------+-------------+--------------+------------------------+
//! | "JGSW"  | version u16 | body_len u32 | body (bincode 2, std)  |
//! | 4 bytes | LE          | LE           | body_len bytes         |
//! +---------+-------------+--------------+------------------------+
//! ```
//!
//! The receiver checks the magic, then the version (an unknown version is a typed
//! [`FrameError::Version`] so a peer can answer "upgrade me" rather than "garbage"), then the
//! length against [`MAX_FRAME`] *before* reading or allocating the body, then decodes the body
//! with the same cap as a bincode limit. [`decode_frame`] never panics on any input (fuzzed
//! in CI; see `protocol/fuzz`). Design note: `docs/protocol.md`.

use crate::cluster::{AppEntry, ClusterState, GpuInventory, RequestId};
use crate::plan::InstancePlan;
use crate::profile::ProfileRow;
use crate::route::{RoutingTable, StageReply, StageRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"JGSW";
/// Current wire version.
pub const VERSION: u16 = 7;
/// Header length in bytes.
pub const HEADER_LEN: usize = 10;
/// Largest body accepted, bytes.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A message between jigsaw processes. Variants are only ever appended.
///
/// Every exchange is one request frame and one reply frame on its own QUIC stream. The
/// sender's identity is its TLS client certificate; a node id named inside a message must
/// match it (checked by the receiver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireMessage {
    /// A node introduces itself.
    Hello {
        /// Node id.
        node: String,
        /// Highest plan epoch the node has applied.
        applied_epoch: u64,
    },
    /// The coordinator's plan for one node, with its fencing epoch. Reply: [`WireMessage::PlanReport`].
    PlanPush {
        /// Strictly increasing plan epoch.
        epoch: u64,
        /// The pushing coordinator (for logs and fencing diagnostics).
        coordinator: String,
        /// Target instances per local GPU UUID; GPUs not named get an empty target.
        gpus: BTreeMap<String, Vec<InstancePlan>>,
        /// The whole cluster's routing table of this epoch (every node routes with it).
        routes: RoutingTable,
        /// Which part of the epoch's make-before-break transition this push asks for.
        phase: PushPhase,
    },
    /// What a node did with a pushed epoch.
    PlanReport {
        /// Node id.
        node: String,
        /// The epoch the report is about.
        epoch: u64,
        /// Outcome.
        outcome: ApplyOutcome,
    },
    /// A node's periodic liveness and inventory report, sent to the coordinator.
    /// Reply: [`WireMessage::HeartbeatReply`].
    Heartbeat(Heartbeat),
    /// Reply to a heartbeat: who the coordinator is, as far as the receiver knows.
    HeartbeatReply {
        /// Whether the receiver is the coordinator and recorded the heartbeat.
        accepted: bool,
        /// The coordinator (id, address), when known.
        coordinator: Option<(String, String)>,
        /// The latest committed plan epoch the receiver knows.
        epoch: u64,
    },
    /// A Raft RPC between coordinator-eligible nodes. The body is an openraft request,
    /// encoded by the agent with bincode 2 (standard config) through openraft's serde
    /// types (openraft's types are the contract; see `docs/mesh.md`).
    Raft {
        /// Which RPC.
        rpc: RaftRpc,
        /// Encoded request.
        body: Vec<u8>,
    },
    /// Reply to [`WireMessage::Raft`]: an encoded `Result<response, RaftError>`.
    RaftReply {
        /// Encoded result.
        body: Vec<u8>,
    },
    /// An operator's request (CLI).
    Client(ClientRequest),
    /// Reply to [`WireMessage::Client`].
    ClientReply(ClientReply),
    /// The request could not be handled; `retry` says whether the same request may succeed later.
    Error {
        /// What went wrong.
        message: String,
        /// Retry (possibly elsewhere) vs. give up.
        retry: bool,
    },
    /// One item of an inference request for a task instance on the receiver.
    /// Reply: [`WireMessage::StageReply`].
    Stage(StageRequest),
    /// Reply to [`WireMessage::Stage`].
    StageReply(StageReply),
    /// A node is shutting down: mark it down now (not after the heartbeat timeout) and move
    /// its instances and routes elsewhere. Reply: [`WireMessage::HeartbeatReply`]
    /// (`accepted`: the receiver coordinates and recorded it; `epoch`: its committed plan
    /// epoch, which grows once the re-plan without the node is committed). Added after
    /// version 3 shipped, at the end of the enum: older peers answer it with an error.
    Leave {
        /// The leaving node (must match the sender's certificate).
        node: String,
    },
    /// The sender's certificate does not allow this request: `needed` is the certificate
    /// role that would (an operator command from a node certificate needs
    /// [`Role::Admin`]; a heartbeat, plan push, Raft RPC or stage needs [`Role::Node`]), and
    /// `message` says what was refused and why (e.g. a heartbeat naming another node than
    /// the certificate). Do not retry with the same certificate. Appended after version 4
    /// shipped, at the end of the enum: an older peer fails to decode it (a frame error).
    Forbidden {
        /// The certificate role the request needs.
        needed: Role,
        /// What was refused.
        message: String,
    },
}

/// What a certificate of the cluster CA may do, carried in the certificate as the SAN URI
/// `jigsaw:role:node` or `jigsaw:role:admin` (see `docs/mesh.md`, "Identity").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// An agent: heartbeats, leaves, plan pushes and Raft RPCs (voters only), data-plane
    /// stages, and the read-only operator query [`ClientRequest::Status`] (every node's
    /// status page asks the coordinator).
    Node,
    /// An operator (the CLI's `admin` certificate): every [`ClientRequest`]; nothing a node
    /// sends to another node.
    Admin,
}

impl Role {
    /// The SAN URI that carries this role in a certificate.
    pub fn uri(self) -> &'static str {
        match self {
            Role::Node => "jigsaw:role:node",
            Role::Admin => "jigsaw:role:admin",
        }
    }

    /// The role a SAN URI names, if it is one of [`Role::uri`].
    pub fn from_uri(uri: &str) -> Option<Role> {
        [Role::Node, Role::Admin].into_iter().find(|r| r.uri() == uri)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Node => "node",
            Role::Admin => "admin",
        })
    }
}

/// The Raft RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    /// AppendEntries.
    Append,
    /// RequestVote.
    Vote,
    /// InstallSnapshot.
    Snapshot,
}

/// A heartbeat's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Node id.
    pub node: String,
    /// Address it listens on.
    pub addr: String,
    /// Whether it is coordinator-eligible.
    pub eligible: bool,
    /// Its GPUs and their live layouts.
    pub gpus: Vec<GpuInventory>,
    /// Highest plan epoch fully applied.
    pub applied_epoch: u64,
    /// Profile points measured on this node at run time (latest per configuration); the
    /// coordinator uses them in place of the registered rows at its next re-plan.
    pub observed: Vec<ProfileRow>,
    /// Load this node's frontends measured (cumulative counters since the node started;
    /// added in version 6): one row per app (`task` empty) and per task after fan-out.
    pub demand: Vec<DemandRow>,
}

/// Cumulative load counters of one app (or one task of it) at one node's frontends.
///
/// Counters only grow while the node runs, so the coordinator takes rates from the
/// difference of two heartbeats: a heartbeat lost, delayed or resent changes nothing, and
/// a counter that went down means the node restarted (that interval is skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemandRow {
    /// App.
    pub app: String,
    /// Task of the app (items after fan-out), or empty for the app's requests.
    pub task: String,
    /// When the counters were read, ms on the node's monotonic clock (since it started).
    pub at_ms: u64,
    /// Requests (or items) that arrived, whatever became of them.
    pub arrivals: u64,
    /// Requests answered (any outcome); 0 for task rows.
    pub completions: u64,
    /// Requests answered with an SLO violation (dropped, late, overloaded, failed); at most
    /// `completions`.
    pub violations: u64,
}

/// One app's demand in [`ClusterStatus`]: measured, forecast and planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppDemand {
    /// App.
    pub app: String,
    /// Arrival rate over the last closed control interval, all frontends, requests/s.
    pub measured_rps: Option<f64>,
    /// The forecaster's rate for the next interval, requests/s.
    pub forecast_rps: Option<f64>,
    /// SLO-violation rate over the last interval (violations / completions).
    pub violation_rate: Option<f64>,
    /// Per task, items/s over the last interval.
    pub tasks: Vec<(String, f64)>,
    /// Control intervals measured since this coordinator took over.
    pub intervals: u64,
}

/// The part of a plan epoch's make-before-break transition a [`WireMessage::PlanPush`]
/// asks a node for (`docs/transitions.md`). The leader sends the phases in order, each
/// only once every alive node finished the one before; a phase may be pushed again (after a
/// leader change, a lost reply) and re-running one is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PushPhase {
    /// Everything at once (a single push per epoch): make, install `routes`, break.
    All,
    /// Create and start the new instances that fit in free slots; touch nothing live and
    /// keep routing with the current table (`routes` only describes the new instances'
    /// apps). Reply: [`ApplyOutcome::Prepared`].
    Make,
    /// Route with `routes` from now on (the leader's table of instances that serve now);
    /// no GPU step runs.
    Routes,
    /// Drain and destroy what the epoch no longer has, restart reassigned instances,
    /// create the late ones. Reply: [`ApplyOutcome::Applied`].
    Break,
}

/// What a node did with a pushed plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// Every GPU now matches the epoch's target.
    Applied,
    /// Older than (or equal to) an epoch the node already accepted; nothing done.
    Stale {
        /// The node's highest accepted epoch.
        accepted: u64,
    },
    /// The push was refused before any step ran (unknown GPU, illegal layout).
    Rejected {
        /// Why.
        reason: String,
    },
    /// A step failed; steps before it stay applied.
    Failed {
        /// GPU UUID.
        gpu: String,
        /// The failed step and error, in words.
        error: String,
    },
    /// The make phase ran ([`PushPhase::Make`]): the new instances in free slots serve.
    Prepared {
        /// Target instances (GPU UUID, start slot) that do not serve yet: reassigned, or
        /// waiting for slots the break phase frees.
        deferred: Vec<(String, u8)>,
    },
}

impl WireMessage {
    /// Whether sending this request again after its reply was lost is harmless, so a
    /// transport may resend it on a fresh connection when the first exchange broke after the
    /// request left. Everything but a [`WireMessage::Stage`] is: Raft RPCs are idempotent by
    /// Raft's design, plan pushes are fenced by epoch, heartbeats and leaves only record
    /// state, and operator changes carry a [`RequestId`] that the state machine applies once.
    /// A stage would run its item again (a transport resends one only when the request
    /// provably never reached the peer).
    pub fn retry_safe(&self) -> bool {
        !matches!(self, WireMessage::Stage(_))
    }
}

/// An operator request. The changes carry a client-chosen [`RequestId`]: a client that
/// retries (its reply was lost) sends the same request, id included, and gets the first
/// outcome rather than a second application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Cluster status. `page: None` asks for it from the start; a status too large for one
    /// frame comes back as [`ClientReply::StatusPage`]s, and the next page is asked for with
    /// the cursor of the last one ([`StatusPages`] does it).
    Status {
        /// Where to continue a paged status.
        page: Option<StatusCursor>,
    },
    /// Register (or replace) an application.
    RegisterApp {
        /// The request's id.
        id: RequestId,
        /// The application.
        entry: AppEntry,
    },
    /// Remove an application.
    RemoveApp {
        /// The request's id.
        id: RequestId,
        /// Name.
        name: String,
    },
    /// Replace the cluster settings (the planner's search space, the failure-detection
    /// timeout); the coordinator re-plans (appended in version 5).
    SetConfig {
        /// The request's id.
        id: RequestId,
        /// The settings.
        config: crate::cluster::ClusterConfig,
    },
}

impl ClientRequest {
    /// The status, from the start.
    pub fn status() -> ClientRequest {
        ClientRequest::Status { page: None }
    }

    /// Register `entry` under a fresh request id.
    pub fn register(entry: AppEntry) -> ClientRequest {
        ClientRequest::RegisterApp { id: RequestId::fresh(), entry }
    }

    /// Remove app `name` under a fresh request id.
    pub fn remove(name: impl Into<String>) -> ClientRequest {
        ClientRequest::RemoveApp { id: RequestId::fresh(), name: name.into() }
    }

    /// Replace the cluster settings under a fresh request id.
    pub fn set_config(config: crate::cluster::ClusterConfig) -> ClientRequest {
        ClientRequest::SetConfig { id: RequestId::fresh(), config }
    }
}

/// Where a paged status continues: the status it is cut from and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCursor {
    /// The encoded status the pages are cut from (pages of different tokens never mix).
    pub token: u64,
    /// Offset of the next page, bytes.
    pub offset: u64,
}

/// An operator reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientReply {
    /// Done; words for the operator and the plan epoch after the change.
    Done {
        /// Message.
        message: String,
        /// Epoch.
        epoch: u64,
    },
    /// The cluster status.
    Status(Box<ClusterStatus>),
    /// Ask the coordinator instead (id, address), when known.
    NotCoordinator {
        /// The coordinator, if known.
        coordinator: Option<(String, String)>,
    },
    /// The request is invalid; do not retry it unchanged.
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// One page of a status too large for one frame (appended in version 5).
    StatusPage(StatusPage),
}

/// A slice of an encoded [`ClusterStatus`] (bincode 2, standard config) too large for one
/// frame. Pages are at most [`STATUS_PAGE`] bytes; the coordinator keeps the encoded status
/// for a while so that the client can fetch the rest ([`StatusPages`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPage {
    /// The encoded status this page is cut from.
    pub token: u64,
    /// Length of the whole encoded status, bytes.
    pub total: u64,
    /// Offset of `bytes` in it.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Largest page of a paged status, bytes (half a frame). A status that encodes to at most
/// this many bytes is answered whole, as [`ClientReply::Status`].
pub const STATUS_PAGE: usize = MAX_FRAME / 2;

/// Largest encoded status a client reassembles, bytes.
pub const MAX_STATUS: usize = 256 * 1024 * 1024;

fn status_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_STATUS>()
}

/// Encode a status for paging.
pub fn encode_status(status: &ClusterStatus) -> Result<Vec<u8>, FrameError> {
    let bytes = bincode::serde::encode_to_vec(status, status_config()).map_err(|e| FrameError::Body(e.to_string()))?;
    if bytes.len() > MAX_STATUS {
        return Err(FrameError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Decode a status reassembled from its pages.
pub fn decode_status(bytes: &[u8]) -> Result<ClusterStatus, FrameError> {
    let (s, used): (ClusterStatus, usize) =
        bincode::serde::decode_from_slice(bytes, status_config()).map_err(|e| FrameError::Body(e.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::Trailing(bytes.len() - used));
    }
    Ok(s)
}

/// The page of `encoded` (under `token`) that starts at `offset`, or `None` past its end.
pub fn status_page(token: u64, encoded: &[u8], offset: u64) -> Option<StatusPage> {
    let start = usize::try_from(offset).ok().filter(|&o| o < encoded.len())?;
    let end = encoded.len().min(start + STATUS_PAGE);
    Some(StatusPage { token, total: encoded.len() as u64, offset, bytes: encoded[start..end].to_vec() })
}

/// Reassembles a paged status on the client: feed it every [`ClientReply::StatusPage`] and
/// ask for [`StatusPages::next_request`] until [`StatusPages::add`] returns the status.
#[derive(Debug, Default)]
pub struct StatusPages {
    token: Option<u64>,
    total: u64,
    bytes: Vec<u8>,
}

impl StatusPages {
    /// The request for the next page (the first one when nothing was received yet).
    pub fn next_request(&self) -> ClientRequest {
        match self.token {
            Some(token) => {
                ClientRequest::Status { page: Some(StatusCursor { token, offset: self.bytes.len() as u64 }) }
            }
            None => ClientRequest::status(),
        }
    }

    /// Add the next page: `Ok(Some(status))` once complete, `Ok(None)` when more pages
    /// follow, an error when the page does not continue what was received (start over).
    pub fn add(&mut self, page: StatusPage) -> Result<Option<ClusterStatus>, FrameError> {
        let bad = |why: String| FrameError::Body(format!("status page: {why}"));
        if page.total > MAX_STATUS as u64 {
            return Err(FrameError::TooLarge { len: usize::try_from(page.total).unwrap_or(usize::MAX) });
        }
        match self.token {
            None => {
                self.token = Some(page.token);
                self.total = page.total;
            }
            Some(t) if t != page.token || self.total != page.total => {
                return Err(bad(format!(
                    "token {} of {} bytes, expected {t} of {}",
                    page.token, page.total, self.total
                )))
            }
            Some(_) => {}
        }
        if page.offset != self.bytes.len() as u64 {
            return Err(bad(format!("offset {}, expected {}", page.offset, self.bytes.len())));
        }
        if page.bytes.is_empty() || self.bytes.len() as u64 + page.bytes.len() as u64 > self.total {
            return Err(bad(format!("{} bytes at {} of {}", page.bytes.len(), page.offset, self.total)));
        }
        self.bytes.extend_from_slice(&page.bytes);
        if (self.bytes.len() as u64) < self.total {
            return Ok(None);
        }
        decode_status(&self.bytes).map(Some)
    }
}

/// Status as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Coordinator node id.
    pub coordinator: String,
    /// Raft term.
    pub term: u64,
    /// Raft voters.
    pub voters: Vec<String>,
    /// The replicated state.
    pub state: ClusterState,
    /// Per node: last heartbeat age (ms), applied epoch, live GPUs, last plan outcome.
    pub nodes: Vec<NodeStatus>,
    /// Profile points observed at run time and gossiped to the coordinator.
    pub observed: Vec<ProfileRow>,
    /// Per app: measured and forecast demand as the coordinator sees them (version 6).
    pub demand: Vec<AppDemand>,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub node: String,
    /// Milliseconds since its last heartbeat reached the coordinator (None = never).
    pub last_seen_ms: Option<u64>,
    /// Highest epoch it applied.
    pub applied_epoch: u64,
    /// Its GPUs with live layouts, from the last heartbeat.
    pub gpus: Vec<GpuInventory>,
    /// The last plan outcome it reported, if any: (epoch, outcome).
    pub last_outcome: Option<(u64, ApplyOutcome)>,
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header or the announced body; read more and retry.
    #[error("incomplete frame: need {need} bytes, have {have}")]
    Incomplete {
        /// Bytes needed in total.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Not a jigsaw frame; drop the connection.
    #[error("bad magic {got:02x?}: not a jigsaw peer")]
    Magic {
        /// The first four bytes.
        got: [u8; 4],
    },
    /// A jigsaw frame of a version this build does not speak; upgrade one side.
    #[error("wire version {got} is not supported (this build speaks {VERSION})")]
    Version {
        /// The peer's version.
        got: u16,
    },
    /// Body larger than [`MAX_FRAME`]; drop the connection.
    #[error("frame body of {len} bytes exceeds the {MAX_FRAME}-byte cap")]
    TooLarge {
        /// Announced length.
        len: usize,
    },
    /// The body is not a valid message.
    #[error("malformed body: {0}")]
    Body(String),
    /// The body decoded but left bytes unused.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encode one message as a frame.
pub fn encode_frame(msg: &WireMessage) -> Result<Vec<u8>, FrameError> {
    encode_with(MAGIC, msg)
}

/// Parse and check a header; returns the body length.
pub fn decode_header(buf: &[u8]) -> Result<usize, FrameError> {
    decode_header_with(MAGIC, buf)
}

/// Decode one frame from the front of `buf`; returns the message and the bytes consumed.
pub fn decode_frame(buf: &[u8]) -> Result<(WireMessage, usize), FrameError> {
    decode_with(MAGIC, buf)
}

/// Encode `msg` as a frame with `magic` (the same envelope serves other channels, such as
/// the agent-to-worker pipe of [`crate::worker`]).
pub fn encode_with<T: Serialize>(magic: [u8; 4], msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = bincode::serde::encode_to_vec(msg, config()).map_err(|e| FrameError::Body(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Check a header expected to carry `magic`; returns the body length.
pub fn decode_header_with(magic: [u8; 4], buf: &[u8]) -> Result<usize, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Incomplete { need: HEADER_LEN, have: buf.len() });
    }
    let got = [buf[0], buf[1], buf[2], buf[3]];
    if got != magic {
        return Err(FrameError::Magic { got });
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != VERSION {
        return Err(FrameError::Version { got: version });
    }
    let len = u32::from_le_bytes([buf[6], buf[7], buf[8], buf[9]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Decode one `magic` frame from the front of `buf`; returns the message and the bytes used.
pub fn decode_with<T: serde::de::DeserializeOwned>(magic: [u8; 4], buf: &[u8]) -> Result<(T, usize), FrameError> {
    let len = decode_header_with(magic, buf)?;
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(FrameError::Incomplete { need: total, have: buf.len() });
    }
    let body = &buf[HEADER_LEN..total];
    let (msg, used): (T, usize) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| FrameError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Trailing(body.len() - used));
    }
    Ok((msg, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello(node: String, applied_epoch: u64) -> WireMessage {
        WireMessage::Hello { node, applied_epoch }
    }

    proptest! {
        #[test]
        fn round_trip(node in ".{0,40}", e in any::<u64>()) {
            let m = hello(node, e);
            let f = encode_frame(&m).expect("encodes");
            let (d, used) = decode_frame(&f).expect("decodes");
            prop_assert_eq!(d, m);
            prop_assert_eq!(used, f.len());
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_valid_header(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut f = MAGIC.to_vec();
            f.extend_from_slice(&VERSION.to_le_bytes());
            f.extend_from_slice(&(body.len() as u32).to_le_bytes());
            f.extend_from_slice(&body);
            let _ = decode_frame(&f);
        }
    }

    fn plan(note: Option<String>) -> crate::plan::Plan {
        use crate::plan::{GpuPlan, InstancePlan, SolveStats, TaskPlan, VariantShare};
        crate::plan::Plan {
            app: "a".into(),
            space: "A+S+T".into(),
            gpu_model: crate::GpuModel::H100_80gb,
            gpus_available: 2,
            demand_rps: 10.0,
            accuracy: 0.95,
            accuracy_slo: 0.9,
            latency_bound_ms: 20.0,
            latency_slo_ms: 100.0,
            slices_used: 1,
            compute_slices: 1,
            gpus_used: 1,
            tasks: vec![TaskPlan {
                task: "t".into(),
                latency_budget_ms: 10.0,
                slowest_p95_ms: 9.0,
                demand_rps: 10.0,
                capacity_rps: 12.0,
                slices: 1,
                variants: vec![VariantShare {
                    variant: "v".into(),
                    accuracy: 0.9,
                    instances: 1,
                    capacity_rps: 12.0,
                    weight: 1.0,
                }],
            }],
            gpus: vec![GpuPlan {
                gpu: 0,
                instances: vec![InstancePlan {
                    mig_profile: "1g.10gb".into(),
                    start: 3,
                    slices: 1,
                    mps: 2,
                    task: "t".into(),
                    variant: "v".into(),
                    batch: 8,
                    p95_ms: 9.0,
                    throughput_rps: 12.0,
                    app: String::new(),
                    load_rps: 7.5,
                }],
            }],
            stats: SolveStats {
                solve_ms: 1.0,
                gap: 0.0,
                objective: 1.0,
                bound: 1.0,
                splits_total: 1,
                splits_solved: 1,
                splits_pruned: 0,
                latency_levels: "exact".into(),
                note,
            },
        }
    }

    /// Every field of a plan survives the wire, with and without optional parts (a
    /// `skip_serializing_if` would break positional bincode; the fuzzer once caught that).
    #[test]
    fn plans_round_trip() {
        for note in [None, Some("fallback".to_string())] {
            let p = plan(note);
            let state = ClusterState {
                plan: Some(crate::cluster::ClusterPlan {
                    epoch: 7,
                    inputs: "x".into(),
                    nodes: [("n1".to_string(), [("GPU-1".to_string(), p.gpus[0].instances.clone())].into())].into(),
                    apps: vec![crate::cluster::AppPlacement {
                        worst_node_loss: Some(("n1".into(), 12.5)),
                        ..crate::cluster::AppPlacement::unplaced("a", 20.0, "shed".into())
                    }],
                    stats: crate::cluster::ClusterPlanStats {
                        notes: vec!["spread dropped".into()],
                        ..Default::default()
                    },
                }),
                ..ClusterState::default()
            };
            let status = ClusterStatus {
                coordinator: "n1".into(),
                term: 3,
                voters: vec!["n1".into()],
                state,
                nodes: vec![NodeStatus {
                    node: "n1".into(),
                    last_seen_ms: None,
                    applied_epoch: 7,
                    gpus: vec![],
                    last_outcome: Some((7, ApplyOutcome::Failed { gpu: "GPU-1".into(), error: "e".into() })),
                }],
                observed: vec![],
                demand: vec![AppDemand {
                    app: "a".into(),
                    measured_rps: Some(12.5),
                    forecast_rps: Some(13.0),
                    violation_rate: Some(0.01),
                    tasks: vec![("t".into(), 25.0)],
                    intervals: 4,
                }],
            };
            for m in [
                WireMessage::PlanPush {
                    epoch: 7,
                    coordinator: "n1".into(),
                    gpus: [("GPU-1".to_string(), p.gpus[0].instances.clone())].into(),
                    routes: crate::route::RoutingTable { epoch: 7, apps: vec![] },
                    phase: PushPhase::Make,
                },
                WireMessage::ClientReply(ClientReply::Status(Box::new(status))),
            ] {
                let f = encode_frame(&m).expect("encodes");
                assert_eq!(decode_frame(&f).expect("decodes").0, m);
            }
        }
    }

    /// A status larger than a frame travels as pages that reassemble to the same status;
    /// a page of another token, a gap or an overrun is an error (the client starts over).
    #[test]
    fn large_status_pages_reassemble() {
        let mut state = ClusterState::default();
        for i in 0..5 {
            let name = format!("app{i}");
            let entry = AppEntry {
                name: name.clone(),
                spec_toml: String::new(),
                profiles_csv: format!("# {}\n", "\u{1}".repeat(4 << 20)),
                demand_rps: 1.0,
                demand_auto: false,
            };
            state.apps.insert(name, entry);
        }
        let status = ClusterStatus {
            coordinator: "n1".into(),
            term: 2,
            voters: vec!["n1".into()],
            state,
            nodes: vec![],
            observed: vec![],
            demand: vec![],
        };
        assert!(
            matches!(
                encode_frame(&WireMessage::ClientReply(ClientReply::Status(Box::new(status.clone())))),
                Err(FrameError::TooLarge { .. })
            ),
            "too large for one frame"
        );
        let encoded = encode_status(&status).expect("encodes");
        let mut pages = StatusPages::default();
        let mut got = None;
        let mut n = 0;
        while got.is_none() {
            let ClientRequest::Status { page } = pages.next_request() else { panic!("a status request") };
            let offset = page.map_or(0, |c| c.offset);
            let p = status_page(7, &encoded, offset).expect("a page");
            // Every page fits a frame.
            let frame = encode_frame(&WireMessage::ClientReply(ClientReply::StatusPage(p.clone()))).expect("fits");
            assert!(frame.len() <= MAX_FRAME);
            got = pages.add(p).expect("continues");
            n += 1;
        }
        assert_eq!(n, encoded.len().div_ceil(STATUS_PAGE));
        assert!(n >= 3);
        assert_eq!(got, Some(status));
        assert_eq!(status_page(7, &encoded, encoded.len() as u64), None, "nothing past the end");
        let mut pages = StatusPages::default();
        let first = status_page(7, &encoded, 0).expect("page");
        pages.add(first.clone()).expect("first page");
        assert!(pages
            .add(StatusPage { token: 8, ..status_page(7, &encoded, first.bytes.len() as u64).expect("p") })
            .is_err());
        assert!(pages.add(first).is_err(), "the same page twice is a gap");
    }

    #[test]
    fn typed_rejections() {
        let f = encode_frame(&hello("n".into(), 1)).expect("encodes");
        let mut bad = f.clone();
        bad[0] = b'X';
        assert!(matches!(decode_frame(&bad), Err(FrameError::Magic { .. })));
        let mut v1 = f.clone();
        v1[4] = 1;
        assert_eq!(decode_frame(&v1), Err(FrameError::Version { got: 1 }));
        let mut big = f.clone();
        big[6..10].copy_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(matches!(decode_frame(&big), Err(FrameError::TooLarge { .. })));
        assert!(matches!(decode_frame(&f[..f.len() - 1]), Err(FrameError::Incomplete { .. })));
        let mut trailing = f.clone();
        trailing.push(0);
        let n = u32::from_le_bytes([f[6], f[7], f[8], f[9]]) + 1;
        trailing[6..10].copy_from_slice(&n.to_le_bytes());
        assert_eq!(decode_frame(&trailing), Err(FrameError::Trailing(1)));
    }
}

/// The committed fuzz seeds of the current wire version decode (so the fuzzer starts from
/// real messages of every kind rather than having to find the format by mutation).
#[cfg(test)]
mod fuzz_seeds {
    use super::*;

    /// The version-7 seed frames of the fuzz corpus (`protocol/fuzz/regressions/v7-*`).
    fn seeds() -> Vec<(&'static str, WireMessage)> {
        use crate::route::{StageOutcome, StageReply, StageRequest};
        let id = RequestId { client: 0x1234_5678_9abc_def0, seq: 3 };
        vec![
            ("v7-hello", WireMessage::Hello { node: "n1".into(), applied_epoch: 3 }),
            ("v7-error", WireMessage::Error { message: "not the coordinator".into(), retry: true }),
            (
                "v7-stage",
                WireMessage::Stage(StageRequest {
                    id: 7,
                    item: 1,
                    app: "traffic".into(),
                    task: "detect".into(),
                    gpu: "GPU-1".into(),
                    start: 4,
                    budget_us: 650_000,
                    input: vec![0.5, -1.0, 2.0],
                }),
            ),
            (
                "v7-stage-reply",
                WireMessage::StageReply(StageReply {
                    id: 7,
                    item: 1,
                    outcome: StageOutcome::Done { output: vec![1.0, 2.0], variant: "yolov5s".into(), stage_us: 812 },
                }),
            ),
            (
                "v7-plan-push",
                WireMessage::PlanPush {
                    epoch: 3,
                    coordinator: "n1".into(),
                    gpus: [(
                        "GPU-1".to_string(),
                        vec![InstancePlan {
                            app: "traffic".into(),
                            throughput_rps: 120.0,
                            load_rps: 80.5,
                            ..crate::testing::instance("detect", "1g.10gb", 0)
                        }],
                    )]
                    .into(),
                    routes: crate::route::RoutingTable { epoch: 3, apps: vec![] },
                    phase: PushPhase::Break,
                },
            ),
            ("v7-plan-report", WireMessage::PlanReport { node: "n2".into(), epoch: 3, outcome: ApplyOutcome::Applied }),
            (
                "v7-plan-prepared",
                WireMessage::PlanReport {
                    node: "n2".into(),
                    epoch: 3,
                    outcome: ApplyOutcome::Prepared { deferred: vec![("GPU-1".into(), 4)] },
                },
            ),
            ("v7-leave", WireMessage::Leave { node: "n4".into() }),
            (
                "v7-heartbeat",
                WireMessage::Heartbeat(Heartbeat {
                    node: "n2".into(),
                    addr: "127.0.0.1:7001".into(),
                    eligible: true,
                    gpus: vec![],
                    applied_epoch: 3,
                    observed: vec![],
                    demand: vec![DemandRow {
                        app: "a".into(),
                        task: String::new(),
                        at_ms: 1_000,
                        arrivals: 50,
                        completions: 48,
                        violations: 1,
                    }],
                }),
            ),
            ("v7-raft", WireMessage::Raft { rpc: RaftRpc::Append, body: vec![1, 0, 2, 0, 0] }),
            (
                "v7-status",
                WireMessage::Client(ClientRequest::Status { page: Some(StatusCursor { token: 9, offset: 8 }) }),
            ),
            ("v7-remove-app", WireMessage::Client(ClientRequest::RemoveApp { id, name: "social".into() })),
            (
                "v7-set-config",
                WireMessage::Client(ClientRequest::SetConfig {
                    id,
                    config: crate::cluster::ClusterConfig { dead_after_ms: 3_000, space: "A+T".into() },
                }),
            ),
            (
                "v7-register-app",
                WireMessage::Client(ClientRequest::RegisterApp {
                    id,
                    entry: AppEntry {
                        name: "a".into(),
                        spec_toml: "name = \"a\"".into(),
                        profiles_csv: "task,variant\n".into(),
                        demand_rps: 10.0,
                        demand_auto: false,
                    },
                }),
            ),
            (
                "v7-status-page",
                WireMessage::ClientReply(ClientReply::StatusPage(StatusPage {
                    token: 9,
                    total: 12,
                    offset: 8,
                    bytes: vec![1, 2, 3, 4],
                })),
            ),
            ("v7-forbidden", WireMessage::Forbidden { needed: Role::Admin, message: "RegisterApp needs admin".into() }),
        ]
    }

    /// Regenerate the seeds: `JIGSAW_WRITE_SEEDS=1 cargo test -p jigsaw-protocol seeds_decode`.
    #[test]
    fn version_7_seeds_decode_and_round_trip() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/regressions");
        if std::env::var_os("JIGSAW_WRITE_SEEDS").is_some() {
            for (name, m) in seeds() {
                std::fs::write(format!("{dir}/{name}"), encode_frame(&m).expect("encodes")).expect("write seed");
            }
        }
        for (name, m) in seeds() {
            let bytes = std::fs::read(format!("{dir}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (msg, used) = decode_frame(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((msg, used), (m, bytes.len()), "{name}");
        }
    }
}
