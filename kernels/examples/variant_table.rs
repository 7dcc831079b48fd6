//! Prints, for every variant of the example apps, the MACs of its layer graph at a scale
//! and the CPU reference executor's time per item, to choose a simulator scale:
//!
//! ```text
//! cargo run --release -p jigsaw-kernels --example variant_table -- [SCALE] [BATCH]
//! ```

use jigsaw_kernels::arch::input_shape;
use jigsaw_kernels::{CpuExecutor, Executor, Model};
use jigsaw_protocol::app::AppSpec;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let scale: f64 = args.next().map_or(Ok(1e-3), |s| s.parse())?;
    let batch: usize = args.next().map_or(Ok(4), |s| s.parse())?;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/apps");
    let mut seen = Vec::new();
    println!("scale {scale:e}, batch {batch}");
    println!("| variant | family | GFLOPs | target MACs | MACs | off | params | CPU ms/item |");
    println!("|---|---|---|---|---|---|---|---|");
    for app in ["traffic", "social", "ar"] {
        let path = format!("{dir}/{app}.toml");
        let spec = AppSpec::parse(&std::fs::read_to_string(&path)?, &path)?;
        for v in spec.tasks.iter().flat_map(|t| &t.variants) {
            if seen.contains(&v.name) {
                continue;
            }
            seen.push(v.name.clone());
            let (c, h, w) = input_shape(&v.model.family)?;
            let m = Model::for_variant(&v.name, &v.model, (c, h, w), scale, 1)?;
            let macs = m.macs((1, c, h, w))? as f64;
            let target = scale * v.model.gflops * 1e9 / 2.0;
            let x = vec![0.5f32; batch * c * h * w];
            CpuExecutor.run(&m, &x, (batch, c, h, w))?; // warm up
            let t = Instant::now();
            let reps = 3;
            for _ in 0..reps {
                CpuExecutor.run(&m, &x, (batch, c, h, w))?;
            }
            let ms = t.elapsed().as_secs_f64() * 1e3 / (reps * batch) as f64;
            println!(
                "| {} | {} | {} | {target:.3e} | {macs:.3e} | {:+.1}% | {} | {ms:.2} |",
                v.name,
                v.model.family,
                v.model.gflops,
                (macs / target - 1.0) * 100.0,
                m.params()
            );
        }
    }
    Ok(())
}
