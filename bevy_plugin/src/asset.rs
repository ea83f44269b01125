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

/// The asset's path and all its bytes, at most [`MAX_ATLAS_BYTES`] (a read error names the
/// path): what the atlas loader starts with.
pub(crate) async fn read_asset(
    reader: &mut dyn Reader,
    load_context: &LoadContext<'_>,
) -> Result<(PathBuf, Vec<u8>), tarflow::Error> {
    use bevy::tasks::futures_lite::AsyncReadExt;
    let path = PathBuf::from(load_context.path().to_string());
    let mut bytes = Vec::new();
    (&mut *reader)
        .take(MAX_ATLAS_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| tarflow::Error::Io {
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_ATLAS_BYTES {
        return Err(tarflow::Error::TooLarge {
            what: format!("reading {}", path.display()),
            bytes: u128::from(MAX_ATLAS_BYTES) + 1,
            limit: u128::from(MAX_ATLAS_BYTES),
        });
    }
    Ok((path, bytes))
}

/// Most bytes an atlas (JSON) asset may have: a sheet of a million frames takes about 200 MB.
const MAX_ATLAS_BYTES: u64 = 256 << 20;

/// A model file's bytes, read header first: its config and tensor list are checked
/// (`tarflow::format::check_model_header`) before any tensor data is read, and then exactly the
/// data that model needs is read, so a hostile asset cannot make the game allocate more.
async fn read_model_asset(
    reader: &mut dyn Reader,
    load_context: &LoadContext<'_>,
) -> Result<(PathBuf, Vec<u8>), tarflow::Error> {
    use bevy::tasks::futures_lite::AsyncReadExt;
    let path = PathBuf::from(load_context.path().to_string());
    let bad = |reason: String| tarflow::Error::BadFile {
        path: path.clone(),
        reason: format!("not a valid model file: {reason}"),
    };
    let io = |source| tarflow::Error::Io {
        path: path.clone(),
        source,
    };
    let mut prefix = [0u8; 8];
    reader
        .read_exact(&mut prefix)
        .await
        .map_err(|_| bad("too short to hold a safetensors header".into()))?;
    let n = u64::from_le_bytes(prefix);
    if n > tarflow::format::MAX_HEADER_BYTES {
        return Err(bad(format!("a header of {n} bytes announced")));
    }
    let mut header = vec![0u8; n as usize];
    reader
        .read_exact(&mut header)
        .await
        .map_err(|_| bad(format!("the file ends inside its {n}-byte header")))?;
    let (_, data) = tarflow::format::check_model_header(&prefix, &header, &path)?;
    let mut bytes = Vec::with_capacity(8 + header.len() + data as usize);
    bytes.extend_from_slice(&prefix);
    bytes.extend_from_slice(&header);
    let start = bytes.len();
    (&mut *reader)
        .take(data + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(io)?;
    let got = (bytes.len() - start) as u64;
    if got != data {
        return Err(bad(if got < data {
            format!(
                "the file is truncated: its header describes {data} bytes of tensor data, the \
                 file holds {got}"
            )
        } else {
            format!("bytes follow the {data} bytes of tensor data its header describes")
        }));
    }
    Ok((path, bytes))
}

/// The file extension the model loader registers (`x.tarflow.safetensors`).
pub const MODEL_EXTENSION: &str = "tarflow.safetensors";

/// Loads our model files (safetensors with the config in the metadata) on the CPU. It claims
/// the extension `tarflow.safetensors` only, so that it never takes another plugin's
/// `.safetensors`; Bevy picks it for any path when the handle asks for a [`TarflowModel`]
/// (it is that type's only loader).
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
        let (path, bytes) = read_model_asset(reader, load_context).await?;
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
        &[MODEL_EXTENSION]
    }
}
