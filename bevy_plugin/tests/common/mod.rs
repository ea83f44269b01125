//! Helpers shared by the plugin's integration tests: the golden model on disk, a slow random
//! model, a headless app with the plugin, and asset loading bounded in frames.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bevy::asset::{AssetPlugin, LoadState};
use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use bevy_tarflow::{TarflowWorkers, WorkerMonitor};
use tarflow::candle::Device;
use tarflow::format::{ConfigHints, load_reference, save_model};
use tarflow::model::{InitOptions, init_weights};
use tarflow::{DeviceChoice, Model, ModelConfig};

/// The device the tests run on: `TARFLOW_TEST_DEVICE` (`cpu` when unset; `cuda`, `cuda:N`,
/// `metal`). Panics with the reason when this build cannot use it. [`app`] gives it to the
/// plugin's settings.
pub fn test_device() -> DeviceChoice {
    tarflow::testing::from_test_env().unwrap_or_else(|e| panic!("{e}"))
}

/// [`test_device`], opened.
pub fn device() -> Device {
    tarflow::testing::open_test_device().unwrap_or_else(|e| panic!("{e}"))
}

/// A file of `../shared/golden`.
pub fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden")
        .join(name)
}

/// The golden conditional model (8x8 RGBA, patch 2, 3 classes, 4 blocks) with class names
/// (and `noise_sigma` when given, so that denoising runs), saved as `name` in `dir`.
pub fn write_cond_model(dir: &Path, name: &str, noise_sigma: Option<f32>) -> PathBuf {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("cond.json")).unwrap()).unwrap();
    let config = serde_json::from_value(json["config"].clone()).unwrap();
    let mut model = load_reference(
        &golden("cond.pth"),
        Some(config),
        ConfigHints::default(),
        &Device::Cpu,
    )
    .unwrap();
    model.config_mut().class_names = ["stone", "wood", "grass"].map(String::from).to_vec();
    if let Some(sigma) = noise_sigma {
        model.config_mut().noise_sigma = sigma;
    }
    let path = dir.join(name);
    save_model(&model, &path).unwrap();
    path
}

/// A random model slow enough to still be running a while after it starts (N = 256 patches),
/// with `classes` classes.
pub fn slow_model(classes: usize) -> TarflowModel {
    let mut cfg = ModelConfig::new(4, 32, 2, 128, 4, 2);
    cfg.num_classes = classes;
    let w = init_weights(
        &cfg,
        3,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &device(),
    )
    .unwrap();
    TarflowModel {
        model: Arc::new(Model::from_weights(cfg, &w, &device()).unwrap()),
    }
}

/// A headless app (`MinimalPlugins`, assets from `root`, images) with the plugin, sampling on
/// [`test_device`] when `settings` names the default device (the CPU); a test that asks for
/// another device keeps it.
pub fn app(root: &Path, mut settings: TarflowSettings) -> App {
    if settings.device == DeviceChoice::Cpu {
        settings.device = test_device();
    }
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: root.to_string_lossy().into_owned(),
            ..Default::default()
        },
        ImagePlugin::default(),
        TarflowPlugin { settings },
    ));
    app.finish();
    app.cleanup();
    app
}

/// The workers' monitor.
pub fn monitor(app: &App) -> WorkerMonitor {
    app.world().resource::<TarflowWorkers>().monitor()
}

/// Load model asset `name`, updating the app until it is loaded (panics after 2000 frames or
/// when the load fails).
pub fn load(app: &mut App, name: &str) -> Handle<TarflowModel> {
    let handle: Handle<TarflowModel> = app.world().resource::<AssetServer>().load(name.to_string());
    for _ in 0..2000 {
        app.update();
        match app.world().resource::<AssetServer>().load_state(&handle) {
            LoadState::Loaded => return handle,
            LoadState::Failed(e) => panic!("{name} failed to load: {e}"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    panic!("{name} did not load within 2000 frames");
}
