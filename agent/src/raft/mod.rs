//! Raft among the coordinator-eligible agents, on openraft.
//!
//! * Log entries are [`ClusterCommand`]s applied to the replicated [`ClusterState`](jigsaw_protocol::cluster::ClusterState)
//!   (`jigsaw_protocol::cluster`); responses are [`CommandOutcome`]s.
//! * Raft node ids are a stable 64-bit hash of the node name ([`node_id`]); the node data
//!   ([`RaftNode`]) carries the name and address.
//! * [`store`]: durable log, vote and state machine in redb.
//! * [`RaftNet`]: openraft's network over any [`Transport`]: each RPC is one
//!   [`WireMessage::Raft`] request whose body is the JSON of openraft's request, answered by a
//!   [`WireMessage::RaftReply`] holding the JSON of `Result<response, RaftError>`. A peer that
//!   times out or cannot be reached is reported to openraft as `Unreachable`, so it backs off
//!   instead of spinning; a broken stream as a network error (retried at once).
//!
//! Safety-relevant settings: every eligible node calls `initialize` with the same voter set
//! from its config (safe in openraft when the sets are equal; a mismatch is refused by config
//! validation across `jigsaw up`-generated files, and documented for hand-written ones).

pub mod store;

use crate::transport::net::Transport;
use crate::transport::TransportError;
use jigsaw_protocol::cluster::{fnv64, ClusterCommand, CommandOutcome};
use jigsaw_protocol::wire::{RaftRpc, WireMessage};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
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
        // App registrations carry their profile tables (validated to at most a few MiB):
        // keep one AppendEntries well inside the 16 MiB frame cap.
        max_payload_entries: 4,
        ..Default::default()
    }
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

impl<T: Transport> RaftClient<T> {
    async fn call<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<u64, RaftNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: for<'a> Deserialize<'a>,
        E: std::error::Error + for<'a> Deserialize<'a>,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = WireMessage::Raft { rpc, body };
        let reply = self.transport.request(&self.node.name, &self.node.addr, msg, timeout).await;
        match reply {
            Ok(WireMessage::RaftReply { body }) => {
                let r: Result<Resp, RaftError<u64, E>> =
                    serde_json::from_slice(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                r.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
            }
            Ok(other) => Err(RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "unexpected reply to a Raft RPC: {other:?}"
            ))))),
            // A broken stream is worth an immediate retry; a peer that does not answer or
            // cannot be reached gets openraft's back-off.
            Err(e @ TransportError::Stream(_)) => Err(RPCError::Network(NetworkError::new(&e))),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for RaftClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, RaftNode, RaftError<u64>>> {
        self.call(RaftRpc::Append, &rpc, option.hard_ttl()).await
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
        match serde_json::to_vec(&r) {
            Ok(body) => WireMessage::RaftReply { body },
            Err(e) => WireMessage::Error { message: format!("encode Raft reply: {e}"), retry: true },
        }
    }
    let bad =
        |e: serde_json::Error| WireMessage::Error { message: format!("malformed Raft {rpc:?}: {e}"), retry: false };
    match rpc {
        RaftRpc::Append => match serde_json::from_slice(body) {
            Ok(req) => reply(raft.append_entries(req).await),
            Err(e) => bad(e),
        },
        RaftRpc::Vote => match serde_json::from_slice(body) {
            Ok(req) => reply(raft.vote(req).await),
            Err(e) => bad(e),
        },
        RaftRpc::Snapshot => match serde_json::from_slice(body) {
            Ok(req) => reply(raft.install_snapshot(req).await),
            Err(e) => bad(e),
        },
    }
}
