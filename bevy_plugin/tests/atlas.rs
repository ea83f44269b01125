//! Sheet atlases load as Bevy assets: `NAME.atlas.json` gives a `TarflowAtlas`, and
//! `NAME.atlas.json#layout` Bevy's own `TextureAtlasLayout` with the sheet's rectangles; a bad
//! atlas fails to load naming its file.

use bevy::asset::{AssetPlugin, LoadState, UntypedAssetId};
use bevy::image::TextureAtlasLayout;
use bevy::math::{URect, UVec2};
use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use tarflow::sample::SampleOptions;
use tarflow::sheet::{Atlas, SheetLayout};

fn app(root: &std::path::Path) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: root.to_string_lossy().into_owned(),
            ..Default::default()
        },
        ImagePlugin::default(),
        TarflowPlugin::default(),
    ));
    // What `App::run` does first: plugins finish their setup (ours registers
    // `TextureAtlasLayout` when no other plugin has).
    app.finish();
    app.cleanup();
    app
}

fn wait(app: &mut App, id: impl Into<UntypedAssetId> + Copy) -> LoadState {
    for _ in 0..2000 {
        app.update();
        let state = app.world().resource::<AssetServer>().load_state(id.into());
        if !matches!(state, LoadState::Loading | LoadState::NotLoaded) {
            return state;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("asset did not finish loading within 2000 frames");
}

/// The atlas `tarflow sheet --per-class 3 --gap 1` writes for two 16-pixel classes.
fn sheet_atlas() -> Atlas {
    let labels = [Some(0), Some(0), Some(0), Some(1), Some(1), Some(1)];
    let layout = SheetLayout::new(labels.len(), 3, 16, 16, 1).unwrap();
    Atlas::new(
        &layout,
        &labels,
        |c| ["stone", "wood"][c as usize].to_string(),
        "sheet.png".into(),
        "m.safetensors".into(),
        SampleOptions::default(),
    )
    .unwrap()
}

#[test]
fn an_atlas_file_loads_as_bevys_texture_atlas_layout() {
    let dir = tempfile::tempdir().unwrap();
    let atlas = sheet_atlas();
    // As the CLI writes it.
    let json = serde_json::to_string_pretty(&atlas).unwrap();
    std::fs::write(dir.path().join("sheet.atlas.json"), &json).unwrap();
    let mut broken: serde_json::Value = serde_json::from_str(&json).unwrap();
    broken["texture_atlas_layout"]["textures"][2]["max"] = serde_json::json!([999, 16]);
    std::fs::write(dir.path().join("broken.atlas.json"), broken.to_string()).unwrap();

    let mut app = app(dir.path());
    let server = app.world().resource::<AssetServer>().clone();
    let layout: Handle<TextureAtlasLayout> = server.load("sheet.atlas.json#layout");
    let whole: Handle<TarflowAtlas> = server.load("sheet.atlas.json");
    let bad: Handle<TarflowAtlas> = server.load("broken.atlas.json");
    assert!(matches!(wait(&mut app, layout.id()), LoadState::Loaded));
    assert!(matches!(wait(&mut app, whole.id()), LoadState::Loaded));

    let layouts = app.world().resource::<Assets<TextureAtlasLayout>>();
    let l = layouts.get(&layout).expect("the layout sub-asset");
    assert_eq!(l.size, UVec2::new(3 * 16 + 2, 2 * 16 + 1));
    assert_eq!(l.len(), 6);
    assert_eq!(l.textures[0], URect::new(0, 0, 16, 16));
    assert_eq!(
        l.textures[4],
        URect::new(17, 17, 33, 33),
        "wood_1: second row, gap 1"
    );
    let atlases = app.world().resource::<Assets<TarflowAtlas>>();
    let a = atlases.get(&whole).expect("the atlas");
    assert_eq!(a.atlas, atlas);
    assert_eq!(a.index_of("wood_1"), Some(4));
    assert_eq!(a.index_of("glass_0"), None);
    assert_eq!(
        a.layout.id(),
        layout.id(),
        "the labelled layout is the atlas's"
    );

    match wait(&mut app, bad.id()) {
        LoadState::Failed(err) => {
            let msg = err.to_string();
            assert!(
                msg.contains("broken.atlas.json") && msg.contains("rectangle 2"),
                "{msg}"
            );
        }
        other => panic!("a broken atlas should fail to load, got {other:?}"),
    }
}
