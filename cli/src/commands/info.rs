//! `tarflow info MODEL`.

use std::path::PathBuf;

use clap::Args;
use tarflow::format::load_model;

/// Arguments of `tarflow info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The model file (.safetensors in tarflow's format).
    pub model: PathBuf,
    /// Print the config as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Print what the model is.
pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model, &tarflow::candle::Device::Cpu)?;
    let c = model.config();
    if args.json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    let bytes = std::fs::metadata(&args.model).map(|m| m.len()).unwrap_or(0);
    println!(
        "model:       {} ({:.1} MB)",
        args.model.display(),
        bytes as f64 / 1e6
    );
    println!(
        "images:      {}x{} px, {} channel(s), {}x{} patches -> {} tokens of {} values",
        c.img_size,
        c.img_size,
        c.in_channels,
        c.patch_size,
        c.patch_size,
        c.num_patches(),
        c.patch_dim()
    );
    println!(
        "network:     {}, width {} ({} heads), {} coupling",
        c.describe_layers(),
        c.channels,
        c.num_heads(),
        if c.nvp { "affine" } else { "additive" }
    );
    if c.soft_clip > 0.0 {
        println!(
            "soft clip:   {} (predictions c tanh(o / c), STARFlow's)",
            c.soft_clip
        );
    }
    println!(
        "orders:      {} (cycled over the blocks; odd blocks reversed)",
        tarflow::config::Order::show_list(&c.orders)
    );
    println!("parameters:  {}", tarflow::model::parameter_count(c));
    match &c.sampling {
        Some(r) => println!(
            "sampling:    recommended {}{}",
            r.describe(),
            r.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
        None => println!("sampling:    no recommended settings (the engine's defaults)"),
    }
    if c.num_classes == 0 {
        println!("classes:     none (unconditional)");
    } else {
        let names: Vec<String> = (0..c.num_classes)
            .map(|i| format!("{i}:{}", c.class_name(i)))
            .collect();
        println!("classes:     {} ({})", c.num_classes, names.join(", "));
    }
    if let Some(r) = c.noise_range {
        println!(
            "noise range: {} (noise-conditional: sampled at {}, denoised in {} steps by default)",
            r.show(),
            r.t1,
            r.default_steps()
        );
    } else if c.noise_sigma > 0.0 {
        println!("noise sigma: {} (denoising on by default)", c.noise_sigma);
    } else {
        println!("noise sigma: 0 (no denoising)");
    }
    if let Some(d) = &c.denoiser {
        let steps = c
            .provenance
            .get("denoiser")
            .and_then(|p| p.get("steps"))
            .map(|s| format!(", trained {s} steps"))
            .unwrap_or_default();
        println!(
            "denoiser:    learned, {} layers of width {}{steps} (denoises in one forward pass; \
             --score-denoise takes the flow's gradient step instead)",
            d.layers, d.channels
        );
    }
    match c.licence() {
        Some(l) => println!(
            "licence:     {l} (of the training art; what the model generates carries its terms)"
        ),
        None => println!(
            "licence:     not recorded (`tarflow train --licence`); what the model generates carries the training art's terms"
        ),
    }
    for (k, v) in c
        .provenance
        .iter()
        .filter(|(k, _)| *k != tarflow::config::LICENCE_KEY)
    {
        println!("provenance:  {k} = {v}");
    }
    Ok(())
}
