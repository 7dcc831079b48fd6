//! Layer graphs shaped after each architecture family and sized to a FLOP budget.
//!
//! [`Model::for_variant`] turns a [`ModelDesc`] into a layer graph whose *shape* follows the
//! family and whose multiply-accumulates (MACs) per item are `scale * gflops * 1e9 / 2`
//! (`gflops` counts a multiply-add as 2 and covers the whole item, every decoded token
//! included). The depth follows the variant ladder of the real family (a bigger `gflops`
//! picks a deeper member, e.g. ResNet-18 → 50 → 101 → 152 block counts); then one width
//! multiplier, applied to the real channel widths, is searched until the MACs are as close
//! to the budget as whole channel counts allow. `scale` lets a small machine run
//! real-shaped, scaled-down models (e.g. `1e-3`).
//!
//! | family | input ([`input_shape`]) | graph |
//! |---|---|---|
//! | `vgg` | 3×32×32 | 5 stages of 1–4 3×3 convs (widths 64·w … 512·w, doubling), max-pool after each; global pool, dense classifier |
//! | `resnet` | 3×64×64 | 7×7/2 stem + max-pool; 4 stages of 1×1–3×3–1×1 bottlenecks (sequential, no residual add), stride 2 at each stage's first 3×3; global pool, dense classifier |
//! | `efficientnet` | 3×64×64 | 3×3/2 stem; 7 stages of 1×1 expand (×2) / 3×3 / 1×1 project blocks (a dense 3×3 stands in for the depthwise one); 1×1 head, global pool, dense classifier |
//! | `yolov5` | 3×64×64 | 6×6/2 stem; 4 stages of a strided 3×3 conv and CSP-like 1×1/3×3 pairs; 1×1 detection head with 255 = 3·(5+80) channels on the stride-32 grid |
//! | `git` | 3×32×32 | ViT-like encoder (4×4/4 patch embedding, token-wise 1×1 MLPs, 75 % of the budget), global pool, then a dense decoder block repeated `decode_steps` times ([`Layer::Repeat`], 25 %), dense vocabulary head |
//! | `tts` | 64×32×1 (32 text tokens of 64 values) | token-wise 1×1 GEMMs (text encoder and vocoder, 80 %), global pool, then a dense decoder repeated `decode_steps` times (20 %), dense 80-bin mel head |
//!
//! A 1×1 convolution over a token axis is a token-wise dense layer (one GEMM with shared
//! weights), which keeps the parameter count of the sequence models realistic: a per-item
//! dense layer would need one weight per MAC.

use crate::{trace, KernelError, Layer, Model, Shape};
use jigsaw_protocol::app::ModelDesc;

/// The families [`Model::for_variant`] knows.
pub const FAMILIES: &[&str] = &["vgg", "resnet", "efficientnet", "yolov5", "git", "tts"];

/// Classes of the vision classifiers' dense head.
const CLASSES: usize = 10;

/// The per-item input (C, H, W) the graphs of `family` are sized for; a batch of `n` items
/// is an NCHW tensor of shape `(n, C, H, W)`.
pub fn input_shape(family: &str) -> Result<(usize, usize, usize), KernelError> {
    match family {
        "vgg" | "git" => Ok((3, 32, 32)),
        "resnet" | "efficientnet" | "yolov5" => Ok((3, 64, 64)),
        "tts" => Ok((64, 32, 1)),
        _ => Err(KernelError::UnknownFamily { family: family.to_string() }),
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Layer {
    Layer::Conv2d { cin, cout, k, stride, pad, w: Vec::new(), b: Vec::new() }
}

fn dense(din: usize, dout: usize) -> Layer {
    Layer::Dense { din, dout, w: Vec::new(), b: Vec::new() }
}

/// `base` channels scaled by the width multiplier, at least 1.
fn ch(w: f64, base: f64) -> usize {
    ((w * base).round() as usize).max(1)
}

fn vgg(w: f64, gflops: f64, cin: usize) -> Vec<Layer> {
    // VGG-11 / 13 / 16 / 19 convolutions per stage.
    let convs: [usize; 5] = match gflops {
        g if g < 18.0 => [1, 1, 2, 2, 2],
        g if g < 26.0 => [2, 2, 2, 2, 2],
        g if g < 35.0 => [2, 2, 3, 3, 3],
        _ => [2, 2, 4, 4, 4],
    };
    let mut l = Vec::new();
    let mut c = cin;
    for (n, base) in convs.iter().zip([64.0, 128.0, 256.0, 512.0, 512.0]) {
        let out = ch(w, base);
        for _ in 0..*n {
            l.extend([conv(c, out, 3, 1, 1), Layer::Relu]);
            c = out;
        }
        l.push(Layer::MaxPool { k: 2 });
    }
    l.extend([Layer::GlobalAvgPool, dense(c, CLASSES)]);
    l
}

fn resnet(w: f64, gflops: f64, cin: usize) -> Vec<Layer> {
    // Bottleneck blocks per stage of ResNet-26-like / 50 / 101 / 152.
    let blocks: [usize; 4] = match gflops {
        g if g < 5.0 => [2, 2, 2, 2],
        g if g < 10.0 => [3, 4, 6, 3],
        g if g < 20.0 => [3, 4, 23, 3],
        _ => [3, 8, 36, 3],
    };
    let stem = ch(w, 64.0);
    let mut l = vec![conv(cin, stem, 7, 2, 3), Layer::Relu, Layer::MaxPool { k: 2 }];
    let mut c = stem;
    for (s, n) in blocks.iter().enumerate() {
        let b = ch(w, (64 << s) as f64);
        for j in 0..*n {
            let stride = if s > 0 && j == 0 { 2 } else { 1 };
            l.extend([conv(c, b, 1, 1, 0), Layer::Relu, conv(b, b, 3, stride, 1), Layer::Relu]);
            l.extend([conv(b, 4 * b, 1, 1, 0), Layer::Relu]);
            c = 4 * b;
        }
    }
    l.extend([Layer::GlobalAvgPool, dense(c, CLASSES)]);
    l
}

fn efficientnet(w: f64, gflops: f64, cin: usize) -> Vec<Layer> {
    // EfficientNet-B0 stages (stride, output channels, repeats); deeper members multiply the
    // repeats by a depth coefficient (B7: 3.1 at 95x the FLOPs of B0, so about flops^0.25).
    const STAGES: [(usize, f64, usize); 7] =
        [(1, 16.0, 1), (2, 24.0, 2), (2, 40.0, 2), (2, 80.0, 3), (1, 112.0, 3), (2, 192.0, 4), (1, 320.0, 1)];
    let depth = (gflops / 0.78).max(1.0).powf(0.25);
    let stem = ch(w, 32.0);
    let mut l = vec![conv(cin, stem, 3, 2, 1), Layer::Relu];
    let mut c = stem;
    for (stride, base, repeats) in STAGES {
        let out = ch(w, base);
        for j in 0..(repeats as f64 * depth).ceil() as usize {
            let s = if j == 0 { stride } else { 1 };
            let e = 2 * c;
            l.extend([conv(c, e, 1, 1, 0), Layer::Relu, conv(e, e, 3, s, 1), Layer::Relu]);
            l.push(conv(e, out, 1, 1, 0)); // linear projection, as in MBConv
            c = out;
        }
    }
    let head = ch(w, 1280.0);
    l.extend([conv(c, head, 1, 1, 0), Layer::Relu, Layer::GlobalAvgPool, dense(head, CLASSES)]);
    l
}

fn yolov5(w: f64, gflops: f64, cin: usize) -> Vec<Layer> {
    // depth_multiple of yolov5n/s (0.33), m (0.67), l (1.0), x (1.33).
    let dm = match gflops {
        g if g < 30.0 => 0.33,
        g if g < 70.0 => 0.67,
        g if g < 150.0 => 1.0,
        _ => 1.33,
    };
    let stem = ch(w, 64.0);
    let mut l = vec![conv(cin, stem, 6, 2, 2), Layer::Relu];
    let mut c = stem;
    for (base, n) in [(128.0, 3.0f64), (256.0, 6.0), (512.0, 9.0), (1024.0, 3.0)] {
        let out = ch(w, base);
        let hid = ch(w, base / 2.0);
        l.extend([conv(c, out, 3, 2, 1), Layer::Relu]);
        for _ in 0..(n * dm).round().max(1.0) as usize {
            l.extend([conv(out, hid, 1, 1, 0), Layer::Relu, conv(hid, out, 3, 1, 1), Layer::Relu]);
        }
        c = out;
    }
    l.push(conv(c, 3 * (5 + 80), 1, 1, 0));
    l
}

fn git_encoder(w: f64, gflops: f64, cin: usize) -> Vec<Layer> {
    let d = ch(w, 768.0);
    let blocks = match gflops {
        g if g < 100.0 => 4,
        g if g < 300.0 => 6,
        _ => 8,
    };
    let mut l = vec![conv(cin, d, 4, 4, 0)];
    for _ in 0..blocks {
        l.extend([conv(d, 4 * d, 1, 1, 0), Layer::Relu, conv(4 * d, d, 1, 1, 0), Layer::Relu]);
    }
    l.push(Layer::GlobalAvgPool);
    l
}

fn git_decoder(w: f64, steps: usize, din: usize) -> Vec<Layer> {
    let h = ch(w, 768.0);
    let body = vec![dense(h, 4 * h), Layer::Relu, dense(4 * h, h), Layer::Relu];
    vec![dense(din, h), Layer::Relu, Layer::Repeat { times: steps, body }, dense(h, 256)]
}

fn tts_encoder(w: f64, cin: usize) -> Vec<Layer> {
    let d = ch(w, 512.0);
    let mut l = vec![conv(cin, d, 1, 1, 0), Layer::Relu];
    for _ in 0..4 {
        l.extend([conv(d, 2 * d, 1, 1, 0), Layer::Relu, conv(2 * d, d, 1, 1, 0), Layer::Relu]);
    }
    l.push(Layer::GlobalAvgPool);
    l
}

fn tts_decoder(w: f64, steps: usize, din: usize) -> Vec<Layer> {
    let h = ch(w, 512.0);
    let body = vec![dense(h, h), Layer::Relu, dense(h, h), Layer::Relu];
    vec![dense(din, h), Layer::Relu, Layer::Repeat { times: steps, body }, dense(h, 80)]
}

/// The graph from `build(w)` whose MACs per item on `input` are closest to `target`, for
/// a width multiplier `w` searched on a log scale (MACs never fall as `w` grows). A target
/// below the narrowest graph gives the narrowest graph.
fn fit(variant: &str, target: f64, input: Shape, build: &dyn Fn(f64) -> Vec<Layer>) -> Result<Vec<Layer>, KernelError> {
    let macs = |w: f64| -> Result<f64, KernelError> {
        trace(&build(w), input, false).map(|(_, m)| m as f64).map_err(|e| KernelError::Variant {
            variant: variant.to_string(),
            message: format!("input {}x{}x{} is too small for the graph: {e}", input.1, input.2, input.3),
        })
    };
    // At 1e-4 every width rounds to a single channel.
    let mut lo = 1e-4;
    if macs(lo)? >= target {
        return Ok(build(lo));
    }
    let mut hi = 1.0;
    while macs(hi)? < target {
        hi *= 2.0;
        if hi > 1e3 {
            return Err(KernelError::Variant {
                variant: variant.to_string(),
                message: format!("{target:.3e} MACs need more than 1000x the real widths; lower the scale"),
            });
        }
    }
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        if macs(mid)? >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let off = |w: f64| macs(w).map(|m| (m / target).ln().abs());
    Ok(build(if off(lo)? < off(hi)? { lo } else { hi }))
}

impl Model {
    /// A layer graph for variant `name` of `desc.family` on per-item `input` (C, H, W),
    /// with about `scale * desc.gflops * 1e9 / 2` MACs per item and deterministic weights
    /// from `seed`. See the [module docs](crate::arch) for the graph of each family and
    /// [`input_shape`] for the input it is meant for.
    ///
    /// The MACs come within a few per cent of the budget unless the widths are down to a
    /// handful of channels, where whole channel counts make the steps coarse; a budget
    /// below the narrowest graph (every width 1) gives that graph.
    pub fn for_variant(
        name: &str,
        desc: &ModelDesc,
        input: (usize, usize, usize),
        scale: f64,
        seed: u64,
    ) -> Result<Model, KernelError> {
        let bad = |message: String| KernelError::Variant { variant: name.to_string(), message };
        input_shape(&desc.family)?;
        if !(desc.gflops.is_finite() && desc.gflops > 0.0) {
            return Err(bad(format!("gflops must be positive, got {}", desc.gflops)));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(bad(format!("scale must be positive, got {scale}")));
        }
        if desc.decode_steps == 0 {
            return Err(bad("decode_steps must be at least 1".into()));
        }
        if input.0 == 0 || input.1 == 0 || input.2 == 0 {
            return Err(bad(format!("input {input:?} has an empty dimension")));
        }
        let target = scale * desc.gflops * 1e9 / 2.0;
        let (g, cin, steps) = (desc.gflops, input.0, desc.decode_steps as usize);
        let shape = (1, input.0, input.1, input.2);
        let layers = match desc.family.as_str() {
            "vgg" => fit(name, target, shape, &|w| vgg(w, g, cin))?,
            "resnet" => fit(name, target, shape, &|w| resnet(w, g, cin))?,
            "efficientnet" => fit(name, target, shape, &|w| efficientnet(w, g, cin))?,
            "yolov5" => fit(name, target, shape, &|w| yolov5(w, g, cin))?,
            family @ ("git" | "tts") => {
                let share = if family == "git" { 0.75 } else { 0.8 };
                let encoder = if family == "git" {
                    fit(name, share * target, shape, &|w| git_encoder(w, g, cin))?
                } else {
                    fit(name, share * target, shape, &|w| tts_encoder(w, cin))?
                };
                let (mid, enc_macs) = trace(&encoder, shape, false)?;
                // The decoder takes what the encoder's fit left, so the sum stays on budget.
                let rest = (target - enc_macs as f64).max(0.2 * target);
                let decoder = if family == "git" {
                    fit(name, rest, mid, &|w| git_decoder(w, steps, mid.1))?
                } else {
                    fit(name, rest, mid, &|w| tts_decoder(w, steps, mid.1))?
                };
                encoder.into_iter().chain(decoder).collect()
            }
            other => return Err(KernelError::UnknownFamily { family: other.to_string() }),
        };
        Ok(Model::seeded(name, layers, seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuExecutor, Executor};
    use jigsaw_protocol::app::AppSpec;

    fn desc(family: &str, gflops: f64, decode_steps: u32) -> ModelDesc {
        ModelDesc { family: family.into(), gflops, params_m: 1.0, activation_mb: 1.0, decode_steps, kernels: None }
    }

    /// Every variant of the example apps, deduplicated by name.
    fn example_variants() -> Vec<(String, ModelDesc)> {
        let files = [
            ("traffic", include_str!("../../examples/apps/traffic.toml")),
            ("social", include_str!("../../examples/apps/social.toml")),
            ("ar", include_str!("../../examples/apps/ar.toml")),
        ];
        let mut out: Vec<(String, ModelDesc)> = Vec::new();
        for (path, text) in files {
            let app = AppSpec::parse(text, path).expect("example app parses");
            for v in app.tasks.iter().flat_map(|t| &t.variants) {
                if !out.iter().any(|(n, _)| n == &v.name) {
                    out.push((v.name.clone(), v.model.clone()));
                }
            }
        }
        out
    }

    fn macs_of(name: &str, d: &ModelDesc, scale: f64) -> f64 {
        let (c, h, w) = input_shape(&d.family).expect("family");
        let m = Model::for_variant(name, d, (c, h, w), scale, 1).expect("builds");
        m.macs((1, c, h, w)).expect("macs") as f64
    }

    #[test]
    fn example_variants_hit_their_mac_budget_and_keep_the_gflops_ratios() {
        let variants = example_variants();
        assert!(variants.len() >= 25, "{} variants", variants.len());
        let scale = 1e-3;
        let macs: Vec<f64> = variants.iter().map(|(n, d)| macs_of(n, d, scale)).collect();
        for ((name, d), m) in variants.iter().zip(&macs) {
            let target = scale * d.gflops * 1e9 / 2.0;
            assert!((m / target - 1.0).abs() <= 0.35, "{name}: {m} MACs vs target {target}");
        }
        for (i, (a, da)) in variants.iter().enumerate() {
            for (j, (b, db)) in variants.iter().enumerate() {
                if da.family == db.family && i < j {
                    let ratio = (macs[j] / macs[i]) / (db.gflops / da.gflops);
                    assert!((ratio - 1.0).abs() <= 0.35, "{a} vs {b}: MAC ratio off the gflops ratio by {ratio}");
                }
            }
        }
        // A much smaller scale still lands near the budget for the mid-sized variants.
        for (name, gflops) in [("resnet50", 8.18), ("vgg16", 30.9)] {
            let family = if name.starts_with("vgg") { "vgg" } else { "resnet" };
            let m = macs_of(name, &desc(family, gflops, 1), 1e-4);
            let target = 1e-4 * gflops * 1e9 / 2.0;
            assert!((m / target - 1.0).abs() <= 0.35, "{name} at 1e-4: {m} vs {target}");
        }
    }

    /// Counts of (1x1 convs, 3x3 convs, other convs, strided convs, dense, max-pools,
    /// global pools, repeats) over the whole graph.
    fn mix(m: &Model) -> [usize; 8] {
        fn add(layers: &[Layer], n: &mut [usize; 8]) {
            for l in layers {
                match l {
                    Layer::Conv2d { k, stride, .. } => {
                        n[match k {
                            1 => 0,
                            3 => 1,
                            _ => 2,
                        }] += 1;
                        n[3] += usize::from(*stride > 1);
                    }
                    Layer::Dense { .. } => n[4] += 1,
                    Layer::MaxPool { .. } => n[5] += 1,
                    Layer::GlobalAvgPool => n[6] += 1,
                    Layer::Repeat { body, .. } => {
                        n[7] += 1;
                        add(body, n);
                    }
                    Layer::Relu => {}
                }
            }
        }
        let mut n = [0; 8];
        add(&m.layers, &mut n);
        n
    }

    #[test]
    fn families_build_their_own_layer_mix() {
        let build = |f: &str, g: f64, steps: u32| {
            let (c, h, w) = input_shape(f).expect("family");
            Model::for_variant(f, &desc(f, g, steps), (c, h, w), 1e-3, 3).expect("builds")
        };
        let vgg = mix(&build("vgg", 30.9, 1));
        assert_eq!((vgg[0], vgg[2], vgg[3], vgg[5]), (0, 0, 0, 5), "vgg: only 3x3 convs, 5 pools {vgg:?}");
        assert_eq!(vgg[1], 13, "vgg16 has 13 convs");
        let resnet = build("resnet", 8.18, 1);
        let Layer::Conv2d { k: 7, stride: 2, .. } = &resnet.layers[0] else { panic!("7x7/2 stem") };
        let r = mix(&resnet);
        assert_eq!((r[0], r[1]), (32, 16), "resnet50: 16 bottlenecks {r:?}");
        let eff = mix(&build("efficientnet", 0.78, 1));
        assert_eq!((eff[0], eff[1]), (33, 17), "efficientnet-b0: 16 expand/3x3/project blocks {eff:?}");
        let yolo = build("yolov5", 16.5, 1);
        let y = mix(&yolo);
        assert_eq!((y[3], y[4], y[6]), (5, 0, 0), "yolov5: 5 strided convs, no dense, no pooling {y:?}");
        assert!(matches!(yolo.layers.last(), Some(Layer::Conv2d { k: 1, cout: 255, .. })));
        for (f, steps) in [("git", 20), ("tts", 1)] {
            let m = build(f, 40.0, steps);
            let n = mix(&m);
            assert_eq!((n[1], n[5], n[7]), (0, 0, 1), "{f}: GEMMs only, one repeat {n:?}");
            assert!(n[4] >= 4, "{f}: dense decoder {n:?}");
            let repeat = m.layers.iter().find_map(|l| match l {
                Layer::Repeat { times, .. } => Some(*times),
                _ => None,
            });
            assert_eq!(repeat, Some(steps as usize));
        }
        let mixes: Vec<[usize; 8]> = FAMILIES.iter().map(|f| mix(&build(f, 20.0, 20))).collect();
        for i in 0..mixes.len() {
            for j in 0..i {
                assert_ne!(mixes[i], mixes[j], "{} and {} have the same layer mix", FAMILIES[i], FAMILIES[j]);
            }
        }
    }

    #[test]
    fn decode_steps_set_the_repeat_and_the_budget_still_holds() {
        for steps in [1, 20, 60] {
            let m = macs_of("g", &desc("git", 170.0, steps), 1e-3);
            let target = 1e-3 * 170.0e9 / 2.0;
            assert!((m / target - 1.0).abs() <= 0.1, "steps {steps}: {m} vs {target}");
        }
        // The decoder's weights are shared across steps: 60 steps keep fewer parameters.
        let p = |steps| {
            let d = desc("git", 170.0, steps);
            Model::for_variant("g", &d, (3, 32, 32), 1e-3, 0).expect("builds").params()
        };
        assert!(p(60) < p(1), "{} vs {}", p(60), p(1));
    }

    #[test]
    fn every_family_runs_on_the_cpu_deterministically() {
        for f in FAMILIES {
            let (c, h, w) = input_shape(f).expect("family");
            let d = desc(f, 5.0, 3);
            let m = Model::for_variant("v", &d, (c, h, w), 1e-4, 9).expect("builds");
            assert_eq!(m, Model::for_variant("v", &d, (c, h, w), 1e-4, 9).expect("builds"));
            assert_ne!(m, Model::for_variant("v", &d, (c, h, w), 1e-4, 10).expect("builds"));
            let x: Vec<f32> = (0..2 * c * h * w).map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5).collect();
            let (y, s) = CpuExecutor.run(&m, &x, (2, c, h, w)).expect("runs");
            assert_eq!(s.0, 2);
            assert_eq!(y.len(), s.0 * s.1 * s.2 * s.3);
            assert!(y.iter().all(|v| v.is_finite()) && y.iter().any(|v| *v != 0.0), "{f}: {y:?}");
        }
    }

    #[test]
    fn bad_variants_are_typed_errors() {
        let e = Model::for_variant("m", &desc("mobilenet", 1.0, 1), (3, 32, 32), 1e-3, 0).unwrap_err();
        assert_eq!(e, KernelError::UnknownFamily { family: "mobilenet".into() });
        assert!(e.to_string().contains("mobilenet") && e.to_string().contains("resnet"), "{e}");
        assert!(matches!(input_shape("bert"), Err(KernelError::UnknownFamily { .. })));
        for (d, input, scale) in [
            (desc("vgg", 0.0, 1), (3, 32, 32), 1e-3),
            (desc("vgg", 1.0, 1), (3, 32, 32), -1.0),
            (desc("git", 1.0, 0), (3, 32, 32), 1e-3),
            (desc("vgg", 1.0, 1), (3, 16, 16), 1e-3),
            (desc("vgg", 1.0, 1), (3, 32, 32), 1e9),
        ] {
            let e = Model::for_variant("v1", &d, input, scale, 0).unwrap_err();
            assert!(matches!(&e, KernelError::Variant { variant, .. } if variant == "v1"), "{e}");
        }
    }
}
