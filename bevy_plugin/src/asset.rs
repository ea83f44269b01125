//! [`TarflowModel`]: a model file as a Bevy asset, and its [`TarflowModelLoader`].

use std::path::PathBuf;
use std::sync::Arc;

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, LoadContext};
use bevy::prelude::*;
use tarflow::Model;

/// A loaded TarFlow model. Cloning shares the weights.
#[derive(Asset, TypePath, Debug, Clone)]
pub struct TarflowModel {
    /// The model, shared between requests and threads.
    pub model: Arc<Model>,
}

/// Loads our `.safetensors` model files (config in the metadata) on the CPU.
#[derive(Debug, Default, TypePath)]
pub struct TarflowModelLoader;

impl AssetLoader for TarflowModelLoader {
    type Asset = TarflowModel;
    type Settings = ();
    type Error = tarflow::Error;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &Self::Settings,
        load_context: &mut LoadContext<'_>,
    ) -> Result<Self::Asset, Self::Error> {
        let path = PathBuf::from(load_context.path().to_string());
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|source| tarflow::Error::Io {
                path: path.clone(),
                source,
            })?;
        let model =
            tarflow::format::model_from_bytes(&bytes, &path, &tarflow::candle::Device::Cpu)?;
        Ok(TarflowModel {
            model: Arc::new(model),
        })
    }

    fn extensions(&self) -> &[&str] {
        &["safetensors"]
    }
}
