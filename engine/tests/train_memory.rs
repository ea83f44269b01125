//! The trainer keeps no autograd history between steps: an EMA or optimizer moment that still
//! tracked its ops would chain every past step's tensors and grow memory without bound (the
//! demo model's first training run was OOM-killed at 24 GB after 2000 steps this way).

use tarflow::ModelConfig;
use tarflow::candle::Device;
use tarflow::train::{Dataset, Item, TrainConfig, Trainer};

#[test]
fn no_state_tracks_autograd_history_across_steps() {
    let item = |label, v: u8| Item {
        pixels: vec![v; 8 * 8 * 3],
        width: 8,
        height: 8,
        label: Some(label),
        file: 0,
        frame: 0,
    };
    let items = vec![item(0, 10), item(1, 200), item(0, 30), item(1, 220)];
    let data = Dataset::from_items(items, 3, 8, vec!["dark".into(), "light".into()]).unwrap();
    let cfg = ModelConfig::new(3, 8, 4, 64, 2, 1);
    let train = TrainConfig {
        batch_size: 4,
        holdout_fraction: 0.0,
        ..Default::default()
    };
    let mut t = Trainer::new(cfg, train, data, &Device::Cpu).unwrap();
    for _ in 0..3 {
        t.step().unwrap();
    }
    for (name, e) in t.ema_weights() {
        assert!(!e.track_op(), "EMA `{name}` keeps an autograd graph");
    }
    for (name, m) in t
        .optimizer()
        .first_moments()
        .iter()
        .chain(t.optimizer().second_moments())
    {
        assert!(
            !m.track_op(),
            "Adam moment `{name}` keeps an autograd graph"
        );
    }
}
