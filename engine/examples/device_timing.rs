//! Times the DESIGN.md section 5 S16 workloads (16x16 RGBA, patch 2, 256 channels, 4 blocks x 2
//! layers, 8 classes, random weights) on one or more devices and prints one Markdown table:
//! sampling at batch 1 and 64 with CFG 1.5 (no denoising), exact cached sampling vs Jacobi at
//! its defaults, and one training step at batch 32. Each figure is the median of `--reps` runs
//! after one warm-up run. `scripts/gpu-check.sh` runs it on CUDA and on the CPU.
//!
//! ```sh
//! cargo run --release -p tarflow --example device_timing -- --devices cpu [--reps 3] [--large 64]
//! cargo run --release -p tarflow --features cuda --example device_timing -- --devices cuda,cpu
//! ```

use std::time::Instant;

use tarflow::candle::Device;
use tarflow::model::{InitOptions, init_weights};
use tarflow::prelude::*;
use tarflow::train::Item;

fn usage() -> ! {
    eprintln!(
        "usage: device_timing [--devices cpu,cuda:0,...] [--reps N] [--large BATCH] \
         [--train-batch BATCH]"
    );
    std::process::exit(2);
}

struct Args {
    devices: Vec<DeviceChoice>,
    reps: usize,
    large: usize,
    train_batch: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        devices: vec![DeviceChoice::Cpu],
        reps: 3,
        large: 64,
        train_batch: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let num = || -> usize {
            value.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                eprintln!("{flag}: expected a positive number, got {value:?}");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--devices" => {
                a.devices = value
                    .split(',')
                    .map(|d| {
                        d.parse().unwrap_or_else(|e| {
                            eprintln!("--devices: {e}");
                            std::process::exit(2)
                        })
                    })
                    .collect()
            }
            "--reps" => a.reps = num(),
            "--large" => a.large = num(),
            "--train-batch" => a.train_batch = num(),
            _ => usage(),
        }
    }
    a
}

fn s16(dev: &Device) -> Result<Model> {
    let mut cfg = ModelConfig::new(4, 16, 2, 256, 4, 2);
    cfg.num_classes = 8;
    let init = InitOptions {
        proj_out_scale: 0.02,
    };
    let w = init_weights(&cfg, 1, init, dev)?;
    Model::from_weights(cfg, &w, dev)
}

/// 256 random 16x16 RGBA images in 8 classes (deterministic).
fn s16_data() -> Result<Dataset> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 32) as u8
    };
    let items = (0..256)
        .map(|i| Item {
            pixels: (0..16 * 16 * 4).map(|_| next()).collect(),
            width: 16,
            height: 16,
            label: Some(i % 8),
            file: i,
            frame: 0,
        })
        .collect();
    let names = (0..8).map(|c| format!("class{c}")).collect();
    Dataset::from_items(items, 4, 16, names)
}

/// Median milliseconds of `reps` runs of `f` after one warm-up run.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

fn measure(choice: DeviceChoice, a: &Args) -> Result<Vec<(String, f64)>> {
    let dev = choice.open()?;
    let model = s16(&dev)?;
    let sampler = Sampler::new(&model)?;
    let mut rows = Vec::new();
    for b in [1, a.large] {
        let labels = Labels::Classes((0..b).map(|i| (i % 8) as i64).collect());
        for method in [Method::Cached, Method::Jacobi] {
            let opts = SampleOptions {
                guidance: 1.5,
                denoise: false,
                seed: 7,
                method,
                ..Default::default()
            };
            let name = format!("S16 sample b{b}, CFG 1.5, {method:?}");
            eprintln!("{choice}: {name}");
            let ms = time(a.reps, || sampler.sample(&labels, &opts).map(drop))?;
            rows.push((name, ms));
        }
    }
    let config = TrainConfig {
        batch_size: a.train_batch,
        holdout_fraction: 0.0,
        ..TrainConfig::default()
    };
    let model_cfg = ModelConfig::new(4, 16, 2, 256, 4, 2);
    let mut trainer = Trainer::new(model_cfg, config, s16_data()?, &dev)?;
    trainer.step()?; // Adam's moments and the EMA in play from the timed steps on
    let name = format!("S16 training step b{}", a.train_batch);
    eprintln!("{choice}: {name}");
    let ms = time(a.reps, || trainer.step().map(drop))?;
    rows.push((name, ms));
    Ok(rows)
}

fn main() {
    // SAFETY: first thing in main, before any other thread exists.
    let _ = unsafe { tarflow::runtime::tune_process() };
    let a = parse_args();
    let mut columns = Vec::new();
    for &d in &a.devices {
        match measure(d, &a) {
            Ok(rows) => columns.push((d, rows)),
            Err(e) => {
                eprintln!("device_timing: {d}: {e}");
                std::process::exit(1);
            }
        }
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "?".into());
    println!(
        "\nmedian ms of {} runs after a warm-up (CPU threads: {threads})\n",
        a.reps
    );
    let mut header = "| workload |".to_string();
    let mut rule = "|---|".to_string();
    for (d, _) in &columns {
        header += &format!(" {d} |");
        rule += "---|";
    }
    let ratio = columns.len() >= 2;
    if ratio {
        header += &format!(" {} vs {} |", columns[0].0, columns[1].0);
        rule += "---|";
    }
    println!("{header}\n{rule}");
    for (i, (name, _)) in columns[0].1.iter().enumerate() {
        let mut line = format!("| {name} |");
        for (_, rows) in &columns {
            line += &format!(" {:.1} |", rows[i].1);
        }
        if ratio {
            line += &format!(" {:.2}x faster |", columns[1].1[i].1 / columns[0].1[i].1);
        }
        println!("{line}");
    }
}
