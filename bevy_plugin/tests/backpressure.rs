//! The workers' results channel is bounded: an app that stops taking results in (no frames for
//! a while) holds at most `event_capacity` events, the workers wait, and everything arrives once
//! frames resume.

mod common;

use std::time::Duration;

use bevy::ecs::message::Messages;
use bevy::prelude::*;
use bevy_tarflow::TarflowWorkers;
use bevy_tarflow::prelude::*;

use common::{app, load, monitor, write_cond_model};

#[test]
fn a_paused_app_holds_a_bounded_number_of_results_and_gets_them_all_later() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", None);
    let capacity = 8;
    let settings = TarflowSettings {
        event_capacity: capacity,
        max_batch: 1,
        ..Default::default()
    };
    let mut app = app(dir.path(), settings);
    let model = load(&mut app, "cond.safetensors");
    // Four textures: far more patch events than the channel holds.
    for class in [0, 1, 2, 0] {
        app.world_mut()
            .spawn(GenerateTexture::new(model.clone()).with_class(class));
    }
    // One frame submits the requests; then no frame for a while.
    app.update();
    let mut waited = false;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        let waiting = app.world().resource::<TarflowWorkers>().events_waiting();
        assert!(
            waiting <= capacity,
            "{waiting} events waiting, capacity {capacity}"
        );
        if monitor(&app).stats().backpressure_waits > 0 {
            waited = true;
            break;
        }
    }
    assert!(waited, "the workers never waited for the app");
    let stats = monitor(&app).stats();
    assert_eq!(stats.jobs_finished, 0, "{stats:?}");
    // Frames resume: every texture arrives, whole.
    let mut finished = 0;
    for _ in 0..5000 {
        app.update();
        let w = app.world_mut();
        finished += w
            .resource_mut::<Messages<TextureFinished>>()
            .drain()
            .count();
        let failed: Vec<String> = w
            .resource_mut::<Messages<TextureFailed>>()
            .drain()
            .map(|f| f.error)
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        if finished == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(finished, 4);
    // A pool whose app never drains still shuts down (the waiting worker gives up).
    let mut app2 = common::app(
        dir.path(),
        TarflowSettings {
            event_capacity: 1,
            ..Default::default()
        },
    );
    let m2 = load(&mut app2, "cond.safetensors");
    app2.world_mut().spawn(GenerateTexture::new(m2));
    app2.update();
    std::thread::sleep(Duration::from_millis(100));
    let mon = monitor(&app2);
    drop(app2);
    assert_eq!(mon.stats().threads_alive, 0);
}
