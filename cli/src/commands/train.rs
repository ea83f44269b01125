//! `tarflow train DIR --out MODEL`: train (or resume, or continue incrementally) on a folder of art.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use tarflow::sample::{Labels, SampleOptions, sample};
use tarflow::train::{
    AugmentConfig, ChannelChoice, Checkpoint, DataConfig, Dataset, NoiseConfig, Progress,
    RunOptions, SizePolicy, TrainConfig, Trainer, evaluate_bpd,
};
use tarflow::{Model, ModelConfig};

use crate::generate::{open_device, progress_bar};
use crate::images::{grid, save_png};

/// Arguments of `tarflow train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder of training images; each first-level subfolder is a class (a flat folder trains an
    /// unconditional model).
    pub data: PathBuf,
    /// The model file to write (the EMA weights). Its checkpoint goes beside it
    /// (`NAME.ckpt.safetensors`) and so does a sample grid (`NAME.samples.png`).
    #[arg(long)]
    pub out: PathBuf,
    /// Total optimizer steps; running again with a larger number continues.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Warmup steps of the learning rate.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Patch side in pixels (new models; default 2 up to 32 px images, else 4).
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Transformer width (new models; a multiple of 64).
    #[arg(long, default_value_t = 128)]
    pub channels: usize,
    /// Flow blocks (new models).
    #[arg(long, default_value_t = 4)]
    pub blocks: usize,
    /// Attention layers per flow block (new models).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Training noise: a Gaussian sigma in the [-1, 1] scale (enables denoising), or `uniform`.
    #[arg(long, default_value = "0.05")]
    pub noise: String,
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
    /// Image channels: auto, gray, gray-alpha, rgb, rgba.
    #[arg(long, default_value = "auto")]
    pub image_channels: ChannelChoice,
    /// Training image size (default: the most common width in the folder).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Images of another size: error, crop (textures) or resize (sprites).
    #[arg(long, default_value = "error")]
    pub size_policy: SizePolicy,
    /// Split vertical animation strips into frames.
    #[arg(long)]
    pub split_strips: bool,
    /// Ignore class folders.
    #[arg(long)]
    pub unconditional: bool,
    /// Probability of dropping a label (trains the unconditional branch for guidance).
    #[arg(long, default_value_t = 0.1)]
    pub label_dropout: f64,
    /// Fraction of each class held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    pub holdout: f64,
    /// EMA decay of the exported weights.
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    /// Steps between checkpoints, sample grids and model exports.
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    /// Steps between held-out evaluations (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Seed of initialisation, batches, augmentation and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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

fn load_data(root: &Path, cfg: &DataConfig) -> anyhow::Result<Dataset> {
    let data = Dataset::load(root, cfg)?;
    for s in data.skipped() {
        eprintln!("{s}");
    }
    Ok(data)
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

/// A grid of samples from the EMA model, one row per class (8 per row).
fn write_samples(model: &Model, path: &Path) -> anyhow::Result<()> {
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
    let samples = sample(model, &labels, &opts)?;
    let (sheet, _) = grid(&samples.rgba, 8, 1);
    save_png(path, &sheet, 4)
}

/// Train.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = open_device(&args.device)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let ckpt_path = beside(&args.out, "ckpt.safetensors");
    let samples_path = beside(&args.out, "samples.png");
    let data_cfg = DataConfig {
        img_size: args.img_size,
        channels: args.image_channels,
        size_policy: args.size_policy,
        split_strips: args.split_strips,
        unconditional: args.unconditional,
        ..Default::default()
    };
    let train_cfg = TrainConfig {
        seed: args.seed,
        batch_size: args.batch,
        lr: args.lr,
        warmup_steps: args.warmup,
        total_steps: args.steps,
        label_dropout: args.label_dropout,
        ema_decay: args.ema,
        noise: noise(&args.noise)?,
        augment: AugmentConfig {
            hflip: args.hflip,
            vflip: args.vflip,
            rot90: args.rot90,
            toroidal: args.toroidal,
        },
        holdout_fraction: args.holdout,
        ..Default::default()
    };

    let mut trainer = if ckpt_path.exists() && !args.fresh {
        let ckpt = Checkpoint::load(&ckpt_path, &device)?;
        // Known classes keep their ids; new class folders get the next ones.
        let cfg = DataConfig {
            classes: ckpt.model_config.class_names.clone(),
            ..ckpt.state.manifest.config.clone()
        };
        let data = load_data(&args.data, &cfg)?;
        let mut config = ckpt.state.config.clone();
        config.total_steps = args.steps;
        let old_classes = ckpt.model_config.num_classes;
        let mut t = Trainer::from_checkpoint(ckpt, data, &device)?;
        t.set_config(config)?;
        println!(
            "resuming {} at step {} ({})",
            ckpt_path.display(),
            t.step_count(),
            describe(t.train_data())
        );
        if t.data_changed() {
            let new = t.model_config().num_classes.saturating_sub(old_classes);
            println!(
                "the data changed since the checkpoint: continuing incrementally ({new} new class(es))"
            );
        }
        t
    } else if args.out.exists() && !args.fresh {
        let model = tarflow::format::load_model(&args.out, &device)?;
        let cfg = DataConfig {
            classes: model.config().class_names.clone(),
            ..data_cfg
        };
        let data = load_data(&args.data, &cfg)?;
        println!(
            "continuing from the model {} ({})",
            args.out.display(),
            describe(&data)
        );
        Trainer::from_model(&model, train_cfg, data, &device)?
    } else {
        let data = load_data(&args.data, &data_cfg)?;
        let s = data.img_size();
        let patch = args.patch_size.unwrap_or(if s <= 32 { 2 } else { 4 });
        let sizes = ModelConfig::new(
            data.channels(),
            s,
            patch,
            args.channels,
            args.blocks,
            args.layers,
        );
        println!("new model: {} ({})", args.out.display(), describe(&data));
        Trainer::new(sizes, train_cfg, data, &device)?
    };
    let c = trainer.model_config().clone();
    println!(
        "model: {}x{} px, {} ch, patch {}, width {}, {} blocks x {} layers, {} classes, {} parameters",
        c.img_size,
        c.img_size,
        c.in_channels,
        c.patch_size,
        c.channels,
        c.num_blocks,
        c.layers_per_block,
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

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;

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
            b.println(format!(
                "step {step}: skipped ({reason}), {consecutive} in a row"
            ));
        }
        Progress::Evaluated(r) => b.println(format!(
            "step {}: held-out {:.3} bits/dim on {} images",
            r.step, r.bits_per_dim, r.images
        )),
        _ => {}
    });

    let started = Instant::now();
    let start_step = trainer.step_count();
    let every = args.checkpoint_every.max(1);
    while trainer.step_count() < args.steps && !stop.load(Ordering::SeqCst) {
        let until = ((trainer.step_count() / every + 1) * every).min(args.steps);
        let opts = RunOptions {
            until_step: until,
            checkpoint: Some(ckpt_path.clone()),
            checkpoint_every: 0,
            eval_every: args.eval_every,
            stop: Some(stop.clone()),
        };
        let summary = trainer.run(&opts)?;
        export(&mut trainer, &args, started, start_step)?;
        write_samples(&trainer.ema_model()?, &samples_path)?;
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
    if stop.load(Ordering::SeqCst) {
        println!(
            "interrupted at step {}: checkpoint saved to {}; run the same command to resume",
            trainer.step_count(),
            ckpt_path.display()
        );
        return Ok(());
    }
    export(&mut trainer, &args, started, start_step)?;
    let holdout = trainer.holdout_data().clone();
    let report = if holdout.is_empty() {
        None
    } else {
        Some(evaluate_bpd(
            &trainer.ema_model()?,
            &holdout,
            args.batch,
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
    tarflow::format::save_model(&model, &args.out)?;
    if model.config().num_classes == 0 && trainer.train_data().is_conditional() {
        bail!("internal: a conditional dataset produced an unconditional model");
    }
    Ok(())
}
