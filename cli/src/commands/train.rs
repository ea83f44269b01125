//! `tarflow train DIR --out MODEL`: train (or resume, or continue incrementally) on a folder of art.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use tarflow::Model;
use tarflow::config::Order;
use tarflow::sample::{Labels, SampleOptions, SampleStream};
use tarflow::train::{
    ChannelChoice, Dataset, Progress, RunOptions, SizePolicy, StartPlan, StartRefusal, Started,
    StartedAs, Trainer, evaluate_bpd, plan_start,
};

use super::train_request::{explain, request};
use crate::generate::{open_device, progress_bar, say};
use crate::images::{grid, save_png};
use crate::interrupt::Interrupt;

/// Arguments of `tarflow train`.
///
/// Options without a value given take the documented default for a new run; when resuming from
/// a checkpoint they take the checkpoint's value, and giving one that differs is an error (a
/// checkpoint resumes with its own settings; `--fresh` starts over).
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder of training images; each first-level subfolder that holds images is a class
    /// (subfolders without images are skipped; a folder of images alone trains an
    /// unconditional model). A folder holding exactly `train/` and `test/` is a split: it
    /// trains on `train/` and holds out `test/`.
    pub data: PathBuf,
    /// The model file to write (the EMA weights). Its checkpoint goes beside it
    /// (`NAME.ckpt.safetensors`) and so does a sample grid (`NAME.samples.png`). An existing
    /// model without a checkpoint is never overwritten unless `--fresh` is given.
    #[arg(long)]
    pub out: PathBuf,
    /// Start a new run from the weights of this model (fine-tuning): its sizes, classes (new
    /// class folders get new ids) and image format are kept; writes to `--out`, which must be
    /// another file.
    #[arg(long, value_name = "MODEL")]
    pub from: Option<PathBuf>,
    /// Step to train to. A new run's learning-rate schedule (warmup, then a cosine down to its
    /// minimum) ends here. A resumed run keeps the schedule it started with: a larger number
    /// trains on, and steps beyond the schedule's end run at its final (minimum) learning rate.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Images per step [default: 32].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate [default: 0.0005].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps of the learning rate [default: 100].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Patch side in pixels [default: 2 up to 32 px images, else 4].
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Transformer width, a multiple of 64 [default: 128].
    #[arg(long)]
    pub channels: Option<usize>,
    /// Flow blocks [default: 4].
    #[arg(long)]
    pub blocks: Option<usize>,
    /// Attention layers per flow block [default: 2].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention layers of each flow block, comma-separated in block order (data to noise),
    /// e.g. `1,1,1,8` for a deep-shallow stack whose last block (sampled first) is deep; sets
    /// --blocks to the list's length.
    #[arg(long, conflicts_with = "layers")]
    pub layers_per_block: Option<String>,
    /// STARFlow's soft clip of each block's predictions, `c tanh(o / c)` (e.g. 4; bounds the
    /// log-scales) [default: 0, off, as the reference].
    #[arg(long)]
    pub soft_clip: Option<f32>,
    /// Patch orders of the flow blocks, cycled over them (`raster`, `column`; odd blocks read
    /// theirs reversed), e.g. `raster,column` [default: raster, the reference's].
    #[arg(long)]
    pub orders: Option<String>,
    /// Training noise: a Gaussian sigma in the [-1, 1] scale (enables denoising), or `uniform`
    /// [default: 0.05].
    #[arg(long, conflicts_with = "noise_range")]
    pub noise: Option<String>,
    /// iTARFlow's noise-conditional training: each image's Gaussian sigma drawn from [T0, T1],
    /// the model told the level; samples are drawn at T1 and denoised step by step down to T0
    /// (iTARFlow's 64 px setting: 0.01:0.3).
    #[arg(long, value_name = "T0:T1")]
    pub noise_range: Option<String>,
    /// With --noise-range: weigh each image's loss by its sigma (`sigma`, iTARFlow's
    /// `--reweight t`) or all alike (`none`) [default: sigma].
    #[arg(long, requires = "noise_range", value_parser = ["sigma", "none"])]
    pub noise_weight: Option<String>,
    /// Augment with left-right flips.
    #[arg(long)]
    pub hflip: bool,
    /// Augment with top-bottom flips.
    #[arg(long)]
    pub vflip: bool,
    /// Augment with 90-degree rotations.
    #[arg(long)]
    pub rot90: bool,
    /// Augment with wrap-around crops (tileable textures).
    #[arg(long)]
    pub toroidal: bool,
    /// Image channels: auto, gray, gray-alpha, rgb, rgba [default: auto].
    #[arg(long)]
    pub image_channels: Option<ChannelChoice>,
    /// Training image size [default: the most common width in the folder].
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Images of another size: error, crop (textures) or resize (sprites) [default: error].
    #[arg(long)]
    pub size_policy: Option<SizePolicy>,
    /// Split vertical animation strips into frames.
    #[arg(long)]
    pub split_strips: bool,
    /// Ignore class folders.
    #[arg(long)]
    pub unconditional: bool,
    /// Probability of dropping a label (trains the unconditional branch for guidance)
    /// [default: 0.1].
    #[arg(long)]
    pub label_dropout: Option<f64>,
    /// Fraction of each class held out for evaluation [default: 0.1; with a `train/`+`test/`
    /// split, `test/` is held out instead].
    #[arg(long)]
    pub holdout: Option<f64>,
    /// EMA decay of the exported weights [default: 0.999].
    #[arg(long)]
    pub ema: Option<f64>,
    /// Steps between checkpoints, sample grids and model exports.
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    /// Steps between the preview sample grids (`NAME.samples.png`, 8 samples per class),
    /// written at the first checkpoint this many steps after the last one and at the end; 0:
    /// none. A noise-conditional model's grid costs its 30 denoising passes per sample, minutes
    /// on a CPU [default: every checkpoint].
    #[arg(long)]
    pub preview_every: Option<u64>,
    /// Steps between held-out evaluations (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Seed of initialisation, batches, augmentation and noise [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Start over, ignoring (and then replacing) an existing checkpoint and model.
    #[arg(long)]
    pub fresh: bool,
    /// The licence of the training art (e.g. `CC0-1.0`, `CC-BY-SA-3.0`), recorded in the
    /// model's provenance and shown by `tarflow info`, so that whoever samples the model knows
    /// the terms of what it generates. A resumed or fine-tuned run keeps the one it has unless
    /// this is given.
    #[arg(long, alias = "license", value_name = "TEXT")]
    pub licence: Option<String>,
    /// Train a learned denoiser for the finished model given by `--from` instead of a flow
    /// (STARFlow's): `--out` gets the same model with the denoiser added, and its samples are
    /// then denoised in one forward pass instead of a gradient pass through every block.
    /// Resumes from `OUT.denoiser.ckpt.safetensors`. Takes --steps, --batch, --lr, --warmup,
    /// --seed, --label-dropout, the flips, --checkpoint-every, --eval-every, --fresh.
    #[arg(long)]
    pub denoiser: bool,
    /// Attention layers of the denoiser [default: 4].
    #[arg(long, requires = "denoiser")]
    pub denoiser_layers: Option<usize>,
    /// Width of the denoiser [default: the model's].
    #[arg(long, requires = "denoiser")]
    pub denoiser_channels: Option<usize>,
}

/// `NAME.ext` -> `NAME.<suffix>`, beside it.
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.{suffix}"))
}

fn describe(data: &Dataset) -> String {
    let classes = if data.is_conditional() {
        data.class_names().join(", ")
    } else {
        "none".into()
    };
    format!(
        "{} images of {}x{} px, {} channel(s), classes: {classes}",
        data.len(),
        data.img_size(),
        data.img_size(),
        data.channels()
    )
}

/// The final line's mention of the preview grid: its path when this run wrote it, else that
/// none was written (`--preview-every 0`, or every grid failed or was interrupted).
fn grid_note(wrote: bool, path: &Path) -> String {
    if wrote {
        format!(", samples: {}", path.display())
    } else {
        ", no sample grid".to_string()
    }
}

/// When training writes its preview grid (`--preview-every`).
struct Preview {
    /// Steps between grids; `None`: at every checkpoint; `Some(0)`: never.
    every: Option<u64>,
    /// The step after which the next grid is due.
    next: u64,
}

impl Preview {
    fn new(every: Option<u64>, start: u64) -> Self {
        Self {
            every,
            next: start.saturating_add(every.unwrap_or(0)),
        }
    }

    /// Whether the checkpoint at `step` writes a grid (and, if so, when the next is due).
    fn due(&mut self, step: u64, is_final: bool) -> bool {
        match self.every {
            None => true,
            Some(0) => false,
            Some(n) => {
                let due = is_final || step >= self.next;
                if due {
                    self.next = step.saturating_add(n);
                }
                due
            }
        }
    }
}

/// A grid of samples from the EMA model, one row per class (8 per row). Skipped (false) when
/// a Ctrl-C arrives while sampling.
fn write_samples(model: &Model, path: &Path, int: &Interrupt) -> anyhow::Result<bool> {
    let k = model.config().num_classes;
    let labels = if k == 0 {
        Labels::Unconditional(32)
    } else {
        Labels::Classes(
            (0..k as i64)
                .flat_map(|c| std::iter::repeat_n(c, 8))
                .collect(),
        )
    };
    let opts = SampleOptions {
        seed: 1,
        ..Default::default()
    };
    let run = SampleStream::new(model, &labels, &opts)?.run(|_| {
        if int.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let Some(samples) = run else {
        return Ok(false);
    };
    let (sheet, _) = grid(&samples.rgba, 8, 1)?;
    let _w = int.writing();
    save_png(path, &sheet, 4)?;
    Ok(true)
}

/// Train.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.denoiser {
        return super::train_denoiser::run(&args);
    }
    // Checked before any data is read or file written.
    let licence = args
        .licence
        .as_deref()
        .map(tarflow::config::licence_text)
        .transpose()?;
    let device = open_device(&args.device)?;
    let ckpt_path = beside(&args.out, "ckpt.safetensors");
    let samples_path = beside(&args.out, "samples.png");
    let plan = match plan_start(&args.out, &ckpt_path, args.from.as_deref(), args.fresh) {
        Ok(plan) => plan,
        Err(StartRefusal::FromIsOut) => bail!(
            "--from and --out are the same file ({}): fine-tuning starts a new model and never \
             overwrites the one it starts from; give another --out",
            args.out.display()
        ),
        Err(StartRefusal::WouldOverwrite) => bail!(
            "{} exists and has no checkpoint beside it ({}), so there is no run to resume and \
             training would overwrite it. Add --fresh to replace it with a new model, or keep \
             it and fine-tune a copy: --from {} --out NEW.safetensors",
            args.out.display(),
            ckpt_path.display(),
            args.out.display()
        ),
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let Started {
        mut trainer,
        how,
        split_test_images,
    } = request(&args)?
        .start(&plan, &args.data, &ckpt_path, &device, &mut |s| {
            eprintln!("{s}")
        })
        .map_err(|e| explain(e, &args))?;
    if let Some(l) = &licence {
        trainer.set_provenance(tarflow::config::LICENCE_KEY, l.clone().into());
    }
    if let Some(n) = split_test_images {
        println!(
            "{} is split: training on train/, holding out test/ ({n} images)",
            args.data.display()
        );
    }
    match (&how, &plan) {
        (StartedAs::Resumed { new_classes }, _) => {
            println!(
                "resuming {} at step {} ({})",
                ckpt_path.display(),
                trainer.step_count(),
                describe(trainer.train_data())
            );
            if args.from.is_some() {
                println!("(--from only starts a run: this one resumes from its checkpoint)");
            }
            let schedule = trainer.config().schedule();
            if args.steps > schedule.total_steps {
                println!(
                    "the learning-rate schedule ends at step {}: steps past it run at its final \
                     learning rate {}",
                    schedule.total_steps, schedule.min_lr
                );
            }
            if trainer.data_changed() {
                println!(
                    "the data changed since the checkpoint: continuing incrementally \
                     ({new_classes} new class(es))"
                );
            }
        }
        (StartedAs::FineTuned, StartPlan::FineTune(from)) => println!(
            "new model {}, fine-tuned from {} ({})",
            args.out.display(),
            from.display(),
            describe(trainer.train_data())
        ),
        _ => println!(
            "new model: {} ({})",
            args.out.display(),
            describe(trainer.train_data())
        ),
    }
    let c = trainer.model_config().clone();
    println!(
        "model: {}x{} px, {} ch, patch {}, width {}, {} ({} order), {} classes, {} parameters",
        c.img_size,
        c.img_size,
        c.in_channels,
        c.patch_size,
        c.channels,
        c.describe_layers(),
        Order::show_list(&c.orders),
        c.num_classes,
        tarflow::model::parameter_count(&c)
    );
    if trainer.step_count() >= args.steps {
        println!(
            "already at step {} of {}: nothing to do (raise --steps to train on)",
            trainer.step_count(),
            args.steps
        );
        return Ok(());
    }

    let int = Arc::new(Interrupt::default());
    int.install()?;
    println!(
        "training to step {} (Ctrl-C stops after the current step and saves a checkpoint)",
        args.steps
    );

    let bar = progress_bar(args.steps, "training");
    bar.set_position(trainer.step_count());
    let b = bar.clone();
    trainer.set_progress(move |p| match p {
        Progress::Step(m) => {
            b.set_position(m.step);
            b.set_message(format!(
                "loss {:.4} bpd {:.3} |g| {:.2} {:.0} img/s",
                m.loss, m.bits_per_dim, m.grad_norm, m.images_per_sec
            ));
        }
        Progress::Skipped {
            step,
            reason,
            consecutive,
        } => {
            say(
                &b,
                format!("step {step}: skipped ({reason}), {consecutive} in a row"),
            );
        }
        Progress::Evaluated(r) => say(
            &b,
            format!(
                "step {}: held-out {:.3} bits/dim on {} images",
                r.step, r.bits_per_dim, r.images
            ),
        ),
        _ => {}
    });

    let started = Instant::now();
    let start_step = trainer.step_count();
    let opts = RunOptions {
        until_step: args.steps,
        // Written in the hook, under the lock a second Ctrl-C waits for.
        checkpoint: None,
        checkpoint_every: args.checkpoint_every.max(1),
        eval_every: args.eval_every,
        stop: Some(int.stop.clone()),
    };
    let mut preview = Preview::new(args.preview_every, start_step);
    // Whether this run wrote the grid (the final line names it only then).
    let mut wrote_grid = false;
    trainer.run_with(&opts, |trainer, at| -> anyhow::Result<()> {
        {
            // The checkpoint first; a second Ctrl-C waits for these writes.
            let _w = int.writing();
            trainer.save_checkpoint(&ckpt_path)?;
            export(trainer, &args, started, start_step)?;
        }
        if bar.is_hidden()
            && let Some(m) = &at.last
        {
            // No terminal (a log file, CI): one line per checkpoint instead of the bar, grid
            // or not.
            println!(
                "step {}/{}: loss {:.4} bpd {:.3} |g| {:.2} {:.0} img/s, {:.0} s",
                m.step,
                args.steps,
                m.loss,
                m.bits_per_dim,
                m.grad_norm,
                m.images_per_sec,
                started.elapsed().as_secs_f64()
            );
        }
        if int.stopped() || !preview.due(at.step, at.is_final) {
            return Ok(());
        }
        // The grid is a preview: a model that cannot be sampled yet (an early uniform-noise
        // model can diverge) must not stop a run whose checkpoint is already safe.
        match write_samples(&trainer.ema_model()?, &samples_path, &int) {
            Ok(written) => wrote_grid |= written,
            Err(e) => say(
                &bar,
                format!(
                    "step {}: no sample grid ({}); training goes on",
                    at.step,
                    crate::error_chain(&e)
                ),
            ),
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if int.stopped() {
        println!(
            "interrupted at step {}: checkpoint saved to {}; run the same command to resume",
            trainer.step_count(),
            ckpt_path.display()
        );
        return Ok(());
    }
    let holdout = trainer.holdout_data().clone();
    let report = if holdout.is_empty() {
        None
    } else {
        Some(evaluate_bpd(
            &trainer.ema_model()?,
            &holdout,
            trainer.config().batch_size,
            0,
            |_, _| {},
        )?)
    };
    println!(
        "trained to step {} in {:.0} s; model: {}, checkpoint: {}{}",
        trainer.step_count(),
        secs,
        args.out.display(),
        ckpt_path.display(),
        grid_note(wrote_grid, &samples_path)
    );
    match report {
        Some(r) => println!(
            "held-out: {:.3} bits/dim on {} images (8-bit, uniform dequantisation)",
            r.bits_per_dim, r.images
        ),
        None => println!("held-out: no images held out"),
    }
    if trainer.skipped_steps() > 0 {
        println!(
            "{} step(s) were skipped for non-finite values",
            trainer.skipped_steps()
        );
    }
    Ok(())
}

/// Write the EMA model with its provenance, this command's entries included.
fn export(
    trainer: &mut Trainer,
    args: &TrainArgs,
    started: Instant,
    start_step: u64,
) -> anyhow::Result<()> {
    let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let extra = [
        ("data", args.data.display().to_string().into()),
        ("this_run_seconds", serde_json::json!(seconds)),
        ("this_run_steps", (trainer.step_count() - start_step).into()),
    ];
    trainer.export_with(
        &args.out,
        extra.into_iter().map(|(k, v)| (k.to_string(), v)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_beside_the_model() {
        assert_eq!(
            beside(Path::new("a/m.safetensors"), "ckpt.safetensors"),
            Path::new("a/m.ckpt.safetensors")
        );
    }

    #[test]
    fn preview_grids_come_every_n_steps_from_the_start_and_at_the_end() {
        let steps = |every, start, checkpoints: &[(u64, bool)]| {
            let mut p = Preview::new(every, start);
            checkpoints
                .iter()
                .filter(|&&(s, last)| p.due(s, last))
                .map(|&(s, _)| s)
                .collect::<Vec<_>>()
        };
        let run = [
            (250, false),
            (500, false),
            (750, false),
            (1000, false),
            (1100, true),
        ];
        assert_eq!(steps(None, 0, &run), [250, 500, 750, 1000, 1100]);
        assert_eq!(steps(Some(0), 0, &run), Vec::<u64>::new());
        assert_eq!(steps(Some(500), 0, &run), [500, 1000, 1100]);
        // Not a multiple of the checkpoint cadence: the first checkpoint at least N on.
        assert_eq!(steps(Some(400), 0, &run), [500, 1000, 1100]);
        // Resumed at step 500: N steps from there.
        assert_eq!(steps(Some(500), 500, &run[1..]), [1000, 1100]);
    }
}
