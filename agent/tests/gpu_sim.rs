//! The GPU backend conformance suite (run here against the simulator; the NVML backend will
//! run the same functions behind `JIGSAW_GPU_TESTS=1`) and the plan-diff property.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests are shells, not pure cores

mod common;

use common::{conformance_placement, conformance_workers};
use jigsaw_agent::core::diff::{apply, plan_diff, plan_phases, Assignment, LiveSegment, Phased, Step};
use jigsaw_agent::gpu::sim::SimGpu;
use jigsaw_agent::gpu::{GpuBackend, GpuError};
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::plan::InstancePlan;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn sim(model: GpuModel) -> SimGpu {
    SimGpu::new(model, 7, Duration::from_millis(250))
}

#[test]
fn simulator_conforms_on_every_model() {
    for m in GpuModel::ALL {
        conformance_placement(&mut sim(m));
        conformance_workers(&mut sim(m));
    }
}

#[test]
fn simulator_limits_mps_clients_and_reports_latency() {
    let mut g = sim(GpuModel::H100_80gb);
    let i = g.create("1g.10gb", 3).expect("1g");
    assert_eq!(g.last_reconfig(), Duration::from_millis(250));
    let limit = g.client_limit(0);
    for _ in 0..limit {
        g.attach_worker(i.id, 0.01).expect("within limit");
    }
    assert!(matches!(g.attach_worker(i.id, 0.01), Err(GpuError::TooManyClients { .. })));
}

fn inst(profile: &str, start: u8, task: &str, mps: u8) -> InstancePlan {
    InstancePlan { slices: 0, mps, ..jigsaw_protocol::testing::instance(task, profile, start) }
}

fn live_segments(gpu: &SimGpu, assignments: &[(u8, Assignment)]) -> Vec<LiveSegment> {
    gpu.instances()
        .into_iter()
        .map(|i| {
            let a = assignments.iter().find(|(s, _)| *s == i.start).map(|(_, a)| a.clone());
            LiveSegment { instance: i, assignment: a }
        })
        .collect()
}

fn mem_of(model: GpuModel) -> impl Fn(&Assignment) -> f64 {
    // Each worker takes a quarter of the smallest instance: always fits up to MPS 4.
    let smallest = model.spec().profiles.iter().map(|p| p.mem_gib).fold(f64::INFINITY, f64::min);
    move |_| smallest / 4.0
}

#[test]
fn diff_reassigns_without_recreating_and_breaks_before_making_overlaps() {
    let model = GpuModel::H100_80gb;
    let mut g = sim(model);
    let mem = mem_of(model);
    // Live: 4g@0 running `a`, 3g@4 running `b`.
    let target0 = vec![inst("4g.40gb", 0, "a", 2), inst("3g.40gb", 4, "b", 1)];
    let steps = plan_diff(model.spec(), &live_segments(&g, &[]), &target0).expect("diff");
    apply(&mut g, &steps, &mem).expect("applies");
    let uuid_4g = g.instances()[0].uuid.clone();
    let assigned: Vec<(u8, Assignment)> = target0.iter().map(|t| (t.start, Assignment::of(t))).collect();
    // Target: keep 4g@0 but run `c`; replace 3g@4 by 2g@4 + 1g@6.
    let target1 = vec![inst("4g.40gb", 0, "c", 1), inst("2g.20gb", 4, "b", 2), inst("1g.10gb", 6, "b", 1)];
    let steps = plan_diff(model.spec(), &live_segments(&g, &assigned), &target1).expect("diff");
    let destroy_at = steps.iter().position(|s| matches!(s, jigsaw_agent::core::diff::Step::Destroy { start: 4 }));
    let create_2g = steps.iter().position(|s| matches!(s, jigsaw_agent::core::diff::Step::Create { start: 4, .. }));
    assert!(destroy_at < create_2g, "{steps:?}");
    apply(&mut g, &steps, &mem).expect("applies");
    let live = g.instances();
    assert_eq!(live[0].uuid, uuid_4g, "the kept 4g instance was not re-created");
    assert_eq!(
        live.iter().map(|i| (i.profile.as_str(), i.start, i.workers)).collect::<Vec<_>>(),
        vec![("4g.40gb", 0, 1), ("2g.20gb", 4, 2), ("1g.10gb", 6, 1)]
    );
}

#[test]
fn a_batch_size_change_alone_restarts_nothing() {
    let model = GpuModel::H100_80gb;
    let mut g = sim(model);
    let mem = mem_of(model);
    let target0 = vec![inst("3g.40gb", 0, "a", 2), inst("2g.20gb", 4, "b", 1)];
    let steps = plan_diff(model.spec(), &live_segments(&g, &[]), &target0).expect("diff");
    apply(&mut g, &steps, &mem).expect("applies");
    let assigned: Vec<(u8, Assignment)> = target0.iter().map(|t| (t.start, Assignment::of(t))).collect();
    // Same instances and workers, other batch sizes: no step, and nothing waits to serve.
    let retuned: Vec<InstancePlan> = target0.iter().map(|t| InstancePlan { batch: t.batch * 4, ..t.clone() }).collect();
    let phased = plan_phases(model.spec(), &live_segments(&g, &assigned), &retuned).expect("diff");
    assert_eq!(phased, Phased::default());
    // An MPS change does restart the workers, and that instance does not serve until then.
    let mut remps = retuned.clone();
    remps[1].mps = 2;
    let phased = plan_phases(model.spec(), &live_segments(&g, &assigned), &remps).expect("diff");
    assert!(phased.make.is_empty(), "{phased:?}");
    assert_eq!(phased.deferred, vec![4]);
    assert!(matches!(phased.rest.as_slice(), [Step::StopWorkers { start: 4 }, Step::StartWorkers { start: 4, .. }]));
}

#[test]
fn illegal_targets_are_rejected_before_any_step() {
    let model = GpuModel::H100_80gb;
    let g = sim(model);
    let bad = vec![inst("4g.40gb", 0, "a", 1), inst("2g.20gb", 2, "b", 1)];
    assert!(plan_diff(model.spec(), &live_segments(&g, &[]), &bad).is_err());
}

/// A random legal layout: a random subset of a random maximal layout, with assignments.
fn random_layout(model: GpuModel, pick: usize, mask: u32, salt: u32) -> Vec<InstancePlan> {
    let spec = model.spec();
    let layouts = spec.maximal_layouts(|p| p.plannable());
    let l = &layouts[pick % layouts.len()];
    l.placements
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, p)| {
            let task = ["a", "b", "c"][((salt >> (2 * i)) % 3) as usize];
            let mps = 1 + ((salt >> (3 * i + 1)) % 4) as u8;
            inst(spec.profiles[p.profile].name, p.start, task, mps)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// From any legal live layout to any legal target: every step succeeds on the
    /// simulator, no instance is destroyed while it has workers, and the GPU ends exactly at
    /// the target (same instances, one worker per MPS process).
    #[test]
    fn diff_reaches_any_target(m in 0usize..4, a in any::<usize>(), am in any::<u32>(), asalt in any::<u32>(),
                               b in any::<usize>(), bm in any::<u32>(), bsalt in any::<u32>()) {
        let model = GpuModel::ALL[m];
        let mem = mem_of(model);
        let mut g = sim(model);
        let from = random_layout(model, a, am, asalt);
        let steps = plan_diff(model.spec(), &live_segments(&g, &[]), &from).expect("diff from empty");
        prop_assert!(apply(&mut g, &steps, &mem).is_ok());
        let assigned: Vec<(u8, Assignment)> = from.iter().map(|t| (t.start, Assignment::of(t))).collect();
        let to = random_layout(model, b, bm, bsalt);
        let steps = plan_diff(model.spec(), &live_segments(&g, &assigned), &to).expect("diff");
        let r = apply(&mut g, &steps, &mem);
        prop_assert!(r.is_ok(), "{r:?} for {steps:?}");
        let got: BTreeSet<(String, u8, u32)> = g.instances().into_iter().map(|i| (i.profile, i.start, i.workers)).collect();
        let want: BTreeSet<(String, u8, u32)> = to.iter().map(|t| (t.mig_profile.clone(), t.start, u32::from(t.mps))).collect();
        prop_assert_eq!(got, want);
    }
}
