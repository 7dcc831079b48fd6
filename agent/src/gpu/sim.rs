//! The MIG/MPS simulator: one GPU of any catalogue model, enforcing the driver's rules.
//!
//! Rules (`shared/research/gpu.md` §1.3, §1.4, §2, §6.2):
//! * a GPU instance may only start at a slot in its profile's start list, may not overlap
//!   another instance's memory slices, and `+me` profiles are capped at one per GPU
//!   ([`GpuSpec::check_placement`]);
//! * destroying an instance with attached workers fails with `IN_USE`;
//! * workers share the instance's memory: the sum of their memory may not exceed it;
//! * MPS clients per instance are limited to `floor(48 · compute_slices / 7)` (NVIDIA says
//!   the limit is "lowered proportionally"; the exact formula is not published, so this is
//!   an approximation);
//! * every created instance gets a fresh `MIG-` UUID (re-created instances get new ones);
//! * create and destroy report a configurable latency rather than sleeping;
//! * optionally ([`SimGpu::refuse_destroy_with_contexts`]), destroying an instance fails
//!   with `IN_USE` while a worker process still holds a CUDA context on its MIG device, as
//!   NVML does: the shared [`Contexts`] registry is what the node's worker launcher fills.

use super::{GpuBackend, GpuError, InstanceId, LiveInstance};
use jigsaw_protocol::catalogue::{GpuModel, GpuSpec, Placement};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Live CUDA contexts per MIG device UUID: what a (simulated) worker process holds from its
/// start to its exit. Shared by a [`SimGpu`] in the refusing mode and the worker launcher.
#[derive(Debug, Clone, Default)]
pub struct Contexts(Arc<Mutex<BTreeMap<String, u32>>>);

impl Contexts {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker opened a context on `device`.
    pub fn open(&self, device: &str) {
        *self.map().entry(device.to_string()).or_default() += 1;
    }

    /// A worker on `device` exited.
    pub fn close(&self, device: &str) {
        let mut m = self.map();
        if let Some(n) = m.get_mut(device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(device);
            }
        }
    }

    /// Contexts open on `device`.
    pub fn on(&self, device: &str) -> u32 {
        self.map().get(device).copied().unwrap_or(0)
    }
}

/// Per-instance state.
#[derive(Debug, Clone)]
struct Inst {
    placement: Placement,
    uuid: String,
    workers: Vec<f64>,
}

/// A simulated GPU.
#[derive(Debug, Clone)]
pub struct SimGpu {
    spec: &'static GpuSpec,
    uuid: String,
    instances: BTreeMap<InstanceId, Inst>,
    next_id: InstanceId,
    serial: u64,
    reconfig: Duration,
    last: Duration,
    contexts: Option<Contexts>,
}

impl SimGpu {
    /// A GPU of `model` in MIG mode with no instances. `seed` makes its UUIDs unique within
    /// a simulated cluster and reproducible; `reconfig` is the simulated latency of one
    /// create or destroy.
    pub fn new(model: GpuModel, seed: u64, reconfig: Duration) -> SimGpu {
        SimGpu {
            spec: model.spec(),
            uuid: format!("GPU-sim-{seed:016x}"),
            instances: BTreeMap::new(),
            next_id: 1,
            serial: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            reconfig,
            last: Duration::ZERO,
            contexts: None,
        }
    }

    /// The refusing mode: `destroy` fails with `IN_USE` while `contexts` has a context open on
    /// the instance's MIG device (a worker process still runs there), as NVML does.
    pub fn refuse_destroy_with_contexts(mut self, contexts: Contexts) -> SimGpu {
        self.contexts = Some(contexts);
        self
    }

    /// The MPS client limit of an instance of `profile` (approximate, see module docs).
    pub fn client_limit(&self, profile: usize) -> u32 {
        48 * u32::from(self.spec.profiles[profile].compute_slices) / 7
    }

    fn inst(&self, id: InstanceId) -> Result<&Inst, GpuError> {
        self.instances.get(&id).ok_or(GpuError::NotFound(id))
    }
}

impl GpuBackend for SimGpu {
    fn model(&self) -> GpuModel {
        self.spec.model
    }

    fn uuid(&self) -> &str {
        &self.uuid
    }

    fn instances(&self) -> Vec<LiveInstance> {
        let mut v: Vec<LiveInstance> = self
            .instances
            .iter()
            .map(|(&id, i)| LiveInstance {
                id,
                profile: self.spec.profiles[i.placement.profile].name.to_string(),
                start: i.placement.start,
                uuid: i.uuid.clone(),
                workers: i.workers.len() as u32,
            })
            .collect();
        v.sort_by_key(|i| i.start);
        v
    }

    fn create(&mut self, profile: &str, start: u8) -> Result<LiveInstance, GpuError> {
        let p = self.spec.profile_index(profile).ok_or_else(|| {
            GpuError::Placement(jigsaw_protocol::catalogue::PlacementError::UnknownProfile {
                profile: profile.to_string(),
                gpu: self.spec.model,
            })
        })?;
        let placement = Placement { profile: p, start };
        let existing: Vec<Placement> = self.instances.values().map(|i| i.placement).collect();
        self.spec.check_placement(&existing, placement)?;
        let id = self.next_id;
        self.next_id += 1;
        self.serial = self.serial.wrapping_add(1);
        let uuid = format!("MIG-{}-{:08x}", &self.uuid[4..], self.serial & 0xffff_ffff);
        self.instances.insert(id, Inst { placement, uuid: uuid.clone(), workers: Vec::new() });
        self.last = self.reconfig;
        Ok(LiveInstance { id, profile: profile.to_string(), start, uuid, workers: 0 })
    }

    fn destroy(&mut self, id: InstanceId) -> Result<(), GpuError> {
        let i = self.inst(id)?;
        if !i.workers.is_empty() {
            return Err(GpuError::InUse { id, workers: i.workers.len() as u32 });
        }
        if let Some(n) = self.contexts.as_ref().map(|c| c.on(&i.uuid)).filter(|&n| n > 0) {
            return Err(GpuError::InUse { id, workers: n });
        }
        self.instances.remove(&id);
        self.last = self.reconfig;
        Ok(())
    }

    fn attach_worker(&mut self, id: InstanceId, mem_gib: f64) -> Result<(), GpuError> {
        let i = self.inst(id)?;
        let prof = &self.spec.profiles[i.placement.profile];
        let limit = self.client_limit(i.placement.profile);
        if i.workers.len() as u32 >= limit {
            return Err(GpuError::TooManyClients { id, limit });
        }
        let used: f64 = i.workers.iter().sum();
        if used + mem_gib > prof.mem_gib + 1e-9 {
            return Err(GpuError::OutOfMemory { id, need_gib: mem_gib, cap_gib: prof.mem_gib });
        }
        self.instances.get_mut(&id).ok_or(GpuError::NotFound(id))?.workers.push(mem_gib);
        Ok(())
    }

    fn detach_worker(&mut self, id: InstanceId) -> Result<(), GpuError> {
        let i = self.instances.get_mut(&id).ok_or(GpuError::NotFound(id))?;
        i.workers.pop().map(|_| ()).ok_or(GpuError::NoWorker(id))
    }

    fn last_reconfig(&self) -> Duration {
        self.last
    }
}
