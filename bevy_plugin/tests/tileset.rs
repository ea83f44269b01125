//! `GenerateTileset`: the sheet fills in tile by tile (the uniform tiles first) and ends as the
//! engine's own set for the same model, classes and seed, byte for byte; unknown classes fail
//! with the class named; a despawned request stops.

mod common;

use std::time::Duration;

use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use common::{app, golden, load};
use tarflow::sample::Sampler;
use tarflow::tileset::{Corners, SHEET_CORNERS, generate_tileset};

/// The golden conditional model (8x8 RGBA, 3 classes: stone, wood, grass) from its
/// `.safetensors` state_dict, saved as `name` in `dir`.
fn write_cond_model(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("cond.json")).unwrap()).unwrap();
    let config = serde_json::from_value(json["config"].clone()).unwrap();
    let mut model = tarflow::format::load_reference(
        &golden("cond.weights.safetensors"),
        Some(config),
        tarflow::format::ConfigHints::default(),
        &tarflow::candle::Device::Cpu,
    )
    .unwrap();
    model.config_mut().class_names = ["stone", "wood", "grass"].map(String::from).to_vec();
    let path = dir.join(name);
    tarflow::format::save_model(&model, &path).unwrap();
    path
}

fn request(model: Handle<TarflowModel>) -> GenerateTileset {
    GenerateTileset::new(model, "stone", "grass")
        .with_seed(4)
        .with_rounds(2)
        .with_max_transparent(1.0)
}

/// Update until `done` says so (panics after 20 s).
fn run_until(app: &mut App, mut done: impl FnMut(&mut App) -> bool) {
    let start = std::time::Instant::now();
    while !done(app) {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out");
        app.update();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Resource, Default)]
struct Seen {
    tiles: Vec<usize>,
    finished: usize,
    failed: Vec<String>,
}

fn record(
    mut seen: ResMut<Seen>,
    mut tiles: MessageReader<TilesetTileFinished>,
    mut finished: MessageReader<TilesetFinished>,
    mut failed: MessageReader<TilesetFailed>,
) {
    for t in tiles.read() {
        assert_eq!(Some(t.corners), TarflowTileset::corners(t.tile));
        seen.tiles.push(t.tile);
    }
    seen.finished += finished.read().count();
    seen.failed.extend(failed.read().map(|f| f.error.clone()));
}

#[test]
fn a_tileset_fills_in_tile_by_tile_and_is_the_engines_set() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors");
    let mut app = app(dir.path(), TarflowSettings::default());
    app.init_resource::<Seen>().add_systems(Update, record);
    let model = load(&mut app, "cond.safetensors");
    let entity = app.world_mut().spawn(request(model.clone())).id();
    run_until(&mut app, |app| {
        let seen = app.world().resource::<Seen>();
        seen.finished > 0 || !seen.failed.is_empty()
    });
    let seen = app.world().resource::<Seen>();
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
    assert_eq!(&seen.tiles[..2], &[0, 10], "the uniform tiles come first");
    let mut all = seen.tiles.clone();
    all.sort();
    assert_eq!(all, (0..16).collect::<Vec<_>>());

    let set = app.world().get::<TarflowTileset>(entity).unwrap().clone();
    assert_eq!(set.status(), &TilesetStatus::Finished);
    assert_eq!(set.names, ["stone".to_string(), "grass".to_string()]);
    assert_eq!(set.tile_size, 8);
    assert_eq!(TarflowTileset::index_of(Corners([1, 1, 1, 1])), Some(10));
    assert_eq!(set.layout().textures.len(), 16);
    let image = app
        .world()
        .resource::<Assets<Image>>()
        .get(&set.image)
        .unwrap();
    let shown = image.data.clone().unwrap();

    let assets = app.world().resource::<Assets<TarflowModel>>();
    let m = assets.get(&model).unwrap().model.clone();
    let cfg = m.config();
    let engine = generate_tileset(
        &Sampler::new(&m).unwrap(),
        [Some(0), Some(2)],
        &request(model).options(cfg),
    )
    .unwrap();
    assert_eq!(shown, engine.sheet().unwrap().pixels);
    assert_eq!(SHEET_CORNERS.len(), 16);
}

#[test]
fn unknown_classes_fail_and_a_despawned_request_stops() {
    let dir = tempfile::tempdir().unwrap();
    write_cond_model(dir.path(), "cond.safetensors");
    let mut app = app(dir.path(), TarflowSettings::default());
    app.init_resource::<Seen>().add_systems(Update, record);
    let model = load(&mut app, "cond.safetensors");
    app.world_mut()
        .spawn(GenerateTileset::new(model.clone(), "stone", "lava"));
    run_until(&mut app, |app| {
        !app.world().resource::<Seen>().failed.is_empty()
    });
    let failed = app.world().resource::<Seen>().failed.clone();
    assert!(failed[0].contains("lava"), "{failed:?}");

    let entity = app.world_mut().spawn(request(model)).id();
    run_until(&mut app, |app| {
        !app.world().resource::<Seen>().tiles.is_empty()
    });
    app.world_mut().despawn(entity);
    for _ in 0..50 {
        app.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = app.world().resource::<Seen>();
    assert_eq!(seen.finished, 0);
    assert!(seen.tiles.len() < 16, "{:?}", seen.tiles);
}
