//! The fidelity report on real data: the classifier recognises held-out minetest16 textures well
//! above chance, and the report tells the bundled demo model from a class-blind copy of it.

mod train_util;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tarflow::candle::{Device, Tensor};
use tarflow::fidelity::{
    Classifier, ClassifierConfig, CriticConfig, FidelityConfig, FidelityReport,
};
use tarflow::sample::SampleOptions;
use tarflow::train::{ChannelChoice, DataConfig, Dataset};
use tarflow::{Model, Weights};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn classifier_recognises_held_out_minetest16_textures() {
    let data = Dataset::load(&train_util::minetest16(), &DataConfig::default()).unwrap();
    let (train, test) = data.split(0.2, 0);
    let k = train.num_classes();
    assert!(k >= 2 && !test.is_empty());
    let t = Instant::now();
    let clf = Classifier::train(&train, &ClassifierConfig::default()).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let held_out = clf.accuracy(&test).unwrap();
    let seen = clf.accuracy(&train).unwrap();
    eprintln!(
        "classifier: {} train images, {secs:.1} s; accuracy train {seen:.3}, held-out {held_out:.3} \
         ({} images, chance {:.3})",
        train.len(),
        test.len(),
        1.0 / k as f64
    );
    assert!(
        held_out >= 3.0 / k as f64,
        "held-out accuracy {held_out} is not well above chance (1/{k})"
    );
    assert!(seen > 0.8, "training accuracy {seen}");
}

/// The demo model's training folder (from its provenance, relative to the repo) and the
/// held-out folder next to it.
/// The bundled demo model.
fn demo_model() -> Model {
    tarflow::format::load_model(
        &repo().join("assets/models/textures16.tarflow.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn demo_data(model: &Model) -> (PathBuf, PathBuf) {
    let rel = model
        .config()
        .provenance
        .get("data")
        .and_then(|v| v.as_str())
        .expect("the demo model records its training data folder")
        .to_string();
    let train = repo().join(&rel);
    let test = if Path::new(&rel).file_name().is_some_and(|n| n == "train") {
        train.parent().unwrap().join("test")
    } else {
        train.join("test")
    };
    let train = if train.join("train").is_dir() {
        train.join("train")
    } else {
        train
    };
    (train, test)
}

/// The same model with every class embedding replaced by their mean: it ignores its class.
fn class_blind(model: &Model) -> Model {
    let mut w: Weights = model.weights().unwrap();
    let keys: Vec<String> = w
        .keys()
        .filter(|k| k.ends_with(".class_embed"))
        .cloned()
        .collect();
    assert!(!keys.is_empty(), "a conditional model has class embeddings");
    for key in keys {
        let e = &w[&key];
        let mean: Tensor = e.mean_keepdim(0).unwrap().broadcast_as(e.shape()).unwrap();
        w.insert(key, mean.contiguous().unwrap());
    }
    Model::from_weights(model.config().clone(), &w, &Device::Cpu).unwrap()
}

#[test]
fn class_blind_copy_of_the_demo_model_is_recognised_less() {
    let model = demo_model();
    let cfg = model.config().clone();
    let (train_dir, test_dir) = demo_data(&model);
    let data_cfg = DataConfig {
        img_size: Some(cfg.img_size),
        channels: ChannelChoice::from_count(cfg.in_channels).unwrap(),
        classes: cfg.class_names.clone(),
        ..Default::default()
    };
    let train = Dataset::load(&train_dir, &data_cfg).unwrap();
    let test = Dataset::load(&test_dir, &data_cfg).unwrap();
    assert_eq!(train.class_names(), cfg.class_names.as_slice());
    let clf = Classifier::train(&train, &ClassifierConfig::default()).unwrap();
    let opts = SampleOptions {
        guidance: 2.0,
        seed: 3,
        ..Default::default()
    };
    let fc = FidelityConfig::default();
    let per_class = 8;
    let t = Instant::now();
    let real = FidelityReport::from_model(
        &clf,
        &model,
        &train,
        &test,
        per_class,
        &opts,
        &fc,
        |_, _| {},
    )
    .unwrap();
    eprintln!(
        "sampled and scored {} images in {:.1} s",
        real.overall.generated,
        t.elapsed().as_secs_f64()
    );
    let no_critic = FidelityConfig {
        critic: CriticConfig {
            folds: 0,
            ..CriticConfig::default()
        },
        ..fc.clone()
    };
    let blind = FidelityReport::from_model(
        &clf,
        &class_blind(&model),
        &train,
        &test,
        per_class,
        &opts,
        &no_critic,
        |_, _| {},
    )
    .unwrap();
    let (r, b) = (
        real.overall.recognised_generated.unwrap(),
        blind.overall.recognised_generated.unwrap(),
    );
    eprintln!(
        "recognised: model {r:.3}, class-blind copy {b:.3}, held-out reals {:?}",
        real.overall.recognised_real
    );
    assert_eq!(real.overall.generated, per_class * cfg.num_classes);
    assert_eq!(real.classes.len(), cfg.num_classes);
    assert!(
        r > b + 0.15,
        "the class-blind copy is recognised as often ({b}) as the model ({r})"
    );
    // The report's fields are all there and in range.
    for c in real.classes.iter().chain([&real.overall]) {
        for v in [
            c.recognised_generated,
            c.precision,
            c.recall,
            c.copy.near_copy_share,
        ]
        .into_iter()
        .flatten()
        {
            assert!((0.0..=1.0).contains(&v), "{c:?}");
        }
        assert!(c.copy.generated_median.unwrap() >= 0.0);
    }
    assert_eq!(real.closest.len(), fc.list);
    // The streak measure and the critic are there, and the critic's floor (training reals
    // against held-out reals) is below its verdict on the samples.
    for s in [real.overall.streaks.generated, real.overall.streaks.real] {
        assert!(
            s.unwrap() > 0.2 && s.unwrap() < 5.0,
            "{:?}",
            real.overall.streaks
        );
    }
    let critic = real.critic.as_ref().unwrap();
    eprintln!("critic: {critic:?}");
    assert!(critic.per_side > 0);
    let (g, f) = (
        critic.generated_vs_real.unwrap(),
        critic.train_vs_test.unwrap(),
    );
    assert!((0.0..=1.0).contains(&g) && (0.0..=1.0).contains(&f));
    assert!(
        g > f,
        "the critic tells samples apart ({g}) no better than reals ({f})"
    );
    assert!(blind.critic.is_none());
    assert!(
        real.closest
            .windows(2)
            .all(|w| w[0].distance <= w[1].distance)
    );
    assert!(
        Path::new(&real.closest[0].train_file).is_file(),
        "{:?}",
        real.closest[0]
    );
}

#[test]
fn unknown_data_class_is_a_clear_error() {
    let model = demo_model();
    let cfg = model.config().clone();
    let dir = tempfile::tempdir().unwrap();
    for class in ["not_a_model_class", "another_one"] {
        let d = dir.path().join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..3u8 {
            image::RgbaImage::from_pixel(
                cfg.img_size as u32,
                cfg.img_size as u32,
                image::Rgba([i * 40, 10, 200, 255]),
            )
            .save(d.join(format!("{i}.png")))
            .unwrap();
        }
    }
    let data = Dataset::load(
        dir.path(),
        &DataConfig {
            img_size: Some(cfg.img_size),
            channels: ChannelChoice::from_count(cfg.in_channels).unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let clf = Classifier::train(
        &data,
        &ClassifierConfig {
            steps: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let err = FidelityReport::from_model(
        &clf,
        &model,
        &data,
        &data,
        1,
        &SampleOptions::default(),
        &FidelityConfig::default(),
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("another_one") && err.contains("unknown to the model"),
        "{err}"
    );
}
