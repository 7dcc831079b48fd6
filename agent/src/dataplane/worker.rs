//! Workers: what executes batches for one replica (MPS process) of a segment instance.
//!
//! * [`WorkerSpec`]: everything a worker needs (variant, executor, latency curve, device).
//! * [`BatchExec`]: the executors a worker can run:
//!   - `timed`: sleeps the profiled p95 latency of the batch size (the simulator's default;
//!     outputs are a synthetic digest of the input, labelled as such);
//!   - `cpu`: the CPU reference executor running the variant's layer graph, scaled down by
//!     [`WorkerSpec::scale`] so it fits a CPU;
//!   - `noop`: returns at once (the data-plane benchmark's per-hop overhead);
//!   - `cuda`: the cudarc executor on the device named by `CUDA_VISIBLE_DEVICES` (a MIG UUID).
//! * [`worker_main`]: the `jigsaw worker` process: reads [`WorkerMessage::Job`] frames on
//!   stdin, writes [`WorkerMessage::Done`] frames on stdout (see `jigsaw_protocol::worker`).
//! * [`WorkerConn`]: how the agent talks to one worker. [`ProcessWorker`] supervises a
//!   `jigsaw worker` child: a crash fails every batch in flight with
//!   [`WorkerError::Crashed`] (never silently) and the child is restarted with backoff.
//!   [`InProcessWorker`] is its in-memory twin (same executors, no process), used by the
//!   in-process cluster simulation and unit tests.
//! * [`HangPolicy`] and [`HangWatch`]: a worker that holds a batch far longer than its
//!   profile says (or never reports ready) without exiting counts as hung; its supervisor
//!   kills it, which fails the batch like a crash, and restarts it. The watch is a pure
//!   state machine with time passed in; the supervisor only executes it.

use crate::transport::net::BoxFuture;
use jigsaw_kernels::{CpuExecutor, Executor, KernelError, Model};
use jigsaw_protocol::app::ModelDesc;
use jigsaw_protocol::rng::SplitMix64;
use jigsaw_protocol::route::batch_latency;
use jigsaw_protocol::worker::{self, WorkerMessage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Which executor a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Sleep the profiled p95 of the batch size (simulated GPU time).
    Timed,
    /// The CPU reference executor on the scaled-down layer graph.
    Cpu,
    /// Return at once.
    Noop,
    /// The cudarc executor (real GPUs).
    Cuda,
}

/// An executor name that is not one of [`ExecutorKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an executor (one of timed, cpu, noop, cuda)")]
pub struct UnknownExecutor(pub String);

impl std::str::FromStr for ExecutorKind {
    type Err = UnknownExecutor;

    /// Parse a name as written in configs and on the command line (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExecutorKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownExecutor(s.into()))
    }
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ExecutorKind {
    /// Every executor.
    pub const ALL: [ExecutorKind; 4] = [ExecutorKind::Timed, ExecutorKind::Cpu, ExecutorKind::Noop, ExecutorKind::Cuda];

    /// Name as shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Timed => "timed",
            ExecutorKind::Cpu => "cpu",
            ExecutorKind::Noop => "noop",
            ExecutorKind::Cuda => "cuda",
        }
    }
}

/// Everything one worker needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Application.
    pub app: String,
    /// Task.
    pub task: String,
    /// Variant.
    pub variant: String,
    /// The variant's model description.
    pub model: ModelDesc,
    /// Executor.
    pub executor: ExecutorKind,
    /// Profiled `(batch, p95 ms, mean ms)` points of this configuration (timed executor;
    /// the mean is `mps × batch / throughput`).
    pub curve: Vec<(u32, f64, f64)>,
    /// Compute scale of the CPU executor's layer graph relative to the real model.
    pub scale: f64,
    /// Weight seed.
    pub seed: u64,
    /// Device (a MIG UUID) for `CUDA_VISIBLE_DEVICES`; `None` on the simulator.
    pub device: Option<String>,
    /// MPS active-thread percentage for `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` (real GPUs).
    pub mps_percent: Option<u8>,
}

/// Runs batches inside a worker.
pub trait BatchExec: Send {
    /// Run one batch; one output per input.
    fn run(&mut self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, KernelError>;
    /// What it is, for reports.
    fn describe(&self) -> String;
}

/// A synthetic digest of an input (label: synthetic): 4 values derived from the input, so
/// outputs depend on inputs without pretending to be model outputs.
fn digest(x: &[f32]) -> Vec<f32> {
    let n = x.len().max(1) as f32;
    let sum: f32 = x.iter().sum();
    let abs: f32 = x.iter().map(|v| v.abs()).sum();
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    vec![sum / n, abs / n, if max.is_finite() { max } else { 0.0 }, n]
}

/// Simulated execution time of a batch of `n`, ms: drawn uniformly between
/// `max(2·mean − p95, mean / 2)` and the p95 of the batch size, so its mean is the profiled
/// mean (and the throughput the planner assumed) and it never exceeds the p95.
pub fn timed_ms(curve: &[(u32, f64, f64)], n: u32, rng: &mut SplitMix64) -> f64 {
    let p95: Vec<(u32, f64)> = curve.iter().map(|c| (c.0, c.1)).collect();
    let mean: Vec<(u32, f64)> = curve.iter().map(|c| (c.0, c.2)).collect();
    let (Some(hi), Some(m)) = (batch_latency(&p95, n), batch_latency(&mean, n)) else { return 1.0 };
    let m = m.min(hi);
    let lo = (2.0 * m - hi).max(m / 2.0);
    let ms = lo + rng.unit() * (hi - lo);
    // An absurd profile (1e300, NaN) must not panic the sleep: at most the hang cap.
    if ms.is_finite() {
        ms.clamp(0.0, HANG_CAP.as_secs_f64() * 1e3)
    } else {
        0.0
    }
}

struct Timed {
    curve: Vec<(u32, f64, f64)>,
    rng: SplitMix64,
}

impl BatchExec for Timed {
    fn run(&mut self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, KernelError> {
        let ms = timed_ms(&self.curve, inputs.len() as u32, &mut self.rng);
        std::thread::sleep(Duration::from_secs_f64(ms / 1e3));
        Ok(inputs.iter().map(|x| digest(x)).collect())
    }
    fn describe(&self) -> String {
        "timed (sleeps a profiled batch latency, mean to p95; outputs are synthetic digests)".into()
    }
}

struct Noop;

impl BatchExec for Noop {
    fn run(&mut self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, KernelError> {
        Ok(inputs.iter().map(|x| x.iter().take(4).copied().collect()).collect())
    }
    fn describe(&self) -> String {
        "noop (returns the first 4 input values)".into()
    }
}

/// A model executor (CPU reference or cudarc) on the variant's family-shaped layer graph.
struct Kernel {
    model: Model,
    input: (usize, usize, usize),
    exec: Box<dyn Executor + Send>,
    what: String,
}

impl Kernel {
    fn new(spec: &WorkerSpec, exec: Box<dyn Executor + Send>, what: &str) -> Result<Kernel, KernelError> {
        let input = jigsaw_kernels::arch::input_shape(&spec.model.family)?;
        let model = Model::for_variant(&spec.variant, &spec.model, input, spec.scale, spec.seed)?;
        let what = format!("{what} executor, `{}` layer graph at scale {}", spec.model.family, spec.scale);
        Ok(Kernel { model, input, exec, what })
    }
}

/// Fit `x` to exactly `n` values (tiling or truncating): a synthetic crop/resize so any
/// stage's output can feed any next stage.
pub fn fit(x: &[f32], n: usize) -> Vec<f32> {
    if x.is_empty() {
        return vec![0.0; n];
    }
    (0..n).map(|i| x[i % x.len()]).collect()
}

impl BatchExec for Kernel {
    fn run(&mut self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, KernelError> {
        let (c, h, w) = self.input;
        let per = c * h * w;
        let mut flat = Vec::with_capacity(per * inputs.len());
        for x in inputs {
            flat.extend(fit(x, per));
        }
        let (y, s) = self.exec.run(&self.model, &flat, (inputs.len(), c, h, w))?;
        let per_out = s.1 * s.2 * s.3;
        Ok(y.chunks(per_out.max(1)).map(<[f32]>::to_vec).collect())
    }
    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// Build the executor of `spec`.
pub fn executor(spec: &WorkerSpec) -> Result<Box<dyn BatchExec>, KernelError> {
    match spec.executor {
        ExecutorKind::Timed => Ok(Box::new(Timed { curve: spec.curve.clone(), rng: SplitMix64::new(spec.seed) })),
        ExecutorKind::Noop => Ok(Box::new(Noop)),
        ExecutorKind::Cpu => Ok(Box::new(Kernel::new(spec, Box::new(CpuExecutor), "cpu (reference)")?)),
        ExecutorKind::Cuda => {
            // CUDA_VISIBLE_DEVICES (set by the supervisor) makes the instance device 0.
            let cuda = jigsaw_kernels::cuda::CudaExecutor::new(0)?;
            let what = format!("cuda ({})", cuda.device());
            Ok(Box::new(Kernel::new(spec, Box::new(cuda), &what)?))
        }
    }
}

/// Why a `jigsaw worker` process stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum WorkerMainError {
    /// The executor could not be built (unknown family, no CUDA, ...).
    #[error("executor: {0}")]
    Executor(#[from] KernelError),
    /// A frame from the agent was malformed.
    #[error("stdin: {0}")]
    Frame(#[from] jigsaw_protocol::wire::FrameError),
    /// The pipe to the agent failed.
    #[error("{pipe}: {source}")]
    Pipe {
        /// `stdin` or `stdout`.
        pipe: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The `jigsaw worker` process: serve batches on stdin/stdout until stdin closes.
pub fn worker_main(spec: &WorkerSpec) -> Result<(), WorkerMainError> {
    let mut exec = executor(spec)?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = stdin.lock();
    let mut output = std::io::BufWriter::new(stdout.lock());
    let write = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>, m: &WorkerMessage| {
        let f = worker::encode(m)?;
        out.write_all(&f).and_then(|()| out.flush()).map_err(|source| WorkerMainError::Pipe { pipe: "stdout", source })
    };
    write(&mut output, &WorkerMessage::Ready { executor: exec.describe() })?;
    loop {
        let mut header = [0u8; jigsaw_protocol::wire::HEADER_LEN];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(source) => return Err(WorkerMainError::Pipe { pipe: "stdin", source }),
        }
        let len = worker::decode_header(&header)?;
        let mut frame = header.to_vec();
        frame.resize(header.len() + len, 0);
        input
            .read_exact(&mut frame[header.len()..])
            .map_err(|source| WorkerMainError::Pipe { pipe: "stdin", source })?;
        let (msg, _) = worker::decode(&frame)?;
        if let WorkerMessage::Job { batch, inputs } = msg {
            let t = Instant::now();
            let result = exec.run(&inputs).map_err(|e| e.to_string());
            let exec_us = t.elapsed().as_micros() as u64;
            write(&mut output, &WorkerMessage::Done { batch, result, exec_us })?;
        }
    }
}

/// Why a batch did not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// The worker process died with the batch in flight (it is being restarted): the
    /// batch's requests get an error; another instance may succeed.
    #[error("worker crashed: {0}")]
    Crashed(String),
    /// The worker is restarting and takes no batches now: retry elsewhere.
    #[error("worker unavailable: {0}")]
    Unavailable(String),
    /// The executor rejected the batch (bad input or model): do not retry.
    #[error("executor: {0}")]
    Exec(String),
}

/// When a worker that holds a batch and answers nothing counts as hung.
///
/// A batch of `n` items may run `factor ×` the profiled p95 latency of batch size `n`
/// (interpolated over the worker's curve), and never less than `min`; a worker that has
/// not reported ready `start` after it was spawned is hung too. The clock of a batch
/// starts when the worker could begin it: once it is ready and the batches before it are
/// done (batches queue in the worker's pipe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HangPolicy {
    /// Multiple of the profiled p95 a batch may take.
    pub factor: f64,
    /// Floor of a batch's limit (covers a noisy host and first-batch warm-up).
    pub min: Duration,
    /// Longest a worker may take from spawn to ready.
    pub start: Duration,
}

impl Default for HangPolicy {
    fn default() -> Self {
        HangPolicy { factor: 10.0, min: Duration::from_secs(5), start: Duration::from_secs(120) }
    }
}

/// Longest any limit gets, whatever a profile says (a hostile or broken curve must not
/// turn the guard off).
const HANG_CAP: Duration = Duration::from_secs(3600);

impl HangPolicy {
    /// How long a batch of `n` items may run on a worker with profile `curve`.
    pub fn batch_limit(&self, curve: &[(u32, f64, f64)], n: u32) -> Duration {
        let pts: Vec<(u32, f64)> = curve.iter().map(|&(b, p95, _)| (b, p95)).collect();
        let p95_ms = batch_latency(&pts, n.max(1)).filter(|v| v.is_finite() && *v > 0.0).unwrap_or(0.0);
        let ms = (p95_ms * self.factor).clamp(0.0, HANG_CAP.as_secs_f64() * 1e3);
        Duration::from_secs_f64(ms / 1e3).max(self.min).min(HANG_CAP)
    }
}

/// What one worker child holds and since when, deciding when it counts as hung. Pure:
/// every call takes the time.
#[derive(Debug, Clone)]
pub struct HangWatch {
    policy: HangPolicy,
    curve: Vec<(u32, f64, f64)>,
    spawned: Instant,
    ready: bool,
    /// In-flight batches (id → items), oldest first.
    batches: std::collections::BTreeMap<u64, u32>,
    /// When the oldest in-flight batch could start running.
    since: Option<Instant>,
}

/// Why a watch says its worker is hung.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hung {
    /// Not ready this long after spawn.
    NotReady(Duration),
    /// A batch of `items` ran longer than `limit`.
    Batch {
        /// Items in the batch.
        items: u32,
        /// Its limit.
        limit: Duration,
    },
}

impl std::fmt::Display for Hung {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hung::NotReady(d) => write!(f, "worker hung: not ready {} ms after it started", d.as_millis()),
            Hung::Batch { items, limit } => write!(
                f,
                "worker hung: a batch of {items} ran longer than its limit of {} ms (the profile's p95 × factor, at least the floor)",
                limit.as_millis()
            ),
        }
    }
}

impl HangWatch {
    /// A watch for a child spawned at `now`.
    pub fn new(policy: HangPolicy, curve: Vec<(u32, f64, f64)>, now: Instant) -> HangWatch {
        HangWatch { policy, curve, spawned: now, ready: false, batches: Default::default(), since: None }
    }

    /// The worker reported ready.
    pub fn ready(&mut self, now: Instant) {
        if !self.ready {
            self.ready = true;
            if !self.batches.is_empty() {
                self.since = Some(now);
            }
        }
    }

    /// Batch `id` of `items` was written to the worker.
    pub fn sent(&mut self, id: u64, items: u32, now: Instant) {
        if self.batches.is_empty() && self.ready {
            self.since = Some(now);
        }
        self.batches.insert(id, items);
    }

    /// Batch `id` was answered.
    pub fn done(&mut self, id: u64, now: Instant) {
        let oldest = self.batches.keys().next().copied();
        self.batches.remove(&id);
        if oldest == Some(id) {
            self.since = (!self.batches.is_empty() && self.ready).then_some(now);
        }
    }

    /// When the worker counts as hung if nothing changes, and why; `None` while it owes
    /// nothing.
    pub fn deadline(&self) -> Option<(Instant, Hung)> {
        if !self.ready {
            return Some((self.spawned + self.policy.start, Hung::NotReady(self.policy.start)));
        }
        let (&_, &items) = self.batches.iter().next()?;
        let limit = self.policy.batch_limit(&self.curve, items);
        Some((self.since? + limit, Hung::Batch { items, limit }))
    }

    /// Whether the worker is hung at `now`, and why.
    pub fn check(&self, now: Instant) -> Option<Hung> {
        self.deadline().filter(|(at, _)| now >= *at).map(|(_, why)| why)
    }
}

/// How the agent talks to one worker.
pub trait WorkerConn: Send + Sync + 'static {
    /// Run a batch.
    fn run(&self, inputs: Vec<Vec<f32>>) -> BoxFuture<Result<Vec<Vec<f32>>, WorkerError>>;
    /// Restarts so far (process workers).
    fn restarts(&self) -> u32 {
        0
    }
    /// The current OS process id, if a process runs now.
    fn pid(&self) -> Option<u32> {
        None
    }
}

/// Starts workers for segment replicas.
pub trait Launcher: Send + Sync + 'static {
    /// Start one worker for `spec` (its supervision starts with it; dropping the returned
    /// connection stops the worker).
    fn launch(&self, spec: &WorkerSpec) -> Arc<dyn WorkerConn>;
    /// The executor used by default on this node.
    fn executor(&self) -> ExecutorKind;
}

/// The in-memory twin: runs the executor on a blocking thread of this process.
pub struct InProcessWorker {
    exec: Arc<Mutex<Result<Box<dyn BatchExec>, KernelError>>>,
    timed: Option<(Curve, Mutex<SplitMix64>)>,
    noop: bool,
}

impl InProcessWorker {
    /// A worker for `spec`. The timed executor sleeps on the tokio clock, so a paused-clock
    /// simulation advances through it.
    pub fn new(spec: &WorkerSpec) -> InProcessWorker {
        let timed = (spec.executor == ExecutorKind::Timed)
            .then(|| (spec.curve.clone(), Mutex::new(SplitMix64::new(spec.seed))));
        let noop = spec.executor == ExecutorKind::Noop;
        InProcessWorker { exec: Arc::new(Mutex::new(executor(spec))), timed, noop }
    }
}

impl WorkerConn for InProcessWorker {
    fn run(&self, inputs: Vec<Vec<f32>>) -> BoxFuture<Result<Vec<Vec<f32>>, WorkerError>> {
        if self.noop {
            let out = Noop.run(&inputs).map_err(|e| WorkerError::Exec(e.to_string()));
            return Box::pin(std::future::ready(out));
        }
        if let Some((curve, rng)) = &self.timed {
            let ms = timed_ms(curve, inputs.len() as u32, &mut rng.lock().unwrap_or_else(|p| p.into_inner()));
            return Box::pin(async move {
                tokio::time::sleep(Duration::from_secs_f64(ms.max(0.0) / 1e3)).await;
                Ok(inputs.iter().map(|x| digest(x)).collect())
            });
        }
        let exec = self.exec.clone();
        Box::pin(async move {
            let run = move || match exec.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                Ok(e) => e.run(&inputs).map_err(|e| WorkerError::Exec(e.to_string())),
                Err(e) => Err(WorkerError::Exec(e.to_string())),
            };
            tokio::task::spawn_blocking(run).await.map_err(|e| WorkerError::Crashed(e.to_string()))?
        })
    }
}

/// Launches [`InProcessWorker`]s.
#[derive(Debug, Clone, Copy)]
pub struct InProcessLauncher(pub ExecutorKind);

impl Launcher for InProcessLauncher {
    fn launch(&self, spec: &WorkerSpec) -> Arc<dyn WorkerConn> {
        Arc::new(InProcessWorker::new(spec))
    }
    fn executor(&self) -> ExecutorKind {
        self.0
    }
}

/// `(batch, p95 ms, mean ms)` points.
type Curve = Vec<(u32, f64, f64)>;

/// A batch for a worker and where its result goes.
type Job = (Vec<Vec<f32>>, oneshot::Sender<BatchResult>);
/// A batch's outputs, or why it did not run.
type BatchResult = Result<Vec<Vec<f32>>, WorkerError>;

/// A child's batches in flight (their replies) and its hang watch, shared by the reader of
/// its stdout and the writer of its stdin (one task; the lock is never held across an await).
struct InFlight {
    replies: HashMap<u64, oneshot::Sender<BatchResult>>,
    watch: HangWatch,
}

type Pending = Arc<Mutex<InFlight>>;

/// A supervised `jigsaw worker` child process.
pub struct ProcessWorker {
    jobs: mpsc::UnboundedSender<Job>,
    restarts: Arc<AtomicU32>,
    pid: Arc<AtomicU32>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        // Aborting the supervisor drops the child handle, which kills it (`kill_on_drop`).
        self.supervisor.abort();
    }
}

impl ProcessWorker {
    /// Start `exe worker --spec-json …` for `spec` and supervise it.
    pub fn start(exe: PathBuf, spec: &WorkerSpec) -> ProcessWorker {
        Self::start_after(exe, spec, None)
    }

    /// Start a worker whose supervisor first runs `prepare` on a blocking thread (the MPS
    /// daemon start), so the caller (an actor, under no lock) never waits on it.
    pub fn start_after(exe: PathBuf, spec: &WorkerSpec, prepare: Option<Box<dyn FnOnce() + Send>>) -> ProcessWorker {
        Self::start_with(exe, spec, prepare, HangPolicy::default())
    }

    /// [`ProcessWorker::start_after`] with the hang policy `hang`.
    pub fn start_with(
        exe: PathBuf,
        spec: &WorkerSpec,
        prepare: Option<Box<dyn FnOnce() + Send>>,
        hang: HangPolicy,
    ) -> ProcessWorker {
        let (tx, rx) = mpsc::unbounded_channel();
        let restarts = Arc::new(AtomicU32::new(0));
        let pid = Arc::new(AtomicU32::new(0));
        let (spec, r, p) = (spec.clone(), restarts.clone(), pid.clone());
        let supervisor = tokio::spawn(async move {
            if let Some(f) = prepare {
                let _ = tokio::task::spawn_blocking(f).await;
            }
            supervise(exe, spec, hang, rx, r, p).await
        });
        ProcessWorker { jobs: tx, restarts, pid, supervisor }
    }
}

impl WorkerConn for ProcessWorker {
    fn run(&self, inputs: Vec<Vec<f32>>) -> BoxFuture<Result<Vec<Vec<f32>>, WorkerError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.jobs.send((inputs, tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err(WorkerError::Unavailable("worker supervisor stopped".into()));
            }
            rx.await.unwrap_or_else(|_| Err(WorkerError::Crashed("worker supervisor stopped".into())))
        })
    }
    fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }
    fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|p| *p != 0)
    }
}

async fn supervise(
    exe: PathBuf,
    spec: WorkerSpec,
    hang: HangPolicy,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    restarts: Arc<AtomicU32>,
    pid: Arc<AtomicU32>,
) {
    let spec_json = serde_json::to_string(&spec).unwrap_or_default();
    let mut backoff = Duration::from_millis(50);
    let next_batch = AtomicU64::new(1);
    loop {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("worker").arg("--spec-json").arg(&spec_json);
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).kill_on_drop(true);
        if let Some(d) = &spec.device {
            cmd.envs(mps_env(d, &mps_root()));
            if let Some(p) = spec.mps_percent {
                cmd.env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", p.to_string());
            }
        }
        let started = Instant::now();
        let why = match cmd.spawn() {
            Err(e) => format!("spawn {}: {e}", exe.display()),
            Ok(mut child) => {
                pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
                let watch = HangWatch::new(hang, spec.curve.clone(), started);
                let why = run_child(&mut child, &mut jobs, &next_batch, watch).await;
                pid.store(0, Ordering::Relaxed);
                let _ = child.start_kill();
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                format!("{why} ({status})")
            }
        };
        if jobs.is_closed() {
            return; // the worker's owner stopped it
        }
        tracing::warn!(app = %spec.app, task = %spec.task, %why, "worker exited; restarting");
        restarts.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(50);
        }
        // While down, batches fail fast instead of queueing behind a dead process.
        let wake = tokio::time::sleep(backoff);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                job = jobs.recv() => match job {
                    Some((_, reply)) => { let _ = reply.send(Err(WorkerError::Unavailable(why.clone()))); }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Serve jobs to one child until it dies or hangs; every batch in flight then fails with
/// `Crashed` (the caller kills the child and restarts it).
async fn run_child(
    child: &mut tokio::process::Child,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    next_batch: &AtomicU64,
    watch: HangWatch,
) -> String {
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return "no pipes to the worker".into();
    };
    let pending: Pending = Arc::new(Mutex::new(InFlight { replies: HashMap::new(), watch }));
    // The reader pokes this when the watch's deadline may have moved.
    let moved = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (pending, moved) = (pending.clone(), moved.clone());
        async move {
            loop {
                let mut header = [0u8; jigsaw_protocol::wire::HEADER_LEN];
                if let Err(e) = stdout.read_exact(&mut header).await {
                    return format!("worker output closed: {e}");
                }
                let len = match worker::decode_header(&header) {
                    Ok(l) => l,
                    Err(e) => return format!("bad frame from worker: {e}"),
                };
                let mut frame = header.to_vec();
                frame.resize(header.len() + len, 0);
                if let Err(e) = stdout.read_exact(&mut frame[header.len()..]).await {
                    return format!("worker output closed: {e}");
                }
                match worker::decode(&frame) {
                    Ok((WorkerMessage::Done { batch, result, .. }, _)) => {
                        let tx = {
                            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                            p.watch.done(batch, Instant::now());
                            p.replies.remove(&batch)
                        };
                        moved.notify_one();
                        if let Some(tx) = tx {
                            let _ = tx.send(result.map_err(WorkerError::Exec));
                        }
                    }
                    Ok((WorkerMessage::Ready { executor }, _)) => {
                        tracing::debug!(%executor, "worker ready");
                        pending.lock().unwrap_or_else(|e| e.into_inner()).watch.ready(Instant::now());
                        moved.notify_one();
                    }
                    Ok((other, _)) => return format!("unexpected frame from worker: {other:?}"),
                    Err(e) => return format!("bad frame from worker: {e}"),
                }
            }
        }
    };
    tokio::pin!(reader);
    let why = loop {
        let deadline = pending.lock().unwrap_or_else(|e| e.into_inner()).watch.deadline();
        let hang_timer = async {
            match &deadline {
                Some((at, _)) => tokio::time::sleep_until((*at).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = &mut reader => break why,
            () = moved.notified() => {}
            () = hang_timer => {
                let hung = pending.lock().unwrap_or_else(|e| e.into_inner()).watch.check(Instant::now());
                if let Some(hung) = hung {
                    break hung.to_string();
                }
            }
            job = jobs.recv() => {
                let Some((inputs, reply)) = job else { break "stopped".to_string() };
                let batch = next_batch.fetch_add(1, Ordering::Relaxed);
                let items = u32::try_from(inputs.len()).unwrap_or(u32::MAX);
                let frame = match worker::encode(&WorkerMessage::Job { batch, inputs }) {
                    Ok(f) => f,
                    Err(e) => { let _ = reply.send(Err(WorkerError::Exec(e.to_string()))); continue; }
                };
                {
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    p.replies.insert(batch, reply);
                    p.watch.sent(batch, items, Instant::now());
                }
                if let Err(e) = stdin.write_all(&frame).await {
                    break format!("worker input closed: {e}");
                }
            }
        }
    };
    let owed: Vec<_> = pending.lock().unwrap_or_else(|e| e.into_inner()).replies.drain().collect();
    for (_, tx) in owed {
        let _ = tx.send(Err(WorkerError::Crashed(why.clone())));
    }
    why
}

/// Where the per-device MPS pipe and log directories live: `JIGSAW_MPS_DIR`, else
/// `$RUNTIME_DIRECTORY/mps` (systemd's `RuntimeDirectory=`, private to the service), else
/// `jigsaw-mps-<uid>` under the temp dir (created 0700; `ensure_mps_daemon` refuses one it
/// does not own, so another local user cannot pre-create it).
pub fn mps_root() -> PathBuf {
    if let Some(d) = std::env::var_os("JIGSAW_MPS_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, separated by ':'; the first is this service's.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first).join("mps");
    }
    std::env::temp_dir().join(format!("jigsaw-mps-{}", current_uid()))
}

/// The real user id of this process (from `/proc/self/status`; 0 if unreadable).
fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:").and_then(|r| r.split_whitespace().next()?.parse().ok()))
        })
        .unwrap_or(0)
}

/// Create `dir` private to this user, or check that an existing one is ours and private.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != current_uid() || m.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a private directory of uid {}", dir.display(), current_uid()),
        ));
    }
    Ok(())
}

/// The environment that binds a process to MIG device `device` and to that device's own MPS
/// control daemon (one daemon per MIG instance: MPS clients of one daemon share one device).
pub fn mps_env(device: &str, root: &std::path::Path) -> Vec<(String, String)> {
    let dir = root.join(device.replace(['/', ':'], "_"));
    vec![
        ("CUDA_VISIBLE_DEVICES".into(), device.into()),
        ("CUDA_MPS_PIPE_DIRECTORY".into(), dir.join("pipe").display().to_string()),
        ("CUDA_MPS_LOG_DIRECTORY".into(), dir.join("log").display().to_string()),
    ]
}

/// Launches [`ProcessWorker`]s running `exe worker`. For the `cuda` executor each worker's
/// supervisor first starts the MPS control daemon of the worker's MIG device
/// (`nvidia-cuda-mps-control -d`, once per device, on a blocking thread) when that binary
/// is installed; without it, replicas time-share the instance.
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    /// The `jigsaw` executable.
    pub exe: PathBuf,
    /// Executor the workers run.
    pub kind: ExecutorKind,
    /// Devices whose MPS daemon this launcher started.
    pub mps_started: Arc<Mutex<Vec<String>>>,
    /// When a worker counts as hung (then it is killed and restarted).
    pub hang: HangPolicy,
}

impl ProcessLauncher {
    /// A launcher of `exe worker` processes running `kind`, with the default hang policy.
    pub fn new(exe: PathBuf, kind: ExecutorKind) -> ProcessLauncher {
        ProcessLauncher { exe, kind, mps_started: Arc::default(), hang: HangPolicy::default() }
    }

    /// The same launcher with hang policy `hang`.
    pub fn with_hang(self, hang: HangPolicy) -> ProcessLauncher {
        ProcessLauncher { hang, ..self }
    }
}

fn ensure_mps_daemon(started: &Mutex<Vec<String>>, device: &str) {
    let mut started = started.lock().unwrap_or_else(|p| p.into_inner());
    if started.iter().any(|d| d == device) {
        return;
    }
    let root = mps_root();
    if let Err(e) = private_dir(&root) {
        tracing::warn!(%device, %e, "not starting an MPS daemon; replicas will time-share the instance");
        started.push(device.to_string());
        return;
    }
    let env = mps_env(device, &root);
    for (_, dir) in env.iter().skip(1) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::process::Command::new("nvidia-cuda-mps-control").arg("-d").envs(env).status() {
        Ok(s) if s.success() => tracing::info!(%device, "MPS control daemon started"),
        Ok(s) => tracing::warn!(%device, %s, "MPS control daemon did not start; replicas will time-share"),
        Err(e) => tracing::warn!(%device, %e, "no nvidia-cuda-mps-control; replicas will time-share the instance"),
    }
    started.push(device.to_string());
}

impl Launcher for ProcessLauncher {
    fn launch(&self, spec: &WorkerSpec) -> Arc<dyn WorkerConn> {
        let prepare: Option<Box<dyn FnOnce() + Send>> = match (spec.executor, &spec.device) {
            (ExecutorKind::Cuda, Some(d)) => {
                let (started, device) = (self.mps_started.clone(), d.clone());
                Some(Box::new(move || ensure_mps_daemon(&started, &device)))
            }
            _ => None,
        };
        Arc::new(ProcessWorker::start_with(self.exe.clone(), spec, prepare, self.hang))
    }
    fn executor(&self) -> ExecutorKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timed_latency_of_an_absurd_profile_is_bounded() {
        let mut rng = SplitMix64::new(3);
        for curve in [vec![(1, 1e300, 1e300)], vec![(1, f64::INFINITY, 1.0)], vec![(1, f64::NAN, f64::NAN)]] {
            let ms = timed_ms(&curve, 1, &mut rng);
            assert!(ms.is_finite() && (0.0..=HANG_CAP.as_secs_f64() * 1e3).contains(&ms), "{curve:?}: {ms}");
            let _ = Duration::from_secs_f64(ms / 1e3); // what the executors sleep: no panic
        }
    }

    #[test]
    fn batch_limit_scales_the_profile_with_a_floor_and_a_cap() {
        let p = HangPolicy { factor: 10.0, min: ms(100), start: ms(1000) };
        let curve = vec![(1, 5.0, 4.0), (8, 20.0, 15.0)];
        assert_eq!(p.batch_limit(&curve, 1), ms(100), "10 × 5 ms is under the floor");
        assert_eq!(p.batch_limit(&curve, 8), ms(200));
        assert_eq!(p.batch_limit(&[], 4), ms(100), "no profile: the floor");
        assert_eq!(p.batch_limit(&[(1, f64::NAN, 1.0)], 1), ms(100), "a broken profile: the floor");
        assert_eq!(p.batch_limit(&[(1, 1e300, 1.0)], 1), HANG_CAP, "an absurd profile: the cap");
    }

    #[test]
    fn hang_watch_counts_from_when_a_batch_could_run() {
        let p = HangPolicy { factor: 10.0, min: ms(100), start: ms(1000) };
        let t0 = Instant::now();
        let mut w = HangWatch::new(p, vec![(1, 1.0, 1.0)], t0);
        // Not ready yet: only the start limit applies, even with a batch queued in the pipe.
        w.sent(1, 1, t0 + ms(10));
        assert_eq!(w.check(t0 + ms(999)), None);
        assert_eq!(w.check(t0 + ms(1000)), Some(Hung::NotReady(ms(1000))));
        // Ready at 500 ms: the queued batch's clock starts then.
        let mut w = HangWatch::new(p, vec![(1, 1.0, 1.0)], t0);
        w.sent(1, 1, t0 + ms(10));
        w.ready(t0 + ms(500));
        assert_eq!(w.check(t0 + ms(599)), None);
        assert_eq!(w.check(t0 + ms(600)), Some(Hung::Batch { items: 1, limit: ms(100) }));
        // A second batch waits behind the first: its clock starts when the first is done.
        w.sent(2, 1, t0 + ms(550));
        w.done(1, t0 + ms(590));
        assert_eq!(w.check(t0 + ms(689)), None);
        assert!(w.check(t0 + ms(690)).is_some());
        // Nothing owed: never hung.
        w.done(2, t0 + ms(600));
        assert_eq!(w.deadline(), None);
        assert_eq!(w.check(t0 + ms(1_000_000)), None);
        // An answer for an unknown batch changes nothing.
        w.done(7, t0 + ms(700));
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn mps_environment_is_per_device() {
        let root = std::path::Path::new("/run/j");
        let a = mps_env("MIG-1111-aaaa", root);
        assert_eq!(a[0], ("CUDA_VISIBLE_DEVICES".to_string(), "MIG-1111-aaaa".to_string()));
        assert_eq!(a[1].1, "/run/j/MIG-1111-aaaa/pipe");
        assert_ne!(a[1].1, mps_env("MIG-2222-bbbb", root)[1].1, "each MIG instance has its own daemon");
        assert_eq!(mps_env("MIG-GPU-x/1/0", root)[2].1, "/run/j/MIG-GPU-x_1_0/log", "legacy MIG names are safe");
    }

    #[test]
    fn timed_latency_stays_between_its_bounds_and_keeps_the_mean() {
        let curve = vec![(1, 2.0, 1.8), (8, 10.0, 8.0)];
        let mut rng = SplitMix64::new(3);
        let draws: Vec<f64> = (0..20_000).map(|_| timed_ms(&curve, 8, &mut rng)).collect();
        assert!(draws.iter().all(|d| (6.0..=10.0).contains(d)), "between 2·mean − p95 and p95");
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 8.0).abs() < 0.05, "{mean}");
    }
}
