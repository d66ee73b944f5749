//! # temper-data
//!
//! Real data sets for Temper, loaded fast and checked hard.
//!
//! - **Readers** for MNIST and Fashion-MNIST ([`idx`], raw or gzip), CIFAR-10 and CIFAR-100
//!   binaries ([`cifar`]) and ImageNet-style image folders ([`image_folder`], decoded in
//!   parallel), plus the bundled [`bundled::mnist10k`] set that needs no file at all.
//!   [`load`] opens any of them by name.
//! - A [`Dataset`] holds images in memory as `u8` `(N, C, H, W)`; batches become f32 in
//!   `[0, 1]` on the target device.
//! - [`augment`]: random crop with zero or reflect padding, horizontal flip,
//!   random-resized-crop; composable and seeded.
//! - The [`Loader`]: per-epoch shuffling that is a pure function of `(seed, epoch)`, batching,
//!   `drop_last`, and a background prefetch thread. [`split`] makes stratified, seeded
//!   train/validation splits.
//! - Every parser takes byte slices and reports a bad file as a typed [`Error`] naming the
//!   file and byte offset; none panics on file contents (they are fuzzed).
//!
//! ```
//! use std::sync::Arc;
//! use temper_data::augment::{AugmentParams, PadMode};
//! use temper_data::split::{SplitParams, ValSize};
//! use temper_data::{Loader, LoaderParams, Split};
//!
//! // The bundled MNIST subset: no data directory needed.
//! let train = temper_data::load("mnist10k", None, Split::Train)?;
//! assert_eq!((train.len(), train.num_classes()), (8000, 10));
//!
//! // Hold out a stratified 10% for validation, the same for the same seed.
//! let split = SplitParams { val: ValSize::Fraction(0.1), seed: 0 }.check(train.len())?;
//! let (train, val) = split.split_dataset(&train)?;
//! assert_eq!(val.len(), 800);
//!
//! // Shuffled, augmented batches of 128 with two batches prefetched in the background.
//! let aug = AugmentParams::new().random_crop(28, 2, PadMode::Zero).check(train.shape())?;
//! let loader = Loader::new(Arc::new(train), LoaderParams::new(128).seed(0).check()?)?
//!     .with_augment(aug)?;
//! let dev = candle_core::Device::Cpu;
//! for (i, batch) in loader.epoch(0, &dev).enumerate().take(3) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims(), &[128, 1, 28, 28]);
//!     assert_eq!(batch.labels.dims(), &[128]);
//!     assert_eq!(batch.index, i);
//! }
//! # Ok::<(), temper_data::Error>(())
//! ```

pub mod augment;
pub mod bundled;
pub mod cifar;
mod dataset;
mod error;
pub mod grid;
pub mod idx;
pub mod image_folder;
mod loader;
mod random;
mod read;
pub mod split;

pub use dataset::{Batch, ChannelStats, Dataset, HostBatch, Source};
pub use error::{Error, Result};
pub use image_folder::{FolderTransform, ImageFolder, ImageFolderParams};
pub use loader::{Epoch, HostEpoch, Loader, LoaderParams, ValidLoaderParams};

use std::path::{Path, PathBuf};

/// Which part of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training part.
    Train,
    /// The test part (`val/` or `test/` of an image folder).
    Test,
}

impl Split {
    /// Both splits, training first.
    pub const ALL: [Split; 2] = [Split::Train, Split::Test];

    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(Error::param("split", format!("'{s}' is neither train nor test"))),
        }
    }
}

/// The data sets [`load`] knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetName {
    /// The bundled 10,000 MNIST digits (8,000 train / 2,000 test); no data directory.
    Mnist10k,
    /// MNIST IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-...`) in the data directory or
    /// its `MNIST/raw`.
    Mnist,
    /// Fashion-MNIST IDX files in the data directory or its `FashionMNIST/raw`.
    FashionMnist,
    /// CIFAR-10 binary (`data_batch_*.bin`, `test_batch.bin`) in the data directory or its
    /// `cifar-10-batches-bin`.
    Cifar10,
    /// CIFAR-100 binary with the 100 fine labels (`train.bin`, `test.bin`) in the data
    /// directory or its `cifar-100-binary`.
    Cifar100,
    /// CIFAR-100 binary with the 20 coarse labels.
    Cifar100Coarse,
    /// An image folder `root/<class>/<image>`; with `train/` and `val/` (or `test/`)
    /// sub-folders the split picks one, otherwise the whole folder is the train split.
    ImageFolder,
}

impl DatasetName {
    /// Every known data set.
    pub const ALL: [DatasetName; 7] = [
        DatasetName::Mnist10k,
        DatasetName::Mnist,
        DatasetName::FashionMnist,
        DatasetName::Cifar10,
        DatasetName::Cifar100,
        DatasetName::Cifar100Coarse,
        DatasetName::ImageFolder,
    ];

    /// The name as users write it, e.g. `fashion-mnist`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetName::Mnist10k => "mnist10k",
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
            DatasetName::Cifar100Coarse => "cifar100-coarse",
            DatasetName::ImageFolder => "image-folder",
        }
    }

    /// Parses a name (case-insensitive; `_` and `-` are interchangeable).
    pub fn parse(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        DatasetName::ALL
            .into_iter()
            .find(|d| d.name() == norm)
            .ok_or_else(|| Error::UnknownDataset {
                name: s.to_string(),
                known: DatasetName::ALL.map(|d| d.name()).join(", "),
            })
    }

    /// True for every data set except the bundled one.
    pub fn needs_data_dir(self) -> bool {
        self != DatasetName::Mnist10k
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Loads a data set by name (see [`DatasetName`] for the names and the files each expects).
///
/// Image folders are decoded at their native size, which must be the same for every image;
/// use [`ImageFolderParams`] with [`image_folder_split`] for resizing.
pub fn load(name: &str, data_dir: Option<&Path>, split: Split) -> Result<Dataset> {
    let which = DatasetName::parse(name)?;
    if which == DatasetName::Mnist10k {
        return bundled::mnist10k(split);
    }
    let dir = data_dir.ok_or_else(|| Error::NeedsDataDir {
        name: which.name().to_string(),
    })?;
    match which {
        DatasetName::Mnist10k => bundled::mnist10k(split),
        DatasetName::Mnist => load_idx(dir, "MNIST", "mnist", split, idx::mnist_classes()),
        DatasetName::FashionMnist => load_idx(
            dir,
            "FashionMNIST",
            "fashion-mnist",
            split,
            idx::fashion_mnist_classes(),
        ),
        DatasetName::Cifar10 => cifar::load_cifar10(dir, split),
        DatasetName::Cifar100 => cifar::load_cifar100(dir, split, cifar::Cifar100Labels::Fine),
        DatasetName::Cifar100Coarse => cifar::load_cifar100(dir, split, cifar::Cifar100Labels::Coarse),
        DatasetName::ImageFolder => {
            let root = image_folder_split(dir, split)?;
            let mut params = ImageFolderParams::new(root);
            if let Some(classes) = image_folder_classes(dir, split)? {
                params = params.class_list(classes);
            }
            let mut ds = params.check()?.decode_all()?;
            ds.set_name(format!("image-folder/{split}"));
            Ok(ds)
        }
    }
}

/// Loads an IDX pair from `dir` or from torchvision's `dir/<sub>/raw`.
fn load_idx(dir: &Path, sub: &str, tag: &str, split: Split, classes: Vec<String>) -> Result<Dataset> {
    read::require_dir(dir)?;
    let nested = dir.join(sub).join("raw");
    let root = if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    };
    let (images, labels) = match split {
        Split::Train => (
            read::find_file(&root, &["train-images-idx3-ubyte", "train-images.idx3-ubyte"])?,
            read::find_file(&root, &["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"])?,
        ),
        Split::Test => (
            read::find_file(
                &root,
                &[
                    "t10k-images-idx3-ubyte",
                    "t10k-images.idx3-ubyte",
                    "test-images-idx3-ubyte",
                ],
            )?,
            read::find_file(
                &root,
                &[
                    "t10k-labels-idx1-ubyte",
                    "t10k-labels.idx1-ubyte",
                    "test-labels-idx1-ubyte",
                ],
            )?,
        ),
    };
    idx::load_files(&format!("{tag}/{split}"), &images, &labels, classes)
}

/// The class list that numbers the labels of `split` under an image-folder `dir`: the train
/// split's class folders for the test split of a `train/` + `val/` layout (so that a label
/// means the same class in both, and a validation class the model never saw is an error
/// instead of a silent relabelling), `None` where the split's own folders decide.
pub fn image_folder_classes(dir: &Path, split: Split) -> Result<Option<Vec<String>>> {
    let train = dir.join("train");
    if split == Split::Test && train.is_dir() {
        return Ok(Some(image_folder::class_names(&train)?));
    }
    Ok(None)
}

/// The usual L-inf budget for a data set of images shaped `[C, H, W]`: 0.3 for MNIST-like
/// 28x28 grey digits (Madry et al.), 8/255 for everything else (colour images; CIFAR and
/// ImageNet in RobustBench). Every command that takes `--eps` defaults to this.
pub fn default_linf_eps(shape: [usize; 3]) -> f64 {
    if shape == [1, 28, 28] {
        0.3
    } else {
        8.0 / 255.0
    }
}

/// The usual L2 budget for a data set of images shaped `[C, H, W]`: 2.0 for MNIST-like
/// 28x28 grey digits (Croce and Hein), 0.5 for everything else (RobustBench's CIFAR-10 L2).
pub fn default_l2_eps(shape: [usize; 3]) -> f64 {
    if shape == [1, 28, 28] {
        2.0
    } else {
        0.5
    }
}

/// The usual L1 budget for a data set of images shaped `[C, H, W]`: 10 for MNIST-like 28x28
/// grey digits (Tramèr and Boneh 2019), 12 for everything else (Croce and Hein's CIFAR-10 L1).
pub fn default_l1_eps(shape: [usize; 3]) -> f64 {
    if shape == [1, 28, 28] {
        10.0
    } else {
        12.0
    }
}

/// The folder holding the classes of `split` under an image-folder `dir`.
///
/// With a `train/` sub-folder (and `val/` or `test/`), the split picks one; otherwise `dir` is
/// itself a single folder of classes and serves as the train split only.
pub fn image_folder_split(dir: &Path, split: Split) -> Result<PathBuf> {
    read::require_dir(dir)?;
    let candidates: &[&str] = match split {
        Split::Train => &["train"],
        Split::Test => &["val", "test"],
    };
    let layout_has_splits = ["train", "val", "test"].iter().any(|s| dir.join(s).is_dir());
    if layout_has_splits {
        return candidates
            .iter()
            .map(|c| dir.join(c))
            .find(|p| p.is_dir())
            .ok_or_else(|| Error::NoSplit {
                path: dir.to_path_buf(),
                split: split.name().into(),
                hint: format!("; looked for {}", candidates.join(" and ")),
            });
    }
    match split {
        Split::Train => Ok(dir.to_path_buf()),
        Split::Test => Err(Error::NoSplit {
            path: dir.to_path_buf(),
            split: "test".into(),
            hint: "; it is a single folder of classes, served as the train split (carve a \
                   validation split out of it with --val-split)"
                .into(),
        }),
    }
}
