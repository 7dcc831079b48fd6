//! The operator client against nodes that cannot serve it: a partitioned leader that
//! still names itself and a node that never answers. It must give up within its patience
//! (bounded rounds with backoff, each wait capped by what is left), saying what every node
//! answered, and it must still find a real coordinator behind a redirect.
//!
//! Runs on the in-memory transport twin (real codec) under tokio's paused clock, so the
//! patience is measured in simulated time, not by sleeping.

use jigsaw_agent::core::netsim::LinkConfig;
use jigsaw_agent::transport::net::{Handler, SimHub, SimTransport};
use jigsaw_cli::cluster::Operator;
use jigsaw_protocol::wire::{ClientReply, ClientRequest, WireMessage};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn handler(f: impl Fn(WireMessage) -> Option<WireMessage> + Send + Sync + 'static) -> Handler {
    let f = Arc::new(f);
    Arc::new(move |_peer, msg| {
        let f = f.clone();
        Box::pin(async move {
            match f(msg) {
                Some(reply) => reply,
                None => std::future::pending().await, // never answers
            }
        })
    })
}

fn names_itself(name: &'static str, asked: Arc<AtomicU32>) -> Handler {
    handler(move |_| {
        asked.fetch_add(1, Ordering::Relaxed);
        Some(WireMessage::ClientReply(ClientReply::NotCoordinator {
            coordinator: Some((name.to_string(), format!("{name}:1"))),
        }))
    })
}

#[tokio::test(start_paused = true)]
async fn gives_up_within_its_patience_against_a_self_naming_leader_and_a_dead_node() {
    let hub = SimHub::start(1, LinkConfig::default());
    let asked = Arc::new(AtomicU32::new(0));
    hub.attach("dead", handler(|_| None));
    hub.attach("stale", names_itself("stale", asked.clone()));
    let nodes = vec![("dead".to_string(), "dead:1".to_string()), ("stale".to_string(), "stale:1".to_string())];
    let op = Operator::new(SimTransport::new(hub.clone(), "admin"), nodes).with_patience(Duration::from_secs(3));
    let t = tokio::time::Instant::now();
    let err = op.request(ClientRequest::status()).await.expect_err("no node can serve");
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(3) && took < Duration::from_millis(3_500), "gave up after {took:?}");
    let e = err.to_string();
    assert!(e.contains("stale: names itself coordinator but cannot serve"), "{e}");
    assert!(e.contains("dead: no reply within") || e.contains("dead: not asked"), "{e}");
    // The first round waits on the dead node (capped by the patience); the self-naming
    // node is asked once a round, with backoff between rounds: a bounded number of times.
    let n = asked.load(Ordering::Relaxed);
    assert!(n <= 3, "asked the stale leader {n} times in 3 s");
}

#[tokio::test(start_paused = true)]
async fn backs_off_between_rounds_and_follows_a_redirect_to_the_coordinator() {
    let hub = SimHub::start(2, LinkConfig::default());
    let asked = Arc::new(AtomicU32::new(0));
    hub.attach("stale", names_itself("stale", asked.clone()));
    let op = Operator::new(SimTransport::new(hub.clone(), "admin"), vec![("stale".into(), "stale:1".into())])
        .with_patience(Duration::from_secs(10));
    let err = op.request(ClientRequest::status()).await.expect_err("nobody serves");
    // Backoff 100 ms doubling to 2 s with ±25 % jitter: in 10 s that is about 10 rounds
    // (a fixed 200 ms pause would be ~50).
    let n = asked.load(Ordering::Relaxed);
    assert!((5..=12).contains(&n), "{n} rounds in 10 s: {err}");
    // A node that redirects to a real coordinator: the request is served at once.
    hub.attach(
        "leader",
        handler(|_| Some(WireMessage::ClientReply(ClientReply::Done { message: "ok".into(), epoch: 7 }))),
    );
    hub.attach(
        "follower",
        handler(|_| {
            Some(WireMessage::ClientReply(ClientReply::NotCoordinator {
                coordinator: Some(("leader".into(), "leader:1".into())),
            }))
        }),
    );
    let op = Operator::new(SimTransport::new(hub, "admin2"), vec![("follower".into(), "follower:1".into())]);
    let t = tokio::time::Instant::now();
    let reply = op.request(ClientRequest::remove("x")).await.expect("served via the redirect");
    assert_eq!(reply, ClientReply::Done { message: "ok".into(), epoch: 7 });
    assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
}
