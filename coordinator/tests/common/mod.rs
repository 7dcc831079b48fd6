//! Random small applications and profiles for the property tests; each case is rebuilt
//! from its `u64` seed alone.

#![allow(dead_code)]

use jigsaw_protocol::app::{AppSpec, Edge, ModelDesc, TaskSpec, VariantSpec};
use jigsaw_protocol::catalogue::GpuModel;
use jigsaw_protocol::profile::{ProfileRow, ProfileTable};
use jigsaw_protocol::rng::SplitMix64;

/// The shared splitmix64 generator, so a case is reproducible from its seed alone.
pub struct Rng(pub SplitMix64);
impl Rng {
    pub fn unit(&mut self) -> f64 {
        self.0.unit()
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    pub fn pick(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }
}

fn model() -> ModelDesc {
    ModelDesc {
        family: "resnet".into(),
        gflops: 1.0,
        params_m: 1.0,
        activation_mb: 1.0,
        decode_steps: 1,
        kernels: None,
    }
}

/// A random app: a chain or fork of 1–3 tasks with 1–3 variants each, and profiles.
/// `single_point`: one (MPS, batch) per (task, variant, profile), for brute force.
pub fn instance(seed: u64, single_point: bool, const_fanout: bool) -> (AppSpec, ProfileTable) {
    let mut r = Rng(SplitMix64::new(seed));
    let nt = 1 + r.pick(if single_point { 2 } else { 3 });
    let names = ["a", "b", "c"];
    let mut edges = Vec::new();
    for t in 1..nt {
        // Chain a -> b (-> c) or fork a -> b, a -> c.
        let from = if r.pick(2) == 0 { t - 1 } else { 0 };
        edges.push(Edge { from: names[from].into(), to: names[t].into() });
    }
    let mut tasks = Vec::new();
    for (t, name) in names.iter().enumerate().take(nt) {
        let nv = 1 + r.pick(if single_point { 2 } else { 3 });
        let base_f = r.range(0.5, 2.5);
        let variants = (0..nv)
            .map(|v| {
                let fanout = edges
                    .iter()
                    .filter(|e| e.from == *name)
                    .map(|e| {
                        (
                            e.to.clone(),
                            if const_fanout { base_f } else { (base_f * r.range(0.7, 1.3) * 100.0).round() / 100.0 },
                        )
                    })
                    .collect();
                VariantSpec {
                    name: format!("{name}{v}"),
                    accuracy: (r.range(0.5, 0.99) * 1000.0).round() / 1000.0,
                    model: model(),
                    fanout,
                }
            })
            .collect();
        let _ = t;
        tasks.push(TaskSpec { name: (*name).into(), variants });
    }
    let app = AppSpec {
        name: format!("rand-{seed}"),
        latency_slo_ms: r.range(60.0, 200.0).round(),
        accuracy_slo: (r.range(0.80, 0.97) * 100.0).round() / 100.0,
        tasks,
        edges,
        sources: vec![],
        priority: 0,
    };
    app.validate().expect("generated apps are valid");
    let profiles = ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"];
    let mut rows = Vec::new();
    for t in &app.tasks {
        for (vi, v) in t.variants.iter().enumerate() {
            let speed = 1.0 + vi as f64 * r.range(0.2, 0.8); // later variants are slower
            for (pi, p) in profiles.iter().enumerate().take(if single_point { 2 } else { 4 }) {
                let slices: f64 = [1.0, 2.0, 3.0, 7.0][pi];
                let points: Vec<(u8, u32)> =
                    if single_point { vec![(1, 1)] } else { vec![(1, 1), (1, 4), (2, 4), (1, 16)] };
                for (mps, batch) in points {
                    let l = (speed * r.range(5.0, 15.0) * (f64::from(batch)).sqrt() / slices.powf(0.7) * 1000.0)
                        .round()
                        / 1000.0;
                    let h =
                        (f64::from(mps) * f64::from(batch) * 1000.0 / l * r.range(0.8, 1.0) * 100.0).round() / 100.0;
                    rows.push(ProfileRow {
                        task: t.name.clone(),
                        variant: v.name.clone(),
                        gpu: GpuModel::H100_80gb,
                        mig_profile: (*p).into(),
                        mps,
                        batch,
                        p95_ms: l,
                        throughput_rps: h,
                    });
                }
            }
        }
    }
    (app, ProfileTable::from_rows(rows))
}
