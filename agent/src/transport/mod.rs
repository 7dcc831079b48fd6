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

/// Write one frame. A message that does not fit one frame is an error before anything is
/// written.
pub async fn send_frame(stream: &mut quinn::SendStream, msg: &WireMessage) -> Result<(), TransportError> {
    let bytes = wire::encode_frame(msg)?;
    stream.write_all(&bytes).await.map_err(|e| TransportError::Stream(e.to_string()))
}

/// Largest read from a stream at once while a frame body arrives, bytes.
pub const READ_CHUNK: usize = 64 * 1024;

/// Reads one frame from a byte stream without trusting the header's length: the header is
/// checked first (magic, version, [`wire::MAX_FRAME`]), then the body is read in chunks of at
/// most [`READ_CHUNK`] and the buffer grows only as bytes arrive (doubling, capped at the
/// announced length). A peer that announces 16 MiB and sends nothing costs the receiver a
/// header and one chunk, not 16 MiB.
///
/// With a [`RecvBudget`], the announced length of a frame larger than [`READ_CHUNK`] is
/// also charged to it before the body is read: a peer whose partial frames already hold its budget is not read from (QUIC flow
/// control then stalls it) until frames complete or fail. (Charging the whole frame up front
/// means that a frame, once admitted, can always complete: incremental charging could leave
/// several half-read frames waiting on each other.)
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Budget held for `buf` so far, bytes.
    held: usize,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Bytes buffered so far (header included; 0 while waiting for the budget).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The buffer's capacity: what the frame being read holds in memory.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Read one frame's bytes (header and body) from `r`. On an error the partial frame is
    /// kept (for inspection) until the reader is dropped; the budget is released then.
    pub async fn read<R>(&mut self, r: &mut R, budget: Option<&RecvBudget>) -> Result<&[u8], TransportError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt as _;
        let stream_err = |e: std::io::Error| TransportError::Stream(e.to_string());
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header).await.map_err(stream_err)?;
        let len = wire::decode_header(&header)?;
        let total = HEADER_LEN + len;
        // Frames of at most one chunk are not charged: they cost at most a chunk each (and a
        // peer's streams are bounded), and must not queue behind a large stalled frame.
        // Nothing is allocated while waiting for the budget.
        if let (Some(b), true) = (budget, len > READ_CHUNK) {
            self.held = b.acquire(len).await;
        }
        self.buf.clear();
        self.buf.reserve_exact(HEADER_LEN + len.min(READ_CHUNK));
        self.buf.extend_from_slice(&header);
        let mut chunk = vec![0u8; len.min(READ_CHUNK)];
        while self.buf.len() < total {
            if self.buf.len() == self.buf.capacity() {
                // Double, but never beyond what the header announced.
                let grow = self.buf.len().min(total - self.buf.len());
                self.buf.reserve_exact(grow);
            }
            let want = (self.buf.capacity().min(total) - self.buf.len()).min(chunk.len());
            let n = r.read(&mut chunk[..want]).await.map_err(stream_err)?;
            if n == 0 {
                return Err(TransportError::Stream(format!(
                    "stream ended after {} of {len} body bytes",
                    self.buf.len() - HEADER_LEN
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(&self.buf)
    }

    /// Release what the reader holds against `budget` (call once the frame is decoded).
    pub fn release(&mut self, budget: Option<&RecvBudget>) {
        if let Some(b) = budget {
            b.release(self.held);
        }
        self.held = 0;
        self.buf = Vec::new();
    }
}

/// Bytes of partial frames one peer connection may hold in receive buffers at once
/// ([`RECV_BUDGET`] per accepted connection).
#[derive(Debug)]
pub struct RecvBudget {
    sem: tokio::sync::Semaphore,
    size: usize,
}

/// The per-connection budget of partially received frames, bytes: twice the largest frame,
/// so two frames of any size can arrive at once; more waits for them (the peer is stalled by
/// QUIC flow control meanwhile).
pub const RECV_BUDGET: usize = 2 * wire::MAX_FRAME;

impl RecvBudget {
    /// A budget of `size` bytes.
    pub fn new(size: usize) -> RecvBudget {
        RecvBudget { sem: tokio::sync::Semaphore::new(size), size }
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Take `n` bytes (at most the whole budget, so any frame can be admitted); returns what
    /// was taken.
    async fn acquire(&self, n: usize) -> usize {
        let n = n.min(self.size).min(u32::MAX as usize);
        match self.sem.acquire_many(n as u32).await {
            Ok(p) => {
                p.forget();
                n
            }
            Err(_) => 0,
        }
    }

    fn release(&self, n: usize) {
        self.sem.add_permits(n);
    }
}

/// Read one frame: the header is checked before the body is read, and the body buffer grows
/// only as bytes arrive ([`FrameReader`]).
pub async fn recv_frame(stream: &mut quinn::RecvStream) -> Result<WireMessage, TransportError> {
    recv_frame_within(stream, None).await
}

/// [`recv_frame`], charging the bytes buffered to `budget` (the sender's connection's).
pub async fn recv_frame_within(
    stream: &mut quinn::RecvStream,
    budget: Option<&RecvBudget>,
) -> Result<WireMessage, TransportError> {
    let mut reader = FrameReader::new();
    let r = match reader.read(stream, budget).await {
        Ok(frame) => wire::decode_frame(frame).map(|(m, _)| m).map_err(TransportError::from),
        Err(e) => Err(e),
    };
    reader.release(budget);
    r
}

/// Send `msg` on a new stream of `conn` and wait for one reply frame.
pub async fn request(conn: &quinn::Connection, msg: &WireMessage) -> Result<WireMessage, TransportError> {
    let frame = wire::encode_frame(msg)?;
    exchange(conn, &frame).await.map_err(|(_, e)| e)
}

/// Send an encoded request frame on a new stream of `conn` and read the reply. On failure,
/// also says whether the request may have reached the peer: `false` only when no stream
/// could be opened (nothing was sent).
pub(crate) async fn exchange(conn: &quinn::Connection, frame: &[u8]) -> Result<WireMessage, (bool, TransportError)> {
    let stream_err = |e: String| TransportError::Stream(e);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| (false, stream_err(e.to_string())))?;
    send.write_all(frame).await.map_err(|e| (true, stream_err(e.to_string())))?;
    send.finish().map_err(|e| (true, stream_err(e.to_string())))?;
    recv_frame(&mut recv).await.map_err(|e| (true, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Yields `data` in pieces of `piece` bytes, then stalls forever.
    struct Stalling {
        data: Vec<u8>,
        at: usize,
        piece: usize,
    }

    impl tokio::io::AsyncRead for Stalling {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.at >= self.data.len() {
                return Poll::Pending;
            }
            let n = self.piece.min(self.data.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn header(len: usize) -> Vec<u8> {
        let mut h = wire::MAGIC.to_vec();
        h.extend_from_slice(&wire::VERSION.to_le_bytes());
        h.extend_from_slice(&(len as u32).to_le_bytes());
        h
    }

    /// A header that claims 16 MiB followed by `sent` bytes and a stall: the reader holds
    /// about what arrived (at most twice that, plus a chunk), never what was claimed.
    #[tokio::test]
    async fn capacity_grows_with_the_bytes_received() {
        for sent in [0usize, 1, 1000, 100_000, 3_000_000] {
            let mut data = header(wire::MAX_FRAME);
            data.extend(std::iter::repeat_n(7u8, sent));
            let mut r = Stalling { data, at: 0, piece: 4096 };
            let mut reader = FrameReader::new();
            let budget = RecvBudget::new(RECV_BUDGET);
            let read = tokio::time::timeout(std::time::Duration::from_millis(50), reader.read(&mut r, Some(&budget)));
            assert!(read.await.is_err(), "the frame never completes");
            assert_eq!(reader.len(), HEADER_LEN + sent);
            let bound = 2 * (HEADER_LEN + sent) + READ_CHUNK + HEADER_LEN;
            assert!(reader.capacity() <= bound, "{sent} bytes sent: capacity {} > {bound}", reader.capacity());
            assert_eq!(RECV_BUDGET - budget.available(), wire::MAX_FRAME, "the budget is charged the claim");
            reader.release(Some(&budget));
            assert_eq!(budget.available(), RECV_BUDGET, "released");
        }
    }

    /// Frames of every size come through whole, whatever the pieces they arrive in.
    #[tokio::test]
    async fn frames_arrive_in_pieces() {
        for n in [0usize, 1, 5000, 200_000] {
            let msg = WireMessage::Error { message: "x".repeat(n), retry: false };
            let frame = wire::encode_frame(&msg).expect("encodes");
            for piece in [1usize, 7, 65_536, usize::MAX] {
                if piece == 1 && n > 5000 {
                    continue;
                }
                let mut r = Stalling { data: frame.clone(), at: 0, piece };
                let mut reader = FrameReader::new();
                let got = reader.read(&mut r, None).await.expect("reads");
                assert_eq!(wire::decode_frame(got).expect("decodes").0, msg);
                assert!(reader.capacity() <= 2 * frame.len() + READ_CHUNK);
            }
        }
    }

    /// A stream that ends mid-body is an error, not a hang or a short frame.
    #[tokio::test]
    async fn a_short_body_is_an_error() {
        let mut data = header(100);
        data.extend([1u8; 40]);
        let mut r: &[u8] = &data;
        let e = FrameReader::new().read(&mut r, None).await.expect_err("short");
        assert!(e.to_string().contains("40 of 100"), "{e}");
        let mut bad = header(wire::MAX_FRAME + 1);
        let mut r: &[u8] = &bad;
        assert!(matches!(FrameReader::new().read(&mut r, None).await, Err(TransportError::Frame(_))));
        bad[0] = b'X';
        let mut r: &[u8] = &bad;
        assert!(matches!(FrameReader::new().read(&mut r, None).await, Err(TransportError::Frame(_))));
    }

    /// While other frames hold a connection's budget, a reader waits before reading a body,
    /// and goes on once they release it.
    #[tokio::test]
    async fn a_spent_budget_stops_reading() {
        let budget = RecvBudget::new(100_000);
        let mut stalled = header(80_000);
        stalled.extend([1u8; 10]);
        // (A frame of at most one chunk is never charged.)
        let mut r1 = Stalling { data: stalled, at: 0, piece: 65_536 };
        let mut first = FrameReader::new();
        let read = tokio::time::timeout(std::time::Duration::from_millis(20), first.read(&mut r1, Some(&budget)));
        assert!(read.await.is_err());
        assert_eq!(budget.available(), 20_000);
        let small = WireMessage::Error { message: "z".repeat(1_000), retry: false };
        let mut r: &[u8] = &wire::encode_frame(&small).expect("encodes");
        let mut reader = FrameReader::new();
        let got = reader.read(&mut r, Some(&budget)).await.expect("a small frame is not held up");
        assert_eq!(wire::decode_frame(got).expect("decodes").0, small);
        let msg = WireMessage::Error { message: "y".repeat(70_000), retry: false };
        let frame = wire::encode_frame(&msg).expect("encodes");
        let mut second = FrameReader::new();
        let mut r2 = Stalling { data: frame.clone(), at: 0, piece: 65_536 };
        let read = tokio::time::timeout(std::time::Duration::from_millis(20), second.read(&mut r2, Some(&budget)));
        assert!(read.await.is_err(), "waits for the budget");
        assert_eq!((second.len(), second.capacity()), (0, 0), "nothing is buffered meanwhile");
        first.release(Some(&budget));
        let mut second = FrameReader::new();
        let mut r2 = Stalling { data: frame, at: 0, piece: 65_536 };
        let got = second.read(&mut r2, Some(&budget)).await.expect("reads once released");
        assert_eq!(wire::decode_frame(got).expect("decodes").0, msg);
    }
}
