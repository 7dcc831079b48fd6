//! The data plane's contract: the routing table every node routes with, and the stage
//! request/reply that carries one item of a request to one task instance.
//!
//! The coordinator derives a [`RoutingTable`] from the committed plan and the replicated
//! state (`jigsaw_coordinator::routing`), and pushes it to every node with the node's plan
//! part ([`crate::wire::WireMessage::PlanPush`]). Nodes keep the newest table they have
//! (persisted with the applied plan) and route with it; routing never waits on the
//! coordinator. Design note: `docs/dataplane.md`.
//!
//! Deadlines cross nodes as *remaining budgets* (µs), never as absolute times, so node
//! clocks need not agree.

use crate::app::AppSpec;
use crate::profile::ProfileRow;
use serde::{Deserialize, Serialize};

/// Largest remaining budget a [`StageRequest`] may carry, µs: one hour, the longest latency
/// SLO an app may have ([`crate::app::MAX_LATENCY_SLO_MS`]). A node refuses a stage with a
/// larger budget (an error reply) rather than compute a deadline from it.
pub const MAX_STAGE_BUDGET_US: u64 = 3_600_000_000;

/// Where every application's tasks run, as of one plan epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// Plan epoch the table was derived from.
    pub epoch: u64,
    /// Applications with at least one placed task.
    pub apps: Vec<AppRoute>,
}

/// One application's routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRoute {
    /// The application's spec (graph, fan-outs, SLOs).
    pub spec: AppSpec,
    /// Per task, in the spec's task order.
    pub tasks: Vec<TaskRoute>,
    /// The paper's stale-drop threshold, ms (§3.3: 20 ms for the social and traffic apps).
    /// Carried for compatibility; queues no longer drop by it (they admit at the entrance
    /// instead, `docs/dataplane.md`).
    pub stale_ms: f64,
    /// Profile rows of the configurations the plan uses (task, variant, MIG profile, MPS;
    /// every batch size), so workers can time batches and queues know batch-1 latency.
    pub profiles: Vec<ProfileRow>,
}

/// One task's instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRoute {
    /// Task name.
    pub task: String,
    /// The task's latency budget L̂(t), ms: the longest a request waits for a batch to fill.
    pub budget_ms: f64,
    /// Fastest possible time for the rest of the graph after this task, ms (early drop).
    pub downstream_ms: f64,
    /// Instances serving the task; items go to them in proportion to `weight`.
    pub targets: Vec<Target>,
}

/// One MIG instance serving a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Node id.
    pub node: String,
    /// Node address (`ip:port`, QUIC).
    pub addr: String,
    /// GPU UUID.
    pub gpu: String,
    /// First memory slice of the instance (identifies it on the GPU).
    pub start: u8,
    /// MIG profile.
    pub mig_profile: String,
    /// Variant it runs.
    pub variant: String,
    /// MPS replicas.
    pub mps: u8,
    /// Largest batch.
    pub batch: u32,
    /// Routing weight, items/s: the load the plan routes to the instance
    /// ([`crate::plan::InstancePlan::load_rps`]), or its profiled throughput when the plan
    /// carries no loads for the task.
    pub weight: f64,
    /// The instance's profiled throughput, items/s (what it can serve).
    #[serde(default)]
    pub capacity_rps: f64,
}

impl Target {
    /// The target for instance `i` at GPU `gpu` of `node`, weighted by its profiled
    /// throughput (see [`Target::by_load`]).
    pub fn of(node: &str, addr: &str, gpu: &str, i: &crate::plan::InstancePlan) -> Target {
        Target {
            node: node.to_string(),
            addr: addr.to_string(),
            gpu: gpu.to_string(),
            start: i.start,
            mig_profile: i.mig_profile.clone(),
            variant: i.variant.clone(),
            mps: i.mps,
            batch: i.batch,
            weight: i.throughput_rps.max(1e-9),
            capacity_rps: i.throughput_rps.max(0.0),
        }
    }

    /// Weight `targets` (one task's, with the planned instances they came from) by the
    /// load the plan routes to each when the plan says (any positive `load_rps`), else keep
    /// the throughput weights of [`Target::of`]. An instance the plan routes nothing to
    /// gets weight 0: it is never picked while another target is open.
    pub fn by_load(targets: &mut [Target], loads: &[f64]) {
        if loads.iter().any(|&l| l > 0.0) {
            for (t, &l) in targets.iter_mut().zip(loads) {
                t.weight = l.max(0.0);
            }
        }
    }
}

impl RoutingTable {
    /// The route of `app`.
    pub fn app(&self, app: &str) -> Option<&AppRoute> {
        self.apps.iter().find(|a| a.spec.name == app)
    }
}

impl AppRoute {
    /// p95 latency of a batch of `n` on the configuration of `t` (ms), interpolated
    /// linearly between profiled batch sizes and extrapolated from the nearest ones.
    pub fn batch_ms(&self, task: &str, t: &Target, n: u32) -> Option<f64> {
        let mut pts: Vec<(u32, f64)> = self
            .profiles
            .iter()
            .filter(|r| r.task == task && r.variant == t.variant && r.mig_profile == t.mig_profile && r.mps == t.mps)
            .map(|r| (r.batch, r.p95_ms))
            .collect();
        pts.sort_by_key(|p| p.0);
        pts.dedup_by_key(|p| p.0);
        batch_latency(&pts, n)
    }
}

/// Linear interpolation over `(batch, ms)` points sorted by batch; `None` when empty.
pub fn batch_latency(pts: &[(u32, f64)], n: u32) -> Option<f64> {
    let (first, last) = (pts.first()?, pts.last()?);
    if pts.len() == 1 {
        return Some(first.1 * f64::from(n.max(1)) / f64::from(first.0.max(1)));
    }
    let seg = match pts.iter().position(|p| p.0 >= n) {
        Some(0) => (pts[0], pts[1]),
        Some(i) => (pts[i - 1], pts[i]),
        None => (pts[pts.len() - 2], *last),
    };
    let ((b0, l0), (b1, l1)) = seg;
    let slope = (l1 - l0) / f64::from(b1.saturating_sub(b0).max(1));
    Some((l0 + slope * (f64::from(n) - f64::from(b0))).max(first.1.min(l0) * 0.5))
}

/// One item of a request, sent to the node hosting the chosen instance.
/// Reply: [`crate::wire::WireMessage::StageReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRequest {
    /// Request id (frontend-unique) and item index within the request.
    pub id: u64,
    /// Item index within the request (fan-out items are numbered by the frontend).
    pub item: u32,
    /// Application.
    pub app: String,
    /// Task.
    pub task: String,
    /// The instance: GPU UUID and start slice.
    pub gpu: String,
    /// Start slice.
    pub start: u8,
    /// Time left until the request's end-to-end deadline, µs, as of sending (at most
    /// [`MAX_STAGE_BUDGET_US`]).
    pub budget_us: u64,
    /// Input values (row-major `f32`); the worker adapts them to its model's input shape.
    pub input: Vec<f32>,
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StageOutcome {
    /// Executed.
    Done {
        /// Output values.
        output: Vec<f32>,
        /// Variant that ran it.
        variant: String,
        /// Time the item spent at the stage (queue + batch), µs.
        stage_us: u64,
    },
    /// Dropped by the instance's queue: it could not meet its deadline.
    EarlyDrop,
    /// Refused by the instance's queue before any work: a root task's instance had already
    /// admitted its share of the app's planned capacity (the name is the paper's stale
    /// drop, which admission replaced; `docs/dataplane.md`).
    StaleDrop,
    /// Not executed: no such instance here (the plan moved on), the worker crashed or failed.
    /// `retry`: another instance of the task may succeed.
    Failed {
        /// What happened.
        message: String,
        /// Whether trying another instance may help.
        retry: bool,
    },
}

/// Reply to a [`StageRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReply {
    /// Request id.
    pub id: u64,
    /// Item index.
    pub item: u32,
    /// Outcome.
    pub outcome: StageOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_latency_interpolates_and_extrapolates() {
        let pts = [(1, 2.0), (4, 5.0), (8, 9.0)];
        assert_eq!(batch_latency(&pts, 1), Some(2.0));
        assert_eq!(batch_latency(&pts, 2), Some(3.0));
        assert_eq!(batch_latency(&pts, 6), Some(7.0));
        assert_eq!(batch_latency(&pts, 10), Some(11.0));
        assert_eq!(batch_latency(&[(4, 8.0)], 2), Some(4.0));
        assert_eq!(batch_latency(&[], 2), None);
    }
}
