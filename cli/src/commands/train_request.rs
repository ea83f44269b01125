//! `tarflow train`'s flags as the library's [`RunRequest`], and the library's refusals worded
//! with the flags.

use anyhow::{Context, anyhow, bail};
use tarflow::config::Order;
use tarflow::train::{AugmentConfig, Conflict, NoiseConfig, RunRequest, StartError};

use super::train::TrainArgs;

/// The settings the flags ask for (a flag not given asks for nothing).
pub fn request(args: &TrainArgs) -> anyhow::Result<RunRequest> {
    Ok(RunRequest {
        total_steps: args.steps,
        seed: args.seed,
        batch_size: args.batch,
        lr: args.lr,
        warmup_steps: args.warmup,
        label_dropout: args.label_dropout,
        ema_decay: args.ema,
        noise: match &args.noise_range {
            Some(r) => {
                let r = tarflow::config::NoiseRange::parse(r)
                    .with_context(|| format!("--noise-range `{r}`"))?;
                Some(NoiseConfig::Range {
                    t0: r.t0,
                    t1: r.t1,
                    reweight: args.noise_weight.as_deref() != Some("none"),
                })
            }
            None => args.noise.as_deref().map(noise).transpose()?,
        },
        augment: AugmentConfig {
            hflip: args.hflip,
            vflip: args.vflip,
            rot90: args.rot90,
            toroidal: args.toroidal,
        },
        holdout_fraction: args.holdout,
        patch_size: args.patch_size,
        channels: args.channels,
        blocks: args.blocks,
        layers: args.layers,
        soft_clip: args.soft_clip,
        block_layers: args
            .layers_per_block
            .as_deref()
            .map(|s| parse_layer_list(s, args.blocks))
            .transpose()?,
        orders: args
            .orders
            .as_deref()
            .map(|s| Order::parse_list(s).map_err(|e| anyhow::anyhow!("--orders {s}: {e}")))
            .transpose()?,
        img_size: args.img_size,
        image_channels: args.image_channels,
        size_policy: args.size_policy,
        split_strips: args.split_strips,
        unconditional: args.unconditional,
    })
}

/// `--flag value (it has ...)` for each conflict.
fn flags(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(|c| format!("--{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The library's refusals, worded with the flags.
pub fn explain(e: StartError, args: &TrainArgs) -> anyhow::Error {
    match e {
        StartError::ResumeConflicts {
            checkpoint,
            step,
            conflicts,
        } => anyhow!(
            "the checkpoint {} resumes with its own settings, and these flags differ from them: \
             {}. Drop them to resume (at step {step}), or add --fresh to start a new run (it \
             replaces the checkpoint and {})",
            checkpoint.display(),
            flags(&conflicts),
            args.out.display()
        ),
        StartError::SizeConflicts { model, conflicts } => anyhow!(
            "fine-tuning keeps the sizes of the model --from {}, and these flags differ: {}; \
             drop them, or train a new model without --from",
            model.display(),
            flags(&conflicts)
        ),
        StartError::HoldoutWithSplit { root } => anyhow!(
            "{} is split into train/ and test/, and test/ is the held-out set: drop --holdout \
             (or train on {} to hold out a fraction of it)",
            root.display(),
            root.join("train").display()
        ),
        StartError::Failed(e) => e.into(),
    }
}

fn noise(arg: &str) -> anyhow::Result<NoiseConfig> {
    if arg.eq_ignore_ascii_case("uniform") {
        return Ok(NoiseConfig::Uniform);
    }
    let sigma: f32 = arg
        .parse()
        .with_context(|| format!("--noise `{arg}` is neither a sigma nor `uniform`"))?;
    Ok(NoiseConfig::Gaussian { sigma })
}

/// `--layers-per-block 1,1,1,8`: one positive count per flow block, as many as `--blocks`
/// when that is given too.
fn parse_layer_list(s: &str, blocks: Option<usize>) -> anyhow::Result<Vec<usize>> {
    let list: Vec<usize> = s
        .split(',')
        .map(|w| w.trim().parse::<usize>().ok().filter(|&l| l > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            anyhow!("--layers-per-block {s}: expected positive counts, comma-separated")
        })?;
    if let Some(b) = blocks
        && b != list.len()
    {
        bail!(
            "--layers-per-block {s} gives {} flow blocks, --blocks {b}",
            list.len()
        );
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_flags() {
        assert_eq!(noise("uniform").unwrap(), NoiseConfig::Uniform);
        assert_eq!(
            noise("0.05").unwrap(),
            NoiseConfig::Gaussian { sigma: 0.05 }
        );
        assert!(noise("lots").is_err());
    }
}
