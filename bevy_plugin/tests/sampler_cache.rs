//! The workers' prepared samplers follow the model assets: a model that is unloaded (every
//! handle dropped) no longer has its sampler held by the workers, without any further request.

mod common;

use std::time::Duration;

use bevy::ecs::message::Messages;
use bevy::prelude::*;
use bevy_tarflow::prelude::*;

use common::{app, load, monitor, write_cond_model};

#[test]
fn an_unloaded_models_sampler_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors", Some(0.05));
    let mut app = app(dir.path(), TarflowSettings::default());
    let model = load(&mut app, "cond.safetensors");
    let entity = app
        .world_mut()
        .spawn(GenerateTexture::new(model.clone()).with_class(1))
        .id();
    let mut done = false;
    for _ in 0..3000 {
        app.update();
        let w = app.world_mut();
        let finished = w
            .resource_mut::<Messages<TextureFinished>>()
            .drain()
            .count();
        let failed: Vec<String> = w
            .resource_mut::<Messages<TextureFailed>>()
            .drain()
            .map(|f| f.error)
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        if finished > 0 {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(done, "the texture did not finish");
    assert_eq!(monitor(&app).stats().models_cached, 1);
    // Unload: the request goes, and with it the last handle.
    app.world_mut().entity_mut(entity).despawn();
    drop(model);
    for _ in 0..50 {
        app.update();
        if monitor(&app).stats().models_cached == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(monitor(&app).stats().models_cached, 0);
    assert_eq!(monitor(&app).stats().models_prepared, 1);
}
