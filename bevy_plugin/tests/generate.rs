//! Texture requests on a headless app (`MinimalPlugins`, `AssetPlugin`, `ImagePlugin`), driven by
//! `app.update()` in loops bounded in frames: the handle exists at once with the right size,
//! patches arrive in raster order through one `get_mut` per frame, the result equals the engine's
//! direct output byte for byte, cancelled requests stop their work, failures are reported while
//! other requests finish, and the app exits cleanly with work in flight.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::asset::{AssetEvent, RenderAssetUsages};
use bevy::ecs::message::Messages;
use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use tarflow::format::load_model;
use tarflow::sample::{Labels, SampleOptions, sample, to_rgba8};

use common::{app, device, load, monitor, slow_model, write_cond_model};

/// Everything the plugin said, gathered frame by frame.
#[derive(Default)]
struct Log {
    progress: Vec<TextureProgress>,
    /// (frame, message)
    patched: Vec<(usize, TexturePatched)>,
    finished: Vec<TextureFinished>,
    failed: Vec<TextureFailed>,
    /// (frame, image modified)
    modified: Vec<(usize, AssetId<Image>)>,
    frames: usize,
}

impl Log {
    /// Run one frame and take its messages.
    fn update(&mut self, app: &mut App) {
        app.update();
        self.frames += 1;
        let frame = self.frames;
        let w = app.world_mut();
        self.progress
            .extend(w.resource_mut::<Messages<TextureProgress>>().drain());
        self.patched.extend(
            w.resource_mut::<Messages<TexturePatched>>()
                .drain()
                .map(|m| (frame, m)),
        );
        self.finished
            .extend(w.resource_mut::<Messages<TextureFinished>>().drain());
        self.failed
            .extend(w.resource_mut::<Messages<TextureFailed>>().drain());
        for ev in w.resource_mut::<Messages<AssetEvent<Image>>>().drain() {
            if let AssetEvent::Modified { id } = ev {
                self.modified.push((frame, id));
            }
        }
    }

    /// Run frames (sleeping `pause` between them) until `done`, at most `max` frames.
    fn until(
        &mut self,
        app: &mut App,
        max: usize,
        pause: Duration,
        done: impl Fn(&Log, &App) -> bool,
    ) {
        for _ in 0..max {
            self.update(app);
            if done(self, app) {
                return;
            }
            std::thread::sleep(pause);
        }
        // What each request got, to tell a stalled worker from a slow one.
        let mut progress: Vec<(Entity, usize, usize)> = Vec::new();
        for p in &self.progress {
            match progress.iter_mut().find(|(e, _, _)| *e == p.entity) {
                Some(entry) => (entry.1, entry.2) = (entry.1 + 1, p.done),
                None => progress.push((p.entity, 1, p.done)),
            }
        }
        let finished: Vec<Entity> = self.finished.iter().map(|f| f.entity).collect();
        let failed: Vec<(Entity, &str)> = self
            .failed
            .iter()
            .map(|f| (f.entity, f.error.as_str()))
            .collect();
        panic!(
            "condition not met within {max} frames; (entity, progress messages, last done): \
             {progress:?}; finished {finished:?}; failed {failed:?}; workers {:?}",
            monitor(app).stats()
        );
    }

    fn ended(&self, entity: Entity) -> bool {
        self.finished.iter().any(|f| f.entity == entity)
            || self.failed.iter().any(|f| f.entity == entity)
    }
}

fn texture(app: &App, entity: Entity) -> TarflowTexture {
    app.world()
        .get::<TarflowTexture>(entity)
        .expect("a request has a TarflowTexture")
        .clone()
}

fn pixels(app: &App, image: &Handle<Image>) -> Vec<u8> {
    let images = app.world().resource::<Assets<Image>>();
    images
        .get(image)
        .and_then(|i| i.data.clone())
        .expect("image with data")
}

#[test]
fn the_handle_exists_at_once_with_the_right_size() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let mut app = app(dir.path(), TarflowSettings::default());

    // Before the model has loaded: a handle at once, sized when the model is there.
    let early_model: Handle<TarflowModel> = app
        .world()
        .resource::<AssetServer>()
        .load("cond.safetensors");
    let early = app
        .world_mut()
        .spawn(GenerateTexture::new(early_model).with_class("stone"))
        .id();
    let early_image = texture(&app, early).image;
    assert_ne!(early_image, Handle::default());
    assert!(
        app.world()
            .resource::<Assets<Image>>()
            .contains(&early_image)
    );

    let model = load(&mut app, "cond.safetensors");
    let entity = app
        .world_mut()
        .spawn(GenerateTexture::new(model).with_class(1).with_seed(3))
        .id();
    // No frame has run since the spawn.
    let tex = texture(&app, entity);
    assert_ne!(tex.image, Handle::default());
    let images = app.world().resource::<Assets<Image>>();
    let image = images.get(&tex.image).expect("the image exists at once");
    assert_eq!((image.width(), image.height()), (8, 8));
    assert_eq!(
        image.texture_descriptor.format,
        wgpu_types::TextureFormat::Rgba8UnormSrgb
    );
    assert_eq!(
        image.asset_usage,
        RenderAssetUsages::MAIN_WORLD | RenderAssetUsages::RENDER_WORLD
    );
    assert_eq!(image.data.as_deref(), Some(&[0u8; 8 * 8 * 4][..]));
    assert_eq!(tex.status(), &TextureStatus::WaitingForModel);

    let mut log = Log::default();
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        l.ended(entity) && l.ended(early)
    });
    let images = app.world().resource::<Assets<Image>>();
    let sized = images.get(&early_image).unwrap();
    assert_eq!((sized.width(), sized.height()), (8, 8));
    assert_eq!(texture(&app, entity).status(), &TextureStatus::Finished);
    assert_eq!(texture(&app, early).status(), &TextureStatus::Finished);
    assert!(log.failed.is_empty(), "{:?}", log.failed);
}

#[test]
fn patches_arrive_in_raster_order_and_the_result_is_the_engines_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let mut app = app(dir.path(), TarflowSettings::default());
    let model = load(&mut app, "cond.safetensors");
    let request = GenerateTexture::new(model)
        .with_class("wood")
        .with_seed(7)
        .with_guidance(1.5)
        .with_temperature(0.9);
    let entity = app.world_mut().spawn(request).id();
    let image = texture(&app, entity).image;

    // The engine, directly, on the same file, seed and options.
    let direct_model = load_model(&path, &device()).unwrap();
    let opts = SampleOptions {
        seed: 7,
        guidance: 1.5,
        temperature: 0.9,
        denoise: true,
        ..Default::default()
    };
    let direct = sample(&direct_model, &Labels::Classes(vec![1]), &opts).unwrap();
    let raw = to_rgba8(&direct.raw).unwrap().remove(0).pixels;
    let done = direct.rgba[0].pixels.clone();
    assert_ne!(raw, done, "denoising should change the image");

    // Sleep long enough between frames that several patches arrive in one frame.
    let mut log = Log::default();
    let mut snapshots = Vec::new();
    for _ in 0..3000 {
        log.update(&mut app);
        if log.patched.last().is_some_and(|(f, _)| *f == log.frames) && !log.ended(entity) {
            snapshots.push((log.frames, pixels(&app, &image)));
        }
        if log.ended(entity) {
            break;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    assert_eq!(log.finished.len(), 1);
    assert_eq!(log.finished[0].entity, entity);

    // Raster order, each patch once, at its place.
    let order: Vec<usize> = log
        .patched
        .iter()
        .flat_map(|(_, m)| m.patches.iter().map(|p| p.index))
        .collect();
    assert_eq!(order, (0..16).collect::<Vec<_>>());
    for (_, m) in &log.patched {
        assert_eq!(m.entity, entity);
        for p in &m.patches {
            let (col, row) = ((p.index % 4) as u32, (p.index / 4) as u32);
            assert_eq!((p.rect.min.x, p.rect.min.y), (col * 2, row * 2));
            assert_eq!((p.rect.width(), p.rect.height()), (2, 2));
        }
    }
    // While it fills in: painted patches hold the engine's pre-denoise pixels, the rest is
    // still transparent.
    let painted_by = |frame: usize| -> Vec<usize> {
        log.patched
            .iter()
            .filter(|(f, _)| *f <= frame)
            .flat_map(|(_, m)| m.patches.iter().map(|p| p.index))
            .collect()
    };
    for (frame, snap) in &snapshots {
        let painted = painted_by(*frame);
        for y in 0..8usize {
            for x in 0..8usize {
                let index = (y / 2) * 4 + x / 2;
                let at = (y * 8 + x) * 4;
                let want: &[u8] = if painted.contains(&index) {
                    &raw[at..at + 4]
                } else {
                    &[0, 0, 0, 0]
                };
                assert_eq!(&snap[at..at + 4], want, "frame {frame}, pixel ({x}, {y})");
            }
        }
    }
    // All the patches of a frame went in through one `get_mut`.
    let mut multi = 0;
    for (frame, m) in &log.patched {
        let mods = log
            .modified
            .iter()
            .filter(|(f, id)| f == frame && *id == image.id())
            .count();
        assert_eq!(mods, 1, "frame {frame}: {} patches", m.patches.len());
        multi += usize::from(m.patches.len() > 1);
    }
    assert!(
        multi > 0,
        "no frame received several patches: {:?}",
        log.patched
    );

    // The end: the engine's denoised image, byte for byte.
    assert_eq!(pixels(&app, &image), done);
    assert_eq!(texture(&app, entity).status(), &TextureStatus::Finished);
    let last = log.progress.last().unwrap();
    assert_eq!((last.done, last.total), (4 * 15 + 1, 4 * 15 + 1));
}

#[test]
fn the_patch_budget_limits_each_frame() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let mut app = app(
        dir.path(),
        TarflowSettings {
            patches_per_frame: 2,
            ..Default::default()
        },
    );
    let model = load(&mut app, "cond.safetensors");
    let a = app
        .world_mut()
        .spawn(GenerateTexture::new(model.clone()).with_seed(1))
        .id();
    let b = app
        .world_mut()
        .spawn(GenerateTexture::new(model).with_seed(2))
        .id();
    let mut log = Log::default();
    log.until(&mut app, 3000, Duration::from_millis(20), |l, _| {
        l.ended(a) && l.ended(b)
    });
    assert_eq!(log.finished.len(), 2);
    let mut per_frame = std::collections::HashMap::<usize, usize>::new();
    for (frame, m) in &log.patched {
        *per_frame.entry(*frame).or_default() += m.patches.len();
    }
    assert!(per_frame.values().all(|&n| n <= 2), "{per_frame:?}");
    assert_eq!(per_frame.values().sum::<usize>(), 32);
}

#[test]
fn a_despawned_removed_or_replaced_request_stops_its_work() {
    // Batched (the three slow requests may share a run) and each request on its own.
    for max_batch in [16, 1] {
        despawned_removed_or_replaced_requests_stop(max_batch);
    }
}

fn despawned_removed_or_replaced_requests_stop(max_batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let mut app = app(
        dir.path(),
        TarflowSettings {
            max_batch,
            ..Default::default()
        },
    );
    let monitor = monitor(&app);
    let small = load(&mut app, "cond.safetensors");
    let slow = app
        .world_mut()
        .resource_mut::<Assets<TarflowModel>>()
        .add(slow_model(2));
    let despawned = app
        .world_mut()
        .spawn(GenerateTexture::new(slow.clone()).with_class(0))
        .id();
    let removed = app
        .world_mut()
        .spawn(GenerateTexture::new(slow.clone()).with_class(1))
        .id();
    let replaced = app
        .world_mut()
        .spawn(GenerateTexture::new(slow).with_seed(5))
        .id();
    let replaced_image = texture(&app, replaced).image;
    let mut log = Log::default();
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        [despawned, removed, replaced]
            .iter()
            .all(|e| l.progress.iter().any(|p| p.entity == *e))
    });
    app.world_mut().entity_mut(despawned).despawn();
    app.world_mut()
        .entity_mut(removed)
        .remove::<GenerateTexture>();
    app.world_mut()
        .entity_mut(replaced)
        .insert(GenerateTexture::new(small).with_seed(6));
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        l.ended(replaced) && monitor.stats().jobs_cancelled == 3
    });
    // The replacement ran to its end in the same image.
    assert_eq!(log.finished.len(), 1, "{:?}", log.finished);
    assert_eq!(log.finished[0].entity, replaced);
    assert_eq!(log.finished[0].image, replaced_image);
    assert_eq!(texture(&app, replaced).image, replaced_image);
    // No worker runs a step any more.
    let stats = monitor.stats();
    for _ in 0..20 {
        log.update(&mut app);
        std::thread::sleep(Duration::from_millis(10));
    }
    let later = monitor.stats();
    assert_eq!(later.steps, stats.steps);
    assert_eq!(
        (
            later.jobs_started,
            later.jobs_finished,
            later.jobs_cancelled
        ),
        (4, 1, 3)
    );
    assert!(log.failed.is_empty(), "{:?}", log.failed);
    // The removed request's entity keeps its (partly painted) texture; no message names the
    // cancelled requests after they were cancelled.
    assert!(app.world().get::<TarflowTexture>(removed).is_some());
    assert!(!log.ended(despawned) && !log.ended(removed));
}

#[test]
fn failing_requests_are_reported_while_others_finish() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    std::fs::write(dir.path().join("broken.safetensors"), b"not a model").unwrap();
    let mut app = app(dir.path(), TarflowSettings::default());
    let monitor = monitor(&app);
    let model = load(&mut app, "cond.safetensors");
    let broken: Handle<TarflowModel> = app
        .world()
        .resource::<AssetServer>()
        .load("broken.safetensors");
    // A model whose config no longer fits its weights: sampling itself fails on the worker.
    let mut misfit = load_model(&dir.path().join("cond.safetensors"), &device()).unwrap();
    misfit.config_mut().in_channels = 3;
    let misfit = app
        .world_mut()
        .resource_mut::<Assets<TarflowModel>>()
        .add(TarflowModel {
            model: Arc::new(misfit),
        });

    let w = app.world_mut();
    let good_a = w
        .spawn(GenerateTexture::new(model.clone()).with_seed(1))
        .id();
    let bad_file = w.spawn(GenerateTexture::new(broken)).id();
    let bad_name = w
        .spawn(GenerateTexture::new(model.clone()).with_class("lava"))
        .id();
    let bad_id = w
        .spawn(GenerateTexture::new(model.clone()).with_class(9))
        .id();
    let bad_opts = w
        .spawn(GenerateTexture::new(model.clone()).with_temperature(f32::NAN))
        .id();
    let bad_model = w.spawn(GenerateTexture::new(misfit)).id();
    let good_b = w
        .spawn(GenerateTexture::new(model).with_class("grass"))
        .id();

    let all = [
        good_a, bad_file, bad_name, bad_id, bad_opts, bad_model, good_b,
    ];
    let mut log = Log::default();
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        all.iter().all(|e| l.ended(*e))
    });
    let error = |e: Entity| -> String {
        log.failed
            .iter()
            .find(|f| f.entity == e)
            .map(|f| f.error.clone())
            .unwrap_or_else(|| panic!("{e} should have failed"))
    };
    assert!(
        error(bad_file).contains("broken.safetensors"),
        "{}",
        error(bad_file)
    );
    let name = error(bad_name);
    assert!(name.contains("lava") && name.contains("stone"), "{name}");
    assert!(error(bad_id).contains("out of range"), "{}", error(bad_id));
    assert!(
        error(bad_opts).contains("temperature"),
        "{}",
        error(bad_opts)
    );
    assert!(!error(bad_model).is_empty());
    assert_eq!(log.failed.len(), 5);
    let finished: Vec<Entity> = log.finished.iter().map(|f| f.entity).collect();
    assert_eq!(finished.len(), 2);
    assert!(finished.contains(&good_a) && finished.contains(&good_b));
    assert!(matches!(
        texture(&app, bad_name).status(),
        TextureStatus::Failed(_)
    ));
    // The worker that failed one request took the next.
    let stats = monitor.stats();
    assert_eq!(stats.threads_alive, 1);
    assert_eq!((stats.jobs_finished, stats.jobs_failed), (2, 1));
}

#[derive(Resource)]
struct ExitAfter(u32);

fn exit_after(mut n: ResMut<ExitAfter>, mut exit: MessageWriter<AppExit>) {
    n.0 = n.0.saturating_sub(1);
    if n.0 == 0 {
        exit.write(AppExit::Success);
    }
}

#[test]
fn the_app_exits_cleanly_with_work_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app(
        dir.path(),
        TarflowSettings {
            workers: 2,
            ..Default::default()
        },
    );
    let monitor = monitor(&app);
    let slow = app
        .world_mut()
        .resource_mut::<Assets<TarflowModel>>()
        .add(slow_model(2));
    for seed in 0..16 {
        app.world_mut()
            .spawn(GenerateTexture::new(slow.clone()).with_seed(seed));
    }
    let mut log = Log::default();
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        l.progress.len() >= 4
    });
    assert_eq!(monitor.stats().threads_alive, 2);
    // `App::run` with an exit after a few frames; the app is dropped when it returns.
    app.insert_resource(ExitAfter(3))
        .add_systems(Update, exit_after);
    let t = Instant::now();
    let exit = app.run();
    assert_eq!(exit, AppExit::Success);
    let stats = monitor.stats();
    assert_eq!(stats.threads_alive, 0, "{stats:?}");
    assert_eq!(stats.jobs_finished, 0, "{stats:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn an_unavailable_device_fails_requests_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let device = tarflow::DeviceChoice::Cuda(0);
    if device.compiled_in() {
        return;
    }
    let mut app = app(
        dir.path(),
        TarflowSettings {
            device,
            ..Default::default()
        },
    );
    let model = load(&mut app, "cond.safetensors");
    let entity = app.world_mut().spawn(GenerateTexture::new(model)).id();
    let mut log = Log::default();
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        l.ended(entity)
    });
    assert_eq!(log.failed.len(), 1);
    assert!(
        log.failed[0].error.contains("cuda"),
        "{}",
        log.failed[0].error
    );
}

#[test]
fn a_request_changed_in_place_starts_over_in_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let mut app = app(dir.path(), TarflowSettings::default());
    let model = load(&mut app, "cond.safetensors");
    let entity = app
        .world_mut()
        .spawn(GenerateTexture::new(model).with_class(2).with_seed(1))
        .id();
    let image = texture(&app, entity).image;
    let mut log = Log::default();
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        l.finished.len() == 1
    });
    let first = pixels(&app, &image);
    app.world_mut()
        .get_mut::<GenerateTexture>(entity)
        .unwrap()
        .seed = 2;
    log.until(&mut app, 3000, Duration::from_millis(2), |l, _| {
        l.finished.len() == 2
    });
    assert_eq!(texture(&app, entity).image, image);
    let second = pixels(&app, &image);
    assert_ne!(first, second);
    let direct = sample(
        &load_model(&path, &device()).unwrap(),
        &Labels::Classes(vec![2]),
        &SampleOptions {
            seed: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(second, direct.rgba[0].pixels);
}
