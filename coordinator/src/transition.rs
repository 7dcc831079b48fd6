//! The make-before-break transition of one plan epoch, as a pure core of the leader's
//! [`crate::control::Control`] (protocol: `docs/transitions.md`).
//!
//! Every node taking part goes through four steps, each pushed only once every node taking
//! part finished the step before:
//! 1. [`PushPhase::Make`]: create and start the new instances that fit in free slots; keep
//!    serving and routing as before. The node answers which of its target instances do not
//!    serve yet (`deferred`: reassigned, or waiting for occupied slots).
//! 2. [`PushPhase::Routes`] with the *switch table*: the epoch's table without the targets
//!    that do not serve yet; a task left with none keeps the previous epoch's targets (the
//!    staged fallback, reported as a note), which still serve until step 3.
//! 3. [`PushPhase::Break`]: drain (wait for in-flight items), stop and destroy what the epoch
//!    no longer has; restart reassigned instances; create the late ones. When every node
//!    finished it, the last old instance is gone: the transition is complete.
//! 4. [`PushPhase::Routes`] with the epoch's full table (the late instances serve now).
//!
//! A re-pushed step is harmless (nodes re-run it idempotently), so after a leader change
//! the new leader simply starts every node that has not applied the epoch at step 1 again
//! (its heartbeat says whether it applied it; a node that did starts at step 4).

use jigsaw_protocol::route::RoutingTable;
use jigsaw_protocol::wire::PushPhase;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Steps of a transition, by number (1-based: step `s` is `STEPS[s - 1]`).
pub const STEPS: [PushPhase; 4] = [PushPhase::Make, PushPhase::Routes, PushPhase::Break, PushPhase::Routes];

/// The step after which the epoch's old instances are all gone.
pub const BROKEN: u8 = 3;

/// The last step.
pub const LAST: u8 = STEPS.len() as u8;

/// Where one epoch's transition stands.
#[derive(Debug, Clone)]
pub struct Transition {
    epoch: u64,
    full: Arc<RoutingTable>,
    previous: Option<Arc<RoutingTable>>,
    done: BTreeMap<String, u8>,
    deferred: BTreeMap<String, Vec<(String, u8)>>,
}

impl Transition {
    /// The transition to epoch `full.epoch`, from the table `previous` (None: unknown, e.g.
    /// on a new leader; then a task whose new instances all wait has no fallback).
    pub fn new(full: Arc<RoutingTable>, previous: Option<Arc<RoutingTable>>) -> Transition {
        Transition { epoch: full.epoch, full, previous, done: BTreeMap::new(), deferred: BTreeMap::new() }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch's full routing table.
    pub fn full(&self) -> &Arc<RoutingTable> {
        &self.full
    }

    /// Steps `node` finished (0 ..= [`LAST`]).
    pub fn done(&self, node: &str) -> u8 {
        self.done.get(node).copied().unwrap_or(0)
    }

    /// `node` finished `step`; `deferred` comes with step 1 (its target instances that do
    /// not serve yet). A report of a step it already passed changes nothing.
    pub fn finished(&mut self, node: &str, step: u8, deferred: Option<Vec<(String, u8)>>) {
        if let Some(d) = deferred {
            self.deferred.insert(node.to_string(), d);
        }
        let d = self.done.entry(node.to_string()).or_default();
        *d = (*d).max(step.min(LAST));
    }

    /// `node` says (heartbeat) whether it applied the epoch: applied means it is at least
    /// past step [`BROKEN`]; not applied while recorded past it means it lost its state (a
    /// fresh data dir), so it starts over.
    pub fn heard(&mut self, node: &str, applied_epoch: u64) {
        if applied_epoch >= self.epoch {
            if self.done(node) < BROKEN {
                self.deferred.insert(node.to_string(), Vec::new());
                self.done.insert(node.to_string(), BROKEN);
            }
        } else if self.done(node) >= BROKEN {
            self.done.remove(node);
            self.deferred.remove(node);
        }
    }

    /// The step to push `node` now, if any: the one after what it finished, once every node
    /// of `nodes` (those taking part: alive, heard from) finished the one before.
    pub fn next(&self, node: &str, nodes: &[&str]) -> Option<u8> {
        let step = self.done(node) + 1;
        if step > LAST {
            return None;
        }
        nodes.iter().all(|n| self.done(n) + 1 >= step).then_some(step)
    }

    /// Whether every node of `nodes` is past step [`BROKEN`] (no old instance left).
    pub fn broken(&self, nodes: &[&str]) -> bool {
        nodes.iter().all(|n| self.done(n) >= BROKEN)
    }

    /// The table a push of `step` carries, with the notes of staged fallbacks (tasks routed
    /// to their previous instances because none of their new ones serves yet).
    pub fn routes_for(&self, step: u8, nodes: &[&str]) -> (Arc<RoutingTable>, Vec<String>) {
        if step != 2 {
            return (self.full.clone(), Vec::new());
        }
        let unprepared: BTreeSet<&str> = nodes.iter().copied().filter(|n| self.done(n) < 1).collect();
        let (t, notes) = switch_table(&self.full, self.previous.as_deref(), &self.deferred, &unprepared);
        (Arc::new(t), notes)
    }
}

/// The switch table: `full` without the targets that do not serve yet (on a node of
/// `unprepared`, or named in that node's `deferred`); a task left with no target keeps the
/// targets it had in `previous`, and is named in the notes (`app/task`).
pub fn switch_table(
    full: &RoutingTable,
    previous: Option<&RoutingTable>,
    deferred: &BTreeMap<String, Vec<(String, u8)>>,
    unprepared: &BTreeSet<&str>,
) -> (RoutingTable, Vec<String>) {
    let mut t = full.clone();
    let mut notes = Vec::new();
    for app in &mut t.apps {
        for task in &mut app.tasks {
            let had = task.targets.len();
            task.targets.retain(|g| {
                !unprepared.contains(g.node.as_str())
                    && !deferred.get(&g.node).is_some_and(|d| d.iter().any(|(gpu, s)| *gpu == g.gpu && *s == g.start))
            });
            if task.targets.is_empty() && had > 0 {
                let old = previous
                    .and_then(|p| p.app(&app.spec.name))
                    .and_then(|a| a.tasks.iter().find(|x| x.task == task.task))
                    .map(|x| x.targets.clone())
                    .unwrap_or_default();
                let how =
                    if old.is_empty() { "no instance serves it until the break" } else { "kept on its old instances" };
                notes.push(format!(
                    "{}/{}: no free capacity for its new instances; {how} (shortest safe order: drain, destroy, create)",
                    app.spec.name, task.task
                ));
                task.targets = old;
            }
        }
    }
    (t, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::route::{AppRoute, Target, TaskRoute};
    use jigsaw_protocol::testing::{variant, AppToml};

    fn target(node: &str, start: u8) -> Target {
        let i = jigsaw_protocol::testing::instance("a", "1g.10gb", start);
        Target::of(node, "addr", &format!("GPU-{node}"), &i)
    }

    fn table(epoch: u64, targets: Vec<Target>) -> RoutingTable {
        let toml = AppToml::new("x", 100.0, 0.5).task("a", vec![variant("v", 0.9, "resnet", 1.0)]).build();
        let spec = jigsaw_protocol::AppSpec::parse(&toml, "x").expect("parses");
        let task = TaskRoute { task: "a".into(), budget_ms: 1.0, downstream_ms: 0.0, targets };
        RoutingTable { epoch, apps: vec![AppRoute { spec, tasks: vec![task], stale_ms: 20.0, profiles: vec![] }] }
    }

    #[test]
    fn steps_advance_together_and_the_switch_table_holds_only_serving_targets() {
        let old = Arc::new(table(1, vec![target("a", 0)]));
        let new = Arc::new(table(2, vec![target("a", 4), target("b", 0), target("b", 6)]));
        let mut t = Transition::new(new, Some(old));
        let nodes = ["a", "b"];
        assert_eq!(t.next("a", &nodes), Some(1));
        t.finished("a", 1, Some(vec![]));
        assert_eq!(t.next("a", &nodes), None, "waits for b's make");
        t.finished("b", 1, Some(vec![("GPU-b".into(), 6)]));
        assert_eq!(t.next("a", &nodes), Some(2));
        let (sw, notes) = t.routes_for(2, &nodes);
        let got: Vec<(String, u8)> = sw.apps[0].tasks[0].targets.iter().map(|g| (g.node.clone(), g.start)).collect();
        assert_eq!(got, vec![("a".into(), 4), ("b".into(), 0)], "b/6 is deferred, the old a/0 is left");
        assert!(notes.is_empty());
        t.finished("a", 2, None);
        assert_eq!(t.next("a", &nodes), None, "no break before every node switched");
        t.finished("b", 2, None);
        assert_eq!(t.next("b", &nodes), Some(3));
        assert!(!t.broken(&nodes));
        t.finished("a", 3, None);
        t.finished("b", 3, None);
        assert!(t.broken(&nodes));
        assert_eq!(t.routes_for(4, &nodes).0.apps[0].tasks[0].targets.len(), 3, "the full table at the end");
        t.finished("a", 4, None);
        assert_eq!(t.next("a", &nodes), None, "done");
    }

    #[test]
    fn a_task_with_no_serving_target_stays_on_its_old_instances_and_says_so() {
        let old = table(1, vec![target("a", 0)]);
        let new = table(2, vec![target("a", 0)]);
        let deferred: BTreeMap<String, Vec<(String, u8)>> = [("a".to_string(), vec![("GPU-a".to_string(), 0)])].into();
        let (sw, notes) = switch_table(&new, Some(&old), &deferred, &BTreeSet::new());
        assert_eq!(sw.apps[0].tasks[0].targets, old.apps[0].tasks[0].targets);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("x/a") && notes[0].contains("no free capacity"), "{}", notes[0]);
        let (sw, notes) = switch_table(&new, None, &BTreeMap::new(), &["a"].into());
        assert!(sw.apps[0].tasks[0].targets.is_empty(), "an unprepared node's targets are left out");
        assert!(notes[0].contains("no instance serves it"), "{}", notes[0]);
    }

    #[test]
    fn heartbeats_skip_applied_nodes_ahead_and_restart_nodes_that_lost_their_state() {
        let mut t = Transition::new(Arc::new(table(5, vec![])), None);
        t.heard("a", 5);
        assert_eq!(t.done("a"), BROKEN, "a node that applied the epoch only needs the final routes");
        assert_eq!(t.next("a", &["a"]), Some(LAST));
        t.heard("a", 0);
        assert_eq!(t.done("a"), 0, "it lost the epoch: start over");
        t.finished("a", 1, Some(vec![]));
        t.heard("a", 4);
        assert_eq!(t.done("a"), 1, "an older applied epoch mid-transition is expected");
    }
}
