//! Measures how even the frame-to-frame change of morphs is (DESIGN.md 11): for pairs of
//! held-out textures of one class and pairs of seeds, the mean absolute difference between
//! consecutive frames, with frames placed evenly in angle (slerp) and evenly in pixel change
//! (arc length).
//!
//! `cargo run --release -p tarflow --example morph_steps [MODEL] [FRAMES]`

use std::path::{Path, PathBuf};

use tarflow::candle::{Device, Tensor};
use tarflow::morph::{MorphOptions, Spacing, StepStats, encode, morph};
use tarflow::sample::{SampleOptions, Sampler, prior_noise};

fn load(paths: &[PathBuf], device: &Device) -> Tensor {
    let mut v = Vec::new();
    for p in paths {
        let img = image::open(p).unwrap().to_rgba8();
        let (w, h) = img.dimensions();
        let raw = img.into_raw();
        for c in 0..4 {
            for i in 0..(w * h) as usize {
                v.push(2.0 * f32::from(raw[i * 4 + c]) / 255.0 - 1.0);
            }
        }
    }
    Tensor::from_vec(v, (paths.len(), 4, 16, 16), device).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model_path = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("assets/models/textures16.tarflow.safetensors"));
    let frames: usize = args.get(2).map_or(8, |s| s.parse().unwrap());
    let device = Device::Cpu;
    let model = tarflow::format::load_model(&model_path, &device).unwrap();
    let sampler = Sampler::new(&model).unwrap();
    let cfg = model.config().clone();
    let test = root.join("assets/textures/test");
    // Pairs: the first two files (sorted) of each class, class-conditional.
    let mut pairs = Vec::new();
    for class in &cfg.class_names {
        let mut files: Vec<PathBuf> = std::fs::read_dir(test.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        if files.len() >= 2 {
            pairs.push((
                class.clone(),
                files[0].clone(),
                files[files.len() - 1].clone(),
            ));
        }
    }
    let opts = SampleOptions {
        denoise: false,
        ..Default::default()
    };
    let report = |name: &str, s: &StepStats| {
        println!(
            "  {name:<10} mean {:5.2}  min {:5.2}  max {:5.2}  max/min {:5.2}  cv {:.3}",
            s.mean,
            s.min,
            s.max,
            s.max / s.min.max(1e-9),
            s.cv
        );
    };
    let mut all: [Vec<StepStats>; 2] = [Vec::new(), Vec::new()];
    let mut run =
        |label: Option<i64>, za: &Tensor, zb: &Tensor, what: String, opts: &SampleOptions| {
            println!("{what}");
            for (k, spacing) in [Spacing::Slerp, Spacing::ArcLength].into_iter().enumerate() {
                let t0 = std::time::Instant::now();
                let m = morph(
                    &sampler,
                    za,
                    zb,
                    label,
                    &MorphOptions {
                        frames,
                        spacing,
                        ..Default::default()
                    },
                    opts,
                )
                .unwrap();
                let s = m.step_stats();
                report(&format!("{spacing:?}"), &s);
                println!(
                    "             ({:.2} s) steps {:?}",
                    t0.elapsed().as_secs_f64(),
                    m.steps
                        .iter()
                        .map(|v| (v * 10.0).round() / 10.0)
                        .collect::<Vec<_>>()
                );
                all[k].push(s);
            }
        };
    for (class, a, b) in &pairs {
        let id = cfg.class_id(class).unwrap() as i64;
        let z = encode(
            &model,
            &load(&[a.clone(), b.clone()], &device),
            Some(&[id, id]),
        )
        .unwrap();
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        run(
            Some(id),
            &z.narrow(0, 0, 1).unwrap(),
            &z.narrow(0, 1, 1).unwrap(),
            format!("{class}: {} -> {}", name(a), name(b)),
            &opts,
        );
    }
    let guided = SampleOptions {
        guidance: 1.5,
        alpha_cutoff: Some(0.5),
        ..Default::default()
    };
    for s in 0..4u64 {
        let za = prior_noise(&cfg, 1, 100 + s, &device).unwrap();
        let zb = prior_noise(&cfg, 1, 200 + s, &device).unwrap();
        let class = (s * 3) as i64 % cfg.num_classes as i64;
        run(
            Some(class),
            &za,
            &zb,
            format!(
                "seeds {} -> {} ({}, guidance 1.5, denoised, alpha 0.5)",
                100 + s,
                200 + s,
                cfg.class_name(class as usize)
            ),
            &guided,
        );
    }
    for (k, name) in ["slerp", "arc length"].iter().enumerate() {
        let v = &all[k];
        let n = v.len() as f64;
        println!(
            "{name}: over {} morphs, mean step {:.2} levels, mean cv {:.3}, mean max/min {:.2}, worst max/min {:.2}",
            v.len(),
            v.iter().map(|s| s.mean).sum::<f64>() / n,
            v.iter().map(|s| s.cv).sum::<f64>() / n,
            v.iter().map(|s| s.max / s.min.max(1e-9)).sum::<f64>() / n,
            v.iter()
                .map(|s| s.max / s.min.max(1e-9))
                .fold(0.0, f64::max),
        );
    }
}
