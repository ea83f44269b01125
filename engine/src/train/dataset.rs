//! [`Dataset`]: training images read from a folder with the `image` crate.
//!
//! Layout: every first-level subfolder of the root that holds images is a class (its name is the
//! class name), and the images below it, at any depth, belong to it. Subfolders without a single
//! image (a game project's `sounds/`, `locale/`, `models/`) are skipped, one [`Skipped`] line
//! each. A root without such subfolders is an unconditional dataset of its top-level images.
//! Files and folders whose name starts with `.` are ignored silently.
//!
//! A root whose only subfolders are `train/` and `test/` is a split, never two classes:
//! [`Dataset::load_split`] loads `train/` for training and `test/` as the held-out set with the
//! same classes, size and channels; [`Dataset::load`] refuses it.
//!
//! Every readable image (PNG, JPEG, WebP, BMP, TGA, GIF; palette, grayscale, 16-bit, RGB and
//! RGBA all accepted) is decoded to 8-bit RGBA, then converted to the dataset's channel count
//! ([`ChannelChoice`]). Files that are not images, or cannot be decoded, are skipped: each one
//! gives one [`Skipped`] line (`skipped PATH: REASON`) and is counted. An empty dataset is an
//! [`Error::Dataset`] naming the folder.
//!
//! Images whose size differs from the training size follow the [`SizePolicy`]; vertical
//! animation strips (an `S x kS` image) can be split into `k` frames ([`DataConfig::split_strips`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::{ImageFormat, ImageReader, RgbaImage, imageops::FilterType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many channels the training images get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelChoice {
    /// From the data: RGBA (4) when any image has a pixel that is not fully opaque, otherwise
    /// RGB (3) when any image has colour, otherwise gray (1).
    #[default]
    Auto,
    /// One channel: luma (Rec. 709 weights); alpha is dropped.
    Gray,
    /// Two channels: luma and alpha.
    GrayAlpha,
    /// Three channels: RGB; alpha is dropped.
    Rgb,
    /// Four channels: RGBA.
    Rgba,
}

impl ChannelChoice {
    /// The channel count, or `None` for [`ChannelChoice::Auto`].
    pub fn count(self) -> Option<usize> {
        match self {
            Self::Auto => None,
            Self::Gray => Some(1),
            Self::GrayAlpha => Some(2),
            Self::Rgb => Some(3),
            Self::Rgba => Some(4),
        }
    }

    /// The explicit choice for a channel count (1 to 4).
    pub fn from_count(c: usize) -> Result<Self> {
        match c {
            1 => Ok(Self::Gray),
            2 => Ok(Self::GrayAlpha),
            3 => Ok(Self::Rgb),
            4 => Ok(Self::Rgba),
            _ => Err(Error::InvalidInput(format!(
                "{c} image channels: training images have 1, 2, 3 or 4"
            ))),
        }
    }
}

impl FromStr for ChannelChoice {
    type Err = Error;

    /// Parse `auto`, `gray`, `gray-alpha`, `rgb`, `rgba` or a count `1`..`4`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "gray" | "grey" | "l" | "1" => Ok(Self::Gray),
            "gray-alpha" | "grey-alpha" | "la" | "2" => Ok(Self::GrayAlpha),
            "rgb" | "3" => Ok(Self::Rgb),
            "rgba" | "4" => Ok(Self::Rgba),
            other => Err(Error::InvalidInput(format!(
                "unknown channel choice `{other}`: expected auto, gray, gray-alpha, rgb or rgba"
            ))),
        }
    }
}

/// What to do with an image whose size is not the training size `S x S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizePolicy {
    /// Refuse the dataset with an error naming the file and its size.
    #[default]
    Error,
    /// Keep the image whole and take a random `S x S` crop each time it is drawn (for
    /// textures); evaluation uses the centre crop. Images smaller than `S` on a side are an error.
    Crop,
    /// Resize to `S x S` once, when loading (for sprites); non-square images are stretched.
    Resize,
}

impl FromStr for SizePolicy {
    type Err = Error;

    /// Parse `error`, `crop` or `resize`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(Self::Error),
            "crop" => Ok(Self::Crop),
            "resize" => Ok(Self::Resize),
            other => Err(Error::InvalidInput(format!(
                "unknown size policy `{other}`: expected error, crop or resize"
            ))),
        }
    }
}

/// The filter [`SizePolicy::Resize`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Nearest neighbour: keeps pixel art crisp.
    #[default]
    Nearest,
    /// Catmull-Rom: smooth, for painted or photographic art.
    Smooth,
}

/// How a folder becomes a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    /// Training image side `S`; `None` takes the most common image width in the folder.
    pub img_size: Option<usize>,
    /// Channel count of the training images.
    pub channels: ChannelChoice,
    /// Images of another size: error, random crop or resize.
    pub size_policy: SizePolicy,
    /// Filter used by [`SizePolicy::Resize`].
    pub resize_filter: ResizeFilter,
    /// Split vertical animation strips (width `S`, height a multiple `kS`) into `k` frames.
    pub split_strips: bool,
    /// Ignore the subfolders' classes: every image is unlabelled.
    pub unconditional: bool,
    /// Classes that already have ids (a trained model's class names, in id order): they keep
    /// their ids, and class folders not among them get the next ids, in name order.
    pub classes: Vec<String>,
}

/// A file, or a subfolder without images, that was left out of the dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file or folder.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped {}: {}", self.path.display(), self.reason)
    }
}

/// One training image: 8-bit pixels, row-major, channels interleaved (`H x W x C`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Pixel values, `height * width * channels` of them.
    pub pixels: Vec<u8>,
    /// Width in pixels (`S`, or more under [`SizePolicy::Crop`]).
    pub width: usize,
    /// Height in pixels (`S`, or more under [`SizePolicy::Crop`]).
    pub height: usize,
    /// Class id, `None` for an unlabelled image.
    pub label: Option<usize>,
    /// Index of the source file in [`DataManifest::files`].
    pub file: usize,
    /// Frame index within an animation strip (0 otherwise).
    pub frame: usize,
}

/// One source file of a dataset, as recorded in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the dataset root, with `/` separators.
    pub path: String,
    /// Class id (`None` when unlabelled).
    pub class: Option<usize>,
    /// Image width and height as stored in the file.
    pub size: (usize, usize),
    /// Training items made from it (frames of a strip, or 1).
    pub frames: usize,
    /// File length in bytes.
    pub bytes: u64,
    /// FNV-1a 64-bit hash of the file's bytes, in hex.
    pub hash: String,
}

/// What a dataset was made of: stored in checkpoints so that a resumed run can tell whether its
/// data changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataManifest {
    /// The dataset root as given.
    pub root: PathBuf,
    /// The options it was loaded with.
    pub config: DataConfig,
    /// Class names in id order.
    pub classes: Vec<String>,
    /// Channels of the training images.
    pub channels: usize,
    /// Training image side.
    pub img_size: usize,
    /// The files used, in load order.
    pub files: Vec<ManifestEntry>,
    /// Number of files skipped.
    pub skipped: usize,
}

impl DataManifest {
    /// Whether two manifests describe the same images (same files, contents, classes and
    /// options; the root path may differ).
    /// The known-class list of the options is not compared: reloading with the full class
    /// list of a checkpoint gives the same ids.
    pub fn same_data(&self, other: &DataManifest) -> bool {
        let opts = |m: &DataManifest| DataConfig {
            classes: Vec::new(),
            ..m.config.clone()
        };
        self.files == other.files
            && self.classes == other.classes
            && self.channels == other.channels
            && self.img_size == other.img_size
            && opts(self) == opts(other)
    }
}

/// Training images with their labels, ready for batching.
#[derive(Debug, Clone)]
pub struct Dataset {
    manifest: DataManifest,
    conditional: bool,
    items: Vec<Item>,
    skipped: Vec<Skipped>,
}

struct Decoded {
    rel: String,
    path: PathBuf,
    class: Option<usize>,
    image: RgbaImage,
    bytes: u64,
    hash: String,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().starts_with('.'))
        .unwrap_or(false)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The entries of a folder, sorted by name, hidden ones left out.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let p = entry.path();
        if !hidden(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Every file below `dir`, recursively, in sorted order.
fn files_below(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            files_below(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Whether `root` is a train/test split: its only (non-hidden) subfolders are `train/` and
/// `test/` (files beside them, such as a licence or a split list, are allowed).
pub fn is_split(root: &Path) -> Result<bool> {
    if !root.is_dir() {
        return Ok(false);
    }
    let mut names: Vec<String> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names == ["test", "train"])
}

/// Decode one file to RGBA8, or say why it cannot be used.
fn decode(path: &Path) -> std::result::Result<(RgbaImage, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the file: {e}"))?;
    let reader = match reader.format() {
        Some(_) => reader,
        None => match ImageFormat::from_path(path) {
            Ok(f) => {
                let mut r = ImageReader::new(Cursor::new(&bytes));
                r.set_format(f);
                r
            }
            Err(_) => {
                return Err("not an image file (unrecognised contents and extension)".to_string());
            }
        },
    };
    let format = reader.format();
    let img = reader.decode().map_err(|e| {
        let kind = format
            .map(|f| format!("{f:?}").to_uppercase())
            .unwrap_or_else(|| "image".into());
        format!("corrupt or unsupported {kind} file: {e}")
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err("the image is empty (0 pixels)".into());
    }
    Ok((img.to_rgba8(), bytes))
}

fn luma(p: &[u8]) -> u8 {
    let y = 0.2126 * p[0] as f32 + 0.7152 * p[1] as f32 + 0.0722 * p[2] as f32;
    y.round().clamp(0.0, 255.0) as u8
}

/// Convert RGBA8 pixels to `channels` interleaved channels.
fn convert(rgba: &[u8], channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * channels);
    for p in rgba.chunks_exact(4) {
        match channels {
            1 => out.push(luma(p)),
            2 => out.extend_from_slice(&[luma(p), p[3]]),
            3 => out.extend_from_slice(&p[..3]),
            _ => out.extend_from_slice(p),
        }
    }
    out
}

impl Dataset {
    /// Load every image below `root`; skipped files are kept in [`Dataset::skipped`].
    pub fn load(root: &Path, config: &DataConfig) -> Result<Self> {
        Self::load_with_report(root, config, &mut |_| {})
    }

    /// Load every image below `root`, calling `report` once for each skipped file, as it is
    /// found (print it to show one line per file).
    pub fn load_with_report(
        root: &Path,
        config: &DataConfig,
        report: &mut dyn FnMut(&Skipped),
    ) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Dataset {
                path: root.to_path_buf(),
                reason: if root.exists() {
                    "not a folder: give the folder that holds the training images".into()
                } else {
                    "no such folder".into()
                },
            });
        }
        if let Some(s) = config.img_size
            && s == 0
        {
            return Err(Error::InvalidInput("image size 0 asked for".into()));
        }
        let entries = sorted_entries(root)?;
        if is_split(root)? {
            return Err(Error::Dataset {
                path: root.to_path_buf(),
                reason: "the folder holds exactly `train/` and `test/`: it is a split, not two \
                         classes; load it with Dataset::load_split (or give `train/` or `test/` \
                         itself)"
                    .into(),
            });
        }
        let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();

        // Class ids: the known classes keep theirs, new folders follow in name order.
        let mut class_names = config.classes.clone();
        {
            let mut seen: BTreeSet<&String> = BTreeSet::new();
            for c in &class_names {
                if !seen.insert(c) {
                    return Err(Error::InvalidInput(format!(
                        "class `{c}` appears twice in the known classes"
                    )));
                }
            }
        }
        let mut skipped = Vec::new();
        let mut skip = |path: &Path, reason: String, skipped: &mut Vec<Skipped>| {
            let s = Skipped {
                path: path.to_path_buf(),
                reason,
            };
            report(&s);
            skipped.push(s);
        };

        // Decode every file of every subfolder first: a subfolder is a class only when it
        // holds at least one image (game projects keep `sounds/`, `locale/`, `models/` beside
        // their textures). Without any such class folder, the top-level images are the data.
        type Scan = (PathBuf, Vec<(PathBuf, Decode)>);
        type Decode = std::result::Result<(RgbaImage, Vec<u8>), String>;
        let mut scans: Vec<Scan> = Vec::new();
        for d in &subdirs {
            let mut below = Vec::new();
            files_below(d, &mut below)?;
            let decoded: Vec<(PathBuf, Decode)> =
                below.into_iter().map(|f| (f.clone(), decode(&f))).collect();
            scans.push(((*d).clone(), decoded));
        }
        let has_image = |s: &Scan| s.1.iter().any(|(_, r)| r.is_ok());
        let by_class = scans.iter().any(has_image);
        let conditional = by_class && !config.unconditional;

        let mut decoded: Vec<Decoded> = Vec::new();
        let mut push = |path: PathBuf, class: Option<usize>, image: RgbaImage, bytes: Vec<u8>| {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            decoded.push(Decoded {
                rel,
                path,
                class,
                image,
                bytes: bytes.len() as u64,
                hash: format!("{:016x}", fnv1a(&bytes)),
            });
        };
        for p in entries.iter().filter(|p| !p.is_dir()) {
            match decode(p) {
                Ok((image, bytes)) if !by_class => push(p.clone(), None, image, bytes),
                Ok(_) => skip(
                    p,
                    "image at the top level, outside any class folder (put it in a subfolder \
                     named after its class)"
                        .into(),
                    &mut skipped,
                ),
                Err(reason) => skip(p, reason, &mut skipped),
            }
        }
        for (dir, files) in scans {
            let n = files.len();
            if !files.iter().any(|(_, r)| r.is_ok()) {
                // One line for the whole folder, not one per sound file.
                skip(
                    &dir,
                    if n == 0 {
                        "no images in this folder (it is empty): not a class".into()
                    } else {
                        format!("no images in this folder ({n} other file(s)): not a class")
                    },
                    &mut skipped,
                );
                continue;
            }
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = if conditional {
                Some(match class_names.iter().position(|c| *c == name) {
                    Some(i) => i,
                    None => {
                        class_names.push(name.clone());
                        class_names.len() - 1
                    }
                })
            } else {
                None
            };
            for (path, r) in files {
                match r {
                    Ok((image, bytes)) => push(path, id, image, bytes),
                    Err(reason) => skip(&path, reason, &mut skipped),
                }
            }
        }

        // An empty dataset is an error that says where.
        if decoded.is_empty() {
            return Err(Error::Dataset {
                path: root.to_path_buf(),
                reason: format!(
                    "no usable images found ({} file(s) skipped); the folder should hold \
                     images, or one subfolder of images per class",
                    skipped.len()
                ),
            });
        }

        // Training size: given, or the most common width.
        let s = match config.img_size {
            Some(s) => s,
            None => {
                let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
                for d in &decoded {
                    *counts.entry(d.image.width() as usize).or_default() += 1;
                }
                let best = counts.values().copied().max().unwrap_or(0);
                counts
                    .iter()
                    .find(|(_, n)| **n == best)
                    .map(|(w, _)| *w)
                    .unwrap_or(1)
            }
        };

        // Channels: given, or from the data.
        let channels = match config.channels.count() {
            Some(c) => c,
            None => {
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
        };

        let mut items = Vec::new();
        let mut manifest_files = Vec::new();
        for d in decoded {
            let (w, h) = (d.image.width() as usize, d.image.height() as usize);
            let file = manifest_files.len();
            let mut frames: Vec<(RgbaImage, usize, usize)> = Vec::new();
            if config.split_strips && w == s && h > s && h.is_multiple_of(s) {
                for k in 0..h / s {
                    let view =
                        image::imageops::crop_imm(&d.image, 0, (k * s) as u32, s as u32, s as u32)
                            .to_image();
                    frames.push((view, s, s));
                }
            } else if w == s && h == s {
                frames.push((d.image, s, s));
            } else {
                match config.size_policy {
                    SizePolicy::Error => {
                        return Err(Error::Dataset {
                            path: d.path.clone(),
                            reason: format!(
                                "the image is {w}x{h}, the training size is {s}x{s}; choose \
                                 the crop or resize size policy{}",
                                if w == s && h.is_multiple_of(s) {
                                    ", or split animation strips into frames"
                                } else {
                                    ""
                                }
                            ),
                        });
                    }
                    SizePolicy::Crop => {
                        if w < s || h < s {
                            return Err(Error::Dataset {
                                path: d.path.clone(),
                                reason: format!(
                                    "the image is {w}x{h}, smaller than the {s}x{s} crops the \
                                     crop policy takes; use the resize policy or remove it"
                                ),
                            });
                        }
                        frames.push((d.image, w, h));
                    }
                    SizePolicy::Resize => {
                        let filter = match config.resize_filter {
                            ResizeFilter::Nearest => FilterType::Nearest,
                            ResizeFilter::Smooth => FilterType::CatmullRom,
                        };
                        let r = image::imageops::resize(&d.image, s as u32, s as u32, filter);
                        frames.push((r, s, s));
                    }
                }
            }
            let n = frames.len();
            for (k, (img, fw, fh)) in frames.into_iter().enumerate() {
                items.push(Item {
                    pixels: convert(img.as_raw(), channels),
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

        let manifest = DataManifest {
            root: root.to_path_buf(),
            config: config.clone(),
            classes: if conditional {
                class_names
            } else {
                config.classes.clone()
            },
            channels,
            img_size: s,
            files: manifest_files,
            skipped: skipped.len(),
        };
        Ok(Self {
            manifest,
            conditional,
            items,
            skipped,
        })
    }

    /// Load a dataset folder that may be a train/test split (see [`is_split`]). A split gives
    /// `train/` and, as the held-out set, `test/`, loaded with the training part's classes,
    /// size and channels so that ids and tensors mean the same; a class folder in `test/` that
    /// `train/` lacks is an error. Any other folder gives itself and `None`. `report` is called
    /// once for each skipped file or folder, of both parts.
    pub fn load_split(
        root: &Path,
        config: &DataConfig,
        report: &mut dyn FnMut(&Skipped),
    ) -> Result<(Dataset, Option<Dataset>)> {
        if !is_split(root)? {
            return Ok((Self::load_with_report(root, config, report)?, None));
        }
        let train = Self::load_with_report(&root.join("train"), config, report)?;
        let test_cfg = DataConfig {
            img_size: Some(train.img_size()),
            channels: ChannelChoice::from_count(train.channels())?,
            classes: train.class_names().to_vec(),
            ..config.clone()
        };
        let test_root = root.join("test");
        let test = Self::load_with_report(&test_root, &test_cfg, report)?;
        if test.is_conditional() != train.is_conditional() {
            return Err(Error::Dataset {
                path: test_root,
                reason: format!(
                    "`test/` {} class folders but `train/` {}: both parts of a split must be \
                     laid out alike",
                    if test.is_conditional() {
                        "has"
                    } else {
                        "has no"
                    },
                    if train.is_conditional() {
                        "has"
                    } else {
                        "has none"
                    },
                ),
            });
        }
        if test.num_classes() > train.num_classes() {
            return Err(Error::Dataset {
                path: test_root,
                reason: format!(
                    "class(es) {} are in `test/` but not in `train/`: a held-out class the \
                     model never trains on cannot be evaluated",
                    test.class_names()[train.num_classes()..]
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok((train, Some(test)))
    }

    /// Build a dataset from items already in memory (tests, generated data). Every item must
    /// have `channels` channels and be at least `img_size` on each side; labels must be below
    /// `class_names.len()`.
    pub fn from_items(
        items: Vec<Item>,
        channels: usize,
        img_size: usize,
        class_names: Vec<String>,
    ) -> Result<Self> {
        if items.is_empty() {
            return Err(Error::InvalidInput(
                "a dataset needs at least one item".into(),
            ));
        }
        ChannelChoice::from_count(channels)?;
        for (i, it) in items.iter().enumerate() {
            if it.pixels.len() != it.width * it.height * channels
                || it.width < img_size
                || it.height < img_size
            {
                return Err(Error::InvalidInput(format!(
                    "item {i}: {}x{} with {} values does not hold {channels}-channel pixels \
                     of at least {img_size}x{img_size}",
                    it.width,
                    it.height,
                    it.pixels.len()
                )));
            }
            if let Some(l) = it.label
                && l >= class_names.len()
            {
                return Err(Error::InvalidInput(format!(
                    "item {i}: label {l} with {} classes",
                    class_names.len()
                )));
            }
        }
        let conditional = items.iter().any(|i| i.label.is_some());
        let nfiles = items.iter().map(|i| i.file + 1).max().unwrap_or(0);
        let files = (0..nfiles)
            .map(|f| {
                let first = items.iter().find(|i| i.file == f);
                ManifestEntry {
                    path: format!("item-{f}"),
                    class: first.and_then(|i| i.label),
                    size: first.map(|i| (i.width, i.height)).unwrap_or((0, 0)),
                    frames: items.iter().filter(|i| i.file == f).count(),
                    bytes: 0,
                    hash: format!(
                        "{:016x}",
                        fnv1a(
                            &items
                                .iter()
                                .filter(|i| i.file == f)
                                .flat_map(|i| i.pixels.iter().copied())
                                .collect::<Vec<u8>>()
                        )
                    ),
                }
            })
            .collect();
        Ok(Self {
            manifest: DataManifest {
                root: PathBuf::new(),
                config: DataConfig {
                    img_size: Some(img_size),
                    channels: ChannelChoice::from_count(channels)?,
                    classes: class_names.clone(),
                    ..DataConfig::default()
                },
                classes: class_names,
                channels,
                img_size,
                files,
                skipped: 0,
            },
            conditional,
            items,
            skipped: Vec::new(),
        })
    }

    /// The folder the images came from.
    pub fn root(&self) -> &Path {
        &self.manifest.root
    }

    /// The options it was loaded with.
    pub fn config(&self) -> &DataConfig {
        &self.manifest.config
    }

    /// Channels of the training images (1 to 4).
    pub fn channels(&self) -> usize {
        self.manifest.channels
    }

    /// Side `S` of the training images.
    pub fn img_size(&self) -> usize {
        self.manifest.img_size
    }

    /// Class names in id order (known classes first, then new folders).
    pub fn class_names(&self) -> &[String] {
        &self.manifest.classes
    }

    /// Number of classes (0 for an unconditional dataset without known classes).
    pub fn num_classes(&self) -> usize {
        self.manifest.classes.len()
    }

    /// Whether images carry class labels.
    pub fn is_conditional(&self) -> bool {
        self.conditional
    }

    /// The training items.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Number of training items (frames of strips count separately).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items (never true for a loaded dataset).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The files that were skipped, with reasons.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The manifest recorded in checkpoints.
    pub fn manifest(&self) -> &DataManifest {
        &self.manifest
    }

    /// Items per class id (index `num_classes` counts unlabelled items).
    pub fn class_counts(&self) -> Vec<usize> {
        let k = self.num_classes();
        let mut counts = vec![0; k + 1];
        for it in &self.items {
            counts[it.label.unwrap_or(k).min(k)] += 1;
        }
        counts
    }

    /// Check the images are the size and channel count `config`'s model works on; the error
    /// names the folder and both shapes.
    pub fn check_fits(&self, config: &crate::config::ModelConfig) -> Result<()> {
        let (s, c) = (config.img_size, config.in_channels);
        if (self.img_size(), self.channels()) != (s, c) {
            return Err(Error::InvalidInput(format!(
                "the data at {} is {}x{} with {} channel(s), the model works on {s}x{s} with {c}",
                self.root().display(),
                self.img_size(),
                self.img_size(),
                self.channels()
            )));
        }
        Ok(())
    }

    /// A short human-readable report: sizes, channels, classes with counts, skipped files.
    pub fn summary(&self) -> String {
        let counts = self.class_counts();
        let mut s = format!(
            "{}: {} image(s) from {} file(s), {}x{}, {} channel(s), ",
            self.root().display(),
            self.len(),
            self.manifest.files.len(),
            self.img_size(),
            self.img_size(),
            self.channels()
        );
        if self.conditional {
            let parts: Vec<String> = self
                .class_names()
                .iter()
                .zip(&counts)
                .map(|(n, c)| format!("{n} ({c})"))
                .collect();
            s += &format!("{} class(es): {}", self.num_classes(), parts.join(", "));
        } else {
            s += "unconditional";
        }
        s += &format!("; {} file(s) skipped", self.skipped.len());
        s
    }

    /// Split into (train, held-out): in each class, a `fraction` of the source files (at least
    /// one when the class has two or more, never all) go to the held-out set, chosen by a hash
    /// of their path and `seed`. Frames of one strip stay together. `fraction` 0 holds out
    /// nothing (the held-out set is then empty).
    pub fn split(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut by_class: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        for (f, e) in self.manifest.files.iter().enumerate() {
            by_class.entry(e.class).or_default().push(f);
        }
        let mut held = vec![false; self.manifest.files.len()];
        if fraction > 0.0 {
            for files in by_class.values_mut() {
                let n = files.len();
                if n < 2 {
                    continue;
                }
                files.sort_by_key(|&f| {
                    let mut key = seed.to_le_bytes().to_vec();
                    key.extend_from_slice(self.manifest.files[f].path.as_bytes());
                    (fnv1a(&key), f)
                });
                let k = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
                for &f in &files[..k] {
                    held[f] = true;
                }
            }
        }
        let part = |keep: bool| Dataset {
            manifest: self.manifest.clone(),
            conditional: self.conditional,
            items: self
                .items
                .iter()
                .filter(|i| held[i.file] == keep)
                .cloned()
                .collect(),
            skipped: self.skipped.clone(),
        };
        (part(false), part(true))
    }
}
