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
    let n0 = node(&dir, "n0");

    let server = QuicNode::bind(loopback(), &n0).expect("bind");
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

    let server = QuicNode::bind(loopback(), &n0).expect("bind");
    let addr = server.local_addr().expect("addr").to_string();
    let seen = losing_server(server, 1);
    let hello = WireMessage::Hello { node: "n1".into(), applied_epoch: 0 };
    let r = client.request("n0", &addr, hello, t).await.expect("resent on a fresh connection");
    assert!(matches!(r, WireMessage::Hello { .. }));
    assert_eq!(seen.load(Ordering::SeqCst), 2, "sent twice: once lost, once answered");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Certificate identities: roles, names, validity, deny lists, rotation ----

use jigsaw_agent::transport::net::{BoxFuture, Handler, Peer, QuicTransport, Transport};
use jigsaw_agent::transport::tls::{self, CertInfo, DenyList, Issue};
use jigsaw_protocol::wire::{ClientReply, ClientRequest, Heartbeat, Role};
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::SystemTime;

fn load(dir: &Path, ca: &str, name: &str) -> Identity {
    Identity::load(&dir.join(ca), &dir.join(format!("{name}.pem")), &dir.join(format!("{name}.key"))).expect("load")
}

/// A handler that answers every request with the peer's identity as the transport saw it.
fn whoami() -> Handler {
    Arc::new(|peer: Peer, _msg: WireMessage| -> BoxFuture<WireMessage> {
        Box::pin(async move {
            let role = match peer.role() {
                Role::Node => 0,
                Role::Admin => 1,
            };
            WireMessage::Hello { node: peer.name().to_string(), applied_epoch: role }
        })
    })
}

fn hello() -> WireMessage {
    WireMessage::Hello { node: "x".into(), applied_epoch: 0 }
}

async fn serve_transport(identity: &Identity, handler: Handler) -> (Arc<QuicTransport>, String) {
    let server = QuicTransport::new(QuicNode::bind(loopback(), identity).expect("bind"));
    let addr = server.local_addr().expect("addr").to_string();
    tokio::spawn(server.clone().serve(handler));
    (server, addr)
}

fn client(identity: &Identity) -> Arc<QuicTransport> {
    QuicTransport::new(QuicNode::bind(loopback(), identity).expect("bind"))
}

#[test]
fn ca_issue_refuses_reserved_names_and_never_overwrites() {
    let dir = tmp("names-reserved");
    ca_init(&dir, "c").expect("ca");
    let ca_key = std::fs::read(dir.join("ca.key")).expect("ca key");
    let ca_pem = std::fs::read(dir.join("ca.pem")).expect("ca pem");
    for (name, needle) in [
        ("ca", "reserved"),
        ("CA", "reserved"),
        ("admin", "--admin"),
        ("localhost", "reserved"),
        ("api.localhost", "reserved"),
        ("127.0.0.1", "IP address"),
        ("::1", "letters"),
        ("bad name", "letters"),
        ("", "non-empty"),
    ] {
        let e = ca_issue(&dir, name).expect_err(name).to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
    // Even with --force, `ca` never replaces the CA's own files.
    let e = tls::issue(&dir, &Issue { force: true, ..Issue::node("ca") }).expect_err("ca");
    assert!(e.to_string().contains("reserved"), "{e}");
    let e = tls::issue(&dir, &Issue { force: true, ..Issue::admin("ca") }).expect_err("ca");
    assert!(e.to_string().contains("reserved"), "{e}");
    assert_eq!(std::fs::read(dir.join("ca.key")).expect("ca key"), ca_key, "the CA key is untouched");
    assert_eq!(std::fs::read(dir.join("ca.pem")).expect("ca pem"), ca_pem, "the CA certificate is untouched");
    // An existing certificate or key is replaced only with force.
    let first = tls::issue(&dir, &Issue::node("n0")).expect("issue");
    let key = std::fs::read(&first.key).expect("key");
    let e = ca_issue(&dir, "n0").expect_err("exists").to_string();
    assert!(e.contains("--force") && e.contains("n0.pem"), "{e}");
    std::fs::remove_file(dir.join("n0.pem")).expect("rm");
    let e = ca_issue(&dir, "n0").expect_err("key exists").to_string();
    assert!(e.contains("n0.key"), "{e}");
    assert_eq!(std::fs::read(&first.key).expect("key"), key, "the key is untouched");
    let again = tls::issue(&dir, &Issue { force: true, ..Issue::node("n0") }).expect("forced");
    assert_ne!(again.info.serial, first.info.serial, "a new certificate");
    assert_ne!(std::fs::read(&again.key).expect("key"), key, "and a new key");
    // `ca init` never replaces a CA key either, even when the certificate is gone.
    std::fs::remove_file(dir.join("ca.pem")).expect("rm");
    assert!(ca_init(&dir, "c").is_err());
    assert_eq!(std::fs::read(dir.join("ca.key")).expect("ca key"), ca_key);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn certificates_name_the_node_only_and_carry_a_role() {
    let dir = tmp("names-only");
    ca_init(&dir, "c").expect("ca");
    let n = tls::issue(&dir, &Issue::node("node-1")).expect("node");
    assert_eq!((n.info.name.as_str(), n.info.role), ("node-1", Role::Node));
    assert_eq!(n.info.dns_names, vec!["node-1".to_string()], "no loopback names by default");
    let pem = std::fs::read_to_string(&n.cert).expect("pem");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("der");
    assert_eq!(CertInfo::parse(&der).expect("parse"), n.info);
    let a = tls::issue(&dir, &Issue::admin("admin")).expect("admin");
    assert_eq!((a.info.name.as_str(), a.info.role), ("admin", Role::Admin));
    assert!(a.info.dns_names.is_empty(), "an admin certificate names no host: {:?}", a.info.dns_names);
    let extra = Issue { extra_names: vec!["localhost".into(), "127.0.0.1".into()], ..Issue::node("node-2") };
    let x = tls::issue(&dir, &extra).expect("extra names");
    assert_eq!(x.info.dns_names, vec!["node-2", "localhost", "127.0.0.1"]);
    assert_eq!(x.info.name, "node-2", "the identity is still the node name");
    // Validity: the default is a year, and `days` sets it.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("now").as_secs() as i64;
    assert!((n.info.not_after - now - 365 * 86_400).abs() < 120, "{:?}", n.info);
    let d = tls::issue(&dir, &Issue::node("node-3").days(7)).expect("7 days");
    assert!((d.info.not_after - now - 7 * 86_400).abs() < 120, "{:?}", d.info);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over QUIC the handler sees the certificate's name and role; a certificate's extra
/// (loopback) names never let it pass for another server, and an admin certificate can
/// never serve as a node.
#[tokio::test]
async fn the_peer_is_the_certificate_name_and_role() {
    let dir = tmp("whoami");
    ca_init(&dir, "c").expect("ca");
    tls::issue(&dir, &Issue { extra_names: vec!["localhost".into()], ..Issue::node("node-a") }).expect("issue");
    tls::issue(&dir, &Issue::node("node-c")).expect("issue");
    tls::issue(&dir, &Issue::admin("admin")).expect("issue");
    let (_server, addr) = serve_transport(&load(&dir, "ca.pem", "node-a"), whoami()).await;
    let t = Duration::from_secs(5);
    let node = client(&load(&dir, "ca.pem", "node-c"));
    let r = node.request("node-a", &addr, hello(), t).await.expect("reply");
    assert_eq!(r, WireMessage::Hello { node: "node-c".into(), applied_epoch: 0 }, "node-c, role node");
    let admin = client(&load(&dir, "ca.pem", "admin"));
    let r = admin.request("node-a", &addr, hello(), t).await.expect("reply");
    assert_eq!(r, WireMessage::Hello { node: "admin".into(), applied_epoch: 1 }, "admin, role admin");
    // node-a's certificate is valid for `localhost` too, but dialing "localhost" wants the
    // node *named* localhost, and there is none.
    let r = node.request("localhost", &addr, hello(), t).await;
    assert!(r.is_err(), "an extra name is not an identity: {r:?}");
    // An admin certificate cannot serve: nodes refuse it as a server.
    let admin_server = QuicNode::bind(loopback(), &load(&dir, "ca.pem", "admin")).expect("bind");
    let admin_addr = admin_server.local_addr().expect("addr");
    let accept = tokio::spawn(async move { admin_server.accept().await.map(|r| r.is_ok()) });
    let r = node.request("admin", &admin_addr.to_string(), hello(), t).await;
    assert!(r.is_err(), "a node must not accept an admin certificate as a server: {r:?}");
    let _ = tokio::time::timeout(Duration::from_secs(20), accept).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A certificate without a jigsaw role (issued by the cluster CA before roles existed, or
/// by hand) is refused at the handshake.
#[tokio::test]
async fn a_certificate_without_a_role_is_refused() {
    let dir = tmp("norole");
    ca_init(&dir, "c").expect("ca");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).expect("key")).expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "jigsaw cluster CA: c");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    // What `jigsaw ca issue` wrote before: names and EKUs, no role.
    let mut p = rcgen::CertificateParams::new(vec!["old".to_string(), "localhost".into()]).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, "old");
    p.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &issuer).expect("sign");
    let der = cert.der().clone();
    let e = CertInfo::parse(&der).expect_err("no role");
    assert!(e.contains("no jigsaw role"), "{e}");
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).expect("pem")).expect("root");
    let pk = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
    rejected_client(Identity::from_parts(vec![der], pk, roots), &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_expired_certificate_fails_the_handshake_both_ways() {
    let dir = tmp("expired");
    ca_init(&dir, "c").expect("ca");
    let day = Duration::from_secs(86_400);
    let past =
        Issue { not_before: SystemTime::now() - 10 * day, not_after: SystemTime::now() - day, ..Issue::node("old") };
    tls::issue(&dir, &past).expect("issue");
    rejected_client(load(&dir, "ca.pem", "old"), &dir).await;
    // And a client refuses an expired server.
    let server = QuicNode::bind(loopback(), &load(&dir, "ca.pem", "old")).expect("bind");
    let addr = server.local_addr().expect("addr");
    let accept = tokio::spawn(async move { server.accept().await.map(|r| r.is_ok()) });
    let c = QuicNode::bind(loopback(), &node(&dir, "n1")).expect("bind");
    assert!(c.connect(addr, "old").await.is_err(), "the client must refuse an expired server certificate");
    let _ = tokio::time::timeout(Duration::from_secs(20), accept).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deny_lists_parse_serials_as_operators_write_them() {
    let dir = tmp("denyfile");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let f = dir.join("deny.txt");
    std::fs::write(&f, "# revoked\n0A:1B:2c  # laptop lost\n\n0x00ff\n").expect("write");
    let d = DenyList::load(&f).expect("parses");
    assert_eq!(d.len(), 2);
    assert!(d.denies("a1b2c") && d.denies("FF") && !d.denies("a1b2d"));
    std::fs::write(&f, "0a1b\nnode-1\n").expect("write");
    let e = DenyList::load(&f).expect_err("not a serial").to_string();
    assert!(e.contains("line 2") && e.contains("node-1"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A denied serial fails the handshake; and after a reload, a connection opened before is
/// cut at its next request, while other peers carry on.
#[tokio::test]
async fn a_denied_serial_is_refused_at_connect_and_after_a_reload() {
    let dir = tmp("deny");
    ca_init(&dir, "c").expect("ca");
    tls::issue(&dir, &Issue::node("node-a")).expect("issue");
    let bad = tls::issue(&dir, &Issue::node("node-b")).expect("issue");
    tls::issue(&dir, &Issue::node("node-c")).expect("issue");
    // Denied from the start: the handshake fails.
    let server_id = load(&dir, "ca.pem", "node-a").with_deny(DenyList::of([bad.info.serial.as_str()]));
    let server = QuicNode::bind(loopback(), &server_id).expect("bind");
    let addr = server.local_addr().expect("addr");
    let task = serve(server, "node-a");
    let c = QuicNode::bind(loopback(), &load(&dir, "ca.pem", "node-b")).expect("bind");
    let outcome = match c.connect(addr, "node-a").await {
        Err(_) => None,
        Ok(conn) => Some(tokio::time::timeout(Duration::from_secs(20), request(&conn, &hello())).await),
    };
    assert!(!matches!(outcome, Some(Ok(Ok(_)))), "a denied certificate gets no reply: {outcome:?}");
    let r = tokio::time::timeout(Duration::from_secs(20), task).await.expect("server finishes").expect("join");
    assert!(r.is_err(), "the server refuses the handshake");
    // Denied later: the server reloads its deny list.
    let (server, addr) = serve_transport(&load(&dir, "ca.pem", "node-a"), whoami()).await;
    let (b, c) = (client(&load(&dir, "ca.pem", "node-b")), client(&load(&dir, "ca.pem", "node-c")));
    let t = Duration::from_secs(5);
    b.request("node-a", &addr, hello(), t).await.expect("node-b before the deny");
    c.request("node-a", &addr, hello(), t).await.expect("node-c before the deny");
    server.reload(&load(&dir, "ca.pem", "node-a").with_deny(DenyList::of([bad.info.serial.as_str()]))).expect("reload");
    let r = b.request("node-a", &addr, hello(), t).await;
    assert!(r.is_err(), "node-b's open connection is cut and a new one refused: {r:?}");
    c.request("node-a", &addr, hello(), t).await.expect("node-c carries on");
    // And a client refuses a denied server.
    c.reload(&load(&dir, "ca.pem", "node-c").with_deny(DenyList::of([bad.info.serial.as_str()]))).expect("reload");
    let (_b_server, b_addr) = serve_transport(&load(&dir, "ca.pem", "node-b"), whoami()).await;
    let r = c.request("node-b", &b_addr, hello(), t).await;
    assert!(r.is_err(), "a denied server: {r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rotating to a new CA without downtime: every node first trusts a bundle of both CAs, then
/// takes a certificate from the new one, then drops the old CA, with a reload (no restart)
/// at each step and requests answered throughout.
#[tokio::test]
async fn rotation_to_a_new_ca_by_reloads_keeps_answering() {
    let (old, new) = (tmp("rot-old"), tmp("rot-new"));
    ca_init(&old, "c").expect("ca");
    ca_init(&new, "c2").expect("ca");
    for d in [&old, &new] {
        tls::issue(d, &Issue::node("node-a")).expect("issue");
        tls::issue(d, &Issue::node("node-b")).expect("issue");
        tls::issue(d, &Issue::node("node-z")).expect("issue");
    }
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(old.join("ca.pem")).expect("ca"),
        std::fs::read_to_string(new.join("ca.pem")).expect("ca")
    );
    for d in [&old, &new] {
        std::fs::write(d.join("bundle.pem"), &bundle).expect("bundle");
    }
    let t = Duration::from_secs(5);
    let (a, addr) = serve_transport(&load(&old, "ca.pem", "node-a"), whoami()).await;
    // A long-lived client whose connection stays open across the server's reloads.
    let b = client(&load(&old, "ca.pem", "node-b"));
    b.request("node-a", &addr, hello(), t).await.expect("before");
    // A fresh client: a new handshake against the server's current identity.
    let fresh = |d: &Path, ca: &str| {
        let c = client(&load(d, ca, "node-z"));
        let addr = addr.clone();
        async move { c.request("node-a", &addr, hello(), t).await }
    };
    // 1. The server trusts old + new (still presenting its old certificate).
    a.reload(&load(&old, "bundle.pem", "node-a")).expect("reload");
    b.request("node-a", &addr, hello(), t).await.expect("the open connection carries on");
    fresh(&old, "ca.pem").await.expect("old CA client");
    fresh(&new, "bundle.pem").await.expect("new CA client");
    // 2. The server takes its certificate from the new CA.
    a.reload(&load(&new, "bundle.pem", "node-a")).expect("reload");
    b.request("node-a", &addr, hello(), t).await.expect("the open connection carries on");
    assert!(fresh(&old, "ca.pem").await.is_err(), "a client trusting only the old CA refuses the new certificate");
    fresh(&old, "bundle.pem").await.expect("old certificate, bundle");
    fresh(&new, "bundle.pem").await.expect("new certificate, bundle");
    // 3. The server drops the old CA: certificates of the retired CA are refused.
    a.reload(&load(&new, "ca.pem", "node-a")).expect("reload");
    fresh(&new, "ca.pem").await.expect("new CA only");
    assert!(fresh(&old, "bundle.pem").await.is_err(), "a certificate of the retired CA");
    let _ = std::fs::remove_dir_all(&old);
    let _ = std::fs::remove_dir_all(&new);
}

/// The node's request router over real QUIC and mutual TLS (the same checks the simulation
/// runs on the twin): a node certificate may read the status but not register an app; the
/// admin certificate may; a heartbeat under another node's name, or from the admin
/// certificate, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_over_quic_reach_the_node_router() {
    use jigsaw_agent::gpu::sim::SimGpu;
    use jigsaw_agent::node::{highs_planner, NodeHandle, NodeSpec, Timing};
    let dir = tmp("router");
    ca_init(&dir, "c").expect("ca");
    for n in ["node-1", "node-2"] {
        tls::issue(&dir, &Issue::node(n)).expect("issue");
    }
    tls::issue(&dir, &Issue { extra_names: vec!["localhost".into()], ..Issue::node("node-3") }).expect("issue");
    tls::issue(&dir, &Issue::admin("admin")).expect("issue");
    let quic = QuicTransport::new(QuicNode::bind(loopback(), &load(&dir, "ca.pem", "node-1")).expect("bind"));
    let addr = quic.local_addr().expect("addr").to_string();
    let spec = NodeSpec {
        name: "node-1".into(),
        addr: addr.clone(),
        eligible: true,
        voters: vec![("node-1".into(), addr.clone())],
        seeds: vec![],
        data_dir: dir.join("node-1-data"),
        timing: Timing::default(),
        planner: highs_planner(jigsaw_coordinator::PlannerConfig::default(), Some(1)),
        gpus: vec![Box::new(SimGpu::new(jigsaw_protocol::GpuModel::H100_80gb, 1, Duration::ZERO))
            as jigsaw_agent::actors::Backend],
        simulate_latency: false,
        launcher: None,
        max_in_flight: 64,
        control: Default::default(),
    };
    let q = quic.clone();
    let node = NodeHandle::start(spec, quic.clone(), move |h| Some(tokio::spawn(q.serve(h)))).await.expect("start");
    let t = Duration::from_secs(10);
    let admin = client(&load(&dir, "ca.pem", "admin"));
    let peer = client(&load(&dir, "ca.pem", "node-2"));
    // Wait for the coordinator (a one-voter group elects itself).
    let mut status = None;
    for _ in 0..100 {
        match admin.request("node-1", &addr, WireMessage::Client(ClientRequest::status()), t).await {
            Ok(WireMessage::ClientReply(ClientReply::Status(s))) => {
                status = Some(s);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(status.is_some(), "node-1 became coordinator");
    let r = peer.request("node-1", &addr, WireMessage::Client(ClientRequest::status()), t).await.expect("reply");
    assert!(matches!(r, WireMessage::ClientReply(ClientReply::Status(_))), "a node may read the status: {r:?}");
    let entry = jigsaw_protocol::cluster::AppEntry {
        name: "social".into(),
        spec_toml: include_str!("../../examples/apps/social.toml").into(),
        profiles_csv: include_str!("../../examples/profiles/social-h100-80gb.csv").into(),
        demand_rps: 10.0,
        demand_auto: false,
    };
    let register = WireMessage::Client(ClientRequest::register(entry));
    let r = peer.request("node-1", &addr, register.clone(), t).await.expect("reply");
    assert!(matches!(r, WireMessage::Forbidden { needed: Role::Admin, .. }), "node certificate: {r:?}");
    assert!(node.committed().apps.is_empty());
    let r = admin.request("node-1", &addr, register, t).await.expect("reply");
    assert!(matches!(r, WireMessage::ClientReply(ClientReply::Done { .. })), "admin certificate: {r:?}");
    let hb = |name: &str| {
        WireMessage::Heartbeat(Heartbeat {
            node: name.into(),
            addr: "127.0.0.1:9".into(),
            eligible: false,
            gpus: vec![],
            applied_epoch: 0,
            observed: vec![],
            demand: vec![],
        })
    };
    let r = peer.request("node-1", &addr, hb("node-1"), t).await.expect("reply");
    assert!(matches!(r, WireMessage::Forbidden { needed: Role::Node, .. }), "another node's name: {r:?}");
    let r = admin.request("node-1", &addr, hb("admin"), t).await.expect("reply");
    assert!(matches!(r, WireMessage::Forbidden { needed: Role::Node, .. }), "admin heartbeat: {r:?}");
    // node-3's certificate is also valid for `localhost`; a heartbeat claiming it is refused.
    let three = client(&load(&dir, "ca.pem", "node-3"));
    for claim in ["localhost", "127.0.0.1"] {
        let r = three.request("node-1", &addr, hb(claim), t).await.expect("reply");
        assert!(matches!(r, WireMessage::Forbidden { needed: Role::Node, .. }), "{claim}: {r:?}");
    }
    let r = peer.request("node-1", &addr, hb("node-2"), t).await.expect("reply");
    assert!(matches!(r, WireMessage::HeartbeatReply { .. }), "its own name: {r:?}");
    node.stop().await;
    quic.close();
    let _ = std::fs::remove_dir_all(&dir);
}
