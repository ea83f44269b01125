//! Sprite-sheet atlases as Bevy assets: the `NAME.atlas.json` that `tarflow sheet` (and
//! `tarflow morph`) write beside their PNGs loads as a [`TarflowAtlas`] (frame names, classes,
//! seeds) whose `layout` sub-asset is Bevy's [`TextureAtlasLayout`].
//!
//! ```no_run
//! use bevy::image::{TextureAtlas, TextureAtlasLayout};
//! use bevy::prelude::*;
//! use bevy_tarflow::prelude::*;
//!
//! #[derive(Resource)]
//! struct Sheet(Handle<TarflowAtlas>);
//!
//! fn load(mut commands: Commands, assets: Res<AssetServer>) {
//!     // The layout alone, by its label (for `Sprite::from_atlas_image(image, atlas)`)...
//!     let layout: Handle<TextureAtlasLayout> = assets.load("sheet.atlas.json#layout");
//!     let _stone = TextureAtlas { layout, index: 3 };
//!     // ...or the whole atlas, to find frames by name once it has loaded.
//!     commands.insert_resource(Sheet(assets.load("sheet.atlas.json")));
//! }
//!
//! fn find(sheet: Res<Sheet>, atlases: Res<Assets<TarflowAtlas>>) {
//!     if let Some(atlas) = atlases.get(&sheet.0) {
//!         println!("stone_3 is frame {:?}", atlas.index_of("stone_3"));
//!     }
//! }
//! ```

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, LoadContext};
use bevy::image::TextureAtlasLayout;
use bevy::math::{URect, UVec2};
use bevy::prelude::*;
use tarflow::sheet::Atlas;

use crate::asset::read_asset;

/// A loaded atlas file: what `tarflow` wrote about each frame, and the frames' rectangles as a
/// [`TextureAtlasLayout`] (also loadable alone as `"NAME.atlas.json#layout"`).
#[derive(Asset, TypePath, Debug, Clone)]
pub struct TarflowAtlas {
    /// The atlas as written (frame names, classes, seed, sampling options, model).
    pub atlas: Atlas,
    /// The layout sub-asset, labelled `layout`.
    pub layout: Handle<TextureAtlasLayout>,
}

impl TarflowAtlas {
    /// The layout index of the frame named `name` (e.g. `stone_3`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.atlas.index_of(name)
    }
}

/// Bevy's layout of an atlas: its sheet size and one rectangle per frame, in frame order.
pub fn texture_atlas_layout(atlas: &Atlas) -> TextureAtlasLayout {
    let [w, h] = atlas.texture_atlas_layout.size;
    let mut layout = TextureAtlasLayout::new_empty(UVec2::new(w, h));
    for r in &atlas.texture_atlas_layout.textures {
        layout.add_texture(URect::new(r.min[0], r.min[1], r.max[0], r.max[1]));
    }
    layout
}

/// Loads `*.atlas.json` files as [`TarflowAtlas`] with a `layout` sub-asset.
#[derive(Debug, Default, TypePath)]
pub struct TarflowAtlasLoader;

impl AssetLoader for TarflowAtlasLoader {
    type Asset = TarflowAtlas;
    type Settings = ();
    type Error = tarflow::Error;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &Self::Settings,
        load_context: &mut LoadContext<'_>,
    ) -> Result<Self::Asset, Self::Error> {
        let (path, bytes) = read_asset(reader, load_context).await?;
        let atlas = Atlas::from_json(&bytes, &path)?;
        let layout = load_context.add_labeled_asset("layout", texture_atlas_layout(&atlas));
        Ok(TarflowAtlas { atlas, layout })
    }

    fn extensions(&self) -> &[&str] {
        &["atlas.json"]
    }
}
