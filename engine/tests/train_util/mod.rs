//! Helpers shared by the trainer tests: synthetic folders of simple game-art-like patterns.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tarflow::ModelConfig;
use tarflow::train::TrainConfig;

/// The minetest16 dataset in the shared folder.
pub fn minetest16() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/datasets/minetest16"
    ))
}

/// A pattern class of the synthetic data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Horizontal stripes, one pixel high, reddish on dark.
    Stripes,
    /// A one-pixel checkerboard, bluish on dark.
    Checkers,
    /// Sparse greenish dots on dark.
    Dots,
}

impl Pattern {
    /// Folder (class) name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Stripes => "stripes",
            Pattern::Checkers => "checkers",
            Pattern::Dots => "dots",
        }
    }

    /// An `s x s` RGB image of this pattern with colour jitter.
    pub fn image(self, s: u32, rng: &mut ChaCha8Rng) -> image::RgbImage {
        // Stripes and checkers always start the same way, so the class alone says what the
        // first patch looks like; dots take a random phase.
        let phase = match self {
            Pattern::Dots => rng.random_range(0..4u32),
            _ => 0,
        };
        let j = |rng: &mut ChaCha8Rng, base: u8| -> u8 {
            (base as i32 + rng.random_range(-20..=20)).clamp(0, 255) as u8
        };
        let fg = match self {
            Pattern::Stripes => [j(rng, 220), j(rng, 60), j(rng, 40)],
            Pattern::Checkers => [j(rng, 40), j(rng, 80), j(rng, 220)],
            Pattern::Dots => [j(rng, 60), j(rng, 220), j(rng, 60)],
        };
        let bg = [j(rng, 30), j(rng, 30), j(rng, 30)];
        image::RgbImage::from_fn(s, s, |x, y| {
            let on = match self {
                Pattern::Stripes => (y + phase) % 2 == 0,
                Pattern::Checkers => (x + y + phase) % 2 == 0,
                Pattern::Dots => (x + phase) % 4 == 0 && (y + phase) % 4 == 0,
            };
            image::Rgb(if on { fg } else { bg })
        })
    }
}

/// Write `per_class` PNGs of each pattern into `root/<pattern>/`, deterministic in `seed`.
pub fn write_patterns(root: &Path, patterns: &[Pattern], per_class: usize, s: u32, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for p in patterns {
        let dir = root.join(p.name());
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            p.image(s, &mut rng)
                .save(dir.join(format!("{}_{i:03}.png", p.name())))
                .unwrap();
        }
    }
}

/// The small test model: 8x8 RGB, patch 4 (4 tokens of 48 values), 64 channels, 2 blocks x 1
/// layer. Few tokens keep the steps cheap and make the first patch, which only the label can
/// inform, a quarter of the image, so conditioning is learnt within a few hundred steps.
pub fn small_model() -> ModelConfig {
    ModelConfig::new(3, 8, 4, 64, 2, 1)
}

/// A trainer config for short test runs.
pub fn quick_config(total_steps: u64) -> TrainConfig {
    TrainConfig {
        seed: 7,
        batch_size: 16,
        lr: 2e-3,
        min_lr: 1e-4,
        warmup_steps: 20,
        total_steps,
        ema_decay: 0.95,
        holdout_fraction: 0.2,
        ..TrainConfig::default()
    }
}

/// Mean of |a - b| over horizontally adjacent pixels, and the mean red minus blue, of image
/// `k` of a (B, 3, S, S) tensor in [-1, 1].
pub fn texture_stats(images: &tarflow::candle::Tensor, k: usize) -> (f32, f32) {
    let img = images
        .get(k)
        .unwrap()
        .to_dtype(tarflow::candle::DType::F32)
        .unwrap();
    let v: Vec<Vec<Vec<f32>>> = img.to_vec3().unwrap();
    let s = v[0].len();
    let mut hdiff = 0.0;
    for plane in &v {
        for row in plane {
            hdiff += row.windows(2).map(|w| (w[0] - w[1]).abs()).sum::<f32>();
        }
    }
    hdiff /= (3 * s * (s - 1)) as f32;
    let mean = |c: usize| v[c].iter().flatten().sum::<f32>() / (s * s) as f32;
    (hdiff, mean(0) - mean(2))
}
