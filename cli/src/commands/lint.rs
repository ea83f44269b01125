//! `tarflow eval --heatmap DIR`: the asset lint. A heatmap of per-patch bits for every image
//! (the texture beside it), and the images that fit the model worst once their complexity is
//! accounted for (see `tarflow::lint`).

use std::path::Path;

use anyhow::Context;
use tarflow::Model;
use tarflow::lint::{LintReport, heatmap, lint};
use tarflow::pixels::RgbaImage;
use tarflow::train::Dataset;
use tarflow::train::augment::Placement;

use crate::generate::progress_bar;
use crate::images::save_png;

/// Options of the lint.
#[derive(Debug, Clone)]
pub struct LintOptions {
    /// Upscale of the heatmaps.
    pub scale: u32,
    /// Images listed in the printed ranking.
    pub worst: usize,
    /// Images per forward pass.
    pub batch: usize,
    /// Seed of the dequantisation noise.
    pub seed: u64,
    /// Print JSON instead of tables.
    pub json: bool,
}

/// The `q` quantile (0-1) of `v` (sorted in place).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The RGBA8 image the model saw for item `i` of `data`.
fn item_image(model: &Model, data: &Dataset, i: usize) -> anyhow::Result<RgbaImage> {
    let cfg = model.config();
    let (s, c) = (cfg.img_size, cfg.in_channels);
    let item = &data.items()[i];
    let px = Placement::centre(item, s).apply(item, s, c);
    Ok(RgbaImage {
        width: s as u32,
        height: s as u32,
        pixels: tarflow::pixels::channels_to_rgba(&px, c),
    })
}

/// An error when `out` is the data folder `data` or inside it: the heatmaps are named after the
/// images (`OUT/stone/a.png` for `DATA/stone/a.png`), so they would be written over the art.
pub fn refuse_output_inside_data(out: &Path, data: &Path) -> anyhow::Result<()> {
    // The nearest existing ancestor of `out` (it may not exist yet), resolved.
    let mut probe = out.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(p) = std::fs::canonicalize(&probe) {
            break rest
                .iter()
                .rev()
                .fold(p, |acc: std::path::PathBuf, c| acc.join(c));
        }
        match (probe.file_name().map(|n| n.to_owned()), probe.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                probe = if parent.as_os_str().is_empty() {
                    Path::new(".").to_path_buf()
                } else {
                    parent.to_path_buf()
                };
            }
            _ => break std::path::absolute(out)?,
        }
    };
    let data = std::fs::canonicalize(data)
        .with_context(|| format!("cannot read the data folder {}", data.display()))?;
    if resolved.starts_with(&data) {
        anyhow::bail!(
            "--heatmap {}: the heatmaps would be written inside the data folder {} (named after \
             its images, over them); give a folder outside it",
            out.display(),
            data.display()
        );
    }
    Ok(())
}

/// Lint `data`, write the heatmaps and `lint.json` into `out`, print the ranking.
pub fn run(model: &Model, data: &Dataset, out: &Path, opts: &LintOptions) -> anyhow::Result<()> {
    refuse_output_inside_data(out, data.root())?;
    let bar = progress_bar(data.len() as u64, "linting");
    let report = lint(model, data, opts.batch, opts.seed, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    // One colour scale for the whole folder, so heatmaps compare: the 1st to 99th percentile
    // of every patch's bits.
    let mut all: Vec<f64> = report
        .entries
        .iter()
        .flat_map(|e| e.patches.bits.iter().copied())
        .collect();
    let range = (quantile(&mut all, 0.01), quantile(&mut all, 0.99));
    let patch = model.config().patch_size;
    for e in &report.entries {
        let img = item_image(model, data, e.item)?;
        let map = heatmap(&e.patches, patch, opts.scale, range, Some(&img), opts.scale)?;
        let stem = e.file.trim_end_matches(".png").trim_end_matches(".PNG");
        let name = if e.frame > 0 {
            format!("{stem}_f{}.png", e.frame)
        } else {
            format!("{stem}.png")
        };
        save_png(&out.join(name), &map, 1)?;
    }
    let json = serde_json::json!({
        "heatmap_range_bits": [range.0, range.1],
        "report": report,
    });
    let path = out.join("lint.json");
    tarflow::format::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    print_ranking(&report, opts.worst);
    println!(
        "heatmaps (texture | bits per patch, dark {:.1} to light {:.1} bits/dim) and lint.json in {}",
        range.0,
        range.1,
        out.display()
    );
    Ok(())
}

fn print_ranking(report: &LintReport, worst: usize) {
    let mut uncorrected_rank = vec![0; report.entries.len()];
    for (r, &i) in report.ranking_uncorrected.iter().enumerate() {
        uncorrected_rank[i] = r + 1;
    }
    println!(
        "images that fit the model worst, corrected for complexity ({} images; model bits/dim \
         against the line {:.2} + {:.2} x ln(1 + busyness) fitted over the folder):",
        report.entries.len(),
        report.fit_intercept,
        report.fit_slope
    );
    println!(
        "{:>4} {:>8} {:>8} {:>8} {:>8} {:>8}  file",
        "rank", "excess", "model", "busy", "PNG", "by bits"
    );
    for (r, &i) in report.ranking.iter().take(worst).enumerate() {
        let e = &report.entries[i];
        let frame = if e.frame > 0 {
            format!(" (frame {})", e.frame)
        } else {
            String::new()
        };
        println!(
            "{:>4} {:>+8.2} {:>8.2} {:>8.1} {:>8.2} {:>8}  {}{frame}{}",
            r + 1,
            e.residual,
            e.model_bpd,
            e.complexity,
            e.png_bpd,
            uncorrected_rank[i],
            e.file,
            if e.unconditional { "  *" } else { "" }
        );
    }
    println!(
        "excess: bits/dim above what images as busy take under this model (busy: mean difference \
         of neighbouring subpixels, 8-bit levels; model and PNG: bits per subpixel); 'by bits': \
         the rank by model bits/dim alone (which lists the busiest images, not the \
         ones out of style). * scored unconditionally (a class the model does not know)."
    );
}
