//! The node's actor tree (ractor).
//!
//! ```text
//! NodeAgent                      one per node; owns the epoch-fenced NodePlanCore
//! ├── GpuActor (GPU-…)           one per GPU; owns its backend (NVML or simulator)
//! │   ├── SegmentActor (start 0) one per live MIG instance; owns what runs on it
//! │   └── SegmentActor (start 4)
//! └── GpuActor (GPU-…)
//! ```
//!
//! Supervision: GPU actors are linked to the node agent and segment actors to their GPU
//! actor. A segment actor that fails is restarted by its GPU actor with the instance's
//! current assignment (its workers are re-attached by the next plan step; the data-plane
//! issue's workers are attached through the data plane, see [`SegmentActor`]). A GPU actor that fails takes its GPU out
//! of service: the node agent drops it from the inventory it reports, so the coordinator's
//! next plan excludes it, and plan pushes naming it are rejected.
//!
//! Actors are spawned unnamed (no global registry), so many nodes can live in one process
//! (the cluster simulation does that). Raft, the transport and the coordinator loop are plain
//! tokio tasks of [`crate::node`], which talk to the tree through [`NodeMsg`].

use crate::core::diff::{apply, Assignment, LiveSegment, Step, StepFailed};
use crate::core::node_plan::{GpuApplyError, NodeCommand, NodePlanCore, PlanPart};
use crate::dataplane::plane::{Attachment, Segments};
use crate::gpu::{GpuBackend, GpuError};
use crate::metrics::{labels, Metrics};
use jigsaw_protocol::cluster::GpuInventory;
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::wire::{ApplyOutcome, PushPhase};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest a GPU actor waits for an instance to drain before stopping its workers.
pub const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Longest a GPU actor waits for the instances it started to serve (their pools to run)
/// before it reports the step done anyway.
pub const READY_MAX: Duration = Duration::from_secs(5);

/// Longest a GPU actor retries a destroy refused with `IN_USE` (worker processes release
/// their CUDA contexts a moment after they are told to stop).
pub const DESTROY_RETRY: Duration = Duration::from_secs(3);

/// A GPU backend that can move between threads.
pub type Backend = Box<dyn GpuBackend + Send>;

/// What a node remembers across restarts: the newest epoch it accepted and its target
/// (written once the push passed every check and before the epoch is applied; re-applied on
/// start). A push that was refused is never written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedPlan {
    /// Epoch.
    pub epoch: u64,
    /// Target per GPU UUID.
    pub gpus: BTreeMap<String, Vec<InstancePlan>>,
}

/// Why the applied-plan file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AppliedPlanError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid applied plan.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

impl AppliedPlan {
    /// Load from `path`: a missing file is epoch 0, and so is a corrupt one, which is set
    /// aside as `applied-plan.json.corrupt` (see [`crate::persist`]); the coordinator then
    /// pushes the current plan again.
    pub fn load(path: &std::path::Path) -> Result<AppliedPlan, AppliedPlanError> {
        crate::persist::load_or_set_aside(path)
            .map(Option::unwrap_or_default)
            .map_err(|source| AppliedPlanError::Io { path: path.into(), source })
    }

    /// Write durably to `path` (temporary file, fsync, rename, fsync of the directory).
    pub fn save(&self, path: &std::path::Path) -> Result<(), AppliedPlanError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|source| AppliedPlanError::Json { path: path.into(), source })?;
        crate::persist::write_durably(path, &bytes).map_err(|source| AppliedPlanError::Io { path: path.into(), source })
    }
}

// ---------------------------------------------------------------- segment

/// Messages of a [`SegmentActor`].
#[derive(Debug)]
pub enum SegmentMsg {
    /// The instance now runs this.
    Assign(InstancePlan),
    /// Describe the segment.
    Describe(RpcReplyPort<InstancePlan>),
}

/// Arguments of a [`SegmentActor`].
pub struct SegmentArgs {
    /// What the instance runs.
    pub plan: InstancePlan,
    /// The GPU's UUID.
    pub gpu: String,
    /// The MIG instance's device UUID (what CUDA workers are bound to).
    pub device: String,
    /// The node's data plane, which starts the instance's workers (`None`: no workers).
    pub segments: Option<Arc<dyn Segments>>,
}

/// State of a [`SegmentActor`]: the assignment and the attachment that keeps its workers
/// running (dropped, and the workers stopped, when the actor stops).
pub struct SegmentState {
    plan: InstancePlan,
    gpu: String,
    device: String,
    segments: Option<Arc<dyn Segments>>,
    attachment: Option<Attachment>,
}

impl SegmentState {
    fn attach(&mut self) {
        self.attachment = None; // stop the old workers first
        self.attachment =
            self.segments.as_ref().filter(|_| self.plan.mps > 0).map(|s| s.attach(&self.gpu, &self.device, &self.plan));
    }
}

/// One live MIG instance and what runs on it: it owns the instance's workers through its
/// data-plane attachment (each worker is supervised and restarted by its supervisor task).
#[derive(Debug, Clone, Copy)]
pub struct SegmentActor;

impl Actor for SegmentActor {
    type Msg = SegmentMsg;
    type State = SegmentState;
    type Arguments = SegmentArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<SegmentMsg>,
        args: SegmentArgs,
    ) -> Result<SegmentState, ActorProcessingErr> {
        let mut st = SegmentState {
            plan: args.plan,
            gpu: args.gpu,
            device: args.device,
            segments: args.segments,
            attachment: None,
        };
        st.attach();
        Ok(st)
    }

    async fn handle(
        &self,
        _me: ActorRef<SegmentMsg>,
        msg: SegmentMsg,
        state: &mut SegmentState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SegmentMsg::Assign(p) => {
                if p != state.plan {
                    state.plan = p;
                    state.attach();
                }
            }
            SegmentMsg::Describe(reply) => {
                let _ = reply.send(state.plan.clone());
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<SegmentMsg>, state: &mut SegmentState) -> Result<(), ActorProcessingErr> {
        // Stop the workers now: ractor hands the stopped actor's state to its supervisor in
        // the termination event, which the GPU actor reads only after its current step, and
        // the destroy that follows must find the workers gone.
        state.attachment = None;
        Ok(())
    }
}

// ---------------------------------------------------------------- GPU

/// Messages of a [`GpuActor`].
#[derive(Debug)]
pub enum GpuMsg {
    /// The live layout with the work assigned to each instance.
    Live(RpcReplyPort<Vec<LiveSegment>>),
    /// Run `steps` toward `target` (on a blocking thread: NVML create/destroy poll); reply
    /// with the first failed step.
    Apply {
        /// Steps from the plan diff.
        steps: Vec<Step>,
        /// The target (for the segments' assignments).
        target: Vec<InstancePlan>,
        /// Result.
        reply: RpcReplyPort<Result<(), GpuApplyError>>,
    },
    /// The GPU's inventory entry.
    Inventory(RpcReplyPort<GpuInventory>),
}

/// Arguments of a [`GpuActor`].
pub struct GpuArgs {
    /// The backend.
    pub backend: Backend,
    /// Sleep for the backend's reconfiguration latency after each create/destroy (simulator).
    pub simulate_latency: bool,
    /// The node's data plane (segment actors attach their workers to it).
    pub segments: Option<Arc<dyn Segments>>,
    /// The node's metrics.
    pub metrics: Option<Arc<Metrics>>,
}

/// State of a [`GpuActor`].
pub struct GpuState {
    /// Owned by this actor alone; behind a mutex only so that a blocking thread can run the
    /// backend's slow calls while the actor awaits it.
    backend: Arc<std::sync::Mutex<Backend>>,
    simulate_latency: bool,
    plane: Option<Arc<dyn Segments>>,
    metrics: Option<Arc<Metrics>>,
    work: BTreeMap<u8, InstancePlan>,
    segments: BTreeMap<u8, ActorRef<SegmentMsg>>,
}

/// One GPU and its MIG/MPS state.
#[derive(Debug, Clone, Copy)]
pub struct GpuActor;

impl GpuState {
    fn backend(&self) -> std::sync::MutexGuard<'_, Backend> {
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Vec<LiveSegment> {
        self.backend()
            .instances()
            .into_iter()
            .map(|i| {
                let assignment = self.work.get(&i.start).filter(|w| w.mig_profile == i.profile).map(Assignment::of);
                LiveSegment { instance: i, assignment }
            })
            .collect()
    }

    fn inventory(&self) -> GpuInventory {
        let live = self
            .backend()
            .instances()
            .into_iter()
            .map(|i| {
                self.work.get(&i.start).filter(|w| w.mig_profile == i.profile && i.workers > 0).cloned().unwrap_or(
                    InstancePlan {
                        mig_profile: i.profile.clone(),
                        start: i.start,
                        slices: 0,
                        mps: 0,
                        task: String::new(),
                        variant: String::new(),
                        batch: 0,
                        p95_ms: 0.0,
                        throughput_rps: 0.0,
                        app: String::new(),
                        load_rps: 0.0,
                    },
                )
            })
            .collect();
        let b = self.backend();
        GpuInventory { uuid: b.uuid().to_string(), model: b.model(), live }
    }

    /// Drain the instance at `start` and stop its workers (its segment actor, whose
    /// attachment keeps the data plane's pool and worker processes alive).
    async fn quiesce(&mut self, start: u8) {
        let gpu = self.backend().uuid().to_string();
        if let Some(p) = &self.plane {
            let left = p.drain(&gpu, start, DRAIN_MAX).await;
            if left > 0 {
                tracing::warn!(gpu = %gpu, start, left, "instance not drained in time; stopping it with items in flight");
            }
        }
        self.work.remove(&start);
        if let Some(a) = self.segments.remove(&start) {
            if let Err(e) = a.stop_and_wait(Some("instance drained".into()), Some(Duration::from_secs(5))).await {
                tracing::warn!(gpu = %gpu, start, %e, "segment actor did not stop in time");
            }
        }
    }

    /// Run one step on a blocking thread (NVML create/destroy poll); a destroy refused
    /// because a worker process has not released its CUDA context yet is retried for up to
    /// [`DESTROY_RETRY`]. Returns the reconfiguration time the backend reported.
    async fn run_step(&self, step: Step, target: Vec<InstancePlan>) -> (Duration, Result<(), GpuApplyError>) {
        let backend = self.backend.clone();
        let run = move || {
            let mut b = backend.lock().unwrap_or_else(|p| p.into_inner());
            let spec = b.model().spec();
            let mem = |a: &Assignment| {
                let gib = target
                    .iter()
                    .find(|t| Assignment::of(t) == *a)
                    .and_then(|t| spec.profile_index(&t.mig_profile))
                    .map_or(1.0, |p| spec.profiles[p].mem_gib);
                0.9 * gib / f64::from(a.mps.max(1))
            };
            let t0 = std::time::Instant::now();
            loop {
                match apply(b.as_mut(), std::slice::from_ref(&step), &mem) {
                    Err(e)
                        if matches!(step, Step::Destroy { .. })
                            && matches!(e.error, GpuError::InUse { .. })
                            && t0.elapsed() < DESTROY_RETRY =>
                    {
                        drop(b);
                        std::thread::sleep(Duration::from_millis(10));
                        b = backend.lock().unwrap_or_else(|p| p.into_inner());
                    }
                    Err(e) => return (Duration::ZERO, Err(GpuApplyError::Step(e))),
                    Ok(()) => {
                        let w = if matches!(step, Step::Create { .. } | Step::Destroy { .. }) {
                            b.last_reconfig()
                        } else {
                            Duration::ZERO
                        };
                        return (w, Ok(()));
                    }
                }
            }
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(r) => r,
            Err(e) => (Duration::ZERO, Err(GpuApplyError::Unavailable(format!("GPU backend thread: {e}")))),
        }
    }

    /// Make the segment actors match the live instances.
    async fn reconcile(&mut self, me: &ActorRef<GpuMsg>) -> Result<(), ActorProcessingErr> {
        let live: BTreeMap<u8, String> = self.backend().instances().into_iter().map(|i| (i.start, i.profile)).collect();
        let gone: Vec<u8> = self.segments.keys().filter(|s| !live.contains_key(s)).copied().collect();
        for s in gone {
            if let Some(a) = self.segments.remove(&s) {
                a.stop(Some("instance destroyed".into()));
            }
        }
        self.work.retain(|s, w| live.get(s) == Some(&w.mig_profile));
        for (start, w) in &self.work {
            match self.segments.get(start) {
                Some(a) => a.send_message(SegmentMsg::Assign(w.clone()))?,
                None => {
                    let (device, gpu) = {
                        let b = self.backend();
                        let device = b.instances().into_iter().find(|i| i.start == *start).map(|i| i.uuid);
                        (device, b.uuid().to_string())
                    };
                    let args = SegmentArgs {
                        plan: w.clone(),
                        gpu,
                        device: device.unwrap_or_default(),
                        segments: self.plane.clone(),
                    };
                    let (a, _) = Actor::spawn_linked(None, SegmentActor, args, me.get_cell()).await?;
                    self.segments.insert(*start, a);
                }
            }
        }
        Ok(())
    }
}

impl Actor for GpuActor {
    type Msg = GpuMsg;
    type State = GpuState;
    type Arguments = GpuArgs;

    async fn pre_start(&self, _me: ActorRef<GpuMsg>, args: GpuArgs) -> Result<GpuState, ActorProcessingErr> {
        Ok(GpuState {
            backend: Arc::new(std::sync::Mutex::new(args.backend)),
            simulate_latency: args.simulate_latency,
            plane: args.segments,
            metrics: args.metrics,
            work: BTreeMap::new(),
            segments: BTreeMap::new(),
        })
    }

    async fn handle(&self, me: ActorRef<GpuMsg>, msg: GpuMsg, st: &mut GpuState) -> Result<(), ActorProcessingErr> {
        match msg {
            GpuMsg::Live(reply) => {
                let _ = reply.send(st.live());
            }
            GpuMsg::Inventory(reply) => {
                let _ = reply.send(st.inventory());
            }
            GpuMsg::Apply { steps, target, reply } => {
                let mut done = Vec::with_capacity(steps.len());
                let mut result = Ok(());
                for (i, step) in steps.iter().enumerate() {
                    // Break only what is quiet: an instance's workers stop once its items
                    // finished (and their processes exited, so the destroy that follows finds
                    // no CUDA context on the device), never under load.
                    if let Step::StopWorkers { start } = step {
                        st.quiesce(*start).await;
                    }
                    let (w, r) = st.run_step(step.clone(), target.clone()).await;
                    if let Err(e) = r {
                        result = Err(match e {
                            GpuApplyError::Step(f) => GpuApplyError::Step(Box::new(StepFailed { index: i, ..*f })),
                            other => other,
                        });
                        break;
                    }
                    done.push(step.clone());
                    if st.simulate_latency && !w.is_zero() {
                        tokio::time::sleep(w).await;
                    }
                }
                // A kept instance whose target differs only in batch size (no step: see
                // `core::diff`) runs the target's figures from now on.
                for t in &target {
                    if let Some(w) = st.work.get_mut(&t.start) {
                        if w.mig_profile == t.mig_profile && Assignment::of(w).same_workers(&Assignment::of(t)) {
                            *w = t.clone();
                        }
                    }
                }
                // Segments whose workers started run their assignment, even when a later step failed.
                for step in &done {
                    if let Step::StartWorkers { start, .. } = step {
                        if let Some(t) = target.iter().find(|t| t.start == *start) {
                            st.work.insert(*start, t.clone());
                        }
                    }
                }
                if let Some(m) = &st.metrics {
                    let reconfig = |s: &Step| matches!(s, Step::Create { .. } | Step::Destroy { .. });
                    let ok = done.iter().filter(|s| reconfig(s)).count() as u64;
                    m.mig_reconfigurations.get_or_create(&labels(&[("outcome", "ok")])).inc_by(ok);
                    if let Err(GpuApplyError::Step(f)) = &result {
                        if reconfig(&f.step) {
                            m.mig_reconfigurations.get_or_create(&labels(&[("outcome", "failed")])).inc();
                        }
                    }
                }
                st.reconcile(&me).await?;
                // Ready means serving: wait (bounded) until the started instances' pools run.
                if let Some(plane) = &st.plane {
                    let gpu = st.backend().uuid().to_string();
                    let started: Vec<u8> = done
                        .iter()
                        .filter_map(|s| match s {
                            Step::StartWorkers { start, assignment } if assignment.mps > 0 => Some(*start),
                            _ => None,
                        })
                        .collect();
                    let t0 = tokio::time::Instant::now();
                    while !started.iter().all(|s| plane.serving(&gpu, *s)) && t0.elapsed() < READY_MAX {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<GpuMsg>,
        evt: SupervisionEvent,
        st: &mut GpuState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            // Restart the failed segment with its current assignment.
            let start = st.segments.iter().find(|(_, a)| a.get_id() == cell.get_id()).map(|(s, _)| *s);
            if let Some(s) = start {
                tracing::warn!(start = s, %err, "segment actor failed; restarting it");
                st.segments.remove(&s);
                st.reconcile(&me).await?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- node

/// What to do once a push is accepted, before any GPU step runs (the node installs the
/// epoch's routing table there, so a refused push leaves the routes alone and the segments
/// the plan creates find their app's description).
pub struct OnAccept(Box<dyn FnOnce() + Send>);

impl OnAccept {
    /// Run `f` on acceptance.
    pub fn new(f: impl FnOnce() + Send + 'static) -> OnAccept {
        OnAccept(Box::new(f))
    }
}

impl std::fmt::Debug for OnAccept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnAccept")
    }
}

/// Messages of the [`NodeAgent`].
#[derive(Debug)]
pub enum NodeMsg {
    /// A plan push from the coordinator (already past the node's [`crate::core::plan_fence`]).
    Push {
        /// Epoch.
        epoch: u64,
        /// Target per GPU UUID.
        gpus: BTreeMap<String, Vec<InstancePlan>>,
        /// The transition step asked for (`docs/transitions.md`).
        phase: PushPhase,
        /// Run once the push is accepted and persisted, before it is applied.
        on_accept: Option<OnAccept>,
        /// Outcome.
        reply: RpcReplyPort<ApplyOutcome>,
    },
    /// Re-read every GPU's inventory and publish it.
    Refresh,
}

/// Arguments of the [`NodeAgent`].
pub struct NodeArgs {
    /// GPU backends.
    pub gpus: Vec<Backend>,
    /// Simulated reconfiguration latency (see [`GpuArgs`]).
    pub simulate_latency: bool,
    /// Where the applied plan is kept across restarts (`None`: not kept).
    pub state_file: Option<PathBuf>,
    /// Inventory and applied epoch are published here.
    pub inventory: watch::Sender<(u64, Vec<GpuInventory>)>,
    /// The node's data plane (`None`: segments run no workers).
    pub segments: Option<Arc<dyn Segments>>,
    /// The node's metrics (MIG reconfigurations are counted there).
    pub metrics: Option<Arc<Metrics>>,
}

/// State of the [`NodeAgent`].
pub struct NodeState {
    core: NodePlanCore,
    gpus: BTreeMap<String, ActorRef<GpuMsg>>,
    state_file: Option<PathBuf>,
    inventory: watch::Sender<(u64, Vec<GpuInventory>)>,
}

/// The node's root actor.
#[derive(Debug, Clone, Copy)]
pub struct NodeAgent;

async fn ask<T: Send + 'static>(
    a: &ActorRef<GpuMsg>,
    f: impl FnOnce(RpcReplyPort<T>) -> GpuMsg,
) -> Result<T, ActorProcessingErr> {
    Ok(ractor::call!(a, f)?)
}

impl NodeState {
    async fn publish(&self) -> Result<(), ActorProcessingErr> {
        let mut inv = Vec::new();
        for (uuid, a) in &self.gpus {
            // A GPU actor that just failed is skipped; its supervision event removes it.
            match ask(a, GpuMsg::Inventory).await {
                Ok(g) => inv.push(g),
                Err(e) => tracing::warn!(gpu = %uuid, %e, "GPU actor did not answer; left out of the inventory"),
            }
        }
        self.inventory.send_replace((self.core.applied_epoch(), inv));
        Ok(())
    }

    async fn push(
        &mut self,
        epoch: u64,
        gpus: BTreeMap<String, Vec<InstancePlan>>,
        phase: PushPhase,
        on_accept: Option<OnAccept>,
    ) -> ApplyOutcome {
        if !self.core.would_take(epoch, phase) {
            return ApplyOutcome::Stale { accepted: self.core.accepted_epoch() };
        }
        if phase == PushPhase::Routes {
            // Routes only: no GPU is touched and nothing is persisted but the table.
            if let Some(OnAccept(f)) = on_accept {
                f();
            }
            return ApplyOutcome::Applied;
        }
        let mut live = BTreeMap::new();
        for (uuid, a) in &self.gpus {
            match ask(a, GpuMsg::Live).await {
                Ok(l) => {
                    live.insert(uuid.clone(), l);
                }
                Err(e) => return ApplyOutcome::Rejected { reason: format!("GPU {uuid} unavailable: {e}") },
            }
        }
        let part = PlanPart { epoch, gpus: gpus.clone() };
        // Check first, persist second: a refused plan is neither written nor, after a
        // restart, restored.
        let (cmds, deferred) = match self.core.check_phase(&part, &live, phase) {
            Ok(c) => c,
            Err(crate::core::node_plan::PushRejected::Stale { accepted, .. }) => {
                return ApplyOutcome::Stale { accepted }
            }
            Err(e) => return ApplyOutcome::Rejected { reason: e.to_string() },
        };
        // Persist the accepted target before touching a GPU, so a crash mid-apply restarts
        // into this epoch (re-applied), never into an older one.
        if let Some(path) = &self.state_file {
            if let Err(e) = (AppliedPlan { epoch, gpus: gpus.clone() }).save(path) {
                return ApplyOutcome::Rejected { reason: format!("cannot persist the plan before applying it: {e}") };
            }
        }
        self.core.begin_phase(epoch, phase, deferred);
        if let Some(OnAccept(f)) = on_accept {
            f();
        }
        let mut outcome = ApplyOutcome::Rejected { reason: "no GPU reported back".into() };
        let mut queue: Vec<NodeCommand> = cmds;
        if queue.is_empty() {
            // A node without GPUs applies any epoch trivially.
            outcome = if phase == PushPhase::Make {
                ApplyOutcome::Prepared { deferred: Vec::new() }
            } else {
                ApplyOutcome::Applied
            };
        }
        while let Some(cmd) = queue.pop() {
            match cmd {
                NodeCommand::Apply { epoch, gpu, steps } => {
                    let target = gpus.get(&gpu).cloned().unwrap_or_default();
                    let res = match self.gpus.get(&gpu) {
                        Some(a) => match ractor::call!(a, |reply| GpuMsg::Apply { steps, target, reply }) {
                            Ok(r) => r,
                            Err(e) => Err(GpuApplyError::Unavailable(format!("GPU actor unavailable: {e}"))),
                        },
                        None => Err(GpuApplyError::Unavailable("GPU actor gone".into())),
                    };
                    queue.extend(self.core.gpu_done(epoch, &gpu, res));
                }
                NodeCommand::ReportApplied { .. } => outcome = ApplyOutcome::Applied,
                NodeCommand::ReportPrepared { deferred, .. } => outcome = ApplyOutcome::Prepared { deferred },
                NodeCommand::ReportFailed { gpu, error, .. } => {
                    outcome = ApplyOutcome::Failed { gpu, error };
                    queue.clear();
                }
            }
        }
        outcome
    }
}

impl Actor for NodeAgent {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(&self, me: ActorRef<NodeMsg>, args: NodeArgs) -> Result<NodeState, ActorProcessingErr> {
        let mut models = BTreeMap::new();
        let mut gpus = BTreeMap::new();
        for b in args.gpus {
            let (uuid, model) = (b.uuid().to_string(), b.model());
            let gargs = GpuArgs {
                backend: b,
                simulate_latency: args.simulate_latency,
                segments: args.segments.clone(),
                metrics: args.metrics.clone(),
            };
            let (a, _) = Actor::spawn_linked(None, GpuActor, gargs, me.get_cell()).await?;
            models.insert(uuid.clone(), model);
            gpus.insert(uuid, a);
        }
        let saved = match &args.state_file {
            Some(p) => AppliedPlan::load(p).map_err(|e| format!("applied-plan file: {e}"))?,
            None => AppliedPlan::default(),
        };
        let mut st = NodeState {
            core: NodePlanCore::new(models, 0),
            gpus,
            state_file: args.state_file,
            inventory: args.inventory,
        };
        if saved.epoch > 0 {
            // Restore the segments of the last applied epoch (a no-op where they survived,
            // e.g. MIG instances on a real GPU) so the fence resumes where it was.
            let known: BTreeMap<_, _> =
                saved.gpus.clone().into_iter().filter(|(g, _)| st.gpus.contains_key(g)).collect();
            let outcome = st.push(saved.epoch, known, PushPhase::All, None).await;
            tracing::info!(epoch = saved.epoch, ?outcome, "restored the last applied plan");
        }
        st.publish().await?;
        Ok(st)
    }

    async fn handle(&self, _me: ActorRef<NodeMsg>, msg: NodeMsg, st: &mut NodeState) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Push { epoch, gpus, phase, on_accept, reply } => {
                let outcome = st.push(epoch, gpus, phase, on_accept).await;
                st.publish().await?;
                let _ = reply.send(outcome);
            }
            NodeMsg::Refresh => st.publish().await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let gpu = st.gpus.iter().find(|(_, a)| a.get_id() == cell.get_id()).map(|(g, _)| g.clone());
            if let Some(g) = gpu {
                tracing::error!(gpu = %g, %err, "GPU actor failed; the GPU leaves this node's inventory");
                st.gpus.remove(&g);
                st.core.remove_gpu(&g);
                st.publish().await?;
            }
        }
        Ok(())
    }
}
