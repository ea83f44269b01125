//! The whole product path, as a game team takes it: `tarflow train` on a folder of art writes a
//! model file; `tarflow sample` and `tarflow sheet` generate from it; the Bevy plugin loads the
//! same file as an asset and paints a texture byte-identical to the CLI's, and loads the sheet's
//! atlas as Bevy's `TextureAtlasLayout`. The CLI runs through its library with its own argument
//! parsing (`tarflow_cli::commands`), the plugin on a headless app, both on `TARFLOW_TEST_DEVICE`.

use std::path::Path;
use std::time::Duration;

use bevy::asset::{AssetPlugin, LoadState, UntypedAssetId};
use bevy::ecs::message::Messages;
use bevy::image::TextureAtlasLayout;
use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use clap::Parser;
use tarflow_cli::commands::{sample::SampleArgs, sheet::SheetArgs, train::TrainArgs};

/// A command's arguments parsed as the `tarflow` binary parses them.
#[derive(Parser)]
struct Cmd<A: clap::Args> {
    #[command(flatten)]
    args: A,
}

fn parse<A: clap::Args>(argv: &[&str]) -> A {
    Cmd::<A>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .args
}

/// A game's own art: 12 of the bundled corpus's 32x32 weapon sprites (on transparency) and 12
/// of its opaque floor tiles (CC0, `assets/sprites32/ATTRIBUTION.md`), the first by name.
fn write_art(root: &Path) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sprites32/train");
    for class in ["weapon", "floor"] {
        let mut files: Vec<_> = std::fs::read_dir(corpus.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        files.sort();
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for f in &files[..12] {
            std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        }
    }
}

fn wait(app: &mut App, id: impl Into<UntypedAssetId> + Copy) {
    for _ in 0..3000 {
        app.update();
        match app.world().resource::<AssetServer>().load_state(id.into()) {
            LoadState::Loaded => return,
            LoadState::Failed(e) => panic!("asset failed to load: {e}"),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    panic!("asset did not load within 3000 frames");
}

#[test]
fn cli_train_then_the_plugin_paints_the_clis_texture() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let art = root.join("art");
    write_art(&art);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let model = root.join("game.safetensors");
    // Everything on the test device (`TARFLOW_TEST_DEVICE`, CPU by default): CLI and plugin alike.
    let device = tarflow::testing::from_test_env().unwrap_or_else(|e| panic!("{e}"));
    let dev = device.to_string();

    // 1. Train (a short run of a small model: the path, not the quality, is under test).
    let train: TrainArgs = parse(&[
        "train",
        &s(&art),
        "--out",
        &s(&model),
        "--steps",
        "30",
        "--batch",
        "8",
        "--channels",
        "64",
        "--blocks",
        "2",
        "--layers",
        "1",
        "--noise",
        "0.05",
        "--seed",
        "3",
        "--device",
        &dev,
    ]);
    tarflow_cli::commands::train::run(train).unwrap();
    let trained = tarflow::format::load_model(&model, &tarflow::candle::Device::Cpu).unwrap();
    let cfg = trained.config();
    assert_eq!(
        (
            cfg.img_size,
            cfg.patch_size,
            cfg.in_channels,
            cfg.num_classes
        ),
        (32, 2, 4, 2),
        "32x32 RGBA sprites in 256 tokens"
    );
    assert_eq!(cfg.class_names, ["floor", "weapon"]);

    // 2. The CLI samples one texture and a sheet from the model file.
    let samples = root.join("samples");
    let sample: SampleArgs = parse(&[
        "sample",
        "--model",
        &s(&model),
        "--class",
        "weapon",
        "--count",
        "1",
        "--seed",
        "7",
        "--guidance",
        "1.5",
        "--device",
        &dev,
        "--out",
        &s(&samples),
    ]);
    tarflow_cli::commands::sample::run(sample).unwrap();
    let cli_pixels = image::open(samples.join("sample_0000.png"))
        .unwrap()
        .to_rgba8()
        .into_raw();
    let sheet: SheetArgs = parse(&[
        "sheet",
        "--model",
        &s(&model),
        "--per-class",
        "3",
        "--gap",
        "1",
        "--seed",
        "7",
        "--device",
        &dev,
        "--out",
        &s(&root.join("sheet.png")),
    ]);
    tarflow_cli::commands::sheet::run(sheet).unwrap();

    // 3. The plugin: the same file as an asset, the same request.
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: s(root),
            ..Default::default()
        },
        ImagePlugin::default(),
        TarflowPlugin {
            settings: TarflowSettings {
                device,
                ..Default::default()
            },
        },
    ));
    app.finish();
    app.cleanup();
    let server = app.world().resource::<AssetServer>().clone();
    let handle: Handle<TarflowModel> = server.load("game.safetensors");
    wait(&mut app, handle.id());
    let entity = app
        .world_mut()
        .spawn(
            GenerateTexture::new(handle)
                .with_class("weapon")
                .with_seed(7)
                .with_guidance(1.5),
        )
        .id();
    let image = app
        .world()
        .get::<TarflowTexture>(entity)
        .unwrap()
        .image
        .clone();
    let mut finished = false;
    for _ in 0..5000 {
        app.update();
        let w = app.world_mut();
        if let Some(f) = w.resource_mut::<Messages<TextureFailed>>().drain().next() {
            panic!("the plugin failed: {}", f.error);
        }
        if w.resource_mut::<Messages<TextureFinished>>()
            .drain()
            .any(|f| f.entity == entity)
        {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(finished, "the texture did not finish within 5000 frames");
    let images = app.world().resource::<Assets<Image>>();
    let painted = images.get(&image).unwrap();
    assert_eq!(
        (painted.width(), painted.height()),
        (32, 32),
        "the model's size"
    );
    assert_eq!(
        painted.data.as_deref(),
        Some(cli_pixels.as_slice()),
        "the plugin's texture is the CLI's, byte for byte"
    );
    assert!(
        cli_pixels.chunks(4).any(|p| p != &cli_pixels[..4]),
        "not a flat image"
    );

    // 4. The sheet's atlas as Bevy's layout, rectangles inside the sheet PNG.
    let layout: Handle<TextureAtlasLayout> = server.load("sheet.atlas.json#layout");
    wait(&mut app, layout.id());
    let layouts = app.world().resource::<Assets<TextureAtlasLayout>>();
    let layout = layouts.get(&layout).unwrap();
    let (w, h) = image::image_dimensions(root.join("sheet.png")).unwrap();
    assert_eq!((layout.size.x, layout.size.y), (w, h));
    assert_eq!(
        (w, h),
        (3 * 32 + 2, 2 * 32 + 1),
        "3 per class, one row per class"
    );
    assert_eq!(layout.len(), 6);
    assert_eq!(layout.textures[4].min, UVec2::new(33, 33), "weapon_1");
}
