//! A node's data plane: its local instances (backend) and request routing (frontend).
//!
//! * [`LocalPlane`] (transport-free): the routing table this node has, the segment
//!   instances the actor tree attached ([`Segments::attach`], called by each segment actor),
//!   and one [`Pool`] of workers per instance; [`LocalPlane::serve_stage`] runs one item on a
//!   local instance.
//! * [`DataPlane`]: the frontend. Every node is one: it implements [`Inference`] for the
//!   HTTP API, gives each request an id and a deadline, sends each item to an instance
//!   chosen by the plan's weights (in-process when the instance is local, a QUIC
//!   [`WireMessage::Stage`] otherwise), fans out per the graph, joins, and answers — or says
//!   why not ([`ServeError`]). It routes with the last table it received and never waits on
//!   the coordinator.
//!
//! Synthetic parts, labelled: a child task's input is the request's own input (a stand-in
//! for a crop of each detected object), and the number of objects a stage emits toward a
//! child is `floor(F) + Bernoulli(frac(F))` for the variant's registered fan-out `F`, drawn
//! from the request id (so the planner's fan-out model holds on average).

use super::pool::{Item, Pool};
use super::worker::{Launcher, WorkerSpec};
use super::{AppMeta, Inference, ServeError, TensorMeta};
use crate::core::batch::{DropReason, QueueConfig};
use crate::core::peers::{PeerHealth, SILENT_LIMIT};
use crate::metrics::{labels, Metrics};
use crate::transport::net::{BoxFuture, Handler, Peer, Transport};
use jigsaw_protocol::app::{MAX_LATENCY_SLO_MS, MAX_REQUEST_ITEMS};
use jigsaw_protocol::infer::{InferError, InferRequest, InferResponse, Tensor, TensorData};
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::profile::{latency_curve, mean_ms, p95_mean};
use jigsaw_protocol::rng::SplitMix64;
use jigsaw_protocol::route::{
    AppRoute, RoutingTable, StageOutcome, StageReply, StageRequest, Target, MAX_STAGE_BUDGET_US,
};
use jigsaw_protocol::wire::WireMessage;
use jigsaw_protocol::{GpuModel, ProfileRow};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Per-item input every application takes: one FP32 image, 3 x 16 x 16.
pub const INPUT_SHAPE: [u64; 4] = [1, 3, 16, 16];

/// Longest deadline a frontend gives a request: [`MAX_STAGE_BUDGET_US`] (one hour, the
/// longest latency SLO an app may have), whatever the app's SLO or the caller asked for.
pub const MAX_DEADLINE: Duration = Duration::from_micros(MAX_STAGE_BUDGET_US);

/// An app's latency SLO as a request budget, within 0 ..= [`MAX_DEADLINE`] (a routing table
/// from before the SLO was bounded may carry any number; 1.8e22 ms once panicked here).
pub fn slo_budget(latency_slo_ms: f64) -> Duration {
    let ms = if latency_slo_ms.is_nan() { MAX_LATENCY_SLO_MS } else { latency_slo_ms.clamp(0.0, MAX_LATENCY_SLO_MS) };
    Duration::from_secs_f64(ms / 1e3).min(MAX_DEADLINE)
}

/// `ms` milliseconds as microseconds, within 0 ..= [`MAX_STAGE_BUDGET_US`].
fn bounded_us(ms: f64) -> u64 {
    ((ms * 1e3) as u64).min(MAX_STAGE_BUDGET_US)
}

/// Share of the app's planned capacity ([`planned_rps`]) its root instances admit. At 100 %
/// the bottleneck task runs at utilisation 1, where its queue grows with any shortfall of
/// the instances against their profiles (worker overhead, a loaded CPU) and with the
/// fan-out's variance, until admitted requests' items miss their deadlines downstream after
/// upstream work was spent on them: measured on the local cluster, loaded at 1.5× with the
/// root admitting 100 % of an 808 req/s capacity, 16 % of the requests were early drops
/// downstream and goodput fell to 646 req/s (`docs/dataplane.md`).
pub const ADMIT_UTILISATION: f64 = 0.95;

/// The app's planned capacity, requests/s: the largest request rate at which no instance
/// gets more items than it serves when items are split by routing weight. With `R̂(t)` the
/// items per request reaching task `t` (the planner's Eq. 4–5: 1 at a root,
/// `Σ R̂(t')·F̂(t',t)` below, with `F̂` the mean fan-out of the variants `t'` runs weighted
/// by routing weight) and `w_i / W(t)` instance `i`'s share of its task's items, it is
/// `min_i C_i / (R̂(t)·w_i / W(t))`, `C_i` the instance's profiled throughput. With weights
/// proportional to throughput (plans without loads) that is `min_t C(t) / R̂(t)`. `None`
/// when a task has no weight or the graph has a cycle.
pub fn planned_rps(route: &AppRoute) -> Option<f64> {
    let spec = &route.spec;
    let n = spec.tasks.len();
    if route.tasks.len() != n {
        return None;
    }
    let weight: Vec<f64> = route.tasks.iter().map(|t| t.targets.iter().map(|x| x.weight.max(0.0)).sum()).collect();
    let mut items = vec![0.0f64; n];
    for r in spec.roots() {
        items[r] = 1.0;
    }
    for t in spec.topo_order().ok()? {
        for c in spec.children(t) {
            let fhat = if weight[t] > 0.0 {
                route.tasks[t]
                    .targets
                    .iter()
                    .map(|x| {
                        let v = spec.tasks[t].variants.iter().position(|v| v.name == x.variant);
                        x.weight.max(0.0) * spec.fanout(t, v.unwrap_or_else(|| spec.best_variant(t)), c)
                    })
                    .sum::<f64>()
                    / weight[t]
            } else {
                spec.fanout(t, spec.best_variant(t), c)
            };
            items[c] += items[t] * fhat;
        }
    }
    let mut rps = f64::INFINITY;
    for t in (0..n).filter(|&t| items[t] > 0.0) {
        if weight[t] <= 0.0 {
            return None;
        }
        for x in route.tasks[t].targets.iter().filter(|x| x.weight > 0.0) {
            // Tables written before `capacity_rps` existed weight by throughput.
            let cap = if x.capacity_rps > 0.0 { x.capacity_rps } else { x.weight };
            rps = rps.min(cap * weight[t] / (x.weight * items[t]));
        }
    }
    (rps.is_finite() && rps > 0.0).then_some(rps)
}

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a segment's workers alive; dropping it detaches the segment (its workers stop).
pub struct Attachment(Option<Box<dyn FnOnce() + Send>>);

impl Attachment {
    /// An attachment that runs `stop` when dropped (what a [`Segments`] twin hands out).
    pub fn new(stop: impl FnOnce() + Send + 'static) -> Attachment {
        Attachment(Some(Box::new(stop)))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attachment")
    }
}

/// What a segment actor attaches to: the node's data plane.
pub trait Segments: Send + Sync + 'static {
    /// Instance `plan` now lives at `start` of GPU `gpu` as device `device` (the MIG
    /// instance's UUID, which CUDA workers get as `CUDA_VISIBLE_DEVICES`); start its workers
    /// (now or once the routing table describes its app). Dropping the attachment stops them.
    fn attach(&self, gpu: &str, device: &str, plan: &InstancePlan) -> Attachment;

    /// The instance at `start` of `gpu` is about to be stopped: wait until it is quiet (no
    /// item in flight, and requests routed with an older table have had time to end), at
    /// most `max`. Returns the items still in flight when it gave up (0: drained).
    fn drain(&self, gpu: &str, start: u8, max: Duration) -> BoxFuture<u64> {
        let _ = (gpu, start, max);
        Box::pin(std::future::ready(0))
    }

    /// Whether the instance at `start` of `gpu` serves: its pool runs (or no routing table
    /// describes its app, so none can).
    fn serving(&self, gpu: &str, start: u8) -> bool {
        let _ = (gpu, start);
        true
    }
}

/// Settings of a node's data plane.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// Requests this frontend runs at once before answering 429.
    pub max_in_flight: usize,
    /// Compute scale of CPU-executor models relative to the real ones.
    pub cpu_scale: f64,
    /// Where the routing table is kept across restarts (`None`: not kept).
    pub routes_file: Option<PathBuf>,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        PlaneConfig { max_in_flight: 4096, cpu_scale: 1e-3, routes_file: None }
    }
}

struct Local {
    plan: InstancePlan,
    device: String,
    /// What the running pool was built from (to restart it only when that changes).
    built: Option<(WorkerSpec, QueueConfig)>,
    pool: Option<Arc<Pool>>,
    generation: u64,
    /// Stage items taken by this instance and not answered yet.
    in_flight: Arc<AtomicU64>,
}

struct Taken(Arc<AtomicU64>);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The transport-free half: routing table, local instances and their pools.
pub struct LocalPlane {
    cfg: PlaneConfig,
    launcher: Arc<dyn Launcher>,
    routes: RwLock<Arc<RoutingTable>>,
    /// The newest table seen, routed with or not: what pools are built from (a transition
    /// starts the new instances' workers before the routes switch to them).
    staged: RwLock<Arc<RoutingTable>>,
    local: Mutex<BTreeMap<(String, u8), Local>>,
    generation: AtomicU64,
    me: Weak<LocalPlane>,
    metrics: Arc<Metrics>,
    /// Stage requests taken so far (a draining node waits until they stop arriving).
    stages: AtomicU64,
    /// What this node's frontend counted (requests per app, items per task), for heartbeats.
    demand: Mutex<crate::core::demand::DemandMeter>,
    /// The meter's time origin.
    started: Instant,
    /// Stages that found no serving instance here (routed to one not ready, or gone).
    misrouted: AtomicU64,
    /// Stages taken by an instance that stopped before answering (work cut).
    cut: AtomicU64,
}

impl LocalPlane {
    /// A plane with workers from `launcher`; restores the routing table from
    /// `cfg.routes_file` when present.
    pub fn new(cfg: PlaneConfig, launcher: Arc<dyn Launcher>) -> Arc<LocalPlane> {
        // A corrupt file is set aside and the plane starts without routes; the next plan
        // push brings them (see `crate::persist`).
        let routes = match cfg.routes_file.as_deref().map(crate::persist::load_or_set_aside::<RoutingTable>) {
            Some(Ok(r)) => r.unwrap_or_default(),
            Some(Err(e)) => {
                tracing::warn!(%e, "cannot read the saved routing table; starting without it");
                RoutingTable::default()
            }
            None => RoutingTable::default(),
        };
        Arc::new_cyclic(|me| LocalPlane {
            cfg,
            launcher,
            staged: RwLock::new(Arc::new(routes.clone())),
            routes: RwLock::new(Arc::new(routes)),
            local: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(1),
            me: me.clone(),
            metrics: Arc::new(Metrics::new()),
            stages: AtomicU64::new(0),
            demand: Mutex::new(crate::core::demand::DemandMeter::default()),
            started: Instant::now(),
            misrouted: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        })
    }

    /// The frontend's demand counters as heartbeat rows (see [`crate::core::demand`]).
    pub fn demand_rows(&self) -> Vec<jigsaw_protocol::wire::DemandRow> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        lock(&self.demand).rows(now_ms)
    }

    fn meter(&self) -> std::sync::MutexGuard<'_, crate::core::demand::DemandMeter> {
        lock(&self.demand)
    }

    /// Stage requests this plane has taken so far (local and from other frontends).
    pub fn stages_taken(&self) -> u64 {
        self.stages.load(Ordering::Relaxed)
    }

    /// Stages that found no serving instance here (the sender routed to an instance that
    /// was not ready or already gone), and stages cut because their instance stopped
    /// before answering: what a make-before-break transition keeps at zero.
    pub fn transition_faults(&self) -> (u64, u64) {
        (self.misrouted.load(Ordering::Relaxed), self.cut.load(Ordering::Relaxed))
    }

    /// Requests the local instances hold and have not answered yet.
    pub fn pending(&self) -> u64 {
        lock(&self.local)
            .values()
            .filter_map(|l| l.pool.as_ref())
            .map(|p| p.stats.pending.load(Ordering::Relaxed))
            .sum()
    }

    /// The node's metrics (this plane's and, through the node, every other part's).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Fill the gauges owned by the local instances (queue depth, busy ratio) from their pools.
    fn refresh_instance_gauges(&self) {
        let m = &self.metrics;
        for ((gpu, start), l) in lock(&self.local).iter() {
            let Some(pool) = &l.pool else { continue };
            let mig = format!("{gpu}/{start}");
            let st = &pool.stats;
            let q = labels(&[("app", &l.plan.app), ("task", &l.plan.task), ("mig_instance", &mig)]);
            m.queue_depth.get_or_create(&q).set(st.depth.load(Ordering::Relaxed) as i64);
            let b = labels(&[("gpu", gpu), ("mig_instance", &mig)]);
            m.busy_ratio.get_or_create(&b).set(st.busy_ppm.load(Ordering::Relaxed) as f64 / 1e6);
        }
    }

    /// The routing table in use.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Install `table` if it is not older than the one in use; (re)start local pools whose
    /// configuration it changes.
    pub fn set_routes(&self, table: RoutingTable) {
        {
            let mut r = self.routes.write().unwrap_or_else(|p| p.into_inner());
            if table.epoch < r.epoch {
                return;
            }
            if let Some(path) = &self.cfg.routes_file {
                let saved = serde_json::to_vec(&table)
                    .map_err(|e| e.to_string())
                    .and_then(|b| crate::persist::write_durably(path, &b).map_err(|e| e.to_string()));
                if let Err(e) = saved {
                    tracing::warn!(path = %path.display(), %e, "could not persist the routing table");
                }
            }
            *r = Arc::new(table);
        }
        self.prepare_routes(self.routes());
    }

    /// Build pools from `table` (if not older than the newest seen) without routing with it:
    /// phase one of a transition, so the new instances' workers run before any frontend
    /// routes to them (`docs/transitions.md`).
    pub fn prepare_routes(&self, table: Arc<RoutingTable>) {
        {
            let mut st = self.staged.write().unwrap_or_else(|p| p.into_inner());
            if table.epoch >= st.epoch {
                *st = table;
            }
        }
        let mut local = lock(&self.local);
        for ((gpu, _), l) in local.iter_mut() {
            self.reconcile(gpu, l);
        }
    }

    /// Worker spec and queue settings of `plan` on `gpu` under the current table.
    fn desired(&self, gpu: &str, plan: &InstancePlan) -> Option<(WorkerSpec, QueueConfig)> {
        // The table that describes this instance's configuration: the newest one (staged)
        // when it does, else the one routed with, so a transition that stages a new table
        // never rebuilds the pool of an instance the new plan no longer has.
        let staged = self.staged.read().unwrap_or_else(|p| p.into_inner()).clone();
        let describes = |t: &RoutingTable| {
            t.app(&plan.app).is_some_and(|a| {
                !latency_curve(&a.profiles, &plan.task, &plan.variant, &plan.mig_profile, plan.mps).is_empty()
            })
        };
        let routes = if describes(&staged) {
            staged
        } else {
            let current = self.routes();
            if describes(&current) || current.app(&plan.app).is_some() && staged.app(&plan.app).is_none() {
                current
            } else {
                staged
            }
        };
        let app = routes.app(&plan.app)?;
        let t = app.spec.task_index(&plan.task)?;
        let variant = app.spec.tasks[t].variants.iter().find(|v| v.name == plan.variant)?;
        let task = app.tasks.get(t)?;
        let target = Target::of("", "", gpu, plan);
        let mut curve = latency_curve(&app.profiles, &plan.task, &plan.variant, &plan.mig_profile, plan.mps);
        if curve.is_empty() {
            let mean = mean_ms(plan.mps, plan.batch, plan.throughput_rps, plan.p95_ms);
            curve.push((plan.batch.max(1), plan.p95_ms, mean));
        }
        let exec1_ms = app.batch_ms(&plan.task, &target, 1).unwrap_or(plan.p95_ms);
        let means: Vec<(u32, f64)> = curve.iter().map(|p| (p.0, p.2)).collect();
        let exec_batch_ms = jigsaw_protocol::route::batch_latency(&means, plan.batch.max(1)).unwrap_or(plan.p95_ms);
        let spec = WorkerSpec {
            app: plan.app.clone(),
            task: plan.task.clone(),
            variant: plan.variant.clone(),
            model: variant.model.clone(),
            executor: self.launcher.executor(),
            curve,
            scale: self.cfg.cpu_scale,
            seed: jigsaw_protocol::cluster::fnv64(&[&plan.app, &plan.task, &plan.variant]),
            device: None,
            mps_percent: Some((100 / plan.mps.max(1)).max(1)),
        };
        // Admission at the graph's entrance: a root task's instance admits its share (by
        // routing weight) of the app's planned capacity; downstream tasks admit every item
        // of an admitted request (docs/dataplane.md, "Drops only for a reason").
        // The share comes from the table the frontends route with while it has this instance
        // (between a transition's make and routes steps the staged table already splits the
        // root's load over instances that get none yet), else from the staged one.
        let root = app.spec.parents(t).is_empty();
        let routed = self.routes();
        // The route's capacity, its task's total weight and this instance's, if it has it.
        let own = |a: &AppRoute| {
            let task = a.spec.task_index(&plan.task).and_then(|i| a.tasks.get(i))?;
            let me =
                task.targets.iter().find(|x| x.gpu == gpu && x.start == plan.start && x.variant == plan.variant)?;
            Some((planned_rps(a), task.targets.iter().map(|x| x.weight).sum::<f64>(), me.weight))
        };
        let admit_rps = routed
            .app(&plan.app)
            .and_then(own)
            .or_else(|| own(app))
            .filter(|(_, root_weight, _)| root && *root_weight > 0.0)
            .and_then(|(c, root_weight, weight)| c.map(|c| ADMIT_UTILISATION * c * weight.max(0.0) / root_weight))
            .filter(|r| r.is_finite() && *r > 0.0);
        // Every figure within an hour, so queue arithmetic on them cannot overflow.
        let q = QueueConfig {
            max_batch: plan.batch.max(1),
            wait_us: bounded_us(task.budget_ms),
            exec1_us: bounded_us(exec1_ms),
            downstream_us: bounded_us(task.downstream_ms),
            // The queue-aware deadline check's batch times.
            exec_batch_us: bounded_us(exec_batch_ms),
            admit_per_window: admit_rps.map_or(0, |r| (r.ceil() as u64).clamp(1, u64::from(u32::MAX))),
            rate_window_us: 1_000_000,
        };
        Some((spec, q))
    }

    fn reconcile(&self, gpu: &str, l: &mut Local) {
        let want = self.desired(gpu, &l.plan);
        if want == l.built && (want.is_none() || l.pool.is_some()) {
            return;
        }
        // Only the queue settings changed: the running pool takes them in place.
        if let (Some((spec, q)), Some((built, _)), Some(pool)) = (&want, &l.built, &l.pool) {
            if spec == built {
                pool.reconfigure(*q);
                l.built = want;
                return;
            }
        }
        l.pool = want.as_ref().map(|(spec, q)| {
            let mut spec = spec.clone();
            if spec.executor == super::worker::ExecutorKind::Cuda {
                spec.device = Some(if l.device.is_empty() { gpu.to_string() } else { l.device.clone() });
            }
            let workers = (0..l.plan.mps.max(1)).map(|_| self.launcher.launch(&spec)).collect();
            let batches =
                self.metrics.batch_size.get_or_create(&labels(&[("app", &l.plan.app), ("task", &l.plan.task)]));
            Arc::new(Pool::start_with(*q, workers, l.plan.variant.clone(), Some(batches.clone())))
        });
        l.built = want;
    }

    fn detach(&self, gpu: &str, start: u8, generation: u64) {
        let mut local = lock(&self.local);
        if local.get(&(gpu.to_string(), start)).is_some_and(|l| l.generation == generation) {
            local.remove(&(gpu.to_string(), start));
        }
    }

    /// The pool of the instance at `start` of `gpu`, if it runs.
    pub fn pool(&self, gpu: &str, start: u8) -> Option<Arc<Pool>> {
        lock(&self.local).get(&(gpu.to_string(), start)).and_then(|l| l.pool.clone())
    }

    /// Local instances with running pools: (GPU, start, app, task, variant).
    pub fn instances(&self) -> Vec<(String, u8, String, String, String)> {
        lock(&self.local)
            .iter()
            .filter(|(_, l)| l.pool.is_some())
            .map(|((g, s), l)| (g.clone(), *s, l.plan.app.clone(), l.plan.task.clone(), l.plan.variant.clone()))
            .collect()
    }

    /// Profile points observed on the local instances (at least `min_samples` full batches
    /// at the planned batch size): p95 batch latency and segment throughput, for the
    /// coordinator's next plan. `model_of` maps a GPU UUID to its model.
    pub fn observed(&self, min_samples: usize, model_of: impl Fn(&str) -> Option<GpuModel>) -> Vec<ProfileRow> {
        let local = lock(&self.local);
        let mut out = Vec::new();
        for ((gpu, _), l) in local.iter() {
            let (Some(pool), Some(model)) = (&l.pool, model_of(gpu)) else { continue };
            let mut ms: Vec<f64> = pool
                .stats
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(n, _)| *n == l.plan.batch)
                .map(|(_, us)| *us as f64 / 1e3)
                .collect();
            if ms.len() < min_samples.max(1) {
                continue;
            }
            let (p95, mean) = p95_mean(&mut ms);
            out.push(ProfileRow {
                task: l.plan.task.clone(),
                variant: l.plan.variant.clone(),
                gpu: model,
                mig_profile: l.plan.mig_profile.clone(),
                mps: l.plan.mps,
                batch: l.plan.batch,
                p95_ms: p95,
                throughput_rps: f64::from(l.plan.mps) * f64::from(l.plan.batch) / (mean / 1e3).max(1e-9),
            });
        }
        out
    }

    /// Run one item on a local instance. A budget over [`MAX_STAGE_BUDGET_US`] (only a
    /// broken or hostile peer sends one) is refused with an error outcome.
    pub async fn serve_stage(&self, req: StageRequest) -> StageOutcome {
        self.stages.fetch_add(1, Ordering::Relaxed);
        if req.budget_us > MAX_STAGE_BUDGET_US {
            return StageOutcome::Failed {
                message: format!(
                    "stage budget of {} µs exceeds the cap of {MAX_STAGE_BUDGET_US} µs (one hour)",
                    req.budget_us
                ),
                retry: false,
            };
        }
        let pool = {
            let local = lock(&self.local);
            match local.get(&(req.gpu.clone(), req.start)) {
                Some(l) if l.plan.app == req.app && l.plan.task == req.task => l.pool.clone().map(|p| {
                    l.in_flight.fetch_add(1, Ordering::AcqRel);
                    (p, Taken(l.in_flight.clone()))
                }),
                _ => None,
            }
        };
        let Some((pool, _taken)) = pool else {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
            return StageOutcome::Failed {
                message: format!("no instance of {}/{} at {} start {} here", req.app, req.task, req.gpu, req.start),
                retry: true,
            };
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        pool.submit(Item { input: req.input, budget_us: req.budget_us, reply: tx });
        let out = rx.await.unwrap_or(StageOutcome::Failed { message: "instance stopped".into(), retry: true });
        if matches!(&out, StageOutcome::Failed { message, .. } if message == "instance stopped") {
            self.cut.fetch_add(1, Ordering::Relaxed);
        }
        out
    }
}

impl Segments for LocalPlane {
    fn attach(&self, gpu: &str, device: &str, plan: &InstancePlan) -> Attachment {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut local = lock(&self.local);
            let key = (gpu.to_string(), plan.start);
            let mut l = match local.remove(&key) {
                Some(old) if old.plan == *plan && old.device == device => Local { generation, ..old },
                _ => Local {
                    plan: plan.clone(),
                    device: device.to_string(),
                    built: None,
                    pool: None,
                    generation,
                    in_flight: Arc::default(),
                },
            };
            self.reconcile(gpu, &mut l);
            local.insert(key, l);
        }
        let me = self.me.clone();
        let gpu = gpu.to_string();
        let start = plan.start;
        Attachment(Some(Box::new(move || {
            if let Some(me) = me.upgrade() {
                me.detach(&gpu, start, generation);
            }
        })))
    }

    fn drain(&self, gpu: &str, start: u8, max: Duration) -> BoxFuture<u64> {
        let key = (gpu.to_string(), start);
        let (in_flight, app) = match lock(&self.local).get(&key) {
            Some(l) => (l.in_flight.clone(), l.plan.app.clone()),
            None => return Box::pin(std::future::ready(0)),
        };
        // A request admitted before this node's frontends switched tables may still send
        // its later stages here until its deadline: linger one SLO (within `max`).
        let slo = self.routes().app(&app).map_or(Duration::ZERO, |a| slo_budget(a.spec.latency_slo_ms));
        let linger = slo.min(max);
        Box::pin(async move {
            let t0 = Instant::now();
            loop {
                let n = in_flight.load(Ordering::Acquire);
                let waited = t0.elapsed();
                if (n == 0 && waited >= linger) || waited >= max {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }

    fn serving(&self, gpu: &str, start: u8) -> bool {
        // Serving, or it cannot have a pool (no table describes its app yet).
        lock(&self.local)
            .get(&(gpu.to_string(), start))
            .is_some_and(|l| l.pool.is_some() || self.desired(gpu, &l.plan).is_none())
    }
}

/// A transport handler that serves [`WireMessage::Stage`] requests from `local` (and
/// refuses anything else): what a data-plane-only endpoint runs (benchmarks, tests).
pub fn stage_handler(local: Arc<LocalPlane>) -> Handler {
    Arc::new(move |_peer: Peer, msg: WireMessage| -> BoxFuture<WireMessage> {
        let local = local.clone();
        Box::pin(async move {
            match msg {
                WireMessage::Stage(req) => {
                    let (id, item) = (req.id, req.item);
                    WireMessage::StageReply(StageReply { id, item, outcome: local.serve_stage(req).await })
                }
                other => WireMessage::Error { message: format!("unexpected request {other:?}"), retry: false },
            }
        })
    })
}

/// A node's frontend over its [`LocalPlane`].
pub struct DataPlane<T: Transport> {
    me: String,
    local: Arc<LocalPlane>,
    transport: Arc<T>,
    in_flight: Arc<AtomicUsize>,
    next_id: AtomicU64,
    weak: Weak<DataPlane<T>>,
    answered: Mutex<BTreeMap<&'static str, u64>>,
    /// Set when the node drains: new requests get 503 (`unavailable`).
    draining: std::sync::atomic::AtomicBool,
    /// Stages served, by (app, task index, variant index): what the served accuracy is
    /// computed from.
    served: Mutex<BTreeMap<(String, usize, usize), u64>>,
    /// Arrivals per app in the current and the previous demand window.
    arrivals: Mutex<BTreeMap<String, Demand>>,
    /// Requests answered ok per app, windowed the same way (goodput).
    goodput: Mutex<BTreeMap<String, Demand>>,
    /// Where the status page gets the cluster's status (set by the node).
    status_source: std::sync::OnceLock<StatusSource>,
    /// Peers stages avoid while another target exists (a transport failure, or silent
    /// through [`crate::core::peers::SILENT_LIMIT`] hedges in a row): the pure core, on
    /// microseconds since `born`.
    health: Mutex<PeerHealth>,
    born: Instant,
}

/// Fetches the cluster status (from the local coordinator or over the transport).
pub type StatusSource = Arc<dyn Fn() -> BoxFuture<Option<jigsaw_protocol::wire::ClusterStatus>> + Send + Sync>;

/// Outcomes a frontend counts (`ok` and every [`ServeError::outcome`]).
const OUTCOMES: [&str; 9] = [
    "ok",
    "early_drop",
    "stale_drop",
    "deadline_miss",
    "overloaded",
    "unavailable",
    "bad_request",
    "unknown_app",
    "error",
];

/// Window of `jigsaw_demand_rps`.
const DEMAND_WINDOW: Duration = Duration::from_secs(10);

impl<T: Transport> DataPlane<T> {
    /// The frontend of node `me`.
    pub fn new(me: &str, local: Arc<LocalPlane>, transport: Arc<T>) -> Arc<DataPlane<T>> {
        let seed = jigsaw_protocol::cluster::fnv64(&[me]) << 20;
        Arc::new_cyclic(|weak| DataPlane {
            weak: weak.clone(),
            me: me.to_string(),
            local,
            transport,
            in_flight: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(seed),
            answered: Mutex::new(BTreeMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            served: Mutex::new(BTreeMap::new()),
            arrivals: Mutex::new(BTreeMap::new()),
            goodput: Mutex::new(BTreeMap::new()),
            status_source: std::sync::OnceLock::new(),
            health: Mutex::new(PeerHealth::new()),
            born: Instant::now(),
        })
    }

    /// Where `GET /status` gets the cluster's status (set once, by the node).
    pub fn set_status_source(&self, source: StatusSource) {
        let _ = self.status_source.set(source);
    }

    /// This frontend's figures per app, from its metrics (refreshed first).
    pub fn frontend_figures(&self) -> crate::status_page::FrontendFigures {
        let _ = self.render_metrics();
        let m = self.local.metrics();
        let routes = self.local.routes();
        let apps = routes
            .apps
            .iter()
            .map(|r| {
                let app = r.spec.name.as_str();
                let count = |o: &str| m.requests.get_or_create(&labels(&[("app", app), ("outcome", o)])).get();
                let l = labels(&[("app", app)]);
                let goodput = lock(&self.goodput).get_mut(app).map_or(0.0, |e| {
                    let now = Instant::now();
                    e.roll(now);
                    e.rate(now)
                });
                crate::status_page::AppFigures {
                    app: app.to_string(),
                    demand_rps: m.demand_rps.get_or_create(&l).get(),
                    goodput_rps: goodput,
                    ok: count("ok"),
                    not_ok: OUTCOMES[1..].iter().map(|o| count(o)).sum(),
                    served_accuracy: served_accuracy(&r.spec, |t, v| {
                        lock(&self.served).get(&(app.to_string(), t, v)).copied()
                    }),
                    accuracy_slo: r.spec.accuracy_slo,
                }
            })
            .collect();
        crate::status_page::FrontendFigures { node: self.me.clone(), apps }
    }

    fn arrived(&self, app: &str) {
        Self::tick_window(&self.arrivals, app);
    }

    fn tick_window(map: &Mutex<BTreeMap<String, Demand>>, app: &str) {
        let now = Instant::now();
        let mut a = lock(map);
        let e = a.entry(app.to_string()).or_insert(Demand { since: now, count: 0, previous: None });
        e.roll(now);
        e.count += 1;
    }

    /// The node's metrics in OpenMetrics text, derived gauges refreshed first.
    pub fn render_metrics(&self) -> String {
        let m = self.local.metrics();
        self.local.refresh_instance_gauges();
        let now = Instant::now();
        for (app, e) in lock(&self.arrivals).iter_mut() {
            e.roll(now);
            m.demand_rps.get_or_create(&labels(&[("app", app)])).set(e.rate(now));
        }
        let routes = self.local.routes();
        let served = lock(&self.served).clone();
        for r in &routes.apps {
            let spec = &r.spec;
            let l = labels(&[("app", &spec.name)]);
            m.accuracy_slo.get_or_create(&l).set(spec.accuracy_slo);
            if let Some(acc) = served_accuracy(spec, |t, v| served.get(&(spec.name.clone(), t, v)).copied()) {
                m.served_accuracy.get_or_create(&l).set(acc);
            }
        }
        m.render()
    }

    /// Stop admitting requests (they get 503 `unavailable`, so a client retries elsewhere);
    /// those already admitted run to the end.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Requests this frontend has admitted and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The local half.
    pub fn local(&self) -> &Arc<LocalPlane> {
        &self.local
    }

    /// Run one stage of request `id` on a target of `task`.
    ///
    /// A first attempt that fails fast with a `retry` outcome (no instance there, a
    /// transport error) is retried once on another target with the time left. A first
    /// attempt on a peer that has not answered by the time a healthy instance would have
    /// ([`hedge_delay`]) is **hedged**: a second copy goes to another target and the first reply that ran wins, the first
    /// attempt still racing with its full budget (a drop from one waits for the other). A peer that is
    /// only slow (a long stage: a git-large batch on a 1g slice takes 150–265 ms, plus the
    /// batch wait) therefore still answers; cutting it at half the budget, as an earlier rule
    /// did, threw its work away, marked the peer suspect and left the copy half the budget,
    /// which the copy's queue then dropped early. A peer that is dead is covered by the
    /// copy. An attempt still running when the stage is decided runs on to its own budget
    /// in the background, so a peer that then fails in transport is still marked suspect.
    async fn stage(
        self: &Arc<Self>,
        route: &AppRoute,
        task: usize,
        id: u64,
        item: u32,
        input: Arc<Vec<f32>>,
        deadline: Instant,
    ) -> StageOutcome {
        self.local.meter().item(&route.spec.name, &route.tasks[task].task);
        let targets = &route.tasks[task].targets;
        let mut rng = SplitMix64::new(id ^ (u64::from(item) << 48) ^ (task as u64) << 40);
        let no_instance = || StageOutcome::Failed {
            message: format!("task {} has no instance", route.tasks[task].task),
            retry: true,
        };
        let suspect: Vec<bool> = {
            let (h, now) = (lock(&self.health), self.now_us());
            targets.iter().map(|t| h.is_suspect(&t.node, now)).collect()
        };
        let mut tried: Vec<usize> = Vec::new();
        let attempt = |i: usize| {
            let t = &targets[i];
            let left = deadline.saturating_duration_since(Instant::now());
            let req = StageRequest {
                id,
                item,
                app: route.spec.name.clone(),
                task: route.tasks[task].task.clone(),
                gpu: t.gpu.clone(),
                start: t.start,
                budget_us: left.as_micros() as u64,
                input: input.as_ref().clone(),
            };
            (t.node != self.me, Box::pin(self.clone().attempt(t.node.clone(), t.addr.clone(), req, left)))
        };
        let retryable = |o: &StageOutcome| matches!(o, StageOutcome::Failed { retry: true, .. });
        let Some(i) = pick(targets, &tried, &suspect, &mut rng) else { return no_instance() };
        tried.push(i);
        if deadline <= Instant::now() {
            return no_instance();
        }
        // When to hedge: once a healthy instance should have answered (its batch wait and
        // batch time by the plan's profile), at least half the time left and at most the last
        // moment a copy could still finish. A local first attempt cannot go silent: never.
        let ms = |x: f64| Duration::from_secs_f64((x / 1e3).clamp(0.0, 3_600.0));
        let tr = &route.tasks[task];
        let healthy = route.batch_ms(&tr.task, &targets[i], targets[i].batch).map(|b| ms(tr.budget_ms + b));
        let copy = (0..targets.len())
            .filter(|&j| j != i)
            .filter_map(|j| route.batch_ms(&tr.task, &targets[j], 1))
            .min_by(f64::total_cmp)
            .map(|b| ms(b + tr.downstream_ms));
        let left = deadline.saturating_duration_since(Instant::now());
        let (remote, mut first) = attempt(i);
        let hedge = if remote && targets.len() > 1 { hedge_delay(left, healthy, copy) } else { None };
        let early = match hedge {
            Some(after) => tokio::select! {
                o = &mut first => Some(o),
                _ = tokio::time::sleep(after) => None,
            },
            None => Some((&mut first).await),
        };
        let log = |attempt: usize, node: &str, why: &dyn std::fmt::Debug| {
            tracing::debug!(task = %route.tasks[task].task, target = %node, attempt, outcome = ?why, "stage attempt");
        };
        match early {
            // Answered (or failed for good) before the hedge: done.
            Some(o) if !retryable(&o) => o,
            // Failed fast: one more target with the time left.
            Some(o) => {
                log(0, &targets[i].node, &o);
                let Some(j) = pick(targets, &tried, &suspect, &mut rng) else { return o };
                if deadline <= Instant::now() {
                    return o;
                }
                attempt(j).1.await
            }
            // Silent past the hedge delay: send a copy, the first result that ran wins.
            None => {
                log(0, &targets[i].node, &"no reply when a healthy instance would have answered: hedging");
                if lock(&self.health).silent(&targets[i].node, self.now_us()) {
                    tracing::info!(peer = %targets[i].node, "peer suspect: silent through {SILENT_LIMIT} hedged stages in a row");
                }
                let Some(j) = pick(targets, &tried, &suspect, &mut rng) else { return first.await };
                let mut second = attempt(j).1;
                let done = |o: &StageOutcome| matches!(o, StageOutcome::Done { .. });
                // The first result that ran wins; a drop or failure waits for the other.
                // Neither ran: the first attempt's outcome (it had the full budget), unless
                // only it is worth retrying.
                let pick_of = |a: StageOutcome, b: StageOutcome| if retryable(&a) && !retryable(&b) { b } else { a };
                tokio::select! {
                    o = &mut first => if done(&o) { tokio::spawn(second); o } else {
                        let b = second.await;
                        if done(&b) { b } else { pick_of(o, b) }
                    },
                    o = &mut second => if done(&o) { tokio::spawn(first); o } else {
                        let a = first.await;
                        if done(&a) { a } else { pick_of(a, o) }
                    },
                }
            }
        }
    }

    /// One stage attempt on `node` (this node: the local plane; else over the transport,
    /// waiting up to `wait`). A transport error marks the peer suspect for
    /// [`SUSPECT_FOR`](crate::core::peers::SUSPECT_FOR); any reply clears its suspicion.
    async fn attempt(self: Arc<Self>, node: String, addr: String, req: StageRequest, wait: Duration) -> StageOutcome {
        if node == self.me {
            return self.local.serve_stage(req).await;
        }
        let reply = self.transport.request(&node, &addr, WireMessage::Stage(req), wait).await;
        match &reply {
            Ok(_) => lock(&self.health).replied(&node),
            Err(_) => lock(&self.health).transport_failed(&node, self.now_us()),
        }
        match reply {
            Ok(WireMessage::StageReply(r)) => r.outcome,
            Ok(WireMessage::Error { message, retry }) => StageOutcome::Failed { message, retry },
            Ok(other) => StageOutcome::Failed { message: format!("unexpected reply {other:?}"), retry: false },
            Err(e) => StageOutcome::Failed { message: format!("{node}: {e}"), retry: true },
        }
    }

    /// Microseconds since this frontend was made: the clock of its [`PeerHealth`].
    fn now_us(&self) -> u64 {
        self.born.elapsed().as_micros() as u64
    }

    /// Peers this frontend avoids now (suspect); tests and diagnostics read it.
    pub fn suspect_peers(&self) -> Vec<String> {
        lock(&self.health).suspects(self.now_us()).into_iter().map(str::to_string).collect()
    }

    async fn run(
        self: Arc<Self>,
        route: Arc<AppRoute>,
        id: u64,
        input: Vec<f32>,
        deadline: Instant,
    ) -> Result<InferResponse, ServeError> {
        let spec = &route.spec;
        let input = Arc::new(input);
        let mut set: tokio::task::JoinSet<(usize, u32, StageOutcome)> = tokio::task::JoinSet::new();
        let mut next_item = 0u32;
        let mut pending: BTreeMap<u32, usize> = BTreeMap::new();
        let spawn = |set: &mut tokio::task::JoinSet<(usize, u32, StageOutcome)>, task: usize, item: u32| {
            let me = self.clone();
            let route = route.clone();
            let input = input.clone();
            set.spawn(async move {
                let o = me.stage(&route, task, id, item, input, deadline).await;
                (task, item, o)
            });
        };
        for r in spec.roots() {
            spawn(&mut set, r, next_item);
            pending.insert(next_item, r);
            next_item += 1;
        }
        let mut outputs: BTreeMap<usize, Vec<Vec<f32>>> = BTreeMap::new();
        loop {
            let joined = match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(j)) => j,
                Ok(None) => break,
                Err(_) => {
                    let tasks: Vec<&str> = pending.values().map(|&t| spec.tasks[t].name.as_str()).collect();
                    return Err(ServeError::DeadlineExceeded { task: tasks.join(",") });
                }
            };
            let (task, item, outcome) = joined.map_err(|e| ServeError::Failed(format!("stage task: {e}")))?;
            pending.remove(&item);
            let name = spec.tasks[task].name.clone();
            match outcome {
                StageOutcome::Done { output, variant, .. } => {
                    let v = spec.tasks[task].variants.iter().position(|x| x.name == variant).unwrap_or(0);
                    *lock(&self.served).entry((spec.name.clone(), task, v)).or_default() += 1;
                    for c in spec.children(task) {
                        let mean = spec.fanout(task, v, c);
                        let mut rng = SplitMix64::new(id ^ (u64::from(item) << 32) ^ c as u64);
                        // `as` saturates (NaN: 0); the sum is checked against the cap before
                        // anything is spawned.
                        let k = (mean.floor() as u32).saturating_add(u32::from(rng.unit() < mean.fract()));
                        if u64::from(next_item) + u64::from(k) > u64::from(MAX_REQUEST_ITEMS) {
                            return Err(ServeError::Failed(format!(
                                "task {name}: fan-out to {} would take request {id} past {MAX_REQUEST_ITEMS} items \
                                 ({next_item} spawned, {k} more asked)",
                                spec.tasks[c].name
                            )));
                        }
                        for _ in 0..k {
                            spawn(&mut set, c, next_item);
                            pending.insert(next_item, c);
                            next_item += 1;
                        }
                    }
                    outputs.entry(task).or_default().push(output);
                }
                StageOutcome::EarlyDrop => {
                    return Err(ServeError::Dropped {
                        task: name,
                        reason: DropReason::Early,
                        weight: 1 + pending.len() as u32,
                    })
                }
                StageOutcome::StaleDrop => {
                    return Err(ServeError::Dropped {
                        task: name,
                        reason: DropReason::OverCapacity,
                        weight: 1 + pending.len() as u32,
                    })
                }
                StageOutcome::Failed { message, retry } => {
                    return Err(if retry {
                        ServeError::Unavailable(format!("task {name}: {message}"))
                    } else {
                        ServeError::Failed(format!("task {name}: {message}"))
                    });
                }
            }
        }
        let sinks: Vec<usize> = (0..spec.tasks.len()).filter(|&t| spec.children(t).is_empty()).collect();
        let outputs = sinks
            .into_iter()
            .map(|t| {
                let items = outputs.remove(&t).unwrap_or_default();
                let width = items.first().map_or(0, Vec::len);
                let data = TensorData::Fp32(items.iter().flatten().copied().collect());
                Tensor {
                    name: spec.tasks[t].name.clone(),
                    shape: vec![items.len() as u64, width as u64],
                    datatype: "FP32".into(),
                    data,
                }
            })
            .collect();
        Ok(InferResponse { model_name: spec.name.clone(), id: None, outputs })
    }

    /// Requests this frontend answered, by outcome (`ok`, `early_drop`, `overloaded`, …).
    pub fn answered(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.answered).clone()
    }

    fn count(&self, outcome: &'static str) {
        *lock(&self.answered).entry(outcome).or_default() += 1;
    }
}

/// Arrivals of one app at this frontend: the current window and the one before it.
struct Demand {
    since: Instant,
    count: u64,
    /// (arrivals, length) of the previous window.
    previous: Option<(u64, Duration)>,
}

impl Demand {
    /// Start a new window when the current one is over.
    fn roll(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.since);
        if elapsed >= DEMAND_WINDOW {
            self.previous = Some((self.count, elapsed));
            self.since = now;
            self.count = 0;
        }
    }

    /// Requests per second over the previous and the current window together.
    fn rate(&self, now: Instant) -> f64 {
        let (n0, d0) = self.previous.unwrap_or((0, Duration::ZERO));
        let span = (d0 + now.duration_since(self.since)).as_secs_f64();
        if span < 0.5 {
            return 0.0;
        }
        (n0 + self.count) as f64 / span
    }
}

/// The accuracy an app was served with, on the planner's scale: per task the average
/// accuracy of the variants that ran its stages (`served(task, variant)` counts them),
/// multiplied along each path, paths weighted as the planner weights them (the paper's
/// product-of-averages model), relative to the same with every task on its most accurate
/// variant (so it compares with the accuracy SLO and the plan's accuracy). `None` until
/// every task has served a stage.
pub fn served_accuracy(spec: &jigsaw_protocol::AppSpec, served: impl Fn(usize, usize) -> Option<u64>) -> Option<f64> {
    let mut avg = Vec::with_capacity(spec.tasks.len());
    let mut best = Vec::with_capacity(spec.tasks.len());
    for (t, task) in spec.tasks.iter().enumerate() {
        let (mut n, mut sum) = (0u64, 0.0);
        for (v, var) in task.variants.iter().enumerate() {
            let k = served(t, v).unwrap_or(0);
            n += k;
            sum += k as f64 * var.accuracy;
        }
        if n == 0 {
            return None;
        }
        avg.push(sum / n as f64);
        best.push(task.variants.iter().map(|v| v.accuracy).fold(0.0, f64::max));
    }
    let paths = spec.paths();
    let weights = jigsaw_coordinator::planner::path_weights(spec, &paths);
    let over = |acc: &[f64]| -> f64 {
        paths.iter().zip(&weights).map(|(p, w)| w * p.iter().map(|&t| acc[t]).product::<f64>()).sum()
    };
    let a_max = over(&best);
    (a_max > 0.0).then(|| over(&avg) / a_max)
}

/// A healthy stage is hedged this much after the time its plan gives it (batch wait and
/// batch time): network and queueing within the plan.
pub const HEDGE_MARGIN: f64 = 1.25;

/// How long after sending a stage to a peer to hedge it with a copy to another target, if at
/// all. `left`: the request's time left; `healthy`: when a healthy instance of the first
/// target answers by its plan (batch wait + batch time); `copy`: the least time a copy needs
/// (the fastest other target's batch of one plus the rest of the graph). Hedge after
/// `healthy` × [`HEDGE_MARGIN`], never before half of `left` (a dead peer's silence leaves
/// the copy the other half) and never after `left − copy` (a later copy cannot finish); no
/// hedge when no copy could finish even at half the time.
pub fn hedge_delay(left: Duration, healthy: Option<Duration>, copy: Option<Duration>) -> Option<Duration> {
    let half = left / 2;
    let latest = left.saturating_sub(copy.unwrap_or(Duration::ZERO));
    if latest < half {
        return None;
    }
    let wanted = healthy.map_or(half, |h| h.mul_f64(HEDGE_MARGIN).max(half));
    Some(wanted.min(latest))
}

/// A target among the untried ones: by planned weight among those that are not `suspect`,
/// then (none of them left) by capacity among the healthy ones the plan routes nothing to
/// (a spread copy on another node, say: alive capacity still serves when the loaded
/// instances are gone), then by weight among the suspect ones, then by capacity among all.
fn pick(targets: &[Target], tried: &[usize], suspect: &[bool], rng: &mut SplitMix64) -> Option<usize> {
    let open = |i: usize| !tried.contains(&i);
    let healthy = |i: usize| open(i) && !suspect.get(i).copied().unwrap_or(false);
    // (only healthy ones, by planned weight rather than by the capacity of unloaded ones)
    for (healthy_only, loaded) in [(true, true), (true, false), (false, true), (false, false)] {
        let ok = |i: usize| if healthy_only { healthy(i) } else { open(i) };
        let w = |t: &Target| match (loaded, t.weight > 0.0) {
            (true, _) => t.weight.max(0.0),
            (false, true) => 0.0,
            (false, false) => t.capacity_rps.max(0.0).max(1e-9),
        };
        let total: f64 = targets.iter().enumerate().filter(|(i, _)| ok(*i)).map(|(_, t)| w(t)).sum();
        if total <= 0.0 {
            continue;
        }
        let mut x = rng.unit() * total;
        let mut last = None;
        for (i, t) in targets.iter().enumerate().filter(|(i, _)| ok(*i)) {
            if w(t) <= 0.0 {
                continue;
            }
            last = Some(i);
            if x < w(t) {
                return Some(i);
            }
            x -= w(t);
        }
        return last;
    }
    None
}

/// The single image input of a request, checked against [`INPUT_SHAPE`].
fn input_of(req: &InferRequest) -> Result<Vec<f32>, InferError> {
    let err = |field: &str, message: String| InferError { field: field.to_string(), message };
    let [t] = req.inputs.as_slice() else {
        return Err(err("inputs", format!("expected exactly one input tensor, got {}", req.inputs.len())));
    };
    if t.shape != INPUT_SHAPE {
        return Err(err("inputs[0].shape", format!("expected {INPUT_SHAPE:?}, got {:?}", t.shape)));
    }
    t.data.to_f32().ok_or_else(|| err("inputs[0].data", format!("{} elements are not numbers", t.datatype)))
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: Transport> Inference for DataPlane<T> {
    fn ready(&self) -> bool {
        self.local.routes().epoch > 0
    }

    fn apps(&self) -> Vec<String> {
        self.local.routes().apps.iter().map(|a| a.spec.name.clone()).collect()
    }

    fn app(&self, app: &str) -> Option<AppMeta> {
        let routes = self.local.routes();
        let r = routes.app(app)?;
        let outputs = (0..r.spec.tasks.len())
            .filter(|&t| r.spec.children(t).is_empty())
            .map(|t| TensorMeta { name: r.spec.tasks[t].name.clone(), datatype: "FP32".into(), shape: vec![-1, -1] })
            .collect();
        Some(AppMeta {
            name: app.to_string(),
            versions: vec![routes.epoch.to_string()],
            platform: "jigsaw".into(),
            inputs: vec![TensorMeta {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: INPUT_SHAPE.iter().map(|d| *d as i64).collect(),
            }],
            outputs,
            latency_slo_ms: r.spec.latency_slo_ms,
        })
    }

    fn metrics(&self) -> Option<String> {
        Some(self.render_metrics())
    }

    fn status_page(&self) -> BoxFuture<Option<String>> {
        let Some(source) = self.status_source.get().cloned() else { return Box::pin(std::future::ready(None)) };
        let figures = self.frontend_figures();
        Box::pin(async move { source().await.map(|s| crate::status_page::render(&s, &figures)) })
    }

    fn infer(
        &self,
        app: &str,
        req: InferRequest,
        deadline: Option<Duration>,
    ) -> BoxFuture<Result<InferResponse, ServeError>> {
        let routes = self.local.routes();
        let Some(route) = routes.app(app).cloned() else {
            return Box::pin(std::future::ready(Err(ServeError::UnknownApp(app.to_string()))));
        };
        self.local.meter().arrive(app);
        let input = match input_of(&req) {
            Ok(i) => i,
            Err(e) => return Box::pin(std::future::ready(Err(ServeError::BadInput(e)))),
        };
        if self.draining.load(Ordering::SeqCst) {
            self.count("unavailable");
            self.local.meter().complete(app, true);
            let msg = format!("{} is shutting down; retry on another agent", self.me);
            return Box::pin(std::future::ready(Err(ServeError::Unavailable(msg))));
        }
        let max = self.local.cfg.max_in_flight;
        let admitted = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        if let Err(n) = admitted {
            self.count("overloaded");
            self.local.meter().complete(app, true);
            let msg = format!("{n} requests in flight on {}", self.me);
            return Box::pin(std::future::ready(Err(ServeError::Overloaded(msg))));
        }
        let guard = InFlight(self.in_flight.clone());
        let budget = deadline.unwrap_or_else(|| slo_budget(route.spec.latency_slo_ms)).min(MAX_DEADLINE);
        let deadline = Instant::now() + budget;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req_id = req.id.clone();
        let Some(me) = self.weak.upgrade() else {
            return Box::pin(std::future::ready(Err(ServeError::Unavailable("node is stopping".into()))));
        };
        me.arrived(app);
        let app = app.to_string();
        let started = Instant::now();
        Box::pin(async move {
            let _guard = guard;
            let r = me.clone().run(Arc::new(route), id, input, deadline).await;
            let outcome = match &r {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            };
            me.count(outcome);
            me.local.meter().complete(&app, crate::core::demand::violates_slo(outcome));
            if r.is_ok() {
                Self::tick_window(&me.goodput, &app);
            }
            let m = me.local.metrics();
            m.requests.get_or_create(&labels(&[("app", &app), ("outcome", outcome)])).inc();
            m.request_duration.get_or_create(&labels(&[("app", &app)])).observe(started.elapsed().as_secs_f64());
            r.map(|mut resp| {
                resp.id = req_id;
                resp
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::route::TaskRoute;
    use jigsaw_protocol::testing::{variant, AppToml};

    #[test]
    fn hedges_when_a_healthy_instance_would_have_answered_within_half_and_the_last_useful_moment() {
        let ms = Duration::from_millis;
        // A short stage: half the time left (a dead peer leaves the copy the other half).
        assert_eq!(hedge_delay(ms(700), Some(ms(40)), Some(ms(20))), Some(ms(350)));
        // A long stage (git-large: 265 ms batches after a 200 ms wait): after its planned
        // time and margin, not at half, which cut healthy stages and wasted their work.
        assert_eq!(hedge_delay(ms(700), Some(ms(400)), Some(ms(150))), Some(ms(500)));
        // Never later than a copy could still finish.
        assert_eq!(hedge_delay(ms(700), Some(ms(600)), Some(ms(150))), Some(ms(550)));
        // No copy could finish even at half: no hedge.
        assert_eq!(hedge_delay(ms(700), Some(ms(100)), Some(ms(400))), None);
        // Without figures: half.
        assert_eq!(hedge_delay(ms(700), None, None), Some(ms(350)));
        assert_eq!(hedge_delay(Duration::ZERO, None, None), Some(Duration::ZERO));
    }

    /// A 1g instance at slot 0 of `gpu` on node `n`, running `variant`, of routing `weight`.
    fn target(gpu: &str, variant: &str, weight: f64) -> Target {
        Target {
            node: "n".into(),
            addr: "n:1".into(),
            gpu: gpu.into(),
            start: 0,
            mig_profile: "1g.10gb".into(),
            variant: variant.into(),
            mps: 1,
            batch: 4,
            weight,
            capacity_rps: weight,
        }
    }

    #[test]
    fn targets_without_planned_load_serve_once_the_loaded_ones_are_gone() {
        let mut rng = SplitMix64::new(7);
        // Two loaded instances and one the plan routes nothing to (capacity 50 req/s).
        let ts = vec![
            target("g0", "v", 30.0),
            target("g1", "v", 10.0),
            Target { capacity_rps: 50.0, ..target("g2", "v", 0.0) },
        ];
        let none = [false, false, false];
        // While a loaded target is untried and healthy, only loaded ones are picked, by weight.
        let mut hits = [0usize; 3];
        for _ in 0..400 {
            hits[pick(&ts, &[], &none, &mut rng).expect("a target")] += 1;
        }
        assert_eq!(hits[2], 0, "{hits:?}");
        assert!(hits[0] > 2 * hits[1], "by weight: {hits:?}");
        // Both loaded ones tried: the unloaded one serves (before: no target at all).
        assert_eq!(pick(&ts, &[0, 1], &none, &mut rng), Some(2));
        // The loaded ones suspect: the healthy unloaded one comes first.
        assert_eq!(pick(&ts, &[], &[true, true, false], &mut rng), Some(2));
        // Everything suspect: loaded ones by weight again.
        assert!(matches!(pick(&ts, &[], &[true, true, true], &mut rng), Some(0 | 1)));
        // Everything tried: none.
        assert_eq!(pick(&ts, &[0, 1, 2], &none, &mut rng), None);
    }

    #[test]
    fn served_accuracy_is_relative_to_the_best_variants() {
        let toml = AppToml::new("chain", 100.0, 0.8)
            .task("a", vec![variant("a-big", 0.8, "resnet", 4.0), variant("a-small", 0.4, "resnet", 1.0)])
            .task("b", vec![variant("b", 0.5, "resnet", 1.0)])
            .edge("a", "b")
            .build();
        let spec = jigsaw_protocol::AppSpec::parse(&toml, "chain").expect("parses");
        assert_eq!(served_accuracy(&spec, |_, _| None), None, "nothing served yet");
        let best = served_accuracy(&spec, |t, v| Some(u64::from(v == 0) * (t as u64 + 1)));
        assert!((best.expect("served") - 1.0).abs() < 1e-12, "{best:?}");
        // Half of task a's stages on the small variant: average 0.6 of a best 0.8.
        let half = served_accuracy(&spec, |_, _| Some(5)).expect("served");
        assert!((half - 0.75).abs() < 1e-12, "{half}");
    }

    #[test]
    fn planned_capacity_is_the_bottleneck_task_in_requests() {
        let toml = AppToml::new("pipe", 500.0, 0.5)
            .task(
                "detect",
                vec![
                    variant("big", 0.9, "yolov5", 10.0).fanout("classify", 2.0),
                    variant("small", 0.5, "yolov5", 5.0).fanout("classify", 4.0),
                ],
            )
            .task("classify", vec![variant("cls", 0.9, "resnet", 4.0)])
            .edge("detect", "classify")
            .build();
        let spec = jigsaw_protocol::AppSpec::parse(&toml, "pipe").expect("parses");
        let target = |variant: &str, weight: f64| target("GPU-0", variant, weight);
        let task = |name: &str, targets: Vec<Target>| TaskRoute {
            task: name.into(),
            budget_ms: 10.0,
            downstream_ms: 0.0,
            targets,
        };
        let route = |classify: f64| AppRoute {
            spec: spec.clone(),
            tasks: vec![
                task("detect", vec![target("big", 300.0), target("small", 100.0)]),
                task("classify", if classify > 0.0 { vec![target("cls", classify)] } else { vec![] }),
            ],
            stale_ms: 20.0,
            profiles: vec![],
        };
        // Capacity-weighted fan-out (300·2 + 100·4) / 400 = 2.5 classify items per request:
        // 500 items/s serve 200 requests/s, below detect's 400.
        let c = planned_rps(&route(500.0)).expect("capacity");
        assert!((c - 200.0).abs() < 1e-9, "{c}");
        // With classify at 2000 items/s (800 requests/s) detect's 400 is the bottleneck.
        let c = planned_rps(&route(2_000.0)).expect("capacity");
        assert!((c - 400.0).abs() < 1e-9, "{c}");
        assert_eq!(planned_rps(&route(0.0)), None, "a task without instances serves nothing");
        // Weighted by planned load, not throughput: big gets 2/3 of detect's items (capacity
        // 300), small 1/3 (capacity 100). Small fills first, at 300 requests/s, although
        // detect's instances serve 400 items/s in all.
        let by_load = AppRoute {
            tasks: vec![
                task(
                    "detect",
                    vec![
                        Target { capacity_rps: 300.0, ..target("big", 200.0) },
                        Target { capacity_rps: 100.0, ..target("small", 100.0) },
                    ],
                ),
                task("classify", vec![target("cls", 2_000.0)]),
            ],
            ..route(2_000.0)
        };
        let c = planned_rps(&by_load).expect("capacity");
        assert!((c - 300.0).abs() < 1e-9, "{c}");
        // An instance routed nothing limits nothing.
        let idle = AppRoute {
            tasks: vec![
                task("detect", vec![target("big", 300.0), Target { capacity_rps: 100.0, ..target("small", 0.0) }]),
                task("classify", vec![target("cls", 2_000.0)]),
            ],
            ..route(2_000.0)
        };
        let c = planned_rps(&idle).expect("capacity");
        assert!((c - 300.0).abs() < 1e-9, "{c}");
    }

    /// Between a transition's make and routes steps, a kept root instance admits its share
    /// of the table the frontends route with, not of the staged one (which already splits
    /// the root's load with an instance that gets none yet); the new one admits its staged
    /// share.
    #[test]
    fn admission_follows_the_routed_table_while_it_has_the_instance() {
        let toml = AppToml::new("pipe", 300.0, 0.5)
            .task("detect", vec![variant("big", 0.9, "yolov5", 10.0).fanout("classify", 2.0)])
            .task("classify", vec![variant("cls", 0.9, "resnet", 4.0)])
            .edge("detect", "classify")
            .build();
        let spec = jigsaw_protocol::AppSpec::parse(&toml, "pipe").expect("parses");
        let table = |epoch: u64, detect: Vec<Target>, classify: f64| RoutingTable {
            epoch,
            apps: vec![AppRoute {
                spec: spec.clone(),
                tasks: vec![
                    TaskRoute { task: "detect".into(), budget_ms: 10.0, downstream_ms: 5.0, targets: detect },
                    TaskRoute {
                        task: "classify".into(),
                        budget_ms: 10.0,
                        downstream_ms: 0.0,
                        targets: vec![target("GPU-9", "cls", classify)],
                    },
                ],
                stale_ms: 20.0,
                profiles: vec![],
            }],
        };
        let plane = LocalPlane::new(
            PlaneConfig::default(),
            Arc::new(super::super::worker::InProcessLauncher(super::super::worker::ExecutorKind::Timed)),
        );
        // Routed: detect on GPU-0 alone (300 req/s). Staged: GPU-1 joins it, and classify
        // (800 items/s = 400 req/s at fan-out 2) becomes the bottleneck.
        plane.set_routes(table(1, vec![target("GPU-0", "big", 300.0)], 2_000.0));
        plane.prepare_routes(Arc::new(table(
            2,
            vec![target("GPU-0", "big", 300.0), target("GPU-1", "big", 300.0)],
            800.0,
        )));
        let plan = InstancePlan {
            app: "pipe".into(),
            throughput_rps: 300.0,
            p95_ms: 10.0,
            variant: "big".into(),
            ..jigsaw_protocol::testing::instance("detect", "1g.10gb", 0)
        };
        let admit = |gpu: &str| plane.desired(gpu, &plan).map(|(_, q)| q.admit_per_window);
        // Kept: 95 % of the routed 300 req/s. New: 95 % of half the staged 400.
        assert_eq!(admit("GPU-0"), Some(285));
        assert_eq!(admit("GPU-1"), Some(190));
    }

    #[test]
    fn demand_counts_both_windows() {
        let t0 = Instant::now();
        let mut d = Demand { since: t0, count: 0, previous: None };
        assert_eq!(d.rate(t0), 0.0);
        d.count = 30;
        assert!((d.rate(t0 + Duration::from_secs(3)) - 10.0).abs() < 1e-9);
        d.roll(t0 + DEMAND_WINDOW);
        d.count = 5;
        let r = d.rate(t0 + DEMAND_WINDOW + Duration::from_secs(1));
        assert!((r - 35.0 / 11.0).abs() < 1e-9, "{r}");
    }
}
