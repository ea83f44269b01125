//! # bevy_tarflow
//!
//! Bevy integration of the [`tarflow`] engine: textures generated at runtime by TarFlow models,
//! painted patch by patch as they are made, without ever stalling a frame.
//!
//! - Model files (`.tarflow.safetensors`) are [`TarflowModel`] assets
//!   (`asset_server.load("models/x.tarflow.safetensors")`), shared between requests through an
//!   `Arc`. The loader claims only that double extension, so other plugins keep plain
//!   `.safetensors`; a model under another name loads through a typed handle
//!   (`asset_server.load::<TarflowModel>("models/x.safetensors")`).
//! - Sprite-sheet atlases (`tarflow sheet`'s `NAME.atlas.json`) are [`TarflowAtlas`] assets, with
//!   Bevy's `TextureAtlasLayout` as the sub-asset `"NAME.atlas.json#layout"`.
//! - A [`GenerateTexture`] component is a request; the [`TarflowTexture`] that comes with it
//!   holds a `Handle<Image>` valid at once, filled in as final patches arrive and replaced by
//!   the finished image at the end. [`TextureProgress`], [`TexturePatched`], [`TextureFinished`]
//!   and [`TextureFailed`] messages name the request's entity.
//! - Generation runs on dedicated worker threads ([`TarflowWorkers`]), on one device opened when
//!   the plugin starts and shared by every worker; despawning the entity or removing the
//!   component cancels it. Dropping the app joins the threads.
//! - Requests made together (the same frame, or while the workers are busy) for the same model
//!   and options (seeds and classes may differ) run as one sampler batch of up to
//!   [`TarflowSettings::max_batch`] (default 16; measured slower than 1 on a 2-core CPU with
//!   denoising on, see its docs), each still byte for byte the texture it would be alone, with its own patches, progress, messages and
//!   cancellation (a cancelled request's share of its batch is dropped; the others go on).
//!   Tileable requests run alone.
//!
//! The systems run in [`TarflowSystems`]: results are painted in `PreUpdate`
//! ([`TarflowSystems::Apply`]) so that a frame's systems see them, and new requests are sent to
//! the workers in `PostUpdate` ([`TarflowSystems::Submit`]) so that requests made in `Update` start
//! in the same frame. The plugin needs `AssetPlugin` and `ImagePlugin` (both in `DefaultPlugins`).
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_tarflow::prelude::*;
//!
//! fn request(mut commands: Commands, assets: Res<AssetServer>) {
//!     let model: Handle<TarflowModel> = assets.load("models/textures16.tarflow.safetensors");
//!     commands.spawn(GenerateTexture::new(model).with_class("stone").with_seed(42));
//! }
//!
//! fn done(mut finished: MessageReader<TextureFinished>) {
//!     for f in finished.read() {
//!         println!("texture of {} is ready: {:?}", f.entity, f.image);
//!     }
//! }
//!
//! App::new()
//!     .add_plugins((MinimalPlugins, AssetPlugin::default(), ImagePlugin::default()))
//!     .add_plugins(TarflowPlugin::default())
//!     .add_systems(Startup, request)
//!     .add_systems(Update, done)
//!     .run();
//! ```
#![warn(missing_docs)]

pub mod asset;
pub mod atlas;
pub mod messages;
pub mod request;
pub mod settings;
mod systems;
pub mod tileset;
pub mod worker;

pub use asset::{MODEL_EXTENSION, TarflowModel, TarflowModelLoader};
pub use atlas::{TarflowAtlas, TarflowAtlasLoader, texture_atlas_layout};
pub use messages::{PatchRegion, TextureFailed, TextureFinished, TexturePatched, TextureProgress};
pub use request::{GenerateTexture, TarflowTexture, TextureClass, TextureStatus};
pub use settings::TarflowSettings;
pub use tileset::{
    GenerateTileset, TarflowTileset, TilesetFailed, TilesetFinished, TilesetStatus,
    TilesetTileFinished,
};
pub use worker::{TarflowWorkers, WorkerMonitor, WorkerStats};

use bevy::prelude::*;

/// The types a game needs.
pub mod prelude {
    pub use crate::asset::TarflowModel;
    pub use crate::atlas::TarflowAtlas;
    pub use crate::messages::{
        PatchRegion, TextureFailed, TextureFinished, TexturePatched, TextureProgress,
    };
    pub use crate::request::{GenerateTexture, TarflowTexture, TextureClass, TextureStatus};
    pub use crate::settings::TarflowSettings;
    pub use crate::tileset::{
        GenerateTileset, TarflowTileset, TilesetFailed, TilesetFinished, TilesetStatus,
        TilesetTileFinished,
    };
    pub use crate::{TarflowPlugin, TarflowSystems};
}

/// The plugin's system sets, for ordering game systems around them.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TarflowSystems {
    /// In `PreUpdate`: take in what the workers made (within the per-frame patch budget), paint
    /// it into the textures and write the messages.
    Apply,
    /// In `PostUpdate`: send requests whose model has loaded to the workers, fail those that
    /// cannot run, and restart requests changed in place.
    Submit,
}

/// Registers TarFlow models as assets, starts the worker threads, and generates the textures
/// of [`GenerateTexture`] requests.
///
/// ```no_run
/// # use bevy::prelude::*;
/// # use bevy_tarflow::prelude::*;
/// App::new().add_plugins(TarflowPlugin {
///     settings: TarflowSettings { workers: 2, patches_per_frame: 256, ..default() },
/// });
/// ```
#[derive(Debug, Default, Clone)]
pub struct TarflowPlugin {
    /// Worker threads, device, per-frame budget (also available as a resource).
    pub settings: TarflowSettings,
}

impl Plugin for TarflowPlugin {
    fn build(&self, app: &mut App) {
        app.init_asset::<TarflowModel>()
            .init_asset_loader::<TarflowModelLoader>()
            .init_asset::<TarflowAtlas>()
            .init_asset_loader::<TarflowAtlasLoader>()
            .insert_resource(self.settings.clone())
            .init_resource::<systems::TarflowJobs>()
            .insert_resource(TarflowWorkers::start(&self.settings))
            .add_message::<TextureProgress>()
            .add_message::<TexturePatched>()
            .add_message::<TextureFinished>()
            .add_message::<TextureFailed>()
            .init_resource::<tileset::TilesetJobs>()
            .add_message::<TilesetTileFinished>()
            .add_message::<TilesetFinished>()
            .add_message::<TilesetFailed>()
            .configure_sets(PreUpdate, TarflowSystems::Apply)
            .configure_sets(PostUpdate, TarflowSystems::Submit)
            .add_systems(
                PreUpdate,
                (systems::apply_results, tileset::apply_tilesets).in_set(TarflowSystems::Apply),
            )
            .add_systems(
                PostUpdate,
                (
                    systems::submit_requests.in_set(TarflowSystems::Submit),
                    tileset::submit_tilesets.in_set(TarflowSystems::Submit),
                    systems::prune_samplers.after(TarflowSystems::Submit),
                ),
            );
    }

    fn finish(&self, app: &mut App) {
        if !app.world().contains_resource::<Assets<Image>>() {
            tracing::warn!(
                "bevy_tarflow: no ImagePlugin; registering the Image asset for textures"
            );
            app.init_asset::<Image>();
        }
        // Atlas layouts are sub-assets of our atlases; Bevy's `TextureAtlasPlugin` may be absent.
        if !app
            .world()
            .contains_resource::<Assets<bevy::image::TextureAtlasLayout>>()
        {
            app.init_asset::<bevy::image::TextureAtlasLayout>();
        }
    }
}
