//! Morphs on the bundled demo model: the ends reproduce the encoded images, and frames spaced
//! by arc length change by an even amount where plain slerp spacing does not.

use std::path::{Path, PathBuf};

use tarflow::candle::{Device, Tensor};
use tarflow::morph::{MorphOptions, Spacing, encode, mean_abs_diff, morph};
use tarflow::sample::{RgbaImage, SampleOptions, Sampler};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An RGBA PNG as the image and as the model's (1, 4, H, W) input.
fn read(path: &Path) -> (RgbaImage, Vec<f32>) {
    let img = image::open(path).unwrap().to_rgba8();
    let (w, h) = img.dimensions();
    let raw = img.into_raw();
    let mut planes = Vec::with_capacity(raw.len());
    for c in 0..4 {
        for p in 0..(w * h) as usize {
            planes.push(2.0 * f32::from(raw[p * 4 + c]) / 255.0 - 1.0);
        }
    }
    (
        RgbaImage {
            width: w,
            height: h,
            pixels: raw,
        },
        planes,
    )
}

#[test]
fn morph_ends_reproduce_the_images_and_arc_length_evens_the_steps() {
    let model = tarflow::format::load_model(
        &root().join("assets/models/textures16.tarflow.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let cfg = model.config().clone();
    let dir = root().join("assets/textures/test/machines");
    let (a, pa) = read(&dir.join("homedecor_analog_clock_face.png"));
    let (b, pb) = read(&dir.join("tnt_top_burning__data2.png"));
    let x = Tensor::from_vec([pa, pb].concat(), (2, 4, 16, 16), &Device::Cpu).unwrap();
    let class = cfg.class_id("machines").unwrap() as i64;
    let z = encode(&model, &x, Some(&[class, class])).unwrap();
    let (za, zb) = (z.narrow(0, 0, 1).unwrap(), z.narrow(0, 1, 1).unwrap());
    let sampler = Sampler::new(&model).unwrap();
    let opts = SampleOptions {
        denoise: false,
        ..Default::default()
    };
    let run = |spacing| {
        let o = MorphOptions {
            frames: 6,
            spacing,
            oversample: 3,
            ..Default::default()
        };
        morph(&sampler, &za, &zb, Some(class), &o, &opts).unwrap()
    };
    let even = run(Spacing::Slerp);
    let arc = run(Spacing::ArcLength);
    for m in [&even, &arc] {
        assert_eq!(m.frames.len(), 6);
        assert_eq!((m.t[0], m.t[5]), (0.0, 1.0));
        assert!(m.t.windows(2).all(|w| w[0] < w[1]), "{:?}", m.t);
        // The exact inverse: the ends are the images, to float rounding (< 0.05 levels on
        // average, no subpixel off by more than one level).
        for (frame, img) in [(&m.frames[0], &a), (&m.frames[5], &b)] {
            assert!(mean_abs_diff(frame, img).unwrap() < 0.05);
            let worst = frame
                .pixels
                .iter()
                .zip(&img.pixels)
                .map(|(p, q)| p.abs_diff(*q))
                .max()
                .unwrap();
            assert!(worst <= 1, "a subpixel {worst} levels off");
        }
        // The middle frames are neither end.
        assert!(mean_abs_diff(&m.frames[2], &a).unwrap() > 5.0);
        assert!(mean_abs_diff(&m.frames[2], &b).unwrap() > 5.0);
    }
    // This pair's slerp path changes unevenly (most of it in the middle); arc-length spacing
    // evens it out (DESIGN.md 11: cv 0.87 -> 0.04 at 8 frames).
    let (se, sa) = (even.step_stats(), arc.step_stats());
    assert!(se.cv > 0.3, "slerp steps {:?}", even.steps);
    assert!(sa.cv < 0.15, "arc-length steps {:?}", arc.steps);
    assert!(sa.max / sa.min < 1.5, "arc-length steps {:?}", arc.steps);
}
