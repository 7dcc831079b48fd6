//! # jigsaw-kernels
//!
//! Executors for the data plane. This crate holds, so far, the model representation and the
//! CPU reference executor:
//!
//! * [`Layer`] / [`Model`]: a model variant as a sequence of layers (2-D convolution, dense
//!   GEMM, ReLU, max pooling, global average pooling) over NCHW `f32` tensors;
//! * [`Model::generated`]: deterministic weights from a seed (no downloads; the same seed
//!   gives bit-identical weights on every machine);
//! * [`Executor`] and [`CpuExecutor`]: run a batch through a model.
//!
//! Not built yet (data-plane issue): the cudarc executor (NVRTC kernels / cuBLAS, probing
//! `libcuda.so` before the first call), safetensors loading, and layer graphs shaped after
//! each variant's architecture class.

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
}

/// A tensor shape (N, C, H, W); dense layers produce (N, C, 1, 1).
pub type Shape = (usize, usize, usize, usize);

/// Why a model cannot run.
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
        let mut rng = SplitMix64::new(seed);
        let mut layers = Vec::new();
        let mut c = arch.cin;
        for i in 0..arch.blocks {
            let cout = arch.width << i;
            let k = 3;
            let scale = (6.0 / (c * k * k) as f32).sqrt();
            let w = (0..cout * c * k * k).map(|_| weight(&mut rng, scale)).collect();
            let b = (0..cout).map(|_| weight(&mut rng, 0.01)).collect();
            layers.push(Layer::Conv2d { cin: c, cout, k, stride: 1, pad: 1, w, b });
            layers.push(Layer::Relu);
            layers.push(Layer::MaxPool { k: 2 });
            c = cout;
        }
        layers.push(Layer::GlobalAvgPool);
        let scale = (6.0 / c as f32).sqrt();
        let w = (0..arch.classes * c).map(|_| weight(&mut rng, scale)).collect();
        let b = (0..arch.classes).map(|_| weight(&mut rng, 0.01)).collect();
        layers.push(Layer::Dense { din: c, dout: arch.classes, w, b });
        Model { name: name.to_string(), layers }
    }

    /// Multiply-accumulates for one sample of input `shape` (N ignored).
    pub fn macs(&self, shape: Shape) -> Result<u64, KernelError> {
        let mut s = (1, shape.1, shape.2, shape.3);
        let mut total = 0u64;
        for (i, l) in self.layers.iter().enumerate() {
            let out = out_shape(i, l, s)?;
            total += match l {
                Layer::Conv2d { cin, k, .. } => (out.1 * out.2 * out.3 * cin * k * k) as u64,
                Layer::Dense { din, dout, .. } => (din * dout) as u64,
                _ => 0,
            };
            s = out;
        }
        Ok(total)
    }
}

fn out_shape(i: usize, l: &Layer, (n, c, h, w): Shape) -> Result<Shape, KernelError> {
    let bad = |message: String| KernelError::Shape { layer: i, message };
    match l {
        Layer::Conv2d { cin, cout, k, stride, pad, w: wt, b } => {
            if c != *cin {
                return Err(bad(format!("expects {cin} channels, got {c}")));
            }
            if wt.len() != cout * cin * k * k || b.len() != *cout || *stride == 0 {
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
            if wt.len() != din * dout || b.len() != *dout {
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
    }
}

/// Runs models.
pub trait Executor {
    /// Run `model` on `input` of `shape`; returns the output and its shape.
    fn run(&self, model: &Model, input: &[f32], shape: Shape) -> Result<(Vec<f32>, Shape), KernelError>;
}

/// The CPU reference executor: straightforward loops, the numerics every other executor is
/// checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuExecutor;

impl Executor for CpuExecutor {
    fn run(&self, model: &Model, input: &[f32], shape: Shape) -> Result<(Vec<f32>, Shape), KernelError> {
        let need = shape.0 * shape.1 * shape.2 * shape.3;
        if input.len() != need {
            return Err(KernelError::Input { got: input.len(), need, shape });
        }
        let mut x = input.to_vec();
        let mut s = shape;
        for (i, l) in model.layers.iter().enumerate() {
            let o = out_shape(i, l, s)?;
            x = layer(l, &x, s, o);
            s = o;
        }
        Ok((x, s))
    }
}

fn layer(l: &Layer, x: &[f32], (n, c, h, w): Shape, (_, oc, oh, ow): Shape) -> Vec<f32> {
    match l {
        Layer::Conv2d { cin, k, stride, pad, w: wt, b, .. } => {
            let mut y = vec![0f32; n * oc * oh * ow];
            for ni in 0..n {
                for o in 0..oc {
                    for yi in 0..oh {
                        for xi in 0..ow {
                            let mut acc = b[o];
                            for ci in 0..*cin {
                                for ky in 0..*k {
                                    let iy = (yi * stride + ky) as isize - *pad as isize;
                                    if iy < 0 || iy >= h as isize {
                                        continue;
                                    }
                                    for kx in 0..*k {
                                        let ix = (xi * stride + kx) as isize - *pad as isize;
                                        if ix < 0 || ix >= w as isize {
                                            continue;
                                        }
                                        let xv = x[((ni * c + ci) * h + iy as usize) * w + ix as usize];
                                        acc += xv * wt[((o * cin + ci) * k + ky) * k + kx];
                                    }
                                }
                            }
                            y[((ni * oc + o) * oh + yi) * ow + xi] = acc;
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
