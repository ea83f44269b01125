//! `SampleOptions::alpha_cutoff` on the bundled demo model (RGBA): every delivered pixel (streamed
//! patches, denoised and final images) has alpha 0 or 255, opaque pixels keep the colours of the
//! same run without it and transparent ones are transparent black, the float images are
//! untouched, and the fidelity report's samples get the same pixels.

use std::path::PathBuf;

use tarflow::candle::Device;
use tarflow::sample::{
    Labels, SampleEvent, SampleOptions, Sampler, alpha_threshold, sample, to_rgba8,
};

fn demo() -> tarflow::Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models/textures16.tarflow.safetensors");
    tarflow::format::load_model(&path, &Device::Cpu).unwrap()
}

#[test]
fn snapped_alpha_is_binary_everywhere_and_changes_nothing_else() {
    let model = demo();
    assert_eq!(model.config().in_channels, 4, "the demo model is RGBA");
    let k = model.config().num_classes as i64;
    let labels = Labels::Classes(vec![0, k - 1]);
    let plain = SampleOptions {
        guidance: 2.0,
        seed: 5,
        ..Default::default()
    };
    let cut = SampleOptions {
        alpha_cutoff: Some(0.5),
        ..plain.clone()
    };
    let a = sample(&model, &labels, &plain).unwrap();
    let b = sample(&model, &labels, &cut).unwrap();
    let flat = |t: &tarflow::candle::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(
        flat(&a.images),
        flat(&b.images),
        "float images are exact either way"
    );
    let t = alpha_threshold(0.5);
    let (mut partial, mut cleared) = (0, 0);
    for (x, y) in a.rgba.iter().zip(&b.rgba) {
        assert_eq!(x.pixels.len(), y.pixels.len());
        for (p, q) in x.pixels.chunks_exact(4).zip(y.pixels.chunks_exact(4)) {
            if p[3] < t {
                assert_eq!(q, [0, 0, 0, 0], "transparent pixels are transparent black");
                cleared += usize::from(p[..3] != [0, 0, 0]);
            } else {
                assert_eq!(q, [p[0], p[1], p[2], 255], "opaque colours unchanged");
            }
            partial += usize::from(p[3] != 0 && p[3] != 255);
        }
    }
    assert!(
        partial > 0,
        "the model's own alpha has partial values to snap"
    );
    assert!(
        cleared > 0,
        "the model leaves colour under some transparent pixels, which the cutoff clears"
    );
    assert_eq!(
        a.rgba,
        to_rgba8(&a.images).unwrap(),
        "no cutoff: the model's alpha"
    );

    // Streamed patches and the denoised event are snapped too.
    let mut patches = 0;
    let mut denoised = false;
    for ev in Sampler::new(&model).unwrap().stream(&labels, &cut).unwrap() {
        match ev.unwrap() {
            SampleEvent::Patch(p) => {
                patches += 1;
                for px in &p.pixels {
                    assert!(px.chunks_exact(4).all(|q| q[3] == 0 || q[3] == 255));
                }
            }
            SampleEvent::Denoised { images } => {
                denoised = true;
                assert_eq!(images, b.rgba);
            }
            _ => {}
        }
    }
    assert_eq!(patches, model.config().num_patches());
    assert!(denoised);

    // The fidelity report scores what the sampler delivers.
    let px = tarflow::fidelity::sample_images(&model, &[0, k - 1], &cut, 2, |_, _| {}).unwrap();
    for (img, rgba) in px.iter().zip(&b.rgba) {
        assert_eq!(img, &rgba.pixels);
    }
    // Out-of-range cutoffs are refused.
    let bad = SampleOptions {
        alpha_cutoff: Some(1.5),
        ..plain
    };
    assert!(sample(&model, &labels, &bad).is_err());
}
