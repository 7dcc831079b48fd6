//! A peer that opens many streams, sends a frame header claiming 16 MiB on each and then
//! stalls must not make the receiver allocate 16 MiB per stream: the receiver's memory is
//! measured with a counting global allocator (its own test binary, one test, so nothing else
//! allocates meanwhile).

#![allow(unsafe_code)] // the counting allocator
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests are shells, not pure cores

use jigsaw_agent::transport::net::{BoxFuture, Handler, Peer, QuicTransport, Transport};
use jigsaw_agent::transport::tls::{ca_init, ca_issue, Identity, MAX_STREAMS};
use jigsaw_agent::transport::QuicNode;
use jigsaw_protocol::wire::{self, WireMessage, MAX_FRAME};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Counting;

/// Bytes allocated and not yet freed.
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new, Ordering::Relaxed);
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn node(dir: &std::path::Path, name: &str) -> Identity {
    let (cert, key) = ca_issue(dir, name).expect("issue");
    Identity::load(&dir.join("ca.pem"), &cert, &key).expect("load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_frame_headers_do_not_allocate_their_claims() {
    let dir = std::env::temp_dir().join(format!("jigsaw-tls-{}-memory", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ca_init(&dir, "test").expect("ca");
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = QuicTransport::new(QuicNode::bind(loopback, &node(&dir, "n0")).expect("bind"));
    let addr = server.local_addr().expect("addr");
    let handler: Handler = Arc::new(|_: Peer, msg: WireMessage| -> BoxFuture<WireMessage> {
        Box::pin(async move {
            match msg {
                WireMessage::Hello { applied_epoch, .. } => WireMessage::Hello { node: "n0".into(), applied_epoch },
                other => WireMessage::Error { message: format!("unexpected {other:?}"), retry: false },
            }
        })
    });
    tokio::spawn(server.clone().serve(handler));
    let client = QuicNode::bind(loopback, &node(&dir, "n1")).expect("bind");
    let conn = client.connect(addr, "n0").await.expect("handshake");
    // Warm up (first-use allocations of the connection and the runtime), then measure.
    let hello = WireMessage::Hello { node: "n1".into(), applied_epoch: 1 };
    jigsaw_agent::transport::request(&conn, &hello).await.expect("warm-up reply");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = LIVE.load(Ordering::Relaxed);

    // As many stalled streams as the server allows but two, each a header claiming the
    // largest frame and a little of its body.
    let streams = MAX_STREAMS as usize - 2;
    let mut header = wire::MAGIC.to_vec();
    header.extend_from_slice(&wire::VERSION.to_le_bytes());
    header.extend_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    header.extend_from_slice(&[0u8; 1000]);
    let mut held = Vec::new();
    for _ in 0..streams {
        let (mut send, recv) = conn.open_bi().await.expect("stream credit");
        send.write_all(&header).await.expect("write");
        held.push((send, recv));
    }
    // The last stream still gets an answer: accepted in order, after all the stalled ones.
    let reply = tokio::time::timeout(Duration::from_secs(10), jigsaw_agent::transport::request(&conn, &hello))
        .await
        .expect("a reply while the other streams stall")
        .expect("reply");
    assert_eq!(reply, WireMessage::Hello { node: "n0".into(), applied_epoch: 1 });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!("{streams} stalled streams claiming {MAX_FRAME} bytes each: the process grew by {grown} bytes");
    // Allocating the claims would be 254 x 16 MiB = 4 GiB; what arrives is 254 kB.
    assert!(grown < 8 << 20, "{streams} stalled 16 MiB claims grew the process by {grown} bytes");

    // The stalled streams give up; the connection still serves.
    drop(held);
    let again = jigsaw_agent::transport::request(&conn, &hello).await.expect("still serves");
    assert_eq!(again, WireMessage::Hello { node: "n0".into(), applied_epoch: 1 });
    // And through the transport (its own connection).
    let t = QuicTransport::new(QuicNode::bind(loopback, &node(&dir, "n2")).expect("bind"));
    let r = t.request("n0", &addr.to_string(), hello.clone(), Duration::from_secs(10)).await.expect("reply");
    assert_eq!(r, WireMessage::Hello { node: "n0".into(), applied_epoch: 1 });
    conn.close(0u32.into(), b"done");
    server.close();
    let _ = std::fs::remove_dir_all(&dir);
}
