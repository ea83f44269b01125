//! # bevy_tarflow
//!
//! Bevy integration of the [`tarflow`] engine: TarFlow model files are Bevy assets
//! (`asset_server.load("models/x.safetensors")`), shared between users through an `Arc`.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_tarflow::prelude::*;
//!
//! fn load(mut commands: Commands, assets: Res<AssetServer>) {
//!     let model: Handle<TarflowModel> = assets.load("models/minetest16.safetensors");
//!     commands.spawn(ModelHolder(model));
//! }
//!
//! #[derive(Component)]
//! struct ModelHolder(Handle<TarflowModel>);
//!
//! App::new()
//!     .add_plugins((MinimalPlugins, AssetPlugin::default(), TarflowPlugin))
//!     .add_systems(Startup, load)
//!     .run();
//! ```
#![warn(missing_docs)]

pub mod asset;

pub use asset::{TarflowModel, TarflowModelLoader};

use bevy::prelude::*;

/// The types a game needs.
pub mod prelude {
    pub use crate::TarflowPlugin;
    pub use crate::asset::TarflowModel;
}

/// Registers TarFlow models as assets with their loader.
#[derive(Debug, Default, Clone)]
pub struct TarflowPlugin;

impl Plugin for TarflowPlugin {
    fn build(&self, app: &mut App) {
        app.init_asset::<TarflowModel>()
            .init_asset_loader::<TarflowModelLoader>();
    }
}
