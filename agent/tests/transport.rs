//! QUIC with mutual TLS on loopback: CA-issued nodes talk; a self-signed peer or a peer of
//! another cluster's CA cannot. Tests wait on the handshake's outcome, never on sleeps.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests are shells, not pure cores

use jigsaw_agent::transport::tls::{ca_init, ca_issue, Identity};
use jigsaw_agent::transport::{recv_frame, request, send_frame, QuicNode};
use jigsaw_protocol::wire::WireMessage;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("jigsaw-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn node(dir: &Path, name: &str) -> Identity {
    let (cert, key) = ca_issue(dir, name).expect("issue");
    Identity::load(&dir.join("ca.pem"), &cert, &key).expect("load")
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Serve one connection: answer every Hello with a Hello from `name`.
fn serve(server: QuicNode, name: &'static str) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let conn = server.accept().await.ok_or("closed")?.map_err(|e| e.to_string())?;
        loop {
            let Ok((mut send, mut recv)) = conn.accept_bi().await else { return Ok(()) };
            let msg = recv_frame(&mut recv).await.map_err(|e| e.to_string())?;
            let WireMessage::Hello { applied_epoch, .. } = msg else { return Err("unexpected".into()) };
            send_frame(&mut send, &WireMessage::Hello { node: name.into(), applied_epoch: applied_epoch + 1 })
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
        }
    })
}

#[tokio::test]
async fn ca_issued_nodes_exchange_frames() {
    let dir = tmp("ok");
    ca_init(&dir, "test").expect("ca");
    assert!(ca_init(&dir, "test").is_err(), "an existing CA is never overwritten");
    let server = QuicNode::bind(loopback(), &node(&dir, "n0")).expect("bind");
    let addr = server.local_addr().expect("addr");
    let task = serve(server, "n0");
    let client = QuicNode::bind(loopback(), &node(&dir, "n1")).expect("bind");
    let conn = client.connect(addr, "n0").await.expect("handshake");
    for e in 0..3u64 {
        let reply = request(&conn, &WireMessage::Hello { node: "n1".into(), applied_epoch: e }).await.expect("reply");
        assert_eq!(reply, WireMessage::Hello { node: "n0".into(), applied_epoch: e + 1 });
    }
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client whose certificate is not from the server's CA gets no answer.
async fn rejected_client(client_identity: Identity, dir: &Path) {
    let server = QuicNode::bind(loopback(), &node(dir, "n0")).expect("bind");
    let addr = server.local_addr().expect("addr");
    let task = serve(server, "n0");
    let client = QuicNode::bind(loopback(), &client_identity).expect("bind");
    // TLS 1.3: the client may finish its side before the server checks its certificate,
    // so the rejection shows either at connect or on the first request.
    let outcome = match client.connect(addr, "n0").await {
        Err(_) => None,
        Ok(conn) => Some(
            tokio::time::timeout(
                Duration::from_secs(20),
                request(&conn, &WireMessage::Hello { node: "intruder".into(), applied_epoch: 0 }),
            )
            .await,
        ),
    };
    assert!(
        !matches!(outcome, Some(Ok(Ok(_)))),
        "a peer without a certificate from the cluster CA must not get a reply: {outcome:?}"
    );
    let server_result =
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("server finishes").expect("join");
    assert!(server_result.is_err(), "the server must refuse the handshake");
}

#[tokio::test]
async fn self_signed_peer_is_rejected() {
    let dir = tmp("selfsigned");
    ca_init(&dir, "test").expect("ca");
    let ck = rcgen::generate_simple_self_signed(vec!["intruder".to_string()]).expect("self-signed");
    let mut roots = rustls::RootCertStore::empty();
    // The intruder trusts the real CA, so only its own certificate is wrong.
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    use rustls::pki_types::pem::PemObject;
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).expect("pem")).expect("root");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(ck.signing_key.serialize_pem().as_bytes()).expect("key");
    let intruder = Identity::from_parts(vec![ck.cert.der().clone()], key, roots);
    rejected_client(intruder, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn peer_of_another_cluster_is_rejected() {
    let dir = tmp("ours");
    let other = tmp("theirs");
    ca_init(&dir, "ours").expect("ca");
    ca_init(&other, "theirs").expect("ca");
    // Their node trusts our CA but holds a certificate from theirs.
    let (cert, key) = ca_issue(&other, "n9").expect("issue");
    let stranger = Identity::load(&dir.join("ca.pem"), &cert, &key).expect("load");
    rejected_client(stranger, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[tokio::test]
async fn client_refuses_a_server_outside_the_cluster() {
    let dir = tmp("srv-ours");
    let other = tmp("srv-theirs");
    ca_init(&dir, "ours").expect("ca");
    ca_init(&other, "theirs").expect("ca");
    let (cert, key) = ca_issue(&other, "n0").expect("issue");
    let fake_server =
        QuicNode::bind(loopback(), &Identity::load(&other.join("ca.pem"), &cert, &key).expect("load")).expect("bind");
    let addr = fake_server.local_addr().expect("addr");
    let accept = tokio::spawn(async move { fake_server.accept().await.map(|r| r.is_ok()) });
    let client = QuicNode::bind(loopback(), &node(&dir, "n1")).expect("bind");
    assert!(client.connect(addr, "n0").await.is_err(), "the client must not trust another CA's server");
    let _ = tokio::time::timeout(Duration::from_secs(20), accept).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

/// The handler both transports serve in the conformance suite: answers a Hello with the
/// claimed name and whether the peer's identity carries it.
fn identity_echo() -> jigsaw_agent::transport::net::Handler {
    use jigsaw_agent::transport::net::{BoxFuture, Peer};
    std::sync::Arc::new(|peer: Peer, msg: WireMessage| -> BoxFuture<WireMessage> {
        Box::pin(async move {
            let WireMessage::Hello { node, .. } = msg else {
                return WireMessage::Error { message: "?".into(), retry: false };
            };
            WireMessage::Hello { node: node.clone(), applied_epoch: u64::from(peer.is(&node)) }
        })
    })
}

/// One conformance suite for every [`Transport`]: `client` is node `node-c`; `node-a` at
/// `addr` serves [`identity_echo`].
async fn transport_conformance<T: jigsaw_agent::transport::net::Transport>(client: &T, addr: &str) {
    use jigsaw_agent::transport::TransportError;
    let ask = |claim: &str| WireMessage::Hello { node: claim.into(), applied_epoch: 0 };
    let t = Duration::from_secs(5);
    // The server believes a node name only when the client's identity carries it.
    let honest = client.request("node-a", addr, ask("node-c"), t).await.expect("reply");
    assert_eq!(honest, WireMessage::Hello { node: "node-c".into(), applied_epoch: 1 }, "own name is believed");
    let liar = client.request("node-a", addr, ask("node-a"), t).await.expect("reply");
    assert_eq!(liar, WireMessage::Hello { node: "node-a".into(), applied_epoch: 0 }, "a claimed name is not");
    // A message over the frame cap fails at the sender with a frame error, and the link
    // still works afterwards.
    let big = WireMessage::Error { message: "x".repeat(jigsaw_protocol::wire::MAX_FRAME + 1), retry: false };
    let r = client.request("node-a", addr, big, t).await;
    assert!(matches!(r, Err(TransportError::Frame(_))), "oversized message: {r:?}");
    let again = client.request("node-a", addr, ask("node-c"), t).await.expect("reply after an oversized message");
    assert_eq!(again, honest);
    // A peer that does not exist is an error within the timeout, never a hang.
    let started = tokio::time::Instant::now();
    let gone = client.request("node-z", "127.0.0.1:9", ask("node-c"), Duration::from_millis(800)).await;
    assert!(gone.is_err(), "unreachable peer: {gone:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "unreachable peer took {:?}", started.elapsed());
}

/// The conformance suite over QUIC; and a client dialing node `b` at an address served by
/// node `a` is refused (the server certificate does not name `b`).
#[tokio::test]
async fn quic_transport_conformance() {
    use jigsaw_agent::transport::net::{QuicTransport, Transport};
    let dir = tmp("names");
    ca_init(&dir, "c").expect("ca");
    let server = QuicTransport::new(QuicNode::bind(loopback(), &node(&dir, "node-a")).expect("bind"));
    let addr = server.local_addr().expect("addr").to_string();
    tokio::spawn(server.clone().serve(identity_echo()));
    let client = QuicTransport::new(QuicNode::bind(loopback(), &node(&dir, "node-c")).expect("bind"));
    transport_conformance(client.as_ref(), &addr).await;
    let hello = WireMessage::Hello { node: "node-c".into(), applied_epoch: 0 };
    let wrong_server = client.request("node-b", &addr, hello, Duration::from_secs(5)).await;
    assert!(wrong_server.is_err(), "server certificate must name the dialed node: {wrong_server:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same suite over the in-memory twin (which carries encoded frames, so the codec and
/// its size cap apply exactly as on QUIC).
#[tokio::test(start_paused = true)]
async fn sim_transport_conformance() {
    use jigsaw_agent::core::netsim::LinkConfig;
    use jigsaw_agent::transport::net::{SimHub, SimTransport};
    let hub = SimHub::start(11, LinkConfig { min_delay_us: 50, max_delay_us: 500, drop: 0.0 });
    hub.attach("node-a", identity_echo());
    hub.attach("node-c", identity_echo());
    let client = SimTransport::new(hub.clone(), "node-c");
    transport_conformance(client.as_ref(), "node-a").await;
}

/// A server that reads every request, counts it and, for the first `lose` of them, closes
/// the connection instead of replying (the request ran; its reply is lost); later ones get a
/// Hello back.
fn losing_server(server: QuicNode, lose: usize) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(conn)) = server.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    if recv_frame(&mut recv).await.is_err() {
                        continue;
                    }
                    if count.fetch_add(1, Ordering::SeqCst) < lose {
                        conn.close(0u32.into(), b"reply lost");
                        return;
                    }
                    let hello = WireMessage::Hello { node: "n0".into(), applied_epoch: 0 };
                    if send_frame(&mut send, &hello).await.is_ok() {
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                }
            });
        }
    });
    seen
}

/// A lost reply: the transport resends a request that is safe to run twice on a fresh
/// connection, but never a stage, which reached the peer and may have run (the data plane
/// decides what to do with the failure).
#[tokio::test]
async fn a_lost_reply_is_resent_only_when_running_twice_is_safe() {
    use jigsaw_agent::transport::net::{QuicTransport, Transport};
    use jigsaw_protocol::route::StageRequest;
    use std::sync::atomic::Ordering;
    let dir = tmp("lost");
    ca_init(&dir, "c").expect("ca");
    let client = QuicTransport::new(QuicNode::bind(loopback(), &node(&dir, "n1")).expect("bind"));
    let t = Duration::from_secs(10);

    let server = QuicNode::bind(loopback(), &node(&dir, "n0")).expect("bind");
    let addr = server.local_addr().expect("addr").to_string();
    let seen = losing_server(server, 1);
    let stage = WireMessage::Stage(StageRequest {
        id: 1,
        item: 0,
        app: "a".into(),
        task: "t".into(),
        gpu: "GPU-0".into(),
        start: 0,
        budget_us: 1_000_000,
        input: vec![1.0],
    });
    let r = client.request("n0", &addr, stage.clone(), t).await;
    assert!(r.is_err(), "the stage's reply was lost: {r:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the stage ran once: not resent");
    // The connection is replaced for the next request, which gets through.
    let r = client.request("n0", &addr, stage, t).await.expect("a later stage is answered");
    assert!(matches!(r, WireMessage::Hello { .. }));
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    let server = QuicNode::bind(loopback(), &node(&dir, "n0")).expect("bind");
    let addr = server.local_addr().expect("addr").to_string();
    let seen = losing_server(server, 1);
    let hello = WireMessage::Hello { node: "n1".into(), applied_epoch: 0 };
    let r = client.request("n0", &addr, hello, t).await.expect("resent on a fresh connection");
    assert!(matches!(r, WireMessage::Hello { .. }));
    assert_eq!(seen.load(Ordering::SeqCst), 2, "sent twice: once lost, once answered");
    let _ = std::fs::remove_dir_all(&dir);
}
