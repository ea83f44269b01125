//! Parallel (Jacobi) sampling against exact sequential sampling on a model (the bundled demo
//! model by default): wall time, transformer passes and the largest pixel difference, for a
//! few segment counts and thresholds.
//!
//! ```sh
//! cargo run --release -p tarflow --example jacobi [-- MODEL.safetensors [BATCH]]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use tarflow::prelude::*;
use tarflow::sample::{JacobiOptions, Sampler};

fn main() -> tarflow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/models/textures16.tarflow.safetensors")
    });
    let batch: usize = args.next().and_then(|b| b.parse().ok()).unwrap_or(8);
    let model = load_model(&path, &tarflow::candle::Device::Cpu)?;
    let sampler = Sampler::new(&model)?;
    let classes = model.config().num_classes;
    let labels = if classes > 0 {
        Labels::Classes((0..batch).map(|i| (i % classes) as i64).collect())
    } else {
        Labels::Unconditional(batch)
    };
    let base = SampleOptions {
        guidance: if classes > 0 { 1.5 } else { 0.0 },
        denoise: false,
        seed: 1,
        ..Default::default()
    };
    let time = |o: &SampleOptions| -> tarflow::Result<(f64, Samples)> {
        let t = Instant::now();
        let s = sampler.sample(&labels, o)?;
        Ok((t.elapsed().as_secs_f64() * 1e3, s))
    };
    time(&base)?; // warm-up
    let (t_seq, seq) = time(&base)?;
    println!(
        "{} (batch {batch}, guidance {}): sequential {t_seq:.1} ms, {} passes",
        path.display(),
        base.guidance,
        seq.passes
    );
    println!("segments threshold first-block  ms     speed-up passes max|dx|  max byte diff");
    for segments in [2usize, 4, 8, 16] {
        for threshold in [1e-2f32, 1e-3, 1e-4] {
            for sequential_first in [true, false] {
                let o = SampleOptions {
                    method: Method::Jacobi,
                    jacobi: JacobiOptions {
                        segments,
                        max_iters: 64,
                        threshold,
                        sequential_first,
                    },
                    ..base.clone()
                };
                let (t, s) = time(&o)?;
                let dx = (&s.raw - &seq.raw)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                let bytes = s
                    .rgba
                    .iter()
                    .zip(&seq.rgba)
                    .flat_map(|(a, b)| a.pixels.iter().zip(&b.pixels))
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap_or(0);
                println!(
                    "{segments:>8} {threshold:>9.0e} {:>11} {t:>6.1} {:>7.2}x {:>6} {dx:>7.4} {bytes:>6}",
                    if sequential_first {
                        "sequential"
                    } else {
                        "jacobi"
                    },
                    t_seq / t,
                    s.passes
                );
            }
        }
    }
    Ok(())
}
