//! The coordinator's leadership core: which Raft term this node leads, and the control
//! state of that term only.
//!
//! A node becomes coordinator when Raft makes it leader and loses the role when Raft does
//! (or its quorum goes stale). Each leadership gets a fresh [`Control`] and a [`LeadId`]:
//! its Raft term and a sequence number that grows with every leadership of this node (a
//! leader whose quorum went stale and came back leads the same term again, as a new
//! leadership). Every result the shell computes asynchronously (a solve, a plan push)
//! carries the `LeadId` it was started under; a result of another leadership is dropped, so
//! a slow solve or push of an earlier one never lands on a later one's state. Plain data,
//! no clocks: time is passed in.

use jigsaw_coordinator::control::{Action, Control, ControlConfig};
use jigsaw_protocol::cluster::ClusterState;
use jigsaw_protocol::heartbeat::{Dropped, InvalidHeartbeat};
use jigsaw_protocol::wire::{AppDemand, ApplyOutcome, Heartbeat, NodeStatus};
use jigsaw_protocol::ProfileRow;

/// One leadership of this node: the Raft term and this node's leadership count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeadId {
    /// The Raft term led.
    pub term: u64,
    /// Leaderships of this node before this one.
    pub seq: u64,
}

/// What an observation of Raft changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing.
    None,
    /// This node now leads.
    Became(LeadId),
    /// This node no longer leads.
    SteppedDown(LeadId),
}

/// What became of a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatVerdict {
    /// This node does not lead: the sender should ask the coordinator instead.
    NotLeading,
    /// Refused whole at the edge (an implausible inventory); nothing of it was recorded.
    Refused(InvalidHeartbeat),
    /// Recorded, less the observed rows listed here.
    Recorded(Dropped),
}

impl HeartbeatVerdict {
    /// Whether this node recorded it as coordinator.
    pub fn recorded(&self) -> bool {
        matches!(self, HeartbeatVerdict::Recorded(_))
    }
}

/// Leadership and the fenced control state.
#[derive(Debug, Clone)]
pub struct Leader {
    cfg: ControlConfig,
    seq: u64,
    lead: Option<(LeadId, Control)>,
}

impl Leader {
    /// Not leading.
    pub fn new(cfg: ControlConfig) -> Leader {
        Leader { cfg, seq: 0, lead: None }
    }

    /// The leadership this node holds now.
    pub fn lead(&self) -> Option<LeadId> {
        self.lead.as_ref().map(|l| l.0)
    }

    /// The term this node leads now.
    pub fn term(&self) -> Option<u64> {
        self.lead().map(|l| l.term)
    }

    /// Raft says this node leads `leading` (a term) or nothing. A new term, even right
    /// after another, starts a new leadership with a fresh control state.
    pub fn observe(&mut self, leading: Option<u64>, now_ms: u64) -> Transition {
        match (self.lead(), leading) {
            (Some(a), Some(b)) if a.term == b => Transition::None,
            (None, None) => Transition::None,
            (_, Some(term)) => {
                let id = LeadId { term, seq: self.seq };
                self.seq += 1;
                self.lead = Some((id, Control::new(self.cfg, now_ms)));
                Transition::Became(id)
            }
            (Some(id), None) => {
                self.lead = None;
                Transition::SteppedDown(id)
            }
        }
    }

    /// A heartbeat arrived: checked and recorded by the control state when this node leads.
    pub fn heartbeat(&mut self, now_ms: u64, hb: Heartbeat) -> HeartbeatVerdict {
        match &mut self.lead {
            Some((_, c)) => match c.heartbeat(now_ms, hb) {
                Ok(dropped) => HeartbeatVerdict::Recorded(dropped),
                Err(e) => HeartbeatVerdict::Refused(e),
            },
            None => HeartbeatVerdict::NotLeading,
        }
    }

    /// `node` announced it is leaving; `false` when this node does not lead.
    pub fn leave(&mut self, now_ms: u64, node: &str) -> bool {
        match &mut self.lead {
            Some((_, c)) => {
                c.leave(now_ms, node);
                true
            }
            None => false,
        }
    }

    /// One control step; the actions are tagged with the leadership they belong to.
    pub fn tick(&mut self, now_ms: u64, state: &ClusterState) -> Option<(LeadId, Vec<Action>)> {
        let (id, c) = self.lead.as_mut()?;
        Some((*id, c.tick(now_ms, state)))
    }

    /// A solve started under `lead` finished; `false` when it was dropped as stale.
    pub fn solve_done(&mut self, lead: LeadId, inputs: &str) -> bool {
        match &mut self.lead {
            Some((t, c)) if *t == lead => {
                c.solve_done(inputs);
                true
            }
            _ => false,
        }
    }

    /// A push started under `lead` finished; `false` when it was dropped as stale.
    pub fn push_done(
        &mut self,
        lead: LeadId,
        now_ms: u64,
        node: &str,
        epoch: u64,
        outcome: Option<ApplyOutcome>,
    ) -> bool {
        match &mut self.lead {
            Some((t, c)) if *t == lead => {
                c.push_done(now_ms, node, epoch, outcome);
                true
            }
            _ => false,
        }
    }

    /// The control state of the current term.
    pub fn control(&self) -> Option<&Control> {
        self.lead.as_ref().map(|l| &l.1)
    }

    /// Members as the coordinator sees them, the observed profiles and the measured
    /// demand, when leading.
    #[allow(clippy::type_complexity)]
    pub fn status(
        &self,
        now_ms: u64,
        state: &ClusterState,
    ) -> Option<(Vec<NodeStatus>, Vec<ProfileRow>, Vec<AppDemand>)> {
        self.control().map(|c| (c.status(now_ms, state), c.observed_profiles(), c.demand_status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::cluster::{AppEntry, ClusterCommand, GpuInventory};
    use jigsaw_protocol::GpuModel;

    fn hb(node: &str) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            addr: format!("{node}:1"),
            eligible: true,
            gpus: vec![GpuInventory { uuid: format!("GPU-{node}"), model: GpuModel::H100_80gb, live: Vec::new() }],
            applied_epoch: 0,
            observed: Vec::new(),
            demand: Vec::new(),
        }
    }

    fn solve_of(actions: &[Action]) -> Option<String> {
        actions.iter().find_map(|a| match a {
            Action::Solve { inputs, .. } => Some(inputs.clone()),
            _ => None,
        })
    }

    /// Tick until the control state asks for a solve, committing its proposals to `state`.
    fn until_solve(l: &mut Leader, state: &mut ClusterState, now: &mut u64) -> (LeadId, String) {
        for _ in 0..100 {
            *now += 100;
            let (lead, actions) = l.tick(*now, state).expect("leading");
            if let Some(i) = solve_of(&actions) {
                return (lead, i);
            }
            for a in &actions {
                if let Action::Propose(cmd) = a {
                    state.apply(cmd);
                }
            }
        }
        panic!("no solve requested");
    }

    #[test]
    fn leadership_follows_raft_and_a_new_term_starts_fresh() {
        let mut l = Leader::new(ControlConfig::default());
        assert_eq!(l.observe(None, 0), Transition::None);
        assert_eq!(l.heartbeat(0, hb("n1")), HeartbeatVerdict::NotLeading);
        assert_eq!(l.observe(Some(3), 0), Transition::Became(LeadId { term: 3, seq: 0 }));
        assert_eq!(l.observe(Some(3), 10), Transition::None);
        assert!(l.heartbeat(10, hb("n1")).recorded());
        let twice = Heartbeat { gpus: [hb("n1").gpus, hb("n1").gpus].concat(), ..hb("n1") };
        assert!(matches!(l.heartbeat(11, twice), HeartbeatVerdict::Refused(e) if e.field == "gpus[1].uuid"));
        assert_eq!(l.control().map(|c| c.live_layouts().len()), Some(1));
        // Re-elected in a later term without an observed gap: fresh state, new term.
        assert_eq!(l.observe(Some(5), 20), Transition::Became(LeadId { term: 5, seq: 1 }));
        assert_eq!(l.control().map(|c| c.live_layouts().len()), Some(0), "fresh control state");
        assert_eq!(l.term(), Some(5));
        assert_eq!(l.observe(None, 30), Transition::SteppedDown(LeadId { term: 5, seq: 1 }));
        assert!(l.tick(30, &ClusterState::default()).is_none());
        // Back in the same term (a stale quorum recovered): a new leadership all the same.
        assert_eq!(l.observe(Some(5), 40), Transition::Became(LeadId { term: 5, seq: 2 }));
    }

    #[test]
    fn results_of_another_leadership_are_dropped() {
        let mut state = ClusterState::default();
        state.apply(&ClusterCommand::PutApp(AppEntry {
            name: "a".into(),
            spec_toml: String::new(),
            profiles_csv: String::new(),
            demand_rps: 1.0,
            demand_auto: false,
        }));
        let mut l = Leader::new(ControlConfig { solve_timeout_ms: 1_000_000, ..ControlConfig::default() });
        let mut now = 0;
        l.observe(Some(1), now);
        assert!(l.heartbeat(now, hb("n1")).recorded());
        let (first, inputs) = until_solve(&mut l, &mut state, &mut now);
        assert_eq!(first.term, 1);
        for next_term in [2, 2] {
            // Leadership moves on (a new term, then the same term after a stale quorum)
            // while the earlier leadership's solve is still running.
            l.observe(None, now);
            l.observe(Some(next_term), now);
            assert!(l.heartbeat(now, hb("n1")).recorded());
            let (lead, again) = until_solve(&mut l, &mut state, &mut now);
            assert_eq!((lead.term, &again), (next_term, &inputs), "the new leadership solves for itself");
            // The earlier leadership's results arrive late: dropped, so this one still waits
            // for its own solve (it neither asks again nor takes the old answer for its own).
            assert!(!l.solve_done(first, &inputs));
            assert!(!l.push_done(first, now, "n1", 1, None));
            let (_, actions) = l.tick(now + 100, &state).expect("leading");
            assert_eq!(solve_of(&actions), None, "this leadership's own solve is still outstanding");
            // Its own result lands; with the inputs still unplanned the next tick asks again.
            assert!(l.solve_done(lead, &again));
            let (_, actions) = l.tick(now + 200, &state).expect("leading");
            assert_eq!(solve_of(&actions).as_ref(), Some(&inputs));
        }
    }
}
