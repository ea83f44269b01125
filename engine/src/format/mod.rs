//! Files: our model format, PyTorch reference checkpoints, and crash-safe writes.

pub mod atomic;
pub mod model_file;
#[cfg(feature = "import")]
mod pickle_scan;
mod pth;
pub mod reference;

pub use atomic::write_atomic;
pub use model_file::{
    MAX_HEADER_BYTES, check_model_header, load_model, model_from_bytes, read_safetensors,
    save_model, save_reference_safetensors,
};
pub use reference::{ConfigHints, infer_config, load_reference, read_reference};
