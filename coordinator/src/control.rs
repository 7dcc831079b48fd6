//! The coordinator's control loop as a pure state machine.
//!
//! The node that leads the Raft group creates a [`Control`] when it becomes leader and drops
//! it when it stops leading. The shell feeds it heartbeats, push results and the committed
//! [`ClusterState`], with the current time in milliseconds, and executes the [`Action`]s that
//! [`Control::tick`] returns: propose a command to Raft, solve a new plan (off the control
//! loop, with HiGHS), or push a node its part of the committed plan. Nothing here reads a
//! clock, opens a socket or calls a solver.
//!
//! Rules:
//! * **Membership.** A heartbeat from a node whose replicated [`Member`] record differs
//!   (new node, new address or GPUs, or marked down) yields a `PutMember` proposal. A member
//!   silent for `dead_after_ms` yields `MarkDown`; silence is measured from the later of its
//!   last heartbeat and the moment this node became leader, so a new leader gives everyone
//!   one full period before declaring them dead.
//! * **Plans.** When the committed plan's inputs ([`ClusterState::plan_inputs`]) differ from
//!   the current ones and membership is settled (no proposal of this tick), ask for a solve
//!   of epoch `epoch + 1`. A solve result that lost a race is rejected by the state machine
//!   (epochs grow by exactly one), and the next tick asks again.
//! * **Distribution.** Once the committed plan is for the current inputs, every alive member
//!   that has sent a heartbeat to this leader goes through the epoch's make-before-break
//!   transition ([`crate::transition`]): make, switch routes, break, final routes, each step
//!   pushed once every such member finished the one before; one push in flight per node. A push that failed, was refused, found the node busy or got no answer
//!   is sent again after `retry_ms` (`push_timeout_ms` without an answer); the last outcome is
//!   kept for `status`.
//! * **Observed profiles.** Heartbeats carry profile points measured at run time; the latest
//!   per configuration is kept and handed to the planner at the next re-plan (observations
//!   alone do not trigger one, so noisy measurements cannot make plans flap).
//! * **Demand.** Heartbeats carry each node's cumulative arrival, completion and
//!   SLO-violation counters per app (and arrivals per task after fan-out). Every
//!   `policy.interval_ms` the leader closes a control interval: per app, the measured rate
//!   is the sum over nodes of the counter increase since the last close over the node's
//!   own elapsed time (a node restarted, with counters gone down, is skipped for that
//!   interval); it feeds the app's forecaster ([`crate::forecast`]), and the re-plan policy
//!   ([`crate::replan`]) decides from planned demand, forecast, measured rate and violation
//!   rate (not counted for the interval a plan transition starts in, nor the next) whether
//!   to propose `SetDemand`, and holds back while a transition is still running. The committed demand changes `plan_inputs`, so the re-plan
//!   runs like any other: every voter plans from the same committed demand. The
//!   forecasters live on the leader only; a new leader starts them afresh (and waits
//!   `warmup_intervals` before deciding).
//! * **The edge.** Every heartbeat is checked first ([`check_heartbeat`]) against the
//!   registered apps' tasks and variants (followed at each tick): an implausible inventory
//!   refuses it whole, so nothing of it is recorded; bad observed rows (non-finite, zero or
//!   absurd figures, unknown keys, over the cap) are dropped and the rest recorded.

use crate::forecast::{AnyForecaster, Forecaster, ForecasterKind};
use crate::replan::{Decision, DemandView, ReplanPolicy};
use crate::routing::routing_table;
use crate::transition::{Transition, STEPS};
use jigsaw_protocol::cluster::{ClusterCommand, ClusterState, GpuInventory, Member};
use jigsaw_protocol::heartbeat::{check_heartbeat, Dropped, InvalidHeartbeat, KnownKeys};
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::route::RoutingTable;
use jigsaw_protocol::wire::{AppDemand, ApplyOutcome, DemandRow, Heartbeat, NodeStatus, PushPhase};
use jigsaw_protocol::{GpuModel, ProfileRow};
use std::collections::BTreeMap;

/// Timing knobs, and how demand is followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlConfig {
    /// Re-send a push that got no answer after this long, ms.
    pub push_timeout_ms: u64,
    /// Re-propose a membership change not yet visible in the state after this long, ms.
    pub propose_retry_ms: u64,
    /// Ask again for a solve whose result never arrived after this long, ms.
    pub solve_timeout_ms: u64,
    /// Push an epoch again this long after a node reported it failed or still in progress, ms.
    pub retry_ms: u64,
    /// Follow measured demand (`false`: plan for the registered demand only).
    pub follow_demand: bool,
    /// The forecaster of every app.
    pub forecaster: ForecasterKind,
    /// When to re-plan for a new demand.
    pub policy: ReplanPolicy,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            push_timeout_ms: 10_000,
            propose_retry_ms: 2_000,
            solve_timeout_ms: 120_000,
            retry_ms: 5_000,
            follow_demand: true,
            forecaster: ForecasterKind::Holt,
            policy: ReplanPolicy::default(),
        }
    }
}

/// One app's demand as the leader follows it.
#[derive(Debug, Clone)]
struct AppDemandState {
    forecaster: AnyForecaster,
    intervals: u64,
    measured: Option<f64>,
    forecast: Option<f64>,
    violations: Option<(f64, u64)>,
    tasks: Vec<(String, f64)>,
    last_change_ms: Option<u64>,
}

/// (node, app, task) of a demand row.
type DemandKey = (String, String, String);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Propose this command to the Raft group.
    Propose(ClusterCommand),
    /// Compute the plan of epoch `epoch` for the current state, then propose `CommitPlan`
    /// and call [`Control::solve_done`].
    Solve {
        /// The inputs being planned for.
        inputs: String,
        /// The epoch to commit.
        epoch: u64,
    },
    /// Push `node` its part of epoch `epoch`, then call [`Control::push_done`].
    Push {
        /// Node id.
        node: String,
        /// Its address.
        addr: String,
        /// Epoch.
        epoch: u64,
        /// Target per GPU UUID.
        gpus: BTreeMap<String, Vec<InstancePlan>>,
        /// The routing table the push carries (see [`PushPhase`]).
        routes: std::sync::Arc<RoutingTable>,
        /// The transition step it asks for.
        phase: PushPhase,
    },
    /// Log this (a transition had to fall back: no free capacity for some new instances).
    Warn(String),
}

#[derive(Debug, Clone)]
struct Seen {
    at_ms: u64,
    hb: Heartbeat,
}

/// The leader's volatile control state.
#[derive(Debug, Clone)]
pub struct Control {
    cfg: ControlConfig,
    since_ms: u64,
    seen: BTreeMap<String, Seen>,
    /// Per node: (epoch, transition step, sent at) of the push in flight.
    in_flight: BTreeMap<String, (u64, u8, u64)>,
    transition: Option<Transition>,
    /// When the latest transition started, ms.
    transition_since_ms: Option<u64>,
    /// Whether every node taking part finished the latest transition.
    transition_done: bool,
    acked: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, (u64, ApplyOutcome)>,
    retry_at: BTreeMap<String, u64>,
    proposed: BTreeMap<String, (ClusterCommand, u64)>,
    solving: Option<(String, u64)>,
    observed: BTreeMap<(String, String, GpuModel, String, u8, u32), ProfileRow>,
    routes: Option<std::sync::Arc<RoutingTable>>,
    /// Nodes that announced they are leaving, with when.
    leaving: BTreeMap<String, u64>,
    /// The registered apps' (task, variant) pairs, as of the last tick.
    known: KnownKeys,
    /// Latest demand counters per (node, app, task), and those at the last interval close.
    demand_latest: BTreeMap<DemandKey, DemandRow>,
    demand_base: BTreeMap<DemandKey, DemandRow>,
    /// Per app: forecaster and last interval's figures.
    demand: BTreeMap<String, AppDemandState>,
    /// When the current control interval closes, ms.
    next_close_ms: u64,
}

/// Longest a running plan transition holds demand changes back, ms.
pub const TRANSITION_HOLD_MAX_MS: u64 = 60_000;

/// Heartbeats from a node this soon after it announced it is leaving are stale (sent before
/// the announcement); a later one means it came back.
pub const LEAVE_QUIET_MS: u64 = 2_000;

impl Control {
    /// A fresh control state for a node that became leader at `now_ms`.
    pub fn new(cfg: ControlConfig, now_ms: u64) -> Control {
        Control {
            cfg,
            since_ms: now_ms,
            seen: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            transition: None,
            transition_since_ms: None,
            transition_done: true,
            acked: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            retry_at: BTreeMap::new(),
            proposed: BTreeMap::new(),
            solving: None,
            observed: BTreeMap::new(),
            routes: None,
            leaving: BTreeMap::new(),
            known: KnownKeys::default(),
            demand_latest: BTreeMap::new(),
            demand_base: BTreeMap::new(),
            demand: BTreeMap::new(),
            next_close_ms: now_ms + cfg.policy.interval_ms,
        }
    }

    /// `node` announced at `now_ms` that it is shutting down: it is marked down at the next
    /// tick instead of after `dead_after_ms` of silence, so the re-plan moves its work away
    /// while it drains.
    pub fn leave(&mut self, now_ms: u64, node: &str) {
        self.leaving.insert(node.to_string(), now_ms);
        self.seen.remove(node);
        self.in_flight.remove(node);
    }

    /// A heartbeat arrived. It is checked first: `Err` refuses it whole (nothing of it is
    /// recorded; the error names the field); `Ok` says which observed rows were dropped.
    pub fn heartbeat(&mut self, now_ms: u64, hb: Heartbeat) -> Result<Dropped, InvalidHeartbeat> {
        let checked = check_heartbeat(hb, &self.known)?;
        self.record(now_ms, checked.hb);
        Ok(checked.dropped)
    }

    fn record(&mut self, now_ms: u64, hb: Heartbeat) {
        if let Some(&at) = self.leaving.get(&hb.node) {
            if now_ms.saturating_sub(at) < LEAVE_QUIET_MS {
                return; // sent before the node announced it was leaving
            }
            self.leaving.remove(&hb.node); // it came back
        }
        for r in &hb.observed {
            let key = (r.task.clone(), r.variant.clone(), r.gpu, r.mig_profile.clone(), r.mps, r.batch);
            self.observed.insert(key, r.clone());
        }
        for r in &hb.demand {
            let key = (hb.node.clone(), r.app.clone(), r.task.clone());
            match self.demand_latest.get(&key) {
                // Newer and grown: the usual case.
                Some(l) if r.at_ms > l.at_ms && r.arrivals >= l.arrivals && r.completions >= l.completions => {}
                // Counters went down: the node restarted; start its interval over.
                Some(l) if r.arrivals < l.arrivals || r.completions < l.completions => {
                    self.demand_base.insert(key.clone(), r.clone());
                }
                // The same reading again (a resent heartbeat) or an older one.
                Some(_) => continue,
                None => {}
            }
            self.demand_latest.insert(key, r.clone());
        }
        let acked = self.acked.entry(hb.node.clone()).or_default();
        // A restarted node may report less than before; trust its latest word.
        *acked = hb.applied_epoch;
        if let Some(t) = &mut self.transition {
            t.heard(&hb.node, hb.applied_epoch);
        }
        self.seen.insert(hb.node.clone(), Seen { at_ms: now_ms, hb });
    }

    /// A push finished at `now_ms`: `Some(outcome)` from the node, `None` when it could not
    /// be reached (re-sent after `push_timeout_ms`).
    pub fn push_done(&mut self, now_ms: u64, node: &str, epoch: u64, outcome: Option<ApplyOutcome>) {
        let mut step = None;
        if self.in_flight.get(node).map(|f| f.0) == Some(epoch) {
            step = self.in_flight.remove(node).map(|f| f.1);
        }
        if let (Some(t), Some(s), Some(o)) = (&mut self.transition, step, &outcome) {
            if t.epoch() == epoch {
                match o {
                    ApplyOutcome::Prepared { deferred } => t.finished(node, s, Some(deferred.clone())),
                    ApplyOutcome::Applied => t.finished(node, s, (s == 1).then(Vec::new)),
                    _ => {}
                }
            }
        }
        let Some(outcome) = outcome else {
            self.retry_at.insert(node.to_string(), now_ms + self.cfg.push_timeout_ms);
            return;
        };
        match &outcome {
            ApplyOutcome::Applied if step.is_some_and(|s| STEPS[usize::from(s.max(1)) - 1] == PushPhase::Routes) => {
                self.retry_at.remove(node);
            }
            ApplyOutcome::Applied => {
                let a = self.acked.entry(node.to_string()).or_default();
                *a = (*a).max(epoch);
                self.retry_at.remove(node);
            }
            ApplyOutcome::Prepared { .. } => {
                self.retry_at.remove(node);
            }
            // Already past it, or still applying it (a duplicate push), or it failed or was
            // refused: its heartbeats tell which; push again after a pause if still needed.
            ApplyOutcome::Stale { .. } | ApplyOutcome::Failed { .. } | ApplyOutcome::Rejected { .. } => {
                self.retry_at.insert(node.to_string(), now_ms + self.cfg.retry_ms);
            }
        }
        if !matches!(outcome, ApplyOutcome::Stale { .. }) {
            self.outcomes.insert(node.to_string(), (epoch, outcome));
        }
    }

    /// The solve for `inputs` finished (committed or not).
    pub fn solve_done(&mut self, inputs: &str) {
        if self.solving.as_ref().map(|s| s.0.as_str()) == Some(inputs) {
            self.solving = None;
        }
    }

    /// Profile points observed at run time (latest per configuration, any node).
    pub fn observed_profiles(&self) -> Vec<ProfileRow> {
        self.observed.values().cloned().collect()
    }

    /// Live layouts from the latest heartbeats, for sticky placement.
    pub fn live_layouts(&self) -> BTreeMap<(String, String), Vec<InstancePlan>> {
        let mut out = BTreeMap::new();
        for (node, s) in &self.seen {
            for g in &s.hb.gpus {
                out.insert((node.clone(), g.uuid.clone()), g.live.clone());
            }
        }
        out
    }

    fn member_of(&self, hb: &Heartbeat) -> Member {
        Member {
            node: hb.node.clone(),
            addr: hb.addr.clone(),
            eligible: hb.eligible,
            gpus: hb.gpus.iter().map(|g| GpuInventory { uuid: g.uuid.clone(), model: g.model, live: vec![] }).collect(),
            alive: true,
        }
    }

    fn propose(&mut self, now_ms: u64, key: String, cmd: ClusterCommand, out: &mut Vec<Action>) {
        if let Some((c, at)) = self.proposed.get(&key) {
            if *c == cmd && now_ms.saturating_sub(*at) < self.cfg.propose_retry_ms {
                return;
            }
        }
        self.proposed.insert(key, (cmd.clone(), now_ms));
        out.push(Action::Propose(cmd));
    }

    /// Decide what to do now, given the committed state.
    pub fn tick(&mut self, now_ms: u64, state: &ClusterState) -> Vec<Action> {
        self.known.refresh(&state.apps);
        let mut out = Vec::new();
        let dead_after = state.config.dead_after_ms;
        // Membership: joins and changes.
        let fresh: Vec<Heartbeat> =
            self.seen.values().filter(|s| now_ms.saturating_sub(s.at_ms) < dead_after).map(|s| s.hb.clone()).collect();
        for hb in &fresh {
            let want = self.member_of(hb);
            if state.members.get(&hb.node) != Some(&want) {
                self.propose(now_ms, format!("member/{}", hb.node), ClusterCommand::PutMember(want), &mut out);
            }
        }
        // Failure detection.
        for m in state.alive_members() {
            let last = self.seen.get(&m.node).map_or(0, |s| s.at_ms).max(self.since_ms);
            if self.leaving.contains_key(&m.node) || now_ms.saturating_sub(last) >= dead_after {
                let cmd = ClusterCommand::MarkDown { node: m.node.clone() };
                self.propose(now_ms, format!("member/{}", m.node), cmd, &mut out);
            }
        }
        // Demand: close the control interval, forecast, maybe propose a new demand.
        if now_ms >= self.next_close_ms {
            self.next_close_ms = now_ms + self.cfg.policy.interval_ms;
            self.close_interval(now_ms, state, &mut out);
        }
        // Re-plan once membership and demand are settled.
        let inputs = state.plan_inputs();
        let current = state.plan.as_ref().map(|p| p.inputs.as_str());
        let wanted = current != Some(inputs.as_str()) && (state.plan.is_some() || !state.apps.is_empty());
        if let Some((_, at)) = &self.solving {
            if now_ms.saturating_sub(*at) >= self.cfg.solve_timeout_ms {
                self.solving = None;
            }
        }
        if out.is_empty() && wanted && self.solving.is_none() {
            self.solving = Some((inputs.clone(), now_ms));
            out.push(Action::Solve { inputs: inputs.clone(), epoch: state.epoch + 1 });
        }
        // Distribution of the committed plan, once it is for the current inputs (a plan made
        // before a node left or returned would wrongly empty or fill that node's GPUs).
        if let Some(plan) = state.plan.as_ref().filter(|p| p.inputs == inputs) {
            if self.routes.as_ref().is_none_or(|r| r.epoch != plan.epoch) {
                let previous = self.routes.take();
                let full = std::sync::Arc::new(routing_table(state, plan));
                let mut t = Transition::new(full.clone(), previous);
                for (node, s) in &self.seen {
                    t.heard(node, s.hb.applied_epoch);
                }
                self.transition = Some(t);
                self.transition_since_ms = Some(now_ms);
                self.transition_done = false;
                self.routes = Some(full);
            }
            // Taking part: alive members this leader has heard from. One that went silent
            // still holds the others back until it is marked down (it may still route to the
            // old instances); one never heard from has not told what it applied yet.
            let nodes: Vec<&str> =
                state.alive_members().filter(|m| self.seen.contains_key(&m.node)).map(|m| m.node.as_str()).collect();
            let fresh =
                |m: &Member| self.seen.get(&m.node).is_some_and(|s| now_ms.saturating_sub(s.at_ms) < dead_after);
            let Some(t) = self.transition.as_ref() else { return out };
            self.transition_done |= nodes.iter().all(|n| t.done(n) >= crate::transition::LAST);
            let mut pushes = Vec::new();
            for m in state.alive_members().filter(|m| fresh(m)) {
                if self.retry_at.get(&m.node).is_some_and(|&t| now_ms < t) {
                    continue; // failed, refused, unreachable or busy: retried after a pause
                }
                if let Some((e, _, at)) = self.in_flight.get(&m.node) {
                    if *e >= plan.epoch && now_ms.saturating_sub(*at) < self.cfg.push_timeout_ms {
                        continue;
                    }
                }
                let Some(step) = t.next(&m.node, &nodes) else { continue };
                let (routes, notes) = t.routes_for(step, &nodes);
                for n in notes {
                    out.push(Action::Warn(format!("plan epoch {}: {n}", plan.epoch)));
                }
                pushes.push((m.node.clone(), step));
                out.push(Action::Push {
                    node: m.node.clone(),
                    addr: m.addr.clone(),
                    epoch: plan.epoch,
                    gpus: plan.nodes.get(&m.node).cloned().unwrap_or_default(),
                    routes,
                    phase: STEPS[usize::from(step) - 1],
                });
            }
            for (node, step) in pushes {
                self.in_flight.insert(node, (plan.epoch, step, now_ms));
            }
        }
        out
    }

    /// Close a control interval at `now_ms` (see the module docs).
    fn close_interval(&mut self, now_ms: u64, state: &ClusterState, out: &mut Vec<Action>) {
        // Forget apps that are gone and nodes that are down.
        let alive = |node: &str| state.members.get(node).is_none_or(|m| m.alive);
        self.demand_latest.retain(|(n, a, _), _| state.apps.contains_key(a) && alive(n));
        self.demand_base.retain(|k, _| self.demand_latest.contains_key(k));
        self.demand.retain(|a, _| state.apps.contains_key(a));
        // Per (app, task): Σ over nodes of Δcount / Δt, and Δcompletions, Δviolations.
        let mut rates: BTreeMap<(String, String), (f64, u64, u64)> = BTreeMap::new();
        for (key, l) in &self.demand_latest {
            let Some(b) = self.demand_base.get(key) else { continue };
            if l.at_ms <= b.at_ms || l.arrivals < b.arrivals {
                continue;
            }
            let dt_s = (l.at_ms - b.at_ms) as f64 / 1000.0;
            let e = rates.entry((key.1.clone(), key.2.clone())).or_default();
            e.0 += (l.arrivals - b.arrivals) as f64 / dt_s;
            e.1 += l.completions.saturating_sub(b.completions);
            e.2 += l.violations.saturating_sub(b.violations);
        }
        self.demand_base = self.demand_latest.clone();
        // A transition moves capacity during the interval it starts in and, finishing with
        // drains of up to a few seconds, often the next one: their violations are its.
        let since = |t: u64| now_ms.saturating_sub(t);
        let transition_recent = self.transition_since_ms.is_some_and(|t| since(t) <= 2 * self.cfg.policy.interval_ms);
        // A transition that does not finish (a node never answers) holds demand changes
        // back for at most `TRANSITION_HOLD_MAX_MS`.
        let transition_running =
            !self.transition_done && self.transition_since_ms.is_some_and(|t| since(t) < TRANSITION_HOLD_MAX_MS);
        for (name, entry) in &state.apps {
            let d = self.demand.entry(name.clone()).or_insert_with(|| AppDemandState {
                forecaster: self.cfg.forecaster.build(),
                intervals: 0,
                measured: None,
                forecast: None,
                violations: None,
                tasks: vec![],
                last_change_ms: None,
            });
            let Some(&(rate, completions, violations)) = rates.get(&(name.clone(), String::new())) else {
                continue; // no frontend measured this app over the interval
            };
            d.forecaster.observe(rate);
            d.intervals += 1;
            d.measured = Some(rate);
            let forecast = d.forecaster.predict();
            d.forecast = Some(forecast);
            d.violations = (completions > 0).then(|| (violations as f64 / completions as f64, completions));
            d.tasks = rates
                .iter()
                .filter(|((a, t), _)| a == name && !t.is_empty())
                .map(|((_, t), r)| (t.clone(), r.0))
                .collect();
            if !self.cfg.follow_demand {
                continue;
            }
            let view = DemandView {
                planned: entry.demand_rps,
                forecast,
                violations: d.violations,
                measured: rate,
                transition_recent,
                transition_running,
                floor: state.floor_rps(name).unwrap_or(jigsaw_protocol::cluster::MIN_PLANNED_RPS),
                intervals: d.intervals,
                now_ms,
                last_change_ms: d.last_change_ms,
            };
            if let Decision::Set { rps, reason } = self.cfg.policy.decide(&view) {
                d.last_change_ms = Some(now_ms);
                let cmd = ClusterCommand::SetDemand { app: name.clone(), rps, reason: reason.to_string() };
                self.proposed.insert(format!("demand/{name}"), (cmd.clone(), now_ms));
                out.push(Action::Propose(cmd));
            }
        }
    }

    /// Per app: measured, forecast and violation figures of the last control interval.
    pub fn demand_status(&self) -> Vec<AppDemand> {
        self.demand
            .iter()
            .map(|(app, d)| AppDemand {
                app: app.clone(),
                measured_rps: d.measured,
                forecast_rps: d.forecast,
                violation_rate: d.violations.map(|v| v.0),
                tasks: d.tasks.clone(),
                intervals: d.intervals,
            })
            .collect()
    }

    /// Per-node status as this leader sees it.
    pub fn status(&self, now_ms: u64, state: &ClusterState) -> Vec<NodeStatus> {
        let mut names: Vec<&String> = state.members.keys().chain(self.seen.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let s = self.seen.get(n);
                NodeStatus {
                    node: n.clone(),
                    last_seen_ms: s.map(|s| now_ms.saturating_sub(s.at_ms)),
                    // From the heartbeat, so it describes the same moment as `gpus`.
                    applied_epoch: s.map_or(0, |s| s.hb.applied_epoch),
                    gpus: s.map(|s| s.hb.gpus.clone()).unwrap_or_default(),
                    last_outcome: self.outcomes.get(n).cloned(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::cluster::{AppEntry, ClusterPlan};

    /// A plan of `epoch` for `inputs` that places nothing.
    fn empty_plan(epoch: u64, inputs: String) -> ClusterPlan {
        ClusterPlan { epoch, inputs, nodes: BTreeMap::new(), apps: vec![], stats: Default::default() }
    }

    fn hb(node: &str, applied: u64) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            addr: format!("{node}:1"),
            eligible: true,
            gpus: vec![GpuInventory { uuid: format!("GPU-{node}"), model: GpuModel::H100_80gb, live: vec![] }],
            applied_epoch: applied,
            observed: vec![],
            demand: vec![],
        }
    }

    fn apply_all(state: &mut ClusterState, actions: &[Action]) {
        for a in actions {
            if let Action::Propose(c) = a {
                state.apply(c);
            }
        }
    }

    /// Node `a` answers every push in `actions` at once (each transition step done, nothing
    /// deferred); returns the highest epoch it applied, or `applied`.
    fn answer_pushes(c: &mut Control, now_ms: u64, actions: &[Action], applied: u64) -> u64 {
        let mut applied = applied;
        for a in actions {
            if let Action::Push { node, epoch, phase, .. } = a {
                let outcome = match phase {
                    PushPhase::Make => ApplyOutcome::Prepared { deferred: vec![] },
                    _ => ApplyOutcome::Applied,
                };
                if *phase == PushPhase::Break {
                    applied = applied.max(*epoch);
                }
                c.push_done(now_ms, node, *epoch, Some(outcome));
            }
        }
        applied
    }

    #[test]
    fn join_plan_push_and_death() {
        let mut st = ClusterState::default();
        let mut c = Control::new(ControlConfig::default(), 0);
        c.heartbeat(10, hb("a", 0)).expect("valid");
        c.heartbeat(10, hb("b", 0)).expect("valid");
        let acts = c.tick(10, &st);
        assert_eq!(acts.iter().filter(|a| matches!(a, Action::Propose(ClusterCommand::PutMember(_)))).count(), 2);
        assert!(!acts.iter().any(|a| matches!(a, Action::Solve { .. })), "no solve while membership changes");
        apply_all(&mut st, &acts);
        assert!(c.tick(20, &st).is_empty(), "no apps, no plan: nothing to do");
        st.apply(&ClusterCommand::PutApp(AppEntry {
            name: "x".into(),
            spec_toml: String::new(),
            profiles_csv: String::new(),
            demand_rps: 1.0,
            demand_auto: false,
        }));
        let acts = c.tick(30, &st);
        let Some(Action::Solve { inputs, epoch }) = acts.first().cloned() else { panic!("solve expected: {acts:?}") };
        assert_eq!(epoch, 1);
        assert!(c.tick(31, &st).is_empty(), "one solve at a time");
        let plan = ClusterPlan {
            epoch,
            inputs: inputs.clone(),
            nodes: BTreeMap::new(),
            apps: vec![],
            stats: Default::default(),
        };
        st.apply(&ClusterCommand::CommitPlan(plan));
        c.solve_done(&inputs);
        let acts = c.tick(40, &st);
        assert_eq!(acts.iter().filter(|a| matches!(a, Action::Push { epoch: 1, .. })).count(), 2);
        assert!(c.tick(41, &st).is_empty(), "one push in flight per node");
        c.push_done(41, "a", 1, Some(ApplyOutcome::Applied));
        c.push_done(41, "b", 1, None);
        let acts = c.tick(41 + 10_000, &st);
        // a is silent since t=10 and b too: both are marked down, nothing pushed or solved.
        assert!(acts.iter().all(|a| matches!(a, Action::Propose(ClusterCommand::MarkDown { .. }))), "{acts:?}");
        c.heartbeat(10_100, hb("b", 0)).expect("valid");
        let acts = c.tick(10_100, &st);
        assert!(!acts.iter().any(|a| matches!(a, Action::Propose(_))), "MarkDown(a) is debounced: {acts:?}");
        assert!(acts.iter().any(|a| matches!(a, Action::Push { node, .. } if node == "b")), "timed-out push re-sent");
    }

    /// A committed plan goes out in the four transition steps, each once every node finished
    /// the one before; a node that applied the epoch (its heartbeat says so) skips to the end.
    #[test]
    fn a_plan_is_distributed_as_a_make_before_break_transition() {
        let mut st = ClusterState::default();
        let mut c = Control::new(ControlConfig::default(), 0);
        c.heartbeat(0, hb("a", 0)).expect("valid");
        c.heartbeat(0, hb("b", 0)).expect("valid");
        let acts = c.tick(0, &st);
        apply_all(&mut st, &acts);
        let inputs = st.plan_inputs();
        st.apply(&ClusterCommand::CommitPlan(empty_plan(1, inputs)));
        let phases = |acts: &[Action]| -> Vec<(String, PushPhase)> {
            acts.iter()
                .filter_map(|a| match a {
                    Action::Push { node, phase, .. } => Some((node.clone(), *phase)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(phases(&c.tick(1, &st)), vec![("a".into(), PushPhase::Make), ("b".into(), PushPhase::Make)]);
        c.push_done(2, "a", 1, Some(ApplyOutcome::Prepared { deferred: vec![] }));
        assert!(phases(&c.tick(3, &st)).is_empty(), "a waits until b made its instances");
        c.push_done(4, "b", 1, Some(ApplyOutcome::Prepared { deferred: vec![("GPU-b".into(), 0)] }));
        assert_eq!(phases(&c.tick(5, &st)).len(), 2, "both switch routes");
        c.push_done(6, "a", 1, Some(ApplyOutcome::Applied));
        c.push_done(6, "b", 1, Some(ApplyOutcome::Applied));
        assert_eq!(phases(&c.tick(7, &st)), vec![("a".into(), PushPhase::Break), ("b".into(), PushPhase::Break)]);
        c.push_done(8, "a", 1, Some(ApplyOutcome::Applied));
        c.push_done(8, "b", 1, Some(ApplyOutcome::Applied));
        assert_eq!(phases(&c.tick(9, &st)), vec![("a".into(), PushPhase::Routes), ("b".into(), PushPhase::Routes)]);
        c.push_done(10, "a", 1, Some(ApplyOutcome::Applied));
        c.push_done(10, "b", 1, Some(ApplyOutcome::Applied));
        assert!(phases(&c.tick(11, &st)).is_empty(), "done");
        // A new leader: a node whose heartbeat says it applied the epoch only gets the routes.
        let mut fresh = Control::new(ControlConfig::default(), 20);
        fresh.heartbeat(20, hb("a", 1)).expect("valid");
        fresh.heartbeat(20, hb("b", 0)).expect("valid");
        assert_eq!(phases(&fresh.tick(21, &st)), vec![("b".into(), PushPhase::Make)], "a waits for b to catch up");
    }

    #[test]
    fn a_leaving_node_is_marked_down_at_once_and_rejoins_when_it_returns() {
        let mut st = ClusterState::default();
        let mut c = Control::new(ControlConfig::default(), 0);
        c.heartbeat(10, hb("a", 0)).expect("valid");
        c.heartbeat(10, hb("b", 0)).expect("valid");
        let acts = c.tick(10, &st);
        apply_all(&mut st, &acts);
        assert_eq!(st.alive_members().count(), 2);
        c.leave(100, "b");
        let acts = c.tick(110, &st);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Propose(ClusterCommand::MarkDown { node }) if node == "b")),
            "marked down at once, not after the heartbeat timeout: {acts:?}"
        );
        apply_all(&mut st, &acts);
        // A heartbeat it sent before leaving arrives late: ignored.
        c.heartbeat(150, hb("b", 0)).expect("valid");
        assert!(c.tick(200, &st).iter().all(|a| !matches!(a, Action::Propose(ClusterCommand::PutMember(_)))));
        // Restarted and heartbeating again: it rejoins.
        c.heartbeat(100 + LEAVE_QUIET_MS + 1, hb("b", 0)).expect("valid");
        let acts = c.tick(100 + LEAVE_QUIET_MS + 2, &st);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Propose(ClusterCommand::PutMember(m)) if m.node == "b" && m.alive)),
            "{acts:?}"
        );
    }

    /// The social example app registered, and a row of a configuration it registers.
    fn social() -> (ClusterState, ProfileRow) {
        let csv = include_str!("../../examples/profiles/social-h100-80gb.csv");
        let row = jigsaw_protocol::ProfileTable::parse_csv(csv, "social").expect("csv").rows().next().cloned();
        let mut st = ClusterState::default();
        st.apply(&ClusterCommand::PutApp(AppEntry {
            name: "social".into(),
            spec_toml: include_str!("../../examples/apps/social.toml").into(),
            profiles_csv: csv.into(),
            demand_rps: 10.0,
            demand_auto: false,
        }));
        (st, row.expect("a row"))
    }

    #[test]
    fn observed_profiles_keep_the_latest_point_per_configuration() {
        let (st, r) = social();
        let mut c = Control::new(ControlConfig::default(), 0);
        let _ = c.tick(0, &st);
        let row = |p95_ms: f64| ProfileRow { p95_ms, ..r.clone() };
        c.heartbeat(0, Heartbeat { observed: vec![row(5.0)], ..hb("a", 0) }).expect("valid");
        c.heartbeat(1, Heartbeat { observed: vec![row(7.0)], ..hb("b", 0) }).expect("valid");
        c.heartbeat(2, hb("a", 0)).expect("valid");
        assert_eq!(c.observed_profiles(), vec![row(7.0)]);
    }

    /// Poisoned measurements never reach the planner's observed set, and an implausible
    /// inventory is refused whole (the node is not even recorded as seen).
    #[test]
    fn bad_heartbeats_do_not_reach_the_planner() {
        let (st, r) = social();
        let mut c = Control::new(ControlConfig::default(), 0);
        let _ = c.tick(0, &st);
        let row = |p95_ms: f64, throughput_rps: f64| ProfileRow { p95_ms, throughput_rps, ..r.clone() };
        let mut observed = vec![row(f64::NAN, 10.0), row(0.0, 10.0), row(1e300, 10.0), row(5.0, 0.0), row(5.0, 1e300)];
        observed.extend((0..10_000).map(|i| ProfileRow { task: format!("junk-{i}"), ..r.clone() }));
        let dropped = c.heartbeat(1, Heartbeat { observed, ..hb("a", 0) }).expect("accepted: only rows are bad");
        assert_eq!(dropped.count, 10_005);
        assert!(dropped.to_string().contains("observed[0].p95_ms"), "{dropped}");
        assert_eq!(c.observed_profiles(), vec![], "nothing of it reaches the planner");
        assert_eq!(c.status(1, &st).len(), 1, "the node itself is recorded");

        let gpus = (0..10_000)
            .map(|i| GpuInventory { uuid: format!("GPU-{i}"), model: GpuModel::H100_80gb, live: vec![] })
            .collect();
        let e =
            c.heartbeat(2, Heartbeat { gpus, observed: vec![row(5.0, 10.0)], ..hb("big", 0) }).expect_err("refused");
        assert_eq!(e.field, "gpus");
        assert!(c.status(2, &st).iter().all(|n| n.node != "big"), "a refused heartbeat records nothing");
        assert_eq!(c.observed_profiles(), vec![]);
        let acts = c.tick(3, &st);
        assert!(!acts.iter().any(|a| matches!(a, Action::Propose(ClusterCommand::PutMember(m)) if m.node == "big")));
    }

    /// Load measured at the frontends (heartbeat counters) leads, after the warm-up
    /// intervals, to a `SetDemand` proposal; once committed, the plan inputs change and a
    /// solve follows. Steady load after that does not re-plan again (hysteresis); a node
    /// restart (counters reset) does not read as a drop in demand.
    #[test]
    fn measured_demand_leads_to_set_demand_and_then_a_solve() {
        let (mut st, _) = social();
        let mut c = Control::new(ControlConfig::default(), 0);
        // 100 req/s from t=0 on node `a`, registered at 10 req/s.
        let beat = |t: u64, since: u64| {
            let n = (t - since) / 10; // 100 req/s
            let row = DemandRow {
                app: "social".into(),
                task: String::new(),
                at_ms: t - since,
                arrivals: n,
                completions: n,
                violations: 0,
            };
            Heartbeat { demand: vec![row], ..hb("a", 0) }
        };
        let mut set = vec![];
        let mut solved_for = vec![];
        let mut applied = 0;
        for t in (0..=200_000u64).step_by(1_000) {
            // The node restarts at t = 120 s: its counters start again from zero.
            let since = if t >= 120_000 { 120_000 } else { 0 };
            c.heartbeat(t, Heartbeat { applied_epoch: applied, ..beat(t, since) }).expect("valid");
            let acts = c.tick(t, &st);
            applied = answer_pushes(&mut c, t, &acts, applied);
            for a in &acts {
                match a {
                    Action::Propose(ClusterCommand::SetDemand { app, rps, reason }) => {
                        set.push((t, app.clone(), *rps, reason.clone()))
                    }
                    Action::Solve { inputs, epoch } => {
                        solved_for.push(inputs.clone());
                        st.apply(&ClusterCommand::CommitPlan(empty_plan(*epoch, inputs.clone())));
                        c.solve_done(inputs);
                    }
                    _ => {}
                }
            }
            apply_all(&mut st, &acts);
        }
        // Intervals close at 10, 20, 30, 40 s; the first has no earlier reading, so the
        // third measured interval (at 40 s) is the first decision.
        assert_eq!(set.len(), 1, "{set:?}");
        let (t, app, rps, reason) = &set[0];
        assert_eq!((*t, app.as_str()), (40_000, "social"));
        assert!((105.0..=130.0).contains(rps), "forecast of 100 req/s plus headroom and margin: {rps}");
        assert_eq!(reason, "forecast above the band");
        assert_eq!(st.apps["social"].demand_rps, *rps);
        assert!(solved_for.last().is_some_and(|i| i.contains(&format!("app=social@{rps}#"))), "{solved_for:?}");
        let d = &c.demand_status()[0];
        assert!(d.measured_rps.is_some_and(|r| (r - 100.0).abs() < 1.0), "{d:?}");
        assert_eq!(d.violation_rate, Some(0.0));
    }

    /// The first demand change (when, rps, reason) of an 8 req/s stream of which a fifth
    /// violates the SLO, over 60 s with 10 s intervals; with `plan_at`, a plan for the
    /// current inputs is committed then (so its transition starts), and with `answer` the
    /// node finishes every step of it at once.
    fn first_slo_change(plan_at: Option<u64>, answer: bool) -> Option<(u64, f64, String)> {
        let (mut st, _) = social();
        let cfg = ControlConfig {
            policy: ReplanPolicy { warmup_intervals: 1, ..ReplanPolicy::default() },
            ..ControlConfig::default()
        };
        let mut c = Control::new(cfg, 0);
        let mut set = None;
        let mut applied = 0;
        for t in (0..=60_000u64).step_by(1_000) {
            if plan_at == Some(t) {
                let inputs = st.plan_inputs();
                st.apply(&ClusterCommand::CommitPlan(empty_plan(st.epoch + 1, inputs)));
            }
            let n = t / 125; // 8 req/s: inside the band around the registered 10
            let row = DemandRow {
                app: "social".into(),
                task: String::new(),
                at_ms: t,
                arrivals: n,
                completions: n,
                violations: n / 5,
            };
            c.heartbeat(t, Heartbeat { demand: vec![row], ..hb("a", applied) }).expect("valid");
            let acts = c.tick(t, &st);
            if answer {
                applied = answer_pushes(&mut c, t, &acts, applied);
            }
            for a in &acts {
                if let Action::Propose(ClusterCommand::SetDemand { rps, reason, .. }) = a {
                    set.get_or_insert((t, *rps, reason.clone()));
                }
            }
            apply_all(&mut st, &acts);
        }
        set
    }

    /// SLO violations measured at the frontends add capacity even at a steady rate, except
    /// while a plan transition moves capacity.
    #[test]
    fn slo_violations_add_capacity() {
        let (t, rps, reason) = first_slo_change(None, true).expect("a demand change");
        assert_eq!(reason, "SLO violations");
        assert!(rps >= 10.5, "more than the registered 10 req/s: {rps}");
        // The interval closing at 10 s has no earlier reading; the next one decides.
        assert_eq!(t, 20_000);
        // A transition starting at 15 s owns the intervals closing at 20 and 30 s.
        let (t, _, reason) = first_slo_change(Some(15_000), true).expect("a demand change");
        assert_eq!((t, reason.as_str()), (40_000, "SLO violations"));
        // A transition no node finishes holds every change back (for up to a minute).
        assert_eq!(first_slo_change(Some(15_000), false), None);
    }

    #[test]
    fn failed_push_is_retried_after_a_pause_and_new_leader_grants_grace() {
        let mut st = ClusterState::default();
        let mut c = Control::new(ControlConfig::default(), 0);
        c.heartbeat(0, hb("a", 0)).expect("valid");
        let acts = c.tick(0, &st);
        apply_all(&mut st, &acts);
        let inputs = st.plan_inputs();
        st.apply(&ClusterCommand::CommitPlan(empty_plan(1, inputs)));
        assert_eq!(c.tick(1, &st).len(), 1);
        c.push_done(2, "a", 1, Some(ApplyOutcome::Failed { gpu: "g".into(), error: "boom".into() }));
        assert!(c.tick(3, &st).is_empty(), "no immediate retry");
        assert!(matches!(c.status(3, &st)[0].last_outcome, Some((1, ApplyOutcome::Failed { .. }))));
        c.heartbeat(4_000, hb("a", 0)).expect("valid");
        assert!(c.tick(4_000, &st).is_empty(), "still pausing");
        let acts = c.tick(5_002, &st);
        assert!(matches!(acts.as_slice(), [Action::Push { epoch: 1, .. }]), "retried after the pause: {acts:?}");
        // A new leader at t=100_000 does not declare `a` dead before a full period passes.
        let mut fresh = Control::new(ControlConfig::default(), 100_000);
        // (the committed plan is current; nothing to push until `a` heartbeats this leader)
        assert!(fresh.tick(100_000 + 2_999, &st).is_empty());
        assert_eq!(fresh.tick(103_000, &st), vec![Action::Propose(ClusterCommand::MarkDown { node: "a".into() })]);
    }
}
