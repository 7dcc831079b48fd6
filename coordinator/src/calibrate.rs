//! Calibrating the profile model ([`crate::synth`]) against measured profiles, and
//! measuring how well it predicts a model it has never seen.
//!
//! * [`samples`]: the measured points of one model: its mean-latency profile table (from
//!   `jigsaw profiles import`) with the app spec that describes the model.
//! * [`fit`]: the eight [`Constants`] minimising a robust loss on the log latency ratio
//!   (`Σ 2·(√(1 + (r/0.1)²) − 1)`, `r = ln(predicted / measured mean)`: least squares for
//!   errors under ~10 %, linear beyond, so a few odd rows do not dominate), by Nelder–Mead on
//!   the constants' logarithms from a fixed generic start ([`START`]), restarted until it
//!   stops improving. Deterministic: no randomness, fixed iteration order.
//! * [`leave_one_model_out`]: for each model, fit on the others and predict it.
//! * [`errors`]: median, 90th percentile (nearest rank) and worst absolute relative error of
//!   the predicted mean latency and segment throughput.
//!
//! Pure: tables in, numbers out.

use crate::synth::{fits_memory, mean_latency_ms, uncalibrated, Constants};
use jigsaw_protocol::app::{AppSpec, ModelDesc};
use jigsaw_protocol::catalogue::{GpuModel, MigProfile};
use jigsaw_protocol::profile::{LatencyStat, ProfileTable};

/// The generic starting point of every fit (round numbers, not fitted to anything).
pub const START: Constants = Constants {
    host_op_us: 20.0,
    host_item_us: 50.0,
    w_half: 0.05,
    eff: 0.2,
    eff_mem: 0.5,
    sharp: 4.0,
    host_mps: 0.02,
    copy_mps: 0.05,
};

/// One measured configuration of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The model's description (from its app spec).
    pub desc: ModelDesc,
    /// GPU model.
    pub gpu: GpuModel,
    /// MIG profile.
    pub mig: &'static MigProfile,
    /// MPS processes.
    pub mps: u8,
    /// Batch size.
    pub batch: u32,
    /// Measured mean batch latency of one process, ms.
    pub mean_ms: f64,
    /// Measured segment throughput, items/s.
    pub rps: f64,
}

impl Sample {
    /// Throughput implied by a mean batch latency (ms) on this sample's segment.
    pub fn rps_at(&self, mean_ms: f64) -> f64 {
        f64::from(self.mps) * f64::from(self.batch) / (mean_ms / 1e3)
    }
}

/// Why measured profiles cannot be used for calibration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrateError {
    /// The profile file carries p95s, not measured means.
    #[error("{path}: calibration needs measured means (a `mean_ms` file), this one has p95s")]
    NotMeans {
        /// Profile file.
        path: String,
    },
    /// A row's variant is not in the app spec.
    #[error("{path}: task `{task}` variant `{variant}` is not in app `{app}`")]
    UnknownVariant {
        /// Profile file.
        path: String,
        /// App name.
        app: String,
        /// Task.
        task: String,
        /// Variant.
        variant: String,
    },
    /// The file has no rows.
    #[error("{path}: no profile rows")]
    Empty {
        /// Profile file.
        path: String,
    },
}

/// The measured samples of `table` (a mean-latency file at `path`), described by `app`.
pub fn samples(app: &AppSpec, table: &ProfileTable, path: &str) -> Result<Vec<Sample>, CalibrateError> {
    if table.latency_stat() != LatencyStat::Mean {
        return Err(CalibrateError::NotMeans { path: path.into() });
    }
    let mut out = Vec::new();
    for r in table.rows() {
        let variant =
            app.tasks.iter().filter(|t| t.name == r.task).flat_map(|t| &t.variants).find(|v| v.name == r.variant);
        let (Some(v), Some(mean_ms)) = (variant, table.source_mean_ms(r)) else {
            return Err(CalibrateError::UnknownVariant {
                path: path.into(),
                app: app.name.clone(),
                task: r.task.clone(),
                variant: r.variant.clone(),
            });
        };
        let Some(mig) = r.gpu.spec().profiles.iter().find(|p| p.name == r.mig_profile) else {
            continue; // the table's parser already refused unknown profiles
        };
        out.push(Sample {
            desc: v.model.clone(),
            gpu: r.gpu,
            mig,
            mps: r.mps,
            batch: r.batch,
            mean_ms,
            rps: r.throughput_rps,
        });
    }
    if out.is_empty() {
        return Err(CalibrateError::Empty { path: path.into() });
    }
    Ok(out)
}

/// The robust loss of constants `c` on `samples`.
pub fn loss(c: &Constants, samples: &[Sample]) -> f64 {
    samples
        .iter()
        .map(|s| {
            let r = (mean_latency_ms(c, &s.desc, s.gpu, s.mig, s.mps, s.batch) / s.mean_ms).ln() / 0.1;
            let v = 2.0 * ((1.0 + r * r).sqrt() - 1.0);
            if v.is_finite() {
                v
            } else {
                1e12
            }
        })
        .sum()
}

fn to_x(c: &Constants) -> [f64; 8] {
    let a = c.to_array();
    let mut x = a.map(f64::ln);
    x[5] = (a[5] - 1.0).max(1e-9).ln(); // sharp > 1
    x
}

fn from_x(x: &[f64; 8]) -> Constants {
    let mut a = x.map(f64::exp);
    a[5] = 1.0 + x[5].exp();
    Constants::from_array(a)
}

/// Fit the constants to `samples` (see the module doc).
pub fn fit(samples: &[Sample]) -> Constants {
    let f = |x: &[f64; 8]| loss(&from_x(x), samples);
    let mut best = to_x(&START);
    let mut fbest = f(&best);
    for _ in 0..20 {
        let (x, fx) = nelder_mead(&f, best, 0.5, 4000);
        let improved = fbest - fx > 1e-9 * fbest.abs().max(1.0);
        if fx < fbest {
            best = x;
            fbest = fx;
        }
        if !improved {
            break;
        }
    }
    from_x(&best)
}

/// Nelder–Mead minimisation of `f` from `x0` with initial step `step` on every coordinate.
fn nelder_mead<const N: usize>(
    f: &dyn Fn(&[f64; N]) -> f64,
    x0: [f64; N],
    step: f64,
    max_iter: usize,
) -> ([f64; N], f64) {
    let mut simplex: Vec<([f64; N], f64)> = Vec::with_capacity(N + 1);
    simplex.push((x0, f(&x0)));
    for i in 0..N {
        let mut x = x0;
        x[i] += step;
        simplex.push((x, f(&x)));
    }
    let along = |a: &[f64; N], b: &[f64; N], t: f64| -> [f64; N] { std::array::from_fn(|i| a[i] + t * (b[i] - a[i])) };
    for _ in 0..max_iter {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if (simplex[N].1 - simplex[0].1).abs() <= 1e-12 * simplex[0].1.abs().max(1e-12) {
            break;
        }
        let centroid: [f64; N] = std::array::from_fn(|i| simplex[..N].iter().map(|p| p.0[i]).sum::<f64>() / N as f64);
        let worst = simplex[N].0;
        let reflected = along(&centroid, &worst, -1.0);
        let fr = f(&reflected);
        if fr < simplex[0].1 {
            let expanded = along(&centroid, &worst, -2.0);
            let fe = f(&expanded);
            simplex[N] = if fe < fr { (expanded, fe) } else { (reflected, fr) };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (reflected, fr);
        } else {
            let contracted =
                if fr < simplex[N].1 { along(&centroid, &worst, -0.5) } else { along(&centroid, &worst, 0.5) };
            let fc = f(&contracted);
            if fc < fr.min(simplex[N].1) {
                simplex[N] = (contracted, fc);
            } else {
                let best = simplex[0].0;
                for p in simplex.iter_mut().skip(1) {
                    p.0 = along(&best, &p.0, 0.5);
                    p.1 = f(&p.0);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0]
}

/// Median, 90th percentile (nearest rank) and worst of absolute relative errors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Errors {
    /// Median.
    pub median: f64,
    /// 90th percentile, nearest rank.
    pub p90: f64,
    /// Worst.
    pub max: f64,
}

impl Errors {
    /// Of the absolute values of `rel` (NaN for none).
    pub fn of(rel: impl IntoIterator<Item = f64>) -> Errors {
        let mut v: Vec<f64> = rel.into_iter().map(f64::abs).collect();
        if v.is_empty() {
            return Errors { median: f64::NAN, p90: f64::NAN, max: f64::NAN };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        let rank = ((n as f64) * 0.9).ceil() as usize;
        Errors { median, p90: v[rank.clamp(1, n) - 1], max: v[n - 1] }
    }
}

/// Latency and throughput errors of predicted mean latencies `predict(sample)` (ms).
pub fn errors(samples: &[Sample], predict: impl Fn(&Sample) -> f64) -> (Errors, Errors) {
    let pred: Vec<f64> = samples.iter().map(&predict).collect();
    let lat = Errors::of(samples.iter().zip(&pred).map(|(s, p)| p / s.mean_ms - 1.0));
    let thr = Errors::of(samples.iter().zip(&pred).map(|(s, p)| s.rps_at(*p) / s.rps - 1.0));
    (lat, thr)
}

/// One model's result: rows, latency and throughput errors, and the constants used.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResult {
    /// Model name.
    pub model: String,
    /// Measured rows compared.
    pub rows: usize,
    /// Latency errors.
    pub latency: Errors,
    /// Throughput errors.
    pub throughput: Errors,
    /// Measured rows the model's memory check would drop.
    pub memory_misses: usize,
    /// The constants (fitted without this model; `None` for the uncalibrated baseline).
    pub constants: Option<Constants>,
}

/// Leave-one-model-out cross-validation: for each model, fit on every other model and
/// predict this one.
pub fn leave_one_model_out(models: &[(String, Vec<Sample>)]) -> Vec<ModelResult> {
    models
        .iter()
        .enumerate()
        .map(|(i, (name, held))| {
            let train: Vec<Sample> =
                models.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, (_, s))| s.iter().cloned()).collect();
            let c = fit(&train);
            let (latency, throughput) = errors(held, |s| mean_latency_ms(&c, &s.desc, s.gpu, s.mig, s.mps, s.batch));
            ModelResult {
                model: name.clone(),
                rows: held.len(),
                latency,
                throughput,
                memory_misses: held.iter().filter(|s| !fits_memory(&s.desc, s.mig, s.mps, s.batch)).count(),
                constants: Some(c),
            }
        })
        .collect()
}

/// The uncalibrated model's errors on each model's rows (the baseline).
pub fn baseline(models: &[(String, Vec<Sample>)]) -> Vec<ModelResult> {
    models
        .iter()
        .map(|(name, s)| {
            let (latency, throughput) =
                errors(s, |x| uncalibrated::mean_latency_ms(&x.desc, x.gpu, x.mig, x.mps, x.batch));
            ModelResult { model: name.clone(), rows: s.len(), latency, throughput, memory_misses: 0, constants: None }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_median_nearest_rank_p90_and_max() {
        let e = Errors::of((1..=10).map(|i| -f64::from(i) / 100.0));
        assert!((e.median - 0.055).abs() < 1e-12 && (e.p90 - 0.09).abs() < 1e-12 && (e.max - 0.1).abs() < 1e-12);
        assert!(Errors::of([]).median.is_nan());
    }

    #[test]
    fn nelder_mead_finds_a_known_minimum() {
        let f = |x: &[f64; 7]| x.iter().enumerate().map(|(i, v)| (v - i as f64).powi(2)).sum::<f64>();
        let (x, fx) = nelder_mead(&f, [0.0; 7], 1.0, 20_000);
        assert!(fx < 1e-8, "{x:?} {fx}");
    }

    #[test]
    fn fit_recovers_constants_that_generated_the_data() {
        // SYNTHETIC data from known constants: the fit must find them again.
        let truth = Constants {
            host_op_us: 30.0,
            host_item_us: 120.0,
            w_half: 0.4,
            eff: 0.3,
            eff_mem: 0.6,
            sharp: 5.0,
            host_mps: 0.03,
            copy_mps: 0.4,
        };
        let gpu = GpuModel::A100_80gb;
        let mut s = Vec::new();
        for (gflops, kernels, act) in [(8.0, 170, 150.0), (30.0, 40, 110.0), (1.0, 150, 80.0), (80.0, 480, 380.0)] {
            let desc = ModelDesc {
                family: "x".into(),
                gflops,
                params_m: 30.0,
                activation_mb: act,
                decode_steps: 1,
                kernels: Some(kernels),
            };
            for mig in gpu.spec().profiles.iter().filter(|p| p.plannable() && p.name != "1g.20gb") {
                for mps in 1..=4u8 {
                    for batch in [1, 4, 16, 64] {
                        let mean_ms = mean_latency_ms(&truth, &desc, gpu, mig, mps, batch);
                        let rps = f64::from(mps) * f64::from(batch) / (mean_ms / 1e3);
                        s.push(Sample { desc: desc.clone(), gpu, mig, mps, batch, mean_ms, rps });
                    }
                }
            }
        }
        let c = fit(&s);
        let (lat, thr) = errors(&s, |x| mean_latency_ms(&c, &x.desc, x.gpu, x.mig, x.mps, x.batch));
        assert!(lat.max < 0.01 && thr.max < 0.01, "{c:?}: {lat:?} {thr:?}");
        assert_eq!(fit(&s), c, "deterministic");
    }
}
