//! One segment instance's replicas and its queue: the shell around the pure
//! [`TaskQueue`].
//!
//! A driver task owns the queue. Items arrive on a channel with their reply; the driver
//! turns queue events into worker calls (launch) and replies (drop), and wakes for the
//! queue's next timer. Every item gets exactly one reply: executed, dropped (early, or shed
//! at a root task's admission: `stale_drop`) or failed (worker crash or executor error).

use super::worker::{WorkerConn, WorkerError};
use crate::core::batch::{DropReason, Event, QueueConfig, Request, TaskQueue};
use jigsaw_protocol::route::StageOutcome;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One item submitted to a pool.
pub struct Item {
    /// Input values.
    pub input: Vec<f32>,
    /// Time left until the request's deadline, µs (as of submission).
    pub budget_us: u64,
    /// Reply.
    pub reply: oneshot::Sender<StageOutcome>,
}

/// Observed batch executions of one pool (for run-time profile refinement).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Batches executed.
    pub batches: AtomicU64,
    /// Items executed.
    pub items: AtomicU64,
    /// Items dropped early.
    pub early: AtomicU64,
    /// Items shed at admission (over the planned rate; wire name `stale_drop`).
    pub stale: AtomicU64,
    /// Items failed.
    pub failed: AtomicU64,
    /// Observed batch latencies at the largest batch size seen, µs (latest 256).
    pub samples: std::sync::Mutex<Vec<(u32, u64)>>,
    /// Requests waiting in the queue now.
    pub depth: AtomicU64,
    /// Requests taken and not yet answered (queued or in a running batch).
    pub pending: AtomicU64,
    /// Share of the last full window (parts per million) the replicas spent running batches.
    pub busy_ppm: AtomicU64,
}

/// A running pool; dropping it stops the driver and answers queued items with an error.
pub struct Pool {
    tx: mpsc::UnboundedSender<Item>,
    settings: mpsc::UnboundedSender<QueueConfig>,
    driver: tokio::task::JoinHandle<()>,
    /// Counters.
    pub stats: Arc<PoolStats>,
    /// The replicas (for tests and reports).
    pub workers: Vec<Arc<dyn WorkerConn>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Pool {
    /// Start a pool over `workers` with queue settings `cfg`; `variant` names the outputs.
    pub fn start(cfg: QueueConfig, workers: Vec<Arc<dyn WorkerConn>>, variant: String) -> Pool {
        Self::start_with(cfg, workers, variant, None)
    }

    /// [`Pool::start`], recording every batch's size in `batches` (the node's
    /// `jigsaw_batch_size` histogram of the instance's app and task).
    pub fn start_with(
        cfg: QueueConfig,
        workers: Vec<Arc<dyn WorkerConn>>,
        variant: String,
        batches: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> Pool {
        let (tx, rx) = mpsc::unbounded_channel();
        let (settings, settings_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(PoolStats::default());
        let driver = tokio::spawn(drive(cfg, workers.clone(), variant, rx, settings_rx, stats.clone(), batches));
        Pool { tx, settings, driver, stats, workers }
    }

    /// Apply new queue settings to the running pool: its workers, waiting items and running
    /// batches stay (a re-plan that only changes queue figures cuts no work).
    pub fn reconfigure(&self, cfg: QueueConfig) {
        let _ = self.settings.send(cfg);
    }

    /// Items taken and not yet answered (queued or in a running batch), as of the driver's
    /// last turn.
    pub fn pending(&self) -> u64 {
        self.stats.pending.load(Ordering::Relaxed)
    }

    /// Submit an item; its outcome arrives on `item.reply`.
    pub fn submit(&self, item: Item) {
        if let Err(mpsc::error::SendError(item)) = self.tx.send(item) {
            let _ = item.reply.send(StageOutcome::Failed { message: "instance stopped".into(), retry: true });
        }
    }
}

struct Waiting {
    input: Vec<f32>,
    arrived: Instant,
    request: Request,
    reply: oneshot::Sender<StageOutcome>,
}

/// How long a replica whose worker crashed or is restarting takes no batches.
const BENCH_FOR: std::time::Duration = std::time::Duration::from_millis(200);

enum Finished {
    /// A batch ended.
    Batch {
        instance: usize,
        ids: Vec<u64>,
        inputs: Vec<Vec<f32>>,
        result: Result<Vec<Vec<f32>>, WorkerError>,
        exec_us: u64,
    },
    /// A benched replica may take batches again.
    Release(usize),
}

/// Keep replica `instance` busy (no batches) for [`BENCH_FOR`].
fn bench(done: &mpsc::UnboundedSender<Finished>, instance: usize) {
    let done = done.clone();
    tokio::spawn(async move {
        tokio::time::sleep(BENCH_FOR).await;
        let _ = done.send(Finished::Release(instance));
    });
}

/// The state of one instance's driver task: the pure queue plus the waiting requests and
/// the replies owed to them.
struct Driver {
    origin: Instant,
    queue: TaskQueue,
    workers: Vec<Arc<dyn WorkerConn>>,
    variant: String,
    waiting: HashMap<u64, Waiting>,
    next_id: u64,
    done_tx: mpsc::UnboundedSender<Finished>,
    stats: Arc<PoolStats>,
    batches: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Busy time of the replicas in the current window, µs, and when the window began.
    busy_us: u64,
    window_from: Instant,
}

/// Window of the busy ratio.
const BUSY_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

impl Driver {
    /// Close the busy window when it is over (called at least once a second).
    fn roll_window(&mut self) {
        let elapsed = self.window_from.elapsed();
        if elapsed < BUSY_WINDOW {
            return;
        }
        let capacity = elapsed.as_micros() as f64 * self.workers.len().max(1) as f64;
        let ppm = (self.busy_us as f64 / capacity * 1e6).clamp(0.0, 1e6) as u64;
        self.stats.busy_ppm.store(ppm, Ordering::Relaxed);
        self.busy_us = 0;
        self.window_from = Instant::now();
    }

    fn now_us(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_micros() as u64
    }

    /// Execute what the queue decided: answer drops, start batches.
    fn execute(&mut self, events: Vec<Event>) {
        for ev in events {
            match ev {
                Event::Drop { request, reason } => {
                    if let Some(w) = self.waiting.remove(&request.id) {
                        tracing::debug!(
                            variant = %self.variant,
                            %reason,
                            waited_us = w.arrived.elapsed().as_micros() as u64,
                            budget_us = request.deadline_us.saturating_sub(request.arrived_us),
                            waiting = self.queue.waiting(),
                            "stage dropped"
                        );
                        let outcome = match reason {
                            DropReason::Early => {
                                self.stats.early.fetch_add(1, Ordering::Relaxed);
                                StageOutcome::EarlyDrop
                            }
                            DropReason::OverCapacity => {
                                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                                StageOutcome::StaleDrop
                            }
                        };
                        let _ = w.reply.send(outcome);
                    }
                }
                Event::Launch { instance, batch } => {
                    let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
                    let inputs: Vec<Vec<f32>> =
                        ids.iter().filter_map(|id| self.waiting.get(id).map(|w| w.input.clone())).collect();
                    let worker = self.workers[instance.min(self.workers.len().saturating_sub(1))].clone();
                    let done = self.done_tx.clone();
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let result = worker.run(inputs.clone()).await;
                        let exec_us = t.elapsed().as_micros() as u64;
                        let _ = done.send(Finished::Batch { instance, ids, inputs, result, exec_us });
                    });
                }
            }
        }
    }

    /// A request arrived.
    fn arrive(&mut self, item: Item) -> Vec<Event> {
        let now = self.now_us();
        let id = self.next_id;
        self.next_id += 1;
        // Saturating: a budget is bounded where it enters (a peer's stage), but the driver
        // must never panic on one.
        let r = Request { id, arrived_us: now, deadline_us: now.saturating_add(item.budget_us), weight: 1 };
        self.waiting.insert(id, Waiting { input: item.input, arrived: Instant::now(), request: r, reply: item.reply });
        self.queue.push(now, r)
    }

    /// A batch finished (or a benched replica came back).
    fn finished(&mut self, fin: Finished) -> Vec<Event> {
        let (instance, ids, inputs, result, exec_us) = match fin {
            Finished::Release(instance) => return self.queue.done(self.now_us(), instance),
            Finished::Batch { instance, ids, inputs, result, exec_us } => (instance, ids, inputs, result, exec_us),
        };
        let n = ids.len() as u32;
        self.busy_us += exec_us;
        match result {
            Ok(outputs) if outputs.len() == ids.len() => {
                if let Some(h) = &self.batches {
                    h.observe(f64::from(n));
                }
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.items.fetch_add(u64::from(n), Ordering::Relaxed);
                {
                    let mut s = self.stats.samples.lock().unwrap_or_else(|p| p.into_inner());
                    if s.len() >= 256 {
                        s.remove(0);
                    }
                    s.push((n, exec_us));
                }
                for (id, output) in ids.iter().zip(outputs) {
                    if let Some(w) = self.waiting.remove(id) {
                        let stage_us = w.arrived.elapsed().as_micros() as u64;
                        let _ = w.reply.send(StageOutcome::Done { output, variant: self.variant.clone(), stage_us });
                    }
                }
                self.queue.done(self.now_us(), instance)
            }
            Err(WorkerError::Unavailable(why)) => {
                // The batch never ran: its items go back to the queue for the other
                // replicas, and this replica sits out while its worker restarts.
                tracing::debug!(%why, instance, "replica unavailable; requeueing its batch");
                let now = self.now_us();
                let mut events = Vec::new();
                for (id, input) in ids.iter().zip(inputs) {
                    if let Some(w) = self.waiting.get_mut(id) {
                        w.input = input;
                        let r = w.request;
                        events.extend(self.queue.requeue(now, r));
                    }
                }
                bench(&self.done_tx, instance);
                events
            }
            other => {
                let crashed = matches!(other, Err(WorkerError::Crashed(_)));
                let (message, retry) = match other {
                    Ok(o) => (format!("worker returned {} outputs for {} inputs", o.len(), ids.len()), false),
                    Err(e @ WorkerError::Exec(_)) => (e.to_string(), false),
                    Err(e) => (e.to_string(), true),
                };
                self.stats.failed.fetch_add(u64::from(n), Ordering::Relaxed);
                for id in &ids {
                    if let Some(w) = self.waiting.remove(id) {
                        let _ = w.reply.send(StageOutcome::Failed { message: message.clone(), retry });
                    }
                }
                if crashed {
                    bench(&self.done_tx, instance);
                    self.queue.poll(self.now_us())
                } else {
                    self.queue.done(self.now_us(), instance)
                }
            }
        }
    }
}

/// Shortest wait after a wake-up of the queue that found nothing to do.
const IDLE_REPOLL: std::time::Duration = std::time::Duration::from_millis(1);

async fn drive(
    cfg: QueueConfig,
    workers: Vec<Arc<dyn WorkerConn>>,
    variant: String,
    mut rx: mpsc::UnboundedReceiver<Item>,
    mut settings: mpsc::UnboundedReceiver<QueueConfig>,
    stats: Arc<PoolStats>,
    batches: Option<prometheus_client::metrics::histogram::Histogram>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let queue = TaskQueue::new(cfg, workers.len().max(1));
    let now = Instant::now();
    let mut d = Driver {
        origin: now,
        queue,
        workers,
        variant,
        waiting: HashMap::new(),
        next_id: 0,
        done_tx,
        stats,
        batches,
        busy_us: 0,
        window_from: now,
    };
    let mut events: Vec<Event> = Vec::new();
    // The queue's next wake-up can be due already with nothing to do (a batch timer ran out
    // while every replica is busy); after such a fruitless wake-up the next one waits at
    // least `IDLE_REPOLL`, so the driver does not spin (on a paused clock a spin would stop
    // time, and the busy replicas would never finish).
    let mut fruitless = false;
    let mut second = tokio::time::interval(std::time::Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        d.execute(std::mem::take(&mut events));
        d.stats.depth.store(d.queue.waiting() as u64, Ordering::Relaxed);
        d.stats.pending.store(d.waiting.len() as u64, Ordering::Relaxed);
        d.roll_window();
        // A wake-up beyond what an Instant can hold is never.
        let mut wake = d.queue.next_wakeup().and_then(|us| d.origin.checked_add(std::time::Duration::from_micros(us)));
        if fruitless {
            wake = wake.map(|t| t.max(Instant::now() + IDLE_REPOLL));
        }
        fruitless = false;
        tokio::select! {
            _ = second.tick() => {}
            item = rx.recv() => {
                let Some(item) = item else { break };
                events = d.arrive(item);
            }
            Some(fin) = done_rx.recv() => events = d.finished(fin),
            Some(cfg) = settings.recv() => {
                d.queue.set_config(cfg);
                events = d.queue.poll(d.now_us());
            }
            _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                events = d.queue.poll(d.now_us());
                fruitless = events.is_empty();
            }
        }
    }
    for (_, w) in d.waiting.drain() {
        let _ = w.reply.send(StageOutcome::Failed { message: "instance stopped".into(), retry: true });
    }
}
