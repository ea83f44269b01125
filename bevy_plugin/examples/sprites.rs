//! A window with a 4x4 grid of sprites whose textures fill in patch by patch as they generate.
//! Press `R` (or space) to regenerate them all with new seeds.
//!
//! ```text
//! cargo run -p bevy_tarflow --example sprites --features render
//! ```
//!
//! Uses the bundled 32x32 sprite model `assets/models/sprites32.safetensors` (or, failing that,
//! the 16x16 texture model `textures16.tarflow.safetensors`) at its recommended settings when
//! the workspace has it, a 32x32 model with random weights otherwise. With `TARFLOW_SCREENSHOTS=DIR` set, it saves `DIR/midway.png`
//! as soon as a texture is caught half painted (or, failing that, once half the textures are
//! done), and `DIR/final.png` when all are done, then exits (for runs under Xvfb; see the
//! examples' README). The folder is created if needed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bevy::prelude::*;
use bevy::render::view::window::screenshot::{Screenshot, save_to_disk};
use bevy_tarflow::prelude::*;
use tarflow::model::{InitOptions, init_weights};
use tarflow::{Model, ModelConfig};

const GRID: usize = 4;
const SIDE: f32 = 160.0;
const GAP: f32 = 16.0;
/// With `TARFLOW_SCREENSHOTS`, the longest the example waits for its screenshots before it
/// exits with an error (a run under Xvfb must never hang).
const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(600);

/// The bundled models the example looks for under `assets/`, first found first.
const BUNDLED: [&str; 2] = [
    "models/sprites32.safetensors",
    "models/textures16.tarflow.safetensors",
];

/// A 32x32 RGBA model with 4 classes and random weights.
fn random_model() -> tarflow::Result<Model> {
    let mut cfg = ModelConfig::new(4, 32, 2, 128, 4, 1);
    cfg.num_classes = 4;
    cfg.noise_sigma = 0.05;
    let device = tarflow::candle::Device::Cpu;
    let weights = init_weights(
        &cfg,
        7,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &device,
    )?;
    Model::from_weights(cfg, &weights, &device)
}

#[derive(Resource)]
struct Demo {
    model: Handle<TarflowModel>,
    classes: usize,
    round: u64,
    finished: usize,
    /// Final patches painted so far, per request, this round.
    painted: HashMap<Entity, usize>,
    screenshots: Option<PathBuf>,
    shots: u8,
    exit_in: Option<u32>,
    started: std::time::Instant,
}

fn main() -> AppExit {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets");
    let bundled = BUNDLED.iter().find(|m| assets.join(m).exists());
    let screenshots = std::env::var_os("TARFLOW_SCREENSHOTS").map(PathBuf::from);
    // For screenshots, paint at most 8 patches a frame: the textures fill in over many frames,
    // so the midway shot shows them half painted however fast the workers are.
    let settings = if screenshots.is_some() {
        TarflowSettings {
            patches_per_frame: 8,
            ..default()
        }
    } else {
        TarflowSettings::default()
    };
    let mut app = App::new();
    app.add_plugins((
        DefaultPlugins
            .set(ImagePlugin::default_nearest())
            .set(AssetPlugin {
                file_path: assets.to_string_lossy().into_owned(),
                ..default()
            })
            .set(WindowPlugin {
                primary_window: Some(Window {
                    title: "bevy_tarflow: sprites".into(),
                    resolution: (1024, 768).into(),
                    ..default()
                }),
                ..default()
            }),
        TarflowPlugin { settings },
    ));
    let (model, classes) = if let Some(&path) = bundled {
        info!("model: {}", assets.join(path).display());
        let handle = app.world().resource::<AssetServer>().load(path);
        (handle, 0)
    } else {
        match random_model() {
            Ok(model) => {
                info!(
                    "model: random weights (no bundled model in {})",
                    assets.display()
                );
                let classes = model.config().num_classes;
                let handle =
                    app.world_mut()
                        .resource_mut::<Assets<TarflowModel>>()
                        .add(TarflowModel {
                            model: Arc::new(model),
                        });
                (handle, classes)
            }
            Err(e) => {
                error!("cannot make a model: {e}");
                return AppExit::error();
            }
        }
    };
    if let Some(dir) = &screenshots {
        // The folder may not exist yet: make it now, and fail at once if it cannot be made.
        if let Err(e) = std::fs::create_dir_all(dir) {
            error!("cannot create the screenshot folder {}: {e}", dir.display());
            return AppExit::error();
        }
    }
    app.insert_resource(Demo {
        model,
        classes,
        round: 0,
        finished: 0,
        painted: HashMap::new(),
        screenshots,
        shots: 0,
        exit_in: None,
        started: std::time::Instant::now(),
    })
    .insert_resource(ClearColor(Color::srgb(0.12, 0.12, 0.14)))
    .add_systems(Startup, setup)
    .add_systems(Update, (regenerate, count_and_screenshot));
    info!("press R or space to regenerate with new seeds");
    app.run()
}

/// A request for the sprite at `i` in this round.
fn request(demo: &Demo, models: &Assets<TarflowModel>, i: usize) -> GenerateTexture {
    let config = models.get(&demo.model).map(|m| m.model.config());
    let classes = config.map_or(demo.classes, |c| c.num_classes);
    let class = if classes == 0 {
        TextureClass::Unconditional
    } else {
        TextureClass::Id(i % classes)
    };
    let request = GenerateTexture::new(demo.model.clone())
        .with_class(class)
        .with_seed(demo.round * 1000 + i as u64);
    // The model's recommended settings apply by themselves; a model without them gets the
    // README's guidance.
    match config.and_then(|c| c.sampling.as_ref()) {
        Some(_) => request,
        None => request.with_guidance(if classes == 0 { 0.0 } else { 1.5 }),
    }
}

fn setup(
    mut commands: Commands,
    images: Res<Assets<Image>>,
    models: Res<Assets<TarflowModel>>,
    demo: Res<Demo>,
) {
    commands.spawn(Camera2d);
    let span = GRID as f32 * SIDE + (GRID - 1) as f32 * GAP;
    for i in 0..GRID * GRID {
        let (col, row) = ((i % GRID) as f32, (i / GRID) as f32);
        let x = -span / 2.0 + SIDE / 2.0 + col * (SIDE + GAP);
        let y = span / 2.0 - SIDE / 2.0 - row * (SIDE + GAP);
        // Our own handle, so that the sprite and the request share it from the start.
        let image = images.reserve_handle();
        commands.spawn((
            request(&demo, &models, i),
            TarflowTexture::new(image.clone()),
            Sprite {
                image,
                custom_size: Some(Vec2::splat(SIDE)),
                ..default()
            },
            Transform::from_xyz(x, y, 0.0),
        ));
    }
}

fn regenerate(
    keys: Res<ButtonInput<KeyCode>>,
    mut commands: Commands,
    mut demo: ResMut<Demo>,
    models: Res<Assets<TarflowModel>>,
    sprites: Query<Entity, With<GenerateTexture>>,
) {
    if !(keys.just_pressed(KeyCode::KeyR) || keys.just_pressed(KeyCode::Space)) {
        return;
    }
    demo.round += 1;
    demo.finished = 0;
    demo.painted.clear();
    info!("regenerating, round {}", demo.round);
    for (i, entity) in sprites.iter().sort::<Entity>().enumerate() {
        // Inserting a new request cancels the old one and starts over in the same image.
        commands.entity(entity).insert(request(&demo, &models, i));
    }
}

fn count_and_screenshot(
    mut commands: Commands,
    mut finished: MessageReader<TextureFinished>,
    mut failed: MessageReader<TextureFailed>,
    mut patched: MessageReader<TexturePatched>,
    models: Res<Assets<TarflowModel>>,
    mut demo: ResMut<Demo>,
    mut exit: MessageWriter<AppExit>,
) {
    let total = GRID * GRID;
    for p in patched.read() {
        *demo.painted.entry(p.entity).or_default() += p.patches.len();
    }
    for f in finished.read() {
        demo.painted.remove(&f.entity);
        demo.finished += 1;
    }
    for f in failed.read() {
        error!("request {} failed: {}", f.entity, f.error);
        demo.finished += 1;
    }
    let Some(dir) = demo.screenshots.clone() else {
        return;
    };
    // Midway: the first frame where a texture is caught half painted, or, should patches arrive
    // faster than frames, as soon as half the textures are done, so that both screenshots are
    // always taken.
    let patches = models
        .get(&demo.model)
        .map_or(64, |m| m.model.config().num_patches());
    let half_painted = demo
        .painted
        .values()
        .any(|&n| n >= patches / 4 && n <= 3 * patches / 4);
    let midway = half_painted || demo.finished >= total / 2;
    if demo.shots == 0 && midway {
        demo.shots = 1;
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(dir.join("midway.png")));
    } else if demo.shots == 1 && demo.finished >= total {
        demo.shots = 2;
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(dir.join("final.png")));
        demo.exit_in = Some(60);
    }
    if demo.started.elapsed() > WATCHDOG && demo.exit_in.is_none() {
        error!(
            "no screenshots after {} s ({} of {total} textures done): giving up",
            WATCHDOG.as_secs(),
            demo.finished
        );
        exit.write(AppExit::error());
    }
    if let Some(n) = demo.exit_in.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            exit.write(AppExit::Success);
        }
    }
}
