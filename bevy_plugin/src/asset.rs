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

/// The asset's path and all its bytes (a read error names the path): what our loaders start with.
pub(crate) async fn read_asset(
    reader: &mut dyn Reader,
    load_context: &LoadContext<'_>,
) -> Result<(PathBuf, Vec<u8>), tarflow::Error> {
    let path = PathBuf::from(load_context.path().to_string());
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| tarflow::Error::Io {
            path: path.clone(),
            source,
        })?;
    Ok((path, bytes))
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
        let (path, bytes) = read_asset(reader, load_context).await?;
        // A model file is untrusted input: a panic in the loader (a bug) fails this asset with
        // an error instead of leaving it loading for ever.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tarflow::format::model_from_bytes(&bytes, &path, &tarflow::candle::Device::Cpu)
        }));
        let model = match loaded {
            Ok(result) => result?,
            Err(_) => {
                return Err(tarflow::Error::BadFile {
                    path,
                    reason: "not a valid model file: the model loader panicked on it".into(),
                });
            }
        };
        Ok(TarflowModel {
            model: Arc::new(model),
        })
    }

    fn extensions(&self) -> &[&str] {
        &["safetensors"]
    }
}
