//! Measured harness: how long `app.update()` takes while 16 textures generate, against the same
//! app idle. Frames are paced at 60 per second, as a game's would be.
//!
//! ```text
//! cargo run -p bevy_tarflow --example update_times -- [--workers N] [--textures N] [--max-batch N] [MODEL.safetensors]
//! ```
//!
//! Without a model file, the S16 workload of the design's targets is used with random weights:
//! 16x16 RGBA, patch 2, 256 channels, 4 blocks x 2 layers, 8 classes, guidance 1.5, denoising on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use tarflow::model::{InitOptions, init_weights};
use tarflow::{Model, ModelConfig};

const FRAME: Duration = Duration::from_micros(16_667);

fn s16() -> tarflow::Result<Model> {
    let mut cfg = ModelConfig::new(4, 16, 2, 256, 4, 2);
    cfg.num_classes = 8;
    cfg.noise_sigma = 0.05;
    let device = tarflow::candle::Device::Cpu;
    let weights = init_weights(
        &cfg,
        11,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &device,
    )?;
    Model::from_weights(cfg, &weights, &device)
}

struct Summary {
    frames: usize,
    mean: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn summary(mut times: Vec<Duration>) -> Summary {
    times.sort();
    let n = times.len().max(1);
    let at = |q: f64| times[((q * (n as f64 - 1.0)).round() as usize).min(n - 1)];
    Summary {
        frames: times.len(),
        mean: times.iter().sum::<Duration>() / n as u32,
        p50: at(0.50),
        p99: at(0.99),
        max: times.last().copied().unwrap_or_default(),
    }
}

fn print(name: &str, s: &Summary) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<6} frames {:>5}  mean {:>7.3} ms  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        s.frames,
        ms(s.mean),
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
}

/// One paced frame: its `update()` time.
fn frame(app: &mut App) -> Duration {
    let t = Instant::now();
    app.update();
    let took = t.elapsed();
    if let Some(rest) = FRAME.checked_sub(took) {
        std::thread::sleep(rest);
    }
    took
}

#[derive(Resource, Default)]
struct Tally {
    finished: usize,
    failed: usize,
    max_patches_per_frame: usize,
}

fn tally(
    mut finished: MessageReader<TextureFinished>,
    mut failed: MessageReader<TextureFailed>,
    mut patched: MessageReader<TexturePatched>,
    mut tally: ResMut<Tally>,
) {
    tally.finished += finished.read().count();
    for f in failed.read() {
        eprintln!("failed: {}", f.error);
        tally.failed += 1;
    }
    let n: usize = patched.read().map(|p| p.patches.len()).sum();
    tally.max_patches_per_frame = tally.max_patches_per_frame.max(n);
}

#[derive(Resource)]
struct Spawn {
    model: Handle<TarflowModel>,
    count: u64,
    armed: bool,
}

/// Spawns the requests inside a frame, so that their cost is measured too.
fn spawn(mut commands: Commands, mut spawn: ResMut<Spawn>) {
    if !spawn.armed {
        return;
    }
    spawn.armed = false;
    for seed in 0..spawn.count {
        commands.spawn(
            GenerateTexture::new(spawn.model.clone())
                .with_class((seed % 8) as usize)
                .with_seed(seed)
                .with_guidance(1.5),
        );
    }
}

fn main() {
    let mut workers = 1usize;
    let mut count = 16u64;
    let mut max_batch = TarflowSettings::default().max_batch;
    let mut path: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" => workers = args.next().and_then(|v| v.parse().ok()).unwrap_or(workers),
            "--textures" => count = args.next().and_then(|v| v.parse().ok()).unwrap_or(count),
            "--max-batch" => {
                max_batch = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(max_batch)
            }
            other => path = Some(PathBuf::from(other)),
        }
    }
    let model = match &path {
        Some(p) => tarflow::format::load_model(p, &tarflow::candle::Device::Cpu),
        None => s16(),
    };
    let model = match model {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot make the model: {e}");
            std::process::exit(1);
        }
    };
    let cfg = model.config().clone();
    println!(
        "model: {}x{} x{} channels, patch {}, width {}, {} blocks x {} layers, {} classes; \
         {count} textures, {workers} worker thread(s), max batch {max_batch}, guidance 1.5, \
         denoise on",
        cfg.img_size,
        cfg.img_size,
        cfg.in_channels,
        cfg.patch_size,
        cfg.channels,
        cfg.num_blocks,
        cfg.layers_per_block,
        cfg.num_classes
    );

    // The engine alone, for comparison: one texture at a time on this thread.
    let direct = tarflow::sample::Sampler::new(&model).and_then(|sampler| {
        let t = Instant::now();
        for seed in 0..4 {
            let opts = tarflow::sample::SampleOptions {
                seed,
                guidance: 1.5,
                ..Default::default()
            };
            sampler.sample(
                &tarflow::sample::Labels::repeat((seed % 8) as i64, 1),
                &opts,
            )?;
        }
        Ok(t.elapsed() / 4)
    });
    match direct {
        Ok(d) => println!(
            "engine alone: {:.1} ms per texture (batch 1, same options)",
            d.as_secs_f64() * 1e3
        ),
        Err(e) => eprintln!("engine alone failed: {e}"),
    }

    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
        TarflowPlugin {
            settings: TarflowSettings {
                workers,
                max_batch,
                ..default()
            },
        },
    ));
    app.finish();
    app.cleanup();
    let handle = app
        .world_mut()
        .resource_mut::<Assets<TarflowModel>>()
        .add(TarflowModel {
            model: Arc::new(model),
        });
    app.insert_resource(Spawn {
        model: handle,
        count,
        armed: false,
    })
    .init_resource::<Tally>()
    .add_systems(Update, (spawn, tally));

    // Warm up, then the idle app.
    for _ in 0..60 {
        frame(&mut app);
    }
    let idle: Vec<Duration> = (0..600).map(|_| frame(&mut app)).collect();

    // The same app while the textures generate.
    app.world_mut().resource_mut::<Spawn>().armed = true;
    let start = Instant::now();
    let mut busy = Vec::new();
    while {
        let t = app.world().resource::<Tally>();
        (t.finished + t.failed) < count as usize
    } {
        busy.push(frame(&mut app));
        if start.elapsed() > Duration::from_secs(600) {
            eprintln!("gave up after 600 s");
            break;
        }
    }
    let wall = start.elapsed();
    let tally = app.world().resource::<Tally>();
    print("idle", &summary(idle));
    print("busy", &summary(busy));
    println!(
        "{} textures finished ({} failed) in {:.2} s ({:.2} textures/s); at most {} patches \
         painted in one frame",
        tally.finished,
        tally.failed,
        wall.as_secs_f64(),
        tally.finished as f64 / wall.as_secs_f64(),
        tally.max_patches_per_frame
    );
}
