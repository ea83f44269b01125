//! One training step of the S16 workload (DESIGN.md section 5): 16x16 RGBA, patch 2, 256
//! channels, 4 blocks x 2 layers, 8 classes, batch 32, on the CPU. Data: the shared minetest16
//! folder when present, otherwise random 16x16 RGBA images in 8 classes. And one of S32, the
//! sprite shape: 32x32 RGBA, patch 2 (256 tokens of 16 values), 128 channels (the sprite
//! model's width), 4 blocks x 2 layers, the 12 classes of `assets/sprites32/train`, batch 32.
//!
//! Run: `cargo bench --bench training`. Prints the peak resident memory at the end. Like the CLI,
//! it lets malloc keep freed memory ([`tarflow::runtime::keep_freed_memory`]). Baseline of the
//! previous implementation: `TARFLOW_COMPOSED_OPS=1 TARFLOW_BENCH_DEFAULT_MALLOC=1` (candle's
//! composed ops, default malloc).

use std::path::PathBuf;

use criterion::{Criterion, criterion_group};
use tarflow::ModelConfig;
use tarflow::candle::Device;
use tarflow::train::{DataConfig, Dataset, Item, TrainConfig, Trainer};

/// Random `size` x `size` RGBA images in `classes` classes.
fn random_data(size: usize, classes: usize) -> Dataset {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 32) as u8
    };
    let items = (0..256)
        .map(|i| Item {
            pixels: (0..size * size * 4).map(|_| next()).collect(),
            width: size,
            height: size,
            label: Some(i % classes),
            file: i,
            frame: 0,
        })
        .collect();
    let names = (0..classes).map(|c| format!("class{c}")).collect();
    Dataset::from_items(items, 4, size, names).expect("synthetic data")
}

fn s16_data() -> Dataset {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/datasets/minetest16"
    ));
    Dataset::load(&root, &DataConfig::default()).unwrap_or_else(|_| random_data(16, 8))
}

/// The sprite corpus's training split (in the repository).
fn s32_data() -> Dataset {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/sprites32/train"
    ));
    let config = DataConfig {
        img_size: Some(32),
        ..DataConfig::default()
    };
    Dataset::load(&root, &config).unwrap_or_else(|_| random_data(32, 12))
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A trainer of `model` on `data` at batch 32, past its first steps (so that Adam's moments and
/// the EMA are all in play).
fn warm_trainer(model: ModelConfig, data: Dataset) -> Trainer {
    let config = TrainConfig {
        batch_size: 32,
        holdout_fraction: 0.0,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, config, data, &Device::Cpu).expect("trainer");
    for _ in 0..2 {
        trainer.step().expect("warm-up step");
    }
    trainer
}

fn training_step(c: &mut Criterion) {
    let mut s16 = warm_trainer(ModelConfig::new(4, 16, 2, 256, 4, 2), s16_data());
    let s32_data = s32_data();
    let mut s32_model = ModelConfig::new(4, 32, 2, 128, 4, 2);
    s32_model.num_classes = s32_data.num_classes();
    let mut s32 = warm_trainer(s32_model, s32_data);
    let mut group = c.benchmark_group("training");
    group.sample_size(10);
    group.bench_function("s16_step_batch32", |b| b.iter(|| s16.step().expect("step")));
    group.bench_function("s32_step_batch32", |b| b.iter(|| s32.step().expect("step")));
    group.finish();
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
}

criterion_group!(benches, training_step);

fn main() {
    // As the CLI does: malloc keeps freed tensor memory (TARFLOW_BENCH_DEFAULT_MALLOC=1 to
    // measure without).
    if std::env::var_os("TARFLOW_BENCH_DEFAULT_MALLOC").is_none() {
        tarflow::runtime::keep_freed_memory();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
