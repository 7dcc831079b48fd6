//! The narrow request/reply transport the node runtime uses, with two implementations:
//! [`QuicTransport`] (quinn, mutual TLS, one stream per request) and [`SimTransport`] (the
//! in-memory twin over [`SimNet`]: seeded delay, loss and link cuts on tokio's clock, which
//! tests pause so that virtual time drives everything).
//!
//! Inbound messages go to a [`Handler`] with the sender's [`Peer`] identity: its name and
//! [`Role`]. With QUIC both come from the verified client certificate, read once per
//! connection ([`super::tls::CertInfo`]: the subject common name and the `jigsaw:role:*`
//! SAN URI); the in-memory twin gives each simulated sender a name and role
//! ([`SimTransport::new`] for a node, [`SimTransport::admin`] for an operator), so the same
//! handler code sees the same identities in both. [`Peer::is`] checks that a peer is a
//! given node: a message that claims to come from a node is only believed when the
//! certificate says so.

use super::{exchange, recv_frame_within, send_frame, tls, QuicNode, RecvBudget, TransportError, RECV_BUDGET};
use crate::core::netsim::{LinkConfig, SimNet};
use jigsaw_protocol::wire::{self, FrameError, Role, WireMessage};
use rustls::pki_types::CertificateDer;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// A boxed future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Who sent an inbound message: the name and role of its certificate (or of the simulated
/// sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    name: String,
    role: Role,
}

impl Peer {
    /// A peer with this identity.
    pub fn new(name: &str, role: Role) -> Peer {
        Peer { name: name.to_string(), role }
    }

    /// The certificate's name (a node id, or the operator's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificate's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the peer is node `name`: a node certificate for exactly that name (never an
    /// extra DNS name of the certificate, never an admin certificate).
    pub fn is(&self, name: &str) -> bool {
        self.role == Role::Node && self.name.eq_ignore_ascii_case(name)
    }
}

/// Handles one inbound request and returns the reply.
pub type Handler = Arc<dyn Fn(Peer, WireMessage) -> BoxFuture<WireMessage> + Send + Sync>;

/// Request/reply to a node.
pub trait Transport: Send + Sync + 'static {
    /// Send `msg` to node `to` listening at `addr` and wait up to `timeout` for its reply.
    fn request(
        &self,
        to: &str,
        addr: &str,
        msg: WireMessage,
        timeout: Duration,
    ) -> impl Future<Output = Result<WireMessage, TransportError>> + Send;
}

/// QUIC transport: cached connections per node, one bidirectional stream per request.
#[derive(Debug)]
pub struct QuicTransport {
    node: QuicNode,
    conns: Mutex<HashMap<String, quinn::Connection>>,
    /// The serials refused now: checked by the TLS verifiers at each handshake, and here
    /// before every request on a connection opened earlier.
    deny: RwLock<Arc<tls::DenyList>>,
}

impl QuicTransport {
    /// Wrap a bound endpoint.
    pub fn new(node: QuicNode) -> Arc<QuicTransport> {
        let deny = node.deny.clone();
        Arc::new(QuicTransport { node, conns: Mutex::new(HashMap::new()), deny: RwLock::new(deny) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.node.local_addr()
    }

    fn denied(&self, serial: &str) -> bool {
        self.deny.read().unwrap_or_else(|p| p.into_inner()).denies(serial)
    }

    /// Take a new identity (a rotated certificate and key, a new CA bundle, a new deny
    /// list) without a restart: new handshakes in both directions use it at once; cached
    /// outbound connections are dropped, so the next request to each peer dials afresh
    /// (presenting the new certificate, checking the peer against the new CA bundle and
    /// deny list); an inbound connection whose peer is now denied is closed at its next
    /// request. Connections in use finish their requests.
    pub fn reload(&self, identity: &tls::Identity) -> Result<(), TransportError> {
        self.node.reload(identity)?;
        *self.deny.write().unwrap_or_else(|p| p.into_inner()) = identity.deny().clone();
        self.conns().clear();
        Ok(())
    }

    /// Serve inbound connections until the endpoint closes: every stream is one request
    /// frame answered by `handler`, which gets the peer's certificate identity (read once
    /// per connection). A bad frame closes that stream only; a peer whose certificate is
    /// denied after it connected loses the connection. The partial frames of one connection
    /// share a [`RecvBudget`] of [`RECV_BUDGET`] bytes, and a reply that does not fit a frame
    /// is answered with an [`WireMessage::Error`] saying so (the requester then knows not to
    /// retry it unchanged).
    pub async fn serve(self: Arc<Self>, handler: Handler) {
        while let Some(incoming) = self.node.accept_incoming().await {
            let (handler, me) = (handler.clone(), self.clone());
            // Each handshake in its own task: a stalled or hostile handshake must not hold up
            // the next connection.
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return }; // e.g. not from our CA
                let info = conn
                    .peer_identity()
                    .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
                    .and_then(|certs| certs.first().and_then(|c| tls::CertInfo::parse(c).ok()));
                // The verifier already refused certificates without a jigsaw identity.
                let Some(info) = info else { return };
                let peer = Peer::new(&info.name, info.role);
                let budget = Arc::new(RecvBudget::new(RECV_BUDGET));
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    if me.denied(&info.serial) {
                        conn.close(0u32.into(), b"certificate revoked");
                        return;
                    }
                    let (handler, peer, budget) = (handler.clone(), peer.clone(), budget.clone());
                    tokio::spawn(async move {
                        let reply = match recv_frame_within(&mut recv, Some(&budget)).await {
                            Ok(msg) => handler(peer, msg).await,
                            Err(e) => WireMessage::Error { message: e.to_string(), retry: false },
                        };
                        let sent = match send_frame(&mut send, &reply).await {
                            Err(TransportError::Frame(e)) => {
                                let why = WireMessage::Error {
                                    message: format!("reply does not fit in a frame: {e}"),
                                    retry: false,
                                };
                                send_frame(&mut send, &why).await
                            }
                            r => r,
                        };
                        if sent.is_ok() {
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        }
                    });
                }
            });
        }
    }

    /// Close the endpoint.
    pub fn close(&self) {
        self.node.close();
    }

    /// Wait until the closed endpoint's connections have drained.
    pub async fn wait_idle(&self) {
        self.conns().clear();
        self.node.wait_idle().await;
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn conn(&self, to: &str, addr: SocketAddr) -> Result<quinn::Connection, TransportError> {
        if let Some(c) = self.conns().get(to) {
            if c.close_reason().is_none() && c.remote_address() == addr {
                return Ok(c.clone());
            }
        }
        // Dial without holding the map: a dead peer's handshake must not stall traffic to
        // the others. Two concurrent dials to one peer both succeed; the later one is kept.
        let c = self.node.connect(addr, to).await?;
        self.conns().insert(to.to_string(), c.clone());
        Ok(c)
    }
}

impl Transport for QuicTransport {
    async fn request(
        &self,
        to: &str,
        addr: &str,
        msg: WireMessage,
        timeout: Duration,
    ) -> Result<WireMessage, TransportError> {
        let sock: SocketAddr = addr.parse().map_err(|e| TransportError::Setup(format!("address `{addr}`: {e}")))?;
        let frame = wire::encode_frame(&msg)?;
        let fut = async {
            let conn = self.conn(to, sock).await?;
            match exchange(&conn, &frame).await {
                // The cached connection may be dead (peer restarted): one fresh try, unless the
                // request may have been handled already and must not run twice (see
                // `resend_after`).
                Err((sent, e @ TransportError::Stream(_))) => {
                    self.conns().remove(to);
                    if !resend_after(sent, &msg, &conn) {
                        return Err(e);
                    }
                    let conn = self.conn(to, sock).await?;
                    exchange(&conn, &frame).await.map_err(|(_, e)| e)
                }
                r => r.map_err(|(_, e)| e),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                // No answer in time: the peer may be dead with its connection still cached
                // (quinn only notices at the idle timeout). Dial afresh next time.
                self.conns().remove(to);
                Err(TransportError::Timeout(timeout))
            }
        }
    }
}

/// Whether a request whose exchange broke may be sent again on a fresh connection:
/// * nothing was sent (no stream could be opened on the cached connection), or
/// * the request is [`WireMessage::retry_safe`] (running it twice is harmless), or
/// * the peer answered with a stateless reset: the endpoint at that address holds no state
///   for the connection (it restarted), so the request was not handled by the process that
///   serves there now.
///
/// Otherwise (a [`WireMessage::Stage`] whose stream broke or whose connection the peer
/// closed after the request left) the request may have run, and its failure is returned: the
/// caller decides (the data plane tries another instance or answers the client).
fn resend_after(sent: bool, msg: &WireMessage, conn: &quinn::Connection) -> bool {
    !sent || msg.retry_safe() || matches!(conn.close_reason(), Some(quinn::ConnectionError::Reset))
}

/// What travels on the simulated network: encoded frames, exactly the bytes QUIC would
/// carry, so the twin exercises the codec and its size cap.
enum Envelope {
    Request { id: u64, from: String, role: Role, frame: Vec<u8> },
    Reply { id: u64, frame: Vec<u8> },
}

struct HubInner {
    net: SimNet<Envelope>,
    ids: BTreeMap<String, u32>,
    handlers: BTreeMap<String, Handler>,
    pending: HashMap<u64, oneshot::Sender<Result<WireMessage, FrameError>>>,
    next_id: u64,
    /// Replies still to lose, per replying node (after the request was handled).
    lose_replies: BTreeMap<String, usize>,
}

/// The simulated network all [`SimTransport`]s of one simulation share.
pub struct SimHub {
    inner: Mutex<HubInner>,
    origin: tokio::time::Instant,
    wake: Notify,
}

impl std::fmt::Debug for SimHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimHub")
    }
}

impl SimHub {
    /// A network with `seed` and default link behaviour; spawns its delivery task (call from
    /// inside a tokio runtime, with paused time for determinism).
    pub fn start(seed: u64, link: LinkConfig) -> Arc<SimHub> {
        let hub = Arc::new(SimHub {
            inner: Mutex::new(HubInner {
                net: SimNet::new(seed, link),
                ids: BTreeMap::new(),
                handlers: BTreeMap::new(),
                pending: HashMap::new(),
                next_id: 0,
                lose_replies: BTreeMap::new(),
            }),
            origin: tokio::time::Instant::now(),
            wake: Notify::new(),
        });
        let h = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                let Some(hub) = h.upgrade() else { return };
                let next = hub.with(|i| i.net.next_delivery());
                let wake = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(hub.origin + Duration::from_micros(at)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = wake => {}
                    _ = hub.wake.notified() => {}
                }
                hub.deliver();
            }
        });
        hub
    }

    fn with<R>(&self, f: impl FnOnce(&mut HubInner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn now_us(&self) -> u64 {
        tokio::time::Instant::now().duration_since(self.origin).as_micros() as u64
    }

    fn id(inner: &mut HubInner, name: &str) -> u32 {
        let n = inner.ids.len() as u32;
        *inner.ids.entry(name.to_string()).or_insert(n)
    }

    /// Attach node `name` with its handler (a restarted node re-attaches).
    pub fn attach(&self, name: &str, handler: Handler) {
        self.with(|i| {
            Self::id(i, name);
            i.handlers.insert(name.to_string(), handler);
        });
    }

    /// Detach node `name` (it crashed): messages to it are lost from now on.
    pub fn detach(&self, name: &str) {
        self.with(|i| i.handlers.remove(name));
    }

    /// Cut (or heal) the link between two nodes in both directions.
    pub fn set_cut(&self, a: &str, b: &str, cut: bool) {
        self.with(|i| {
            let (x, y) = (Self::id(i, a), Self::id(i, b));
            if cut {
                i.net.cut(x, y)
            } else {
                i.net.heal(x, y)
            }
        });
    }

    /// Lose the next `n` replies node `from` sends, after their requests were handled (a reply
    /// lost on the way back: the requester times out though the request took effect).
    pub fn lose_replies(&self, from: &str, n: usize) {
        self.with(|i| i.lose_replies.insert(from.to_string(), n));
    }

    /// Heal every link.
    pub fn heal_all(&self) {
        self.with(|i| i.net.heal_all());
    }

    /// Messages sent, delivered, dropped and cut so far.
    pub fn stats(&self) -> crate::core::netsim::NetStats {
        self.with(|i| i.net.stats())
    }

    fn send(&self, from: &str, to: &str, env: Envelope) {
        let now = self.now_us();
        self.with(|i| {
            let (f, t) = (Self::id(i, from), Self::id(i, to));
            i.net.send(now, f, t, env);
        });
        self.wake.notify_one();
    }

    fn deliver(self: &Arc<Self>) {
        let now = self.now_us();
        let ready = self.with(|i| i.net.deliver_until(now));
        for (_, _, to, env) in ready {
            match env {
                Envelope::Request { id, from, role, frame } => {
                    let to_name = self.with(|i| i.ids.iter().find(|(_, &v)| v == to).map(|(k, _)| k.clone()));
                    let Some(to_name) = to_name else { continue };
                    let Some(handler) = self.with(|i| i.handlers.get(&to_name).cloned()) else { continue };
                    let hub = self.clone();
                    tokio::spawn(async move {
                        // As the QUIC server does: a frame that does not decode gets no handler.
                        let reply = match wire::decode_frame(&frame) {
                            Ok((msg, _)) => handler(Peer::new(&from, role), msg).await,
                            Err(e) => WireMessage::Error { message: format!("bad frame: {e}"), retry: false },
                        };
                        // A reply that does not fit a frame fails the request at once, as a
                        // reset QUIC stream does.
                        let frame = wire::encode_frame(&reply).or_else(|e| {
                            let why = WireMessage::Error {
                                message: format!("reply does not fit in a frame: {e}"),
                                retry: false,
                            };
                            wire::encode_frame(&why)
                        });
                        let Ok(frame) = frame else { return };
                        // The node may have crashed while handling: then no reply.
                        let deliver = hub.with(|i| {
                            let lose = i.lose_replies.get_mut(&to_name).filter(|n| **n > 0);
                            let lost = lose.map(|n| *n -= 1).is_some();
                            i.handlers.contains_key(&to_name) && !lost
                        });
                        if deliver {
                            hub.send(&to_name, &from, Envelope::Reply { id, frame });
                        }
                    });
                }
                Envelope::Reply { id, frame } => {
                    if let Some(tx) = self.with(|i| i.pending.remove(&id)) {
                        let _ = tx.send(wire::decode_frame(&frame).map(|(m, _)| m));
                    }
                }
            }
        }
    }
}

/// One sender's view of a [`SimHub`], with the identity its requests carry (what a
/// certificate would say over QUIC).
#[derive(Debug, Clone)]
pub struct SimTransport {
    hub: Arc<SimHub>,
    me: String,
    role: Role,
}

impl SimTransport {
    /// Node `me` on `hub` (role [`Role::Node`]).
    pub fn new(hub: Arc<SimHub>, me: &str) -> Arc<SimTransport> {
        SimTransport::with_role(hub, me, Role::Node)
    }

    /// An operator `me` on `hub` (role [`Role::Admin`], as the CLI's admin certificate).
    pub fn admin(hub: Arc<SimHub>, me: &str) -> Arc<SimTransport> {
        SimTransport::with_role(hub, me, Role::Admin)
    }

    /// Sender `me` with `role`.
    pub fn with_role(hub: Arc<SimHub>, me: &str, role: Role) -> Arc<SimTransport> {
        Arc::new(SimTransport { hub, me: me.to_string(), role })
    }
}

impl Transport for SimTransport {
    async fn request(
        &self,
        to: &str,
        _addr: &str,
        msg: WireMessage,
        timeout: Duration,
    ) -> Result<WireMessage, TransportError> {
        let frame = wire::encode_frame(&msg)?;
        let (tx, rx) = oneshot::channel();
        let id = self.hub.with(|i| {
            i.next_id += 1;
            i.pending.insert(i.next_id, tx);
            i.next_id
        });
        self.hub.send(&self.me, to, Envelope::Request { id, from: self.me.clone(), role: self.role, frame });
        let r = tokio::time::timeout(timeout, rx).await;
        self.hub.with(|i| i.pending.remove(&id));
        match r {
            Ok(Ok(m)) => Ok(m?),
            Ok(Err(_)) | Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }
}
