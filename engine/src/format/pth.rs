//! `.pth` checkpoints (`torch.save`'s zip of pickles), read without Python through candle's
//! pickle reader after a bounds check of every entry (`pickle_scan.rs`). Behind the `import`
//! feature (on by default and in the CLI): a game that only loads our model files compiles none
//! of it, and a `.pth` given to it is a clear error.

use std::path::Path;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::model::Weights;

/// The state_dict in the `.pth` archive `bytes` (read from `path`): under `key`, or at the top
/// level, or under the first of [`NESTED_KEYS`](super::reference::NESTED_KEYS) that holds
/// tensors.
#[cfg(not(feature = "import"))]
pub(super) fn read_pth(
    path: &Path,
    _bytes: &[u8],
    _key: Option<&str>,
    _device: &Device,
) -> Result<Weights> {
    Err(Error::BadFile {
        path: path.to_path_buf(),
        reason: "a PyTorch `.pth` archive, and this build of tarflow reads none: enable the \
                 `import` feature (the `tarflow` CLI has it), or convert it with `tarflow import`"
            .into(),
    })
}

#[cfg(feature = "import")]
pub(super) use archive::read_pth;

#[cfg(feature = "import")]
mod archive {
    use super::*;
    use crate::config::MAX_WEIGHT_BYTES;
    use crate::format::reference::NESTED_KEYS;

    fn bad_pth(path: &Path, reason: impl std::fmt::Display) -> Error {
        Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("cannot read it as a PyTorch checkpoint: {reason}"),
        }
    }

    /// Run candle's pickle reader, turning a panic inside it (it indexes tuples without checking
    /// their length) into an error.
    fn guarded<T>(path: &Path, f: impl FnOnce() -> candle_core::Result<T>) -> Result<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r.map_err(|e| bad_pth(path, e)),
            Err(_) => Err(bad_pth(path, "its pickle is malformed")),
        }
    }

    /// Check a `.pth` archive before candle's reader sees it: entries stored uncompressed (as
    /// `torch.save` writes them; candle reads nothing else) and every length-prefixed pickle
    /// argument within its pickle, so that a forged length cannot make the reader allocate
    /// gigabytes. Returns the size of every entry by name.
    fn check_pth(path: &Path, bytes: &[u8]) -> Result<std::collections::HashMap<String, u64>> {
        use std::io::Read;
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| bad_pth(path, format!("not a readable zip archive: {e}")))?;
        let mut sizes = std::collections::HashMap::new();
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| bad_pth(path, format!("zip entry {i}: {e}")))?;
            let name = entry
                .name()
                .map_err(|e| bad_pth(path, format!("zip entry {i}: {e}")))?
                .into_owned();
            if entry.compression() != zip::CompressionMethod::Stored {
                return Err(bad_pth(
                    path,
                    format!(
                        "zip entry `{name}` is compressed; torch.save stores entries as they are"
                    ),
                ));
            }
            if name.ends_with("data.pkl") {
                let mut pickle = Vec::new();
                entry
                    .by_ref()
                    .take(bytes.len() as u64)
                    .read_to_end(&mut pickle)
                    .map_err(|e| bad_pth(path, format!("`{name}`: {e}")))?;
                crate::format::pickle_scan::scan_pickle(&pickle)
                    .map_err(|e| bad_pth(path, format!("`{name}`: {e}")))?;
            }
            sizes.insert(name, entry.size());
        }
        Ok(sizes)
    }

    pub(in crate::format) fn read_pth(
        path: &Path,
        bytes: &[u8],
        key: Option<&str>,
        device: &Device,
    ) -> Result<Weights> {
        let sizes = check_pth(path, bytes)?;
        let read = |key: Option<&str>| -> Result<Weights> {
            let pth = guarded(path, || candle_core::pickle::PthTensors::new(path, key))?;
            // Check every tensor's claimed size against its stored data before candle allocates it.
            let mut total: u128 = 0;
            for (name, info) in pth.tensor_infos() {
                let elems = info
                    .layout
                    .dims()
                    .iter()
                    .try_fold(1u128, |n, &d| n.checked_mul(d as u128));
                let need = elems.and_then(|n| n.checked_mul(info.dtype.size_in_bytes() as u128));
                let have = sizes.get(&info.path).copied().unwrap_or(0) as u128;
                match need {
                    Some(n) if n + info.layout.start_offset() as u128 <= have => total += n,
                    _ => {
                        return Err(bad_pth(
                            path,
                            format!(
                                "tensor `{name}` of shape {:?} ({:?}) needs more data than its \
                                 storage `{}` holds ({have} bytes)",
                                info.layout.dims(),
                                info.dtype,
                                info.path
                            ),
                        ));
                    }
                }
            }
            if total > MAX_WEIGHT_BYTES {
                return Err(Error::TooLarge {
                    what: format!("the tensors of {}", path.display()),
                    bytes: total,
                    limit: MAX_WEIGHT_BYTES,
                });
            }
            let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
            names.sort();
            let mut out = Weights::new();
            for name in names {
                if let Some(t) = guarded(path, || pth.get(name))? {
                    out.insert(name.clone(), t.to_device(device)?);
                }
            }
            Ok(out)
        };
        let top = read(key)?;
        if !top.is_empty() || key.is_some() {
            return Ok(top);
        }
        for k in NESTED_KEYS {
            if let Ok(w) = read(Some(k))
                && !w.is_empty()
            {
                return Ok(w);
            }
        }
        Err(Error::BadFile {
            path: path.to_path_buf(),
            reason:
                "not a PyTorch TarFlow checkpoint: no tensors found at its top level nor under \
                     the keys model, state_dict, ema, module"
                    .into(),
        })
    }
}

#[cfg(all(test, not(feature = "import")))]
mod tests {
    #[test]
    fn a_pth_without_the_import_feature_is_a_clear_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pth");
        std::fs::write(&path, b"PK\x03\x04 not read any further").unwrap();
        let err = crate::format::read_reference(&path, None, &candle_core::Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.pth"), "{err}");
        assert!(err.contains("`import` feature"), "{err}");
    }
}
