//! Per-task batching and dropping, as a pure core on a caller-supplied clock (µs).
//!
//! One [`TaskQueue`] per task on a node: the task's instances pull from one shared queue
//! (the paper's stale rule implies a shared per-task queue). Rules (paper §3.3):
//! * an idle instance launches a batch as soon as `max_batch` requests wait, or when the
//!   oldest waiting request has waited the task's latency budget `wait_us` (L̂(t)), even with
//!   fewer; an instance that finishes while requests wait launches at once;
//! * **early drop**: a request is dropped when it cannot meet its deadline even if this task
//!   ran it alone (`exec_us(1)`) and every downstream task used its fastest variant with no
//!   batching delay (`downstream_us`); checked on arrival and again at launch;
//! * **stale drop**: a request that no instance picked up within `stale_us` because every
//!   instance was busy and every instance's next batch was already full (it stands behind
//!   `instances × b` waiting requests) is dropped.
//!
//! Every request leaves the queue exactly once, in a [`Event::Launch`] or an [`Event::Drop`]
//! (a property test checks this conservation). Dropped requests carry their weight (the
//! fan-out multiplicity), so a drop counts as that many SLO violations.

use std::collections::VecDeque;

/// A request waiting at this task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Request id.
    pub id: u64,
    /// When it arrived at this task, µs.
    pub arrived_us: u64,
    /// End-to-end deadline, µs.
    pub deadline_us: u64,
    /// How many SLO violations a drop counts as (fan-out multiplicity).
    pub weight: u32,
}

/// Why a request was dropped (the two dropping rules of the paper, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DropReason {
    /// It cannot meet its deadline any more.
    Early,
    /// No instance picked it up in time because every instance was busy.
    Stale,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropReason::Early => "early",
            DropReason::Stale => "stale",
        })
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Run `batch` on instance `instance`, then call [`TaskQueue::done`].
    Launch {
        /// Instance index.
        instance: usize,
        /// The requests, oldest first.
        batch: Vec<Request>,
    },
    /// Answer `request` with an error: dropped.
    Drop {
        /// The request.
        request: Request,
        /// Why.
        reason: DropReason,
    },
}

/// Settings of one task's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest batch (the plan's b).
    pub max_batch: u32,
    /// Longest a request waits for a batch to fill, µs (the task's latency budget L̂(t)).
    pub wait_us: u64,
    /// Execution time of a batch of one on the fastest instance, µs.
    pub exec1_us: u64,
    /// Fastest possible time for the rest of the graph after this task, µs.
    pub downstream_us: u64,
    /// Stale threshold, µs (20 ms for social/traffic, 40 ms for AR in the paper).
    pub stale_us: u64,
}

/// One task's shared queue and its instances.
#[derive(Debug, Clone)]
pub struct TaskQueue {
    cfg: QueueConfig,
    queue: VecDeque<Request>,
    busy: Vec<bool>,
}

impl TaskQueue {
    /// A queue served by `instances` instances.
    pub fn new(cfg: QueueConfig, instances: usize) -> TaskQueue {
        TaskQueue { cfg, queue: VecDeque::new(), busy: vec![false; instances] }
    }

    /// Take new settings (a re-plan changed the queue's figures but not its workers): the
    /// waiting requests and busy replicas stay; the next poll applies the new figures.
    pub fn set_config(&mut self, cfg: QueueConfig) {
        self.cfg = cfg;
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// The earliest a request arriving `now` can be through the rest of the graph (saturating:
    /// no figure from a peer or a plan may overflow the queue's arithmetic).
    fn earliest_done(&self, now: u64) -> u64 {
        now.saturating_add(self.cfg.exec1_us).saturating_add(self.cfg.downstream_us)
    }

    fn hopeless(&self, now: u64, r: &Request) -> bool {
        self.earliest_done(now) > r.deadline_us
    }

    /// A request arrives.
    pub fn push(&mut self, now: u64, r: Request) -> Vec<Event> {
        if self.hopeless(now, &r) {
            return vec![Event::Drop { request: r, reason: DropReason::Early }];
        }
        self.queue.push_back(r);
        self.poll(now)
    }

    /// Instance `instance` finished its batch.
    pub fn done(&mut self, now: u64, instance: usize) -> Vec<Event> {
        if let Some(b) = self.busy.get_mut(instance) {
            *b = false;
        }
        let mut out = self.expire(now);
        if !self.queue.is_empty() {
            out.extend(self.launch(now, instance));
        }
        out.extend(self.poll(now));
        out
    }

    /// Timers: launch due batches, drop expired requests.
    pub fn poll(&mut self, now: u64) -> Vec<Event> {
        let mut out = self.expire(now);
        while let Some(i) = self.busy.iter().position(|b| !b) {
            let full = self.queue.len() >= self.cfg.max_batch as usize;
            let due = self.queue.front().is_some_and(|r| now >= r.arrived_us.saturating_add(self.cfg.wait_us));
            if !(full || due) {
                break;
            }
            let launched = self.launch(now, i);
            if launched.is_empty() {
                break;
            }
            out.extend(launched);
        }
        out
    }

    /// When [`TaskQueue::poll`] must run next (a batch timer or a stale deadline), if ever.
    pub fn next_wakeup(&self) -> Option<u64> {
        let r = self.queue.front()?;
        let batch = r.arrived_us.saturating_add(self.cfg.wait_us);
        let stale = r.arrived_us.saturating_add(self.cfg.stale_us);
        let hopeless =
            r.deadline_us.saturating_sub(self.cfg.exec1_us.saturating_add(self.cfg.downstream_us)).saturating_add(1);
        Some(batch.min(stale).min(hopeless))
    }

    fn expire(&mut self, now: u64) -> Vec<Event> {
        let all_busy = self.busy.iter().all(|b| *b);
        // The first `instances × b` waiting requests are the instances' next batches; a
        // request behind them found every batch full (paper §3.3).
        let room = self.busy.len() * self.cfg.max_batch as usize;
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.queue.len());
        let earliest = self.earliest_done(now);
        for r in self.queue.drain(..) {
            if earliest > r.deadline_us {
                out.push(Event::Drop { request: r, reason: DropReason::Early });
            } else if all_busy && keep.len() >= room && now >= r.arrived_us.saturating_add(self.cfg.stale_us) {
                out.push(Event::Drop { request: r, reason: DropReason::Stale });
            } else {
                keep.push_back(r);
            }
        }
        self.queue = keep;
        out
    }

    fn launch(&mut self, now: u64, instance: usize) -> Vec<Event> {
        let mut batch = Vec::new();
        let mut out = Vec::new();
        while batch.len() < self.cfg.max_batch as usize {
            let Some(r) = self.queue.pop_front() else { break };
            if self.hopeless(now, &r) {
                out.push(Event::Drop { request: r, reason: DropReason::Early });
            } else {
                batch.push(r);
            }
        }
        if !batch.is_empty() {
            self.busy[instance] = true;
            out.push(Event::Launch { instance, batch });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CFG: QueueConfig =
        QueueConfig { max_batch: 4, wait_us: 1_000, exec1_us: 500, downstream_us: 2_000, stale_us: 20_000 };

    fn req(id: u64, at: u64) -> Request {
        Request { id, arrived_us: at, deadline_us: at + 100_000, weight: 1 }
    }

    fn launched(ev: &[Event]) -> Vec<(usize, Vec<u64>)> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Launch { instance, batch } => Some((*instance, batch.iter().map(|r| r.id).collect())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn full_batches_launch_at_once_partial_ones_after_the_budget() {
        let mut q = TaskQueue::new(CFG, 1);
        for i in 0..3 {
            assert!(q.push(10 * i, req(i, 10 * i)).is_empty(), "batch not full, budget not spent");
        }
        let ev = q.push(30, req(3, 30));
        assert_eq!(launched(&ev), vec![(0, vec![0, 1, 2, 3])]);
        // Busy instance: the next requests wait; at completion they launch at once.
        assert!(q.push(100, req(4, 100)).is_empty());
        assert_eq!(launched(&q.done(400, 0)), vec![(0, vec![4])]);
        // A lone request waits exactly the budget.
        q.done(900, 0);
        assert!(q.push(1_000, req(5, 1_000)).is_empty());
        assert_eq!(q.next_wakeup(), Some(2_000));
        assert!(q.poll(1_999).is_empty());
        assert_eq!(launched(&q.poll(2_000)), vec![(0, vec![5])]);
    }

    #[test]
    fn hopeless_and_stale_requests_are_dropped() {
        let mut q = TaskQueue::new(CFG, 1);
        // Arrives with less than exec + downstream left: dropped on arrival.
        let late = Request { id: 9, arrived_us: 0, deadline_us: 2_000, weight: 3 };
        assert_eq!(q.push(0, late), vec![Event::Drop { request: late, reason: DropReason::Early }]);
        // Fill the only instance and its next batch, then a request waits past the stale
        // threshold behind them.
        for i in 0..8 {
            q.push(0, req(i, 0));
        }
        assert!(q.push(10, req(10, 10)).is_empty());
        let ev = q.poll(20_010);
        assert_eq!(ev, vec![Event::Drop { request: req(10, 10), reason: DropReason::Stale }]);
        // The next batch's requests waited as long, but they have a place: not stale.
        assert_eq!(q.waiting(), 4);
        // The instance finishes: the next batch launches; with it idle again, a new request
        // is not stale either: it launches after the batching wait.
        assert_eq!(launched(&q.done(20_020, 0)), vec![(0, vec![4, 5, 6, 7])]);
        assert!(q.done(20_030, 0).is_empty());
        assert!(q.push(20_040, req(11, 20_040)).is_empty());
        assert_eq!(launched(&q.poll(21_040)), vec![(0, vec![11])]);
    }

    proptest! {
        /// Every request leaves exactly once, no batch exceeds b, no instance runs two
        /// batches at once.
        #[test]
        fn conservation(ops in proptest::collection::vec((0u8..3, 0u64..5_000, 0u64..60_000), 1..200),
                        instances in 1usize..4) {
            let mut q = TaskQueue::new(CFG, instances);
            let mut now = 0u64;
            let mut next_id = 0u64;
            let mut seen = std::collections::BTreeSet::new();
            let mut busy = vec![false; instances];
            let mut check = |ev: Vec<Event>, busy: &mut Vec<bool>| -> Result<(), TestCaseError> {
                for e in ev {
                    match e {
                        Event::Launch { instance, batch } => {
                            prop_assert!(!busy[instance], "instance {} launched twice", instance);
                            busy[instance] = true;
                            prop_assert!(!batch.is_empty() && batch.len() <= CFG.max_batch as usize);
                            for r in batch { prop_assert!(seen.insert(r.id), "request {} twice", r.id); }
                        }
                        Event::Drop { request, .. } => prop_assert!(seen.insert(request.id)),
                    }
                }
                Ok(())
            };
            for (op, dt, slack) in ops {
                now += dt;
                match op {
                    0 => {
                        let r = Request { id: next_id, arrived_us: now, deadline_us: now + slack, weight: 1 };
                        next_id += 1;
                        check(q.push(now, r), &mut busy)?;
                    }
                    1 => {
                        if let Some(i) = busy.iter().position(|b| *b) {
                            busy[i] = false;
                            check(q.done(now, i), &mut busy)?;
                        }
                    }
                    _ => check(q.poll(now), &mut busy)?,
                }
            }
            // Drain: finish everything and advance far enough.
            for _ in 0..1_000 {
                if q.waiting() == 0 { break; }
                now += 50_000;
                for i in 0..instances {
                    if busy[i] { busy[i] = false; check(q.done(now, i), &mut busy)?; }
                }
                check(q.poll(now), &mut busy)?;
            }
            prop_assert_eq!(q.waiting(), 0);
            prop_assert_eq!(seen.len() as u64, next_id, "every request left the queue exactly once");
        }
    }
}
