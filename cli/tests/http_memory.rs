//! The HTTP API's memory bound against hostile JSON bodies, on a real agent process (a
//! one-node local cluster from `jigsaw up`): sixteen concurrent 32 MB bodies of
//! `{"inputs":[{..., "data":[0,0,...]}]}` keep the agent's peak RSS (VmHWM) under 300 MB,
//! and the node answers its health probe throughout.

use jigsaw_cli::cluster::LocalCluster;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::Cluster;

const JIGSAW: &str = env!("CARGO_BIN_EXE_jigsaw");

/// `VmHWM` (peak resident set) of `pid`, bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// POST `body` to `path` on `addr` over a fresh connection; the status line and the body.
async fn post(addr: &str, path: &str, body: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-jigsaw-deadline-ms: 600000\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // The server may answer (400) and close before the whole body is sent.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(300), s.read_to_end(&mut out)).await.expect("answer in time");
    String::from_utf8_lossy(&out).to_string()
}

/// A body of just under 32 MiB: one FP32 input of `n` zeros with shape `shape`.
fn zeros_body(shape: &str, n: usize) -> Vec<u8> {
    let mut b = format!(r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"FP32","data":["#).into_bytes();
    b.reserve(2 * n + 4);
    for i in 0..n {
        b.extend_from_slice(if i == 0 { b"0" } else { b",0" });
    }
    b.extend_from_slice(b"]}]}");
    b
}

#[test]
fn sixteen_concurrent_32_mb_bodies_keep_the_agent_under_300_mb() {
    let dir = std::env::temp_dir().join(format!("jigsaw-http-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8 path");
    let out =
        Command::new(JIGSAW).args(["up", "--nodes", "1", "--gpus-per-node", "2", "--dir", d]).output().expect("up");
    let _guard = Cluster(dir.clone());
    assert!(
        out.status.success(),
        "jigsaw up: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = LocalCluster::load(&dir).expect("cluster.json");
    let node = &cluster.nodes[0];
    let addr = node.http.as_deref().expect("HTTP API").trim_start_matches("http://").to_string();
    let pid = node.pid;
    let before = peak_rss(pid);

    // Just under the 32 MiB body limit: 16,777,000 zeros. Half declare the app's shape
    // [1,3,16,16] (rejected at the 769th element); half declare a shape that matches the
    // data, so the whole array is decoded (64 MiB as FP32) before the app refuses the shape.
    let n = 16_777_000;
    let matching = zeros_body(&format!("[{n}]"), n);
    let small_shape = zeros_body("[1,3,16,16]", n);
    assert!(matching.len() < 32 << 20 && small_shape.len() < 32 << 20);
    let (matching, small_shape) = (std::sync::Arc::new(matching), std::sync::Arc::new(small_shape));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (answers, health) = rt.block_on(async {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The health probe, every 100 ms while the bodies are in flight: its slowest answer.
        let probe = {
            let (addr, done) = (addr.clone(), done.clone());
            tokio::spawn(async move {
                let (mut worst, mut n) = (Duration::ZERO, 0u32);
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let t0 = Instant::now();
                    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
                    s.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                        .await
                        .expect("w");
                    let mut out = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
                    assert!(out.starts_with(b"HTTP/1.1 200"), "health: {}", String::from_utf8_lossy(&out));
                    worst = worst.max(t0.elapsed());
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (worst, n)
            })
        };
        let sends: Vec<_> = (0..16)
            .map(|i| {
                let body = if i % 2 == 0 { matching.clone() } else { small_shape.clone() };
                let addr = addr.clone();
                tokio::spawn(async move { (i % 2 == 0, post(&addr, "/v2/models/traffic/infer", &body).await) })
            })
            .collect();
        let mut answers = Vec::new();
        for s in sends {
            answers.push(s.await.expect("join"));
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (answers, probe.await.expect("probe"))
    });
    let peak = peak_rss(pid);
    println!(
        "agent VmHWM before {} MB, after 16 bodies {} MB; health: {} probes, slowest {:?}",
        before >> 20,
        peak >> 20,
        health.1,
        health.0
    );
    for (matching, a) in &answers {
        assert!(a.starts_with("HTTP/1.1 400"), "every body is refused as bad input: {}", &a[..a.len().min(400)]);
        let want = if *matching { "inputs[0].shape" } else { "has more than 768 elements" };
        assert!(a.contains(want), "{want}: {}", &a[..a.len().min(400)]);
    }
    assert!(peak < 300 << 20, "the agent's peak RSS reached {} MB", peak >> 20);
    assert!(
        health.1 >= 1 && health.0 < Duration::from_secs(5),
        "health probe: {} answers, slowest {:?}",
        health.1,
        health.0
    );
}
