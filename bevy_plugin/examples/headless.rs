//! Generate textures with no window and save them as PNG files.
//!
//! ```text
//! cargo run -p bevy_tarflow --example headless -- [MODEL.safetensors] [--count N] [--out DIR]
//! ```
//!
//! With no model file (and no `assets/models/textures16.tarflow.safetensors` in the workspace), a model
//! with random weights is used: the textures are noise, but every part of the pipeline runs.
//! Runs in CI-like environments: `MinimalPlugins`, no GPU, no display.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use tarflow::model::{InitOptions, init_weights};
use tarflow::{Model, ModelConfig};

#[derive(Resource)]
struct Job {
    model: Handle<TarflowModel>,
    count: u64,
    out: PathBuf,
    done: u64,
}

/// A 16x16 RGBA model with 4 classes and random weights.
fn random_model() -> tarflow::Result<Model> {
    let mut cfg = ModelConfig::new(4, 16, 2, 128, 4, 1);
    cfg.num_classes = 4;
    cfg.class_names = ["stone", "wood", "grass", "tools"]
        .map(String::from)
        .to_vec();
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

fn main() -> AppExit {
    let mut model_path: Option<PathBuf> = None;
    let mut count = 8u64;
    let mut out = PathBuf::from("target/tarflow-headless");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--count" => count = args.next().and_then(|v| v.parse().ok()).unwrap_or(count),
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            other => model_path = Some(PathBuf::from(other)),
        }
    }
    let demo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models/textures16.tarflow.safetensors");
    if model_path.is_none() && demo.exists() {
        model_path = Some(demo);
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("cannot create {}: {e}", out.display());
        return AppExit::error();
    }

    let mut app = App::new();
    let root = model_path
        .as_ref()
        .and_then(|p| p.parent())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    app.add_plugins((
        MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
            1.0 / 60.0,
        ))),
        AssetPlugin {
            file_path: root,
            ..default()
        },
        ImagePlugin::default(),
        TarflowPlugin::default(),
    ));
    let model = match &model_path {
        Some(path) => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            println!("model: {}", path.display());
            app.world()
                .resource::<AssetServer>()
                .load(name.unwrap_or_default())
        }
        None => match random_model() {
            Ok(model) => {
                println!("model: random weights (no model file given)");
                app.world_mut()
                    .resource_mut::<Assets<TarflowModel>>()
                    .add(TarflowModel {
                        model: Arc::new(model),
                    })
            }
            Err(e) => {
                eprintln!("cannot make a model: {e}");
                return AppExit::error();
            }
        },
    };
    app.insert_resource(Job {
        model,
        count,
        out,
        done: 0,
    })
    .add_systems(Startup, request)
    .add_systems(Update, (report, save));
    app.run()
}

fn request(mut commands: Commands, job: Res<Job>) {
    for seed in 0..job.count {
        // Classes by index, cycling; a model without classes would fail these requests, so ask
        // for unconditional textures in turn too.
        let class = if seed % 2 == 0 {
            TextureClass::Id((seed / 2) as usize % 4)
        } else {
            TextureClass::Unconditional
        };
        commands.spawn(
            GenerateTexture::new(job.model.clone())
                .with_class(class)
                .with_seed(seed),
        );
    }
}

fn report(mut progress: MessageReader<TextureProgress>, time: Res<Time>) {
    let last = progress.read().last();
    if let Some(p) = last {
        println!(
            "[{:6.2}s] {}: {}/{} steps",
            time.elapsed_secs(),
            p.entity,
            p.done,
            p.total
        );
    }
}

fn save(
    mut finished: MessageReader<TextureFinished>,
    mut failed: MessageReader<TextureFailed>,
    requests: Query<&GenerateTexture>,
    images: Res<Assets<Image>>,
    mut job: ResMut<Job>,
    mut exit: MessageWriter<AppExit>,
) {
    for f in finished.read() {
        job.done += 1;
        let (Some(image), Ok(request)) = (images.get(&f.image), requests.get(f.entity)) else {
            continue;
        };
        let Some(data) = &image.data else {
            continue;
        };
        let path = job.out.join(format!("texture-{:02}.png", request.seed));
        match image::save_buffer(
            &path,
            data,
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgba8,
        ) {
            Ok(()) => println!("saved {}", path.display()),
            Err(e) => eprintln!("cannot save {}: {e}", path.display()),
        }
    }
    for f in failed.read() {
        job.done += 1;
        eprintln!("request {} failed: {}", f.entity, f.error);
    }
    if job.done >= job.count {
        exit.write(AppExit::Success);
    }
}
