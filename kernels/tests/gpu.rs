//! CPU/GPU agreement. Runs only with `JIGSAW_GPU_TESTS=1` on a machine with an NVIDIA GPU,
//! its driver and NVRTC (`libnvrtc.so`, CUDA 12.x, on the library path); elsewhere it says
//! that it is skipped. Agreement means [`max_scaled_diff`] ≤ [`GPU_TOLERANCE`]: the largest
//! absolute difference is at most `1e-3 * (1 + max |CPU value|)`.

use jigsaw_kernels::arch::{input_shape, FAMILIES};
use jigsaw_kernels::cuda::CudaExecutor;
use jigsaw_kernels::{max_scaled_diff, Arch, CpuExecutor, Executor, Layer, Model, Shape, GPU_TOLERANCE};
use jigsaw_protocol::app::ModelDesc;

fn enabled() -> bool {
    if std::env::var("JIGSAW_GPU_TESTS").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: set JIGSAW_GPU_TESTS=1 on a machine with an NVIDIA GPU, its driver and libnvrtc");
    false
}

fn input(shape: Shape, salt: usize) -> Vec<f32> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    (0..n).map(|i| (((i + salt) * 7919) % 2003) as f32 / 1001.5 - 1.0).collect()
}

/// Layers the generated graphs do not reach: odd sizes, big kernels, uneven strides and
/// pools, padding wider than the stride, dense layers of odd widths, a repeat.
fn edge_cases() -> Model {
    let conv = |cin, cout, k, stride, pad| Layer::Conv2d { cin, cout, k, stride, pad, w: Vec::new(), b: Vec::new() };
    let dense = |din, dout| Layer::Dense { din, dout, w: Vec::new(), b: Vec::new() };
    let layers = vec![
        conv(3, 5, 7, 2, 3),
        Layer::Relu,
        conv(5, 6, 4, 3, 2),
        Layer::MaxPool { k: 3 },
        conv(6, 7, 1, 1, 0),
        Layer::GlobalAvgPool,
        dense(7, 33),
        Layer::Relu,
        Layer::Repeat { times: 4, body: vec![dense(33, 33), Layer::Relu] },
        dense(33, 1),
    ];
    Model::seeded("edge", layers, 12345)
}

#[test]
fn gpu_matches_the_cpu_reference() {
    if !enabled() {
        return;
    }
    let gpu = CudaExecutor::new(0).expect("JIGSAW_GPU_TESTS=1 needs a usable GPU");
    println!("device: {}", gpu.device());
    let mut cases: Vec<(Model, Shape)> = vec![
        (Model::generated("cnn", Arch { cin: 3, width: 8, blocks: 3, classes: 10 }, 1), (3, 3, 16, 16)),
        (edge_cases(), (2, 3, 23, 19)),
    ];
    for (i, f) in FAMILIES.iter().enumerate() {
        let (c, h, w) = input_shape(f).expect("family");
        let d = ModelDesc {
            family: f.to_string(),
            gflops: 10.0,
            params_m: 1.0,
            activation_mb: 1.0,
            decode_steps: 5,
            kernels: None,
        };
        let m = Model::for_variant(f, &d, (c, h, w), 1e-4, i as u64).expect("builds");
        cases.push((m, (2, c, h, w)));
    }
    let d = ModelDesc {
        family: "resnet".into(),
        gflops: 8.18,
        params_m: 25.6,
        activation_mb: 100.0,
        decode_steps: 1,
        kernels: None,
    };
    cases.push((Model::for_variant("resnet50", &d, (3, 64, 64), 1e-3, 7).expect("builds"), (4, 3, 64, 64)));
    for (m, shape) in &cases {
        let x = input(*shape, 0);
        let (cpu, cs) = CpuExecutor.run(m, &x, *shape).expect("cpu runs");
        let (gpu_y, gs) = gpu.run(m, &x, *shape).expect("gpu runs");
        assert_eq!(cs, gs, "{}", m.name);
        let diff = max_scaled_diff(&cpu, &gpu_y);
        let max = cpu.iter().fold(0f32, |a, v| a.max(v.abs()));
        println!("{}: {} outputs, max |cpu| {max:.3e}, scaled diff {diff:.2e}", m.name, cpu.len());
        assert!(diff <= GPU_TOLERANCE, "{}: scaled diff {diff} > {GPU_TOLERANCE}", m.name);
        // The second run reuses the uploaded weights and gives the same numbers.
        assert_eq!(gpu.run(m, &x, *shape).expect("gpu runs again").0, gpu_y, "{}", m.name);
    }
    // New weights under the same name take effect after `load`.
    let (m, shape) = &cases[0];
    let mut changed = m.clone();
    if let Some(Layer::Dense { w, .. }) = changed.layers.last_mut() {
        w.iter_mut().for_each(|v| *v *= -2.0);
    }
    gpu.load(&changed).expect("loads");
    let x = input(*shape, 3);
    let cpu = CpuExecutor.run(&changed, &x, *shape).expect("cpu").0;
    assert!(max_scaled_diff(&cpu, &gpu.run(&changed, &x, *shape).expect("gpu").0) <= GPU_TOLERANCE);
    assert!(gpu.unload("cnn") && !gpu.unload("cnn"));
    // An empty batch and a bad input are handled before any launch.
    assert_eq!(gpu.run(m, &[], (0, 3, 16, 16)).expect("empty batch"), (vec![], (0, 10, 1, 1)));
    assert!(gpu.run(m, &[0.0; 5], *shape).is_err());
}

#[test]
fn new_without_cuda_is_a_typed_error() {
    match CudaExecutor::probe() {
        Err(e) => {
            assert_eq!(CudaExecutor::new(0).expect_err("no CUDA"), e);
            println!("no CUDA here, as expected on CPU machines: {e}");
        }
        Ok(()) => println!("CUDA libraries present; gpu_matches_the_cpu_reference covers new()"),
    }
}
