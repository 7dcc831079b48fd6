//! Transport between agents: QUIC (quinn) with mutual TLS from a cluster CA, carrying the
//! framed messages of `jigsaw_protocol::wire`.
//!
//! * [`tls`]: the cluster CA (`jigsaw ca init` / `jigsaw ca issue`) and node identities.
//! * [`QuicNode`]: one endpoint per node that both accepts and dials; one bidirectional
//!   stream per request, each frame checked at the edge (magic, version, size cap) before
//!   its body is read.
//!
//! * [`crate::core::netsim`]: the in-memory twin for deterministic simulations (virtual time, seeded delay,
//!   loss and link cuts).
//!
//! Errors keep "retry / redirect" apart from "this peer is dead or hostile": see
//! [`TransportError`]. [`net`] holds the request/reply [`net::Transport`] trait the node
//! runtime uses, its QUIC implementation and its in-memory twin, and binds certificate names
//! and roles to the peer of every inbound request ([`net::Peer`]).

pub mod net;
pub mod tls;

use jigsaw_protocol::wire::{self, FrameError, WireMessage, HEADER_LEN};
use std::net::SocketAddr;

/// ALPN protocol id.
pub const ALPN: &[u8] = b"jigsaw/1";

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not bind or configure the endpoint; fix the config and restart.
    #[error("endpoint setup: {0}")]
    Setup(String),
    /// The peer could not be reached or the handshake failed (bad certificate, peer down):
    /// treat the peer as unreachable; retrying later may succeed.
    #[error("connection to {peer}: {message}")]
    Connect {
        /// Peer address.
        peer: SocketAddr,
        /// Cause.
        message: String,
    },
    /// The connection or stream broke mid-exchange; retry on a new stream.
    #[error("stream: {0}")]
    Stream(String),
    /// No reply in time: the peer may be slow, partitioned or dead; retry later.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The peer sent a frame this node rejects; close the connection.
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
}

/// A QUIC endpoint with this node's identity.
#[derive(Debug, Clone)]
pub struct QuicNode {
    endpoint: quinn::Endpoint,
    /// The client config dials use (replaced by [`QuicNode::reload`]).
    client: std::sync::Arc<std::sync::RwLock<quinn::ClientConfig>>,
    /// The deny list of the identity bound (or last reloaded) at creation.
    deny: std::sync::Arc<tls::DenyList>,
}

impl QuicNode {
    /// Bind `addr` (port 0 for any) with `identity` for both accepting and dialing.
    pub fn bind(addr: SocketAddr, identity: &tls::Identity) -> Result<QuicNode, TransportError> {
        let setup = |e: tls::TlsError| TransportError::Setup(e.to_string());
        let endpoint = quinn::Endpoint::server(identity.server_config().map_err(setup)?, addr)
            .map_err(|e| TransportError::Setup(format!("bind {addr}: {e}")))?;
        let client = std::sync::Arc::new(std::sync::RwLock::new(identity.client_config().map_err(setup)?));
        Ok(QuicNode { endpoint, client, deny: identity.deny().clone() })
    }

    /// Use `identity` for every handshake from now on, accepting and dialing (connections
    /// already open keep theirs). Nothing changes if the new identity does not make a
    /// valid configuration.
    pub fn reload(&self, identity: &tls::Identity) -> Result<(), TransportError> {
        let setup = |e: tls::TlsError| TransportError::Setup(e.to_string());
        let (server, client) = (identity.server_config().map_err(setup)?, identity.client_config().map_err(setup)?);
        self.endpoint.set_server_config(Some(server));
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
        Ok(())
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint.local_addr().map_err(|e| TransportError::Setup(e.to_string()))
    }

    /// Dial `peer`, expecting its certificate to name `server_name`.
    pub async fn connect(&self, peer: SocketAddr, server_name: &str) -> Result<quinn::Connection, TransportError> {
        let err = |message: String| TransportError::Connect { peer, message };
        let config = self.client.read().unwrap_or_else(|p| p.into_inner()).clone();
        self.endpoint
            .connect_with(config, peer, server_name)
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))
    }

    /// The next incoming connection attempt, before its handshake (`None` once closed).
    pub async fn accept_incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Accept the next incoming connection (`None` once the endpoint is closed).
    pub async fn accept(&self) -> Option<Result<quinn::Connection, TransportError>> {
        let incoming = self.endpoint.accept().await?;
        let peer = incoming.remote_address();
        Some(incoming.await.map_err(|e| TransportError::Connect { peer, message: e.to_string() }))
    }

    /// Close the endpoint.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Wait until every connection has drained after [`QuicNode::close`].
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Write one frame.
pub async fn send_frame(stream: &mut quinn::SendStream, msg: &WireMessage) -> Result<(), TransportError> {
    let bytes = wire::encode_frame(msg)?;
    stream.write_all(&bytes).await.map_err(|e| TransportError::Stream(e.to_string()))
}

/// Read one frame: the header is checked before the body is read or allocated.
pub async fn recv_frame(stream: &mut quinn::RecvStream) -> Result<WireMessage, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await.map_err(|e| TransportError::Stream(e.to_string()))?;
    let len = wire::decode_header(&header)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + len);
    frame.extend_from_slice(&header);
    frame.resize(HEADER_LEN + len, 0);
    stream.read_exact(&mut frame[HEADER_LEN..]).await.map_err(|e| TransportError::Stream(e.to_string()))?;
    Ok(wire::decode_frame(&frame)?.0)
}

/// Send `msg` on a new stream of `conn` and wait for one reply frame.
pub async fn request(conn: &quinn::Connection, msg: &WireMessage) -> Result<WireMessage, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransportError::Stream(e.to_string()))?;
    send_frame(&mut send, msg).await?;
    send.finish().map_err(|e| TransportError::Stream(e.to_string()))?;
    recv_frame(&mut recv).await
}
