//! GPU backends: the narrow trait the GPU actor drives, and the faithful MIG/MPS simulator.
//!
//! The trait is synchronous and side-effect-only: the actor calls it from a blocking task.
//! Implementations:
//! * [`sim::SimGpu`]: a simulator of any catalogue GPU model that enforces the same rules as
//!   the driver (start lists, disjoint memory slices, `+me` caps, `IN_USE` while workers run,
//!   instance memory caps, MPS client limits), hands out MIG device UUIDs, and reports a
//!   configurable reconfiguration latency instead of sleeping (the shell waits, the core
//!   does not).
//! * [`nvml::NvmlGpu`]: a real GPU through NVML (raw GPU/compute-instance calls); it runs
//!   the same conformance checks on hardware behind `JIGSAW_GPU_MIG_WRITE=1`
//!   (`agent/tests/gpu_nvml.rs`).
//!
//! [`crate::core::diff::plan_diff`] is the pure function that turns a live layout and a target layout
//! into an ordered list of steps that never asks a backend for an illegal state.

pub mod nvml;
pub mod sim;

use jigsaw_protocol::catalogue::{GpuModel, PlacementError};
use std::time::Duration;

/// Backend-assigned id of a MIG GPU instance (not its start slot).
pub type InstanceId = u32;

/// A live MIG GPU instance (with its single full-size compute instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveInstance {
    /// Backend id.
    pub id: InstanceId,
    /// MIG profile name.
    pub profile: String,
    /// First memory slice.
    pub start: u8,
    /// The MIG device UUID (`MIG-...`) a worker binds with `CUDA_VISIBLE_DEVICES`.
    pub uuid: String,
    /// Worker processes (MPS clients) currently attached.
    pub workers: u32,
}

/// Why a backend call failed, split by what the caller should do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    /// The placement is illegal here; choose another slot or destroy what is in the way.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// Workers are still attached; drain them, then retry.
    #[error("instance {id} still has {workers} worker(s): drain them before destroying it")]
    InUse {
        /// Instance.
        id: InstanceId,
        /// Workers attached.
        workers: u32,
    },
    /// No such instance (already destroyed, or a stale id); re-read the layout.
    #[error("no MIG instance with id {0}: re-read the layout")]
    NotFound(InstanceId),
    /// No instance starts at this memory slice; re-read the layout.
    #[error("no MIG instance starts at memory slice {0}: re-read the layout")]
    NoInstanceAt(u8),
    /// Detach asked of an instance with no workers.
    #[error("instance {0} has no worker to detach")]
    NoWorker(InstanceId),
    /// The worker does not fit the instance's memory.
    #[error("instance {id}: {need_gib:.2} GiB more would exceed its {cap_gib:.2} GiB")]
    OutOfMemory {
        /// Instance.
        id: InstanceId,
        /// Requested.
        need_gib: f64,
        /// Instance memory.
        cap_gib: f64,
    },
    /// The instance's MPS client limit is reached.
    #[error("instance {id}: MPS client limit of {limit} reached")]
    TooManyClients {
        /// Instance.
        id: InstanceId,
        /// Limit.
        limit: u32,
    },
    /// MIG mode is off on this GPU; an operator must enable it.
    #[error("MIG mode is disabled on GPU {0}")]
    MigDisabled(String),
    /// The GPU or driver is unusable: this node cannot serve on it.
    #[error("GPU unavailable: {0}")]
    Unavailable(String),
}

/// What one GPU backend can do.
pub trait GpuBackend {
    /// The GPU model.
    fn model(&self) -> GpuModel;
    /// The GPU's UUID.
    fn uuid(&self) -> &str;
    /// Live instances, sorted by start slot.
    fn instances(&self) -> Vec<LiveInstance>;
    /// Create a GPU instance (and its full compute instance) with an explicit placement.
    fn create(&mut self, profile: &str, start: u8) -> Result<LiveInstance, GpuError>;
    /// Destroy an instance; fails with [`GpuError::InUse`] while workers are attached.
    fn destroy(&mut self, id: InstanceId) -> Result<(), GpuError>;
    /// Attach a worker (MPS client) needing `mem_gib` of the instance's memory.
    fn attach_worker(&mut self, id: InstanceId, mem_gib: f64) -> Result<(), GpuError>;
    /// Detach one worker.
    fn detach_worker(&mut self, id: InstanceId) -> Result<(), GpuError>;
    /// How long the last create/destroy took (simulated or measured).
    fn last_reconfig(&self) -> Duration;
}
