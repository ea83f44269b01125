//! The asset lint on the bundled demo model: per-patch bits add up to each image's bits/dim
//! exactly, a foreign patch lights up where it is, and the complexity correction lifts a smooth
//! off-style gradient that bits/dim alone ranks among the ordinary textures.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tarflow::candle::{Device, Tensor};
use tarflow::lint::{lint, patch_bits};
use tarflow::train::{ChannelChoice, DataConfig, Dataset, evaluate_bpd};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo() -> tarflow::Model {
    tarflow::format::load_model(
        &root().join("assets/models/textures16.tarflow.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            copy_tree(&p, &to.join(p.file_name().unwrap()));
        } else {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn load(model: &tarflow::Model, dir: &Path) -> Dataset {
    let cfg = model.config();
    let data_cfg = DataConfig {
        img_size: Some(cfg.img_size),
        channels: ChannelChoice::from_count(cfg.in_channels).unwrap(),
        classes: cfg.class_names.clone(),
        ..Default::default()
    };
    Dataset::load(dir, &data_cfg).unwrap()
}

fn save(path: &Path, f: impl Fn(u32, u32) -> [u8; 4]) {
    image::RgbaImage::from_fn(16, 16, |x, y| image::Rgba(f(x, y)))
        .save(path)
        .unwrap();
}

#[test]
fn patch_bits_sum_to_bits_per_dim_and_find_the_foreign_patch() {
    let model = demo();
    // Any input: the mean of the patch bits is the model's bits/dim of each image.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let v: Vec<f32> = (0..3 * 4 * 256)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = Tensor::from_vec(v, (3, 4, 16, 16), &Device::Cpu).unwrap();
    let labels = [0i64, 5, -1];
    let bits = patch_bits(&model, &x, Some(&labels)).unwrap();
    let out = model
        .forward_with(&x, Some(&labels), tarflow::model::Exec::Fast)
        .unwrap();
    let bpd = model.bits_per_dim(&out).unwrap().to_vec1::<f32>().unwrap();
    for (b, want) in bits.iter().zip(&bpd) {
        assert_eq!((b.grid, b.bits.len()), (8, 64));
        let mean = b.bits.iter().sum::<f64>() / 64.0;
        assert!((mean - f64::from(*want)).abs() < 1e-4, "{mean} vs {want}");
        assert!((b.bits_per_dim - mean).abs() < 1e-12);
    }

    // A magenta patch pasted into a real stone texture (patch (5, 3), pixels 10-11 x 6-7) is
    // the patch that costs the most bits.
    let src = image::open(root().join("assets/textures/test/stone/default_desert_stone.png"))
        .unwrap()
        .to_rgba8();
    let mut planes = vec![0f32; 4 * 256];
    for (x, y, p) in src.enumerate_pixels() {
        let px = if (10..12).contains(&x) && (6..8).contains(&y) {
            [255, 0, 255, 255]
        } else {
            p.0
        };
        for c in 0..4 {
            planes[c * 256 + (y * 16 + x) as usize] = 2.0 * f32::from(px[c]) / 255.0 - 1.0;
        }
    }
    let x = Tensor::from_vec(planes, (1, 4, 16, 16), &Device::Cpu).unwrap();
    let stone = model.config().class_id("stone").unwrap() as i64;
    let b = &patch_bits(&model, &x, Some(&[stone])).unwrap()[0];
    let worst = (0..64)
        .max_by(|&i, &j| b.bits[i].total_cmp(&b.bits[j]))
        .unwrap();
    assert_eq!(worst, 3 * 8 + 5, "bits {:?}", b.bits);
}

#[test]
fn lint_matches_evaluate_bpd_and_corrects_for_complexity() {
    let model = demo();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&root().join("assets/textures/test"), dir.path());
    // Two off-style images: uniform noise (a broken export) and a smooth gradient.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let noise: Vec<[u8; 4]> = (0..256)
        .map(|_| [rng.random(), rng.random(), rng.random(), 255])
        .collect();
    save(&dir.path().join("stone/offstyle_noise.png"), |x, y| {
        noise[(y * 16 + x) as usize]
    });
    save(&dir.path().join("metal/offstyle_gradient.png"), |x, y| {
        [
            (40 + 12 * x) as u8,
            (60 + 8 * y) as u8,
            (200 - 5 * (x + y)) as u8,
            255,
        ]
    });
    let data = load(&model, dir.path());
    let report = lint(&model, &data, 64, 7, |_, _| {}).unwrap();
    let bpd = evaluate_bpd(&model, &data, 64, 7, |_, _| {}).unwrap();
    assert_eq!(report.entries.len(), bpd.per_image.len());
    for (e, want) in report.entries.iter().zip(&bpd.per_image) {
        assert!(
            (e.model_bpd - want).abs() < 1e-4,
            "{}: {} vs {want}",
            e.file,
            e.model_bpd
        );
    }
    let rank = |ranking: &[usize], name: &str| {
        1 + ranking
            .iter()
            .position(|&i| report.entries[i].file.ends_with(name))
            .unwrap()
    };
    let n = report.entries.len();
    // Noise is the worst fit either way.
    assert_eq!(rank(&report.ranking, "offstyle_noise.png"), 1);
    assert_eq!(rank(&report.ranking_uncorrected, "offstyle_noise.png"), 1);
    // The gradient is cheap in bits (flows favour smooth images) and sits among the ordinary
    // textures by bits alone; for its (lack of) complexity it is one of the worst fits.
    let (raw, corrected) = (
        rank(&report.ranking_uncorrected, "offstyle_gradient.png"),
        rank(&report.ranking, "offstyle_gradient.png"),
    );
    assert!(raw > n / 4, "by bits alone the gradient ranks {raw} of {n}");
    assert!(
        corrected <= 5,
        "corrected, the gradient ranks {corrected} of {n}"
    );
    assert!(report.fit_slope > 0.0, "busier images cost more bits");
}
