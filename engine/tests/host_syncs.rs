//! Host round trips (device-to-host copies, counted by `tarflow::device::host_syncs`) per
//! training step and per sampling token step, on the path a GPU takes: on `TARFLOW_TEST_DEVICE`
//! itself when it names a GPU; on the CPU, the same code (candle's ops: `Method::CachedOps` for
//! the sampler, which is what `Method::Cached` runs on a GPU) with the copies counted although
//! they cost nothing there. Also: the test helpers use the device the variable asks for.

mod common;
mod train_util;

use tarflow::device::host_syncs;
use tarflow::model::{InitOptions, init_weights};
use tarflow::prelude::*;
use tarflow::testing::TEST_DEVICE_ENV;
use train_util::{Pattern, quick_config, small_model, write_patterns};

#[test]
fn the_helpers_use_the_device_the_variable_asks_for() {
    let asked = tarflow::testing::from_test_env().unwrap_or_else(|e| panic!("{e}"));
    let dev = common::device();
    let t = tarflow::candle::Tensor::zeros(2, tarflow::candle::DType::F32, &dev).unwrap();
    let used = DeviceChoice::of(t.device());
    let want = std::env::var(TEST_DEVICE_ENV).unwrap_or_default();
    assert_eq!(
        used, asked,
        "{TEST_DEVICE_ENV}={want:?} asked for {asked}, the helpers used {used}"
    );
    match asked {
        DeviceChoice::Cpu => assert!(t.device().is_cpu(), "{TEST_DEVICE_ENV}={want:?}"),
        DeviceChoice::Cuda(_) => assert!(t.device().is_cuda(), "{TEST_DEVICE_ENV}={want:?}"),
        DeviceChoice::Metal => assert!(t.device().is_metal(), "{TEST_DEVICE_ENV}={want:?}"),
    }
    // The model helpers put their tensors there too.
    let m = common::reference_model("small");
    assert_eq!(DeviceChoice::of(m.device()), asked);
    assert_eq!(common::tol(), tarflow::testing::tolerances(asked));
}

#[test]
fn one_host_round_trip_per_training_step() {
    let dir = tempfile::tempdir().unwrap();
    write_patterns(dir.path(), &[Pattern::Stripes, Pattern::Dots], 6, 8, 3);
    let data = Dataset::load(dir.path(), &DataConfig::default()).unwrap();
    let mut cfg = quick_config(10);
    cfg.batch_size = 4;
    cfg.holdout_fraction = 0.0;
    let dev = common::device();
    let mut t = Trainer::new(small_model(), cfg.clone(), data.clone(), &dev).unwrap();
    // On the CPU the default is the hand-written host pass (below): count candle's autograd,
    // the path a GPU takes, as the sampler test counts `CachedOps`.
    t.force_autograd(true);
    let params = t.model().weights().unwrap().len();
    let mut per_step = Vec::new();
    for _ in 0..3 {
        let before = host_syncs();
        let m = t.step().unwrap();
        assert!(m.skipped.is_none() && m.grad_norm.is_finite(), "{m:?}");
        per_step.push(host_syncs() - before);
    }
    if dev.is_cpu() {
        // The host pass computes the loss and gradients where they are already: no round trip.
        let mut h = Trainer::new(small_model(), cfg, data, &dev).unwrap();
        // TARFLOW_AUTOGRAD=1 keeps autograd everywhere (one round trip, as above).
        let host = h.uses_host_grad();
        assert_eq!(host, !tarflow::model::host_grad::autograd_forced());
        for _ in 0..2 {
            let before = host_syncs();
            let m = h.step().unwrap();
            assert!(m.skipped.is_none() && m.grad_norm.is_finite(), "{m:?}");
            let n = host_syncs() - before;
            assert_eq!(
                n,
                u64::from(!host),
                "host pass {host}: host round trips in a step"
            );
        }
    }
    eprintln!(
        "host round trips per training step on {}: {per_step:?} ({params} weight tensors; \
         before issue 17: 2 + one per parameter gradient)",
        DeviceChoice::of(&dev)
    );
    assert!(
        per_step.iter().all(|&n| n == 1),
        "expected one host round trip per training step (loss, bits per dim and gradient norm \
         together), counted {per_step:?}"
    );
}

#[test]
fn no_host_round_trip_per_token_step_but_the_delivered_patches() {
    let mut cfg = ModelConfig::new(3, 8, 2, 64, 3, 1);
    cfg.num_classes = 3;
    let dev = common::device();
    let init = InitOptions {
        proj_out_scale: 0.02,
    };
    let w = init_weights(&cfg, 4, init, &dev).unwrap();
    let model = Model::from_weights(cfg.clone(), &w, &dev).unwrap();
    // On a GPU `Cached` is the ops path; on the CPU it is the fused host path, so count the ops
    // path there.
    let method = if dev.is_cpu() {
        Method::CachedOps
    } else {
        Method::Cached
    };
    let opts = SampleOptions {
        guidance: 1.5,
        denoise: false,
        method,
        ..Default::default()
    };
    let sampler = Sampler::new(&model).unwrap();
    let blocks = cfg.num_blocks;
    let n = cfg.num_patches();
    let stream = sampler.stream(&Labels::Classes(vec![0, 2]), &opts).unwrap();
    // Syncs of each token step (Progress), grouped by block; and those at each block start.
    let mut per_block: Vec<Vec<u64>> = Vec::new();
    let mut at_start = Vec::new();
    let start = host_syncs();
    let mut last = start;
    for ev in stream {
        let now = host_syncs();
        match ev.unwrap() {
            SampleEvent::BlockStarted { .. } => {
                at_start.push(now - last);
                per_block.push(Vec::new());
            }
            SampleEvent::Progress { .. } => per_block.last_mut().unwrap().push(now - last),
            _ => {}
        }
        last = now;
    }
    let total = host_syncs() - start;
    eprintln!(
        "host round trips on {} ({method:?}, batch 2, CFG): per token step {per_block:?}, at \
         block starts {at_start:?}, {total} in all",
        DeviceChoice::of(&dev)
    );
    assert_eq!(per_block.len(), blocks);
    for (step, steps) in per_block.iter().enumerate() {
        assert_eq!(steps.len(), n - 1);
        // The last reversed block delivers one patch per step: one small copy.
        let want = u64::from(step + 1 == blocks);
        assert!(
            steps.iter().all(|&s| s == want),
            "block step {step}: expected {want} host round trip(s) per token step, counted {steps:?}"
        );
    }
    // A block start: the previous block's finite check (one scalar), and patch 0 in the last.
    assert!(
        at_start.iter().all(|&s| s <= 2),
        "block starts: {at_start:?}"
    );
}
