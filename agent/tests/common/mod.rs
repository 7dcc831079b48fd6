//! The GPU backend conformance suite, shared by the simulator tests (`gpu_sim.rs`) and the
//! NVML hardware tests (`gpu_nvml.rs`, behind `JIGSAW_GPU_MIG_WRITE=1`): both sides of the
//! `GpuBackend` trait must pass the same checks.

use jigsaw_agent::gpu::{GpuBackend, GpuError};
use jigsaw_protocol::catalogue::PlacementError;

/// Placement rules: start lists, overlap, `+me` cap.
pub fn conformance_placement(gpu: &mut dyn GpuBackend) {
    let names: Vec<&str> = gpu.model().spec().profiles.iter().map(|p| p.name).collect();
    let g3 = names.iter().find(|n| n.starts_with("3g")).expect("3g");
    let g2 = names.iter().find(|n| n.starts_with("2g")).expect("2g");
    let me = names.iter().find(|n| n.ends_with("+me")).expect("+me");
    assert!(matches!(gpu.create(g3, 2), Err(GpuError::Placement(PlacementError::BadStart { .. }))));
    let a = gpu.create(g2, 4).expect("2g@4");
    eprintln!("create {g2}@4: {:?}", gpu.last_reconfig());
    assert!(matches!(gpu.create(g3, 4), Err(GpuError::Placement(PlacementError::Overlap { .. }))));
    let b = gpu.create(me, 0).expect("+me@0");
    assert!(matches!(gpu.create(me, 1), Err(GpuError::Placement(PlacementError::Cap { .. }))));
    assert_ne!(a.uuid, b.uuid);
    assert!(a.uuid.starts_with("MIG-"));
    gpu.destroy(a.id).expect("destroy");
    eprintln!("destroy {g2}@4: {:?}", gpu.last_reconfig());
    gpu.destroy(b.id).expect("destroy");
    assert!(gpu.instances().is_empty());
    assert!(matches!(gpu.destroy(a.id), Err(GpuError::NotFound(_))));
}

/// Workers: IN_USE, memory cap, re-created instances get new UUIDs.
pub fn conformance_workers(gpu: &mut dyn GpuBackend) {
    let spec = gpu.model().spec();
    let p = spec.profiles.iter().find(|p| p.compute_slices == 7).expect("7g");
    let i = gpu.create(p.name, 0).expect("7g");
    gpu.attach_worker(i.id, p.mem_gib * 0.6).expect("fits");
    assert!(matches!(gpu.attach_worker(i.id, p.mem_gib * 0.6), Err(GpuError::OutOfMemory { .. })));
    assert!(matches!(gpu.destroy(i.id), Err(GpuError::InUse { workers: 1, .. })));
    gpu.detach_worker(i.id).expect("detach");
    assert!(matches!(gpu.detach_worker(i.id), Err(GpuError::NoWorker(_))));
    gpu.destroy(i.id).expect("drained");
    let j = gpu.create(p.name, 0).expect("again");
    assert_ne!(i.uuid, j.uuid, "a re-created instance gets a new UUID");
    gpu.destroy(j.id).expect("destroy");
}
