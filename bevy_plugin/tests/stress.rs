//! The plugin under load: many requests from many entities over several workers, failing
//! requests mixed in, and models unloaded while requests run. Every request ends (finished, or
//! failed with a message), nothing panics, and every worker thread is still serving.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bevy::ecs::message::Messages;
use bevy::prelude::*;
use bevy_tarflow::TarflowWorkers;
use bevy_tarflow::prelude::*;
use common::{app, load, monitor, write_cond_model};

/// The plugin with `workers` workers of 3 streams each.
fn workers_app(root: &std::path::Path, workers: usize) -> App {
    app(
        root,
        TarflowSettings {
            workers,
            streams_per_worker: 3,
            ..Default::default()
        },
    )
}

/// Finished and failed requests, gathered frame by frame.
#[derive(Default)]
struct Ends {
    finished: Vec<Entity>,
    failed: Vec<(Entity, String)>,
}

impl Ends {
    fn update(&mut self, app: &mut App) {
        app.update();
        let w = app.world_mut();
        self.finished.extend(
            w.resource_mut::<Messages<TextureFinished>>()
                .drain()
                .map(|m| m.entity),
        );
        self.failed.extend(
            w.resource_mut::<Messages<TextureFailed>>()
                .drain()
                .map(|m| (m.entity, m.error)),
        );
    }

    fn ended(&self, e: Entity) -> bool {
        self.finished.contains(&e) || self.failed.iter().any(|(f, _)| *f == e)
    }

    /// Run frames until every one of `all` ended, at most `max` frames.
    fn until_all(&mut self, app: &mut App, all: &[Entity], max: usize) {
        for _ in 0..max {
            self.update(app);
            if all.iter().all(|e| self.ended(*e)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let open: Vec<(Entity, Option<TextureStatus>)> = all
            .iter()
            .filter(|e| !self.ended(**e))
            .map(|e| {
                let status = app
                    .world()
                    .get::<TarflowTexture>(*e)
                    .map(|t| t.status().clone());
                (*e, status)
            })
            .collect();
        let stats = app.world().resource::<TarflowWorkers>().monitor().stats();
        panic!("{} request(s) never ended: {open:?}; {stats:?}", open.len());
    }

    /// Each request ended exactly once.
    fn assert_once(&self) {
        let mut seen = HashSet::new();
        for e in self
            .finished
            .iter()
            .chain(self.failed.iter().map(|(e, _)| e))
        {
            assert!(seen.insert(*e), "{e} ended twice");
        }
    }
}

#[test]
fn many_requests_from_many_entities_all_end() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", None);
    std::fs::write(dir.path().join("broken.safetensors"), b"not a model").unwrap();
    let mut app = workers_app(dir.path(), 4);
    let monitor = monitor(&app);
    let model = load(&mut app, "cond.safetensors");
    let broken: Handle<TarflowModel> = app
        .world()
        .resource::<AssetServer>()
        .load("broken.safetensors");

    // 48 requests at once: every 8th asks for an unknown class, every 12th uses a broken file.
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for i in 0..48u64 {
        let request = if i % 12 == 11 {
            GenerateTexture::new(broken.clone())
        } else if i % 8 == 7 {
            GenerateTexture::new(model.clone()).with_class("lava")
        } else {
            GenerateTexture::new(model.clone())
                .with_class((i % 3) as usize)
                .with_seed(i)
                .with_guidance((i % 2) as f32)
        };
        let bad_one = i % 12 == 11 || i % 8 == 7;
        let e = app.world_mut().spawn(request).id();
        if bad_one { bad.push(e) } else { good.push(e) }
    }
    let all: Vec<Entity> = good.iter().chain(&bad).copied().collect();
    let mut ends = Ends::default();
    ends.until_all(&mut app, &all, 20_000);
    ends.assert_once();
    for e in &good {
        assert!(ends.finished.contains(e), "{e} should have finished");
        assert_eq!(
            app.world().get::<TarflowTexture>(*e).unwrap().status(),
            &TextureStatus::Finished
        );
    }
    for e in &bad {
        let (_, msg) = ends.failed.iter().find(|(f, _)| f == e).unwrap();
        assert!(
            msg.contains("lava") || msg.contains("broken.safetensors"),
            "{msg}"
        );
    }
    let stats = monitor.stats();
    assert_eq!(stats.threads_alive, 4, "{stats:?}");
    assert_eq!(stats.jobs_finished, good.len(), "{stats:?}");
    assert_eq!(stats.panics, 0, "{stats:?}");
    eprintln!(
        "{} requests served ({} finished, {} failed with a message) on 4 workers",
        all.len(),
        good.len(),
        bad.len()
    );
}

#[test]
fn models_unloaded_while_requests_run_end_every_request() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "a.safetensors", None);
    write_cond_model(dir.path(), "b.safetensors", None);
    let mut app = workers_app(dir.path(), 2);
    let monitor = monitor(&app);
    let a = load(&mut app, "a.safetensors");
    let b = load(&mut app, "b.safetensors");

    let spawn = |app: &mut App, model: &Handle<TarflowModel>, n: u64| -> Vec<Entity> {
        (0..n)
            .map(|s| {
                app.world_mut()
                    .spawn(GenerateTexture::new(model.clone()).with_seed(s))
                    .id()
            })
            .collect()
    };
    let first_a = spawn(&mut app, &a, 12);
    let first_b = spawn(&mut app, &b, 12);
    let mut ends = Ends::default();
    // Let the workers start (some requests begun, most still queued).
    for _ in 0..2000 {
        ends.update(&mut app);
        if monitor.stats().jobs_started >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Unload `a` while its requests run or wait, and request it again after.
    app.world_mut()
        .resource_mut::<Assets<TarflowModel>>()
        .remove(&a);
    let late_a = spawn(&mut app, &a, 3);
    // Load a third model while the others run.
    write_cond_model(dir.path(), "c.safetensors", None);
    let c: Handle<TarflowModel> = app.world().resource::<AssetServer>().load("c.safetensors");
    // Requests for it made at once wait for it; frames run through `ends` so that no message of
    // the requests in flight is missed meanwhile.
    let late_c = spawn(&mut app, &c, 4);

    let all: Vec<Entity> = [&first_a, &first_b, &late_a, &late_c]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    ends.until_all(&mut app, &all, 20_000);
    ends.assert_once();
    for e in first_b.iter().chain(&late_c) {
        assert!(ends.finished.contains(e), "{e} should have finished");
    }
    for e in &late_a {
        let (_, msg) = ends
            .failed
            .iter()
            .find(|(f, _)| f == e)
            .unwrap_or_else(|| panic!("{e}: a request for an unloaded model should fail"));
        assert!(msg.contains("unloaded"), "{msg}");
    }
    // Requests of `a` submitted before the unload keep their model and finish; those still
    // waiting to be submitted fail with the reason. Either way each ended once.
    let a_finished = first_a.iter().filter(|e| ends.finished.contains(e)).count();
    let stats = monitor.stats();
    assert_eq!(stats.threads_alive, 2, "{stats:?}");
    assert_eq!(stats.panics, 0, "{stats:?}");
    eprintln!(
        "{} requests ended while a model was unloaded and another loaded ({a_finished} of 12 on \
         the unloaded model finished)",
        all.len()
    );
}
