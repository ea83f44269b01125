//! `tarflow sample`: a grid PNG, or one PNG per sample in a folder.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use tarflow::sheet::SheetLayout;

use crate::generate::{
    SamplingArgs, class_ids, generate_each, generate_grid_png, load, progress_bar,
};
use crate::images::save_png;

/// Arguments of `tarflow sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Class name or id (repeatable, used in turn; `none` = unconditional). Default: every
    /// class, an equal share of the count each, in class order.
    #[arg(long)]
    pub class: Vec<String>,
    /// Number of samples.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Columns of the grid (default: about square).
    #[arg(long)]
    pub cols: Option<usize>,
    /// Upscale factor of the written PNGs (nearest neighbour).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Output: a `.png` grid, or a folder that receives one PNG per sample.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Generate and write the samples.
pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    crate::generate::check_image_count(Some(args.count), &format!("--count {}", args.count))?;
    let device = args.sampling.open_device()?;
    let model = load(&args.model, &device)?;
    let k = model.config().num_classes;
    let classes = class_ids(&model, &args.class)?;
    // Without --class, every class in turn, class-major: with `--count 64 --cols 8` on an
    // 8-class model, each row of the grid is one class.
    let per_class = args.count.div_ceil(k.max(1));
    let labels: Vec<Option<i64>> = (0..args.count)
        .map(|i| match classes.as_slice() {
            [] if k > 0 => Some((i / per_class) as i64),
            [] => None,
            cs => cs[i % cs.len()],
        })
        .collect();
    let bar = progress_bar(args.count as u64, "sampling");
    let opts = args.sampling.options(model.config());
    let is_png = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    // Each batch is written as soon as it is done and let go: memory stays bounded by the batch
    // (and, for a grid, one row of it), whatever the count.
    if is_png {
        let cols = args
            .cols
            .unwrap_or_else(|| (args.count as f64).sqrt().ceil() as usize);
        let side = model.config().img_size as u32;
        let layout = SheetLayout::new(args.count, cols, side, side, 1)
            .map_err(|e| anyhow::anyhow!("{e}").context("lower --cols or --scale"))?;
        generate_grid_png(
            &model,
            &labels,
            &opts,
            args.sampling.batch,
            &bar,
            &args.out,
            layout,
            args.scale,
        )?;
        bar.finish_and_clear();
        println!("wrote {} samples to {}", args.count, args.out.display());
    } else {
        generate_each(
            &model,
            &labels,
            None,
            &opts,
            args.sampling.batch,
            &bar,
            |first, s| {
                for (i, img) in s.rgba.iter().enumerate() {
                    let path = args.out.join(format!("sample_{:04}.png", first + i));
                    save_png(&path, img, args.scale)?;
                }
                Ok(())
            },
        )?;
        bar.finish_and_clear();
        println!("wrote {} PNGs to {}", args.count, args.out.display());
    }
    Ok(())
}
