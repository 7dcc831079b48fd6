//! The NVML backend.
//!
//! * Always run: discovery without a driver is a clean `GpuError::Unavailable` naming NVML
//!   (with a driver, discovery must succeed); device names map to catalogue models.
//! * `JIGSAW_GPU_TESTS=1`: read-only discovery and layout read-back on a real GPU. These
//!   never change MIG mode and never create or destroy instances.
//! * `JIGSAW_GPU_MIG_WRITE=1`: the backend conformance checks of `gpu_sim.rs` (create and
//!   destroy on the real GPU). Needs root, MIG mode on and a GPU with no instances; it refuses
//!   to touch a GPU that has any.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests are shells, not pure cores

mod common;

use common::{conformance_placement, conformance_workers};
use jigsaw_agent::gpu::nvml::{discover, model_from_name, NvmlBackend, NvmlGpu};
use jigsaw_agent::gpu::{GpuBackend, GpuError};
use jigsaw_protocol::catalogue::{GpuModel, Placement};

fn gate(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn is_nvml_unavailable(e: &GpuError) -> bool {
    matches!(e, GpuError::Unavailable(m) if m.contains("NVML"))
}

#[test]
fn discovery_is_a_clean_error_without_a_driver_and_succeeds_with_one() {
    match NvmlBackend::init() {
        Err(e) => {
            assert!(is_nvml_unavailable(&e), "no driver must be Unavailable naming NVML, got {e:?}");
            match discover() {
                Err(e) => assert!(is_nvml_unavailable(&e), "{e:?}"),
                Ok(g) => panic!("discover() found {} GPU(s) although NVML failed to load", g.len()),
            }
        }
        Ok(backend) => {
            let gpus = backend.gpus().expect("with a driver, discovery succeeds on a catalogue GPU");
            assert_eq!(gpus.len() as u32, backend.device_count().expect("count"));
            for g in &gpus {
                assert!(g.uuid().starts_with("GPU-"), "{}", g.uuid());
                assert!(!g.name().is_empty());
            }
        }
    }
}

#[test]
fn backends_can_move_to_the_gpu_actor_thread() {
    fn send<T: Send + 'static>() {}
    send::<NvmlGpu>();
    send::<NvmlBackend>();
}

#[test]
fn a_missing_library_is_unavailable_not_a_panic() {
    let e = NvmlBackend::with_library("/nonexistent/libnvidia-ml.so.1").expect_err("no such library");
    assert!(is_nvml_unavailable(&e), "{e:?}");
    assert!(e.to_string().contains("cannot initialise"), "{e}");
}

#[test]
fn device_names_map_to_catalogue_models() {
    let gib = |g: u64| Some(g * 1024);
    let cases: &[(&str, Option<u64>, Option<GpuModel>)] = &[
        ("NVIDIA H100 80GB HBM3", Some(81559), Some(GpuModel::H100_80gb)),
        ("NVIDIA H100 80GB HBM3", None, Some(GpuModel::H100_80gb)),
        ("NVIDIA A100-SXM4-40GB", Some(40960), Some(GpuModel::A100_40gb)),
        ("NVIDIA A100-SXM4-80GB", Some(81920), Some(GpuModel::A100_80gb)),
        ("NVIDIA A100 80GB PCIe", Some(81920), Some(GpuModel::A100_80gb)),
        ("NVIDIA A100-PCIE-40GB", None, Some(GpuModel::A100_40gb)),
        ("NVIDIA H200", Some(143771), Some(GpuModel::H200)),
        ("NVIDIA H200 NVL", gib(141), Some(GpuModel::H200)),
        // Not in the catalogue: other SM counts or profile tables.
        ("NVIDIA H100 PCIe", Some(81559), None),
        ("NVIDIA H100 NVL", gib(94), None),
        ("NVIDIA GH200 480GB", gib(96), None),
        ("NVIDIA H20", gib(96), None),
        ("NVIDIA A100", None, None),
        ("NVIDIA GeForce RTX 4090", gib(24), None),
        ("Tesla V100-SXM2-32GB", gib(32), None),
    ];
    for &(name, mib, want) in cases {
        assert_eq!(model_from_name(name, mib), want, "{name} {mib:?}");
    }
}

/// The GPUs, when the read-only hardware gate is on and a driver is present.
fn hardware_gpus(var: &str) -> Option<Vec<NvmlGpu>> {
    if !gate(var) {
        eprintln!("skipped: set {var}=1 to run on a real GPU");
        return None;
    }
    Some(discover().expect("JIGSAW hardware tests need an NVIDIA driver and a catalogue GPU"))
}

#[test]
fn hardware_read_back_matches_the_catalogue() {
    let Some(gpus) = hardware_gpus("JIGSAW_GPU_TESTS") else { return };
    assert!(!gpus.is_empty(), "no GPU found");
    for g in &gpus {
        let before = g.mig_mode().expect("MIG mode");
        let rb = g.read_back().expect("read back");
        println!("{}", serde_json::to_string_pretty(&rb).expect("json"));
        assert_eq!(rb.uuid, g.uuid());
        assert_eq!(rb.model, g.model());
        assert_eq!((rb.mig_current, rb.mig_pending), (before.map(|m| m.0), before.map(|m| m.1)));
        let spec = g.model().spec();
        // The driver's placements agree with the catalogue (the possible_placements fix).
        for p in rb.profiles.iter().filter(|p| p.catalogue.is_some()) {
            let name = p.catalogue.as_deref().expect("catalogue name");
            let cat = &spec.profiles[spec.profile_index(name).expect("in catalogue")];
            if p.id != cat.id {
                eprintln!("note: {name}: driver profile id {} vs catalogue {}", p.id, cat.id);
            }
            assert_eq!(p.slice_count, u32::from(cat.compute_slices), "{name}");
            assert_eq!(p.instance_count, u32::from(cat.max_instances), "{name}");
            assert!(!p.placements.is_empty(), "{name}: no placements (the wrapper bug?)");
            let starts: Vec<u32> = p.placements.iter().map(|x| x.start).collect();
            let want: Vec<u32> = cat.starts.iter().map(|&s| u32::from(s)).collect();
            assert_eq!(starts, want, "{name} starts");
            assert!(p.placements.iter().all(|x| x.size == u32::from(cat.mem_slices)), "{name} sizes");
        }
        // The backend's view equals the read-back and is a legal catalogue layout.
        let live = g.try_instances().expect("instances");
        let listed: Vec<(u32, Option<String>, u32)> =
            rb.instances.iter().map(|i| (i.id, i.profile.clone(), i.placement.start)).collect();
        let seen: Vec<(u32, Option<String>, u32)> =
            live.iter().map(|i| (i.id, Some(i.profile.clone()), u32::from(i.start))).collect();
        assert_eq!(seen, listed);
        let placements: Vec<Placement> = live
            .iter()
            .map(|i| Placement { profile: spec.profile_index(&i.profile).expect("catalogue"), start: i.start })
            .collect();
        spec.check_layout(&placements).expect("the live layout is legal in the catalogue");
        for (i, r) in live.iter().zip(&rb.instances) {
            assert_eq!(i.uuid.is_empty(), r.mig_uuids.is_empty());
            assert!(i.uuid.is_empty() || i.uuid.starts_with("MIG-"), "{}", i.uuid);
            assert_eq!(i.workers, 0);
        }
        // Nothing above may have changed the GPU.
        assert_eq!(g.mig_mode().expect("MIG mode"), before, "MIG mode must not change");
        assert_eq!(g.read_back().expect("read back again").instances, rb.instances, "layout must not change");
    }
}

#[test]
fn hardware_create_is_refused_cleanly_when_mig_is_off() {
    // Read-only: only runs the refusal path, which checks MIG mode before any write.
    let Some(mut gpus) = hardware_gpus("JIGSAW_GPU_TESTS") else { return };
    for g in &mut gpus {
        if g.mig_mode().expect("MIG mode").is_some_and(|m| m.0) {
            continue;
        }
        let name = g.model().spec().profiles[0].name;
        assert_eq!(g.create(name, 0), Err(GpuError::MigDisabled(g.uuid().to_string())));
        assert!(g.instances().is_empty());
    }
}

// ---- write gate: the conformance checks of `gpu_sim.rs`, on hardware ---------------------

#[test]
fn hardware_conformance_create_destroy() {
    let Some(mut gpus) = hardware_gpus("JIGSAW_GPU_MIG_WRITE") else { return };
    let g = gpus.first_mut().expect("a GPU");
    assert_eq!(g.mig_mode().expect("MIG mode").map(|m| m.0), Some(true), "enable MIG mode first (never done here)");
    let existing = g.try_instances().expect("instances");
    assert!(existing.is_empty(), "refusing to run on a GPU with MIG instances: {existing:?}");
    conformance_placement(g);
    conformance_workers(g);
    assert!(g.try_instances().expect("instances").is_empty(), "the suite leaves the GPU as it found it");
}
