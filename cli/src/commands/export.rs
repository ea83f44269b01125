//! `tarflow export MODEL --out REF.safetensors`.

use std::path::PathBuf;

use clap::Args;
use tarflow::format::{load_model, save_reference_safetensors};

/// Arguments of `tarflow export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The model file.
    pub model: PathBuf,
    /// Where to write the state_dict (.safetensors), loadable with PyTorch's `Model.load_state_dict`
    /// (never over an existing file unless `--force`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Write the state_dict.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    crate::generate::refuse_existing(&args.out, args.force)?;
    let model = load_model(&args.model, &tarflow::candle::Device::Cpu)?;
    save_reference_safetensors(&model, &args.out)?;
    let c = model.config();
    println!(
        "exported {} -> {} (load with Model(in_channels={}, img_size={}, patch_size={}, channels={}, num_blocks={}, layers_per_block={}, nvp={}, num_classes={}))",
        args.model.display(),
        args.out.display(),
        c.in_channels,
        c.img_size,
        c.patch_size,
        c.channels,
        c.num_blocks,
        c.layers_per_block,
        if c.nvp { "True" } else { "False" },
        c.num_classes
    );
    Ok(())
}
