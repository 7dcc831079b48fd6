//! The shipped measured profiles (`examples/profiles/measured-a100-80gb/`), their single-model
//! apps and the cluster app list that registers them: they parse, the planner finds a plan
//! for each at its listed demand on A100 80GB GPUs, and refitting the profile model on them
//! reproduces the constants `synth.rs` ships.

use jigsaw_coordinator::evaluate::evaluate;
use jigsaw_coordinator::planner::{plan, Clock, Goal, PlannerConfig, Problem};
use jigsaw_coordinator::{calibrate, synth, HighsSolver, SearchSpace};
use jigsaw_protocol::profile::LatencyStat;
use jigsaw_protocol::GpuModel;
use std::path::PathBuf;

const MODELS: [&str; 8] =
    ["bert", "densenet121", "densenet169", "mobilenetv2", "resnet101", "resnet50", "vgg16", "vgg19"];

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("examples")
}

struct Frozen;
impl Clock for Frozen {
    fn now_s(&self) -> f64 {
        0.0
    }
}

#[test]
fn every_measured_app_parses_and_plans_at_its_listed_demand() {
    let list = examples().join("clusters").join("measured-a100-80gb.toml");
    let entries =
        jigsaw_cli::appset::load_app_set(&list).and_then(|s| s.for_gpu(GpuModel::A100_80gb, &list)).expect("app list");
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, MODELS, "the list registers all eight measured models");
    assert!(
        jigsaw_cli::appset::load_app_set(&list).and_then(|s| s.for_gpu(GpuModel::H100_80gb, &list)).is_err(),
        "a100 profiles only"
    );
    let cfg = PlannerConfig::default();
    let solver = HighsSolver::default();
    for e in &entries {
        let parsed = e.parse().unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert_eq!(parsed.profiles.latency_stat(), LatencyStat::Mean, "{}: measured means", e.name);
        assert_eq!(parsed.spec.tasks.len(), 1, "{}: single task", e.name);
        assert_eq!(parsed.spec.tasks[0].variants.len(), 1, "{}: one variant", e.name);
        let pb = Problem {
            app: &parsed.spec,
            profiles: &parsed.profiles,
            gpu: GpuModel::A100_80gb,
            gpus: 4,
            space: SearchSpace::FULL,
        };
        let p = plan(pb, Goal::MinCost { demand: e.demand_rps }, &cfg, &solver, &Frozen)
            .unwrap_or_else(|err| panic!("{} at {} req/s: {err}", e.name, e.demand_rps));
        let rep = evaluate(&p, &parsed.spec, &parsed.profiles);
        assert!(rep.ok(), "{}: {:?}", e.name, rep.violations);
        assert!(p.latency_bound_ms <= parsed.spec.latency_slo_ms + 1e-9 && p.gpus_used >= 1);
    }
}

#[test]
fn refitting_the_measured_profiles_reproduces_the_shipped_constants() {
    let models = jigsaw_cli::measured::load_measured(
        &examples().join("profiles").join("measured-a100-80gb"),
        &examples().join("apps").join("measured"),
    )
    .expect("measured profiles");
    assert_eq!(models.len(), MODELS.len());
    let all: Vec<calibrate::Sample> = models.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let fitted = calibrate::fit(&all).to_array();
    for ((name, got), shipped) in synth::Constants::NAMES.iter().zip(fitted).zip(synth::CALIBRATED.to_array()) {
        assert!((got / shipped - 1.0).abs() < 0.02, "{name}: refit {got}, synth::CALIBRATED has {shipped}");
    }
}
