//! One module per subcommand.

pub mod eval;
pub mod export;
pub mod import;
pub mod info;
pub mod inpaint;
pub mod latent;
pub mod lint;
pub mod morph;
pub mod palette;
pub mod recommend;
pub mod sample;
pub mod sheet;
pub mod tileset;
pub mod train;
pub mod train_denoiser;
pub mod train_request;
