//! Data plane: worker supervision, pools, and the frontend's routing, fan-out and join.
//!
//! Tests wait on observable state (replies, restart counters), never on fixed sleeps.

use jigsaw_agent::core::batch::{DropReason, QueueConfig};
use jigsaw_agent::core::netsim::LinkConfig;
use jigsaw_agent::dataplane::plane::{stage_handler, DataPlane, LocalPlane, PlaneConfig, Segments};
use jigsaw_agent::dataplane::pool::{Item, Pool};
use jigsaw_agent::dataplane::worker::{
    ExecutorKind, HangPolicy, InProcessLauncher, ProcessWorker, WorkerConn, WorkerError, WorkerSpec,
};
use jigsaw_agent::dataplane::{Inference, ServeError};
use jigsaw_agent::transport::net::{Handler, SimHub, SimTransport};
use jigsaw_protocol::app::{AppSpec, ModelDesc};
use jigsaw_protocol::infer::{InferRequest, Tensor, TensorData};
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::route::{AppRoute, RoutingTable, StageOutcome, StageReply, Target, TaskRoute};
use jigsaw_protocol::wire::WireMessage;
use jigsaw_protocol::ProfileRow;
use std::sync::Arc;
use std::time::Duration;

fn spec(executor: ExecutorKind, curve: Vec<(u32, f64, f64)>) -> WorkerSpec {
    WorkerSpec {
        app: "a".into(),
        task: "t".into(),
        variant: "v".into(),
        model: ModelDesc {
            family: "resnet".into(),
            gflops: 4.0,
            params_m: 25.0,
            activation_mb: 10.0,
            decode_steps: 1,
            kernels: None,
        },
        executor,
        curve,
        scale: 1e-3,
        seed: 1,
        device: None,
        mps_percent: None,
    }
}

fn kill9(pid: u32) {
    let st = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().expect("run kill");
    assert!(st.success(), "kill -9 {pid}");
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = tokio::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A worker process killed while batches are in flight: every item is answered (executed or
/// failed with a crash error), none is lost, only the crashed batch fails, and the supervisor
/// restarts the worker, which then serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_crash_under_load_loses_no_request() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_jigsaw"));
    let s = spec(ExecutorKind::Timed, vec![(1, 4.0, 3.5), (4, 8.0, 7.0)]);
    let workers: Vec<Arc<dyn WorkerConn>> =
        (0..2).map(|_| Arc::new(ProcessWorker::start(exe.clone(), &s)) as Arc<dyn WorkerConn>).collect();
    let victim = workers[0].clone();
    wait_until("worker 0 to start", || victim.pid().is_some()).await;
    let cfg = QueueConfig {
        max_batch: 4,
        wait_us: 2_000,
        exec1_us: 4_000,
        exec_batch_us: 8_000,
        downstream_us: 0,
        admit_per_window: 0,
        rate_window_us: 0,
    };
    let pool = Pool::start(cfg, workers, "v".into());
    let n = 400;
    let mut replies = Vec::new();
    for i in 0..n {
        let (tx, rx) = tokio::sync::oneshot::channel();
        pool.submit(Item { input: vec![i as f32; 8], budget_us: 60_000_000, reply: tx });
        replies.push(rx);
        if i == n / 3 {
            let pid = victim.pid().expect("worker 0 runs");
            kill9(pid);
        }
        if i % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (mut done, mut failed, mut other) = (0, 0, 0);
    for rx in replies {
        match tokio::time::timeout(Duration::from_secs(30), rx).await.expect("every item is answered") {
            Ok(StageOutcome::Done { output, .. }) => {
                assert_eq!(output.len(), 4, "timed executor digests");
                done += 1
            }
            Ok(StageOutcome::Failed { message, retry: true }) => {
                assert!(message.contains("crash") || message.contains("unavailable"), "{message}");
                failed += 1
            }
            o => {
                eprintln!("unexpected: {o:?}");
                other += 1
            }
        }
    }
    eprintln!("done {done}, failed {failed}, other {other}");
    assert_eq!(done + failed + other, n, "every item accounted for");
    assert_eq!(other, 0);
    // Only the batch the killed worker was running (at most max_batch = 4 items, plus one
    // batch written to its pipe as it died) fails; batches offered while it restarts are
    // requeued to the other replica.
    assert!(failed <= 8, "only in-flight items fail: {failed}");
    wait_until("the killed worker to be restarted", || victim.restarts() >= 1 && victim.pid().is_some()).await;
    // The restarted worker serves.
    let r = victim.run(vec![vec![1.0; 8]]).await.expect("restarted worker runs a batch");
    assert_eq!(r.len(), 1);
}

/// The pure queue's drop rules reach callers as outcomes: a budget shorter than the batch
/// of one is an early drop.
#[tokio::test]
async fn pool_answers_hopeless_items_with_early_drop() {
    let s = spec(ExecutorKind::Timed, vec![(1, 20.0, 20.0)]);
    let w: Arc<dyn WorkerConn> = Arc::new(jigsaw_agent::dataplane::worker::InProcessWorker::new(&s));
    let cfg = QueueConfig {
        max_batch: 2,
        wait_us: 1_000,
        exec1_us: 20_000,
        exec_batch_us: 20_000,
        downstream_us: 5_000,
        admit_per_window: 0,
        rate_window_us: 0,
    };
    let pool = Pool::start(cfg, vec![w], "v".into());
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.submit(Item { input: vec![1.0], budget_us: 10_000, reply: tx });
    assert_eq!(rx.await.expect("answered"), StageOutcome::EarlyDrop);
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.submit(Item { input: vec![1.0], budget_us: 100_000, reply: tx });
    assert!(matches!(rx.await.expect("answered"), StageOutcome::Done { .. }));
}

/// detect (fan-out 2) → classify.
fn app_toml() -> String {
    use jigsaw_protocol::testing::{variant, AppToml};
    AppToml::new("pipe", 500.0, 0.5)
        .task("detect", vec![variant("det", 0.9, "yolov5", 10.0).fanout("classify", 2.0)])
        .task("classify", vec![variant("cls", 0.9, "resnet", 4.0)])
        .edge("detect", "classify")
        .build()
}

fn inst(task: &str, variant: &str, start: u8, p95: f64) -> InstancePlan {
    InstancePlan {
        variant: variant.into(),
        batch: 2,
        p95_ms: p95,
        throughput_rps: 100.0,
        app: "pipe".into(),
        ..jigsaw_protocol::testing::instance(task, "1g.10gb", start)
    }
}

fn row(task: &str, variant: &str, batch: u32, p95: f64) -> ProfileRow {
    ProfileRow { variant: variant.into(), batch, throughput_rps: 100.0, ..jigsaw_protocol::testing::row(task, p95) }
}

/// detect on node `a` (local to the frontend), classify on node `b` (over the transport).
fn table() -> RoutingTable {
    let spec = AppSpec::parse(&app_toml(), "pipe.toml").expect("app parses");
    let det = inst("detect", "det", 0, 4.0);
    let cls = inst("classify", "cls", 0, 3.0);
    RoutingTable {
        epoch: 1,
        apps: vec![AppRoute {
            spec,
            tasks: vec![
                TaskRoute {
                    task: "detect".into(),
                    budget_ms: 4.0,
                    downstream_ms: 2.0,
                    targets: vec![Target::of("a", "a:1", "GPU-a", &det)],
                },
                TaskRoute {
                    task: "classify".into(),
                    budget_ms: 3.0,
                    downstream_ms: 0.0,
                    targets: vec![Target::of("b", "b:1", "GPU-b", &cls)],
                },
            ],
            stale_ms: 20.0,
            profiles: vec![
                row("detect", "det", 1, 2.0),
                row("detect", "det", 2, 4.0),
                row("classify", "cls", 1, 2.0),
                row("classify", "cls", 2, 3.0),
            ],
        }],
    }
}

fn request() -> InferRequest {
    InferRequest {
        id: Some("r1".into()),
        inputs: vec![Tensor {
            name: "input".into(),
            shape: vec![1, 3, 16, 16],
            datatype: "FP32".into(),
            data: TensorData::Fp32((0..768).map(|i| i as f32 / 768.0).collect()),
        }],
        outputs: vec![],
    }
}

struct Two {
    a: Arc<DataPlane<SimTransport>>,
    b: Arc<LocalPlane>,
    _attachments: Vec<jigsaw_agent::dataplane::plane::Attachment>,
}

fn two_nodes(attach_b: bool) -> Two {
    two_nodes_with(attach_b, PlaneConfig::default())
}

fn two_nodes_with(attach_b: bool, cfg: PlaneConfig) -> Two {
    two_nodes_on(attach_b, cfg, table())
}

fn two_nodes_on(attach_b: bool, cfg: PlaneConfig, table: RoutingTable) -> Two {
    let hub = SimHub::start(7, LinkConfig { min_delay_us: 50, max_delay_us: 200, drop: 0.0 });
    let launcher = Arc::new(InProcessLauncher(ExecutorKind::Timed));
    let la = LocalPlane::new(cfg, launcher.clone());
    let lb = LocalPlane::new(PlaneConfig::default(), launcher);
    let a = DataPlane::new("a", la.clone(), SimTransport::new(hub.clone(), "a"));
    let handler = stage_handler(lb.clone());
    hub.attach("b", handler);
    la.set_routes(table.clone());
    lb.set_routes(table);
    let mut att = vec![la.attach("GPU-a", "MIG-GPU-a", &inst("detect", "det", 0, 4.0))];
    if attach_b {
        att.push(lb.attach("GPU-b", "MIG-GPU-b", &inst("classify", "cls", 0, 3.0)));
    }
    Two { a, b: lb, _attachments: att }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_routes_fans_out_and_joins_across_nodes() {
    let n = two_nodes(true);
    assert!(n.a.ready());
    assert_eq!(n.a.apps(), vec!["pipe".to_string()]);
    let meta = n.a.app("pipe").expect("metadata");
    assert_eq!(meta.inputs[0].shape, vec![1, 3, 16, 16]);
    assert_eq!(meta.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), vec!["classify"]);
    for _ in 0..5 {
        let r = n.a.infer("pipe", request(), None).await.expect("request succeeds");
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert_eq!(r.outputs.len(), 1);
        // Fan-out 2.0 exactly: two classify items per request, each a 4-value digest.
        assert_eq!(r.outputs[0].shape, vec![2, 4], "{:?}", r.outputs[0]);
    }
    let pool = n.b.pool("GPU-b", 0).expect("b's instance runs");
    assert_eq!(pool.stats.items.load(std::sync::atomic::Ordering::Relaxed), 10, "10 classify items ran on b");
    assert_eq!(n.a.answered().get("ok"), Some(&5), "the frontend counts its answers");
}

/// The frontend's demand meter counts what enters: requests per app (answered or not) and
/// items per task after fan-out; heartbeats carry these rows to the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_meters_requests_and_fanned_out_items() {
    let n = two_nodes(true);
    for _ in 0..5 {
        n.a.infer("pipe", request(), None).await.expect("request succeeds");
    }
    assert!(n.a.infer("nope", request(), None).await.is_err(), "an unknown app is not metered");
    let rows = n.a.local().demand_rows();
    let get = |task: &str| rows.iter().find(|r| r.app == "pipe" && r.task == task).cloned().expect("row");
    let app = get("");
    assert_eq!((app.arrivals, app.completions, app.violations), (5, 5, 0), "{rows:?}");
    assert_eq!(get("detect").arrivals, 5, "one detect item per request");
    assert_eq!(get("classify").arrivals, 10, "fan-out 2: two classify items per request");
    assert_eq!(rows.len(), 3, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_errors_name_the_cause() {
    let n = two_nodes(false);
    assert!(matches!(n.a.infer("nope", request(), None).await, Err(ServeError::UnknownApp(a)) if a == "nope"));
    let mut bad = request();
    bad.inputs[0].shape = vec![1, 3, 8, 8];
    match n.a.infer("pipe", bad, None).await {
        Err(ServeError::BadInput(e)) => assert_eq!(e.field, "inputs[0].shape"),
        other => panic!("{other:?}"),
    }
    // b has no classify instance attached: the stage fails with a retryable error.
    match n.a.infer("pipe", request(), None).await {
        Err(ServeError::Unavailable(m)) => assert!(m.contains("classify"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A deadline shorter than detect's batch of one plus the rest of the graph: early drop.
    match n.a.infer("pipe", request(), Some(Duration::from_millis(3))).await {
        Err(ServeError::Dropped { task, reason: DropReason::Early, .. }) => assert_eq!(task, "detect"),
        other => panic!("{other:?}"),
    }
    let counted = n.a.answered();
    assert_eq!((counted.get("unavailable"), counted.get("early_drop")), (Some(&1), Some(&1)), "{counted:?}");
}

/// `jigsaw profile` measures every configuration with real worker processes (CPU
/// executor), writes the planner's CSV, and resumes: rows already present are skipped.
#[test]
fn profile_writes_the_csv_and_resumes() {
    let exe = env!("CARGO_BIN_EXE_jigsaw");
    let dir = std::env::temp_dir().join(format!("jigsaw-profile-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let app = dir.join("tiny.toml");
    std::fs::write(
        &app,
        "name = \"tiny\"\nlatency_slo_ms = 100.0\naccuracy_slo = 0.5\n[[tasks]]\nname = \"cls\"\n\
         [[tasks.variants]]\nname = \"r18\"\naccuracy = 0.7\n\
         model = { family = \"resnet\", gflops = 3.6, params_m = 11.7, activation_mb = 10.0 }\n",
    )
    .expect("write app");
    let out = dir.join("tiny.csv");
    let run = || {
        let o = std::process::Command::new(exe)
            .args(["profile", "--app"])
            .arg(&app)
            .arg("--out")
            .arg(&out)
            .args(["--mig", "1g.10gb,2g.20gb", "--mps", "1,2", "--batch", "1,2", "--reps", "2", "--executor", "cpu"])
            .output()
            .expect("run jigsaw profile");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (stdout, stderr) = run();
    assert!(stdout.contains("8 configurations measured, 0 already present"), "{stdout}");
    assert!(stderr.contains("[8/8] cls/r18"), "progress is shown: {stderr}");
    let text = std::fs::read_to_string(&out).expect("csv");
    let table = jigsaw_protocol::ProfileTable::parse_csv(&text, "tiny.csv").expect("the planner reads it");
    assert_eq!(table.len(), 8);
    for r in table.rows() {
        assert!(r.p95_ms > 0.0 && r.throughput_rps > 0.0, "{r:?}");
    }
    assert!(text.contains("`cpu` executor"), "the file says how it was measured");
    // Interrupted after 5 rows: the rerun measures only the 3 missing ones.
    let kept: Vec<&str> = text.lines().take_while(|l| l.starts_with('#') || l.starts_with("task,")).collect();
    let rows: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("task,")).take(5).collect();
    std::fs::write(&out, format!("{}\n{}\n", kept.join("\n"), rows.join("\n"))).expect("truncate");
    let (stdout, _) = run();
    assert!(stdout.contains("3 configurations measured, 5 already present"), "{stdout}");
    let again =
        jigsaw_protocol::ProfileTable::parse_csv(&std::fs::read_to_string(&out).expect("csv"), "x").expect("parses");
    assert_eq!(again.len(), 8);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker process that hangs without exiting (stopped with SIGSTOP while it holds a
/// batch) is killed once the batch exceeds its limit (factor × profiled p95, at least the
/// floor): the batch fails as a crash (so the pool retries it elsewhere), the supervisor
/// starts a new process, and that one serves. Before the hang guard the batch never
/// returned and the replica stayed busy forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_worker_is_killed_and_restarted() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_jigsaw"));
    // Profiled p95 of 2 ms: the limit is the 300 ms floor.
    let s = spec(ExecutorKind::Timed, vec![(1, 2.0, 1.5), (8, 4.0, 3.0)]);
    let hang = HangPolicy { factor: 10.0, min: Duration::from_millis(300), start: Duration::from_secs(60) };
    let w = ProcessWorker::start_with(exe, &s, None, hang);
    w.run(vec![vec![1.0]]).await.expect("the worker serves");
    let pid = w.pid().expect("a process runs");
    let st = std::process::Command::new("kill").arg("-STOP").arg(pid.to_string()).status().expect("run kill");
    assert!(st.success(), "kill -STOP {pid}");
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(20), w.run(vec![vec![2.0]]))
        .await
        .expect("a hung worker's batch must be answered, not held forever");
    match out {
        Err(WorkerError::Crashed(why)) => assert!(why.contains("hung"), "says why: {why}"),
        other => panic!("expected a crash for the hung batch, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the limit: {:?}", started.elapsed());
    wait_until("a restart", || w.restarts() == 1 && w.pid().is_some_and(|p| p != pid)).await;
    // The new process serves (it may still be starting: it answers Unavailable until then).
    let t = std::time::Instant::now();
    loop {
        match w.run(vec![vec![3.0]]).await {
            Ok(o) => break assert_eq!(o.len(), 1),
            Err(WorkerError::Unavailable(_)) if t.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the restarted worker must serve: {e}"),
        }
    }
    assert_eq!(w.restarts(), 1, "one restart: the new worker is not mistaken for hung");
}

/// A worker process runs the CPU executor on the variant's layer graph: outputs match the
/// reference executor run in this process on the same model (bit for bit: same code,
/// same weights from the same seed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_worker_process_matches_the_reference() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_jigsaw"));
    let s = spec(ExecutorKind::Cpu, vec![]);
    let w = ProcessWorker::start(exe, &s);
    let inputs = vec![vec![0.25f32; 3 * 64 * 64], (0..3 * 64 * 64).map(|i| (i % 17) as f32 / 17.0).collect()];
    let got = w.run(inputs.clone()).await.expect("batch runs");
    let shape = jigsaw_kernels::arch::input_shape("resnet").expect("family");
    let m = jigsaw_kernels::Model::for_variant("v", &s.model, shape, s.scale, s.seed).expect("model");
    use jigsaw_kernels::Executor;
    let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
    let (y, out) = jigsaw_kernels::CpuExecutor.run(&m, &flat, (2, shape.0, shape.1, shape.2)).expect("reference");
    let per = out.1 * out.2 * out.3;
    assert_eq!(got, vec![y[..per].to_vec(), y[per..].to_vec()]);
}

/// The frontend admits at most `max_in_flight` requests; one more is refused at once with
/// `Overloaded` (429), and the slot comes back when a request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_admission_limit_refuses_at_once() {
    let n = two_nodes_with(true, PlaneConfig { max_in_flight: 1, ..PlaneConfig::default() });
    let first = n.a.infer("pipe", request(), None);
    let refused = n.a.infer("pipe", request(), None).await;
    assert!(matches!(refused, Err(ServeError::Overloaded(_))), "{refused:?}");
    first.await.expect("the admitted request succeeds");
    n.a.infer("pipe", request(), None).await.expect("the slot came back");
    assert_eq!(n.a.answered().get("overloaded"), Some(&1));
}

/// A stage whose budget no deadline can have (only a broken or hostile peer sends one) gets
/// an error reply, not a panic in the instance's queue driver, and the instance keeps
/// serving; an item with such a budget submitted to a pool directly is served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_stage_budget_is_refused_and_the_instance_keeps_serving() {
    use jigsaw_agent::transport::net::Peer;
    use jigsaw_protocol::route::{StageReply, StageRequest};
    use jigsaw_protocol::wire::WireMessage;
    let n = two_nodes(true);
    let handler = stage_handler(n.b.clone());
    let stage = |budget_us: u64| {
        WireMessage::Stage(StageRequest {
            id: 1,
            item: 0,
            app: "pipe".into(),
            task: "classify".into(),
            gpu: "GPU-b".into(),
            start: 0,
            budget_us,
            input: vec![0.5; 768],
        })
    };
    match handler(Peer::new("a", jigsaw_protocol::wire::Role::Node), stage(u64::MAX - 1)).await {
        WireMessage::StageReply(StageReply { outcome: StageOutcome::Failed { message, retry: false }, .. }) => {
            assert!(message.contains("exceeds the cap"), "{message}")
        }
        other => panic!("an error reply: {other:?}"),
    }
    match handler(Peer::new("a", jigsaw_protocol::wire::Role::Node), stage(1_000_000)).await {
        WireMessage::StageReply(StageReply { outcome: StageOutcome::Done { .. }, .. }) => {}
        other => panic!("the instance still serves: {other:?}"),
    }
    let pool = n.b.pool("GPU-b", 0).expect("b's instance runs");
    for budget_us in [u64::MAX - 1, 1_000_000] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        pool.submit(Item { input: vec![1.0; 768], budget_us, reply: tx });
        let o = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("answered in time").expect("answered");
        assert!(matches!(o, StageOutcome::Done { .. }), "{budget_us}: {o:?}");
    }
    n.a.infer("pipe", request(), None).await.expect("requests still succeed");
}

/// A routing table from before the bounds (an SLO of 1.8e22 ms once panicked the frontend,
/// a fan-out of 5000 would have spawned 5000 stages per request): the SLO is clamped to an
/// hour, and a request whose fan-out would pass the per-request item cap is refused before
/// any of its children is spawned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_slos_and_fanouts_in_a_table_are_contained() {
    let mut t = table();
    t.apps[0].spec.latency_slo_ms = 1.8e22;
    let n = two_nodes_on(true, PlaneConfig::default(), t.clone());
    let r = n.a.infer("pipe", request(), None).await.expect("served under an hour's deadline");
    assert_eq!(r.outputs[0].shape, vec![2, 4]);

    t.apps[0].spec.tasks[0].variants[0].fanout.insert("classify".into(), 5000.0);
    let n = two_nodes_on(true, PlaneConfig::default(), t);
    match n.a.infer("pipe", request(), None).await {
        Err(ServeError::Failed(m)) => assert!(m.contains("4096 items") && m.contains("classify"), "{m}"),
        other => panic!("refused: {other:?}"),
    }
    let pool = n.b.pool("GPU-b", 0).expect("b's instance runs");
    assert_eq!(pool.stats.items.load(std::sync::atomic::Ordering::Relaxed), 0, "no classify stage was spawned");
    assert_eq!(n.b.stages_taken(), 0);
}

/// A new table that changes only an instance's queue settings (its task budget) keeps the
/// running pool (same workers, nothing aborted); one that changes what its workers run
/// (their latency curve) rebuilds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_queue_settings_changed_keeps_the_running_pool() {
    let n = two_nodes(true);
    let before = n.b.pool("GPU-b", 0).expect("classify runs on b");
    let mut t = table();
    t.epoch = 2;
    t.apps[0].tasks[1].budget_ms = 5.0;
    n.b.set_routes(t.clone());
    let after = n.b.pool("GPU-b", 0).expect("still runs");
    assert!(Arc::ptr_eq(&before, &after), "a queue-settings change must not rebuild the pool");
    let r = n.a.infer("pipe", request(), None).await;
    assert!(r.is_ok(), "{r:?}");
    t.epoch = 3;
    t.apps[0].profiles[3].p95_ms = 6.0;
    n.b.set_routes(t);
    let rebuilt = n.b.pool("GPU-b", 0).expect("still runs");
    assert!(!Arc::ptr_eq(&after, &rebuilt), "a worker-spec change rebuilds it");
}

/// A stage server twin on the simulated hub: answers every stage `after` the request
/// arrives (`None`: never, a silent peer), counting the stages it was sent.
fn stage_server(after: Option<Duration>, seen: Arc<std::sync::atomic::AtomicU64>, name: &'static str) -> Handler {
    Arc::new(move |_peer, msg| {
        let seen = seen.clone();
        Box::pin(async move {
            let WireMessage::Stage(req) = msg else {
                return WireMessage::Error { message: "not a stage".into(), retry: false };
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            let outcome = StageOutcome::Done { output: vec![1.0], variant: name.into(), stage_us: 0 };
            WireMessage::StageReply(StageReply { id: req.id, item: req.item, outcome })
        })
    })
}

/// One task (700 ms SLO) on two remote targets: `first` (routing weight ~1, so it is tried
/// first) and `second`; the plan's profile gives `first` a 300 ms batch wait plus a 100 ms
/// batch, so a healthy `first` answers within 400 ms.
fn hedge_table() -> RoutingTable {
    use jigsaw_protocol::testing::{variant, AppToml};
    let toml = AppToml::new("solo", 700.0, 0.5).task("t", vec![variant("v", 0.9, "resnet", 4.0)]).build();
    let spec = AppSpec::parse(&toml, "solo.toml").expect("app parses");
    let mut i = inst("t", "v", 0, 100.0);
    i.app = "solo".into();
    let mut first = Target::of("first", "first:1", "GPU-f", &i);
    first.weight = 1e12;
    let mut second = Target::of("second", "second:1", "GPU-s", &i);
    second.weight = 1e-12;
    RoutingTable {
        epoch: 1,
        apps: vec![AppRoute {
            spec,
            tasks: vec![TaskRoute {
                task: "t".into(),
                budget_ms: 300.0,
                downstream_ms: 0.0,
                targets: vec![first, second],
            }],
            stale_ms: 20.0,
            profiles: vec![row("t", "v", 1, 60.0), row("t", "v", 2, 100.0)],
        }],
    }
}

/// Stages sent to one peer, counted by its twin server.
type Counter = Arc<std::sync::atomic::AtomicU64>;

/// A frontend routing [`hedge_table`] over a simulated hub (inside a runtime): `first`
/// answers every stage after `first_after` (`None`: never, a silent peer), `second` after
/// 5 ms; with the stages each was sent.
fn hedge_front(first_after: Option<Duration>) -> (Arc<DataPlane<SimTransport>>, Counter, Counter) {
    let hub = SimHub::start(3, LinkConfig { min_delay_us: 100, max_delay_us: 200, drop: 0.0 });
    let (a, b) = (Counter::default(), Counter::default());
    hub.attach("first", stage_server(first_after, a.clone(), "first"));
    hub.attach("second", stage_server(Some(Duration::from_millis(5)), b.clone(), "second"));
    let local = LocalPlane::new(PlaneConfig::default(), Arc::new(InProcessLauncher(ExecutorKind::Noop)));
    local.set_routes(hedge_table());
    (DataPlane::new("front", local, SimTransport::new(hub.clone(), "front")), a, b)
}

/// A peer that is slow but healthy (450 ms for a stage its plan gives 400 ms) is not cut at
/// half the budget: it answers, and no copy is sent (the old rule timed it out at 350 ms,
/// threw its work away, marked it suspect and sent a copy with half the budget). A silent
/// peer is hedged: the copy answers, the request succeeds, and once the silent attempt's
/// own budget runs out the peer is suspect, so the next request goes straight to the other.
#[tokio::test(start_paused = true)]
async fn stages_are_hedged_when_a_healthy_instance_would_have_answered_not_at_half() {
    let load = |c: &Arc<std::sync::atomic::AtomicU64>| c.load(std::sync::atomic::Ordering::SeqCst);

    let (front, first, second) = hedge_front(Some(Duration::from_millis(450)));
    let r = front.infer("solo", request(), None).await.expect("the slow peer answers");
    assert_eq!(r.model_name, "solo");
    assert_eq!((load(&first), load(&second)), (1, 0), "no copy of a stage that is only slow");

    let (front, first, second) = hedge_front(None);
    let t = tokio::time::Instant::now();
    front.infer("solo", request(), None).await.expect("the copy answers for the silent peer");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(600), "hedged at 500 ms: {took:?}");
    assert_eq!((load(&first), load(&second)), (1, 1));
    // The silent attempt runs on to its own 700 ms budget; then the peer is suspect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    front.infer("solo", request(), None).await.expect("served by the other target");
    assert_eq!((load(&first), load(&second)), (1, 2), "the silent peer is avoided once suspect");
}

/// A peer that goes silent (a SIGKILLed agent: no reply, no transport error until the QUIC
/// idle timeout) is suspect after two hedged stages in a row, before any of their attempts
/// has timed out, so the next request goes straight to the other target instead of waiting
/// out another hedge delay. Before this rule the third request below was sent to the silent
/// peer again and answered only by its copy, 500 ms later.
#[tokio::test(start_paused = true)]
async fn a_peer_silent_through_two_hedges_is_avoided_before_its_attempts_time_out() {
    let (front, a, b) = hedge_front(None);
    let load = |c: &Arc<std::sync::atomic::AtomicU64>| c.load(std::sync::atomic::Ordering::SeqCst);
    let t = tokio::time::Instant::now();
    let two = tokio::join!(front.infer("solo", request(), None), front.infer("solo", request(), None));
    assert!(two.0.is_ok() && two.1.is_ok(), "the copies answer: {two:?}");
    assert!(t.elapsed() < Duration::from_millis(600), "hedged at 500 ms, not timed out: {:?}", t.elapsed());
    assert_eq!((load(&a), load(&b)), (2, 2));
    assert_eq!(front.suspect_peers(), vec!["first".to_string()], "silent twice in a row");
    let t = tokio::time::Instant::now();
    front.infer("solo", request(), None).await.expect("served by the other target");
    assert!(t.elapsed() < Duration::from_millis(50), "no hedge delay: {:?}", t.elapsed());
    assert_eq!((load(&a), load(&b)), (2, 3), "the silent peer is avoided");
}
