//! The NVML backend: [`GpuBackend`] on a real NVIDIA GPU in MIG mode, through the driver's
//! `libnvidia-ml.so.1` loaded at run time by `nvml-wrapper`.
//!
//! ## Discovery and the no-driver case
//! [`discover`] (or [`NvmlBackend::init`] followed by [`NvmlBackend::gpus`]) loads NVML and
//! yields one [`NvmlGpu`] per device. Without a driver, `Nvml::init()` fails cleanly (the
//! library cannot be opened, or the kernel module is not loaded) and this backend returns
//! [`GpuError::Unavailable`] with a message starting `NVML:` that names the cause; it never
//! panics. A device whose name and memory do not map to a catalogue [`GpuModel`] (see
//! [`model_from_name`]) is refused with [`GpuError::Unavailable`] naming the device.
//!
//! ## What is read
//! Device name, UUID, total memory, MIG mode (current and pending), the GPU-instance
//! profile table (`nvmlDeviceGetGpuInstanceProfileInfo`, by `NVML_GPU_INSTANCE_PROFILE_*`
//! enum, which gives the driver's profile id), the GPU instances of each profile
//! (`nvmlDeviceGetGpuInstances` + `nvmlGpuInstanceGetInfo`: id, profile id, placement start
//! and size), and the MIG devices (`nvmlDeviceGetMaxMigDeviceCount`,
//! `nvmlDeviceGetMigDeviceHandleByIndex`, `nvmlDeviceGetGpuInstanceId`, `nvmlDeviceGetUUID`)
//! that give each GPU instance its `MIG-` UUID. [`NvmlGpu::read_back`] gathers all of this
//! (plus each profile's possible placements) without changing anything, for hardware
//! fixtures.
//!
//! ## What is written
//! Only [`GpuBackend::create`] and [`GpuBackend::destroy`] change the GPU:
//! * `create` checks the placement against the catalogue and the live layout first (so the
//!   errors are the simulator's [`GpuError::Placement`] ones), then calls
//!   `nvmlDeviceCreateGpuInstanceWithPlacement` and creates one compute instance of the
//!   largest compute-instance profile the new GPU instance offers
//!   (`nvmlGpuInstanceCreateComputeInstance`), then finds its MIG device UUID. If any step
//!   after the GPU instance exists fails, what was created is destroyed again.
//! * `destroy` destroys every compute instance of the GPU instance, then the GPU instance.
//!
//! MIG *mode* is never changed: with MIG off, `create` fails with [`GpuError::MigDisabled`]
//! and an operator must enable it. Management calls need root (or the MIG capability
//! devices); the driver's `NO_PERMISSION` becomes [`GpuError::Unavailable`].
//!
//! `nvml-wrapper` wraps none of the GPU/compute-instance calls, so they go through the raw
//! function table (`nvml.lib().nvmlFoo`). Each field is a `Result` that is `Err` when the
//! loaded driver lacks the symbol; this module checks it and returns
//! [`GpuError::Unavailable`] naming the symbol, rather than using the table's convenience
//! methods, which panic on a missing symbol.
//!
//! ## The `possible_placements` bug
//! `nvml_wrapper::Device::possible_placements` lets NVML fill a `Vec::with_capacity` buffer
//! but never sets its length, so it always returns an empty list
//! (`shared/research/gpu.md` §3.2). This module calls
//! `nvmlDeviceGetGpuInstancePossiblePlacements_v2` itself, into a buffer of initialised
//! elements, and truncates it to the count the driver returns
//! ([`NvmlGpu::possible_placements`]).
//!
//! ## Workers and MPS
//! Workers are booked in this struct exactly as in the simulator ([`super::sim`]): attach
//! checks the MPS client limit (`floor(48 · compute_slices / 7)`, an approximation) and the
//! profile's catalogue memory; destroy refuses with [`GpuError::InUse`] while any are booked.
//! The bookings are this process's view only (they start at zero when the agent starts); the
//! driver's own `IN_USE` still protects instances whose processes were not booked here, and
//! is reported as [`GpuError::InUse`] with at least one worker. This backend does not start
//! MPS: the segment layer starts one MPS control daemon per MIG device (pointed at the MIG
//! UUID) before it launches workers into it.
//!
//! ## Instance ids
//! [`InstanceId`] is the driver's GPU-instance id, which is not the placement start (GI 13
//! may sit at slice 6); the driver may reuse an id after a destroy.

// This module is the FFI boundary to NVML's raw function table: the safe `nvml-wrapper` API
// has no calls to list, create or destroy GPU and compute instances. Every `unsafe` block
// calls one driver function with handles from the live NVML session and valid out-pointers.
#![allow(unsafe_code)]

use super::{GpuBackend, GpuError, InstanceId, LiveInstance};
use jigsaw_protocol::catalogue::{GpuModel, GpuSpec, MigProfile, Placement, PlacementError};
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlComputeInstanceProfileInfo_t, nvmlComputeInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t,
    nvmlGpuInstanceProfileInfo_t, nvmlGpuInstanceProfileInfo_v2_t, nvmlGpuInstance_t,
    nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH, nvmlReturn_enum_NVML_ERROR_GPU_NOT_FOUND,
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES, nvmlReturn_enum_NVML_ERROR_INVALID_STATE,
    nvmlReturn_enum_NVML_ERROR_NOT_READY, nvmlReturn_t, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
    NVML_COMPUTE_INSTANCE_PROFILE_COUNT, NVML_DEVICE_MIG_ENABLE, NVML_GPU_INSTANCE_PROFILE_COUNT,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The smallest buffer handed to list calls: a GPU has at most 7 GPU instances and a GPU
/// instance at most 7 compute instances, so this always suffices.
const MIN_LIST_BUF: usize = 8;

/// How long `create` waits for the new compute instance's MIG device to be enumerable.
const MIG_DEVICE_WAIT: Duration = Duration::from_secs(2);

/// A failed raw NVML call, before it is given its meaning for the caller.
#[derive(Debug)]
enum Raw {
    /// The loaded driver lacks the symbol.
    Missing { call: &'static str, why: String },
    /// The call returned an error code.
    Code { call: &'static str, err: NvmlError },
}

impl Raw {
    fn code(call: &'static str) -> impl FnOnce(NvmlError) -> Raw {
        move |err| Raw::Code { call, err }
    }

    /// `NOT_FOUND`, `INVALID_ARGUMENT` or `NOT_SUPPORTED`: the object (or the profile on
    /// this GPU) does not exist.
    fn is_absent(&self) -> bool {
        matches!(self, Raw::Code { err: NvmlError::NotFound | NvmlError::InvalidArg | NvmlError::NotSupported, .. })
    }

    fn is_in_use(&self) -> bool {
        matches!(self, Raw::Code { err: NvmlError::InUse, .. })
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Missing { call, why } => {
                write!(f, "NVML: the loaded driver library has no `{call}` ({why}); a newer driver is needed")
            }
            Raw::Code { call, err: err @ NvmlError::NoPermission } => {
                write!(f, "NVML: {call}: {err} (MIG management needs root or the MIG capability devices)")
            }
            Raw::Code { call, err } => write!(f, "NVML: {call}: {}", describe(err)),
        }
    }
}

/// `NVML_ERROR_INSUFFICIENT_RESOURCES`: the placement is taken (or over a cap).
const INSUFFICIENT_RESOURCES: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES;
const ARGUMENT_VERSION_MISMATCH: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
const NOT_READY: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_NOT_READY;
const GPU_NOT_FOUND: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_GPU_NOT_FOUND;
const INVALID_STATE: nvmlReturn_t = nvmlReturn_enum_NVML_ERROR_INVALID_STATE;

/// An NVML error in words, naming the return codes `nvml-wrapper` does not know.
fn describe(err: &NvmlError) -> String {
    let name = match err {
        NvmlError::UnexpectedVariant(c) => match *c {
            INSUFFICIENT_RESOURCES => "insufficient resources",
            ARGUMENT_VERSION_MISMATCH => "argument version mismatch",
            NOT_READY => "not ready",
            GPU_NOT_FOUND => "GPU not found",
            INVALID_STATE => "invalid state",
            _ => return err.to_string(),
        },
        _ => return err.to_string(),
    };
    format!("{name} ({err})")
}

impl From<Raw> for GpuError {
    fn from(r: Raw) -> GpuError {
        GpuError::Unavailable(r.to_string())
    }
}

/// Look a raw function up in the loaded table; a missing symbol is an error, never a panic.
macro_rules! raw {
    ($nvml:expr, $f:ident) => {
        $nvml.lib().$f.as_ref().map_err(|e| Raw::Missing { call: stringify!($f), why: e.to_string() })
    };
}

fn check(call: &'static str, ret: nvmlReturn_t) -> Result<(), Raw> {
    nvml_try(ret).map_err(Raw::code(call))
}

/// A GPU-instance placement as the driver reports it, in memory-slice units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GiPlacement {
    /// First memory slice.
    pub start: u32,
    /// Width in memory slices.
    pub size: u32,
}

impl From<nvmlGpuInstancePlacement_t> for GiPlacement {
    fn from(p: nvmlGpuInstancePlacement_t) -> Self {
        GiPlacement { start: p.start, size: p.size }
    }
}

// ---- raw calls -------------------------------------------------------------------------

fn gi_profile_info(dev: &Device<'_>, nvml_enum: u32) -> Result<nvmlGpuInstanceProfileInfo_t, Raw> {
    let f = raw!(dev.nvml(), nvmlDeviceGetGpuInstanceProfileInfo)?;
    // SAFETY: the struct is plain C data for which all-zero bytes are a valid value.
    let mut info: nvmlGpuInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `f` has this exact C signature; the device handle is valid while `dev` (and so
    // the NVML session) lives; `info` is a valid out-pointer.
    check("nvmlDeviceGetGpuInstanceProfileInfo", unsafe { f(dev.handle(), nvml_enum, &mut info) })?;
    Ok(info)
}

/// The driver's profile name (`MIG 1g.10gb`), when the driver has the versioned call.
fn gi_profile_name(dev: &Device<'_>, nvml_enum: u32) -> Option<String> {
    let f = raw!(dev.nvml(), nvmlDeviceGetGpuInstanceProfileInfoV).ok()?;
    // SAFETY: plain C data; all-zero bytes are valid.
    let mut info: nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
    // NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2) = sizeof(struct) | (2 << 24).
    info.version = std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as u32 | (2 << 24);
    // SAFETY: as in `gi_profile_info`; `info.version` tells the driver the struct's layout.
    check("nvmlDeviceGetGpuInstanceProfileInfoV", unsafe { f(dev.handle(), nvml_enum, &mut info) }).ok()?;
    let bytes: Vec<u8> = info.name.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes).ok().map(|s| s.to_string_lossy().into_owned())
}

/// `nvmlDeviceGetGpuInstancePossiblePlacements_v2`, done right (see the module docs).
fn gi_possible_placements(dev: &Device<'_>, profile_id: u32) -> Result<Vec<GiPlacement>, Raw> {
    let f = raw!(dev.nvml(), nvmlDeviceGetGpuInstancePossiblePlacements_v2)?;
    const CALL: &str = "nvmlDeviceGetGpuInstancePossiblePlacements_v2";
    let mut count: u32 = 0;
    // SAFETY: a null buffer asks only for the count, written to a valid out-pointer.
    check(CALL, unsafe { f(dev.handle(), profile_id, std::ptr::null_mut(), &mut count) })?;
    let mut buf = vec![nvmlGpuInstancePlacement_t { start: 0, size: 0 }; (count as usize).max(MIN_LIST_BUF)];
    // SAFETY: `buf` holds initialised elements, at least as many as the driver just reported.
    check(CALL, unsafe { f(dev.handle(), profile_id, buf.as_mut_ptr(), &mut count) })?;
    buf.truncate(count as usize);
    Ok(buf.into_iter().map(GiPlacement::from).collect())
}

fn list_gis(dev: &Device<'_>, profile_id: u32, cap: usize) -> Result<Vec<nvmlGpuInstance_t>, Raw> {
    let f = raw!(dev.nvml(), nvmlDeviceGetGpuInstances)?;
    let mut buf: Vec<nvmlGpuInstance_t> = vec![std::ptr::null_mut(); cap.max(MIN_LIST_BUF)];
    let mut count: u32 = 0;
    // SAFETY: the buffer is larger than the profile's instance cap (NVML's requirement) and
    // initialised; `count` is a valid out-pointer.
    check("nvmlDeviceGetGpuInstances", unsafe { f(dev.handle(), profile_id, buf.as_mut_ptr(), &mut count) })?;
    buf.truncate((count as usize).min(buf.len()));
    Ok(buf)
}

fn gi_info(nvml: &Nvml, gi: nvmlGpuInstance_t) -> Result<nvmlGpuInstanceInfo_t, Raw> {
    let f = raw!(nvml, nvmlGpuInstanceGetInfo)?;
    // SAFETY: plain C data (a null device pointer and zeros) is a valid value.
    let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `gi` is a GPU-instance handle the driver just returned in this session.
    check("nvmlGpuInstanceGetInfo", unsafe { f(gi, &mut info) })?;
    Ok(info)
}

fn gi_by_id(dev: &Device<'_>, id: u32) -> Result<nvmlGpuInstance_t, Raw> {
    let f = raw!(dev.nvml(), nvmlDeviceGetGpuInstanceById)?;
    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: valid device handle and out-pointer.
    check("nvmlDeviceGetGpuInstanceById", unsafe { f(dev.handle(), id, &mut gi) })?;
    Ok(gi)
}

fn create_gi(dev: &Device<'_>, profile_id: u32, at: nvmlGpuInstancePlacement_t) -> Result<nvmlGpuInstance_t, Raw> {
    let f = raw!(dev.nvml(), nvmlDeviceCreateGpuInstanceWithPlacement)?;
    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: valid device handle; `at` lives across the call; valid out-pointer.
    check("nvmlDeviceCreateGpuInstanceWithPlacement", unsafe { f(dev.handle(), profile_id, &at, &mut gi) })?;
    Ok(gi)
}

fn destroy_gi(nvml: &Nvml, gi: nvmlGpuInstance_t) -> Result<(), Raw> {
    let f = raw!(nvml, nvmlGpuInstanceDestroy)?;
    // SAFETY: `gi` is a live GPU-instance handle of this session; it is not used afterwards.
    check("nvmlGpuInstanceDestroy", unsafe { f(gi) })
}

/// The compute-instance profiles a GPU instance offers (shared engines), deduplicated by id.
fn ci_profiles(nvml: &Nvml, gi: nvmlGpuInstance_t) -> Result<Vec<nvmlComputeInstanceProfileInfo_t>, Raw> {
    let f = raw!(nvml, nvmlGpuInstanceGetComputeInstanceProfileInfo)?;
    let mut out: Vec<nvmlComputeInstanceProfileInfo_t> = Vec::new();
    for profile in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        // SAFETY: plain C data; all-zero bytes are valid.
        let mut info: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: live GPU-instance handle; valid out-pointer.
        let ret = unsafe { f(gi, profile, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &mut info) };
        match check("nvmlGpuInstanceGetComputeInstanceProfileInfo", ret) {
            Ok(()) if !out.iter().any(|o| o.id == info.id) => out.push(info),
            Ok(()) => {}
            Err(e) if e.is_absent() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn list_cis(
    nvml: &Nvml,
    gi: nvmlGpuInstance_t,
    profile: &nvmlComputeInstanceProfileInfo_t,
) -> Result<Vec<nvmlComputeInstance_t>, Raw> {
    let f = raw!(nvml, nvmlGpuInstanceGetComputeInstances)?;
    let mut buf: Vec<nvmlComputeInstance_t> =
        vec![std::ptr::null_mut(); (profile.instanceCount as usize).max(MIN_LIST_BUF)];
    let mut count: u32 = 0;
    // SAFETY: live GPU-instance handle; the buffer exceeds the profile's instance cap.
    check("nvmlGpuInstanceGetComputeInstances", unsafe { f(gi, profile.id, buf.as_mut_ptr(), &mut count) })?;
    buf.truncate((count as usize).min(buf.len()));
    Ok(buf)
}

fn create_ci(nvml: &Nvml, gi: nvmlGpuInstance_t, profile_id: u32) -> Result<nvmlComputeInstance_t, Raw> {
    let f = raw!(nvml, nvmlGpuInstanceCreateComputeInstance)?;
    let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
    // SAFETY: live GPU-instance handle; valid out-pointer.
    check("nvmlGpuInstanceCreateComputeInstance", unsafe { f(gi, profile_id, &mut ci) })?;
    Ok(ci)
}

fn destroy_ci(nvml: &Nvml, ci: nvmlComputeInstance_t) -> Result<(), Raw> {
    let f = raw!(nvml, nvmlComputeInstanceDestroy)?;
    // SAFETY: `ci` is a live compute-instance handle of this session; not used afterwards.
    check("nvmlComputeInstanceDestroy", unsafe { f(ci) })
}

/// Destroy every compute instance of `gi`, then `gi` itself.
fn teardown(nvml: &Nvml, gi: nvmlGpuInstance_t) -> Result<(), Raw> {
    for profile in ci_profiles(nvml, gi)? {
        for ci in list_cis(nvml, gi, &profile)? {
            destroy_ci(nvml, ci)?;
        }
    }
    destroy_gi(nvml, gi)
}

/// The GPU-instance id of a MIG device handle.
fn gpu_instance_id_of(mig: &Device<'_>) -> Result<u32, Raw> {
    let f = raw!(mig.nvml(), nvmlDeviceGetGpuInstanceId)?;
    let mut id: u32 = 0;
    // SAFETY: `mig` is a MIG device handle from this session; valid out-pointer.
    check("nvmlDeviceGetGpuInstanceId", unsafe { f(mig.handle(), &mut id) })?;
    Ok(id)
}

/// MIG device UUIDs by GPU-instance id (one per compute instance, in MIG-device order).
fn mig_uuids(dev: &Device<'_>) -> Result<BTreeMap<u32, Vec<String>>, Raw> {
    let max = dev.mig_device_count().map_err(Raw::code("nvmlDeviceGetMaxMigDeviceCount"))?;
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for i in 0..max {
        let mig = match dev.mig_device_by_index(i) {
            Ok(m) => m,
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => continue,
            Err(err) => return Err(Raw::Code { call: "nvmlDeviceGetMigDeviceHandleByIndex", err }),
        };
        let gi = gpu_instance_id_of(&mig)?;
        let uuid = mig.uuid().map_err(Raw::code("nvmlDeviceGetUUID"))?;
        out.entry(gi).or_default().push(uuid);
    }
    Ok(out)
}

/// MIG mode (current, pending); `None` where the GPU does not support MIG.
fn mig_mode(dev: &Device<'_>) -> Result<Option<(bool, bool)>, Raw> {
    match dev.mig_mode() {
        Ok(m) => Ok(Some((m.current == NVML_DEVICE_MIG_ENABLE, m.pending == NVML_DEVICE_MIG_ENABLE))),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(err) => Err(Raw::Code { call: "nvmlDeviceGetMigMode", err }),
    }
}

fn mig_enabled(dev: &Device<'_>) -> Result<bool, Raw> {
    Ok(mig_mode(dev)?.is_some_and(|(current, _)| current))
}

/// The driver's profile id and instance cap for a catalogue profile, falling back to the
/// catalogue's id when the driver does not answer.
fn driver_profile(dev: &Device<'_>, p: &MigProfile) -> (u32, usize) {
    match gi_profile_info(dev, p.nvml_enum) {
        Ok(info) => {
            if info.id != p.id {
                tracing::debug!(profile = p.name, catalogue = p.id, driver = info.id, "MIG profile id differs");
            }
            (info.id, info.instanceCount as usize)
        }
        Err(_) => (p.id, usize::from(p.max_instances)),
    }
}

// ---- discovery -------------------------------------------------------------------------

/// Map an NVML device name and its total memory (MiB, when known) to a catalogue model.
///
/// Matches whole name tokens, so `GH200` is not an `H200`. A100: 40 or 80 GB by memory (or
/// by a `40GB`/`80GB` token when memory is unknown), any form factor. H100: the 80 GB SXM
/// part only (`NVIDIA H100 80GB HBM3`); PCIe and NVL parts have other SM counts or profile
/// sizes and are not in the catalogue. H200: any form factor with 120–160 GiB.
pub fn model_from_name(name: &str, total_mib: Option<u64>) -> Option<GpuModel> {
    let tokens: Vec<String> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    let has = |t: &str| tokens.iter().any(|x| x == t);
    let gib = total_mib.map(|m| m as f64 / 1024.0);
    if has("A100") {
        return match gib {
            Some(g) if g < 60.0 => Some(GpuModel::A100_40gb),
            Some(_) => Some(GpuModel::A100_80gb),
            None if has("40GB") => Some(GpuModel::A100_40gb),
            None if has("80GB") => Some(GpuModel::A100_80gb),
            None => None,
        };
    }
    if has("H100") {
        if has("PCIE") || has("NVL") {
            return None;
        }
        return match gib {
            Some(g) if (64.0..=88.0).contains(&g) => Some(GpuModel::H100_80gb),
            Some(_) => None,
            None => has("80GB").then_some(GpuModel::H100_80gb),
        };
    }
    if has("H200") {
        return match gib {
            Some(g) if (120.0..=160.0).contains(&g) => Some(GpuModel::H200),
            Some(_) => None,
            None => Some(GpuModel::H200),
        };
    }
    None
}

/// A loaded NVML session, shared by the [`NvmlGpu`]s it yields.
#[derive(Debug, Clone)]
pub struct NvmlBackend {
    nvml: Arc<Nvml>,
}

/// Load NVML and open every GPU: [`NvmlBackend::init`] then [`NvmlBackend::gpus`].
pub fn discover() -> Result<Vec<NvmlGpu>, GpuError> {
    NvmlBackend::init()?.gpus()
}

fn init_error(e: NvmlError) -> GpuError {
    let hint = match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => "is the NVIDIA driver installed?",
        NvmlError::DriverNotLoaded => "is the nvidia kernel module loaded?",
        NvmlError::NoPermission => "does this user have access to /dev/nvidia*?",
        _ => "the GPU driver is unusable",
    };
    GpuError::Unavailable(format!("NVML: cannot initialise ({e}); {hint}"))
}

impl NvmlBackend {
    /// Load the driver's `libnvidia-ml.so.1` and initialise NVML. No driver gives
    /// [`GpuError::Unavailable`] (`NVML: cannot initialise (...)`), never a panic.
    pub fn init() -> Result<NvmlBackend, GpuError> {
        Nvml::init().map(|n| NvmlBackend { nvml: Arc::new(n) }).map_err(init_error)
    }

    /// Initialise NVML from a given library file (a mock `libnvidia-ml.so`, say).
    pub fn with_library(path: impl AsRef<OsStr>) -> Result<NvmlBackend, GpuError> {
        Nvml::builder().lib_path(path.as_ref()).init().map(|n| NvmlBackend { nvml: Arc::new(n) }).map_err(init_error)
    }

    /// The driver version string, when the driver reports one.
    pub fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }

    /// How many GPUs NVML sees.
    pub fn device_count(&self) -> Result<u32, GpuError> {
        self.nvml.device_count().map_err(|err| Raw::Code { call: "nvmlDeviceGetCount", err }.into())
    }

    /// Open the GPU at NVML index `index`. A model outside the catalogue is
    /// [`GpuError::Unavailable`] naming the device.
    pub fn gpu(&self, index: u32) -> Result<NvmlGpu, GpuError> {
        let dev = self.nvml.device_by_index(index).map_err(Raw::code("nvmlDeviceGetHandleByIndex"))?;
        let uuid = dev.uuid().map_err(Raw::code("nvmlDeviceGetUUID"))?;
        let name = dev.name().map_err(Raw::code("nvmlDeviceGetName"))?;
        let total_mib = dev.memory_info().ok().map(|m| m.total / (1024 * 1024));
        let model = model_from_name(&name, total_mib).ok_or_else(|| {
            let mem = total_mib.map_or_else(|| "unknown memory".to_string(), |m| format!("{m} MiB"));
            GpuError::Unavailable(format!(
                "NVML: GPU {index} `{name}` ({uuid}, {mem}) is not in the catalogue \
                 (supported: a100-40gb, a100-80gb, h100-80gb, h200)"
            ))
        })?;
        Ok(NvmlGpu {
            nvml: Arc::clone(&self.nvml),
            index,
            uuid,
            name,
            spec: model.spec(),
            workers: BTreeMap::new(),
            last: Duration::ZERO,
        })
    }

    /// Open every GPU, in NVML index order.
    pub fn gpus(&self) -> Result<Vec<NvmlGpu>, GpuError> {
        (0..self.device_count()?).map(|i| self.gpu(i)).collect()
    }
}

// ---- one GPU ---------------------------------------------------------------------------

/// One physical GPU driven through NVML.
#[derive(Debug)]
pub struct NvmlGpu {
    nvml: Arc<Nvml>,
    index: u32,
    uuid: String,
    name: String,
    spec: &'static GpuSpec,
    /// Booked worker memory (GiB) per GPU-instance id.
    workers: BTreeMap<InstanceId, Vec<f64>>,
    last: Duration,
}

/// One GPU-instance profile as the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileReadBack {
    /// The `NVML_GPU_INSTANCE_PROFILE_*` enum it was queried by.
    pub nvml_enum: u32,
    /// The driver's profile id.
    pub id: u32,
    /// The driver's name (`MIG 1g.10gb`), when it has the versioned call.
    pub driver_name: Option<String>,
    /// The catalogue profile with this enum, if any.
    pub catalogue: Option<String>,
    /// Compute slices.
    pub slice_count: u32,
    /// Per-GPU instance cap.
    pub instance_count: u32,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Every placement the profile may take, free or not.
    pub placements: Vec<GiPlacement>,
}

/// One live GPU instance as the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GiReadBack {
    /// The driver's GPU-instance id.
    pub id: u32,
    /// The driver's profile id.
    pub profile_id: u32,
    /// The catalogue profile name, if the profile is in the catalogue.
    pub profile: Option<String>,
    /// Placement (start and width in memory slices).
    pub placement: GiPlacement,
    /// MIG device UUIDs of its compute instances (empty: no compute instance).
    pub mig_uuids: Vec<String>,
}

/// A read-only snapshot of one GPU, for hardware fixtures and diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NvmlReadBack {
    /// NVML index.
    pub index: u32,
    /// Device name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// GPU UUID (`GPU-...`).
    pub uuid: String,
    /// The catalogue model it maps to.
    pub model: GpuModel,
    /// Total memory, MiB.
    pub memory_total_mib: Option<u64>,
    /// Current MIG mode (`None`: MIG not supported).
    pub mig_current: Option<bool>,
    /// Pending MIG mode (`None`: MIG not supported).
    pub mig_pending: Option<bool>,
    /// The GPU-instance profiles the driver reports (empty with MIG off on some drivers).
    pub profiles: Vec<ProfileReadBack>,
    /// Live GPU instances, sorted by start.
    pub instances: Vec<GiReadBack>,
}

impl NvmlGpu {
    /// NVML index of the GPU.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device name NVML reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MPS client limit of an instance of catalogue profile `profile` (the simulator's
    /// approximation, see [`super::sim::SimGpu::client_limit`]).
    pub fn client_limit(&self, profile: usize) -> u32 {
        48 * u32::from(self.spec.profiles[profile].compute_slices) / 7
    }

    fn device<'n>(nvml: &'n Nvml, uuid: &str) -> Result<Device<'n>, GpuError> {
        nvml.device_by_uuid(uuid).map_err(|err| Raw::Code { call: "nvmlDeviceGetHandleByUUID", err }.into())
    }

    /// MIG mode: `(current, pending)`, `None` where the GPU does not support MIG. Read only.
    pub fn mig_mode(&self) -> Result<Option<(bool, bool)>, GpuError> {
        let dev = Self::device(&self.nvml, &self.uuid)?;
        Ok(mig_mode(&dev)?)
    }

    /// Every placement the driver allows a catalogue profile, free or not (the working
    /// replacement for `Device::possible_placements`). Read only.
    pub fn possible_placements(&self, profile: &str) -> Result<Vec<GiPlacement>, GpuError> {
        let (_, p) = self.profile(profile)?;
        let dev = Self::device(&self.nvml, &self.uuid)?;
        let (id, _) = driver_profile(&dev, p);
        Ok(gi_possible_placements(&dev, id)?)
    }

    /// Index and row of a catalogue profile, or the simulator's `UnknownProfile` error.
    fn profile(&self, name: &str) -> Result<(usize, &'static MigProfile), GpuError> {
        let spec: &'static GpuSpec = self.spec;
        spec.profiles.iter().enumerate().find(|(_, p)| p.name == name).ok_or_else(|| {
            GpuError::Placement(PlacementError::UnknownProfile { profile: name.to_string(), gpu: spec.model })
        })
    }

    /// The live instances, or why they could not be read. With MIG off there are none.
    /// Instances of profiles outside the catalogue are not listed (see [`Self::read_back`]).
    pub fn try_instances(&self) -> Result<Vec<LiveInstance>, GpuError> {
        let dev = Self::device(&self.nvml, &self.uuid)?;
        self.instances_on(&dev)
    }

    fn instances_on(&self, dev: &Device<'_>) -> Result<Vec<LiveInstance>, GpuError> {
        if !mig_enabled(dev)? {
            return Ok(Vec::new());
        }
        let uuids = mig_uuids(dev)?;
        let mut found: BTreeMap<InstanceId, LiveInstance> = BTreeMap::new();
        for p in self.spec.profiles {
            let (id, cap) = driver_profile(dev, p);
            let gis = match list_gis(dev, id, cap) {
                Ok(gis) => gis,
                Err(e) if e.is_absent() => continue,
                Err(e) => return Err(e.into()),
            };
            for gi in gis {
                let info = gi_info(dev.nvml(), gi)?;
                found.entry(info.id).or_insert_with(|| LiveInstance {
                    id: info.id,
                    profile: p.name.to_string(),
                    start: u8::try_from(info.placement.start).unwrap_or(u8::MAX),
                    uuid: uuids.get(&info.id).and_then(|u| u.first()).cloned().unwrap_or_default(),
                    workers: self.workers.get(&info.id).map_or(0, |w| w.len() as u32),
                });
            }
        }
        let mut v: Vec<LiveInstance> = found.into_values().collect();
        v.sort_by_key(|i| i.start);
        Ok(v)
    }

    /// The catalogue profile of a live GPU instance, or `NotFound`.
    fn instance_profile(&self, id: InstanceId) -> Result<usize, GpuError> {
        let dev = Self::device(&self.nvml, &self.uuid)?;
        let gi = match gi_by_id(&dev, id) {
            Ok(gi) => gi,
            Err(e) if e.is_absent() => return Err(GpuError::NotFound(id)),
            Err(e) => return Err(e.into()),
        };
        let info = gi_info(&self.nvml, gi)?;
        self.spec.profiles.iter().position(|p| driver_profile(&dev, p).0 == info.profileId).ok_or_else(|| {
            GpuError::Unavailable(format!(
                "NVML: instance {id} has profile id {}, which is not in the {} catalogue",
                info.profileId, self.spec.model
            ))
        })
    }

    /// A read-only snapshot: name, UUID, memory, MIG mode, the driver's profile table with
    /// possible placements, and the live GPU instances with their MIG device UUIDs. Never
    /// changes MIG mode nor creates or destroys anything.
    pub fn read_back(&self) -> Result<NvmlReadBack, GpuError> {
        let dev = Self::device(&self.nvml, &self.uuid)?;
        let memory_total_mib = dev.memory_info().ok().map(|m| m.total / (1024 * 1024));
        let mode = mig_mode(&dev)?;
        let mut profiles: Vec<ProfileReadBack> = Vec::new();
        for e in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
            let info = match gi_profile_info(&dev, e) {
                Ok(i) => i,
                Err(err) if err.is_absent() => continue,
                Err(err) => return Err(err.into()),
            };
            if profiles.iter().any(|p| p.id == info.id) {
                continue;
            }
            profiles.push(ProfileReadBack {
                nvml_enum: e,
                id: info.id,
                driver_name: gi_profile_name(&dev, e),
                catalogue: self.spec.profiles.iter().find(|p| p.nvml_enum == e).map(|p| p.name.to_string()),
                slice_count: info.sliceCount,
                instance_count: info.instanceCount,
                sms: info.multiprocessorCount,
                memory_mib: info.memorySizeMB,
                placements: match gi_possible_placements(&dev, info.id) {
                    Ok(v) => v,
                    Err(err) if err.is_absent() => Vec::new(),
                    Err(err) => return Err(err.into()),
                },
            });
        }
        let mut instances: Vec<GiReadBack> = Vec::new();
        if mode.is_some_and(|(current, _)| current) {
            let mut uuids = mig_uuids(&dev)?;
            let ids: Vec<(u32, usize)> = if profiles.is_empty() {
                self.spec.profiles.iter().map(|p| (p.id, usize::from(p.max_instances))).collect()
            } else {
                profiles.iter().map(|p| (p.id, p.instance_count as usize)).collect()
            };
            for (pid, cap) in ids {
                let gis = match list_gis(&dev, pid, cap) {
                    Ok(gis) => gis,
                    Err(e) if e.is_absent() => continue,
                    Err(e) => return Err(e.into()),
                };
                for gi in gis {
                    let info = gi_info(&self.nvml, gi)?;
                    if instances.iter().any(|i| i.id == info.id) {
                        continue;
                    }
                    let profile =
                        profiles.iter().find(|p| p.id == info.profileId).and_then(|p| p.catalogue.clone()).or_else(
                            || self.spec.profiles.iter().find(|p| p.id == info.profileId).map(|p| p.name.into()),
                        );
                    instances.push(GiReadBack {
                        id: info.id,
                        profile_id: info.profileId,
                        profile,
                        placement: info.placement.into(),
                        mig_uuids: uuids.remove(&info.id).unwrap_or_default(),
                    });
                }
            }
            instances.sort_by_key(|i| (i.placement.start, i.id));
        }
        Ok(NvmlReadBack {
            index: self.index,
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            model: self.spec.model,
            memory_total_mib,
            mig_current: mode.map(|m| m.0),
            mig_pending: mode.map(|m| m.1),
            profiles,
            instances,
        })
    }

    /// Create the compute instance and find its MIG UUID inside a fresh GPU instance.
    fn fill_gi(nvml: &Nvml, dev: &Device<'_>, gi: nvmlGpuInstance_t, gi_id: u32) -> Result<String, GpuError> {
        let full =
            ci_profiles(nvml, gi)?.into_iter().max_by_key(|p| (p.sliceCount, p.multiprocessorCount)).ok_or_else(
                || GpuError::Unavailable(format!("NVML: GPU instance {gi_id} offers no compute-instance profile")),
            )?;
        create_ci(nvml, gi, full.id)?;
        let deadline = Instant::now() + MIG_DEVICE_WAIT;
        loop {
            if let Some(uuid) = mig_uuids(dev)?.remove(&gi_id).and_then(|u| u.into_iter().next()) {
                return Ok(uuid);
            }
            if Instant::now() >= deadline {
                return Err(GpuError::Unavailable(format!(
                    "NVML: no MIG device appeared for GPU instance {gi_id} within {MIG_DEVICE_WAIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl GpuBackend for NvmlGpu {
    fn model(&self) -> GpuModel {
        self.spec.model
    }

    fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The live instances; if NVML cannot be read, logs the error and returns none (use
    /// [`NvmlGpu::try_instances`] for the error).
    fn instances(&self) -> Vec<LiveInstance> {
        self.try_instances().unwrap_or_else(|e| {
            tracing::error!(gpu = %self.uuid, error = %e, "cannot read the MIG layout");
            Vec::new()
        })
    }

    fn create(&mut self, profile: &str, start: u8) -> Result<LiveInstance, GpuError> {
        let (p_idx, p) = self.profile(profile)?;
        let nvml = Arc::clone(&self.nvml);
        let dev = Self::device(&nvml, &self.uuid)?;
        if !mig_enabled(&dev)? {
            return Err(GpuError::MigDisabled(self.uuid.clone()));
        }
        let existing: Vec<Placement> = self
            .instances_on(&dev)?
            .iter()
            .filter_map(|i| self.spec.profile_index(&i.profile).map(|profile| Placement { profile, start: i.start }))
            .collect();
        self.spec.check_placement(&existing, Placement { profile: p_idx, start })?;
        let (profile_id, _) = driver_profile(&dev, p);
        let t0 = Instant::now();
        let at = nvmlGpuInstancePlacement_t { start: start.into(), size: p.mem_slices.into() };
        let gi = create_gi(&dev, profile_id, at).map_err(|e| match e {
            Raw::Code { err: NvmlError::UnexpectedVariant(INSUFFICIENT_RESOURCES), .. } => {
                GpuError::Unavailable(format!(
                    "NVML: the driver refused {profile} at {start} (insufficient resources) although the \
                 catalogue allows it next to the live layout: re-read the layout"
                ))
            }
            e => e.into(),
        })?;
        let filled = gi_info(&nvml, gi).map_err(GpuError::from).and_then(|info| {
            let uuid = Self::fill_gi(&nvml, &dev, gi, info.id)?;
            Ok((info.id, uuid))
        });
        let (id, uuid) = match filled {
            Ok(v) => v,
            Err(e) => {
                if let Err(undo) = teardown(&nvml, gi) {
                    tracing::error!(gpu = %self.uuid, error = %undo, "cannot undo a half-created MIG instance");
                    return Err(GpuError::Unavailable(format!("{e}; undoing the GPU instance failed too: {undo}")));
                }
                return Err(e);
            }
        };
        self.last = t0.elapsed();
        self.workers.insert(id, Vec::new());
        Ok(LiveInstance { id, profile: p.name.to_string(), start, uuid, workers: 0 })
    }

    fn destroy(&mut self, id: InstanceId) -> Result<(), GpuError> {
        let nvml = Arc::clone(&self.nvml);
        let dev = Self::device(&nvml, &self.uuid)?;
        let gi = match gi_by_id(&dev, id) {
            Ok(gi) => gi,
            Err(e) if e.is_absent() => {
                self.workers.remove(&id);
                return Err(GpuError::NotFound(id));
            }
            Err(e) => return Err(e.into()),
        };
        let booked = self.workers.get(&id).map_or(0, |w| w.len() as u32);
        if booked > 0 {
            return Err(GpuError::InUse { id, workers: booked });
        }
        let t0 = Instant::now();
        teardown(&nvml, gi).map_err(|e| if e.is_in_use() { GpuError::InUse { id, workers: 1 } } else { e.into() })?;
        self.last = t0.elapsed();
        self.workers.remove(&id);
        Ok(())
    }

    fn attach_worker(&mut self, id: InstanceId, mem_gib: f64) -> Result<(), GpuError> {
        let profile = self.instance_profile(id)?;
        let prof = &self.spec.profiles[profile];
        let limit = self.client_limit(profile);
        let booked = self.workers.entry(id).or_default();
        if booked.len() as u32 >= limit {
            return Err(GpuError::TooManyClients { id, limit });
        }
        let used: f64 = booked.iter().sum();
        if used + mem_gib > prof.mem_gib + 1e-9 {
            return Err(GpuError::OutOfMemory { id, need_gib: mem_gib, cap_gib: prof.mem_gib });
        }
        booked.push(mem_gib);
        Ok(())
    }

    fn detach_worker(&mut self, id: InstanceId) -> Result<(), GpuError> {
        if let Some(w) = self.workers.get_mut(&id) {
            if w.pop().is_some() {
                return Ok(());
            }
        }
        // Nothing booked: tell a live instance (NoWorker) from a gone one (NotFound).
        self.instance_profile(id)?;
        Err(GpuError::NoWorker(id))
    }

    fn last_reconfig(&self) -> Duration {
        self.last
    }
}
