//! Trainer tests on synthetic folders: learning, class conditioning, exact resume, crash-safe
//! checkpoints, non-finite steps, incremental classes.

mod train_util;

use std::path::Path;
use std::sync::{Arc, Mutex};

use tarflow::candle::{Device, Tensor};
use tarflow::format::atomic::temp_path;
use tarflow::prelude::*;
use tarflow::train::{Checkpoint, DataConfig, EvalLabels, EvalOptions};
use train_util::{Pattern, quick_config, small_model, texture_stats, write_patterns};

fn two_class_data(dir: &Path, per_class: usize) -> Dataset {
    write_patterns(dir, &[Pattern::Stripes, Pattern::Checkers], per_class, 8, 1);
    Dataset::load(dir, &DataConfig::default()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn training_lowers_heldout_bpd_and_samples_follow_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let data = two_class_data(dir.path(), 20);
    assert_eq!(data.class_names(), ["checkers", "stripes"]);
    let steps = 200;
    let dev = Device::Cpu;
    let mut t = Trainer::new(small_model(), quick_config(steps), data, &dev).unwrap();
    assert_eq!(t.holdout_data().len(), 8);
    // The palettes are learned once per run, not at every checkpoint's export.
    let palettes: *const _ = t.palettes();
    assert!(std::ptr::eq(palettes, t.palettes()));
    assert_eq!(t.palettes().per_class.len(), 2);
    let before = t.evaluate_holdout().unwrap().unwrap().bits_per_dim;
    let t0 = std::time::Instant::now();
    let mut last = None;
    for _ in 0..steps {
        let m = t.step().unwrap();
        assert!(m.skipped.is_none());
        last = Some(m);
    }
    let last = last.unwrap();
    eprintln!("{steps} steps in {:.2?}; last {last:?}", t0.elapsed());
    let after = t.evaluate_holdout().unwrap().unwrap();
    eprintln!(
        "held-out bpd {before:.3} -> {:.3} {:?}",
        after.bits_per_dim, after.per_class
    );
    assert!(
        after.bits_per_dim < before - 1.5,
        "held-out bits/dim went from {before} to {}",
        after.bits_per_dim
    );

    // The class matters: held-out images are likelier under their own label than the other.
    // The label mostly informs the first patch (the rest is predictable from it), so the gap
    // is a fraction of a bit per dimension.
    let holdout = t.holdout_data().clone();
    for (class, other) in [(0usize, 1i64), (1, 0)] {
        let own = after.per_class[class].0;
        let swapped = t
            .evaluate(
                &holdout,
                EvalOptions {
                    ema: true,
                    labels: EvalLabels::Fixed(other),
                },
            )
            .unwrap()
            .per_class[class]
            .0;
        eprintln!("class {class}: own label {own:.3}, other label {swapped:.3}");
        assert!(own + 0.01 < swapped, "class {class}: {own} vs {swapped}");
    }

    // Class-conditional samples follow the class: with guidance, "stripes" samples are red
    // and nearly constant along rows, "checkers" samples blue and alternating along rows.
    let model = t.ema_model().unwrap();
    let labels: Vec<i64> = (0..16).map(|i| i % 2).collect();
    let opts = SampleOptions {
        seed: 3,
        guidance: 1.0,
        temperature: 0.8,
        ..SampleOptions::default()
    };
    let s = sample(&model, &Labels::Classes(labels.clone()), &opts).unwrap();
    let (mut colour_right, mut hdiff_by_class) = (0, [0.0f32; 2]);
    for (k, &l) in labels.iter().enumerate() {
        let (hdiff, red_minus_blue) = texture_stats(&s.images, k);
        eprintln!("sample {k} label {l}: hdiff {hdiff:.3} r-b {red_minus_blue:.3}");
        colour_right += ((red_minus_blue > 0.0) == (l == 1)) as usize;
        hdiff_by_class[l as usize] += hdiff / 8.0;
    }
    assert!(
        colour_right >= 14,
        "{colour_right}/16 samples have their class's colour"
    );
    assert!(
        hdiff_by_class[0] > hdiff_by_class[1] + 0.2,
        "checkers should alternate along rows more than stripes: {hdiff_by_class:?}"
    );
}

/// Losses of `n` steps, and the trainer.
fn losses(t: &mut Trainer, n: usize) -> Vec<f32> {
    (0..n).map(|_| t.step().unwrap().loss).collect()
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = two_class_data(&data_dir, 6);
    let dev = Device::Cpu;
    let mut cfg = quick_config(40);
    cfg.batch_size = 8;
    // Exercise every random draw: augmentation, label dropout, Gaussian noise.
    cfg.augment = AugmentConfig {
        hflip: true,
        vflip: true,
        rot90: true,
        toroidal: true,
    };
    cfg.label_dropout = 0.3;
    cfg.holdout_fraction = 0.0;
    let (n, k) = (10, 4);
    let mut a = Trainer::new(small_model(), cfg.clone(), data.clone(), &dev).unwrap();
    let full = losses(&mut a, n);

    let ckpt = dir.path().join("run.ckpt");
    let mut b = Trainer::new(small_model(), cfg, data, &dev).unwrap();
    let mut resumed = losses(&mut b, k);
    b.save_checkpoint(&ckpt).unwrap();
    drop(b);
    let mut c = Trainer::resume(&ckpt, &dev).unwrap();
    assert!(!c.data_changed());
    assert_eq!(c.step_count(), k as u64);
    resumed.extend(losses(&mut c, n - k));
    for (i, (x, y)) in full.iter().zip(&resumed).enumerate() {
        assert!((x - y).abs() <= 1e-6, "step {i}: {x} vs {y}");
    }
    // The weights, EMA and moments agree too.
    let (wa, wc) = (a.checkpoint().unwrap(), c.checkpoint().unwrap());
    for (name, t) in &wa.weights {
        assert!(max_abs_diff(t, &wc.weights[name]) <= 1e-6, "{name}");
        if let Some(e) = wa.ema.get(name) {
            assert!(max_abs_diff(e, &wc.ema[name]) <= 1e-6, "ema {name}");
            assert!(
                max_abs_diff(&wa.adam_v[name], &wc.adam_v[name]) <= 1e-6,
                "v {name}"
            );
        }
    }
    assert_eq!(wa.state.rng, wc.state.rng);
}

#[test]
fn interrupted_checkpoint_write_leaves_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = two_class_data(&dir.path().join("data"), 4);
    let dev = Device::Cpu;
    let mut cfg = quick_config(20);
    cfg.batch_size = 4;
    let mut t = Trainer::new(small_model(), cfg, data, &dev).unwrap();
    losses(&mut t, 2);
    let path = dir.path().join("run.ckpt");
    t.save_checkpoint(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    losses(&mut t, 2);

    // Crash midway through the next write: the temporary file holds half the bytes, the
    // rename never happened.
    let next = t.checkpoint().unwrap().to_bytes().unwrap();
    let tmp = temp_path(&path);
    std::fs::write(&tmp, &next[..next.len() / 2]).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), good);
    let back = Checkpoint::load(&path, &dev).unwrap();
    assert_eq!(back.state.step, 2);
    let mut resumed = Trainer::resume(&path, &dev).unwrap();
    assert_eq!(resumed.step_count(), 2);
    resumed.step().unwrap();
    // The torn file itself is refused with a clear message.
    let err = Checkpoint::load(&tmp, &dev).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    // The next good write replaces both.
    t.save_checkpoint(&path).unwrap();
    assert_eq!(Checkpoint::load(&path, &dev).unwrap().state.step, 4);
    assert!(!tmp.exists());
    // A model file is not a checkpoint, and says so.
    let model_path = dir.path().join("model.safetensors");
    t.export(&model_path).unwrap();
    let err = Checkpoint::load(&model_path, &dev).unwrap_err().to_string();
    assert!(
        err.contains("model file, not a training checkpoint"),
        "{err}"
    );
    let exported = load_model(&model_path, &dev).unwrap();
    assert_eq!(exported.config().class_names, ["checkers", "stripes"]);
    assert!((exported.config().noise_sigma - 0.05).abs() < 1e-7);
}

#[test]
fn non_finite_steps_are_skipped_then_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = two_class_data(&dir.path().join("data"), 4);
    let dev = Device::Cpu;
    let mut cfg = quick_config(20);
    cfg.batch_size = 4;
    cfg.max_consecutive_skips = 3;
    let mut t = Trainer::new(small_model(), cfg, data, &dev).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    t.set_progress(move |p| log.lock().unwrap().push(p.clone()));
    t.step().unwrap();
    let before = t.checkpoint().unwrap();

    let mut batch = t.next_batch();
    batch.images[5] = f32::NAN;
    let m = t.step_batch(&batch).unwrap();
    assert!(
        m.skipped.as_deref().unwrap().contains("not finite"),
        "{m:?}"
    );
    assert_eq!(t.step_count(), 1);
    let after = t.checkpoint().unwrap();
    for (name, w) in &before.weights {
        assert_eq!(max_abs_diff(w, &after.weights[name]), 0.0, "{name} changed");
        if let Some(e) = before.ema.get(name) {
            assert_eq!(max_abs_diff(e, &after.ema[name]), 0.0, "ema {name} changed");
        }
    }
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|p| matches!(p, Progress::Skipped { consecutive: 1, .. }))
    );
    // A good step resets the count; then three bad ones in a row stop training.
    assert!(t.step().unwrap().skipped.is_none());
    assert_eq!(t.step_count(), 2);
    let mut result = Ok(());
    for _ in 0..3 {
        let mut b = t.next_batch();
        b.images[0] = f32::INFINITY;
        if let Err(e) = t.step_batch(&b) {
            result = Err(e);
            break;
        }
    }
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Training(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("3 steps in a row") && msg.contains("not finite"),
        "{msg}"
    );
    assert_eq!(t.skipped_steps(), 4);
}

#[test]
fn new_classes_keep_old_ids() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let old_dir = dir.path().join("old");
    let data = two_class_data(&old_dir, 4);
    let mut cfg = quick_config(20);
    cfg.batch_size = 4;
    let mut t = Trainer::new(small_model(), cfg.clone(), data, &dev).unwrap();
    losses(&mut t, 3);
    let ckpt = dir.path().join("run.ckpt");
    t.save_checkpoint(&ckpt).unwrap();
    let model = t.ema_model().unwrap();
    let old_table = model.weights().unwrap()["blocks.1.class_embed"].clone();

    // New art: the old classes (one of them only), and a new class whose name sorts first.
    let new_dir = dir.path().join("new");
    write_patterns(&new_dir, &[Pattern::Stripes, Pattern::Dots], 4, 8, 9);
    std::fs::create_dir_all(new_dir.join("aardvark")).unwrap();
    Pattern::Checkers
        .image(8, &mut rand::SeedableRng::seed_from_u64(3))
        .save(new_dir.join("aardvark/a.png"))
        .unwrap();
    let data_cfg = DataConfig {
        classes: model.config().class_names.clone(),
        ..DataConfig::default()
    };
    let data = Dataset::load(&new_dir, &data_cfg).unwrap();
    assert_eq!(
        data.class_names(),
        ["checkers", "stripes", "aardvark", "dots"]
    );
    let stripes_labels: Vec<_> = data
        .items()
        .iter()
        .filter(|i| data.manifest().files[i.file].path.starts_with("stripes/"))
        .map(|i| i.label)
        .collect();
    assert!(stripes_labels.iter().all(|l| *l == Some(1)));

    // From an exported model: the table grows, old rows are kept bit for bit.
    let mut inc = Trainer::from_model(&model, cfg, data.clone(), &dev).unwrap();
    assert_eq!(inc.model_config().num_classes, 4);
    let table = inc.model().weights().unwrap()["blocks.1.class_embed"].clone();
    assert_eq!(table.dims(), &[4, 1, 64]);
    assert_eq!(
        max_abs_diff(&table.narrow(0, 0, 2).unwrap(), &old_table),
        0.0
    );
    let new_rows = table.narrow(0, 2, 2).unwrap().flatten_all().unwrap();
    let std = new_rows.sqr().unwrap().mean_all().unwrap().sqrt().unwrap();
    let std = std.to_scalar::<f32>().unwrap();
    assert!((0.005..0.02).contains(&std), "new rows have std {std}");
    losses(&mut inc, 2);

    // From the checkpoint: same, with EMA and moments grown, and a new epoch.
    let ck = Checkpoint::load(&ckpt, &dev).unwrap();
    let old_live = ck.weights["blocks.0.class_embed"].clone();
    let mut res = Trainer::from_checkpoint(ck, data, &dev).unwrap();
    assert!(res.data_changed());
    assert_eq!(res.step_count(), 3);
    let c = res.checkpoint().unwrap();
    assert_eq!(c.ema["blocks.0.class_embed"].dims(), &[4, 1, 64]);
    assert_eq!(c.adam_m["blocks.0.class_embed"].dims(), &[4, 1, 64]);
    let live = &c.weights["blocks.0.class_embed"];
    assert_eq!(max_abs_diff(&live.narrow(0, 0, 2).unwrap(), &old_live), 0.0);
    losses(&mut res, 2);

    // Loading the new folder without the known classes would renumber them: refused.
    let renumbered = Dataset::load(&new_dir, &DataConfig::default()).unwrap();
    let err = Trainer::from_model(&model, quick_config(5), renumbered, &dev)
        .unwrap_err()
        .to_string();
    assert!(err.contains("class id 0 is `checkers`"), "{err}");
}

/// The `test/` part of a split is the held-out set: the trainer evaluates on exactly it (with
/// the training ids), holds nothing out of `train/`, and refuses images of another format.
#[test]
fn a_split_test_part_is_the_held_out_set() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_patterns(
        &root.join("train"),
        &[Pattern::Stripes, Pattern::Checkers],
        4,
        8,
        1,
    );
    write_patterns(&root.join("test"), &[Pattern::Stripes], 2, 8, 2);
    let (train, test) = Dataset::load_split(root, &DataConfig::default(), &mut |_| {}).unwrap();
    let test = test.unwrap();
    let config = TrainConfig {
        holdout_fraction: 0.0,
        ..quick_config(4)
    };
    let dev = Device::Cpu;
    let mut t = Trainer::new(small_model(), config, train, &dev).unwrap();
    assert_eq!(t.train_data().len(), 8);
    assert!(t.holdout_data().is_empty());
    t.set_holdout(test).unwrap();
    assert_eq!(t.holdout_data().len(), 2);
    t.step().unwrap();
    let r = t.evaluate_holdout().unwrap().unwrap();
    assert_eq!(r.images, 2);
    // stripes is id 1 in training: the per-class report counts both images there.
    assert_eq!(r.per_class[1].1, 2);
    assert!(r.bits_per_dim.is_finite());

    // Another size is refused, naming both.
    let other = tempfile::tempdir().unwrap();
    write_patterns(other.path(), &[Pattern::Stripes], 1, 16, 3);
    let wrong = Dataset::load(other.path(), &DataConfig::default()).unwrap();
    let msg = t.set_holdout(wrong).unwrap_err().to_string();
    assert!(msg.contains("16x16") && msg.contains("8x8"), "{msg}");
}

#[test]
fn noise_conditional_training_draws_a_level_per_image_and_exports_the_time_embedding() {
    use tarflow::config::NoiseRange;
    use tarflow::train::NoiseConfig;
    let dir = tempfile::tempdir().unwrap();
    let data = two_class_data(dir.path(), 12);
    let dev = Device::Cpu;
    let noise = NoiseConfig::Range {
        t0: 0.01,
        t1: 0.3,
        reweight: true,
    };
    let config = TrainConfig {
        noise,
        ..quick_config(40)
    };
    // A model that is told the level needs a noise range, and only such a model takes one.
    let conditional = small_model().with_noise_range(Some(NoiseRange::new(0.01, 0.3).unwrap()));
    let e = Trainer::new(conditional, quick_config(40), data.clone(), &dev).unwrap_err();
    assert!(e.to_string().contains("noise-conditional"), "{e}");
    let mut t = Trainer::new(small_model(), config, data, &dev).unwrap();
    let cfg = t.model().config().clone();
    assert_eq!(cfg.noise_range, Some(NoiseRange { t0: 0.01, t1: 0.3 }));
    assert_eq!(cfg.noise_sigma, 0.3);
    let batch = t.next_batch();
    assert_eq!(batch.levels.len(), batch.len());
    assert!(batch.levels.iter().all(|l| (0.01..=0.3).contains(l)));
    let spread = batch.levels.iter().fold(0f32, |a, &l| a.max(l))
        - batch.levels.iter().fold(1f32, |a, &l| a.min(l));
    assert!(
        spread > 0.1,
        "levels {:?} do not spread over the range",
        batch.levels
    );
    // A batch without its levels is refused rather than trained at a made-up level.
    let bare = tarflow::train::Batch {
        levels: Vec::new(),
        ..batch.clone()
    };
    assert!(t.step_batch(&bare).is_err());
    let before = t.evaluate_holdout().unwrap().unwrap().bits_per_dim;
    for _ in 0..40 {
        assert!(t.step().unwrap().skipped.is_none());
    }
    let after = t.evaluate_holdout().unwrap().unwrap().bits_per_dim;
    assert!(
        after < before - 0.5,
        "held-out bits/dim {before} -> {after}"
    );
    let path = dir.path().join("nc.safetensors");
    t.export(&path).unwrap();
    let m = load_model(&path, &dev).unwrap();
    assert_eq!(m.config().noise_range, cfg.noise_range);
    let names: Vec<String> = m.weights().unwrap().into_keys().collect();
    assert!(names.contains(&"blocks.1.time_embed.mlp.2.weight".to_string()));
    // The reference (apple/ml-tarflow) has no time embedding: export says so.
    let e = tarflow::format::save_reference_safetensors(&m, &dir.path().join("ref.safetensors"))
        .unwrap_err();
    assert!(e.to_string().contains("noise-conditional"), "{e}");
}
