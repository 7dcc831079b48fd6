//! The node's Prometheus metrics (`GET /metrics` on the inference HTTP port), with the
//! `prometheus-client` crate: OpenMetrics text, no hand-written exposition.
//!
//! Every metric is a lock-free handle; the parts of the node that own the numbers update
//! them (the frontend per request, each instance's queue driver per batch, the coordinator
//! actor per tick and solve, the GPU actors per MIG reconfiguration, the heartbeat task per
//! heartbeat). Derived values (served accuracy, queue depth, busy ratio) are filled in from
//! their owners right before each scrape. The catalogue, with units and label meanings, is
//! `docs/metrics.md`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label set: `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// A gauge of `f64`.
pub type GaugeF = Gauge<f64, AtomicU64>;

/// `[(k, v), ...]` as a label set.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn latency_buckets() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn batch_buckets() -> Histogram {
    // 1, 2, 4, … 256 items.
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

/// Every metric a node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `jigsaw_requests_total{app,outcome}`.
    pub requests: Family<Labels, Counter>,
    /// `jigsaw_request_duration_seconds{app}`.
    pub request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// `jigsaw_served_accuracy{app}`.
    pub served_accuracy: Family<Labels, GaugeF>,
    /// `jigsaw_accuracy_slo{app}`.
    pub accuracy_slo: Family<Labels, GaugeF>,
    /// `jigsaw_demand_rps{app}`.
    pub demand_rps: Family<Labels, GaugeF>,
    /// `jigsaw_queue_depth{app,task,mig_instance}`.
    pub queue_depth: Family<Labels, Gauge>,
    /// `jigsaw_instance_busy_ratio{gpu,mig_instance}`.
    pub busy_ratio: Family<Labels, GaugeF>,
    /// `jigsaw_batch_size{app,task}`.
    pub batch_size: Family<Labels, Histogram, fn() -> Histogram>,
    /// `jigsaw_plan_epoch`.
    pub plan_epoch: Gauge,
    /// `jigsaw_plan_solve_seconds`.
    pub plan_solve_seconds: GaugeF,
    /// `jigsaw_raft_term`.
    pub raft_term: Gauge,
    /// `jigsaw_is_coordinator`.
    pub is_coordinator: Gauge,
    /// `jigsaw_member_heartbeat_age_seconds{node}`.
    pub heartbeat_age: Family<Labels, GaugeF>,
    /// `jigsaw_mig_reconfigurations_total{outcome}`.
    pub mig_reconfigurations: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `jigsaw_` prefix.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("jigsaw");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_buckets),
            served_accuracy: Family::default(),
            accuracy_slo: Family::default(),
            demand_rps: Family::default(),
            queue_depth: Family::default(),
            busy_ratio: Family::default(),
            batch_size: Family::new_with_constructor(batch_buckets),
            plan_epoch: Gauge::default(),
            plan_solve_seconds: GaugeF::default(),
            raft_term: Gauge::default(),
            is_coordinator: Gauge::default(),
            heartbeat_age: Family::default(),
            mig_reconfigurations: Family::default(),
            registry: Registry::default(),
        };
        r.register("requests", "Requests this node's frontend answered, by outcome", m.requests.clone());
        r.register(
            "request_duration_seconds",
            "End-to-end latency of requests this frontend answered (every outcome)",
            m.request_duration.clone(),
        );
        r.register(
            "served_accuracy",
            "Accuracy the app was served with: product of the per-task average accuracy of the variants that ran its requests, over its paths weighted as the planner weights them",
            m.served_accuracy.clone(),
        );
        r.register("accuracy_slo", "The app's accuracy SLO", m.accuracy_slo.clone());
        r.register(
            "demand_rps",
            "Requests per second arriving at this frontend for the app (last 10 s)",
            m.demand_rps.clone(),
        );
        r.register("queue_depth", "Requests waiting in a local instance's queue", m.queue_depth.clone());
        r.register(
            "instance_busy_ratio",
            "Share of the last window a local MIG instance's MPS replicas spent running batches (0-1)",
            m.busy_ratio.clone(),
        );
        r.register("batch_size", "Items per batch run by the app's task on this node", m.batch_size.clone());
        r.register("plan_epoch", "Plan epoch this node has applied", m.plan_epoch.clone());
        r.register(
            "plan_solve_seconds",
            "Wall time of the latest plan solve on this node (coordinator only)",
            m.plan_solve_seconds.clone(),
        );
        r.register("raft_term", "Raft term this node knows (coordinator-eligible nodes)", m.raft_term.clone());
        r.register("is_coordinator", "1 while this node is the coordinator", m.is_coordinator.clone());
        r.register(
            "member_heartbeat_age_seconds",
            "Seconds since the coordinator last heard from each member (coordinator only)",
            m.heartbeat_age.clone(),
        );
        r.register(
            "mig_reconfigurations",
            "MIG instance creations and destructions on this node's GPUs, by outcome",
            m.mig_reconfigurations.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_labels() {
        let m = Metrics::new();
        m.requests.get_or_create(&labels(&[("app", "traffic"), ("outcome", "ok")])).inc();
        m.request_duration.get_or_create(&labels(&[("app", "traffic")])).observe(0.2);
        m.plan_epoch.set(7);
        m.served_accuracy.get_or_create(&labels(&[("app", "traffic")])).set(0.93);
        let text = m.render();
        assert!(text.contains("jigsaw_requests_total{app=\"traffic\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("jigsaw_plan_epoch 7"), "{text}");
        assert!(text.contains("jigsaw_request_duration_seconds_bucket{le=\"0.256\",app=\"traffic\"} 1"), "{text}");
        assert!(text.contains("jigsaw_served_accuracy{app=\"traffic\"} 0.93"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
