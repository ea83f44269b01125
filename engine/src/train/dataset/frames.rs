//! From decoded files to training items: the training size and channel count a folder asks
//! for, the [`SizePolicy`] (strips split into frames, crops kept whole, resizes), and the
//! conversion of RGBA8 pixels to the dataset's channels.

use std::collections::BTreeMap;
use std::path::Path;

use image::{RgbaImage, imageops::FilterType};

use super::files::Decoded;
use super::{DataConfig, Item, ManifestEntry, ResizeFilter, SizePolicy};
use crate::error::{Error, Result};

/// The most common image width (the smallest among equally common ones).
pub(super) fn most_common_width(decoded: &[Decoded]) -> usize {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for d in decoded {
        *counts.entry(d.image.width() as usize).or_default() += 1;
    }
    let best = counts.values().copied().max().unwrap_or(0);
    counts
        .iter()
        .find(|(_, n)| **n == best)
        .map(|(w, _)| *w)
        .unwrap_or(1)
}

/// Channels the images need: 4 when any pixel is not fully opaque, otherwise 3 when any has
/// colour, otherwise 1.
pub(super) fn channels_of(decoded: &[Decoded]) -> usize {
    let alpha = decoded
        .iter()
        .any(|d| d.image.pixels().any(|p| p.0[3] != 255));
    let colour = decoded.iter().any(|d| {
        d.image
            .pixels()
            .any(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2])
    });
    if alpha {
        4
    } else if colour {
        3
    } else {
        1
    }
}

/// The training items of every decoded file at side `s` with `channels` channels, and the
/// manifest entry of each file. A file that does not fit the size policy is an
/// [`Error::Dataset`] naming it.
pub(super) fn items(
    decoded: Vec<Decoded>,
    s: usize,
    channels: usize,
    config: &DataConfig,
) -> Result<(Vec<Item>, Vec<ManifestEntry>)> {
    let mut items = Vec::new();
    let mut manifest_files = Vec::new();
    for d in decoded {
        let (w, h) = (d.image.width() as usize, d.image.height() as usize);
        let file = manifest_files.len();
        let frames = frames(d.image, &d.path, s, config)?;
        let n = frames.len();
        for (k, (img, fw, fh)) in frames.into_iter().enumerate() {
            items.push(Item {
                pixels: crate::pixels::rgba_to_channels(img.as_raw(), channels),
                width: fw,
                height: fh,
                label: d.class,
                file,
                frame: k,
            });
        }
        manifest_files.push(ManifestEntry {
            path: d.rel,
            class: d.class,
            size: (w, h),
            frames: n,
            bytes: d.bytes,
            hash: d.hash,
        });
    }
    Ok((items, manifest_files))
}

/// The frames (image, width, height) one file (`image`, read from `path`) gives at side `s`: the frames of a strip when
/// strips are split, the image itself at the training size, else what the size policy says.
fn frames(
    image: RgbaImage,
    path: &Path,
    s: usize,
    config: &DataConfig,
) -> Result<Vec<(RgbaImage, usize, usize)>> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if config.split_strips && w == s && h > s && h.is_multiple_of(s) {
        return Ok((0..h / s)
            .map(|k| {
                let view = image::imageops::crop_imm(&image, 0, (k * s) as u32, s as u32, s as u32)
                    .to_image();
                (view, s, s)
            })
            .collect());
    }
    if w == s && h == s {
        return Ok(vec![(image, s, s)]);
    }
    match config.size_policy {
        SizePolicy::Error => Err(Error::Dataset {
            path: path.to_path_buf(),
            reason: format!(
                "the image is {w}x{h}, the training size is {s}x{s}; choose the crop or resize \
                 size policy{}",
                if w == s && h.is_multiple_of(s) {
                    ", or split animation strips into frames"
                } else {
                    ""
                }
            ),
        }),
        SizePolicy::Crop if w < s || h < s => Err(Error::Dataset {
            path: path.to_path_buf(),
            reason: format!(
                "the image is {w}x{h}, smaller than the {s}x{s} crops the crop policy takes; use \
                 the resize policy or remove it"
            ),
        }),
        SizePolicy::Crop => Ok(vec![(image, w, h)]),
        SizePolicy::Resize => {
            let filter = match config.resize_filter {
                ResizeFilter::Nearest => FilterType::Nearest,
                ResizeFilter::Smooth => FilterType::CatmullRom,
            };
            let r = image::imageops::resize(&image, s as u32, s as u32, filter);
            Ok(vec![(r, s, s)])
        }
    }
}
