//! The TarFlow network: layers, flow blocks, the whole model and its initialisation.

pub mod attention;
pub mod denoiser;
pub mod flow;
pub(crate) mod grad_ops;
pub mod host_grad;
pub mod init;
pub mod layers;
pub mod meta_block;
pub mod names;
pub mod patchify;
pub(crate) mod recipe;
pub(crate) mod threads;
pub mod time_embed;

pub use denoiser::{Denoiser, supports_denoiser};
pub use flow::{ForwardOutput, Model, Weights, check_weights};
pub use init::{InitOptions, init_weights};
pub use layers::Exec;
pub use meta_block::{MetaBlock, Permutation};
pub use names::{
    BlockNames, LayerNames, ModelNames, TensorKind, TensorSpec, parameter_count, tensor_shapes,
};
pub use patchify::{patchify, unpatchify};
pub use time_embed::{TimeEmbed, fourier_features};
