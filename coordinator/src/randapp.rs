//! Seeded random applications for planner benchmarks and property tests (SYNTHETIC).
//!
//! Every app this module generates is made up: the task graph, the variants' sizes and
//! accuracies, the fan-out factors and the SLOs are drawn from a [`SplitMix64`] seeded by
//! the caller, and the profiles come from the analytic model in [`crate::synth`]. Nothing
//! here was tuned to make the planner fast; the point is apps nobody tuned for.
//!
//! Shape of one app (`generate(seed, gpu)`):
//! * 2–6 tasks `t0..`; `t0` is the root, every later task gets one parent among the earlier
//!   tasks, and (with 4+ tasks, one time in three) one extra edge that makes a join, so a
//!   task may have two parents;
//! * 1–3 of the edges fan out: factor 1.2–4 for the smallest variant, growing up to 30 %
//!   with the variant's size (a better detector finds more objects); the other edges carry a
//!   constant factor 0.3–1 (a filter) or none (1.0);
//! * 2–8 variants per task, all of one family the profile model knows
//!   ([`crate::synth::family_kernels`]), sized on a geometric ladder between the family's
//!   smallest and largest published sizes, with accuracy increasing with size;
//! * accuracy SLO 0.80–0.97 of the maximum; latency SLO = 2 × (the slowest path's sum of
//!   fastest p95 latencies on `gpu`) × a factor 1.3–6, so every app is latency-feasible
//!   and the slack varies from tight to loose.
//!
//! Pure: no clock, no I/O; the same seed and GPU give the same app on every machine.

use crate::synth;
use jigsaw_protocol::app::{AppSpec, Edge, ModelDesc, TaskSpec, VariantSpec};
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::profile::ProfileTable;
use jigsaw_protocol::rng::SplitMix64;
use std::collections::BTreeMap;

/// One model family's size range (smallest and largest published variant) and accuracy
/// range, as in the example apps' sources. `decode_steps` > 1 for autoregressive models.
#[derive(Debug, Clone, Copy)]
struct Family {
    name: &'static str,
    gflops: (f64, f64),
    params_m: (f64, f64),
    activation_mb: (f64, f64),
    accuracy: (f64, f64),
    decode_steps: u32,
}

/// Families of [`crate::synth::family_kernels`], with size ranges of their public
/// model zoos (torchvision, Ultralytics, EfficientNet and GIT papers).
const FAMILIES: [Family; 6] = [
    Family {
        name: "resnet",
        gflops: (3.6, 23.0),
        params_m: (11.7, 60.2),
        activation_mb: (25.0, 210.0),
        accuracy: (0.70, 0.78),
        decode_steps: 1,
    },
    Family {
        name: "efficientnet",
        gflops: (0.78, 37.0),
        params_m: (5.3, 66.0),
        activation_mb: (25.0, 400.0),
        accuracy: (0.77, 0.844),
        decode_steps: 1,
    },
    Family {
        name: "vgg",
        gflops: (15.2, 39.3),
        params_m: (132.9, 143.7),
        activation_mb: (60.0, 120.0),
        accuracy: (0.69, 0.724),
        decode_steps: 1,
    },
    Family {
        name: "yolov5",
        gflops: (4.5, 205.7),
        params_m: (1.9, 86.7),
        activation_mb: (40.0, 160.0),
        accuracy: (0.28, 0.507),
        decode_steps: 1,
    },
    Family {
        name: "git",
        gflops: (40.0, 420.0),
        params_m: (129.0, 681.0),
        activation_mb: (150.0, 500.0),
        accuracy: (0.876, 0.95),
        decode_steps: 20,
    },
    Family {
        name: "tts",
        gflops: (35.0, 60.0),
        params_m: (36.0, 42.5),
        activation_mb: (160.0, 200.0),
        accuracy: (0.754, 0.886),
        decode_steps: 1,
    },
];

/// The seed of app `index` of a benchmark run seeded with `seed` (one splitmix64 step, so
/// neighbouring indices give unrelated apps).
pub fn app_seed(seed: u64, index: usize) -> u64 {
    SplitMix64::new(seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F)).next_u64()
}

struct Rng(SplitMix64);

impl Rng {
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.unit()
    }
    /// Uniform integer in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.0.below((hi - lo + 1) as u64) as usize
    }
    fn round(x: f64, digits: i32) -> f64 {
        let k = 10f64.powi(digits);
        (x * k).round() / k
    }
}

/// Geometric interpolation between `lo` and `hi` at `u ∈ [0, 1]`.
fn geo(r: (f64, f64), u: f64) -> f64 {
    r.0 * (r.1 / r.0).powf(u)
}

/// A random application (without profiles) for `seed`; its latency SLO is set for `gpu`.
pub fn generate(seed: u64, gpu: GpuModel) -> AppSpec {
    let mut r = Rng(SplitMix64::new(seed));
    let nt = r.int(2, 6);
    let names: Vec<String> = (0..nt).map(|t| format!("t{t}")).collect();
    let mut edges: Vec<(usize, usize)> = (1..nt).map(|t| (r.int(0, t - 1), t)).collect();
    if nt >= 4 && r.int(0, 2) == 0 {
        // One join: an edge between two tasks not yet connected, earlier to later.
        let candidates: Vec<(usize, usize)> =
            (0..nt).flat_map(|a| (a + 1..nt).map(move |b| (a, b))).filter(|e| !edges.contains(e)).collect();
        if !candidates.is_empty() {
            let e = candidates[r.int(0, candidates.len() - 1)];
            edges.push(e);
        }
    }
    // Which edges fan out (factor > 1): 1–3 of them.
    let n_fan = r.int(1, 3).min(edges.len());
    let mut order: Vec<usize> = (0..edges.len()).collect();
    for i in (1..order.len()).rev() {
        let j = r.int(0, i);
        order.swap(i, j);
    }
    // Per edge: Some((base, growth)) with growth > 0 for fan-out edges, else a constant
    // factor (growth 0) or None (no entry: 1.0).
    let mut edge_factor: Vec<Option<(f64, f64)>> = vec![None; edges.len()];
    for (k, &e) in order.iter().enumerate() {
        edge_factor[e] = if k < n_fan {
            Some((r.range(1.2, 4.0), r.range(0.0, 0.3)))
        } else if r.int(0, 1) == 0 {
            Some((r.range(0.3, 1.0), 0.0))
        } else {
            None
        };
    }
    let mut tasks = Vec::with_capacity(nt);
    for (t, name) in names.iter().enumerate() {
        let fam = FAMILIES[r.int(0, FAMILIES.len() - 1)];
        let nv = r.int(2, 8);
        // Sizes: sorted uniform points on the family's ladder.
        let mut us: Vec<f64> = (0..nv).map(|_| r.0.unit()).collect();
        us.sort_by(f64::total_cmp);
        let variants = us
            .iter()
            .enumerate()
            .map(|(v, &u)| {
                let model = ModelDesc {
                    family: fam.name.into(),
                    gflops: Rng::round(geo(fam.gflops, u), 2).max(0.01),
                    params_m: Rng::round(geo(fam.params_m, u), 1).max(0.1),
                    activation_mb: Rng::round(geo(fam.activation_mb, u), 0).max(1.0),
                    decode_steps: fam.decode_steps,
                    kernels: None,
                };
                // Accuracy: concave in size, strictly increasing in the variant index.
                let acc = fam.accuracy.0 + (fam.accuracy.1 - fam.accuracy.0) * u.sqrt();
                let accuracy = Rng::round(acc, 3) + 1e-3 * v as f64 / nv as f64;
                let vfrac = if nv > 1 { v as f64 / (nv - 1) as f64 } else { 0.0 };
                let fanout: BTreeMap<String, f64> = edges
                    .iter()
                    .zip(&edge_factor)
                    .filter(|((from, _), _)| *from == t)
                    .filter_map(|((_, to), f)| {
                        f.map(|(base, growth)| (names[*to].clone(), Rng::round(base * (1.0 + growth * vfrac), 2)))
                    })
                    .collect();
                VariantSpec {
                    name: format!("{}-{v}", fam.name),
                    accuracy: Rng::round(accuracy.min(1.0), 4),
                    model,
                    fanout,
                }
            })
            .collect();
        tasks.push(TaskSpec { name: name.clone(), variants });
    }
    let accuracy_slo = Rng::round(r.range(0.80, 0.97), 2);
    let slack = geo((1.3, 6.0), r.0.unit());
    let mut app = AppSpec {
        name: format!("rand-{seed:016x}"),
        latency_slo_ms: 1.0,
        accuracy_slo,
        tasks,
        edges: edges.iter().map(|&(a, b)| Edge { from: names[a].clone(), to: names[b].clone() }).collect(),
        priority: 0,
        sources: vec![format!(
            "SYNTHETIC: generated by jigsaw_coordinator::randapp::generate(seed {seed:#x}, {gpu}); not a real application"
        )],
    };
    // Latency SLO from the fastest profiled p95 of each task on this GPU.
    let fastest = fastest_p95(&app, &synth::generate(&app, gpu));
    let worst_path = app.paths().iter().map(|p| p.iter().map(|&t| fastest[t]).sum::<f64>()).fold(0.0, f64::max);
    app.latency_slo_ms = Rng::round(2.0 * worst_path * slack, 1).max(1.0);
    app
}

/// A random application and its synthetic profiles on `gpu`.
pub fn generate_with_profiles(seed: u64, gpu: GpuModel) -> (AppSpec, ProfileTable) {
    let app = generate(seed, gpu);
    let profiles = synth::generate(&app, gpu);
    (app, profiles)
}

/// Per task: the fastest p95 (ms) of any row of the table (infinite if it has none).
fn fastest_p95(app: &AppSpec, profiles: &ProfileTable) -> Vec<f64> {
    let mut out = vec![f64::INFINITY; app.tasks.len()];
    for r in profiles.rows() {
        if let Some(t) = app.task_index(&r.task) {
            out[t] = out[t].min(r.p95_ms);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Generated apps validate, have the promised shape, and repeat per seed.
        #[test]
        fn apps_validate_and_repeat(seed in any::<u64>(), gi in 0usize..4) {
            let gpu = GpuModel::ALL[gi];
            let app = generate(seed, gpu);
            prop_assert!(app.validate().is_ok(), "seed {seed}: {:?}", app.validate());
            prop_assert_eq!(&app, &generate(seed, gpu));
            prop_assert!((2..=6).contains(&app.tasks.len()));
            for t in &app.tasks {
                prop_assert!((2..=8).contains(&t.variants.len()));
                let acc: Vec<f64> = t.variants.iter().map(|v| v.accuracy).collect();
                prop_assert!(acc.windows(2).all(|w| w[0] < w[1]), "seed {seed}: accuracies {acc:?}");
            }
            let fan_edges = app
                .edges
                .iter()
                .filter(|e| {
                    let t = app.task_index(&e.from).unwrap_or(0);
                    app.tasks[t].variants.iter().any(|v| v.fanout.get(&e.to).is_some_and(|&f| f > 1.0))
                })
                .count();
            prop_assert!((1..=3).contains(&fan_edges), "seed {seed}: {fan_edges} fan-out edges");
            // Latency-feasible on this GPU: the slowest path's fastest configurations fit.
            let fastest = fastest_p95(&app, &synth::generate(&app, gpu));
            for p in app.paths() {
                let s: f64 = p.iter().map(|&t| 2.0 * fastest[t]).sum();
                prop_assert!(s <= app.latency_slo_ms, "seed {seed}: path needs {s} ms, SLO {}", app.latency_slo_ms);
            }
        }
    }

    #[test]
    fn different_seeds_give_different_apps() {
        let a = generate(app_seed(1, 0), GpuModel::A100_40gb);
        let b = generate(app_seed(1, 1), GpuModel::A100_40gb);
        assert_ne!(a, b);
        assert_ne!(app_seed(1, 0), app_seed(2, 0));
    }
}
