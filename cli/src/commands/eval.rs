//! `tarflow eval --model M DIR`: bits/dim per class and overall, next to what PNG achieves;
//! with `--samples N`, also the sample-fidelity report (recognition, precision/recall, copy
//! check; see `tarflow::fidelity`) of N generated images per class.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tarflow::Model;
use tarflow::fidelity::{
    Classifier, ClassifierConfig, CriticConfig, FidelityConfig, FidelityReport, NearCopyRule,
};
use tarflow::train::{ChannelChoice, DataConfig, Dataset, evaluate_bpd};

use crate::generate::{SamplingArgs, load, progress_bar};

/// Arguments of `tarflow eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder of images laid out as for training (class subfolders named as the model's
    /// classes). With `--samples`: the folder holding `train/` and `test/` (or, with `--train`,
    /// the held-out folder itself).
    pub data: PathBuf,
    /// Also generate this many images per class and print the sample-fidelity report
    /// (recognition by a classifier trained on the training split, precision/recall, copy check).
    #[arg(long)]
    pub samples: Option<usize>,
    /// The training split, when it is not DATA/train (DATA is then the held-out split).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Neighbours of the k-NN balls of precision and recall.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// A sample is a near-copy when its mean absolute difference to a training image (or its
    /// mirror) is below this many 8-bit levels per subpixel.
    #[arg(long, default_value_t = 2.0, conflicts_with = "near_copy_quantile")]
    pub near_copy_levels: f64,
    /// Instead: a near-copy is closer to the training set than this quantile (0-1, e.g. 0.01)
    /// of the held-out real images' nearest-training distances.
    #[arg(long)]
    pub near_copy_quantile: Option<f64>,
    /// Optimiser steps of the classifier.
    #[arg(long, default_value_t = ClassifierConfig::default().steps)]
    pub classifier_steps: usize,
    /// Folds of the real-vs-generated critic's cross-validation (0: no critic).
    #[arg(long, default_value_t = CriticConfig::default().folds)]
    pub critic_folds: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Asset lint: write a heatmap of per-patch bits for every image of DATA (the texture beside
    /// it) and `lint.json` into this folder, and rank the images that fit the model worst,
    /// corrected for their complexity (mean difference of neighbouring pixels).
    #[arg(long, conflicts_with = "samples")]
    pub heatmap: Option<PathBuf>,
    /// Asset lint: upscale factor of the heatmaps.
    #[arg(long, default_value_t = 8)]
    pub heatmap_scale: u32,
    /// Asset lint: images listed in the ranking.
    #[arg(long, default_value_t = 10)]
    pub worst: usize,
    /// Sampling options (`--seed` also seeds the dequantisation noise of bits/dim, `--batch`
    /// is also the images per forward pass).
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// One row of the report.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Class name, or `all`.
    pub class: String,
    /// Images.
    pub images: usize,
    /// Model bits per subpixel (uniform dequantisation).
    pub model_bpd: f64,
    /// PNG file bits per subpixel (file size * 8 / (W * H * channels)).
    pub png_bpd: f64,
    /// Scored with the unconditional likelihood (a class the model does not know, or no class).
    pub unconditional: bool,
}

/// Evaluate.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.sampling.open_device()?;
    let model = load(&args.model, &device)?;
    if let Some(out) = &args.heatmap {
        if args.heatmap_scale == 0 || args.heatmap_scale > 64 {
            bail!(
                "--heatmap-scale must be between 1 and 64, not {}",
                args.heatmap_scale
            );
        }
        let data = load_data(&model, &args.data, true)?;
        let opts = super::lint::LintOptions {
            scale: args.heatmap_scale,
            worst: args.worst,
            batch: args.sampling.batch,
            seed: args.sampling.seed,
            json: args.json,
        };
        return super::lint::run(&model, &data, out, &opts);
    }
    let Some(per_class) = args.samples else {
        let data = load_data(&model, &args.data, true)?;
        let rows = bpd_rows(&model, &data, &args)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print_bpd(&rows);
        }
        return Ok(());
    };
    if per_class == 0 {
        bail!("--samples must be at least 1");
    }
    let (train_dir, test_dir) = match &args.train {
        Some(t) => (t.clone(), args.data.clone()),
        None => {
            let (t, h) = (args.data.join("train"), args.data.join("test"));
            if !t.is_dir() || !h.is_dir() {
                bail!(
                    "{}: --samples needs the folder holding train/ and test/ (as assets/textures), \
                     or the held-out folder with --train TRAIN_DIR",
                    args.data.display()
                );
            }
            (t, h)
        }
    };
    let test = load_data(&model, &test_dir, false)?;
    let train = load_data(&model, &train_dir, false)?;
    let rows = bpd_rows(&model, &test, &args)?;

    let clf_cfg = ClassifierConfig {
        steps: args.classifier_steps,
        ..Default::default()
    };
    let bar = progress_bar(clf_cfg.steps as u64, "classifier");
    let t0 = std::time::Instant::now();
    let classifier =
        Classifier::train_with_progress(&train, &clf_cfg, |done, _| bar.set_position(done as u64))?;
    let classifier_seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let fid_cfg = FidelityConfig {
        k: args.k,
        near_copy: match args.near_copy_quantile {
            Some(q) => NearCopyRule::RealQuantile(q),
            None => NearCopyRule::MaxDistance(args.near_copy_levels / 255.0),
        },
        batch: args.sampling.batch,
        critic: CriticConfig {
            folds: args.critic_folds,
            ..CriticConfig::default()
        },
        ..Default::default()
    };
    let sampled_classes = train.class_counts()[..train.num_classes()]
        .iter()
        .filter(|&&n| n > 0)
        .count();
    let bar = progress_bar((per_class * sampled_classes) as u64, "sampling");
    let t0 = std::time::Instant::now();
    let report = FidelityReport::from_model(
        &classifier,
        &model,
        &train,
        &test,
        per_class,
        &args.sampling.options(model.config()),
        &fid_cfg,
        |done, _| bar.set_position(done as u64),
    )
    .with_context(|| format!("the fidelity report of {}", args.model.display()))?;
    let sampling_seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();

    if args.json {
        let out = serde_json::json!({
            "bits_per_dim": rows,
            "bits_per_dim_data": test_dir,
            "fidelity": report,
            "train": train_dir,
            "test": test_dir,
            "samples_per_class": per_class,
            "sampling": args.sampling.options(model.config()),
            "classifier": {
                "config": classifier.config(),
                "train_seconds": classifier_seconds,
            },
            "sampling_seconds": sampling_seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("bits/dim on {}:", test_dir.display());
    print_bpd(&rows);
    println!();
    print_fidelity(&report, &train_dir, &test_dir);
    eprintln!(
        "(classifier trained in {classifier_seconds:.1} s; sampled and scored in {sampling_seconds:.1} s)"
    );
    Ok(())
}

/// Load a data folder with the model's size, channels and class ids. A class folder unknown to
/// the model gets the next id (scored unconditionally by `evaluate_bpd`) when `allow_unknown`,
/// else it is an error (the fidelity report samples the model's own classes).
fn load_data(model: &Model, dir: &Path, allow_unknown: bool) -> anyhow::Result<Dataset> {
    let cfg = model.config();
    let data_cfg = DataConfig {
        img_size: Some(cfg.img_size),
        channels: ChannelChoice::from_count(cfg.in_channels)?,
        unconditional: cfg.num_classes == 0,
        classes: cfg.class_names.clone(),
        ..Default::default()
    };
    let data = Dataset::load(dir, &data_cfg)?;
    for s in data.skipped() {
        eprintln!("{s}");
    }
    if data.num_classes() > cfg.num_classes && cfg.num_classes > 0 && !allow_unknown {
        let extra = &data.class_names()[cfg.num_classes..];
        bail!(
            "{}: class folder(s) {} are unknown to the model",
            dir.display(),
            extra.join(", ")
        );
    }
    Ok(data)
}

/// Bits/dim per class and overall, next to the PNG files' own.
fn bpd_rows(model: &Model, data: &Dataset, args: &EvalArgs) -> anyhow::Result<Vec<Row>> {
    let cfg = model.config();
    let bar = progress_bar(data.len() as u64, "evaluating");
    let report = evaluate_bpd(
        model,
        data,
        args.sampling.batch,
        args.sampling.seed,
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();

    // PNG code length of the same images, file by file (frames of a strip share their file).
    let files = &data.manifest().files;
    let png_bpd = |f: &tarflow::train::ManifestEntry| {
        f.bytes as f64 * 8.0 / (f.size.0 * f.size.1 * cfg.in_channels) as f64
    };
    let k = cfg.num_classes;
    let slots = report.per_class.len() - 1;
    let mut rows = Vec::new();
    for (slot, &(bpd, n)) in report.per_class.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let class = if slot < k {
            cfg.class_name(slot)
        } else if slot < slots {
            data.class_names()[slot].clone()
        } else {
            "unlabelled".into()
        };
        let in_class: Vec<f64> = files
            .iter()
            .filter(|f| f.class.unwrap_or(slots).min(slots) == slot)
            .map(png_bpd)
            .collect();
        let png = in_class.iter().sum::<f64>() / in_class.len().max(1) as f64;
        rows.push(Row {
            class,
            images: n,
            model_bpd: bpd,
            png_bpd: png,
            unconditional: slot >= k,
        });
    }
    let all_png = files.iter().map(png_bpd).sum::<f64>() / files.len().max(1) as f64;
    rows.push(Row {
        class: "all".into(),
        images: report.images,
        model_bpd: report.bits_per_dim,
        png_bpd: all_png,
        unconditional: false,
    });
    Ok(rows)
}

fn print_bpd(rows: &[Row]) {
    println!(
        "{:<12} {:>7} {:>10} {:>9}",
        "class", "images", "model bpd", "PNG bpd"
    );
    for r in rows {
        println!(
            "{:<12} {:>7} {:>10.3} {:>9.3}{}",
            r.class,
            r.images,
            r.model_bpd,
            r.png_bpd,
            if r.unconditional { "  *" } else { "" }
        );
    }
    if rows
        .iter()
        .any(|r| r.unconditional && r.class != "unlabelled")
    {
        println!(
            "* a class the model was not trained on: scored with its unconditional likelihood \
             (the mean class embedding), how well this art fits the model's style overall"
        );
    }
    println!(
        "(bits per subpixel; model under uniform dequantisation, as the reference's evaluate_bpd.py)"
    );
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.0}%", 100.0 * v))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// A ratio with three decimals.
fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// A [0, 1] distance in 8-bit levels.
fn levels(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}", 255.0 * v))
}

fn print_fidelity(report: &FidelityReport, train: &Path, test: &Path) {
    println!(
        "sample fidelity ({} samples; reals: {} for precision/recall, {} for recognition and \
         the copy check):",
        report.overall.generated,
        train.display(),
        test.display()
    );
    println!(
        "{:<12} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9} {:>11} {:>8} {:>8}",
        "class",
        "samples",
        "recog.",
        "recog.",
        "precision",
        "precision",
        "recall",
        "nearest",
        "nearest",
        "near-copies",
        "streaks",
        "streaks"
    );
    println!(
        "{:<12} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9} {:>11} {:>8} {:>8}",
        "",
        "",
        "samples",
        "reals",
        "samples",
        "reals",
        "",
        "samples",
        "reals",
        "",
        "samples",
        "reals"
    );
    for c in report.classes.iter().chain([&report.overall]) {
        println!(
            "{:<12} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>9} {:>11} {:>8} {:>8}",
            c.class,
            c.generated,
            pct(c.recognised_generated),
            pct(c.recognised_real),
            num(c.precision),
            num(c.precision_real),
            num(c.recall),
            levels(c.copy.generated_median),
            levels(c.copy.real_median),
            format!("{}/{}", c.copy.near_copies, c.generated),
            ratio(c.streaks.generated),
            ratio(c.streaks.real),
        );
    }
    let t = 255.0 * report.near_copy_threshold;
    println!(
        "recog.: share the classifier (trained on the training split) assigns to the class asked \
         for; precision: share inside the training reals' k={} nearest-neighbour balls in its \
         feature space (for samples, and for the held-out reals as the reference); recall: share \
         of training reals inside the samples' balls.",
        report.k
    );
    println!(
        "streaks: mean vertical over mean horizontal difference of neighbouring pixels (1: no \
         direction; above the reals': horizontal streaks, below: vertical ones); samples {}, \
         training reals {} overall.",
        ratio(report.overall.streaks.generated),
        ratio(report.overall.streaks.real)
    );
    if let Some(n) = report.denoise_diverged.filter(|&n| n > 0) {
        println!(
            "denoising diverged for {n} of {} samples (they keep their image from before \
             denoising): lower --guidance, or try --guidance-rule gaussian",
            report.overall.generated
        );
    }
    if let Some(n) = report.reverse_resampled.filter(|&n| n > 0) {
        println!(
            "the reverse pass diverged for {n} of {} samples: they were sampled again with less \
             guidance or a cooler prior (lower --guidance, or try --guidance-rule gaussian)",
            report.overall.generated
        );
    }
    if let Some(c) = &report.critic {
        println!(
            "critic: a small classifier cross-validated ({} folds) on {} images a side tells \
             samples from held-out reals {} of the time, and training reals from held-out reals \
             {} (the floor a model whose samples look like its training art would reach; 50% is \
             chance).",
            c.folds,
            c.per_side,
            pct(c.generated_vs_real),
            pct(c.train_vs_test)
        );
    }
    println!();
    println!(
        "Copy check, for artists: each generated texture is compared with every training \
         texture (and its mirror image, since training flips them), and 'nearest' is the average \
         difference per colour channel to the closest one, in 8-bit levels (0-255), as a median \
         per class. The held-out real textures, which are new art, show how far genuinely new \
         work sits from the training set. A sample closer than {t:.1} levels is a near-copy of one \
         training file: it carries that file's licence and attribution, so check them before \
         shipping it (the closest samples and their files are listed below; sample numbers count \
         from 0, class by class)."
    );
    if report.overall.copy.real_near_copies > 0 {
        println!(
            "Note: {} held-out real texture(s) are also under the threshold: the training set \
             holds near-duplicates, or the threshold is too loose.",
            report.overall.copy.real_near_copies
        );
    }
    if !report.closest.is_empty() {
        let n = report.overall.copy.near_copies;
        println!(
            "{} The samples closest to a training image:",
            if n == 0 {
                "No near-copies.".to_string()
            } else {
                format!("{n} near-copies (NEAR-COPY below).")
            }
        );
    }
    for c in &report.closest {
        println!(
            "  sample {:>4} ({}) {:>5.1} levels from {}{}{}",
            c.sample,
            c.class,
            255.0 * c.distance,
            c.train_file,
            if c.mirrored { " (mirrored)" } else { "" },
            if c.near_copy { "  NEAR-COPY" } else { "" }
        );
    }
}
