//! Palettes on the bundled demo model (which carries learned per-class palettes): every
//! delivered pixel is a palette colour or transparent, in both modes; inside decoding, the
//! reverse pass's own output is already on the palette (later patches conditioned on snapped
//! ones), while the filter leaves it alone.

use std::collections::HashSet;
use std::path::PathBuf;

use tarflow::candle::Device;
use tarflow::palette::{PaletteChoice, PaletteMode, STORED_COLOURS};
use tarflow::sample::{Labels, SampleEvent, SampleOptions, Sampler, to_rgba8};

fn demo() -> tarflow::Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models/textures16.tarflow.safetensors");
    tarflow::format::load_model(&path, &Device::Cpu).unwrap()
}

fn allowed(colours: &[[u8; 3]]) -> HashSet<[u8; 4]> {
    let mut s: HashSet<[u8; 4]> = colours.iter().map(|c| [c[0], c[1], c[2], 255]).collect();
    s.insert([0, 0, 0, 0]);
    s
}

fn all_in(pixels: &[u8], ok: &HashSet<[u8; 4]>) -> bool {
    pixels
        .chunks_exact(4)
        .all(|p| ok.contains(&[p[0], p[1], p[2], p[3]]))
}

#[test]
fn learned_palettes_snap_every_pixel_in_both_modes() {
    let model = demo();
    let stored = model
        .config()
        .palettes
        .clone()
        .expect("the demo model has palettes");
    assert_eq!(stored.per_class.len(), 13);
    assert!(
        stored
            .per_class
            .iter()
            .all(|p| p.colours.len() == STORED_COLOURS)
    );
    let labels = Labels::Classes(vec![10, 12, -1]);
    let want: Vec<HashSet<[u8; 4]>> = [Some(10), Some(12), None]
        .iter()
        .map(|&l| allowed(&stored.for_label(l).reduce(6).colours))
        .collect();
    let sampler = Sampler::new(&model).unwrap();
    let mut raw_on_palette = Vec::new();
    for mode in [PaletteMode::Filter, PaletteMode::Decoding] {
        let opts = SampleOptions {
            guidance: 1.0,
            seed: 3,
            palette: Some(PaletteChoice::Learned(6)),
            palette_mode: mode,
            ..Default::default()
        };
        let mut finished = None;
        for ev in sampler.stream(&labels, &opts).unwrap() {
            match ev.unwrap() {
                SampleEvent::Patch(p) => {
                    for (item, px) in p.pixels.iter().enumerate() {
                        assert!(
                            all_in(px, &want[item]),
                            "{mode:?}: patch {} item {item}",
                            p.index
                        );
                    }
                }
                SampleEvent::Denoised { images } => {
                    for (img, ok) in images.iter().zip(&want) {
                        assert!(all_in(&img.pixels, ok), "{mode:?}: denoised");
                    }
                }
                SampleEvent::Finished(s) => finished = Some(s),
                _ => {}
            }
        }
        let s = finished.unwrap();
        for (img, ok) in s.rgba.iter().zip(&want) {
            assert!(all_in(&img.pixels, ok), "{mode:?}: final");
        }
        // Each class's (6-colour) palette shows, not one shared set.
        assert_ne!(want[0], want[1]);
        let raw = to_rgba8(&s.raw).unwrap();
        raw_on_palette.push(
            raw.iter()
                .zip(&want)
                .all(|(img, ok)| all_in(&img.pixels, ok)),
        );
    }
    assert_eq!(
        raw_on_palette,
        vec![false, true],
        "the reverse pass's output is on the palette only when snapping inside decoding"
    );

    // Given colours: two of them, for every item.
    let opts = SampleOptions {
        seed: 1,
        denoise: false,
        palette: Some(PaletteChoice::Colours(vec![[200, 30, 30], [20, 20, 90]])),
        ..Default::default()
    };
    let s = sampler.sample(&Labels::Classes(vec![2, 4]), &opts).unwrap();
    let ok = allowed(&[[200, 30, 30], [20, 20, 90]]);
    assert!(s.rgba.iter().all(|img| all_in(&img.pixels, &ok)));
}

#[test]
fn a_model_without_palettes_says_how_to_add_them() {
    let mut model = demo();
    model.config_mut().palettes = None;
    let opts = SampleOptions {
        palette: Some(PaletteChoice::Learned(8)),
        ..Default::default()
    };
    let err = Sampler::new(&model)
        .unwrap()
        .stream(&Labels::Classes(vec![0]), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tarflow palette"), "{err}");
}
