//! The plan diff: from a GPU's live layout to its target layout, as ordered steps.
//!
//! Pure: [`plan_diff`] reads two layouts and returns steps; [`apply`] is the thin shell that
//! executes them on any [`GpuBackend`] and reports the first step that fails (never
//! swallowing it).
//!
//! Instances are keyed by their start slot, which is unique on a legal layout. A live
//! instance whose (profile, start) is in the target is kept; if its workers (task, variant,
//! MPS level) changed, only its workers are restarted; a change of batch size alone needs
//! no step (the running workers take it with their queue settings). Order:
//! 1. *make before break*: new instances that are legal next to everything still live
//!    (including what will be destroyed) are created and started first;
//! 2. reassigned instances restart their workers;
//! 3. instances not in the target are drained and destroyed;
//! 4. the remaining new instances (those whose slots overlapped a destroyed one) are
//!    created and started.
//!
//! So a backend is never asked for an overlapping or over-cap placement, nor to destroy an
//! instance with workers attached.
//!
//! [`plan_phases`] splits the same steps for a cluster-wide make-before-break transition
//! (`docs/transitions.md`): the *make* part (step 1: nothing live is touched) runs first
//! on every node, the rest only after the routes moved; it also names the target instances
//! that are not serving after the make part (reassigned, or created late because their
//! slots were occupied), which the routes must not send work to yet.

use crate::gpu::{GpuBackend, GpuError, LiveInstance};
use jigsaw_protocol::catalogue::{GpuSpec, Placement, PlacementError};
use jigsaw_protocol::plan::InstancePlan;

/// What runs inside an instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// Task.
    pub task: String,
    /// Variant.
    pub variant: String,
    /// MPS processes.
    pub mps: u8,
    /// Max batch.
    pub batch: u32,
}

impl Assignment {
    /// The assignment of a planned instance.
    pub fn of(i: &InstancePlan) -> Assignment {
        Assignment { task: i.task.clone(), variant: i.variant.clone(), mps: i.mps, batch: i.batch }
    }

    /// Whether `other` runs the same workers (task, variant, MPS processes): it differs at
    /// most in the batch size, which the running workers take without a restart.
    pub fn same_workers(&self, other: &Assignment) -> bool {
        self.task == other.task && self.variant == other.variant && self.mps == other.mps
    }
}

/// A live instance with what its workers run (None: no workers).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSegment {
    /// The instance.
    pub instance: LiveInstance,
    /// Its assignment.
    pub assignment: Option<Assignment>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Drain and stop every worker of the instance at `start`.
    StopWorkers {
        /// Start slot.
        start: u8,
    },
    /// Destroy the (drained) instance at `start`.
    Destroy {
        /// Start slot.
        start: u8,
    },
    /// Create an instance of `profile` at `start`.
    Create {
        /// Profile name.
        profile: String,
        /// Start slot.
        start: u8,
    },
    /// Start `assignment.mps` workers in the instance at `start`.
    StartWorkers {
        /// Start slot.
        start: u8,
        /// What they run.
        assignment: Assignment,
    },
}

/// A layout the diff cannot work from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiffError {
    /// The target is not a legal layout on this GPU: the plan is wrong, reject it.
    #[error("target layout is illegal: {0}")]
    Target(PlacementError),
    /// A live instance has a profile unknown to the catalogue: re-read the GPU.
    #[error("live instance at {start} has unknown profile `{profile}`")]
    Live {
        /// Start slot.
        start: u8,
        /// Profile.
        profile: String,
    },
}

fn placement(spec: &GpuSpec, profile: &str, start: u8) -> Option<Placement> {
    spec.profile_index(profile).map(|p| Placement { profile: p, start })
}

/// The steps of [`plan_diff`] split at the point where a transition moves its routes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Phased {
    /// Step 1: new instances in free slots, created and started; nothing live is touched.
    pub make: Vec<Step>,
    /// Steps 2–4: reassignments, drains and destroys, and the late creates.
    pub rest: Vec<Step>,
    /// Start slots of target instances that do not serve after `make` (they are reassigned
    /// or created late): routes may not send them work until `rest` ran.
    pub deferred: Vec<u8>,
}

/// Steps that take `live` to `target` on a GPU of `spec`.
pub fn plan_diff(spec: &GpuSpec, live: &[LiveSegment], target: &[InstancePlan]) -> Result<Vec<Step>, DiffError> {
    let p = plan_phases(spec, live, target)?;
    let mut steps = p.make;
    steps.extend(p.rest);
    Ok(steps)
}

/// [`plan_diff`] split into its make part and the rest (see [`Phased`]).
pub fn plan_phases(spec: &GpuSpec, live: &[LiveSegment], target: &[InstancePlan]) -> Result<Phased, DiffError> {
    let mut target_pl = Vec::with_capacity(target.len());
    for t in target {
        let p = placement(spec, &t.mig_profile, t.start).ok_or_else(|| {
            DiffError::Target(PlacementError::UnknownProfile { profile: t.mig_profile.clone(), gpu: spec.model })
        })?;
        target_pl.push(p);
    }
    spec.check_layout(&target_pl).map_err(DiffError::Target)?;
    let mut live_pl = Vec::with_capacity(live.len());
    for l in live {
        let p = placement(spec, &l.instance.profile, l.instance.start)
            .ok_or_else(|| DiffError::Live { start: l.instance.start, profile: l.instance.profile.clone() })?;
        live_pl.push(p);
    }
    let kept =
        |l: &LiveSegment| target.iter().any(|t| t.mig_profile == l.instance.profile && t.start == l.instance.start);
    let is_new =
        |t: &InstancePlan| !live.iter().any(|l| t.mig_profile == l.instance.profile && t.start == l.instance.start);

    let mut steps = Vec::new();
    let mut late = Vec::new();
    let mut deferred = Vec::new();
    // 1. Make before break.
    let mut occupied = live_pl.clone();
    for (t, &p) in target.iter().zip(&target_pl) {
        if !is_new(t) {
            continue;
        }
        if spec.check_placement(&occupied, p).is_ok() {
            occupied.push(p);
            steps.push(Step::Create { profile: t.mig_profile.clone(), start: t.start });
            steps.push(Step::StartWorkers { start: t.start, assignment: Assignment::of(t) });
        } else {
            late.push(t);
        }
    }
    let make = std::mem::take(&mut steps);
    // 2. Reassignments.
    for l in live.iter().filter(|l| kept(l)) {
        let Some(t) = target.iter().find(|t| t.start == l.instance.start) else { continue };
        let want = Assignment::of(t);
        // Only the batch size changed: the running workers take it with their queue
        // settings (the data plane retunes the pool in place), so nothing restarts.
        let same_workers = l.assignment.as_ref().is_some_and(|a| a.same_workers(&want));
        if !same_workers || l.instance.workers != u32::from(want.mps) {
            if l.instance.workers > 0 {
                steps.push(Step::StopWorkers { start: l.instance.start });
            }
            steps.push(Step::StartWorkers { start: l.instance.start, assignment: want });
            deferred.push(l.instance.start);
        }
    }
    // 3. Break.
    for l in live.iter().filter(|l| !kept(l)) {
        if l.instance.workers > 0 {
            steps.push(Step::StopWorkers { start: l.instance.start });
        }
        steps.push(Step::Destroy { start: l.instance.start });
    }
    // 4. The rest of the new instances.
    for t in late {
        steps.push(Step::Create { profile: t.mig_profile.clone(), start: t.start });
        steps.push(Step::StartWorkers { start: t.start, assignment: Assignment::of(t) });
        deferred.push(t.start);
    }
    deferred.sort_unstable();
    Ok(Phased { make, rest: steps, deferred })
}

/// A step that failed, with its index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("step {index} ({step:?}) failed: {error}")]
pub struct StepFailed {
    /// Index into the steps.
    pub index: usize,
    /// The step.
    pub step: Step,
    /// The backend's error.
    pub error: GpuError,
}

/// Execute `steps` on `gpu`; `worker_mem_gib(assignment)` is the memory of one worker.
/// Stops at the first failure and reports it; steps before it stay applied.
pub fn apply(
    gpu: &mut dyn GpuBackend,
    steps: &[Step],
    worker_mem_gib: &dyn Fn(&Assignment) -> f64,
) -> Result<(), Box<StepFailed>> {
    for (index, step) in steps.iter().enumerate() {
        let fail = |error| Box::new(StepFailed { index, step: step.clone(), error });
        let id_at = |gpu: &dyn GpuBackend, start: u8| {
            gpu.instances().into_iter().find(|i| i.start == start).map(|i| i.id).ok_or(GpuError::NoInstanceAt(start))
        };
        match step {
            Step::Create { profile, start } => {
                gpu.create(profile, *start).map_err(fail)?;
            }
            Step::Destroy { start } => {
                let id = id_at(gpu, *start).map_err(fail)?;
                gpu.destroy(id).map_err(fail)?;
            }
            Step::StopWorkers { start } => {
                let id = id_at(gpu, *start).map_err(fail)?;
                let n = gpu.instances().into_iter().find(|i| i.id == id).map_or(0, |i| i.workers);
                for _ in 0..n {
                    gpu.detach_worker(id).map_err(fail)?;
                }
            }
            Step::StartWorkers { start, assignment } => {
                let id = id_at(gpu, *start).map_err(fail)?;
                for _ in 0..assignment.mps {
                    gpu.attach_worker(id, worker_mem_gib(assignment)).map_err(fail)?;
                }
            }
        }
    }
    Ok(())
}
