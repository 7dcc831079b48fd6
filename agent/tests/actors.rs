//! The node's actor tree on simulated GPUs: plans are applied and fenced by epoch, a failed
//! step comes back as a report naming the GPU and the step, a restarted node restores
//! its last applied plan from its data dir (never a plan it refused), and a corrupt state
//! file is set aside rather than stopping the node.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests are shells, not pure cores

use jigsaw_agent::actors::{Backend, NodeAgent, NodeArgs, NodeMsg};
use jigsaw_agent::dataplane::plane::{Attachment, Segments};
use jigsaw_agent::gpu::sim::Contexts;
use jigsaw_agent::gpu::sim::SimGpu;
use jigsaw_agent::gpu::{GpuBackend, GpuError, InstanceId, LiveInstance};
use jigsaw_protocol::cluster::GpuInventory;
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::wire::{ApplyOutcome, PushPhase};
use jigsaw_protocol::GpuModel;
use ractor::{Actor, ActorRef};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A simulated GPU whose creates fail for one profile (a driver refusing, say).
struct Faulty {
    inner: SimGpu,
    refuse: &'static str,
}

impl GpuBackend for Faulty {
    fn model(&self) -> GpuModel {
        self.inner.model()
    }
    fn uuid(&self) -> &str {
        self.inner.uuid()
    }
    fn instances(&self) -> Vec<LiveInstance> {
        self.inner.instances()
    }
    fn create(&mut self, profile: &str, start: u8) -> Result<LiveInstance, GpuError> {
        if profile == self.refuse {
            return Err(GpuError::Unavailable(format!("driver refused {profile}")));
        }
        self.inner.create(profile, start)
    }
    fn destroy(&mut self, id: InstanceId) -> Result<(), GpuError> {
        self.inner.destroy(id)
    }
    fn attach_worker(&mut self, id: InstanceId, mem_gib: f64) -> Result<(), GpuError> {
        self.inner.attach_worker(id, mem_gib)
    }
    fn detach_worker(&mut self, id: InstanceId) -> Result<(), GpuError> {
        self.inner.detach_worker(id)
    }
    fn last_reconfig(&self) -> Duration {
        self.inner.last_reconfig()
    }
}

fn inst(profile: &str, start: u8, task: &str) -> InstancePlan {
    InstancePlan { mps: 2, ..jigsaw_protocol::testing::instance(task, profile, start) }
}

type Inventory = watch::Receiver<(u64, Vec<GpuInventory>)>;

async fn node(gpus: Vec<Backend>, state_file: &std::path::Path) -> (ActorRef<NodeMsg>, Inventory) {
    let (tx, rx) = watch::channel((0, Vec::new()));
    let args = NodeArgs {
        gpus,
        simulate_latency: false,
        state_file: Some(state_file.to_path_buf()),
        inventory: tx,
        segments: None,
        metrics: None,
    };
    let (a, _) = Actor::spawn(None, NodeAgent, args).await.expect("spawn node agent");
    (a, rx)
}

async fn push(a: &ActorRef<NodeMsg>, epoch: u64, gpus: BTreeMap<String, Vec<InstancePlan>>) -> ApplyOutcome {
    push_phase(a, epoch, gpus, PushPhase::All).await
}

async fn push_phase(
    a: &ActorRef<NodeMsg>,
    epoch: u64,
    gpus: BTreeMap<String, Vec<InstancePlan>>,
    phase: PushPhase,
) -> ApplyOutcome {
    ractor::call!(a, |reply| NodeMsg::Push { epoch, gpus, phase, on_accept: None, reply }).expect("node agent answers")
}

fn layout(inv: &Inventory) -> Vec<(String, u8, String)> {
    let (_, gpus) = inv.borrow().clone();
    gpus.iter().flat_map(|g| g.live.iter().map(|i| (i.mig_profile.clone(), i.start, i.task.clone()))).collect()
}

#[tokio::test]
async fn plans_apply_fence_fail_loudly_and_survive_restart() {
    let dir = std::env::temp_dir().join(format!("jigsaw-actors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("applied-plan.json");
    let gpu = || Faulty { inner: SimGpu::new(GpuModel::H100_80gb, 1, Duration::ZERO), refuse: "2g.20gb" };
    let uuid = gpu().uuid().to_string();
    let (a, inv) = node(vec![Box::new(gpu())], &state).await;

    let e1: BTreeMap<_, _> = [(uuid.clone(), vec![inst("4g.40gb", 0, "det"), inst("3g.40gb", 4, "cls")])].into();
    assert_eq!(push(&a, 1, e1.clone()).await, ApplyOutcome::Applied);
    assert_eq!(inv.borrow().0, 1);
    assert_eq!(layout(&inv), vec![("4g.40gb".into(), 0, "det".into()), ("3g.40gb".into(), 4, "cls".into())]);

    // An older or equal epoch is fenced off and changes nothing.
    let other: BTreeMap<_, _> = [(uuid.clone(), vec![inst("7g.80gb", 0, "x")])].into();
    assert_eq!(push(&a, 1, other.clone()).await, ApplyOutcome::Stale { accepted: 1 });
    assert_eq!(layout(&inv).len(), 2);

    // A GPU this node does not have: refused before any step.
    let unknown: BTreeMap<_, _> = [("GPU-nope".to_string(), vec![])].into();
    assert!(matches!(push(&a, 2, unknown).await, ApplyOutcome::Rejected { reason } if reason.contains("GPU-nope")));

    // A failing step is reported with the GPU and the step; the applied epoch stays.
    let e3: BTreeMap<_, _> = [(uuid.clone(), vec![inst("2g.20gb", 0, "det")])].into();
    match push(&a, 3, e3).await {
        ApplyOutcome::Failed { gpu, error } => {
            assert_eq!(gpu, uuid);
            assert!(error.contains("Create") && error.contains("driver refused 2g.20gb"), "{error}");
        }
        other => panic!("expected a failure report, got {other:?}"),
    }
    assert_eq!(inv.borrow().0, 1, "a failed epoch is not applied");

    // A newer good epoch still applies after the failure.
    assert_eq!(push(&a, 4, e1.clone()).await, ApplyOutcome::Applied);
    assert_eq!(inv.borrow().0, 4);
    a.stop(None);

    // A restart (fresh simulated GPU, same data dir) restores epoch 4's layout and fence.
    let (b, inv) = node(vec![Box::new(gpu())], &state).await;
    assert_eq!(inv.borrow().0, 4);
    assert_eq!(layout(&inv).len(), 2);
    assert_eq!(push(&b, 4, other).await, ApplyOutcome::Stale { accepted: 4 });
    b.stop(None);
    let _ = std::fs::remove_dir_all(&dir);
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jigsaw-actors-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Check first, persist second: a push the node refuses (a GPU it does not have, an illegal
/// layout) is not written, so a restart restores the last plan it accepted, and the refused
/// epoch is still open for a real plan.
#[tokio::test]
async fn a_refused_plan_is_neither_persisted_nor_restored() {
    let dir = temp_dir("refused");
    let state = dir.join("applied-plan.json");
    let gpu = || SimGpu::new(GpuModel::H100_80gb, 7, Duration::ZERO);
    let uuid = gpu().uuid().to_string();
    let (a, _) = node(vec![Box::new(gpu())], &state).await;
    let e1: BTreeMap<_, _> = [(uuid.clone(), vec![inst("7g.80gb", 0, "det")])].into();
    assert_eq!(push(&a, 1, e1).await, ApplyOutcome::Applied);
    let saved = std::fs::read(&state).expect("saved");

    let unknown: BTreeMap<_, _> = [("GPU-nope".to_string(), vec![inst("7g.80gb", 0, "x")])].into();
    assert!(matches!(push(&a, 2, unknown).await, ApplyOutcome::Rejected { .. }));
    let overlap: BTreeMap<_, _> = [(uuid.clone(), vec![inst("4g.40gb", 0, "x"), inst("2g.20gb", 2, "y")])].into();
    assert!(matches!(push(&a, 3, overlap).await, ApplyOutcome::Rejected { .. }));
    assert_eq!(std::fs::read(&state).expect("saved"), saved, "refused plans are not written");
    a.stop(None);

    let (b, inv) = node(vec![Box::new(gpu())], &state).await;
    assert_eq!(inv.borrow().0, 1, "the last accepted plan is restored, not a refused one");
    assert_eq!(layout(&inv), vec![("7g.80gb".into(), 0, "det".into())]);
    let e2: BTreeMap<_, _> = [(uuid.clone(), vec![inst("3g.40gb", 4, "cls")])].into();
    assert_eq!(push(&b, 2, e2).await, ApplyOutcome::Applied, "the refused epoch is still open");
    assert_eq!(layout(&inv), vec![("3g.40gb".into(), 4, "cls".into())]);
    b.stop(None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A torn `applied-plan.json` (a crash mid-write on a file system that does not keep the
/// order) is logged and set aside; the node starts empty and applies the next push.
#[tokio::test]
async fn a_torn_applied_plan_is_set_aside_and_the_next_push_applies() {
    let dir = temp_dir("torn");
    let state = dir.join("applied-plan.json");
    std::fs::write(&state, br#"{"epoch": 9, "gpus": {"GPU-"#).expect("torn file");
    let gpu = SimGpu::new(GpuModel::H100_80gb, 3, Duration::ZERO);
    let uuid = gpu.uuid().to_string();
    let (a, inv) = node(vec![Box::new(gpu)], &state).await;
    assert_eq!(inv.borrow().0, 0, "started empty");
    let aside = dir.join("applied-plan.json.corrupt");
    assert_eq!(std::fs::read(&aside).expect("set aside"), br#"{"epoch": 9, "gpus": {"GPU-"#);
    let e1: BTreeMap<_, _> = [(uuid, vec![inst("4g.40gb", 0, "det")])].into();
    assert_eq!(push(&a, 1, e1).await, ApplyOutcome::Applied);
    assert_eq!(inv.borrow().0, 1);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).expect("saved")).expect("json");
    assert_eq!(saved["epoch"], 1, "a complete file again");
    a.stop(None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data-plane twin whose segments run one "worker process" each: it opens a CUDA context
/// on the instance's MIG device when attached and closes it a little after it is told to
/// stop (a process takes a moment to exit), as real workers do.
struct ContextSegments(Contexts);

impl Segments for ContextSegments {
    fn attach(&self, _gpu: &str, device: &str, _plan: &InstancePlan) -> Attachment {
        self.0.open(device);
        let (contexts, device) = (self.0.clone(), device.to_string());
        Attachment::new(move || {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                contexts.close(&device);
            });
        })
    }
}

/// On a GPU that refuses to destroy an instance while a worker process holds a CUDA context
/// on it (as NVML does), re-layouts that destroy every instance still converge: the GPU
/// actor stops an instance's workers before destroying it and retries the refusal while
/// they exit.
#[tokio::test]
async fn relayouts_converge_on_a_gpu_that_refuses_destroy_while_workers_live() {
    let dir = temp_dir("contexts");
    let contexts = Contexts::default();
    let gpu = SimGpu::new(GpuModel::H100_80gb, 11, Duration::ZERO).refuse_destroy_with_contexts(contexts.clone());
    let uuid = gpu.uuid().to_string();
    let (tx, inv) = watch::channel((0, Vec::new()));
    let args = NodeArgs {
        gpus: vec![Box::new(gpu)],
        simulate_latency: false,
        state_file: Some(dir.join("applied-plan.json")),
        inventory: tx,
        segments: Some(Arc::new(ContextSegments(contexts.clone()))),
        metrics: None,
    };
    let (a, _) = Actor::spawn(None, NodeAgent, args).await.expect("spawn node agent");
    let layouts = [
        vec![inst("7g.80gb", 0, "a")],
        vec![inst("4g.40gb", 0, "a"), inst("3g.40gb", 4, "b")],
        vec![inst("3g.40gb", 0, "b"), inst("2g.20gb", 4, "a"), inst("1g.10gb", 6, "c")],
        vec![inst("7g.80gb", 0, "c")],
        vec![],
    ];
    for (e, l) in layouts.iter().enumerate() {
        let epoch = e as u64 + 1;
        let out = push(&a, epoch, [(uuid.clone(), l.clone())].into()).await;
        assert_eq!(out, ApplyOutcome::Applied, "epoch {epoch}");
        let want: Vec<(String, u8, String)> =
            l.iter().map(|i| (i.mig_profile.clone(), i.start, i.task.clone())).collect();
        assert_eq!(layout(&inv), want, "epoch {epoch}");
    }
    a.stop(None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A phased push: the make phase creates only what fits in free slots and touches nothing
/// live (reporting what does not serve yet); the break phase finishes the epoch.
#[tokio::test]
async fn the_make_phase_touches_nothing_live_and_the_break_phase_finishes() {
    let dir = temp_dir("phases");
    let gpu = SimGpu::new(GpuModel::H100_80gb, 12, Duration::ZERO);
    let uuid = gpu.uuid().to_string();
    let (a, inv) = node(vec![Box::new(gpu)], &dir.join("applied-plan.json")).await;
    let g = |l: Vec<InstancePlan>| -> BTreeMap<String, Vec<InstancePlan>> { [(uuid.clone(), l)].into() };
    assert_eq!(push(&a, 1, g(vec![inst("4g.40gb", 0, "det")])).await, ApplyOutcome::Applied);

    // Epoch 2 reassigns 4g@0 and adds 3g@4 in a free slot.
    let e2 = g(vec![inst("4g.40gb", 0, "det2"), inst("3g.40gb", 4, "cls")]);
    let out = push_phase(&a, 2, e2.clone(), PushPhase::Make).await;
    assert_eq!(out, ApplyOutcome::Prepared { deferred: vec![(uuid.clone(), 0)] });
    assert_eq!(layout(&inv), vec![("4g.40gb".into(), 0, "det".into()), ("3g.40gb".into(), 4, "cls".into())]);
    assert_eq!(inv.borrow().0, 1, "not applied before the break");
    assert_eq!(
        push_phase(&a, 2, e2.clone(), PushPhase::Make).await,
        ApplyOutcome::Prepared { deferred: vec![(uuid.clone(), 0)] },
        "a re-sent phase is re-run harmlessly"
    );
    assert_eq!(push_phase(&a, 2, e2.clone(), PushPhase::Routes).await, ApplyOutcome::Applied);
    assert_eq!(push_phase(&a, 2, e2.clone(), PushPhase::Break).await, ApplyOutcome::Applied);
    assert_eq!(layout(&inv), vec![("4g.40gb".into(), 0, "det2".into()), ("3g.40gb".into(), 4, "cls".into())]);
    assert_eq!(inv.borrow().0, 2);
    assert_eq!(push(&a, 2, e2).await, ApplyOutcome::Stale { accepted: 2 }, "an unphased push of it is stale");

    // Epoch 3 needs every slot the live instances hold: the make phase can do nothing.
    let e3 = g(vec![inst("7g.80gb", 0, "all")]);
    let out = push_phase(&a, 3, e3.clone(), PushPhase::Make).await;
    assert_eq!(out, ApplyOutcome::Prepared { deferred: vec![(uuid.clone(), 0)] });
    assert_eq!(layout(&inv).len(), 2, "nothing live touched");
    assert_eq!(push_phase(&a, 1, e3.clone(), PushPhase::Break).await, ApplyOutcome::Stale { accepted: 3 });
    assert_eq!(push_phase(&a, 3, e3, PushPhase::Break).await, ApplyOutcome::Applied);
    assert_eq!(layout(&inv), vec![("7g.80gb".into(), 0, "all".into())]);
    a.stop(None);
    let _ = std::fs::remove_dir_all(&dir);
}
