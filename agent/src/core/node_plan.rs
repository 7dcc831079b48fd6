//! The node's plan bookkeeping: epoch fencing and per-GPU diffs, as a pure core.
//!
//! The node actor feeds it plan pushes and step results and executes the commands it
//! returns; it never touches a GPU or a socket itself. Rules:
//! * a push whose epoch is not greater than the highest epoch this node has accepted is
//!   rejected as stale (the sender is an old coordinator or a duplicate), so the applied
//!   epoch never decreases;
//! * a push is checked ([`NodePlanCore::check`], no state change) before anything else
//!   happens to it: the shell persists only a push that passed, then begins it
//!   ([`NodePlanCore::begin`]), so a rejected plan is never persisted nor restored after a
//!   restart; [`super::plan_fence`] decides before all that whether the push may be taken;
//! * an accepted push yields one [`NodeCommand::Apply`] per local GPU (GPUs the push does
//!   not mention get an empty target) with the steps of [`plan_diff`](crate::core::diff::plan_diff);
//! * the node reports [`NodeCommand::ReportApplied`] once every GPU of that epoch finished,
//!   or [`NodeCommand::ReportFailed`] with the first failed step, after which the epoch may be
//!   pushed again (a retry); a newer push supersedes an epoch still being applied;
//! * a push names its part of the epoch's make-before-break transition ([`PushPhase`],
//!   `docs/transitions.md`): `Make` runs only the diff's make part (new instances in free
//!   slots) and reports [`NodeCommand::ReportPrepared`] with the target instances that do
//!   not serve yet; `Break` runs the whole diff (by then only its break part is left) and is
//!   what makes the epoch applied; `All` is both at once. A phased push of the epoch already
//!   accepted is taken again (the leader re-sends a step after a leader change or a lost
//!   reply; re-running one is harmless), an `All` push of it is stale.

use crate::core::diff::{plan_phases, DiffError, LiveSegment, Step, StepFailed};
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::plan::InstancePlan;
use jigsaw_protocol::wire::PushPhase;
use std::collections::BTreeMap;

/// A node's part of a plan: target instances per local GPU UUID.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanPart {
    /// Fencing epoch.
    pub epoch: u64,
    /// Target per GPU UUID.
    pub gpus: BTreeMap<String, Vec<InstancePlan>>,
}

/// Why applying a plan part on one GPU failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuApplyError {
    /// A step failed on the backend (the steps before it stay applied).
    #[error(transparent)]
    Step(#[from] Box<StepFailed>),
    /// The GPU actor or its backend thread is gone (the GPU is out of service).
    #[error("{0}")]
    Unavailable(String),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeCommand {
    /// Execute `steps` on GPU `gpu` for `epoch`, then call [`NodePlanCore::gpu_done`].
    Apply {
        /// Epoch.
        epoch: u64,
        /// GPU UUID.
        gpu: String,
        /// Steps in order.
        steps: Vec<Step>,
    },
    /// Tell the coordinator the make phase of the epoch ran on every GPU.
    ReportPrepared {
        /// Epoch.
        epoch: u64,
        /// Target instances (GPU UUID, start) that do not serve yet.
        deferred: Vec<(String, u8)>,
    },
    /// Tell the coordinator the epoch is applied on every GPU.
    ReportApplied {
        /// Epoch.
        epoch: u64,
    },
    /// Tell the coordinator the epoch failed.
    ReportFailed {
        /// Epoch.
        epoch: u64,
        /// GPU UUID.
        gpu: String,
        /// What failed, in words.
        error: String,
    },
}

/// The commands of a checked push, and the target instances (GPU UUID, start) that do not
/// serve once they ran.
pub type Checked = (Vec<NodeCommand>, Vec<(String, u8)>);

/// Why a push was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushRejected {
    /// Older than (or equal to) what this node accepted: ignore, the sender is behind.
    #[error("stale plan epoch {got}: this node already accepted epoch {accepted}")]
    Stale {
        /// Pushed epoch.
        got: u64,
        /// Highest accepted epoch.
        accepted: u64,
    },
    /// The push names a GPU this node does not have: the coordinator's inventory is wrong.
    #[error("plan epoch {epoch} targets GPU {gpu}, which this node does not have")]
    UnknownGpu {
        /// Epoch.
        epoch: u64,
        /// GPU UUID.
        gpu: String,
    },
    /// A target layout is illegal on its GPU: the plan is wrong.
    #[error("plan epoch {epoch}, GPU {gpu}: {error}")]
    Diff {
        /// Epoch.
        epoch: u64,
        /// GPU UUID.
        gpu: String,
        /// Why.
        error: DiffError,
    },
}

/// The node's plan state.
#[derive(Debug, Clone)]
pub struct NodePlanCore {
    gpus: BTreeMap<String, GpuModel>,
    accepted: u64,
    applied: u64,
    pending: BTreeMap<String, bool>,
    phase: PushPhase,
    deferred: Vec<(String, u8)>,
}

impl NodePlanCore {
    /// A node with these local GPUs (UUID → model) that has applied `applied` (from its
    /// durable state; 0 for a new node).
    pub fn new(gpus: BTreeMap<String, GpuModel>, applied: u64) -> NodePlanCore {
        NodePlanCore {
            gpus,
            accepted: applied,
            applied,
            pending: BTreeMap::new(),
            phase: PushPhase::All,
            deferred: Vec::new(),
        }
    }

    /// Highest epoch fully applied.
    pub fn applied_epoch(&self) -> u64 {
        self.applied
    }

    /// Highest epoch accepted (being applied or applied).
    pub fn accepted_epoch(&self) -> u64 {
        self.accepted
    }

    /// A GPU left service (its actor failed): later plans neither target nor wait for it.
    pub fn remove_gpu(&mut self, gpu: &str) {
        self.gpus.remove(gpu);
        self.pending.remove(gpu);
    }

    /// Whether `epoch` would be accepted now (newer than anything accepted).
    pub fn would_accept(&self, epoch: u64) -> bool {
        epoch > self.accepted
    }

    /// Whether a push of `epoch` for `phase` would be taken now: newer than anything
    /// accepted, or (a phased push) the accepted epoch itself.
    pub fn would_take(&self, epoch: u64, phase: PushPhase) -> bool {
        epoch > self.accepted || (epoch == self.accepted && phase != PushPhase::All)
    }

    /// A plan push arrived; `live` is each local GPU's current layout. [`NodePlanCore::check`]
    /// then [`NodePlanCore::begin`].
    pub fn push(
        &mut self,
        part: &PlanPart,
        live: &BTreeMap<String, Vec<LiveSegment>>,
    ) -> Result<Vec<NodeCommand>, PushRejected> {
        let cmds = self.check(part, live)?;
        self.begin(part.epoch);
        Ok(cmds)
    }

    /// Whether a push would be accepted, and the commands that apply it; changes nothing.
    pub fn check(
        &self,
        part: &PlanPart,
        live: &BTreeMap<String, Vec<LiveSegment>>,
    ) -> Result<Vec<NodeCommand>, PushRejected> {
        self.check_phase(part, live, PushPhase::All).map(|(cmds, _)| cmds)
    }

    /// [`NodePlanCore::check`] for one phase of a transition; also returns the target
    /// instances (GPU UUID, start) that do not serve once the commands ran (for `Make`).
    pub fn check_phase(
        &self,
        part: &PlanPart,
        live: &BTreeMap<String, Vec<LiveSegment>>,
        phase: PushPhase,
    ) -> Result<Checked, PushRejected> {
        if !self.would_take(part.epoch, phase) {
            return Err(PushRejected::Stale { got: part.epoch, accepted: self.accepted });
        }
        if let Some(gpu) = part.gpus.keys().find(|g| !self.gpus.contains_key(*g)) {
            return Err(PushRejected::UnknownGpu { epoch: part.epoch, gpu: gpu.clone() });
        }
        let mut cmds = Vec::new();
        let mut deferred = Vec::new();
        for (gpu, model) in &self.gpus {
            let target = part.gpus.get(gpu).map(Vec::as_slice).unwrap_or(&[]);
            let now = live.get(gpu).map(Vec::as_slice).unwrap_or(&[]);
            let p = plan_phases(model.spec(), now, target).map_err(|error| PushRejected::Diff {
                epoch: part.epoch,
                gpu: gpu.clone(),
                error,
            })?;
            let steps = match phase {
                PushPhase::Make => {
                    deferred.extend(p.deferred.iter().map(|s| (gpu.clone(), *s)));
                    p.make
                }
                PushPhase::Routes => Vec::new(),
                PushPhase::All | PushPhase::Break => {
                    let mut all = p.make;
                    all.extend(p.rest);
                    all
                }
            };
            cmds.push(NodeCommand::Apply { epoch: part.epoch, gpu: gpu.clone(), steps });
        }
        Ok((cmds, deferred))
    }

    /// Begin applying `epoch`, which [`NodePlanCore::check`] accepted: from now on it is the
    /// accepted epoch and its GPUs' completions are awaited.
    pub fn begin(&mut self, epoch: u64) {
        self.begin_phase(epoch, PushPhase::All, Vec::new());
    }

    /// [`NodePlanCore::begin`] for one phase, with what [`NodePlanCore::check_phase`] said
    /// will not serve after it.
    pub fn begin_phase(&mut self, epoch: u64, phase: PushPhase, deferred: Vec<(String, u8)>) {
        self.accepted = epoch;
        self.phase = phase;
        self.deferred = deferred;
        self.pending = self.gpus.keys().map(|g| (g.clone(), false)).collect();
        if self.gpus.is_empty() && matches!(phase, PushPhase::All | PushPhase::Break) {
            self.applied = self.applied.max(epoch); // nothing to wait for
        }
    }

    /// The shell finished applying `epoch` on `gpu` (`Err`: the first failed step).
    pub fn gpu_done(&mut self, epoch: u64, gpu: &str, result: Result<(), GpuApplyError>) -> Vec<NodeCommand> {
        if epoch != self.accepted || !self.pending.contains_key(gpu) {
            return Vec::new(); // superseded by a newer push, or a duplicate completion
        }
        match result {
            Err(error) => {
                self.pending.clear();
                // Reopen the epoch: the coordinator may push it again (a retry after a
                // transient failure). The applied epoch is unchanged, so it never decreases.
                self.accepted = self.applied;
                vec![NodeCommand::ReportFailed { epoch, gpu: gpu.to_string(), error: error.to_string() }]
            }
            Ok(()) => {
                if let Some(done) = self.pending.get_mut(gpu) {
                    *done = true;
                }
                if !self.pending.is_empty() && self.pending.values().all(|d| *d) {
                    self.pending.clear();
                    if self.phase == PushPhase::Make {
                        return vec![NodeCommand::ReportPrepared {
                            epoch,
                            deferred: std::mem::take(&mut self.deferred),
                        }];
                    }
                    self.applied = self.applied.max(epoch);
                    vec![NodeCommand::ReportApplied { epoch }]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(profile: &str, start: u8) -> InstancePlan {
        InstancePlan {
            mig_profile: profile.into(),
            start,
            slices: 1,
            mps: 1,
            task: "a".into(),
            variant: "v".into(),
            batch: 4,
            p95_ms: 1.0,
            throughput_rps: 1.0,
            app: String::new(),
            load_rps: 0.0,
        }
    }

    fn core() -> NodePlanCore {
        NodePlanCore::new(
            [("GPU-0".to_string(), GpuModel::H100_80gb), ("GPU-1".to_string(), GpuModel::H100_80gb)].into(),
            0,
        )
    }

    fn part(epoch: u64) -> PlanPart {
        PlanPart { epoch, gpus: [("GPU-0".to_string(), vec![inst("3g.40gb", 4)])].into() }
    }

    #[test]
    fn applies_in_epoch_order_and_rejects_stale_pushes() {
        let mut c = core();
        let cmds = c.push(&part(3), &BTreeMap::new()).expect("accepted");
        assert_eq!(cmds.len(), 2, "one Apply per local GPU, the unnamed one with an empty target");
        assert!(matches!(c.push(&part(3), &BTreeMap::new()), Err(PushRejected::Stale { got: 3, accepted: 3 })));
        assert!(matches!(c.push(&part(2), &BTreeMap::new()), Err(PushRejected::Stale { .. })));
        assert!(c.gpu_done(3, "GPU-0", Ok(())).is_empty());
        assert_eq!(c.gpu_done(3, "GPU-1", Ok(())), vec![NodeCommand::ReportApplied { epoch: 3 }]);
        assert_eq!(c.applied_epoch(), 3);
        assert!(c.gpu_done(3, "GPU-1", Ok(())).is_empty(), "duplicate completion is ignored");
    }

    #[test]
    fn newer_push_supersedes_and_failures_are_reported() {
        let mut c = core();
        c.push(&part(1), &BTreeMap::new()).expect("accepted");
        c.push(&part(2), &BTreeMap::new()).expect("newer accepted while 1 is applying");
        assert!(c.gpu_done(1, "GPU-0", Ok(())).is_empty(), "epoch 1 was superseded");
        let out = c.gpu_done(2, "GPU-0", Err(GpuApplyError::Unavailable("GPU actor".into())));
        assert!(matches!(&out[..], [NodeCommand::ReportFailed { epoch: 2, .. }]));
        assert_eq!(c.applied_epoch(), 0, "a failed epoch is not applied");
    }

    #[test]
    fn unknown_gpus_and_illegal_targets_are_rejected_without_state_change() {
        let mut c = core();
        let bad = PlanPart { epoch: 5, gpus: [("GPU-9".to_string(), vec![])].into() };
        assert!(matches!(c.push(&bad, &BTreeMap::new()), Err(PushRejected::UnknownGpu { .. })));
        let overlap =
            PlanPart { epoch: 5, gpus: [("GPU-0".to_string(), vec![inst("4g.40gb", 0), inst("2g.20gb", 2)])].into() };
        assert!(matches!(c.push(&overlap, &BTreeMap::new()), Err(PushRejected::Diff { .. })));
        assert_eq!(c.accepted_epoch(), 0);
    }

    #[test]
    fn phases_report_prepared_then_applied_and_may_be_re_run() {
        let mut c = core();
        let (cmds, deferred) = c.check_phase(&part(1), &BTreeMap::new(), PushPhase::Make).expect("accepted");
        assert!(deferred.is_empty(), "3g@4 fits an empty GPU");
        assert!(cmds.iter().any(|x| matches!(x, NodeCommand::Apply { steps, .. } if !steps.is_empty())));
        c.begin_phase(1, PushPhase::Make, deferred);
        assert!(c.gpu_done(1, "GPU-0", Ok(())).is_empty());
        let out = c.gpu_done(1, "GPU-1", Ok(()));
        assert_eq!(out, vec![NodeCommand::ReportPrepared { epoch: 1, deferred: vec![] }]);
        assert_eq!(c.applied_epoch(), 0, "the make phase does not apply the epoch");
        assert!(c.would_take(1, PushPhase::Make) && c.would_take(1, PushPhase::Break), "phases may be re-sent");
        assert!(!c.would_take(1, PushPhase::All) && !c.would_take(0, PushPhase::Break));
        c.begin_phase(1, PushPhase::Break, vec![]);
        let _ = c.gpu_done(1, "GPU-0", Ok(()));
        assert_eq!(c.gpu_done(1, "GPU-1", Ok(())), vec![NodeCommand::ReportApplied { epoch: 1 }]);
        assert_eq!(c.applied_epoch(), 1);
    }

    #[test]
    fn check_changes_nothing_and_begin_takes_the_epoch() {
        let mut c = core();
        let cmds = c.check(&part(2), &BTreeMap::new()).expect("acceptable");
        assert_eq!(c.accepted_epoch(), 0, "a check is only a check");
        assert!(c.check(&part(2), &BTreeMap::new()).is_ok(), "and may be repeated");
        c.begin(2);
        assert_eq!(c.accepted_epoch(), 2);
        assert!(matches!(c.check(&part(2), &BTreeMap::new()), Err(PushRejected::Stale { .. })));
        for cmd in cmds {
            if let NodeCommand::Apply { epoch, gpu, .. } = cmd {
                let _ = c.gpu_done(epoch, &gpu, Ok(()));
            }
        }
        assert_eq!(c.applied_epoch(), 2);
    }
}
