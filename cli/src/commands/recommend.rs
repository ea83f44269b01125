//! `tarflow recommend --model M --guidance 1.5 --alpha-cutoff 0.5 --out M2`: write a copy of a
//! model file that carries its recommended sampling settings (weights untouched, checked bit
//! for bit). `sample`, `sheet`, `vary`, `eval --samples` and the Bevy plugin use them where
//! nothing else is asked; `tarflow info` shows them.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use tarflow::config::RecommendedSampling;

use crate::generate::{check_same_tensors, load, open_device};

/// Arguments of `tarflow recommend`.
#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Recommended classifier-free guidance weight.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Recommended guidance rule (linear or gaussian).
    #[arg(long)]
    pub guidance_rule: Option<tarflow::sample::guide::GuidanceRule>,
    /// Recommended attention temperature of guidance's unconditional branch.
    #[arg(long)]
    pub attn_temp: Option<f32>,
    /// Recommended pixel-art alpha cutoff (0-1).
    #[arg(long)]
    pub alpha_cutoff: Option<f32>,
    /// Recommend the pixel-art clean-up (lone opaque pixels removed).
    #[arg(long)]
    pub despeckle: bool,
    /// Recommend sampling without the denoising step.
    #[arg(long)]
    pub no_denoise: bool,
    /// Recommended steps of a noise-conditional model's iterative denoising.
    #[arg(long)]
    pub denoise_steps: Option<usize>,
    /// How the settings were chosen, shown by `tarflow info`.
    #[arg(long)]
    pub note: Option<String>,
    /// Also record the training art's licence (as `tarflow train --licence` does), for a
    /// model trained without it; shown by `tarflow info`.
    #[arg(long, alias = "license", value_name = "TEXT")]
    pub licence: Option<String>,
    /// Drop every recommendation instead (the engine's defaults apply again).
    #[arg(long, conflicts_with_all = ["guidance", "guidance_rule", "attn_temp", "alpha_cutoff", "despeckle", "no_denoise", "denoise_steps", "note"])]
    pub clear: bool,
    /// The new model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists (it may then be `--model` itself).
    #[arg(long)]
    pub force: bool,
}

/// Run `recommend`.
pub fn run(args: RecommendArgs) -> anyhow::Result<()> {
    crate::generate::refuse_existing(&args.out, args.force)?;
    let rec = RecommendedSampling {
        guidance: args.guidance,
        guidance_rule: args.guidance_rule,
        attn_temp: args.attn_temp,
        alpha_cutoff: args.alpha_cutoff,
        denoise: args.no_denoise.then_some(false),
        denoise_steps: args.denoise_steps,
        despeckle: args.despeckle.then_some(true),
        note: args.note.clone(),
    };
    rec.validate()?;
    let licence = args
        .licence
        .as_deref()
        .map(tarflow::config::licence_text)
        .transpose()?;
    if !args.clear && rec == RecommendedSampling::default() && licence.is_none() {
        bail!(
            "no setting given: pass --guidance, --guidance-rule, --attn-temp, --alpha-cutoff, --despeckle, --no-denoise, --denoise-steps or --licence (or \
             --clear to drop the model's recommendations)"
        );
    }
    let device = open_device("cpu")?;
    let mut model = load(&args.model, &device)?;
    if rec.guidance.is_some_and(|g| g > 0.0) && model.config().num_classes == 0 {
        bail!(
            "--guidance: {} is unconditional, and guidance needs a class-conditional model",
            args.model.display()
        );
    }
    if rec.denoise_steps.is_some() && model.config().noise_range.is_none() {
        bail!(
            "--denoise-steps: {} is not noise-conditional (trained without --noise-range), so it \
             is denoised in one step",
            args.model.display()
        );
    }
    // Only --licence given: the recommendations the file has stay.
    if args.clear || rec != RecommendedSampling::default() {
        model.config_mut().sampling = (!args.clear).then(|| rec.clone());
    }
    if let Some(l) = &licence {
        model.config_mut().set_licence(l)?;
    }
    let before = tarflow::format::read_safetensors(&args.model, &device)?.tensors;
    let in_place = std::fs::canonicalize(&args.out).ok() == std::fs::canonicalize(&args.model).ok();
    // Written atomically (temp file, rename): a failure leaves `--out` as it was.
    tarflow::format::save_model(&model, &args.out)?;
    let tensors = check_same_tensors(&before, &args.model, &args.out, &device, !in_place)?;
    let what = match (&model.config().sampling, args.clear) {
        (_, true) | (None, false) => "nothing (the engine's defaults)".to_string(),
        (Some(r), false) => r.describe(),
    };
    let licence_note = licence
        .map(|l| format!(", licence {l}"))
        .unwrap_or_default();
    println!(
        "wrote {} recommending {what}{licence_note}; its {tensors} weight tensors are bit-identical to {}",
        args.out.display(),
        args.model.display()
    );
    Ok(())
}
