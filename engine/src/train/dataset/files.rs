//! Finding a dataset's files and decoding them: the folder walk (sorted, hidden entries left
//! out), image decoding to RGBA8, and class assignment (which subfolders are classes, which ids
//! they get, which files are skipped and why).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, ImageReader, RgbaImage};

use crate::error::{Error, Result};

/// A decoded source file with its class and what the manifest records of it.
pub(super) struct Decoded {
    /// Path relative to the root, `/` separators.
    pub(super) rel: String,
    /// The path as found.
    pub(super) path: PathBuf,
    /// Class id (`None`: unlabelled).
    pub(super) class: Option<usize>,
    /// The pixels.
    pub(super) image: RgbaImage,
    /// File length in bytes.
    pub(super) bytes: u64,
    /// FNV-1a hash of the file's bytes, in hex.
    pub(super) hash: String,
}

/// FNV-1a, 64 bits.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
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

/// A file decoded to RGBA8 with its bytes, or why it cannot be used.
type Decode = std::result::Result<(RgbaImage, Vec<u8>), String>;

/// Decode one file to RGBA8, or say why it cannot be used.
fn decode(path: &Path) -> Decode {
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

/// A subfolder of the root and every file below it, decoded.
struct Folder {
    dir: PathBuf,
    files: Vec<(PathBuf, Decode)>,
}

impl Folder {
    fn has_image(&self) -> bool {
        self.files.iter().any(|(_, r)| r.is_ok())
    }
}

/// What a dataset root holds: its top-level files and its subfolders, every file below them
/// decoded (a subfolder is a class only when it holds at least one image: game projects keep
/// `sounds/`, `locale/`, `models/` beside their textures).
pub(super) struct Found {
    top_files: Vec<PathBuf>,
    folders: Vec<Folder>,
}

impl Found {
    /// Walk `root` (sorted, hidden entries left out) and decode every file of every subfolder.
    pub(super) fn scan(root: &Path) -> Result<Self> {
        let entries = sorted_entries(root)?;
        let mut folders = Vec::new();
        for dir in entries.iter().filter(|p| p.is_dir()) {
            let mut below = Vec::new();
            files_below(dir, &mut below)?;
            let files = below.into_iter().map(|f| (f.clone(), decode(&f))).collect();
            folders.push(Folder {
                dir: dir.clone(),
                files,
            });
        }
        let top_files = entries.into_iter().filter(|p| !p.is_dir()).collect();
        Ok(Self { top_files, folders })
    }

    /// Whether some subfolder holds an image (then the subfolders are the classes and
    /// top-level images are skipped).
    pub(super) fn has_class_folder(&self) -> bool {
        self.folders.iter().any(Folder::has_image)
    }

    /// The usable images, in order: the top-level ones when no subfolder holds an image, else
    /// those of each class folder, labelled when `conditional` (the known `class_names` keep
    /// their ids, new folders are appended in name order). Every file or folder left out goes
    /// to `skip` with its reason: top-level files first, then folder by folder.
    pub(super) fn assign(
        self,
        root: &Path,
        conditional: bool,
        class_names: &mut Vec<String>,
        skip: &mut impl FnMut(&Path, String),
    ) -> Vec<Decoded> {
        let by_class = self.has_class_folder();
        let mut decoded = Vec::new();
        for p in &self.top_files {
            match decode(p) {
                Ok((image, bytes)) if !by_class => {
                    decoded.push(describe(root, p.clone(), None, image, &bytes));
                }
                Ok(_) => skip(
                    p,
                    "image at the top level, outside any class folder (put it in a subfolder \
                     named after its class)"
                        .into(),
                ),
                Err(reason) => skip(p, reason),
            }
        }
        for folder in self.folders {
            let n = folder.files.len();
            if !folder.has_image() {
                // One line for the whole folder, not one per sound file.
                skip(
                    &folder.dir,
                    if n == 0 {
                        "no images in this folder (it is empty): not a class".into()
                    } else {
                        format!("no images in this folder ({n} other file(s)): not a class")
                    },
                );
                continue;
            }
            let id = conditional.then(|| class_id(class_names, &folder.dir));
            for (path, r) in folder.files {
                match r {
                    Ok((image, bytes)) => decoded.push(describe(root, path, id, image, &bytes)),
                    Err(reason) => skip(&path, reason),
                }
            }
        }
        decoded
    }
}

/// The id of the class folder `dir`: its name's place among `class_names`, appended when new.
fn class_id(class_names: &mut Vec<String>, dir: &Path) -> usize {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match class_names.iter().position(|c| *c == name) {
        Some(i) => i,
        None => {
            class_names.push(name);
            class_names.len() - 1
        }
    }
}

/// A decoded file with its path relative to `root`, class, length and hash.
fn describe(
    root: &Path,
    path: PathBuf,
    class: Option<usize>,
    image: RgbaImage,
    bytes: &[u8],
) -> Decoded {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(&path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    Decoded {
        rel,
        path,
        class,
        image,
        bytes: bytes.len() as u64,
        hash: format!("{:016x}", fnv1a(bytes)),
    }
}
