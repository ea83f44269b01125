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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod files;
mod frames;
mod options;

use files::fnv1a;
pub use files::is_split;
pub use options::{ChannelChoice, DataConfig, ResizeFilter, SizePolicy};

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

/// Refuse what cannot be loaded before reading any file: a root that is not a folder, a size 0
/// asked for, and a train/test split (it is two datasets, see [`Dataset::load_split`]).
fn check_root(root: &Path, config: &DataConfig) -> Result<()> {
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
    if is_split(root)? {
        return Err(Error::Dataset {
            path: root.to_path_buf(),
            reason: "the folder holds exactly `train/` and `test/`: it is a split, not two \
                     classes; load it with Dataset::load_split (or give `train/` or `test/` \
                     itself)"
                .into(),
        });
    }
    Ok(())
}

/// The classes that already have ids ([`DataConfig::classes`]), each named once.
fn known_classes(config: &DataConfig) -> Result<Vec<String>> {
    let mut seen: BTreeSet<&String> = BTreeSet::new();
    for c in &config.classes {
        if !seen.insert(c) {
            return Err(Error::InvalidInput(format!(
                "class `{c}` appears twice in the known classes"
            )));
        }
    }
    Ok(config.classes.clone())
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
        check_root(root, config)?;
        let mut class_names = known_classes(config)?;
        let mut skipped = Vec::new();
        let mut skip = |path: &Path, reason: String| {
            let s = Skipped {
                path: path.to_path_buf(),
                reason,
            };
            report(&s);
            skipped.push(s);
        };
        let found = files::Found::scan(root)?;
        let conditional = found.has_class_folder() && !config.unconditional;
        let decoded = found.assign(root, conditional, &mut class_names, &mut skip);

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
        let s = config
            .img_size
            .unwrap_or_else(|| frames::most_common_width(&decoded));
        let channels = config
            .channels
            .count()
            .unwrap_or_else(|| frames::channels_of(&decoded));
        let (items, manifest_files) = frames::items(decoded, s, channels, config)?;
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
