//! `tarflow train DIR --out MODEL`: train (or resume, or continue incrementally) on a folder of art.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use tarflow::Model;
use tarflow::config::Order;
use tarflow::sample::{Labels, SampleOptions, SampleStream};
use tarflow::train::{
    AugmentConfig, ChannelChoice, Conflict, Dataset, NoiseConfig, Progress, RunOptions, RunRequest,
    SizePolicy, StartError, StartPlan, StartRefusal, Started, StartedAs, Trainer, evaluate_bpd,
    plan_start,
};

use crate::generate::{open_device, progress_bar, say};
use crate::images::{grid, save_png};

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
}

/// `NAME.ext` -> `NAME.<suffix>`, beside it.
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.{suffix}"))
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

/// Ctrl-C: the first asks training to stop after the current step (the checkpoint is then
/// written, the sample grid skipped); a second exits at once, though never in the middle of
/// writing the checkpoint or model (it waits for the write to finish).
#[derive(Default)]
struct Interrupt {
    stop: Arc<AtomicBool>,
    writing: Mutex<()>,
}

impl Interrupt {
    /// Record a Ctrl-C; true when it is the second and the process should exit now.
    fn press(&self) -> bool {
        self.stop.swap(true, Ordering::SeqCst)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Hold while writing a file a second Ctrl-C must not cut short.
    fn writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn install(self: &Arc<Self>) -> anyhow::Result<()> {
        let me = self.clone();
        ctrlc::set_handler(move || {
            if me.press() {
                let _done = me.writing();
                eprintln!("second Ctrl-C: exiting now (the last checkpoint written is kept)");
                std::process::exit(130);
            }
            eprintln!(
                "Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to exit \
                 at once)"
            );
        })
        .context("cannot install the Ctrl-C handler")
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

/// The settings the flags ask for (a flag not given asks for nothing).
fn request(args: &TrainArgs) -> anyhow::Result<RunRequest> {
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
fn explain(e: StartError, args: &TrainArgs) -> anyhow::Error {
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

/// Train.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
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
        c.parameter_count()
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
    let every = args.checkpoint_every.max(1);
    while trainer.step_count() < args.steps && !int.stopped() {
        let until = ((trainer.step_count() / every + 1) * every).min(args.steps);
        let opts = RunOptions {
            until_step: until,
            checkpoint: None,
            checkpoint_every: 0,
            eval_every: args.eval_every,
            stop: Some(int.stop.clone()),
        };
        let summary = trainer.run(&opts)?;
        {
            // The checkpoint first; a second Ctrl-C waits for these writes.
            let _w = int.writing();
            trainer.save_checkpoint(&ckpt_path)?;
            export(&mut trainer, &args, started, start_step)?;
        }
        if int.stopped() {
            break;
        }
        // The grid is a preview: a model that cannot be sampled yet (an early uniform-noise
        // model can diverge) must not stop a run whose checkpoint is already safe.
        if let Err(e) = write_samples(&trainer.ema_model()?, &samples_path, &int) {
            say(
                &bar,
                format!(
                    "step {}: no sample grid ({}); training goes on",
                    trainer.step_count(),
                    crate::error_chain(&e)
                ),
            );
        }
        if bar.is_hidden()
            && let Some(m) = summary.last
        {
            // No terminal (a log file, CI): one line per checkpoint instead of the bar.
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
    }
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
        "trained to step {} in {:.0} s; model: {}, checkpoint: {}, samples: {}",
        trainer.step_count(),
        secs,
        args.out.display(),
        ckpt_path.display(),
        samples_path.display()
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

/// Write the EMA model with its provenance.
fn export(
    trainer: &mut Trainer,
    args: &TrainArgs,
    started: Instant,
    start_step: u64,
) -> anyhow::Result<()> {
    let mut model = trainer.ema_model()?;
    let p = &mut model.config_mut().provenance;
    p.insert(
        "trained_with".into(),
        format!("tarflow {}", env!("CARGO_PKG_VERSION")).into(),
    );
    p.insert("data".into(), args.data.display().to_string().into());
    p.insert("images".into(), (trainer.train_data().len() as u64).into());
    p.insert("steps".into(), trainer.step_count().into());
    p.insert("batch".into(), (trainer.config().batch_size as u64).into());
    p.insert("lr".into(), trainer.config().lr.into());
    p.insert(
        "noise".into(),
        serde_json::to_value(trainer.config().noise)?,
    );
    p.insert(
        "augment".into(),
        serde_json::to_value(trainer.config().augment)?,
    );
    p.insert("seed".into(), trainer.config().seed.into());
    p.insert(
        "this_run_seconds".into(),
        serde_json::json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
    );
    p.insert(
        "this_run_steps".into(),
        (trainer.step_count() - start_step).into(),
    );
    model.config_mut().palettes = Some(trainer.palettes().clone());
    // Checked before anything is written: a wrong model never replaces the user's file.
    if model.config().num_classes == 0 && trainer.train_data().is_conditional() {
        bail!("internal: a conditional dataset produced an unconditional model");
    }
    tarflow::format::save_model(&model, &args.out)?;
    Ok(())
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
    fn the_second_ctrl_c_exits_but_waits_for_a_write_in_progress() {
        let int = Arc::new(Interrupt::default());
        assert!(!int.press(), "the first Ctrl-C only stops");
        assert!(int.stopped());
        assert!(int.press(), "the second exits");

        // While a checkpoint is being written, the exiting handler waits for it.
        let writing = int.writing();
        let (tx, rx) = std::sync::mpsc::channel();
        let handler = {
            let int = int.clone();
            std::thread::spawn(move || {
                let _done = int.writing();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the exit went ahead during the write"
        );
        drop(writing);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        handler.join().unwrap();
    }

    #[test]
    fn noise_and_paths() {
        assert_eq!(noise("uniform").unwrap(), NoiseConfig::Uniform);
        assert_eq!(
            noise("0.05").unwrap(),
            NoiseConfig::Gaussian { sigma: 0.05 }
        );
        assert!(noise("lots").is_err());
        assert_eq!(
            beside(Path::new("a/m.safetensors"), "ckpt.safetensors"),
            Path::new("a/m.ckpt.safetensors")
        );
    }
}
