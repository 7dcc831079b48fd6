//! The analytic (SYNTHETIC) profile model used to generate the example profiles.
//!
//! Every number this module produces is synthetic: it is computed from a model's FLOPs,
//! parameter bytes and activation bytes and from the segment's SMs and memory bandwidth,
//! never measured. The real profiler (`jigsaw profile`, a later issue) writes the same CSV.
//! The model is documented in `docs/profiles.md`; its constants are generic properties of
//! GPUs and model families and were not fitted to any result of the paper.
//!
//! For a segment = (MIG profile `p`, MPS level `k`) and batch `b`, each of the `k` MPS
//! processes gets `sms/k` SMs and `bw/k` of the instance's memory bandwidth:
//!
//! * work `w = b · gflops`; SM fill `u = w / (w + W_HALF · sms_proc)` (small batches cannot
//!   fill many SMs, which is why MPS helps at small batch);
//! * compute time `t_c = w / (peak_proc · eff_family · u)`, with `peak_proc` the FP16 tensor
//!   peak scaled by the process's SM share;
//! * memory time `t_m = steps · weight_bytes / bw_proc + b · 2 · activation_bytes / bw_proc`;
//! * `t = max(t_c, t_m) + 0.15 · min(t_c, t_m) + steps · kernels_family · LAUNCH`, times
//!   `1 + MPS_CONTENTION · (k − 1)` for contention on shared L2 and memory controllers;
//! * `p95 = P95_FACTOR · t`; segment throughput `H = k · b / t`;
//! * a row exists only if `k · (weights + b · activation + CONTEXT)` fits the instance's
//!   memory.

use jigsaw_protocol::app::{AppSpec, ModelDesc};
use jigsaw_protocol::catalogue::{GpuModel, MigProfile, MPS_LEVELS};
use jigsaw_protocol::profile::{ProfileRow, ProfileTable, BATCH_SIZES};

/// GFLOP of work per SM at which the SM fill reaches one half.
pub const W_HALF: f64 = 0.05;
/// Fixed cost per kernel launch, seconds.
pub const LAUNCH: f64 = 6e-6;
/// p95 / mean latency.
pub const P95_FACTOR: f64 = 1.15;
/// Latency growth per extra MPS process in an instance.
pub const MPS_CONTENTION: f64 = 0.06;
/// CUDA context + framework memory per process, GB.
pub const CONTEXT_GB: f64 = 0.6;

/// Per-family constants: achievable share of the FP16 tensor peak, and kernels per pass.
pub fn family_constants(family: &str) -> (f64, f64) {
    match family {
        // Dense 3x3 convolutions map well onto tensor cores.
        "vgg" => (0.45, 40.0),
        "resnet" => (0.35, 70.0),
        // Depthwise convolutions and squeeze-excite are memory-bound.
        "efficientnet" => (0.12, 160.0),
        "yolov5" => (0.30, 180.0),
        // Transformers: large GEMMs, many small kernels per decoding step.
        "git" => (0.40, 120.0),
        "tts" => (0.25, 150.0),
        _ => (0.30, 100.0),
    }
}

/// Synthetic latency (p95, ms) and segment throughput (items/s), or `None` if the
/// segment's memory cannot hold `mps` copies of the model at this batch.
pub fn predict(model: &ModelDesc, gpu: GpuModel, p: &MigProfile, mps: u8, batch: u32) -> Option<(f64, f64)> {
    let spec = gpu.spec();
    let k = f64::from(mps);
    let b = f64::from(batch);
    let steps = f64::from(model.decode_steps);
    let weight_gb = model.params_m * 1e6 * 2.0 / 1e9; // FP16
    let act_gb = model.activation_mb / 1e3;
    let mem_need = k * (weight_gb + b * act_gb + CONTEXT_GB);
    if mem_need > p.mem_gib * 1.073_741_824 {
        return None;
    }
    let sms_proc = f64::from(p.sms) / k;
    let peak_proc = spec.fp16_tflops * 1e3 * sms_proc / f64::from(spec.total_sms); // GFLOP/s
    let bw_proc = spec.mem_bw_gbs * f64::from(p.mem_slices) / 8.0 / k; // GB/s
    let (eff, kernels) = family_constants(&model.family);
    let w = b * model.gflops;
    let fill = w / (w + W_HALF * sms_proc);
    let t_c = w / (peak_proc * eff * fill);
    let t_m = (steps * weight_gb + b * 2.0 * act_gb) / bw_proc;
    let t = (t_c.max(t_m) + 0.15 * t_c.min(t_m) + steps * kernels * LAUNCH) * (1.0 + MPS_CONTENTION * (k - 1.0));
    Some((P95_FACTOR * t * 1e3, k * b / t))
}

/// Generate the synthetic profile table of every task and variant of `app` on `gpu`
/// (all plannable MIG profiles, MPS 1–4, batches 1–128).
pub fn generate(app: &AppSpec, gpu: GpuModel) -> ProfileTable {
    let mut rows = Vec::new();
    for t in &app.tasks {
        for v in &t.variants {
            for p in gpu.spec().profiles.iter().filter(|p| p.plannable()) {
                for mps in MPS_LEVELS {
                    for batch in BATCH_SIZES {
                        if let Some((p95_ms, throughput_rps)) = predict(&v.model, gpu, p, mps, batch) {
                            // Round as the CSV does, so a written-then-read table is identical.
                            rows.push(ProfileRow {
                                task: t.name.clone(),
                                variant: v.name.clone(),
                                gpu,
                                mig_profile: p.name.into(),
                                mps,
                                batch,
                                p95_ms: (p95_ms * 1e3).round() / 1e3,
                                throughput_rps: (throughput_rps * 1e2).round() / 1e2,
                            });
                        }
                    }
                }
            }
        }
    }
    ProfileTable::from_rows(rows)
}

/// The provenance comment lines written at the top of a generated CSV.
pub fn provenance(app: &AppSpec, gpu: GpuModel) -> Vec<String> {
    vec![
        format!("SYNTHETIC profiles for app `{}` on {gpu}: generated by the analytic model in", app.name),
        "coordinator/src/synth.rs (docs/profiles.md), not measured. Regenerate with".into(),
        format!("`jigsaw profiles synth --app <file> --gpu {gpu}`."),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(gflops: f64) -> ModelDesc {
        ModelDesc { family: "resnet".into(), gflops, params_m: 25.0, activation_mb: 50.0, decode_steps: 1 }
    }

    #[test]
    fn bigger_segments_and_batches_raise_throughput() {
        let gpu = GpuModel::H100_80gb;
        let spec = gpu.spec();
        let g1 = &spec.profiles[0];
        let g7 = spec.profiles.last().expect("7g");
        let m = model(8.0);
        let (_, h1) = predict(&m, gpu, g1, 1, 8).expect("fits");
        let (_, h7) = predict(&m, gpu, g7, 1, 8).expect("fits");
        assert!(h7 > 3.0 * h1);
        let (l1, hb1) = predict(&m, gpu, g1, 1, 1).expect("fits");
        let (l8, hb8) = predict(&m, gpu, g1, 1, 8).expect("fits");
        assert!(hb8 > hb1 && l8 > l1);
    }

    #[test]
    fn mps_helps_small_batches_on_big_instances() {
        let gpu = GpuModel::H100_80gb;
        let g7 = gpu.spec().profiles.last().expect("7g");
        let m = model(2.0);
        let (_, h1) = predict(&m, gpu, g7, 1, 1).expect("fits");
        let (_, h4) = predict(&m, gpu, g7, 4, 1).expect("fits");
        assert!(h4 > h1, "{h4} vs {h1}");
    }

    #[test]
    fn memory_caps_drop_rows() {
        let gpu = GpuModel::H100_80gb;
        let g1 = &gpu.spec().profiles[0];
        let huge = ModelDesc { params_m: 6000.0, ..model(10.0) };
        assert!(predict(&huge, gpu, g1, 1, 1).is_none());
    }
}
