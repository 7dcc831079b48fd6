//! Raft among the coordinator-eligible agents, on openraft.
//!
//! * Log entries are [`ClusterCommand`]s applied to the replicated [`ClusterState`](jigsaw_protocol::cluster::ClusterState)
//!   (`jigsaw_protocol::cluster`); responses are [`CommandOutcome`]s.
//! * Raft node ids are a stable 64-bit hash of the node name ([`node_id`]); the node data
//!   ([`RaftNode`]) carries the name and address.
//! * [`store`]: durable log, vote and state machine in redb.
//! * [`RaftNet`]: openraft's network over any [`Transport`]: each RPC is one
//!   [`WireMessage::Raft`] request whose body is openraft's request in bincode 2 ([`encode`]:
//!   compact, strings and bytes raw, where JSON escaped control characters up to six-fold and
//!   spelled snapshot bytes as decimal numbers), answered by a [`WireMessage::RaftReply`]
//!   holding `Result<response, RaftError>` the same way. A peer that times out or cannot be
//!   reached is reported to openraft as `Unreachable`, so it backs off instead of spinning; a
//!   broken stream as a network error (retried at once).
//! * An AppendEntries whose frame would exceed [`MAX_FRAME`] is not sent: openraft is told
//!   `PayloadTooLarge` with how many entries fit ([`entries_that_fit`]), and resends fewer,
//!   down to one per RPC. A single entry always fits: registrations are refused when their
//!   entry would exceed [`MAX_ENTRY`] ([`check_entry`]), half a frame.
//!
//! Safety-relevant settings: every eligible node calls `initialize` with the same voter set
//! from its config (safe in openraft when the sets are equal; a mismatch is refused by config
//! validation across `jigsaw up`-generated files, and documented for hand-written ones).

pub mod store;

use crate::transport::net::Transport;
use crate::transport::TransportError;
use jigsaw_protocol::cluster::{fnv64, ClusterCommand, CommandOutcome, InvalidApp, MAX_ENTRY};
use jigsaw_protocol::wire::{RaftRpc, WireMessage, HEADER_LEN, MAX_FRAME};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

/// A Raft member: node name and address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// Node name (its certificate name).
    pub name: String,
    /// `ip:port`.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// openraft type configuration of jigsaw's cluster state.
    pub TypeConfig:
        D = ClusterCommand,
        R = CommandOutcome,
        NodeId = u64,
        Node = RaftNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig>;

/// Raft node id of a node name.
pub fn node_id(name: &str) -> u64 {
    fnv64(&[name])
}

/// Timing of the Raft group.
pub fn raft_config(election_min_ms: u64, election_max_ms: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: "jigsaw".into(),
        heartbeat_interval: 100,
        election_timeout_min: election_min_ms,
        election_timeout_max: election_max_ms,
        install_snapshot_timeout: 2_000,
        // Entries are small except app registrations (their profile tables, up to a few
        // MiB): an AppendEntries that would not fit a frame is split (`PayloadTooLarge`), so
        // this only bounds batches of small entries.
        max_payload_entries: 64,
        ..Default::default()
    }
}

fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encode a Raft RPC body (request or reply): bincode 2, standard config.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(v, codec()).map_err(|e| e.to_string())
}

/// Decode a Raft RPC body; trailing bytes are an error.
pub fn decode<T: for<'a> Deserialize<'a>>(body: &[u8]) -> Result<T, String> {
    let (v, used): (T, usize) = bincode::serde::decode_from_slice(body, codec()).map_err(|e| e.to_string())?;
    if used != body.len() {
        return Err(format!("{} trailing bytes", body.len() - used));
    }
    Ok(v)
}

/// Bytes `v` encodes to with [`encode`], without building the encoding.
pub fn encoded_len<T: Serialize>(v: &T) -> usize {
    let mut w = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(v, &mut w, codec()) {
        Ok(()) => w.bytes_written,
        Err(_) => usize::MAX,
    }
}

/// Bytes of the frame that carries a Raft RPC body of `body_len` bytes: the header, the
/// message and RPC tags, the body's length prefix (at most 9 bytes) and the body.
pub fn frame_len(body_len: usize) -> usize {
    HEADER_LEN + 2 + 9 + body_len
}

/// The size of `cmd` as the log entry that replicates it, encoded as in an AppendEntries
/// (with the largest log id, so the figure is an upper bound).
pub fn entry_len(cmd: &ClusterCommand) -> usize {
    let entry: openraft::Entry<TypeConfig> = openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX),
        payload: openraft::EntryPayload::Normal(cmd.clone()),
    };
    encoded_len(&entry)
}

/// Refuse an app registration whose log entry (`cmd` replicates it) would exceed `cap`
/// bytes; [`MAX_ENTRY`] in the agent.
pub fn check_entry(app: &str, cmd: &ClusterCommand, cap: usize) -> Result<(), InvalidApp> {
    let size = entry_len(cmd);
    if size > cap {
        return Err(InvalidApp::EntryTooLarge { name: app.to_string(), size, cap });
    }
    Ok(())
}

/// [`check_entry`] against [`MAX_ENTRY`].
pub fn check_entry_fits(app: &str, cmd: &ClusterCommand) -> Result<(), InvalidApp> {
    check_entry(app, cmd, MAX_ENTRY)
}

/// How many leading entries of an AppendEntries fit a frame of `cap` bytes, given each
/// entry's encoded size and the bytes of everything else (`fixed`: vote, log ids, lengths,
/// envelope). At least 0; all of them when they fit.
pub fn entries_that_fit(sizes: &[usize], fixed: usize, cap: usize) -> usize {
    let mut total = fixed;
    for (i, s) in sizes.iter().enumerate() {
        total = total.saturating_add(*s);
        if total > cap {
            return i;
        }
    }
    sizes.len()
}

/// openraft's network over a [`Transport`].
pub struct RaftNet<T: Transport> {
    transport: Arc<T>,
}

impl<T: Transport> RaftNet<T> {
    /// Wrap a transport.
    pub fn new(transport: Arc<T>) -> RaftNet<T> {
        RaftNet { transport }
    }
}

/// A client for one target.
pub struct RaftClient<T: Transport> {
    transport: Arc<T>,
    target: u64,
    node: RaftNode,
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for RaftNet<T> {
    type Network = RaftClient<T>;

    async fn new_client(&mut self, target: u64, node: &RaftNode) -> Self::Network {
        RaftClient { transport: self.transport.clone(), target, node: node.clone() }
    }
}

type RpcResult<Resp, E> = Result<Resp, RPCError<u64, RaftNode, RaftError<u64, E>>>;

#[allow(clippy::result_large_err)] // openraft's RPCError, which the network trait mandates
fn network_error<Resp, E: std::error::Error>(why: String) -> RpcResult<Resp, E> {
    Err(RPCError::Network(NetworkError::new(&std::io::Error::other(why))))
}

impl<T: Transport> RaftClient<T> {
    async fn call<Req, Resp, E>(&self, rpc: RaftRpc, req: &Req, timeout: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: for<'a> Deserialize<'a>,
        E: std::error::Error + for<'a> Deserialize<'a>,
    {
        match encode(req) {
            Ok(body) => self.send(rpc, body, timeout).await,
            Err(e) => network_error(format!("encode Raft {rpc:?}: {e}")),
        }
    }

    async fn send<Resp, E>(&self, rpc: RaftRpc, body: Vec<u8>, timeout: Duration) -> RpcResult<Resp, E>
    where
        Resp: for<'a> Deserialize<'a>,
        E: std::error::Error + for<'a> Deserialize<'a>,
    {
        let msg = WireMessage::Raft { rpc, body };
        let reply = self.transport.request(&self.node.name, &self.node.addr, msg, timeout).await;
        match reply {
            Ok(WireMessage::RaftReply { body }) => {
                let r: Result<Resp, RaftError<u64, E>> = match decode(&body) {
                    Ok(r) => r,
                    Err(e) => return network_error(format!("decode Raft reply: {e}")),
                };
                r.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
            }
            Ok(other) => network_error(format!("unexpected reply to a Raft RPC: {other:?}")),
            // A broken stream is worth an immediate retry; a peer that does not answer or
            // cannot be reached gets openraft's back-off.
            Err(e @ TransportError::Stream(_)) => Err(RPCError::Network(NetworkError::new(&e))),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }
}

/// An AppendEntries as it goes out: its body, or (when its frame would exceed
/// [`MAX_FRAME`]) how many of its entries fit, for openraft to resend fewer.
fn append_body(rpc: &AppendEntriesRequest<TypeConfig>) -> Result<Vec<u8>, Result<u64, String>> {
    let body = encode(rpc).map_err(Err)?;
    if frame_len(body.len()) <= MAX_FRAME {
        return Ok(body);
    }
    let sizes: Vec<usize> = rpc.entries.iter().map(encoded_len).collect();
    let fixed = frame_len(body.len()).saturating_sub(sizes.iter().sum());
    match entries_that_fit(&sizes, fixed, MAX_FRAME) {
        0 => Err(Err(format!(
            "log entry {} encodes to {} bytes: no AppendEntries frame ({MAX_FRAME} bytes) can carry it",
            rpc.entries.first().map_or(0, |e| e.log_id.index),
            sizes.first().copied().unwrap_or(0)
        ))),
        n => Err(Ok(n as u64)),
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for RaftClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, RaftNode, RaftError<u64>>> {
        match append_body(&rpc) {
            Ok(body) => self.send(RaftRpc::Append, body, option.hard_ttl()).await,
            Err(Ok(fit)) => {
                tracing::debug!(entries = rpc.entries.len(), fit, "AppendEntries too large for a frame; splitting");
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)))
            }
            Err(Err(why)) => network_error(why),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, RaftNode, RaftError<u64, InstallSnapshotError>>> {
        self.call(RaftRpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, RaftNode, RaftError<u64>>> {
        self.call(RaftRpc::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Serve one inbound Raft RPC on `raft`; returns the reply message.
pub async fn serve_rpc(raft: &Raft, rpc: RaftRpc, body: &[u8]) -> WireMessage {
    fn reply<R: Serialize, E: Serialize>(r: Result<R, E>) -> WireMessage {
        match encode(&r) {
            Ok(body) => WireMessage::RaftReply { body },
            Err(e) => WireMessage::Error { message: format!("encode Raft reply: {e}"), retry: true },
        }
    }
    let bad = |e: String| WireMessage::Error { message: format!("malformed Raft {rpc:?}: {e}"), retry: false };
    match rpc {
        RaftRpc::Append => match decode(body) {
            Ok(req) => reply(raft.append_entries(req).await),
            Err(e) => bad(e),
        },
        RaftRpc::Vote => match decode(body) {
            Ok(req) => reply(raft.vote(req).await),
            Err(e) => bad(e),
        },
        RaftRpc::Snapshot => match decode(body) {
            Ok(req) => reply(raft.install_snapshot(req).await),
            Err(e) => bad(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::cluster::AppEntry;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    fn big_app(i: usize, bytes: usize) -> ClusterCommand {
        // Control characters: JSON spelled each as six bytes (`\u0001`); bincode keeps one.
        ClusterCommand::PutApp(AppEntry {
            name: format!("app{i}"),
            spec_toml: String::new(),
            profiles_csv: format!("# {}\n", "\u{1}".repeat(bytes)),
            demand_rps: 1.0,
            demand_auto: false,
        })
    }

    fn append(entries: Vec<ClusterCommand>) -> AppendEntriesRequest<TypeConfig> {
        let entries = entries
            .into_iter()
            .enumerate()
            .map(|(i, c)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(3, 1), 10 + i as u64),
                payload: EntryPayload::Normal(c),
            })
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 9)),
            entries,
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 9)),
        }
    }

    /// Bodies round-trip, and an entry of control characters costs its raw size, not JSON's
    /// six-fold escape (which once made a 4 MiB profile table a 24 MiB entry).
    #[test]
    fn entries_encode_compactly_and_round_trip() {
        let rpc = append(vec![big_app(0, 1 << 20), ClusterCommand::MarkDown { node: "n2".into() }]);
        let body = encode(&rpc).expect("encodes");
        assert!(body.len() < (1 << 20) + 1024, "{} bytes", body.len());
        assert_eq!(encoded_len(&rpc), body.len());
        let back: AppendEntriesRequest<TypeConfig> = decode(&body).expect("decodes");
        assert_eq!(back.entries, rpc.entries);
        assert_eq!(back.vote, rpc.vote);
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode::<AppendEntriesRequest<TypeConfig>>(&longer).is_err(), "trailing bytes");
        let e: Result<AppendEntriesResponse<u64>, RaftError<u64>> = Ok(AppendEntriesResponse::Success);
        let back: Result<AppendEntriesResponse<u64>, RaftError<u64>> = decode(&encode(&e).expect("e")).expect("d");
        assert_eq!(back, e);
        assert!(entry_len(&ClusterCommand::MarkDown { node: "n2".into() }) < 64);
    }

    #[test]
    fn entries_that_fit_counts_a_prefix() {
        assert_eq!(entries_that_fit(&[], 10, 100), 0);
        assert_eq!(entries_that_fit(&[30, 30, 30], 10, 100), 3);
        assert_eq!(entries_that_fit(&[30, 30, 31], 10, 100), 2);
        assert_eq!(entries_that_fit(&[95], 10, 100), 0);
        assert_eq!(entries_that_fit(&[usize::MAX, 1], 10, 100), 0);
    }

    /// Five 4 MiB entries (20 MiB) do not fit a frame: the batch is split to the three that
    /// do; a batch that fits goes whole; and every body sent fits a frame.
    #[test]
    fn oversized_batches_are_split() {
        let five = append((0..5).map(|i| big_app(i, 4 << 20)).collect());
        assert_eq!(append_body(&five).expect_err("too large"), Ok(3));
        let three = append((0..3).map(|i| big_app(i, 4 << 20)).collect());
        let body = append_body(&three).expect("fits");
        let frame = jigsaw_protocol::wire::encode_frame(&WireMessage::Raft { rpc: RaftRpc::Append, body })
            .expect("the frame fits");
        assert!(frame.len() <= MAX_FRAME);
        let one = append(vec![big_app(0, MAX_FRAME)]);
        assert!(matches!(append_body(&one), Err(Err(why)) if why.contains("no AppendEntries frame")));
    }

    /// A registration is checked against its real encoded entry: the message names the
    /// size and the cap.
    #[test]
    fn registrations_are_capped_by_their_entry() {
        let cmd = big_app(0, 3 << 20);
        assert!(check_entry_fits("app0", &cmd).is_ok(), "3 MiB is well under the cap");
        let size = entry_len(&cmd);
        assert!(size > 3 << 20 && size < (3 << 20) + 200, "{size}");
        let e = check_entry("app0", &cmd, 1 << 20).expect_err("over a 1 MiB cap").to_string();
        assert!(e.contains("app `app0`") && e.contains(&size.to_string()) && e.contains("1048576"), "{e}");
    }
}
