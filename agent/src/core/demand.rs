//! The frontend's demand meter: cumulative per-app arrival, completion and SLO-violation
//! counters, and per-task item counters after fan-out, read into heartbeat rows.
//!
//! Design: counters are cumulative since the node started, not per-bucket. The coordinator
//! takes rates from the difference of two heartbeats over the node's own elapsed time
//! (`at_ms`), so a heartbeat lost, delayed or sent twice changes nothing and no bucket
//! boundaries need to agree between nodes; the rows stay one per (app, task), which bounds
//! a heartbeat without a window. Burst structure inside an interval is the dropping
//! policy's business (`core::batch`), not the planner's.
//!
//! Pure: time is passed in (ms since the node started), nothing here reads a clock.

use jigsaw_protocol::heartbeat::MAX_DEMAND_ROWS;
use jigsaw_protocol::wire::DemandRow;
use std::collections::BTreeMap;

/// Counters of one (app, task); `task` is empty for the app's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    arrivals: u64,
    completions: u64,
    violations: u64,
}

/// The meter (see the module docs). At most [`MAX_DEMAND_ROWS`] (app, task) keys are
/// kept (the apps and tasks of the routing table are far fewer); later keys are counted in
/// [`DemandMeter::overflow`] only.
#[derive(Debug, Clone, Default)]
pub struct DemandMeter {
    counts: BTreeMap<(String, String), Counts>,
    overflow: u64,
}

impl DemandMeter {
    fn entry(&mut self, app: &str, task: &str) -> Option<&mut Counts> {
        let key = (app.to_string(), task.to_string());
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_DEMAND_ROWS {
            self.overflow += 1;
            return None;
        }
        Some(self.counts.entry(key).or_default())
    }

    /// A request for `app` arrived (before admission: a request refused as overloaded is
    /// demand all the same).
    pub fn arrive(&mut self, app: &str) {
        if let Some(c) = self.entry(app, "") {
            c.arrivals += 1;
        }
    }

    /// An item of `task` of `app` was sent to a stage (after fan-out).
    pub fn item(&mut self, app: &str, task: &str) {
        if let Some(c) = self.entry(app, task) {
            c.arrivals += 1;
        }
    }

    /// A request for `app` was answered; `violated`: not within its SLO (dropped, late,
    /// overloaded, failed).
    pub fn complete(&mut self, app: &str, violated: bool) {
        if let Some(c) = self.entry(app, "") {
            c.completions += 1;
            c.violations += u64::from(violated);
        }
    }

    /// Events not counted because the key cap was reached.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// The counters as heartbeat rows, read at `now_ms`.
    pub fn rows(&self, now_ms: u64) -> Vec<DemandRow> {
        self.counts
            .iter()
            .map(|((app, task), c)| DemandRow {
                app: app.clone(),
                task: task.clone(),
                at_ms: now_ms,
                arrivals: c.arrivals,
                completions: c.completions,
                violations: c.violations,
            })
            .collect()
    }
}

/// Whether a frontend outcome (`ok` and the `ServeError::outcome` names) is an SLO
/// violation: every answer but `ok`, except the client's own mistakes (`bad_request`,
/// `unknown_app`).
pub fn violates_slo(outcome: &str) -> bool {
    !matches!(outcome, "ok" | "bad_request" | "unknown_app")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accumulate_per_app_and_task() {
        let mut m = DemandMeter::default();
        for _ in 0..3 {
            m.arrive("a");
        }
        m.item("a", "detect");
        m.item("a", "detect");
        m.complete("a", false);
        m.complete("a", true);
        m.arrive("b");
        let rows = m.rows(1_500);
        let get = |app: &str, task: &str| rows.iter().find(|r| r.app == app && r.task == task).cloned();
        let a = get("a", "").expect("row");
        assert_eq!((a.arrivals, a.completions, a.violations, a.at_ms), (3, 2, 1, 1_500));
        assert_eq!(get("a", "detect").map(|r| (r.arrivals, r.completions)), Some((2, 0)));
        assert_eq!(get("b", "").map(|r| r.arrivals), Some(1));
        assert_eq!(rows.len(), 3);
        // Cumulative: a later read never shows less.
        m.arrive("a");
        assert_eq!(m.rows(2_000).iter().find(|r| r.app == "a" && r.task.is_empty()).map(|r| r.arrivals), Some(4));
    }

    #[test]
    fn keys_are_capped() {
        let mut m = DemandMeter::default();
        for i in 0..MAX_DEMAND_ROWS + 10 {
            m.arrive(&format!("app{i}"));
        }
        m.arrive("app0");
        assert_eq!(m.rows(0).len(), MAX_DEMAND_ROWS);
        assert_eq!(m.overflow(), 10);
    }

    #[test]
    fn violations_are_server_side_failures() {
        for o in ["early_drop", "stale_drop", "deadline_miss", "overloaded", "unavailable", "error"] {
            assert!(violates_slo(o), "{o}");
        }
        for o in ["ok", "bad_request", "unknown_app"] {
            assert!(!violates_slo(o), "{o}");
        }
    }
}
