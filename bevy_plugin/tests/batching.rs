//! Batching (issue 17): requests for the same model and options made together run as one sampler
//! batch, yet each gets its own texture (byte for byte its solo run's), its own patches in raster
//! order, and its own cancellation; requests whose options differ run apart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bevy::ecs::message::Messages;
use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use tarflow::candle::Device;
use tarflow::format::load_model;
use tarflow::model::{InitOptions, init_weights};
use tarflow::sample::{Labels, Sampler};
use tarflow::{Model, ModelConfig};

use common::{app, load, monitor, write_cond_model};

/// Messages gathered over frames.
#[derive(Default)]
struct Log {
    progress: Vec<TextureProgress>,
    patched: Vec<TexturePatched>,
    finished: Vec<TextureFinished>,
    failed: Vec<TextureFailed>,
}

impl Log {
    fn update(&mut self, app: &mut App) {
        app.update();
        let w = app.world_mut();
        self.progress
            .extend(w.resource_mut::<Messages<TextureProgress>>().drain());
        self.patched
            .extend(w.resource_mut::<Messages<TexturePatched>>().drain());
        self.finished
            .extend(w.resource_mut::<Messages<TextureFinished>>().drain());
        self.failed
            .extend(w.resource_mut::<Messages<TextureFailed>>().drain());
    }

    fn ended(&self, e: Entity) -> bool {
        self.finished.iter().any(|f| f.entity == e) || self.failed.iter().any(|f| f.entity == e)
    }

    /// Frames until every one of `all` ended (panics after `max` frames).
    fn until_ended(&mut self, app: &mut App, all: &[Entity], max: usize) {
        for _ in 0..max {
            self.update(app);
            if all.iter().all(|e| self.ended(*e)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("requests did not end within {max} frames");
    }

    /// The patch indices painted for `e`, in the order they were painted.
    fn order(&self, e: Entity) -> Vec<usize> {
        self.patched
            .iter()
            .filter(|m| m.entity == e)
            .flat_map(|m| m.patches.iter().map(|p| p.index))
            .collect()
    }
}

fn pixels(app: &App, e: Entity) -> Vec<u8> {
    let texture = app.world().get::<TarflowTexture>(e).expect("texture");
    app.world()
        .resource::<Assets<Image>>()
        .get(&texture.image)
        .and_then(|i| i.data.clone())
        .expect("image with data")
}

/// The texture the engine makes for `request` alone (batch of one, its own seed).
fn solo(sampler: &Sampler, request: &GenerateTexture, label: Option<i64>) -> Vec<u8> {
    let labels = match label {
        Some(l) => Labels::Classes(vec![l]),
        None => Labels::Unconditional(1),
    };
    let opts = request.sample_options(sampler.model().config());
    let mut s = sampler.sample(&labels, &opts).unwrap();
    s.rgba.remove(0).pixels
}

#[test]
fn batched_requests_match_their_solo_runs_with_their_own_patches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let sampler = Sampler::new(&load_model(&path, &Device::Cpu).unwrap()).unwrap();
    for max_batch in [16, 1] {
        let mut app = app(
            dir.path(),
            TarflowSettings {
                max_batch,
                ..Default::default()
            },
        );
        let model = load(&mut app, "cond.safetensors");
        let base = GenerateTexture::new(model)
            .with_guidance(1.5)
            .with_alpha_cutoff(0.5);
        // Five conditional requests (mixed classes, own seeds): one batch. One unconditional and
        // one at another temperature: a batch each.
        let mut requests: Vec<(GenerateTexture, Option<i64>)> = (0..5u64)
            .map(|k| {
                let class = (k % 3) as i64;
                let r = base.clone().with_class(class as usize).with_seed(100 + k);
                (r, Some(class))
            })
            .collect();
        requests.push((base.clone().with_seed(7), None));
        requests.push((
            base.clone()
                .with_class(2)
                .with_seed(8)
                .with_temperature(0.8),
            Some(2),
        ));
        let entities: Vec<Entity> = requests
            .iter()
            .map(|(r, _)| app.world_mut().spawn(r.clone()).id())
            .collect();
        let mut log = Log::default();
        log.until_ended(&mut app, &entities, 5000);
        assert!(log.failed.is_empty(), "{:?}", log.failed);
        for ((request, label), e) in requests.iter().zip(&entities) {
            assert_eq!(
                pixels(&app, *e),
                solo(&sampler, request, *label),
                "request {e} (max_batch {max_batch}) differs from its solo run"
            );
            assert_eq!(log.order(*e), (0..16).collect::<Vec<_>>(), "request {e}");
            let last = log.progress.iter().rfind(|p| p.entity == *e).unwrap();
            assert_eq!((last.done, last.total), (61, 61));
        }
        let stats = monitor(&app).stats();
        assert_eq!(stats.jobs_finished, 7);
        if max_batch == 1 {
            assert_eq!((stats.batches, stats.largest_batch), (7, 1), "{stats:?}");
        } else {
            assert_eq!((stats.batches, stats.largest_batch), (3, 5), "{stats:?}");
        }
    }
}

/// A random model slow enough (N = 256, width 128, 4 blocks: 1020 steps) that a batch is
/// still running when one of its requests is despawned right after the batch's first step, also
/// on a loaded CI machine (width 64 and 2 blocks once finished the whole batch between two
/// polls of the test).
fn slowish_model() -> TarflowModel {
    let mut cfg = ModelConfig::new(4, 32, 2, 128, 4, 2);
    cfg.num_classes = 2;
    let w = init_weights(
        &cfg,
        5,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &Device::Cpu,
    )
    .unwrap();
    TarflowModel {
        model: Arc::new(Model::from_weights(cfg, &w, &Device::Cpu).unwrap()),
    }
}

#[test]
fn cancelling_one_request_of_a_batch_leaves_the_others_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(
        dir.path(),
        TarflowSettings {
            max_batch: 16,
            ..Default::default()
        },
    );
    let asset = slowish_model();
    let sampler = Sampler::new(&asset.model).unwrap();
    let model = app
        .world_mut()
        .resource_mut::<Assets<TarflowModel>>()
        .add(asset);
    let requests: Vec<GenerateTexture> = (0..3u64)
        .map(|k| {
            GenerateTexture::new(model.clone())
                .with_class(1)
                .with_seed(k)
        })
        .collect();
    let entities: Vec<Entity> = requests
        .iter()
        .map(|r| app.world_mut().spawn(r.clone()).id())
        .collect();
    let mut log = Log::default();
    let monitor = monitor(&app);
    for _ in 0..5000 {
        log.update(&mut app);
        if monitor.stats().steps > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let early = monitor.stats();
    let cfg = sampler.model().config();
    let per_request = cfg.num_blocks * (cfg.num_patches() - 1);
    assert!(
        early.steps < 3 * per_request,
        "the batch ended before the test could cancel"
    );
    app.world_mut().despawn(entities[1]);
    let kept = [entities[0], entities[2]];
    log.until_ended(&mut app, &kept, 20_000);
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert!(!log.finished.iter().any(|f| f.entity == entities[1]));
    for (k, e) in [(0, entities[0]), (2, entities[2])] {
        assert_eq!(pixels(&app, e), solo(&sampler, &requests[k], Some(1)));
        assert_eq!(log.order(e), (0..256).collect::<Vec<_>>());
    }
    let stats = monitor.stats();
    assert_eq!(
        (
            stats.batches,
            stats.largest_batch,
            stats.jobs_finished,
            stats.jobs_cancelled
        ),
        (1, 3, 2, 1),
        "{stats:?}"
    );
}
