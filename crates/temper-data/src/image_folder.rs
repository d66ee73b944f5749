//! Image folders in the ImageNet layout: `root/<class>/<image>`, JPEG or PNG.
//!
//! Class folders sorted by name give the label ids (torchvision's `ImageFolder` rule), and the
//! files of a class, found recursively, are sorted too, so sample indices are stable. An
//! [`ImageFolder`] can be decoded once into a [`Dataset`] (in parallel with rayon, with a
//! progress bar on a terminal), or served lazily as a [`Source`] so that a loader decodes
//! each batch in its prefetch thread; the lazy way also draws a fresh random-resized crop each
//! epoch.
//!
//! ```no_run
//! use temper_data::image_folder::{FolderTransform, ImageFolderParams};
//! let folder = ImageFolderParams::new("/data/imagenet/val")
//!     .transform(FolderTransform::CenterCrop { shorter: 256, crop: 224 })
//!     .check()?;
//! println!("{} images in {} classes", folder.len(), folder.classes().len());
//! let ds = folder.decode_all()?;
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::augment::rrc_window;
use crate::dataset::Source;
use crate::{read, Dataset, Error, Result};
use image::imageops::FilterType;
use image::DynamicImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use temper_core::seed::{rng_with, Rng};

/// The largest side a transform may produce: a bound checked before any image is allocated.
pub const MAX_SIDE: usize = 4096;

/// File extensions read as images (compared case-insensitively).
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// What happens to each image right after decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FolderTransform {
    /// Nothing: every image must have the size of the first one (CIFAR-style folders).
    Native,
    /// Resize so the shorter side is `shorter` (antialiased bilinear), then cut the central
    /// `crop` x `crop` square: the standard evaluation transform.
    CenterCrop {
        /// Length of the shorter side after resizing.
        shorter: u32,
        /// Side of the square cut from the centre.
        crop: u32,
    },
    /// torchvision's `RandomResizedCrop(size, scale, ratio)`: the standard training transform.
    RandomResizedCrop {
        /// Side of the square output.
        size: u32,
        /// Range of the window's area as a fraction of the image's.
        scale: (f64, f64),
        /// Range of the window's width/height ratio.
        ratio: (f64, f64),
    },
}

impl FolderTransform {
    /// The training crop with torchvision's default ranges.
    pub fn random_resized_crop(size: u32) -> Self {
        FolderTransform::RandomResizedCrop {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// An unchecked image-folder configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolderParams {
    /// The folder holding one sub-folder per class.
    pub root: PathBuf,
    /// What is done to each decoded image.
    pub transform: FolderTransform,
    /// 3 for RGB, 1 for grey.
    pub channels: usize,
    /// Show a progress bar on stderr (only when it is a terminal) while decoding.
    pub progress: bool,
    /// Seed of the random crops drawn by [`ImageFolder::decode_all`].
    pub seed: u64,
    /// The class list labels are numbered by, when it is not this folder's own: the train
    /// split's classes for a validation folder, so that label `i` means the same class in
    /// both. Every class folder must be named in it (an error names the ones that are not);
    /// a class of the list with no folder simply has no images. `None` numbers this folder's
    /// own sorted class folders.
    pub classes: Option<Vec<String>>,
}

impl ImageFolderParams {
    /// RGB images at native size, with a progress bar, seed 0.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageFolderParams {
            root: root.into(),
            transform: FolderTransform::Native,
            channels: 3,
            progress: true,
            seed: 0,
            classes: None,
        }
    }

    /// Numbers labels by `classes` (e.g. the train split's) instead of this folder's own
    /// class folders.
    pub fn class_list(mut self, classes: Vec<String>) -> Self {
        self.classes = Some(classes);
        self
    }

    /// Sets the transform.
    pub fn transform(mut self, t: FolderTransform) -> Self {
        self.transform = t;
        self
    }

    /// Sets the number of channels (1 or 3).
    pub fn channels(mut self, c: usize) -> Self {
        self.channels = c;
        self
    }

    /// Turns the progress bar on or off.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Sets the seed of decode-time random crops.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates the parameters and scans the folder. With [`FolderTransform::Native`] the
    /// first image is decoded to learn the size every image must have.
    pub fn check(self) -> Result<ImageFolder> {
        if self.channels != 1 && self.channels != 3 {
            return Err(Error::param(
                "channels",
                format!("{} is neither 1 nor 3", self.channels),
            ));
        }
        match self.transform {
            FolderTransform::Native => {}
            FolderTransform::CenterCrop { shorter, crop } => {
                if crop as usize > MAX_SIDE || shorter as usize > 2 * MAX_SIDE {
                    return Err(Error::param(
                        "image size",
                        format!("crop {crop} (resized to {shorter}) is larger than {MAX_SIDE}"),
                    ));
                }
                if crop == 0 || shorter < crop {
                    return Err(Error::param(
                        "center crop",
                        format!(
                            "crop {crop} must be at least 1 and at most the resized shorter side {shorter}"
                        ),
                    ));
                }
            }
            FolderTransform::RandomResizedCrop { size, scale, ratio } => {
                if size as usize > MAX_SIDE {
                    return Err(Error::param(
                        "image size",
                        format!("{size} is larger than {MAX_SIDE}"),
                    ));
                }
                // The same rules as the in-memory augmentation, checked by the same code.
                crate::augment::AugmentParams::new()
                    .then(crate::augment::Op::RandomResizedCrop {
                        size: (size as usize, size as usize),
                        scale,
                        ratio,
                    })
                    .check([self.channels, 1, 1])?;
            }
        }
        let (mut classes, mut files) = scan(&self.root)?;
        if let Some(list) = &self.classes {
            let unknown: Vec<&String> = classes.iter().filter(|c| !list.contains(c)).collect();
            if !unknown.is_empty() {
                return Err(Error::ClassMismatch {
                    path: self.root.clone(),
                    unknown: unknown.iter().map(|c| c.to_string()).collect(),
                    known: list.clone(),
                });
            }
            // Relabel by name: folder label `l` is class `classes[l]`, found in `list`.
            let map: Vec<u32> = classes
                .iter()
                .map(|c| list.iter().position(|k| k == c).unwrap_or(0) as u32)
                .collect();
            for f in &mut files {
                f.1 = map[f.1 as usize];
            }
            classes = list.clone();
        }
        let mut folder = ImageFolder {
            root: self.root,
            classes,
            files,
            transform: self.transform,
            channels: self.channels,
            progress: self.progress,
            seed: self.seed,
            shape: [self.channels, 0, 0],
        };
        folder.shape = match folder.transform {
            FolderTransform::Native => {
                let (path, _) = &folder.files[0];
                let img = decode(path)?;
                [folder.channels, img.height() as usize, img.width() as usize]
            }
            FolderTransform::CenterCrop { crop, .. } => [folder.channels, crop as usize, crop as usize],
            FolderTransform::RandomResizedCrop { size, .. } => {
                [folder.channels, size as usize, size as usize]
            }
        };
        Ok(folder)
    }
}

/// A scanned image folder: class names and the list of image files with their labels.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<(PathBuf, u32)>,
    transform: FolderTransform,
    channels: usize,
    progress: bool,
    seed: u64,
    shape: [usize; 3],
}

impl ImageFolder {
    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when there are no images (never, for a checked folder).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Class names, sorted; label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every image file with its label, in sample order.
    pub fn files(&self) -> &[(PathBuf, u32)] {
        &self.files
    }

    /// Shape `[C, H, W]` of the decoded, transformed images.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Number of images of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for (_, l) in &self.files {
            counts[*l as usize] += 1;
        }
        counts
    }

    /// A folder view holding only the images at `indices` (out-of-range ones are skipped).
    pub fn subset(&self, indices: &[usize]) -> ImageFolder {
        ImageFolder {
            files: indices
                .iter()
                .filter_map(|&i| self.files.get(i).cloned())
                .collect(),
            ..self.clone()
        }
    }

    /// Decodes and transforms image `index` into `out` (`C*H*W` bytes).
    fn decode_into(&self, index: usize, rng: &mut Rng, out: &mut [u8]) -> Result<()> {
        let (path, _) = self.files.get(index).ok_or_else(|| {
            Error::param(
                "index",
                format!("{index} is past the end of '{}'", self.root.display()),
            )
        })?;
        let img = decode(path)?;
        let img = match self.transform {
            FolderTransform::Native => {
                let [_, h, w] = self.shape;
                if (img.width() as usize, img.height() as usize) != (w, h) {
                    return Err(Error::ImageSize {
                        path: path.clone(),
                        expected_w: w as u32,
                        expected_h: h as u32,
                        found_w: img.width(),
                        found_h: img.height(),
                    });
                }
                img
            }
            FolderTransform::CenterCrop { shorter, crop } => {
                let (w, h) = (img.width(), img.height());
                // torchvision's Resize(int): the shorter side becomes `shorter`, the longer
                // one keeps the aspect ratio, truncated.
                let (nw, nh) = if w <= h {
                    (
                        shorter,
                        (u64::from(shorter) * u64::from(h) / u64::from(w).max(1)) as u32,
                    )
                } else {
                    (
                        (u64::from(shorter) * u64::from(w) / u64::from(h).max(1)) as u32,
                        shorter,
                    )
                };
                let img = img.resize_exact(nw.max(crop), nh.max(crop), FilterType::Triangle);
                let top = (img.height() - crop) / 2;
                let left = (img.width() - crop) / 2;
                img.crop_imm(left, top, crop, crop)
            }
            FolderTransform::RandomResizedCrop { size, scale, ratio } => {
                let (top, left, ch, cw) =
                    rrc_window(rng, img.height() as usize, img.width() as usize, scale, ratio);
                img.crop_imm(left as u32, top as u32, cw as u32, ch as u32)
                    .resize_exact(size, size, FilterType::Triangle)
            }
        };
        to_chw(img, self.channels, out);
        Ok(())
    }

    /// Decodes every image, in parallel, into an in-memory data set. Random crops (if any) are
    /// drawn once, from the folder's seed and each image's index.
    pub fn decode_all(&self) -> Result<Dataset> {
        let per: usize = self.shape.iter().product();
        let bytes = per
            .checked_mul(self.files.len())
            .ok_or_else(|| Error::param("image size", "the decoded images would not fit in memory"))?;
        // Reserved fallibly: a folder too large for memory is an error, not an aborted process.
        let mut pixels = Vec::new();
        pixels.try_reserve_exact(bytes).map_err(|_| {
            Error::param(
                "image size",
                format!(
                    "{} images of {:?} need {bytes} bytes, more than this machine can allocate",
                    self.files.len(),
                    self.shape
                ),
            )
        })?;
        pixels.resize(bytes, 0u8);
        let bar = if self.progress {
            indicatif::ProgressBar::new(self.files.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "decoding {pos}/{len} images [{bar:30}] {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let result = pixels
            .par_chunks_mut(per)
            .enumerate()
            .try_for_each(|(i, out)| -> Result<()> {
                let mut rng = rng_with(self.seed, &format!("temper-data/decode/{i}"));
                self.decode_into(i, &mut rng, out)?;
                bar.inc(1);
                Ok(())
            });
        bar.finish_and_clear();
        result?;
        let labels = self.files.iter().map(|(_, l)| *l).collect();
        Dataset::new(
            self.root.display().to_string(),
            self.shape,
            pixels,
            labels,
            self.classes.clone(),
        )
    }
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> u32 {
        self.files.get(index).map(|f| f.1).unwrap_or(0)
    }

    fn read_into(&self, index: usize, rng: &mut Rng, out: &mut [u8]) -> Result<()> {
        self.decode_into(index, rng, out)
    }
}

/// Reads and decodes one image file, whatever its extension claims.
fn decode(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    decode_bytes(&bytes, path)
}

/// Decodes image bytes (JPEG or PNG); `path` is used in errors only.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let img = image::load_from_memory(bytes).map_err(|e| Error::Undecodable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::Undecodable {
            path: path.to_path_buf(),
            reason: "the image has no pixels".into(),
        });
    }
    Ok(img)
}

/// Writes `img` as `channels`-channel CHW bytes into `out`. The image is taken by value so
/// that one already in the wanted pixel format (JPEG decodes to RGB8) is not copied.
fn to_chw(img: DynamicImage, channels: usize, out: &mut [u8]) {
    let plane = (img.width() * img.height()) as usize;
    if channels == 1 {
        out.copy_from_slice(img.into_luma8().as_raw());
        return;
    }
    let rgb = img.into_rgb8();
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((px, r), g), b) in rgb.as_raw().chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = px[0];
        *g = px[1];
        *b = px[2];
    }
}

/// Sorted names of the visible sub-directories and files of `dir`.
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("cannot list", dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symbolic links, as data sets are often assembled from linked folders.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => dirs.push(path),
            Ok(m) if m.is_file() => files.push(path),
            _ => {}
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

/// True for a file name with an image extension.
fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// All image files under `dir`, recursively, sorted by path.
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let (dirs, files) = list(dir)?;
    out.extend(files.into_iter().filter(|f| is_image(f)));
    for d in dirs {
        images_under(&d, out)?;
    }
    Ok(())
}

/// The class names of `root/<class>/...`, sorted: the labels a folder's own scan gives.
pub fn class_names(root: &Path) -> Result<Vec<String>> {
    read::require_dir(root)?;
    let (dirs, _) = list(root)?;
    Ok(dirs
        .iter()
        .map(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect())
}

/// Class names, and every image file with its label.
type Scanned = (Vec<String>, Vec<(PathBuf, u32)>);

/// Scans `root/<class>/...`: class names and every image with its label.
fn scan(root: &Path) -> Result<Scanned> {
    read::require_dir(root)?;
    let (dirs, _) = list(root)?;
    if dirs.is_empty() {
        return Err(Error::NoClasses {
            path: root.to_path_buf(),
        });
    }
    let mut classes = Vec::with_capacity(dirs.len());
    let mut files = Vec::new();
    for (label, dir) in dirs.iter().enumerate() {
        let mut found = Vec::new();
        images_under(dir, &mut found)?;
        if found.is_empty() {
            return Err(Error::EmptyClass { path: dir.clone() });
        }
        classes.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        files.extend(found.into_iter().map(|f| (f, label as u32)));
    }
    Ok((classes, files))
}
