//! `tarflow train DIR --denoiser --from MODEL --out OUT`: train a learned denoiser on a finished
//! model, so that its samples are denoised in one forward pass (DESIGN.md section 16).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tarflow::config::DenoiserConfig;
use tarflow::train::start::same_file;
use tarflow::train::{
    AugmentConfig, DataConfig, Dataset, DenoiserEval, DenoiserTrainConfig, DenoiserTrainer,
    checkpoint_model_config,
};

use super::train::TrainArgs;
use crate::generate::{load, open_device, progress_bar, say};
use crate::interrupt::Interrupt;

/// Layers of a new denoiser when `--denoiser-layers` is not given (STARFlow uses 8 on a GPU;
/// 4 keeps denoising a small share of a sample's cost on a CPU).
const DEFAULT_LAYERS: usize = 4;
/// Held-out batches of each evaluation.
const EVAL_BATCHES: u64 = 4;

/// `NAME.ext` -> `NAME.denoiser.ckpt.safetensors`, beside it.
fn checkpoint_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.denoiser.ckpt.safetensors"))
}

/// The flow-training options that mean nothing to a denoiser run, by flag, when given.
fn flow_only_flags(args: &TrainArgs) -> Vec<&'static str> {
    let given = [
        ("--patch-size", args.patch_size.is_some()),
        ("--channels", args.channels.is_some()),
        ("--blocks", args.blocks.is_some()),
        ("--layers", args.layers.is_some()),
        ("--layers-per-block", args.layers_per_block.is_some()),
        ("--soft-clip", args.soft_clip.is_some()),
        ("--orders", args.orders.is_some()),
        ("--noise", args.noise.is_some()),
        ("--noise-range", args.noise_range.is_some()),
        ("--image-channels", args.image_channels.is_some()),
        ("--img-size", args.img_size.is_some()),
        ("--unconditional", args.unconditional),
        ("--ema", args.ema.is_some()),
        ("--licence", args.licence.is_some()),
        ("--preview-every", args.preview_every.is_some()),
    ];
    given.into_iter().filter(|g| g.1).map(|g| g.0).collect()
}

fn show(e: &DenoiserEval) -> String {
    format!(
        "explains {:.1}% of the flow's score step (mse {:.5}, step power {:.5})",
        100.0 * e.explained(),
        e.mse,
        e.target_power
    )
}

/// Train a denoiser.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let flags = flow_only_flags(args);
    if !flags.is_empty() {
        bail!(
            "{} do(es) not apply to --denoiser, which trains a denoiser for a finished model \
             and keeps its flow as it is",
            flags.join(", ")
        );
    }
    let device = open_device(&args.device)?;
    let ckpt = checkpoint_path(&args.out);
    let resuming = ckpt.exists() && !args.fresh;
    let load_data = |cfg: &tarflow::ModelConfig| -> anyhow::Result<(Dataset, Option<Dataset>)> {
        let config = DataConfig::default().for_model(cfg)?;
        Ok(Dataset::load_split(&args.data, &config, &mut |s| {
            eprintln!("{s}")
        })?)
    };
    let (mut trainer, held) = if resuming {
        let cfg = checkpoint_model_config(&ckpt)?;
        let (data, test) = load_data(&cfg)?;
        let t = DenoiserTrainer::resume(&ckpt, data, Some(args.steps), &device)?;
        println!(
            "resuming the denoiser run {} at step {}",
            ckpt.display(),
            t.step_count()
        );
        (t, test)
    } else {
        let Some(from) = &args.from else {
            bail!(
                "--denoiser trains a denoiser for a finished model: give the model with --from \
                 MODEL (and the file to write with --out)"
            );
        };
        if same_file(from, &args.out) {
            bail!(
                "--from and --out are the same file ({}): the model with its denoiser is \
                 written to a new file and the one it starts from is kept; give another --out",
                args.out.display()
            );
        }
        if args.out.exists() && !args.fresh {
            bail!(
                "{} exists and has no denoiser checkpoint beside it ({}); add --fresh to replace \
                 it",
                args.out.display(),
                ckpt.display()
            );
        }
        let flow = load(from, &device)?;
        let (data, test) = load_data(flow.config())?;
        let d = DenoiserTrainConfig::default();
        let config = DenoiserTrainConfig {
            denoiser: DenoiserConfig {
                channels: args.denoiser_channels.unwrap_or(flow.config().channels),
                layers: args.denoiser_layers.unwrap_or(DEFAULT_LAYERS),
            },
            steps: args.steps,
            batch_size: args.batch.unwrap_or(d.batch_size),
            lr: args.lr.unwrap_or(d.lr),
            warmup_steps: args.warmup.unwrap_or(d.warmup_steps),
            label_dropout: args.label_dropout.unwrap_or(d.label_dropout),
            augment: AugmentConfig {
                hflip: args.hflip,
                vflip: args.vflip,
                rot90: args.rot90,
                toroidal: args.toroidal,
            },
            seed: args.seed.unwrap_or(d.seed),
            ..d
        };
        let t = DenoiserTrainer::new(&flow, data, config, &device)?;
        let dn = t.config().denoiser;
        println!(
            "new denoiser for {} ({} layers of width {}): {}",
            from.display(),
            dn.layers,
            dn.channels,
            args.out.display()
        );
        (t, test)
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let eval_data = held.filter(|d| !d.is_empty());
    let int = Arc::new(Interrupt::default());
    int.install()?;
    println!(
        "training the denoiser to step {} (Ctrl-C stops after the current step and saves a \
         checkpoint)",
        args.steps
    );
    let bar = progress_bar(args.steps, "denoiser");
    bar.set_position(trainer.step_count());
    let started = Instant::now();
    let every = args.checkpoint_every.max(1);
    let evaluate = |t: &mut DenoiserTrainer| -> anyhow::Result<Option<DenoiserEval>> {
        match &eval_data {
            Some(d) => Ok(Some(t.evaluate(d, EVAL_BATCHES, 0)?)),
            None => Ok(None),
        }
    };
    while trainer.step_count() < args.steps && !int.stopped() {
        let s = trainer.step()?;
        bar.set_position(s.step);
        bar.set_message(format!(
            "loss {:.5} explained {:.0}% {:.2} s/step",
            s.loss,
            100.0 * (1.0 - s.loss / s.target_power.max(f32::MIN_POSITIVE)),
            s.seconds
        ));
        if s.step.is_multiple_of(every) {
            let _w = int.writing();
            trainer.save_checkpoint(&ckpt)?;
            trainer.export(&args.out)?;
            if bar.is_hidden() {
                println!(
                    "step {}/{}: loss {:.5}, {:.0} s",
                    s.step,
                    args.steps,
                    s.loss,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if args.eval_every > 0
            && s.step.is_multiple_of(args.eval_every)
            && let Some(e) = evaluate(&mut trainer)?
        {
            say(&bar, format!("step {}: held-out: {}", s.step, show(&e)));
        }
    }
    {
        let _w = int.writing();
        trainer.save_checkpoint(&ckpt)?;
        trainer.export(&args.out)?;
    }
    bar.finish_and_clear();
    if int.stopped() {
        println!(
            "interrupted at step {}: checkpoint saved to {}; run the same command to resume",
            trainer.step_count(),
            ckpt.display()
        );
        return Ok(());
    }
    println!(
        "trained the denoiser to step {} in {:.0} s; model: {}, checkpoint: {}",
        trainer.step_count(),
        started.elapsed().as_secs_f64(),
        args.out.display(),
        ckpt.display()
    );
    match evaluate(&mut trainer)? {
        Some(e) => println!("held-out: {}", show(&e)),
        None => println!("held-out: no test/ images to evaluate on"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_sits_beside_the_model() {
        assert_eq!(
            checkpoint_path(Path::new("a/m.safetensors")),
            Path::new("a/m.denoiser.ckpt.safetensors")
        );
    }
}
