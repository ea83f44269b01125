//! Tests of the edits on the bundled demo model (16x16 textures): what each edit promises, with
//! thresholds that a broken edit (hole ignoring its context, seams left as they were, known
//! pixels touched) fails.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::*;
use crate::format::load_model;
use crate::model::Model;
use crate::pixels::RgbaImage;
use crate::sample::{Labels, SampleOptions, Sampler};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The demo model, loaded once for every test of this module.
pub(crate) fn demo() -> &'static (Model, Sampler) {
    static DEMO: OnceLock<(Model, Sampler)> = OnceLock::new();
    DEMO.get_or_init(|| {
        let path = root().join("assets/models/textures16.tarflow.safetensors");
        let model = load_model(&path, &candle_core::Device::Cpu).expect("the demo model loads");
        let sampler = Sampler::new(&model).expect("the demo model samples");
        (model, sampler)
    })
}

pub(crate) fn held_out(class: &str, file: &str) -> RgbaImage {
    let path = root().join("assets/textures/test").join(class).join(file);
    let img = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgba8();
    RgbaImage {
        width: img.width(),
        height: img.height(),
        pixels: img.into_raw(),
    }
}

fn paste(orig: &RgbaImage, fill: &RgbaImage, mask: &Mask) -> RgbaImage {
    let mut out = orig.clone();
    for (q, _) in mask.regenerate.iter().enumerate().filter(|(_, r)| **r) {
        out.pixels[q * 4..q * 4 + 4].copy_from_slice(&fill.pixels[q * 4..q * 4 + 4]);
    }
    out
}

/// Unmasked pixels come back bit for bit, the hole changes, and the hole fits its surroundings
/// far better than a fresh sample of the same class pasted in (the naive fill): a fill that
/// ignored the context would score like the pasted sample.
#[test]
fn inpainting_keeps_known_pixels_and_fits_the_hole_to_them() {
    let (model, sampler) = demo();
    let textures = [
        ("wood", "default_chest_side.png"),
        ("wood", "homedecor_generic_wood_plain.png"),
        ("stone", "default_desert_stone.png"),
        ("stone", "technic_granite.png"),
        ("ground", "default_gravel.png"),
        ("ground", "default_dry_grass.png"),
    ];
    let mut mask = Mask::keep_all(16, 16);
    mask.add_rect(4, 4, 8, 8);
    let opts = InpaintOptions {
        sample: SampleOptions {
            seed: 3,
            ..InpaintOptions::default().sample
        },
        ..Default::default()
    };
    let (mut ours, mut naive) = (DiffTally::default(), DiffTally::default());
    for (i, (class, file)) in textures.iter().enumerate() {
        let original = held_out(class, file);
        let label = model.config().class_id(class).unwrap() as i64;
        let made = inpaint_rgba(
            sampler,
            &original,
            &mask,
            &Labels::Classes(vec![label]),
            &opts,
        )
        .unwrap()
        .remove(0);
        for (q, &regen) in mask.regenerate.iter().enumerate() {
            if !regen {
                assert_eq!(
                    made.pixels[q * 4..q * 4 + 4],
                    original.pixels[q * 4..q * 4 + 4],
                    "{file}: kept pixel {q} changed"
                );
            }
        }
        assert_ne!(made, original, "{file}: nothing was regenerated");
        ours.add(&mask_boundary(&made, &mask));
        let fresh = sampler
            .sample(
                &Labels::Classes(vec![label]),
                &SampleOptions {
                    seed: 100 + i as u64,
                    ..Default::default()
                },
            )
            .unwrap();
        naive.add(&mask_boundary(
            &paste(&original, &fresh.rgba[0], &mask),
            &mask,
        ));
    }
    let (r_ours, r_naive) = (ours.ratio().unwrap(), naive.ratio().unwrap());
    eprintln!("boundary ratio: inpainted {r_ours:.2}, fresh sample pasted {r_naive:.2}");
    assert!(
        r_ours < 0.6 * r_naive && r_ours < 2.0,
        "boundary ratio: inpainted {r_ours:.2}, fresh sample pasted {r_naive:.2}"
    );
}

/// A mask that keeps everything gives the image back; bad inputs are errors naming the problem.
#[test]
fn inpainting_checks_its_inputs() {
    let (_, sampler) = demo();
    let img = held_out("stone", "technic_granite.png");
    let opts = InpaintOptions {
        rounds: 1,
        ..Default::default()
    };
    let keep = Mask::keep_all(16, 16);
    let same = inpaint_rgba(sampler, &img, &keep, &Labels::Unconditional(2), &opts).unwrap();
    assert!(same.iter().all(|m| *m == img));
    let small = Mask::keep_all(8, 8);
    let msg = inpaint_rgba(sampler, &img, &small, &Labels::Unconditional(1), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("the mask is 8x8 pixels, the image is 16x16"),
        "{msg}"
    );
    let zero = InpaintOptions {
        rounds: 0,
        ..Default::default()
    };
    let msg = inpaint_rgba(sampler, &img, &keep, &Labels::Unconditional(1), &zero)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("at least 1 round"), "{msg}");
}

/// `SampleOptions::tileable`: the same seed gives the same texture inside (pixels more than the
/// band away from the edges are bit-identical), and its wrap seams become far smoother than
/// those of the plain samples (which the test would see unchanged if the repair did nothing or
/// worked on the wrong pixels).
#[test]
fn tileable_samples_have_smooth_wrap_seams_and_keep_their_middle() {
    let (model, sampler) = demo();
    let cfg = model.config();
    let labels: Vec<i64> = (0..12)
        .map(|i| cfg.class_id(["ground", "stone", "wood"][i % 3]).unwrap() as i64)
        .collect();
    let labels = Labels::Classes(labels);
    let plain = SampleOptions {
        guidance: 1.5,
        seed: 5,
        ..Default::default()
    };
    let tiled = SampleOptions {
        tileable: true,
        ..plain.clone()
    };
    let a = sampler.sample(&labels, &plain).unwrap().rgba;
    let b = sampler.sample(&labels, &tiled).unwrap().rgba;
    let band = default_band(cfg.img_size, cfg.patch_size);
    let (lo, hi) = (band, cfg.img_size - band);
    let (mut ta, mut tb) = (DiffTally::default(), DiffTally::default());
    for (x, y) in a.iter().zip(&b) {
        for q in 0..cfg.img_size * cfg.img_size {
            let (r, c) = (q / cfg.img_size, q % cfg.img_size);
            if (lo..hi).contains(&r) && (lo..hi).contains(&c) {
                assert_eq!(x.pixels[q * 4..q * 4 + 4], y.pixels[q * 4..q * 4 + 4]);
            }
        }
        ta.add(&wrap_seams(x));
        tb.add(&wrap_seams(y));
    }
    let (ra, rb) = (ta.ratio().unwrap(), tb.ratio().unwrap());
    eprintln!("seam ratio: plain {ra:.2}, tileable {rb:.2}");
    assert!(
        rb < 0.85 * ra,
        "seam ratio: plain {ra:.2}, tileable {rb:.2}"
    );
}

/// The same seed gives the same tileable texture for an item whatever the batch size: the seam
/// repair of item `first + k` draws from noise stream `first + k`, not `k`.
#[test]
fn tileable_textures_do_not_depend_on_the_batch_size() {
    let (model, sampler) = demo();
    let cfg = model.config();
    let stone = Some(cfg.class_id("stone").unwrap() as i64);
    let labels = vec![stone; 3];
    let opts = SampleOptions {
        guidance: 1.5,
        seed: 2,
        tileable: true,
        ..Default::default()
    };
    let run = |batch: usize| {
        let mut out = Vec::new();
        crate::sample::generate_batches(
            sampler,
            &labels,
            None,
            &opts,
            batch,
            |_| {},
            |_, s| {
                out.extend(s.rgba);
                Ok(())
            },
        )
        .unwrap();
        out
    };
    let (one, all) = (run(1), run(3));
    assert_eq!(one.len(), 3);
    assert_eq!(one, all);
    // Not vacuous: the items differ from each other.
    assert_ne!(one[1], one[2]);
}

/// Outpainting: the texture grows by whole patches, the original keeps its place and its bytes,
/// and the new area is made (not left transparent black).
#[test]
fn outpainting_extends_and_keeps_the_original() {
    let (_, sampler) = demo();
    let img = held_out("stone", "technic_granite.png");
    let opts = InpaintOptions {
        rounds: 2,
        ..Default::default()
    };
    let by = Extend { right: 4, down: 2 };
    let out = outpaint(sampler, &img, by, &Labels::Unconditional(2), &opts).unwrap();
    assert_eq!(out.len(), 2);
    for o in &out {
        assert_eq!((o.width, o.height), (24, 20));
        for y in 0..16usize {
            assert_eq!(
                o.pixels[y * 24 * 4..(y * 24 + 16) * 4],
                img.pixels[y * 16 * 4..(y + 1) * 16 * 4]
            );
        }
        let new_opaque = (0..20 * 24)
            .filter(|&q| (q % 24 >= 16 || q / 24 >= 16) && o.pixels[q * 4 + 3] > 0)
            .count();
        assert!(
            new_opaque > 100,
            "{new_opaque} of the 224 new pixels are made"
        );
    }
    assert_ne!(out[0], out[1], "items draw their own noise");
    let none = outpaint(
        sampler,
        &img,
        Extend::default(),
        &Labels::Unconditional(1),
        &opts,
    );
    assert!(none.unwrap_err().to_string().contains("at least one patch"));
}
