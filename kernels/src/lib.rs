//! # jigsaw-kernels
//!
//! Executors for the data plane:
//!
//! * [`Layer`] / [`Model`]: a model variant as a sequence of layers (2-D convolution, dense
//!   GEMM, ReLU, max pooling, global average pooling, and [`Layer::Repeat`] for a body run
//!   several times in sequence, e.g. once per decoded token) over NCHW `f32` tensors;
//! * [`Model::for_variant`] (module [`arch`]): a layer graph shaped after the variant's
//!   architecture family (`vgg`, `resnet`, `efficientnet`, `yolov5`, `git`, `tts`) and
//!   sized so that its multiply-accumulates per item are `scale * gflops * 1e9 / 2`, so a
//!   simulator can run real-shaped, scaled-down models; [`arch::input_shape`] gives the
//!   per-item input each family expects;
//! * [`Model::generated`]: a small generic CNN; both builders draw deterministic weights
//!   from a seed (no downloads; the same seed gives bit-identical weights everywhere);
//! * [`Model::load_safetensors`] / [`Model::to_safetensors`] (module [`weights`]): real
//!   weights as F32 tensors `layers.{i}.weight` / `layers.{i}.bias`;
//! * [`Executor`], with two implementations: [`CpuExecutor`], plain loops that are the
//!   numerical reference (a convolution adds each weight over a whole output row, which
//!   gives the same sums as a per-output loop, bit for bit), and [`cuda::CudaExecutor`],
//!   NVRTC-compiled CUDA C kernels launched through `cudarc` (one thread per output element
//!   for convolution, pooling and ReLU, one warp per output for dense layers). The CUDA executor loads `libcuda` and
//!   `libnvrtc` at run time: the crate builds and its tests pass on machines without them,
//!   where [`cuda::CudaExecutor::new`] returns [`KernelError::NoCuda`].
//!
//! **Tolerance.** The GPU convolution and pooling kernels sum in the same order as the CPU
//! loops but may fuse multiply-adds, and the dense kernel sums in a different order (a warp
//! reduction), so results differ by rounding. An executor agrees with the reference when
//! [`max_scaled_diff`] is at most [`GPU_TOLERANCE`], i.e. the largest absolute difference
//! is at most `1e-3 * (1 + max |reference|)`; the GPU test (`tests/gpu.rs`, run with
//! `JIGSAW_GPU_TESTS=1`) checks exactly that.
//!
//! **Scale.** At `scale = 1e-3` the example apps' variants take about 1 ms (EfficientNet-B0)
//! to 250 ms (YOLOv5x) per item on one core of a 2-core CPU machine with the release build
//! of [`CpuExecutor`], and every variant's MACs are within 5 % of its budget; at `1e-4` the
//! smallest variants hit the one-channel floor. The table for any scale:
//! `cargo run --release -p jigsaw-kernels --example variant_table -- 1e-3`.

pub mod arch;
pub mod cuda;
pub mod weights;

use jigsaw_protocol::rng::SplitMix64;
use thiserror::Error;

/// A layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// 2-D convolution, stride `stride`, zero padding `pad`; weights `[out][in][k][k]`, bias `[out]`.
    Conv2d {
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
        /// Kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Padding.
        pad: usize,
        /// Weights, `cout * cin * k * k`.
        w: Vec<f32>,
        /// Bias, `cout`.
        b: Vec<f32>,
    },
    /// Dense layer on the flattened input: weights `[out][in]`, bias `[out]`.
    Dense {
        /// Inputs.
        din: usize,
        /// Outputs.
        dout: usize,
        /// Weights, `dout * din`.
        w: Vec<f32>,
        /// Bias, `dout`.
        b: Vec<f32>,
    },
    /// max(0, x).
    Relu,
    /// Max pooling with a square window and equal stride.
    MaxPool {
        /// Window and stride.
        k: usize,
    },
    /// Mean over H and W: NCHW → NC11.
    GlobalAvgPool,
    /// `body` applied `times` times in sequence, each pass feeding the next: an
    /// autoregressive decoder that streams its weights once per generated token. The body
    /// must map its input shape to itself; `times` is at least 1.
    Repeat {
        /// Passes.
        times: usize,
        /// The layers of one pass.
        body: Vec<Layer>,
    },
}

/// A tensor shape (N, C, H, W); dense layers produce (N, C, 1, 1).
pub type Shape = (usize, usize, usize, usize);

/// Why a model cannot be built, loaded or run.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum KernelError {
    /// The input does not match what a layer expects; fix the model or the input.
    #[error("layer {layer}: {message}")]
    Shape {
        /// Layer index.
        layer: usize,
        /// What is wrong.
        message: String,
    },
    /// The input buffer length does not match its shape.
    #[error("input has {got} values, shape {shape:?} needs {need}")]
    Input {
        /// Values given.
        got: usize,
        /// Values needed.
        need: usize,
        /// The shape.
        shape: Shape,
    },
    /// [`Model::for_variant`] does not know the architecture family.
    #[error("unknown model family `{family}` (known: {})", arch::FAMILIES.join(", "))]
    UnknownFamily {
        /// The family asked for.
        family: String,
    },
    /// [`Model::for_variant`] cannot build the variant (bad FLOPs, scale or input).
    #[error("variant `{variant}`: {message}")]
    Variant {
        /// Variant name.
        variant: String,
        /// What is wrong.
        message: String,
    },
    /// A safetensors buffer cannot be parsed or written.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// The model has a weighted layer whose tensor the safetensors buffer lacks.
    #[error("safetensors: tensor `{tensor}` is missing")]
    MissingTensor {
        /// Tensor name, e.g. `layers.0.weight`.
        tensor: String,
    },
    /// A tensor is not F32.
    #[error("safetensors: tensor `{tensor}` has dtype {dtype}, expected F32")]
    TensorDtype {
        /// Tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor's shape does not match its layer.
    #[error("safetensors: tensor `{tensor}` has shape {got:?}, the layer needs {expected:?}")]
    TensorShape {
        /// Tensor name.
        tensor: String,
        /// Shape the layer needs.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// The buffer holds a tensor that no layer of the model uses (a file for another model).
    #[error("safetensors: tensor `{tensor}` belongs to no layer of the model")]
    UnexpectedTensor {
        /// Tensor name.
        tensor: String,
    },
    /// CUDA is not usable on this machine: the driver library, NVRTC or a device is missing.
    #[error("CUDA unavailable: {0}")]
    NoCuda(String),
    /// A CUDA driver or NVRTC call failed.
    #[error("CUDA: {0}")]
    Cuda(String),
}

/// A model variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Name.
    pub name: String,
    /// Layers in order.
    pub layers: Vec<Layer>,
}

/// Uniform in [-scale, scale] from the shared seeded generator.
fn weight(rng: &mut SplitMix64, scale: f32) -> f32 {
    let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    (2.0 * u - 1.0) * scale
}

/// He-style uniform weights for a layer of fan-in `fan_in`, and small biases.
fn init(rng: &mut SplitMix64, fan_in: usize, nw: usize, nb: usize) -> (Vec<f32>, Vec<f32>) {
    let scale = (6.0 / fan_in as f32).sqrt();
    let w = (0..nw).map(|_| weight(rng, scale)).collect();
    let b = (0..nb).map(|_| weight(rng, 0.01)).collect();
    (w, b)
}

/// Fill the weights of every weighted layer (in order, depth first) from `rng`.
fn fill_weights(layers: &mut [Layer], rng: &mut SplitMix64) {
    for l in layers {
        match l {
            Layer::Conv2d { cin, cout, k, w, b, .. } => {
                (*w, *b) = init(rng, *cin * *k * *k, *cout * *cin * *k * *k, *cout)
            }
            Layer::Dense { din, dout, w, b } => (*w, *b) = init(rng, *din, *dout * *din, *dout),
            Layer::Repeat { body, .. } => fill_weights(body, rng),
            Layer::Relu | Layer::MaxPool { .. } | Layer::GlobalAvgPool => {}
        }
    }
}

/// What [`Model::generated`] builds: a small CNN of `blocks` conv-ReLU-pool blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// Input channels.
    pub cin: usize,
    /// Channels of the first block (doubling per block).
    pub width: usize,
    /// Conv blocks.
    pub blocks: usize,
    /// Output classes.
    pub classes: usize,
}

impl Model {
    /// A model of `arch` with deterministic weights from `seed` (He-style uniform scale).
    pub fn generated(name: &str, arch: Arch, seed: u64) -> Model {
        let mut layers = Vec::new();
        let mut c = arch.cin;
        for i in 0..arch.blocks {
            let cout = arch.width << i;
            layers.push(Layer::Conv2d { cin: c, cout, k: 3, stride: 1, pad: 1, w: Vec::new(), b: Vec::new() });
            layers.push(Layer::Relu);
            layers.push(Layer::MaxPool { k: 2 });
            c = cout;
        }
        layers.push(Layer::GlobalAvgPool);
        layers.push(Layer::Dense { din: c, dout: arch.classes, w: Vec::new(), b: Vec::new() });
        Model::seeded(name, layers, seed)
    }

    /// A model of `layers` (any weights they hold are replaced) with deterministic weights
    /// from `seed`, drawn as [`Model::generated`] and [`Model::for_variant`] draw theirs.
    pub fn seeded(name: &str, mut layers: Vec<Layer>, seed: u64) -> Model {
        fill_weights(&mut layers, &mut SplitMix64::new(seed));
        Model { name: name.to_string(), layers }
    }

    /// Multiply-accumulates for one sample of input `shape` (N ignored).
    pub fn macs(&self, shape: Shape) -> Result<u64, KernelError> {
        Ok(trace(&self.layers, (1, shape.1, shape.2, shape.3), true)?.1)
    }

    /// The output shape for input `shape`, after checking every layer against it.
    pub fn output_shape(&self, shape: Shape) -> Result<Shape, KernelError> {
        Ok(trace(&self.layers, shape, true)?.0)
    }

    /// Weights and biases, counted once even when a [`Layer::Repeat`] runs them many times.
    pub fn params(&self) -> usize {
        fn count(layers: &[Layer]) -> usize {
            layers
                .iter()
                .map(|l| match l {
                    Layer::Conv2d { w, b, .. } | Layer::Dense { w, b, .. } => w.len() + b.len(),
                    Layer::Repeat { body, .. } => count(body),
                    _ => 0,
                })
                .sum()
        }
        count(&self.layers)
    }
}

/// Output shape and MACs per sample of `layers` on input `s`; checks weight lengths when
/// `weights` (skeletons built by [`arch`] have none yet).
pub(crate) fn trace(layers: &[Layer], mut s: Shape, weights: bool) -> Result<(Shape, u64), KernelError> {
    let mut total = 0u64;
    for (i, l) in layers.iter().enumerate() {
        let (out, macs) = step(i, l, s, weights)?;
        total += macs;
        s = out;
    }
    Ok((s, total))
}

/// One layer: its output shape and its MACs per sample.
pub(crate) fn step(i: usize, l: &Layer, s: Shape, weights: bool) -> Result<(Shape, u64), KernelError> {
    let out = out_shape(i, l, s, weights)?;
    let macs = match l {
        Layer::Conv2d { cin, k, .. } => (out.1 * out.2 * out.3 * cin * k * k) as u64,
        Layer::Dense { din, dout, .. } => (din * dout) as u64,
        Layer::Repeat { times, body } => {
            let (_, per) = trace(body, s, weights).map_err(|e| nested(i, e))?;
            *times as u64 * per
        }
        Layer::Relu | Layer::MaxPool { .. } | Layer::GlobalAvgPool => 0,
    };
    Ok((out, macs))
}

/// An error inside a repeat body, reported against the repeat layer.
fn nested(i: usize, e: KernelError) -> KernelError {
    match e {
        KernelError::Shape { layer, message } => {
            KernelError::Shape { layer: i, message: format!("repeat body layer {layer}: {message}") }
        }
        other => other,
    }
}

pub(crate) fn out_shape(i: usize, l: &Layer, (n, c, h, w): Shape, weights: bool) -> Result<Shape, KernelError> {
    let bad = |message: String| KernelError::Shape { layer: i, message };
    match l {
        Layer::Conv2d { cin, cout, k, stride, pad, w: wt, b } => {
            if c != *cin {
                return Err(bad(format!("expects {cin} channels, got {c}")));
            }
            if (weights && (wt.len() != cout * cin * k * k || b.len() != *cout)) || *stride == 0 {
                return Err(bad("weights, bias or stride do not match the layer's size".into()));
            }
            if h + 2 * pad < *k || w + 2 * pad < *k {
                return Err(bad(format!("{h}x{w} input is smaller than the {k}x{k} kernel")));
            }
            Ok((n, *cout, (h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1))
        }
        Layer::Dense { din, dout, w: wt, b } => {
            if c * h * w != *din {
                return Err(bad(format!("expects {din} inputs, got {}", c * h * w)));
            }
            if weights && (wt.len() != din * dout || b.len() != *dout) {
                return Err(bad("weights or bias do not match the layer's size".into()));
            }
            Ok((n, *dout, 1, 1))
        }
        Layer::Relu => Ok((n, c, h, w)),
        Layer::MaxPool { k } => {
            if *k == 0 || h < *k || w < *k {
                return Err(bad(format!("{h}x{w} input is smaller than the {k}x{k} pool")));
            }
            Ok((n, c, h / k, w / k))
        }
        Layer::GlobalAvgPool => Ok((n, c, 1, 1)),
        Layer::Repeat { times, body } => {
            if *times == 0 {
                return Err(bad("repeat count is 0".into()));
            }
            let (out, _) = trace(body, (n, c, h, w), weights).map_err(|e| nested(i, e))?;
            if out != (n, c, h, w) {
                return Err(bad(format!("repeat body maps {:?} to {out:?}; it must keep the shape", (n, c, h, w))));
            }
            Ok(out)
        }
    }
}

/// Runs models.
pub trait Executor {
    /// Run `model` on `input` of `shape`; returns the output and its shape.
    fn run(&self, model: &Model, input: &[f32], shape: Shape) -> Result<(Vec<f32>, Shape), KernelError>;
}

/// How far `other` is from `reference`: the largest absolute difference divided by
/// `1 + max |reference|`. Infinite when the lengths differ or a value is not finite.
pub fn max_scaled_diff(reference: &[f32], other: &[f32]) -> f32 {
    if reference.len() != other.len() {
        return f32::INFINITY;
    }
    let mut diff = 0f32;
    let mut max = 0f32;
    for (a, b) in reference.iter().zip(other) {
        if !a.is_finite() || !b.is_finite() {
            return f32::INFINITY;
        }
        diff = diff.max((a - b).abs());
        max = max.max(a.abs());
    }
    diff / (1.0 + max)
}

/// The agreement an executor must reach against [`CpuExecutor`]:
/// [`max_scaled_diff`] at most this.
pub const GPU_TOLERANCE: f32 = 1e-3;

/// Check `input` against `shape`, then trace the model: the output shape.
pub(crate) fn check_input(model: &Model, input: &[f32], shape: Shape) -> Result<Shape, KernelError> {
    let need = shape.0 * shape.1 * shape.2 * shape.3;
    if input.len() != need {
        return Err(KernelError::Input { got: input.len(), need, shape });
    }
    Ok(trace(&model.layers, shape, true)?.0)
}

/// The CPU reference executor: straightforward loops, the numerics every other executor is
/// checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuExecutor;

impl Executor for CpuExecutor {
    fn run(&self, model: &Model, input: &[f32], shape: Shape) -> Result<(Vec<f32>, Shape), KernelError> {
        check_input(model, input, shape)?;
        Ok(run_layers(&model.layers, input.to_vec(), shape))
    }
}

/// Run checked layers.
fn run_layers(layers: &[Layer], mut x: Vec<f32>, mut s: Shape) -> (Vec<f32>, Shape) {
    for (i, l) in layers.iter().enumerate() {
        // The model was traced before, so this cannot fail; keep the shape if it did.
        let o = out_shape(i, l, s, false).unwrap_or(s);
        x = layer(l, &x, s, o);
        s = o;
    }
    (x, s)
}

fn layer(l: &Layer, x: &[f32], (n, c, h, w): Shape, (_, oc, oh, ow): Shape) -> Vec<f32> {
    match l {
        Layer::Conv2d { cin, k, stride, pad, w: wt, b, .. } => {
            // Each output starts at its bias and adds x * w over (ci, ky, kx) in that order,
            // as a per-output loop would, so the sums are the same; iterating a weight over a
            // whole output row keeps the inner loop contiguous.
            let (cin, k, stride, pad) = (*cin, *k, *stride, *pad);
            let mut y = vec![0f32; n * oc * oh * ow];
            for (plane_out, out) in y.chunks_exact_mut(oh * ow).enumerate() {
                let (ni, o) = (plane_out / oc, plane_out % oc);
                out.fill(b[o]);
                for ci in 0..cin {
                    let plane = &x[(ni * c + ci) * h * w..][..h * w];
                    if (k, stride, pad) == (1, 1, 0) {
                        // A token-wise GEMM: one weight over the whole plane.
                        let wv = wt[o * cin + ci];
                        for (acc, xv) in out.iter_mut().zip(plane) {
                            *acc += xv * wv;
                        }
                        continue;
                    }
                    for ky in 0..k {
                        for kx in 0..k {
                            let wv = wt[((o * cin + ci) * k + ky) * k + kx];
                            // Output columns whose input column xi*stride + kx - pad is inside.
                            let lo = pad.saturating_sub(kx).div_ceil(stride);
                            let hi = if w + pad > kx { ((w + pad - kx - 1) / stride + 1).min(ow) } else { 0 };
                            if lo >= hi {
                                continue;
                            }
                            for (yi, orow) in out.chunks_exact_mut(ow).enumerate() {
                                let Some(iy) = (yi * stride + ky).checked_sub(pad).filter(|iy| *iy < h) else {
                                    continue;
                                };
                                let row = &plane[iy * w..][..w];
                                let first = lo * stride + kx - pad;
                                if stride == 1 {
                                    for (acc, xv) in orow[lo..hi].iter_mut().zip(&row[first..]) {
                                        *acc += xv * wv;
                                    }
                                } else {
                                    for (acc, xv) in orow[lo..hi].iter_mut().zip(row[first..].iter().step_by(stride)) {
                                        *acc += xv * wv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            y
        }
        Layer::Dense { din, dout, w: wt, b } => {
            let mut y = vec![0f32; n * dout];
            for ni in 0..n {
                let xi = &x[ni * din..(ni + 1) * din];
                for o in 0..*dout {
                    let row = &wt[o * din..(o + 1) * din];
                    y[ni * dout + o] = b[o] + row.iter().zip(xi).map(|(a, b)| a * b).sum::<f32>();
                }
            }
            y
        }
        Layer::Relu => x.iter().map(|v| v.max(0.0)).collect(),
        Layer::MaxPool { k } => {
            let mut y = vec![f32::NEG_INFINITY; n * c * oh * ow];
            for nc in 0..n * c {
                for yi in 0..oh {
                    for xi in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for dy in 0..*k {
                            for dx in 0..*k {
                                m = m.max(x[(nc * h + yi * k + dy) * w + xi * k + dx]);
                            }
                        }
                        y[(nc * oh + yi) * ow + xi] = m;
                    }
                }
            }
            y
        }
        Layer::GlobalAvgPool => {
            let hw = (h * w) as f32;
            (0..n * c).map(|nc| x[nc * h * w..(nc + 1) * h * w].iter().sum::<f32>() / hw).collect()
        }
        Layer::Repeat { times, body } => {
            let mut y = x.to_vec();
            for _ in 0..*times {
                y = run_layers(body, y, (n, c, h, w)).0;
            }
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_layers() {
        // 1x1x3x3 input, one 2x2 kernel of ones, no padding: sums of 2x2 windows.
        let conv = Layer::Conv2d { cin: 1, cout: 1, k: 2, stride: 1, pad: 0, w: vec![1.0; 4], b: vec![0.5] };
        let m = Model { name: "t".into(), layers: vec![conv, Layer::Relu, Layer::MaxPool { k: 2 }] };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let (y, s) = CpuExecutor.run(&m, &x, (1, 1, 3, 3)).expect("runs");
        // windows: 12, 16, 24, 28 (+0.5); max pool over the 2x2 output → 28.5
        assert_eq!((y, s), (vec![28.5], (1, 1, 1, 1)));
        let dense = Model {
            name: "d".into(),
            layers: vec![Layer::Dense { din: 2, dout: 2, w: vec![1.0, 2.0, -1.0, 0.0], b: vec![0.0, 1.0] }],
        };
        let (y, _) = CpuExecutor.run(&dense, &[3.0, 4.0, 1.0, 1.0], (2, 2, 1, 1)).expect("runs");
        assert_eq!(y, vec![11.0, -2.0, 3.0, 0.0]);
    }

    #[test]
    fn padding_matches_an_explicitly_padded_input() {
        let arch = Arch { cin: 2, width: 3, blocks: 1, classes: 4 };
        let m = Model::generated("p", arch, 7);
        let Layer::Conv2d { w, b, .. } = &m.layers[0] else { panic!("conv first") };
        let padded = Layer::Conv2d { cin: 2, cout: 3, k: 3, stride: 1, pad: 1, w: w.clone(), b: b.clone() };
        let unpadded = Layer::Conv2d { cin: 2, cout: 3, k: 3, stride: 1, pad: 0, w: w.clone(), b: b.clone() };
        let x: Vec<f32> = (0..2 * 4 * 4).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let mut xp = vec![0f32; 2 * 6 * 6];
        for c in 0..2 {
            for y in 0..4 {
                for xx in 0..4 {
                    xp[(c * 6 + y + 1) * 6 + xx + 1] = x[(c * 4 + y) * 4 + xx];
                }
            }
        }
        let a = CpuExecutor.run(&Model { name: "a".into(), layers: vec![padded] }, &x, (1, 2, 4, 4)).expect("a");
        let b = CpuExecutor.run(&Model { name: "b".into(), layers: vec![unpadded] }, &xp, (1, 2, 6, 6)).expect("b");
        assert_eq!(a, b);
    }

    #[test]
    fn generated_weights_are_deterministic_and_batches_are_independent() {
        let arch = Arch { cin: 3, width: 8, blocks: 3, classes: 10 };
        assert_eq!(Model::generated("m", arch, 1), Model::generated("m", arch, 1));
        assert_ne!(Model::generated("m", arch, 1), Model::generated("m", arch, 2));
        let m = Model::generated("m", arch, 1);
        let one: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 13) as f32 / 13.0).collect();
        let two: Vec<f32> = one.iter().chain(one.iter().rev()).copied().collect();
        let (y1, s1) = CpuExecutor.run(&m, &one, (1, 3, 16, 16)).expect("runs");
        let (y2, s2) = CpuExecutor.run(&m, &two, (2, 3, 16, 16)).expect("runs");
        assert_eq!((s1, s2), ((1, 10, 1, 1), (2, 10, 1, 1)));
        assert_eq!(&y2[..10], &y1[..], "sample 0 of a batch equals the sample alone");
        assert!(y1.iter().all(|v| v.is_finite()) && y1.iter().any(|v| *v != 0.0));
        // Cost grows with width as in a real family: 2x width ≈ 4x MACs in the conv layers.
        let wide = Model::generated("w", Arch { width: 16, ..arch }, 1);
        let (a, b) = (m.macs((1, 3, 16, 16)).expect("macs"), wide.macs((1, 3, 16, 16)).expect("macs"));
        assert!(b > 3 * a && b < 5 * a, "{a} vs {b}");
    }

    /// The per-output loop the conv layer must match bit for bit.
    fn naive_conv(l: &Layer, x: &[f32], (n, c, h, w): Shape) -> Vec<f32> {
        let Layer::Conv2d { cin, cout, k, stride, pad, w: wt, b } = l else { panic!("conv") };
        let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        let mut y = vec![0f32; n * cout * oh * ow];
        for ni in 0..n {
            for o in 0..*cout {
                for yi in 0..oh {
                    for xi in 0..ow {
                        let mut acc = b[o];
                        for ci in 0..*cin {
                            for ky in 0..*k {
                                for kx in 0..*k {
                                    let iy = (yi * stride + ky) as isize - *pad as isize;
                                    let ix = (xi * stride + kx) as isize - *pad as isize;
                                    if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                                        let xv = x[((ni * c + ci) * h + iy as usize) * w + ix as usize];
                                        acc += xv * wt[((o * cin + ci) * k + ky) * k + kx];
                                    }
                                }
                            }
                        }
                        y[((ni * cout + o) * oh + yi) * ow + xi] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv_matches_the_per_output_loop_bit_for_bit() {
        let mut rng = SplitMix64::new(5);
        let mut pick = |n: u64| (rng.next_u64() % n) as usize;
        for _ in 0..300 {
            let (n, cin, cout, h, w) = (1 + pick(2), 1 + pick(3), 1 + pick(3), 1 + pick(12), 1 + pick(12));
            let (k, stride, pad) = if pick(4) == 0 { (1, 1, 0) } else { (1 + pick(7), 1 + pick(4), pick(4)) };
            if h + 2 * pad < k || w + 2 * pad < k {
                continue;
            }
            let conv = Layer::Conv2d { cin, cout, k, stride, pad, w: Vec::new(), b: Vec::new() };
            let m = Model::seeded("c", vec![conv], pick(1000) as u64);
            let x: Vec<f32> = (0..n * cin * h * w).map(|i| ((i * 7 + 3) % 17) as f32 - 8.0 + 0.1).collect();
            let (y, _) = CpuExecutor.run(&m, &x, (n, cin, h, w)).expect("runs");
            assert_eq!(y, naive_conv(&m.layers[0], &x, (n, cin, h, w)), "k {k} stride {stride} pad {pad} {h}x{w}");
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let m = Model::generated("m", Arch { cin: 3, width: 4, blocks: 2, classes: 2 }, 0);
        assert!(matches!(CpuExecutor.run(&m, &[0.0; 5], (1, 3, 8, 8)), Err(KernelError::Input { .. })));
        let e = CpuExecutor.run(&m, &[0.0; 4 * 64], (1, 4, 8, 8)).unwrap_err();
        assert!(matches!(e, KernelError::Shape { layer: 0, .. }), "{e}");
        let e = CpuExecutor.run(&m, &[0.0; 3 * 4], (1, 3, 2, 2)).unwrap_err();
        assert!(e.to_string().contains("smaller than"), "{e}");
    }
}
