//! The analytic (SYNTHETIC) profile model used to generate the example profiles,
//! calibrated to measured profiles.
//!
//! Every number this module produces is synthetic: it is computed from a model's
//! description (FLOPs, parameters, activation bytes, kernels per pass) and from the
//! segment's SMs and memory bandwidth, never measured. Its eight constants ([`CALIBRATED`])
//! were fitted ([`crate::calibrate`]) to the measured ParvaGPU profiles of eight PyTorch
//! models on an A100 80GB (`examples/profiles/measured-a100-80gb/`), so it models *that*
//! software setup (PyTorch eager, FP32 tensors, one host thread per MPS process); it was
//! not fitted to any result of the paper. `docs/profiles.md` has the model, the constants and
//! the leave-one-model-out errors.
//!
//! For a segment = (MIG profile with `sms` SMs and memory bandwidth `bw`, MPS level `k`) and
//! batch `b`, the mean latency of one batch in one process is the input copy plus a soft
//! maximum of a host dispatch and a device time, because the host dispatches kernels while
//! the device runs earlier ones, but the (pageable, synchronous) copy of the batch's input
//! waits for the device to drain and the dispatch waits for the copy:
//!
//! * copy `C = b · HOST_ITEM · (1 + COPY_MPS · (k − 1))`: per-item input handling and
//!   host-to-device copy, slowed by the `k − 1` other processes copying over the same host
//!   memory and PCIe link;
//! * dispatch `H = steps · kernels · HOST_OP · (1 + HOST_MPS · (k − 1))`: framework dispatch
//!   per kernel on the process's own CPU thread; this is the per-batch floor (about 5 ms for
//!   resnet50 on every MIG size);
//! * device `D = k·b·F / (peak · sms/sms_gpu · EFF · u) + k · (steps · W + 2·b·A) / (bw · EFF_MEM)`:
//!   the `k` processes share the instance's SMs and bandwidth (MPS), so one round serves `k`
//!   batches; `u = kbF / (kbF + W_HALF · sms)` is the SM occupancy, low at small combined
//!   work, which is where MPS co-location gains; `W` = FP32 weight bytes, `A` = activation
//!   bytes per item;
//! * mean `t = C + (H^SHARP + D^SHARP)^(1/SHARP)`; p95 = [`P95_OVER_MEAN`] · t; segment
//!   throughput `k · b / t`;
//! * a row exists only if `k · (W + b · A + CONTEXT)` fits the instance's memory.

use jigsaw_protocol::app::{AppSpec, ModelDesc};
use jigsaw_protocol::catalogue::{GpuModel, MigProfile, MPS_LEVELS};
use jigsaw_protocol::profile::{ProfileRow, ProfileTable, BATCH_SIZES, P95_OVER_MEAN};

/// CUDA context + framework memory per process, GB.
pub const CONTEXT_GB: f64 = 0.6;
/// Bytes per parameter and per activation value: FP32, as the measured PyTorch setup ran.
pub const BYTES_PER_VALUE: f64 = 4.0;

/// The fitted constants of the profile model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constants {
    /// Host dispatch time per kernel, µs (`HOST_OP`).
    pub host_op_us: f64,
    /// Host time per item of a batch, µs (`HOST_ITEM`: input handling and the synchronous
    /// host-to-device copy; not overlapped with dispatch or device work).
    pub host_item_us: f64,
    /// GFLOP of combined work per SM at which SM occupancy reaches one half (`W_HALF`).
    pub w_half: f64,
    /// Achieved share of the FP16 tensor peak at full occupancy (`EFF`).
    pub eff: f64,
    /// Achieved share of the memory bandwidth (`EFF_MEM`).
    pub eff_mem: f64,
    /// Sharpness of the host/device soft maximum (`SHARP`; ∞ = plain max, 1 = sum).
    pub sharp: f64,
    /// Dispatch slow-down per extra MPS process sharing the CPU (`HOST_MPS`).
    pub host_mps: f64,
    /// Input-copy slow-down per extra MPS process sharing host memory and PCIe (`COPY_MPS`).
    pub copy_mps: f64,
}

impl Constants {
    /// Names, in [`Constants::to_array`] order.
    pub const NAMES: [&'static str; 8] =
        ["host_op_us", "host_item_us", "w_half", "eff", "eff_mem", "sharp", "host_mps", "copy_mps"];

    /// The constants as an array.
    pub fn to_array(self) -> [f64; 8] {
        [
            self.host_op_us,
            self.host_item_us,
            self.w_half,
            self.eff,
            self.eff_mem,
            self.sharp,
            self.host_mps,
            self.copy_mps,
        ]
    }

    /// From an array in [`Constants::NAMES`] order.
    pub fn from_array(a: [f64; 8]) -> Self {
        Constants {
            host_op_us: a[0],
            host_item_us: a[1],
            w_half: a[2],
            eff: a[3],
            eff_mem: a[4],
            sharp: a[5],
            host_mps: a[6],
            copy_mps: a[7],
        }
    }
}

/// The constants fitted to all eight measured models (`jigsaw profiles calibrate` prints
/// the fit; a test checks that refitting reproduces these).
pub const CALIBRATED: Constants = Constants {
    host_op_us: 27.74,
    host_item_us: 104.26,
    w_half: 0.5522,
    eff: 0.4096,
    eff_mem: 0.5774,
    sharp: 5.212,
    host_mps: 0.01435,
    copy_mps: 0.4991,
};

/// Kernels per pass of a family, for a model description that does not give `kernels`.
/// Counted with `scripts/model_descs.py` for the measured families (resnet50, vgg16,
/// densenet121, mobilenetv2, BERT-large); the others are ESTIMATES from their block counts.
pub fn family_kernels(family: &str) -> f64 {
    match family {
        "vgg" => 40.0,
        "resnet" => 174.0,
        "densenet" => 430.0,
        "mobilenet" => 151.0,
        "bert" => 488.0,
        // Estimates: MBConv blocks with squeeze-excite and swish; CSP blocks with SiLU and
        // three detection heads; one decoder step of a small captioner / TTS model.
        "efficientnet" => 250.0,
        "yolov5" => 250.0,
        "git" => 120.0,
        "tts" => 150.0,
        _ => 200.0,
    }
}

/// Whether `mps` copies of `model` at `batch` fit the memory of instance `p`.
pub fn fits_memory(model: &ModelDesc, p: &MigProfile, mps: u8, batch: u32) -> bool {
    let weight_gb = model.params_m * 1e6 * BYTES_PER_VALUE / 1e9;
    let act_gb = model.activation_mb / 1e3;
    f64::from(mps) * (weight_gb + f64::from(batch) * act_gb + CONTEXT_GB) <= p.mem_gib * 1.073_741_824
}

/// Mean batch latency of one process, ms, with constants `c` (no memory check).
pub fn mean_latency_ms(c: &Constants, model: &ModelDesc, gpu: GpuModel, p: &MigProfile, mps: u8, batch: u32) -> f64 {
    let spec = gpu.spec();
    let k = f64::from(mps.max(1));
    let b = f64::from(batch.max(1));
    let steps = f64::from(model.decode_steps.max(1));
    let kernels = model.kernels.map_or_else(|| family_kernels(&model.family), f64::from);
    let weight_gb = model.params_m * 1e6 * BYTES_PER_VALUE / 1e9;
    let act_gb = model.activation_mb / 1e3;
    let copy = b * c.host_item_us * 1e-6 * (1.0 + c.copy_mps * (k - 1.0));
    let host = steps * kernels * c.host_op_us * 1e-6 * (1.0 + c.host_mps * (k - 1.0));
    let sms = f64::from(p.sms);
    let peak = spec.fp16_tflops * 1e3 * sms / f64::from(spec.total_sms); // GFLOP/s
    let bw = spec.mem_bw_gbs * f64::from(p.mem_slices) / 8.0; // GB/s
    let work = k * b * model.gflops;
    let fill = work / (work + c.w_half * sms);
    let device = work / (peak * c.eff * fill) + k * (steps * weight_gb + 2.0 * b * act_gb) / (bw * c.eff_mem);
    (copy + (host.powf(c.sharp) + device.powf(c.sharp)).powf(1.0 / c.sharp)) * 1e3
}

/// Synthetic latency (p95, ms) and segment throughput (items/s) of the calibrated model,
/// or `None` if the segment's memory cannot hold `mps` copies of the model at this batch.
pub fn predict(model: &ModelDesc, gpu: GpuModel, p: &MigProfile, mps: u8, batch: u32) -> Option<(f64, f64)> {
    if !fits_memory(model, p, mps, batch) {
        return None;
    }
    let t = mean_latency_ms(&CALIBRATED, model, gpu, p, mps, batch);
    Some((P95_OVER_MEAN * t, f64::from(mps) * f64::from(batch) / (t / 1e3)))
}

/// The model before calibration (kept so `jigsaw profiles calibrate` can report the
/// baseline): roofline `max(t_c, t_m) + 0.15·min + steps·kernels·6 µs` on FP16 weights, with
/// per-family efficiencies, MPS contention `1 + 0.06·(k − 1)`, and no host cost.
pub mod uncalibrated {
    use super::*;

    /// GFLOP of work per SM at which the SM fill reaches one half.
    pub const W_HALF: f64 = 0.05;
    /// Fixed cost per kernel launch, seconds.
    pub const LAUNCH: f64 = 6e-6;
    /// p95 / mean latency.
    pub const P95_FACTOR: f64 = 1.15;
    /// Latency growth per extra MPS process in an instance.
    pub const MPS_CONTENTION: f64 = 0.06;

    /// Per-family constants: achievable share of the FP16 tensor peak, and kernels per pass.
    pub fn family_constants(family: &str) -> (f64, f64) {
        match family {
            "vgg" => (0.45, 40.0),
            "resnet" => (0.35, 70.0),
            "efficientnet" => (0.12, 160.0),
            "yolov5" => (0.30, 180.0),
            "git" => (0.40, 120.0),
            "tts" => (0.25, 150.0),
            _ => (0.30, 100.0),
        }
    }

    /// Mean batch latency of one process, ms (the old model's p95 / 1.15; no memory check).
    pub fn mean_latency_ms(model: &ModelDesc, gpu: GpuModel, p: &MigProfile, mps: u8, batch: u32) -> f64 {
        let spec = gpu.spec();
        let k = f64::from(mps);
        let b = f64::from(batch);
        let steps = f64::from(model.decode_steps);
        let weight_gb = model.params_m * 1e6 * 2.0 / 1e9; // FP16
        let act_gb = model.activation_mb / 1e3;
        let sms_proc = f64::from(p.sms) / k;
        let peak_proc = spec.fp16_tflops * 1e3 * sms_proc / f64::from(spec.total_sms);
        let bw_proc = spec.mem_bw_gbs * f64::from(p.mem_slices) / 8.0 / k;
        let (eff, kernels) = family_constants(&model.family);
        let w = b * model.gflops;
        let fill = w / (w + W_HALF * sms_proc);
        let t_c = w / (peak_proc * eff * fill);
        let t_m = (steps * weight_gb + b * 2.0 * act_gb) / bw_proc;
        let t = (t_c.max(t_m) + 0.15 * t_c.min(t_m) + steps * kernels * LAUNCH) * (1.0 + MPS_CONTENTION * (k - 1.0));
        t * 1e3
    }
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
        "coordinator/src/synth.rs (docs/profiles.md), not measured; its constants are calibrated to".into(),
        "measured A100 80GB profiles of eight PyTorch models (ParvaGPU, examples/profiles/measured-a100-80gb/).".into(),
        format!("Regenerate with `jigsaw profiles synth --app <file> --gpu {gpu}`."),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(gflops: f64) -> ModelDesc {
        ModelDesc {
            family: "resnet".into(),
            gflops,
            params_m: 25.0,
            activation_mb: 50.0,
            decode_steps: 1,
            kernels: None,
        }
    }

    #[test]
    fn small_batches_hit_the_host_floor_on_every_instance_size() {
        // The measured effect (resnet50 on an A100 80GB: ~5 ms per batch on 1g and on 7g).
        let gpu = GpuModel::A100_80gb;
        let m = ModelDesc { kernels: Some(174), ..model(8.18) };
        let g1 = &gpu.spec().profiles[0];
        let g7 = gpu.spec().profiles.last().expect("7g");
        let l1 = mean_latency_ms(&CALIBRATED, &m, gpu, g1, 1, 1);
        let l7 = mean_latency_ms(&CALIBRATED, &m, gpu, g7, 1, 1);
        let floor = 174.0 * CALIBRATED.host_op_us / 1e3;
        assert!(l1 >= floor && l7 >= floor && (l1 / l7 - 1.0).abs() < 0.25, "1g {l1} ms, 7g {l7} ms, floor {floor}");
        // Large batches are device-bound: the whole GPU serves several times a 1g slice.
        let (_, h1) = predict(&m, gpu, g1, 1, 32).expect("fits");
        let (_, h7) = predict(&m, gpu, g7, 1, 32).expect("fits");
        assert!(h7 > 3.0 * h1, "{h7} vs {h1}");
        let (l8, hb8) = predict(&m, gpu, g1, 1, 8).expect("fits");
        let (lb1, hb1) = predict(&m, gpu, g1, 1, 1).expect("fits");
        assert!(hb8 > hb1 && l8 > lb1);
    }

    #[test]
    fn mps_helps_small_batches_on_big_instances() {
        let gpu = GpuModel::H100_80gb;
        let g7 = gpu.spec().profiles.last().expect("7g");
        let m = model(2.0);
        let (_, h1) = predict(&m, gpu, g7, 1, 1).expect("fits");
        let (_, h4) = predict(&m, gpu, g7, 4, 1).expect("fits");
        assert!(h4 > 2.0 * h1, "{h4} vs {h1}");
        // ... but not large ones on a small instance: the device is already full.
        let g1 = &gpu.spec().profiles[0];
        let (_, h1) = predict(&m, gpu, g1, 1, 32).expect("fits");
        let (_, h2) = predict(&m, gpu, g1, 2, 32).expect("fits");
        assert!(h2 < 1.2 * h1, "{h2} vs {h1}");
    }

    #[test]
    fn memory_caps_drop_rows() {
        let gpu = GpuModel::H100_80gb;
        let g1 = &gpu.spec().profiles[0];
        let huge = ModelDesc { params_m: 6000.0, ..model(10.0) };
        assert!(predict(&huge, gpu, g1, 1, 1).is_none());
    }

    #[test]
    fn constants_round_trip_through_arrays() {
        assert_eq!(Constants::from_array(CALIBRATED.to_array()), CALIBRATED);
    }
}
