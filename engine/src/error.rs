//! The engine's error type: every failure names the file or value at fault and what is wrong.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the engine, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be used as what it was given for (a model file, a checkpoint, an atlas:
    /// truncated, bad header, wrong encoding...); `reason` says which and why.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the model needs is absent from the weights.
    #[error(
        "{}missing tensor `{name}` (expected shape {expected:?})",
        at(source_name)
    )]
    MissingTensor {
        /// The file (or other source) the weights came from, if any.
        source_name: Option<PathBuf>,
        /// The tensor's state_dict name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor is present but has the wrong shape for the config.
    #[error(
        "{}tensor `{name}` has shape {found:?}, expected {expected:?} for this config",
        at(source_name)
    )]
    ShapeMismatch {
        /// The file (or other source) the weights came from, if any.
        source_name: Option<PathBuf>,
        /// The tensor's state_dict name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found in the weights.
        found: Vec<usize>,
    },
    /// The weights hold tensors that a model with this config does not have.
    #[error("{}the weights do not match the config: {reason}", at(source_name))]
    ConfigMismatch {
        /// The file (or other source) the weights came from, if any.
        source_name: Option<PathBuf>,
        /// What does not match.
        reason: String,
    },
    /// A model configuration is invalid in itself.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// A model configuration would need more memory than the engine allows.
    #[error("{what} would need {bytes} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Which allocation is too large.
        what: String,
        /// The bytes it would need.
        bytes: u128,
        /// The allowed maximum.
        limit: u128,
    },
    /// The config cannot be inferred from the weights alone.
    #[error("cannot infer the model config from the weights: {0}")]
    CannotInfer(String),
    /// A device was asked for that this build or this machine cannot provide.
    #[error("device `{device}` is not available: {reason}")]
    Device {
        /// The device as the user wrote it.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An argument to an engine call is invalid (wrong shape, label out of range...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A training data folder or one of its files cannot be used.
    #[error("{}: {reason}", path.display())]
    Dataset {
        /// The folder or file concerned.
        path: PathBuf,
        /// What is wrong, and what to do about it.
        reason: String,
    },
    /// Sampling produced values that are not finite (NaN or infinite): the model or the options
    /// push the flow out of range. No image is returned.
    #[error("sampling diverged: {0}")]
    NonFinite(String),
    /// Training cannot go on (repeated non-finite steps, inconsistent resume...).
    #[error("training stopped: {0}")]
    Training(String),
    /// An error from the tensor library.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

impl Error {
    /// Attach a source file to errors about weights that were built without one.
    pub fn in_file(self, file: &std::path::Path) -> Self {
        let file = Some(file.to_path_buf());
        match self {
            Error::MissingTensor {
                source_name: None,
                name,
                expected,
            } => Error::MissingTensor {
                source_name: file,
                name,
                expected,
            },
            Error::ShapeMismatch {
                source_name: None,
                name,
                expected,
                found,
            } => Error::ShapeMismatch {
                source_name: file,
                name,
                expected,
                found,
            },
            Error::ConfigMismatch {
                source_name: None,
                reason,
            } => Error::ConfigMismatch {
                source_name: file,
                reason,
            },
            other => other,
        }
    }
}
