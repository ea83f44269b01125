//! The learned denoiser (STARFlow's `learnable_self_denoiser`): it sees every token of its
//! input, learns the flow's score step, is used by every sampler when the model carries it,
//! travels in the model file, resumes exactly, and stays out of what the reference loads.

mod common;
mod train_util;

use candle_core::{Device, Tensor};
use common::max_abs_diff;
use tarflow::config::{DenoiserConfig, NoiseRange};
use tarflow::model::{Exec, InitOptions, init_weights};
use tarflow::sample::{
    DenoiseMethod, DenoiseRun, Labels, Method, SampleOptions, denoise_with_sigma,
};
use tarflow::train::{DataConfig, Dataset, DenoiserTrainConfig, DenoiserTrainer, Trainer};
use tarflow::{Model, ModelConfig};
use train_util::{Pattern, write_patterns};

const SIGMA: f32 = 0.1;

/// A random class-conditional flow of the small test shape (8x8 RGB, patch 4), trained with
/// Gaussian noise `SIGMA` (proj_out non-zero, so the flow is not the identity).
fn flow() -> Model {
    let mut cfg = train_util::small_model();
    cfg.num_classes = 3;
    cfg.class_names = ["checkers", "dots", "stripes"].map(String::from).to_vec();
    cfg.noise_sigma = SIGMA;
    let w = init_weights(
        &cfg,
        3,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &Device::Cpu,
    )
    .unwrap();
    Model::from_weights(cfg, &w, &Device::Cpu).unwrap()
}

fn patterns(dir: &std::path::Path, per_class: usize, seed: u64) -> Dataset {
    write_patterns(
        dir,
        &[Pattern::Stripes, Pattern::Checkers, Pattern::Dots],
        per_class,
        8,
        seed,
    );
    Dataset::load(dir, &DataConfig::default()).unwrap()
}

fn run_config(steps: u64) -> DenoiserTrainConfig {
    DenoiserTrainConfig {
        denoiser: DenoiserConfig {
            channels: 64,
            layers: 2,
        },
        steps,
        batch_size: 16,
        lr: 3e-3,
        warmup_steps: 10,
        seed: 11,
        ..Default::default()
    }
}

/// A model whose denoiser has random non-zero weights everywhere (a fresh one predicts a
/// constant).
fn random_denoiser_model() -> Model {
    let mut cfg = flow().config().clone();
    cfg.denoiser = Some(DenoiserConfig {
        channels: 64,
        layers: 2,
    });
    let w = init_weights(
        &cfg,
        5,
        InitOptions {
            proj_out_scale: 0.1,
        },
        &Device::Cpu,
    )
    .unwrap();
    Model::from_weights(cfg, &w, &Device::Cpu).unwrap()
}

fn images(b: usize, seed: u32) -> Tensor {
    let v: Vec<f32> = (0..b * 192)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (b, 3, 8, 8), &Device::Cpu).unwrap()
}

#[test]
fn every_token_sees_every_other_and_items_are_independent() {
    let m = random_denoiser_model();
    let dn = m.denoiser().unwrap();
    let x = images(3, 1);
    let labels = [0i64, 2, -1];
    let fast = dn.predict(&x, Some(&labels), Exec::Fast).unwrap();
    let grad = dn.predict(&x, Some(&labels), Exec::Grad).unwrap();
    assert!(
        max_abs_diff(&fast, &grad) < 1e-5,
        "fused and composed kernels agree"
    );
    // Changing the last patch (bottom right 4x4) changes the prediction for the first (top
    // left): a causal mask, as in the flow's blocks, would not let it.
    let bump = Tensor::zeros((3, 3, 8, 8), candle_core::DType::F32, &Device::Cpu)
        .unwrap()
        .slice_assign(
            &[0..3, 0..3, 4..8, 4..8],
            &Tensor::ones((3, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    let moved = dn
        .predict(&(&x + &bump).unwrap(), Some(&labels), Exec::Fast)
        .unwrap();
    let first = |t: &Tensor| t.narrow(2, 0, 4).unwrap().narrow(3, 0, 4).unwrap();
    assert!(max_abs_diff(&first(&fast), &first(&moved)) > 1e-4);
    // The class reaches the prediction.
    let other = dn.predict(&x, Some(&[1, 1, 1]), Exec::Fast).unwrap();
    assert!(max_abs_diff(&fast.get(0).unwrap(), &other.get(0).unwrap()) > 1e-4);
    // One item alone is predicted as in the batch.
    let alone = dn
        .predict(&x.narrow(0, 1, 1).unwrap(), Some(&[2]), Exec::Fast)
        .unwrap();
    assert!(max_abs_diff(&alone, &fast.narrow(0, 1, 1).unwrap()) < 1e-6);
    // Denoising is x - sigma * prediction.
    let d = dn.denoise(&x, Some(&labels), SIGMA, Exec::Fast).unwrap();
    let want = (&x - (&fast * f64::from(SIGMA)).unwrap()).unwrap();
    assert!(max_abs_diff(&d, &want) < 1e-6);
    assert!(
        dn.predict(&images(1, 2).narrow(2, 0, 4).unwrap(), None, Exec::Fast)
            .is_err()
    );
    assert!(
        dn.predict(&x, Some(&[0, 5, 1]), Exec::Fast).is_err(),
        "label out of range"
    );
}

/// The first `n` images of `data` with the flow's training noise, and their labels.
fn noisy(data: &Dataset, n: usize) -> (Tensor, Vec<i64>) {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let noise = tarflow::train::NoiseConfig::Gaussian { sigma: SIGMA };
    let mut v = Vec::new();
    let mut labels = Vec::new();
    for item in &data.items()[..n] {
        tarflow::train::augment::to_planar_with_noise(
            &item.pixels,
            8,
            3,
            Some(&noise),
            &mut rng,
            &mut v,
        );
        labels.push(item.label.map_or(-1, |l| l as i64));
    }
    (
        Tensor::from_vec(v, (n, 3, 8, 8), &Device::Cpu).unwrap(),
        labels,
    )
}

#[test]
fn training_learns_the_flows_score_step_from_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = patterns(&dir.path().join("train"), 12, 1);
    let held = patterns(&dir.path().join("test"), 6, 2);
    let mut t = DenoiserTrainer::new(&flow(), data, run_config(150), &Device::Cpu).unwrap();
    // A fresh denoiser (STARFlow's init: proj_out's weight zero, its bias not) predicts the
    // same step for every input: it explains nothing of the target.
    let fresh = t.evaluate(&held, 4, 9).unwrap();
    assert!(fresh.explained() < 0.05, "{fresh:?}");
    assert!(fresh.target_power > 0.0);
    let mut first = None;
    for _ in 0..150 {
        let s = t.step().unwrap();
        first.get_or_insert(s.loss);
    }
    let after = t.evaluate(&held, 4, 9).unwrap();
    // A denoiser that ignored its input could predict at best the mean step, which explains
    // next to nothing of a step that follows each image; this one explains most of it.
    assert!(
        after.explained() > 0.6,
        "explained {:.3} of the held-out score step (fresh {fresh:?}, after {after:?})",
        after.explained()
    );
    assert!(after.mse < 0.4 * first.unwrap());
    // Its denoising lands near the flow's own score step, far nearer than the noisy input.
    let m = t.model();
    let (x, labels) = noisy(&held, 8);
    let score = denoise_with_sigma(m, &x, Some(&labels), SIGMA).unwrap();
    let learned = DenoiseRun::new(m, &x, Some(&labels), None)
        .unwrap()
        .run_to_end(m)
        .unwrap();
    let forced = DenoiseRun::with_method(m, &x, Some(&labels), None, DenoiseMethod::Score)
        .unwrap()
        .run_to_end(m)
        .unwrap();
    assert_eq!(
        max_abs_diff(&forced, &score),
        0.0,
        "--score-denoise takes the flow's step"
    );
    let err = |a: &Tensor| {
        (a - &score)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(
        err(&learned) < 0.5 * err(&x),
        "{} vs {}",
        err(&learned),
        err(&x)
    );
}

#[test]
fn every_sampler_denoises_through_the_learned_denoiser() {
    let m = random_denoiser_model();
    let labels = Labels::Classes(vec![0, 1, 2]);
    let dn = m.denoiser().unwrap();
    for method in [Method::Cached, Method::CachedOps, Method::Plain] {
        let opts = SampleOptions {
            seed: 4,
            method,
            ..Default::default()
        };
        let s = tarflow::sample::sample(&m, &labels, &opts).unwrap();
        let want = dn
            .denoise(&s.raw, Some(&[0, 1, 2]), SIGMA, Exec::Fast)
            .unwrap();
        assert!(max_abs_diff(&s.images, &want) < 1e-6, "{method:?}");
        assert!(
            max_abs_diff(&s.images, &s.raw) > 1e-4,
            "{method:?}: denoised"
        );
        // Asked for the score step, the sampler takes the flow's gradient instead.
        let score = SampleOptions {
            score_denoise: true,
            ..opts.clone()
        };
        let s2 = tarflow::sample::sample(&m, &labels, &score).unwrap();
        let want = denoise_with_sigma(&m, &s2.raw, Some(&[0, 1, 2]), SIGMA).unwrap();
        assert!(
            max_abs_diff(&s2.images, &want) < 1e-5,
            "{method:?}: score step"
        );
    }
    // The same seed gives the same denoised item whatever the batch.
    let opts = SampleOptions {
        seed: 4,
        ..Default::default()
    };
    let all = tarflow::sample::sample(&m, &labels, &opts).unwrap();
    let one = tarflow::sample::sample(&m, &Labels::Classes(vec![0]), &opts).unwrap();
    assert_eq!(
        max_abs_diff(&one.raw, &all.raw.narrow(0, 0, 1).unwrap()),
        0.0,
        "raw"
    );
    assert_eq!(
        max_abs_diff(&one.images, &all.images.narrow(0, 0, 1).unwrap()),
        0.0
    );
}

#[test]
fn the_denoiser_travels_in_the_model_file_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = || patterns(&dir.path().join("train"), 6, 1);
    let straight = {
        let mut t = DenoiserTrainer::new(&flow(), data(), run_config(6), &Device::Cpu).unwrap();
        for _ in 0..6 {
            t.step().unwrap();
        }
        t.model().weights().unwrap()
    };
    let ckpt = dir.path().join("run.ckpt.safetensors");
    let mut t = DenoiserTrainer::new(&flow(), data(), run_config(6), &Device::Cpu).unwrap();
    for _ in 0..3 {
        t.step().unwrap();
    }
    t.save_checkpoint(&ckpt).unwrap();
    drop(t);
    let mut t = DenoiserTrainer::resume(&ckpt, data(), None, &Device::Cpu).unwrap();
    assert_eq!(t.step_count(), 3);
    for _ in 0..3 {
        t.step().unwrap();
    }
    let resumed = t.model().weights().unwrap();
    assert_eq!(straight.len(), resumed.len());
    for (name, w) in &straight {
        assert_eq!(max_abs_diff(w, &resumed[name]), 0.0, "{name}");
    }
    // Exported, the file carries flow and denoiser; loaded, it predicts the same.
    let out = dir.path().join("with_denoiser.safetensors");
    t.export(&out).unwrap();
    let back = tarflow::format::load_model(&out, &Device::Cpu).unwrap();
    assert_eq!(back.config().denoiser, t.model().config().denoiser);
    assert!(back.config().provenance.contains_key("denoiser"));
    let x = images(2, 3);
    let a = back
        .denoiser()
        .unwrap()
        .predict(&x, Some(&[0, 1]), Exec::Fast)
        .unwrap();
    let b = t
        .model()
        .denoiser()
        .unwrap()
        .predict(&x, Some(&[0, 1]), Exec::Fast)
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // The flow is untouched by the denoiser's training.
    let f = flow().weights().unwrap();
    for (name, w) in &f {
        assert_eq!(max_abs_diff(w, &resumed[name]), 0.0, "flow tensor {name}");
    }
    // The reference gets the flow alone.
    let reference = dir.path().join("reference.safetensors");
    tarflow::format::save_reference_safetensors(&back, &reference).unwrap();
    let names = tarflow::format::read_safetensors(&reference, &Device::Cpu)
        .unwrap()
        .tensors;
    assert_eq!(names.len(), f.len());
    assert!(
        names
            .keys()
            .all(|k| !k.starts_with("learnable_self_denoiser"))
    );
    // Fine-tuning the flow drops the denoiser, which would no longer match it.
    let tuned =
        Trainer::from_model(&back, train_util::quick_config(10), data(), &Device::Cpu).unwrap();
    assert!(tuned.model().denoiser().is_none());
    assert!(tuned.model_config().denoiser.is_none());
    // A file whose denoiser tensors are missing is refused, naming one.
    let mut cfg = back.config().clone();
    cfg.denoiser = Some(DenoiserConfig {
        channels: 64,
        layers: 3,
    });
    let e = Model::from_weights(cfg, &back.weights().unwrap(), &Device::Cpu).unwrap_err();
    assert!(
        e.to_string()
            .contains("learnable_self_denoiser.attn_blocks.2"),
        "{e}"
    );
}

#[test]
fn a_denoiser_needs_a_fixed_sigma_flow_and_matching_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = patterns(&dir.path().join("train"), 4, 1);
    let mut nc = flow().config().clone();
    nc.noise_range = Some(NoiseRange::new(0.01, 0.3).unwrap());
    let w = init_weights(&nc, 1, InitOptions::default(), &Device::Cpu).unwrap();
    let nc = Model::from_weights(nc, &w, &Device::Cpu).unwrap();
    let e = DenoiserTrainer::new(&nc, data.clone(), run_config(5), &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("noise-conditional"), "{e}");
    let mut clean = flow().config().clone();
    clean.noise_sigma = 0.0;
    let w = init_weights(&clean, 1, InitOptions::default(), &Device::Cpu).unwrap();
    let clean = Model::from_weights(clean, &w, &Device::Cpu).unwrap();
    let e = DenoiserTrainer::new(&clean, data.clone(), run_config(5), &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("noise_sigma 0"), "{e}");
    let mut other = flow().config().clone();
    other.class_names = ["a", "b", "c"].map(String::from).to_vec();
    let w = init_weights(&other, 1, InitOptions::default(), &Device::Cpu).unwrap();
    let other = Model::from_weights(other, &w, &Device::Cpu).unwrap();
    let e = DenoiserTrainer::new(&other, data, run_config(5), &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("not the model's"), "{e}");
    let bad = ModelConfig {
        denoiser: Some(DenoiserConfig {
            channels: 100,
            layers: 2,
        }),
        ..flow().config().clone()
    };
    assert!(bad.validate().is_err());
}
