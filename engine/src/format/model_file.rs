//! Our model file: one `.safetensors` with the reference's tensor names and the
//! [`ModelConfig`] as JSON in `__metadata__["config"]`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device};
use safetensors::{Dtype, SafeTensorError, SafeTensors, tensor::TensorView};

use super::atomic::write_atomic;
use crate::config::{MAX_WEIGHT_BYTES, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{Model, Weights};

/// `__metadata__` key holding the config JSON.
pub const META_CONFIG: &str = "config";
/// `__metadata__` key naming the format.
pub const META_FORMAT: &str = "format";
/// Value of [`META_FORMAT`] in our files.
pub const FORMAT_NAME: &str = "tarflow";
/// `__metadata__` key with the format version.
pub const META_VERSION: &str = "format_version";
/// The format version this build writes.
pub const FORMAT_VERSION: &str = "1";

/// The tensors of a `.safetensors` file and its `__metadata__`.
#[derive(Debug)]
pub struct SafetensorsContents {
    /// Tensors by name, on the requested device, in their stored dtype.
    pub tensors: Weights,
    /// The string map from `__metadata__` (empty if none).
    pub metadata: HashMap<String, String>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason: format!("not a valid model file: {}", reason.into()),
    }
}

fn explain(e: SafeTensorError) -> String {
    match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            "the file is truncated: its header promises more tensor data than the file holds".into()
        }
        SafeTensorError::HeaderTooSmall => {
            "the file is too short to hold a safetensors header".into()
        }
        SafeTensorError::InvalidHeaderLength => {
            "the header length runs past the end of the file (truncated or not safetensors)".into()
        }
        other => other.to_string(),
    }
}

/// Read a file into memory, refusing sizes no model can have.
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len() as u128;
    if len > 2 * MAX_WEIGHT_BYTES {
        return Err(Error::TooLarge {
            what: format!("reading {}", path.display()),
            bytes: len,
            limit: 2 * MAX_WEIGHT_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Read every tensor and the metadata of a `.safetensors` file.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<SafetensorsContents> {
    parse_safetensors(&read_bounded(path)?, path, device)
}

/// Parse safetensors bytes; `path` names the source in errors.
pub fn parse_safetensors(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<SafetensorsContents> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(path, explain(e)))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(path, explain(e)))?;
    let mut tensors = Weights::new();
    for (name, view) in st.tensors() {
        let t = view
            .load(device)
            .map_err(|e| bad(path, format!("tensor `{name}` cannot be read: {e}")))?;
        tensors.insert(name, t);
    }
    Ok(SafetensorsContents { tensors, metadata })
}

/// Most bytes a model file's header may take (the tensors' JSON index and the config).
pub const MAX_HEADER_BYTES: u64 = 64 << 20;

/// The config of a model file and the bytes of its tensor data, from its first 8 bytes
/// (`prefix`, the header's length) and its header, checked before any tensor data is read: the
/// config must be valid and the header must list exactly the tensors of the model it describes
/// ([`ModelNames::state_dict`](crate::model::ModelNames::state_dict)), each of its shape and of
/// a float type. What a loader reads then is bounded by what the model needs.
pub fn check_model_header(
    prefix: &[u8; 8],
    header: &[u8],
    path: &Path,
) -> Result<(ModelConfig, u64)> {
    let n = u64::from_le_bytes(*prefix);
    if n != header.len() as u64 {
        return Err(bad(
            path,
            format!("{} header bytes read, {n} announced", header.len()),
        ));
    }
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(header)
        .map_err(|e| bad(path, format!("its header is not a safetensors header: {e}")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_CONFIG))
        .ok_or_else(|| {
            bad(
                path,
                "no TarFlow config in its metadata; if it is a PyTorch state_dict, import it \
             (`tarflow import`, or `load_reference` with a config)",
            )
        })?;
    let config = ModelConfig::from_json(json).map_err(|e| bad(path, e.to_string()))?;
    validate_in_file(&config, path)?;
    let expected: HashMap<String, Vec<usize>> = crate::model::ModelNames::default()
        .state_dict(&config)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let found = meta.tensors();
    let source_name = Some(path.to_path_buf());
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    for name in names {
        let shape = &expected[name];
        match found.get(name) {
            None => {
                return Err(Error::MissingTensor {
                    source_name,
                    name: name.clone(),
                    expected: shape.clone(),
                });
            }
            Some(info) if &info.shape != shape => {
                return Err(Error::ShapeMismatch {
                    source_name,
                    name: name.clone(),
                    expected: shape.clone(),
                    found: info.shape.clone(),
                });
            }
            Some(info)
                if !matches!(
                    info.dtype,
                    Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
                ) =>
            {
                return Err(bad(
                    path,
                    format!(
                        "tensor `{name}` is of type {:?}, not a float type",
                        info.dtype
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(Error::ConfigMismatch {
            source_name,
            reason: format!(
                "{} tensor(s) that a model with {} does not have: {}",
                extra.len(),
                config.describe_layers(),
                extra
                    .iter()
                    .take(5)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let data = found
        .values()
        .map(|i| i.data_offsets.1 as u64)
        .max()
        .unwrap_or(0);
    Ok((config, data))
}

/// `config.validate()`, the error naming the file.
fn validate_in_file(config: &ModelConfig, path: &Path) -> Result<()> {
    config.validate().map_err(|e| match e {
        Error::TooLarge { what, bytes, limit } => Error::TooLarge {
            what: format!("{}: {what}", path.display()),
            bytes,
            limit,
        },
        e => bad(path, e.to_string()),
    })
}

/// Load a model saved in our format (config in the metadata). The header is read and checked
/// against the config first ([`check_model_header`]); the tensor data is read only when the
/// file's size is what that model needs.
pub fn load_model(path: &Path, device: &Device) -> Result<Model> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| bad(path, "the file is too short to hold a safetensors header"))?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_BYTES || n > len - 8 {
        return Err(bad(
            path,
            format!("a header of {n} bytes announced in a file of {len} bytes"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let (config, data) = check_model_header(&prefix, &header, path)?;
    let held = len - 8 - n;
    if held != data {
        return Err(bad(
            path,
            format!(
                "{}: its header describes {data} bytes of tensor data, the file holds {held}",
                if held < data {
                    "the file is truncated"
                } else {
                    "bytes follow the tensor data"
                }
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    bytes.extend_from_slice(&prefix);
    bytes.extend_from_slice(&header);
    file.read_to_end(&mut bytes).map_err(io)?;
    checked_model(&bytes, config, path, device)
}

/// Load a model in our format from bytes already in memory (e.g. from an asset reader);
/// `path` names the source in errors.
pub fn model_from_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<Model> {
    // The config first, from the header alone: a file whose config is absurd or inconsistent is
    // refused before any tensor is read.
    // `read_metadata` checks that the header and the data it describes fit in `bytes`.
    SafeTensors::read_metadata(bytes).map_err(|e| bad(path, explain(e)))?;
    let prefix: [u8; 8] = bytes[..8].try_into().map_err(|_| bad(path, "too short"))?;
    let n = u64::from_le_bytes(prefix) as usize;
    let (config, _) = check_model_header(&prefix, &bytes[8..8 + n], path)?;
    checked_model(bytes, config, path, device)
}

/// The model of `config` from the file's `bytes`, whose header [`check_model_header`] passed.
fn checked_model(bytes: &[u8], config: ModelConfig, path: &Path, device: &Device) -> Result<Model> {
    let contents = parse_safetensors(bytes, path, device)?;
    Model::from_weights(config, &contents.tensors, device).map_err(|e| e.in_file(path))
}

/// Serialise a set of f32 tensors and metadata to safetensors bytes.
pub fn safetensors_bytes(tensors: &Weights, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::InvalidInput(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::InvalidInput(format!("cannot serialise: {e}")))
}

/// The metadata our files carry for `config`.
pub fn model_metadata(config: &ModelConfig) -> HashMap<String, String> {
    HashMap::from([
        (META_FORMAT.to_string(), FORMAT_NAME.to_string()),
        (META_VERSION.to_string(), FORMAT_VERSION.to_string()),
        (META_CONFIG.to_string(), config.to_json()),
    ])
}

/// Save `model` in our format, atomically (temp file, fsync, rename).
pub fn save_model(model: &Model, path: &Path) -> Result<()> {
    let bytes = safetensors_bytes(&model.weights()?, model_metadata(model.config()))?;
    write_atomic(path, &bytes)
}

/// Save weights in the reference's layout only (no config), loadable by PyTorch's
/// `Model.load_state_dict(safetensors.torch.load_file(path))`. A learned denoiser is left
/// out: the reference has none.
///
/// A model whose blocks read their patches in another order than the reference's (raster,
/// reversed in odd blocks) is refused: the reference would load its weights and compute
/// something else.
pub fn save_reference_safetensors(model: &Model, path: &Path) -> Result<()> {
    let c = model.config();
    if !c.block_layers.is_empty() {
        return Err(Error::InvalidInput(format!(
            "the model's flow blocks have different layer counts ({}); the reference \
             (apple/ml-tarflow) takes one layers_per_block for every block",
            c.describe_layers()
        )));
    }
    if c.soft_clip > 0.0 {
        return Err(Error::InvalidInput(format!(
            "the model soft-clips proj_out at {} (STARFlow's soft_clip); the reference \
             (apple/ml-tarflow) has no such clip and would compute another flow with these weights",
            c.soft_clip
        )));
    }
    if let Some(r) = c.noise_range {
        return Err(Error::InvalidInput(format!(
            "the model is noise-conditional (levels {}, iTARFlow's time embedding); the \
             reference (apple/ml-tarflow) has no time embedding and cannot load it",
            r.show()
        )));
    }
    if !c.reference_orders() {
        return Err(Error::InvalidInput(format!(
            "the model's blocks read their patches in the orders {}; the reference \
             (apple/ml-tarflow) has raster order only and would compute another flow with \
             these weights",
            crate::config::Order::show_list(&c.orders)
        )));
    }
    // The learned denoiser is ours (STARFlow's idea, not ml-tarflow's): the reference gets the
    // flow alone.
    let bytes = safetensors_bytes(&model.without_denoiser().weights()?, HashMap::new())?;
    write_atomic(path, &bytes)
}

/// Serialise tensors of any dtype (f32 latents, int64 labels...) keeping their dtypes.
pub fn tensors_to_bytes(tensors: &Weights, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let cpu: Vec<(String, candle_core::Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .map_err(|e| Error::InvalidInput(format!("cannot serialise: {e}")))
}
