//! Per-block layer counts (`ModelConfig::block_layers`, deep-shallow stacks): the tensors a
//! model file holds, loading and saving, inference of the counts from a reference-style
//! state_dict, and refusals where a count does not fit.

mod common;

use common::device;
use tarflow::model::{InitOptions, ModelNames, init_weights};
use tarflow::{Model, ModelConfig};

fn deep_shallow() -> ModelConfig {
    let mut cfg = ModelConfig::new(3, 8, 2, 64, 3, 1).with_block_layers(vec![1, 1, 3]);
    cfg.num_classes = 2;
    cfg
}

#[test]
fn each_block_holds_its_own_layers_and_files_keep_them() {
    let cfg = deep_shallow();
    assert_eq!((cfg.layers_per_block, cfg.max_layers()), (3, 3));
    cfg.validate().unwrap();
    let names = ModelNames::default();
    let dict = names.state_dict(&cfg);
    let layers_of = |t: usize| {
        let b = names.block(t);
        dict.iter()
            .filter_map(|e| b.layer_index(&e.name))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!((layers_of(0), layers_of(1), layers_of(2)), (1, 1, 3));
    let w = init_weights(&cfg, 1, InitOptions::default(), &device()).unwrap();
    let m = Model::from_weights(cfg.clone(), &w, &device()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    tarflow::format::save_model(&m, &path).unwrap();
    assert_eq!(
        tarflow::format::load_model(&path, &device())
            .unwrap()
            .config(),
        &cfg
    );
    // The reference takes one count for every block: export refuses, naming the counts.
    let e = tarflow::format::save_reference_safetensors(&m, &dir.path().join("r.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("1,1,3"), "{e}");
    // A state_dict with these tensors gives the counts back (import of a deep-shallow
    // checkpoint), and a uniform list is the reference's single count.
    let inferred = tarflow::format::infer_config(&w, Default::default()).unwrap();
    assert_eq!(inferred.block_layers, vec![1, 1, 3]);
    let uniform = ModelConfig::new(3, 8, 2, 64, 3, 1).with_block_layers(vec![2, 2, 2]);
    assert_eq!(
        (uniform.layers_per_block, uniform.block_layers.len()),
        (2, 0)
    );
}

#[test]
fn counts_that_do_not_fit_are_refused() {
    for bad in [vec![1, 0, 2], vec![1, 2]] {
        let mut cfg = ModelConfig::new(3, 8, 2, 64, 3, 2);
        cfg.block_layers = bad.clone();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("block_layers"), "{bad:?}: {e}");
    }
    // Weights of a uniform model do not load as a deep-shallow one.
    let plain = ModelConfig::new(3, 8, 2, 64, 3, 1);
    let w = init_weights(&plain, 1, InitOptions::default(), &device()).unwrap();
    assert!(Model::from_weights(deep_shallow(), &w, &device()).is_err());
}
