//! `jigsaw bench dataplane`: the data plane's own overhead, with a no-op model.
//!
//! Two in-process nodes, each with its own QUIC endpoint and mutual TLS on loopback (the
//! same transport agents use), each with a [`LocalPlane`] and the frontend of node 1:
//!
//! * **per hop**: one-task app whose instance is on node 2; node 1's frontend runs requests
//!   one at a time, so each is exactly one stage hop (frontend → QUIC → remote queue → no-op
//!   worker → reply). Reported: p50 / p99 of the whole request, and of a QUIC request/reply
//!   with the same payload that node 2 answers at once (no queue, no worker), for comparison.
//! * **throughput**: a two-stage graph (stage 1 on node 2, stage 2 on node 1) driven by
//!   `concurrency` requests in flight; reported: completed requests per second.
//!
//! The no-op worker runs in the agent's process (the in-process twin), so the figures are
//! the routing, queueing, batching and transport cost, not a worker's.

use anyhow::{bail, Result};
use jigsaw_agent::dataplane::plane::{stage_handler, Attachment, DataPlane, LocalPlane, PlaneConfig, Segments};
use jigsaw_agent::dataplane::worker::{ExecutorKind, InProcessLauncher};
use jigsaw_agent::dataplane::Inference;
use jigsaw_agent::transport::net::{QuicTransport, Transport};
use jigsaw_agent::transport::{tls, QuicNode};
use jigsaw_protocol::app::AppSpec;
use jigsaw_protocol::infer::{InferRequest, Tensor, TensorData};
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::route::{AppRoute, RoutingTable, StageRequest, Target, TaskRoute};
use jigsaw_protocol::wire::WireMessage;
use std::sync::Arc;
use std::time::{Duration, Instant};

const APP: &str = r#"
name = "noop2"
latency_slo_ms = 1000.0
accuracy_slo = 0.1

[[tasks]]
name = "first"
[[tasks.variants]]
name = "noop"
accuracy = 1.0
model = { family = "resnet", gflops = 0.001, params_m = 0.1, activation_mb = 0.1 }

[[tasks]]
name = "second"
[[tasks.variants]]
name = "noop"
accuracy = 1.0
model = { family = "resnet", gflops = 0.001, params_m = 0.1, activation_mb = 0.1 }

[[edges]]
from = "first"
to = "second"
"#;

fn inst(app: &str, task: &str, batch: u32) -> InstancePlan {
    InstancePlan {
        mig_profile: "1g.10gb".into(),
        start: 0,
        slices: 1,
        mps: 4,
        task: task.into(),
        variant: "noop".into(),
        batch,
        p95_ms: 0.0,
        throughput_rps: 1e6,
        app: app.into(),
        load_rps: 0.0,
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

fn request() -> InferRequest {
    InferRequest {
        id: None,
        inputs: vec![Tensor {
            name: "input".into(),
            shape: vec![1, 3, 16, 16],
            datatype: "FP32".into(),
            data: TensorData::Fp32((0..768).map(|i| i as f32 / 768.0).collect()),
        }],
        outputs: vec![],
    }
}

struct Bench {
    front: Arc<DataPlane<QuicTransport>>,
    transports: Vec<Arc<QuicTransport>>,
    addrs: Vec<String>,
    _keep: Vec<Attachment>,
}

async fn setup(dir: &std::path::Path, batch: u32) -> Result<Bench> {
    let ca = dir.join("ca");
    tls::ca_init(&ca, "bench")?;
    let mut transports = Vec::new();
    let mut addrs = Vec::new();
    let mut planes = Vec::new();
    for name in ["node-1", "node-2"] {
        tls::ca_issue(&ca, name)?;
        let id =
            tls::Identity::load(&ca.join("ca.pem"), &ca.join(format!("{name}.pem")), &ca.join(format!("{name}.key")))?;
        let quic = QuicNode::bind("127.0.0.1:0".parse()?, &id)?;
        let t = QuicTransport::new(quic);
        addrs.push(t.local_addr()?.to_string());
        let local = LocalPlane::new(PlaneConfig::default(), Arc::new(InProcessLauncher(ExecutorKind::Noop)));
        let handler = stage_handler(local.clone());
        tokio::spawn(t.clone().serve(handler));
        transports.push(t);
        planes.push(local);
    }
    let spec = AppSpec::parse(APP, "noop2")?;
    let one = AppSpec { name: "noop1".into(), tasks: spec.tasks[..1].to_vec(), edges: vec![], ..spec.clone() };
    let a1 = inst("noop1", "first", batch);
    // Two apps cannot share one instance: the two-stage app's first task sits at start 1.
    let a2 = InstancePlan { start: 1, ..inst("noop2", "first", batch) };
    let b2 = inst("noop2", "second", batch);
    let table = RoutingTable {
        epoch: 1,
        apps: vec![
            AppRoute {
                spec: one,
                tasks: vec![TaskRoute {
                    task: "first".into(),
                    budget_ms: 0.0,
                    downstream_ms: 0.0,
                    targets: vec![Target::of("node-2", &addrs[1], "GPU-node-2", &a1)],
                }],
                stale_ms: 1000.0,
                profiles: vec![],
            },
            AppRoute {
                spec,
                tasks: vec![
                    TaskRoute {
                        task: "first".into(),
                        budget_ms: 0.0,
                        downstream_ms: 0.0,
                        targets: vec![Target::of("node-2", &addrs[1], "GPU-node-2", &a2)],
                    },
                    TaskRoute {
                        task: "second".into(),
                        budget_ms: 0.0,
                        downstream_ms: 0.0,
                        targets: vec![Target::of("node-1", &addrs[0], "GPU-node-1", &b2)],
                    },
                ],
                stale_ms: 1000.0,
                profiles: vec![],
            },
        ],
    };
    let mut keep = Vec::new();
    for p in &planes {
        p.set_routes(table.clone());
    }
    keep.push(planes[1].attach("GPU-node-2", "MIG-GPU-node-2", &a1));
    keep.push(planes[1].attach("GPU-node-2", "MIG-GPU-node-2", &a2));
    keep.push(planes[0].attach("GPU-node-1", "MIG-GPU-node-1", &b2));
    let front = DataPlane::new("node-1", planes[0].clone(), transports[0].clone());
    Ok(Bench { front, transports, addrs, _keep: keep })
}

/// Run the benchmark and format its figures.
pub fn cmd_bench_dataplane(requests: usize, concurrency: usize, batch: u32) -> Result<String> {
    if requests == 0 || concurrency == 0 {
        bail!("--requests and --concurrency must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("jigsaw-bench-dataplane-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let out = rt.block_on(async {
        let b = setup(&dir, batch).await?;
        // Warm up the connection and the pools.
        for _ in 0..200 {
            b.front.infer("noop1", request(), None).await?;
        }
        let hops = requests.min(5_000);
        let mut hop = Vec::with_capacity(hops);
        for _ in 0..hops {
            let t = Instant::now();
            b.front.infer("noop1", request(), None).await?;
            hop.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut raw = Vec::with_capacity(hops);
        for _ in 0..hops {
            let t = Instant::now();
            // A stage for an instance node 2 does not have: answered at once.
            let msg = WireMessage::Stage(StageRequest {
                id: 0,
                item: 0,
                app: "none".into(),
                task: "none".into(),
                gpu: "none".into(),
                start: 0,
                budget_us: 1_000_000,
                input: vec![0.5; 768],
            });
            b.transports[0].request("node-2", &b.addrs[1], msg, Duration::from_secs(5)).await?;
            raw.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..concurrency {
            let (front, next, failed) = (b.front.clone(), next.clone(), failed.clone());
            set.spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                    if front.infer("noop2", request(), None).await.is_err() {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        let secs = t.elapsed().as_secs_f64();
        let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
        for t in &b.transports {
            t.close();
        }
        let (h50, h99) = (pct(&mut hop, 0.5), pct(&mut hop, 0.99));
        let (r50, r99) = (pct(&mut raw, 0.5), pct(&mut raw, 0.99));
        Ok::<String, anyhow::Error>(format!(
            "2 in-process nodes, QUIC + mTLS on loopback, no-op in-process workers (4 replicas, max batch {batch}), \
             768-value FP32 input\n\
             per hop (1-task app on the other node, sequential, {hops} requests): p50 {h50:.0} us, p99 {h99:.0} us\n\
             QUIC request/reply answered at once, same payload:          p50 {r50:.0} us, p99 {r99:.0} us\n\
             throughput, 2-stage graph across both nodes, {concurrency} in flight: {:.0} req/s ({requests} requests in {secs:.2} s, {failed} failed)\n",
            (requests - failed) as f64 / secs
        ))
    });
    let _ = std::fs::remove_dir_all(&dir);
    out
}
