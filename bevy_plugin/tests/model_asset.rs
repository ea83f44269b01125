//! Model files load as Bevy assets through the plugin's loader, and bad files fail to load
//! with the engine's error, on a headless app.

use std::path::PathBuf;

use bevy::asset::{AssetPlugin, LoadState};
use bevy::prelude::*;
use bevy_tarflow::MODEL_EXTENSION;
use bevy_tarflow::prelude::*;
use tarflow::format::{ConfigHints, load_reference, save_model};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden")
        .join(name)
}

/// The reference's small class-conditional model (`../shared/golden/cond.*`).
fn cond_model() -> tarflow::Model {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("cond.json")).unwrap()).unwrap();
    let config = serde_json::from_value(json["config"].clone()).unwrap();
    load_reference(
        &golden("cond.pth"),
        Some(config),
        ConfigHints::default(),
        &tarflow::candle::Device::Cpu,
    )
    .unwrap()
}

fn app(root: &std::path::Path) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: root.to_string_lossy().into_owned(),
            ..Default::default()
        },
        TarflowPlugin::default(),
    ));
    app
}

fn wait(app: &mut App, handle: &Handle<TarflowModel>) -> LoadState {
    for _ in 0..2000 {
        app.update();
        let state = app.world().resource::<AssetServer>().load_state(handle);
        if !matches!(state, LoadState::Loading | LoadState::NotLoaded) {
            return state;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("asset did not finish loading within 2000 frames");
}

#[test]
fn model_file_loads_as_an_asset() {
    let dir = tempfile::tempdir().unwrap();
    let model = cond_model();
    save_model(&model, &dir.path().join("cond.safetensors")).unwrap();
    std::fs::write(dir.path().join("broken.safetensors"), b"not a model").unwrap();
    // The loader reads the header first and then exactly the data it describes.
    let bytes = std::fs::read(dir.path().join("cond.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("cut.safetensors"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 64]);
    std::fs::write(dir.path().join("long.safetensors"), &longer).unwrap();

    let mut app = app(dir.path());
    let good: Handle<TarflowModel> = app
        .world()
        .resource::<AssetServer>()
        .load("cond.safetensors");
    let bad: Handle<TarflowModel> = app
        .world()
        .resource::<AssetServer>()
        .load("broken.safetensors");
    assert!(matches!(wait(&mut app, &good), LoadState::Loaded));
    let assets = app.world().resource::<Assets<TarflowModel>>();
    let loaded = assets.get(&good).expect("loaded model");
    assert_eq!(loaded.model.config(), model.config());
    match wait(&mut app, &bad) {
        LoadState::Failed(err) => {
            let msg = err.to_string();
            assert!(msg.contains("broken.safetensors"), "{msg}");
        }
        other => panic!("a broken file should fail to load, got {other:?}"),
    }
    for (file, says) in [
        ("cut.safetensors", "truncated"),
        ("long.safetensors", "bytes follow"),
    ] {
        let h: Handle<TarflowModel> = app.world().resource::<AssetServer>().load(file);
        match wait(&mut app, &h) {
            LoadState::Failed(err) => {
                let msg = err.to_string();
                assert!(msg.contains(file) && msg.contains(says), "{msg}");
            }
            other => panic!("{file} should fail to load, got {other:?}"),
        }
    }
}

#[test]
fn the_loader_claims_tarflow_safetensors_and_leaves_plain_safetensors_to_other_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let model = cond_model();
    save_model(&model, &dir.path().join("cond.tarflow.safetensors")).unwrap();
    let mut app = app(dir.path());
    let server = app.world().resource::<AssetServer>().clone();
    // By extension (what an untyped or folder load asks): ours is claimed, the plain one not.
    let ours = bevy::tasks::block_on(server.get_asset_loader_with_extension(MODEL_EXTENSION));
    assert!(ours.is_ok(), "no loader for .{MODEL_EXTENSION}");
    assert_eq!(MODEL_EXTENSION, "tarflow.safetensors");
    let plain = bevy::tasks::block_on(server.get_asset_loader_with_extension("safetensors"));
    assert!(
        plain.is_err(),
        "the plugin still claims every .safetensors file"
    );
    // An untyped load of a model file finds our loader from its name alone.
    let untyped = server
        .load_builder()
        .load_untyped("cond.tarflow.safetensors");
    for _ in 0..2000 {
        app.update();
        if !matches!(
            server.load_state(&untyped),
            LoadState::Loading | LoadState::NotLoaded
        ) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(matches!(server.load_state(&untyped), LoadState::Loaded));
    let handle = app
        .world()
        .resource::<Assets<bevy::asset::LoadedUntypedAsset>>()
        .get(&untyped)
        .expect("the untyped load finished")
        .handle
        .clone()
        .typed::<TarflowModel>();
    let loaded = app.world().resource::<Assets<TarflowModel>>();
    assert_eq!(
        loaded.get(&handle).expect("a TarflowModel").model.config(),
        model.config()
    );
}
