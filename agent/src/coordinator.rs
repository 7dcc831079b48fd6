//! The coordinator actor: owns the leadership core ([`Leader`], and in it the pure
//! [`jigsaw_coordinator::control::Control`] of the term this node leads) and executes the
//! actions it returns.
//!
//! Every coordinator-eligible node runs one. On each [`CoordMsg::Tick`] (every `tick_ms`,
//! and at once when a proposal commits or a solve finishes) it reads Raft's metrics: leading
//! in a new term starts a fresh control state, losing the lead drops it. While leading it
//! runs one control step on the committed state and executes the actions, each in a task of
//! its own so the actor never waits on Raft, the planner or a peer:
//! * `Propose`: `client_write` to Raft;
//! * `Solve`: the planner on a blocking thread, then `CommitPlan` through Raft, then
//!   [`CoordMsg::SolveDone`] with the leadership it was started under;
//! * `Push`: the node's part of the plan over the transport, then [`CoordMsg::PushDone`]
//!   with its leadership.
//!
//! A result of another leadership than the one held now is dropped (the core checks, by
//! [`LeadId`]: term and leadership count), so a slow solve or push of an earlier leadership
//! never lands on a later one. The term led is
//! published on a watch channel for the node's other tasks ([`CoordinatorHandle::leading`]).

use crate::core::leader::{HeartbeatVerdict, LeadId, Leader, Transition};
use crate::metrics::{labels, Metrics};
use crate::raft::store::StateMachine;
use crate::raft::{node_id, Raft};
use crate::transport::net::Transport;
use jigsaw_coordinator::cluster_plan::LiveLayouts;
use jigsaw_coordinator::control::{Action, ControlConfig};
use jigsaw_protocol::cluster::{ClusterCommand, ClusterPlan, ClusterState};
use jigsaw_protocol::wire::{ApplyOutcome, Heartbeat, NodeStatus, WireMessage};
use jigsaw_protocol::ProfileRow;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Computes a cluster plan: `(state, epoch, live layouts, observed profiles) → plan`.
pub type PlanFn = Arc<dyn Fn(&ClusterState, u64, &LiveLayouts, &[ProfileRow]) -> ClusterPlan + Send + Sync>;

/// Members as the coordinator sees them, the profile points observed at run time and the
/// measured demand per app.
pub type StatusView = (Vec<NodeStatus>, Vec<ProfileRow>, Vec<jigsaw_protocol::wire::AppDemand>);

/// Messages of the coordinator actor.
pub enum CoordMsg {
    /// Follow Raft leadership and, while leading, run one control step.
    Tick,
    /// A node's heartbeat; the reply says whether this node recorded it as coordinator,
    /// or refused it at the edge.
    Heartbeat {
        /// The heartbeat.
        hb: Heartbeat,
        /// What became of it.
        reply: RpcReplyPort<HeartbeatVerdict>,
    },
    /// A node announced it is leaving; the reply says whether this node recorded it as
    /// coordinator.
    Leave {
        /// The leaving node.
        node: String,
        /// `true`: recorded (the node is marked down at once).
        reply: RpcReplyPort<bool>,
    },
    /// A solve started under `lead` finished (committed or not).
    SolveDone {
        /// The leadership the solve was started under.
        lead: LeadId,
        /// The inputs it planned for.
        inputs: String,
    },
    /// A plan push started under `lead` finished.
    PushDone {
        /// The leadership the push was started under.
        lead: LeadId,
        /// The node pushed to.
        node: String,
        /// The epoch pushed.
        epoch: u64,
        /// Its report, or `None` when no valid answer came back.
        outcome: Option<ApplyOutcome>,
    },
    /// Members and observed profiles, when this node coordinates (`None` otherwise).
    Status {
        /// The answer.
        reply: RpcReplyPort<Option<StatusView>>,
    },
}

/// What the coordinator actor needs.
pub struct CoordinatorArgs<T: Transport> {
    /// This node's id.
    pub name: String,
    /// Tick period, ms.
    pub tick_ms: u64,
    /// Shortest election timeout, ms: a leader whose last quorum ack is older stops
    /// coordinating.
    pub election_min_ms: u64,
    /// Plan push timeout, ms.
    pub push_timeout_ms: u64,
    /// The control loop's other knobs (demand following, re-plan policy).
    pub control: ControlConfig,
    /// The planner.
    pub planner: PlanFn,
    /// Transport for plan pushes.
    pub transport: Arc<T>,
    /// This node's Raft.
    pub raft: Raft,
    /// The state machine (committed state).
    pub sm: StateMachine,
    /// Where the term led is published.
    pub leading: watch::Sender<Option<u64>>,
    /// Where the coordinator as Raft knows it (name, address) is published.
    pub hint: Arc<watch::Sender<Option<(String, String)>>>,
    /// The node's time origin (`now_ms` counts from it).
    pub origin: tokio::time::Instant,
    /// The node's metrics (term, coordinator flag, solve time, heartbeat ages).
    pub metrics: Arc<Metrics>,
}

/// The actor's state.
pub struct CoordinatorState<T: Transport> {
    args: CoordinatorArgs<T>,
    core: Leader,
    /// Proposals, solves and pushes in flight; aborted when the actor stops.
    tasks: JoinSet<()>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// Per node, the last edge verdict that was logged (a node resends its observed rows
    /// with every heartbeat: the same drops are logged once, not every 300 ms).
    logged: std::collections::BTreeMap<String, String>,
}

/// The coordinator actor (see the module docs).
pub struct CoordinatorActor<T>(PhantomData<fn() -> T>);

impl<T> Default for CoordinatorActor<T> {
    fn default() -> Self {
        CoordinatorActor(PhantomData)
    }
}

impl<T: Transport> CoordinatorState<T> {
    fn now_ms(&self) -> u64 {
        tokio::time::Instant::now().duration_since(self.args.origin).as_millis() as u64
    }

    /// Log what the edge check refused or dropped, once per node and change of the fields
    /// at fault (not of the values, which a misbehaving node may vary with every heartbeat).
    fn log_verdict(&mut self, node: &str, verdict: &HeartbeatVerdict) {
        let key = match verdict {
            HeartbeatVerdict::Refused(e) => format!("refused {}", e.field),
            HeartbeatVerdict::Recorded(d) => {
                let fields: Vec<&str> = d.listed.iter().map(|r| r.field.as_str()).collect();
                format!("dropped {} {}", d.count, fields.join(","))
            }
            HeartbeatVerdict::NotLeading => return,
        };
        if self.logged.get(node) == Some(&key) {
            return;
        }
        match verdict {
            HeartbeatVerdict::Refused(e) => tracing::warn!(%node, "{e}"),
            HeartbeatVerdict::Recorded(d) if d.count > 0 => tracing::warn!(%node, "heartbeat accepted, but {d}"),
            _ => {}
        }
        // Bounded: one entry per node (a certificate name) that sent this leader a heartbeat.
        self.logged.insert(node.to_string(), key);
    }

    fn spawn(&mut self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(f);
    }

    /// Raft's view: the term this node leads (with a fresh quorum), and the leader's address.
    fn observe(&mut self) {
        let a = &self.args;
        let m = a.raft.metrics().borrow().clone();
        // openraft 0.9 does not step a leader down when it loses its quorum; a leader cut off
        // from the other voters stops acting as coordinator once its last quorum ack is older
        // than the shortest election timeout (a new leader may exist by then).
        let quorum_fresh = m.millis_since_quorum_ack.is_none_or(|ms| ms < a.election_min_ms);
        let leads = m.current_leader == Some(node_id(&a.name)) && m.state.is_leader() && quorum_fresh;
        let now = self.now_ms();
        match self.core.observe(leads.then_some(m.current_term), now) {
            Transition::Became(l) => {
                tracing::info!(node = %self.args.name, term = l.term, seq = l.seq, "became coordinator")
            }
            Transition::SteppedDown(l) => {
                tracing::info!(node = %self.args.name, term = l.term, "no longer coordinator");
                self.args.metrics.heartbeat_age.clear();
            }
            Transition::None => {}
        }
        let term = self.core.term();
        self.args.metrics.raft_term.set(m.current_term as i64);
        self.args.metrics.is_coordinator.set(i64::from(term.is_some()));
        self.args.leading.send_if_modified(|t| std::mem::replace(t, term) != term);
        if let Some(n) = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned()) {
            self.args.hint.send_replace(Some((n.name, n.addr)));
        }
    }

    fn tick(&mut self, myself: &ActorRef<CoordMsg>) {
        self.observe();
        let state = self.args.sm.snapshot_state().state;
        let now = self.now_ms();
        if let Some((lead, actions)) = self.core.tick(now, &state) {
            self.execute(myself, lead, actions, &state);
        }
        if let Some((members, _, _)) = self.core.status(now, &state) {
            for n in members {
                let age = n.last_seen_ms.map_or(f64::NAN, |ms| ms as f64 / 1e3);
                self.args.metrics.heartbeat_age.get_or_create(&labels(&[("node", &n.node)])).set(age);
            }
        }
    }

    fn execute(&mut self, myself: &ActorRef<CoordMsg>, lead: LeadId, actions: Vec<Action>, state: &ClusterState) {
        for a in actions {
            let me = myself.clone();
            match a {
                Action::Propose(cmd) => {
                    let raft = self.args.raft.clone();
                    self.spawn(async move {
                        match raft.client_write(cmd).await {
                            Ok(_) => {
                                let _ = me.cast(CoordMsg::Tick);
                            }
                            Err(e) => tracing::debug!(%e, "proposal not committed"),
                        }
                    });
                }
                Action::Solve { inputs, epoch } => {
                    let (live, observed) =
                        self.core.control().map(|c| (c.live_layouts(), c.observed_profiles())).unwrap_or_default();
                    let (raft, planner, name, state) =
                        (self.args.raft.clone(), self.args.planner.clone(), self.args.name.clone(), state.clone());
                    let solve_seconds = self.args.metrics.plan_solve_seconds.clone();
                    self.spawn(async move {
                        // HiGHS runs for up to its time limit: keep it off the runtime's workers.
                        let started = std::time::Instant::now();
                        let solved =
                            tokio::task::spawn_blocking(move || planner(&state, epoch, &live, &observed)).await;
                        solve_seconds.set(started.elapsed().as_secs_f64());
                        match solved {
                            Ok(plan) => {
                                tracing::info!(node = %name, epoch, apps = ?plan.apps, "plan computed");
                                match raft.client_write(ClusterCommand::CommitPlan(plan)).await {
                                    Ok(o) => tracing::info!(node = %name, "{}", o.data.message),
                                    Err(e) => tracing::debug!(%e, "plan not committed"),
                                }
                            }
                            Err(e) => tracing::error!(node = %name, epoch, %e, "the planner failed"),
                        }
                        let _ = me.cast(CoordMsg::SolveDone { lead, inputs });
                    });
                }
                Action::Warn(note) => tracing::warn!(node = %self.args.name, "{note}"),
                Action::Push { node, addr, epoch, gpus, routes, phase } => {
                    let (transport, name) = (self.args.transport.clone(), self.args.name.clone());
                    let timeout = Duration::from_millis(self.args.push_timeout_ms);
                    self.spawn(async move {
                        let msg =
                            WireMessage::PlanPush { epoch, coordinator: name, gpus, routes: (*routes).clone(), phase };
                        let outcome = match transport.request(&node, &addr, msg, timeout).await {
                            Ok(WireMessage::PlanReport { outcome, .. }) => Some(outcome),
                            Ok(other) => {
                                tracing::warn!(%node, ?other, "unexpected reply to a plan push");
                                None
                            }
                            Err(e) => {
                                tracing::debug!(%node, %e, "plan push failed");
                                None
                            }
                        };
                        let _ = me.cast(CoordMsg::PushDone { lead, node, epoch, outcome });
                    });
                }
            }
        }
    }
}

impl<T: Transport> Actor for CoordinatorActor<T> {
    type Msg = CoordMsg;
    type State = CoordinatorState<T>;
    type Arguments = CoordinatorArgs<T>;

    async fn pre_start(
        &self,
        myself: ActorRef<CoordMsg>,
        args: CoordinatorArgs<T>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cfg = ControlConfig { push_timeout_ms: args.push_timeout_ms, ..args.control };
        let period = Duration::from_millis(args.tick_ms.max(1));
        let me = myself.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if me.cast(CoordMsg::Tick).is_err() {
                    break;
                }
            }
        });
        Ok(CoordinatorState {
            args,
            core: Leader::new(cfg),
            tasks: JoinSet::new(),
            ticker: Some(ticker),
            logged: std::collections::BTreeMap::new(),
        })
    }

    async fn post_stop(&self, _: ActorRef<CoordMsg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        state.tasks.abort_all();
        state.args.leading.send_replace(None);
        state.args.metrics.is_coordinator.set(0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordMsg>,
        msg: CoordMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordMsg::Tick => state.tick(&myself),
            CoordMsg::Heartbeat { hb, reply } => {
                let now = state.now_ms();
                let node = hb.node.clone();
                let verdict = state.core.heartbeat(now, hb);
                state.log_verdict(&node, &verdict);
                let _ = reply.send(verdict);
            }
            CoordMsg::Leave { node, reply } => {
                let now = state.now_ms();
                let recorded = state.core.leave(now, &node);
                let _ = reply.send(recorded);
                if recorded {
                    tracing::info!(%node, "node is leaving; marking it down now");
                    state.tick(&myself);
                }
            }
            CoordMsg::SolveDone { lead, inputs } => {
                if state.core.solve_done(lead, &inputs) {
                    state.tick(&myself); // push the new plan now, not at the next tick
                } else {
                    tracing::debug!(?lead, "dropped the solve result of another leadership");
                }
            }
            CoordMsg::PushDone { lead, node, epoch, outcome } => {
                let now = state.now_ms();
                if !state.core.push_done(lead, now, &node, epoch, outcome) {
                    tracing::debug!(?lead, %node, epoch, "dropped the push result of another leadership");
                }
            }
            CoordMsg::Status { reply } => {
                let now = state.now_ms();
                let committed = state.args.sm.snapshot_state().state;
                let _ = reply.send(state.core.status(now, &committed));
            }
        }
        Ok(())
    }
}

/// A running coordinator actor.
#[derive(Clone)]
pub struct CoordinatorHandle {
    actor: ActorRef<CoordMsg>,
    leading: watch::Receiver<Option<u64>>,
}

/// Why the coordinator did not answer: it stopped (the node is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the coordinator actor is not running: {0}")]
pub struct CoordinatorGone(String);

impl CoordinatorHandle {
    /// Start the actor.
    pub async fn start<T: Transport>(
        args: CoordinatorArgs<T>,
        leading: watch::Receiver<Option<u64>>,
    ) -> Result<CoordinatorHandle, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn(None, CoordinatorActor::<T>::default(), args).await?;
        Ok(CoordinatorHandle { actor, leading })
    }

    /// The Raft term this node coordinates in, if it does (`None` as well once the actor
    /// has stopped or failed, whatever it last published).
    pub fn leading(&self) -> Option<u64> {
        if self.actor.get_status() != ractor::ActorStatus::Running {
            return None;
        }
        *self.leading.borrow()
    }

    /// Offer a heartbeat: recorded when this node coordinates and the heartbeat passes the
    /// edge check.
    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatVerdict, CoordinatorGone> {
        ractor::call!(self.actor, |reply| CoordMsg::Heartbeat { hb, reply }).map_err(|e| CoordinatorGone(e.to_string()))
    }

    /// `node` is leaving; `true` when this node recorded it as coordinator.
    pub async fn leave(&self, node: &str) -> Result<bool, CoordinatorGone> {
        let node = node.to_string();
        ractor::call!(self.actor, |reply| CoordMsg::Leave { node, reply }).map_err(|e| CoordinatorGone(e.to_string()))
    }

    /// Members and observed profiles, when this node coordinates.
    pub async fn status(&self) -> Result<Option<StatusView>, CoordinatorGone> {
        ractor::call!(self.actor, |reply| CoordMsg::Status { reply }).map_err(|e| CoordinatorGone(e.to_string()))
    }

    /// Run a control step now.
    pub fn kick(&self) {
        let _ = self.actor.cast(CoordMsg::Tick);
    }

    /// Stop the actor and wait until it has (its in-flight tasks are aborted by then).
    pub async fn stop(&self) {
        let _ = self.actor.stop_and_wait(None, Some(Duration::from_secs(5))).await;
    }
}
