//! The coordinator's leadership core: which Raft term this node leads, and the control
//! state of that term only.
//!
//! A node becomes coordinator when Raft makes it leader and loses the role when Raft does
//! (or its quorum goes stale). Each leadership gets a fresh [`Control`], and every result
//! that the shell computes asynchronously (a solve, a plan push) carries the term it was
//! started in: a result from another term is dropped, so a slow solve or push of an
//! earlier leadership never lands on a later one's state. Plain data, no clocks: time is
//! passed in.

use jigsaw_coordinator::control::{Action, Control, ControlConfig};
use jigsaw_protocol::cluster::ClusterState;
use jigsaw_protocol::wire::{ApplyOutcome, Heartbeat, NodeStatus};
use jigsaw_protocol::ProfileRow;

/// What an observation of Raft changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing.
    None,
    /// This node now leads `term`.
    Became {
        /// The term led.
        term: u64,
    },
    /// This node no longer leads `term`.
    SteppedDown {
        /// The term that was led.
        term: u64,
    },
}

/// Leadership and the term-fenced control state.
#[derive(Debug, Clone)]
pub struct Leader {
    cfg: ControlConfig,
    lead: Option<(u64, Control)>,
}

impl Leader {
    /// Not leading.
    pub fn new(cfg: ControlConfig) -> Leader {
        Leader { cfg, lead: None }
    }

    /// The term this node leads now.
    pub fn term(&self) -> Option<u64> {
        self.lead.as_ref().map(|l| l.0)
    }

    /// Raft says this node leads `leading` (a term) or nothing. A new term, even right
    /// after another, starts from a fresh control state.
    pub fn observe(&mut self, leading: Option<u64>, now_ms: u64) -> Transition {
        match (self.term(), leading) {
            (Some(a), Some(b)) if a == b => Transition::None,
            (None, None) => Transition::None,
            (_, Some(term)) => {
                self.lead = Some((term, Control::new(self.cfg, now_ms)));
                Transition::Became { term }
            }
            (Some(term), None) => {
                self.lead = None;
                Transition::SteppedDown { term }
            }
        }
    }

    /// A heartbeat arrived; `false` when this node does not lead (the sender should ask
    /// the coordinator instead).
    pub fn heartbeat(&mut self, now_ms: u64, hb: Heartbeat) -> bool {
        match &mut self.lead {
            Some((_, c)) => {
                c.heartbeat(now_ms, hb);
                true
            }
            None => false,
        }
    }

    /// One control step; the actions are tagged with the term they belong to.
    pub fn tick(&mut self, now_ms: u64, state: &ClusterState) -> Option<(u64, Vec<Action>)> {
        let (term, c) = self.lead.as_mut()?;
        Some((*term, c.tick(now_ms, state)))
    }

    /// A solve started in `term` finished; `false` when it was dropped as stale.
    pub fn solve_done(&mut self, term: u64, inputs: &str) -> bool {
        match &mut self.lead {
            Some((t, c)) if *t == term => {
                c.solve_done(inputs);
                true
            }
            _ => false,
        }
    }

    /// A push started in `term` finished; `false` when it was dropped as stale.
    pub fn push_done(&mut self, term: u64, now_ms: u64, node: &str, epoch: u64, outcome: Option<ApplyOutcome>) -> bool {
        match &mut self.lead {
            Some((t, c)) if *t == term => {
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

    /// Members as the coordinator sees them and the observed profiles, when leading.
    pub fn status(&self, now_ms: u64, state: &ClusterState) -> Option<(Vec<NodeStatus>, Vec<ProfileRow>)> {
        self.control().map(|c| (c.status(now_ms, state), c.observed_profiles()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::cluster::{AppEntry, ClusterCommand};

    fn hb(node: &str) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            addr: format!("{node}:1"),
            eligible: true,
            gpus: Vec::new(),
            applied_epoch: 0,
            observed: Vec::new(),
        }
    }

    fn solve_of(actions: &[Action]) -> Option<String> {
        actions.iter().find_map(|a| match a {
            Action::Solve { inputs, .. } => Some(inputs.clone()),
            _ => None,
        })
    }

    /// Tick until the control state asks for a solve, committing its proposals to `state`.
    fn until_solve(l: &mut Leader, state: &mut ClusterState, now: &mut u64) -> (u64, String) {
        for _ in 0..100 {
            *now += 100;
            let (term, actions) = l.tick(*now, state).expect("leading");
            if let Some(i) = solve_of(&actions) {
                return (term, i);
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
        assert!(!l.heartbeat(0, hb("n1")));
        assert_eq!(l.observe(Some(3), 0), Transition::Became { term: 3 });
        assert_eq!(l.observe(Some(3), 10), Transition::None);
        assert!(l.heartbeat(10, hb("n1")));
        assert_eq!(l.control().map(|c| c.live_layouts().len()), Some(0));
        // Re-elected in a later term without an observed gap: fresh state, new term.
        assert_eq!(l.observe(Some(5), 20), Transition::Became { term: 5 });
        assert_eq!(l.term(), Some(5));
        assert_eq!(l.observe(None, 30), Transition::SteppedDown { term: 5 });
        assert!(l.tick(30, &ClusterState::default()).is_none());
    }

    #[test]
    fn results_of_another_term_are_dropped() {
        let mut state = ClusterState::default();
        state.apply(&ClusterCommand::PutApp(AppEntry {
            name: "a".into(),
            spec_toml: String::new(),
            profiles_csv: String::new(),
            demand_rps: 1.0,
        }));
        let mut l = Leader::new(ControlConfig { solve_timeout_ms: 1_000_000, ..ControlConfig::default() });
        let mut now = 0;
        l.observe(Some(1), now);
        l.heartbeat(now, hb("n1"));
        let (term, inputs) = until_solve(&mut l, &mut state, &mut now);
        assert_eq!(term, 1);
        // Leadership moves to term 2 while the solve of term 1 is still running.
        l.observe(Some(2), now);
        l.heartbeat(now, hb("n1"));
        let (term, again) = until_solve(&mut l, &mut state, &mut now);
        assert_eq!((term, &again), (2, &inputs), "the new term solves for itself");
        // Term 1's results arrive late: dropped, so term 2 still waits for its own solve
        // (it neither asks again nor takes term 1's answer for its own).
        assert!(!l.solve_done(1, &inputs));
        assert!(!l.push_done(1, now, "n1", 1, None));
        let (_, actions) = l.tick(now + 100, &state).expect("leading");
        assert_eq!(solve_of(&actions), None, "term 2's own solve is still outstanding");
        // Term 2's result lands; with the inputs still unplanned the next tick asks again.
        assert!(l.solve_done(2, &again));
        let (_, actions) = l.tick(now + 200, &state).expect("leading");
        assert_eq!(solve_of(&actions), Some(inputs));
    }
}
