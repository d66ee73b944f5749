//! The error type of `temper-data`.
//!
//! Every variant that comes from a file names that file, and the parsers add the byte offset
//! at which the problem was found, so a user can open the file in a hex viewer and see it.

use std::path::PathBuf;

/// Result alias used throughout `temper-data`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, checking or serving a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a file or listing a directory failed for a reason other than absence.
    #[error("{op} '{path}'")]
    Io {
        /// What was being done, e.g. "cannot read".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A directory the data set needs does not exist.
    #[error("directory '{path}' does not exist{hint}")]
    MissingDir {
        /// The directory that was looked for.
        path: PathBuf,
        /// Extra guidance, empty or starting with "; ".
        hint: String,
    },

    /// A file the data set needs does not exist.
    #[error("file '{path}' does not exist{hint}")]
    MissingFile {
        /// The file that was looked for (the first of the accepted names).
        path: PathBuf,
        /// Extra guidance, empty or starting with "; ".
        hint: String,
    },

    /// The file does not start with the magic number its format requires.
    #[error("'{path}': bad magic number at byte {offset}: expected {expected}, found {found}")]
    BadMagic {
        /// The file involved.
        path: PathBuf,
        /// Byte offset of the magic number.
        offset: u64,
        /// What the format requires, e.g. `0x00000803 (IDX u8, 3 dimensions)`.
        expected: String,
        /// What the file holds, in hexadecimal.
        found: String,
    },

    /// The file ends before the data its header (or its format) promises.
    #[error("'{path}' is truncated at byte {offset}: {what} needs {needed} bytes, the file has {available}")]
    Truncated {
        /// The file involved.
        path: PathBuf,
        /// Byte offset at which the missing part starts (the end of the file).
        offset: u64,
        /// What was being read when the file ran out.
        what: String,
        /// Total bytes needed up to the end of that part.
        needed: u64,
        /// Bytes the file actually has.
        available: u64,
    },

    /// The header and the data (or two files that belong together) disagree about sizes.
    #[error("'{path}': header/size mismatch at byte {offset}: {reason}")]
    SizeMismatch {
        /// The file involved.
        path: PathBuf,
        /// Byte offset at which the disagreement shows.
        offset: u64,
        /// What disagrees with what.
        reason: String,
    },

    /// A label is not a valid class id.
    #[error("'{path}': label {label} at byte {offset} is out of range: the data set has {num_classes} classes (0..{num_classes})")]
    LabelOutOfRange {
        /// The file involved.
        path: PathBuf,
        /// Byte offset of the label.
        offset: u64,
        /// The label found.
        label: u32,
        /// The number of classes of the data set.
        num_classes: usize,
    },

    /// A compressed file cannot be decompressed.
    #[error("'{path}': cannot decompress gzip data: {reason}")]
    Gzip {
        /// The file involved.
        path: PathBuf,
        /// What the decompressor reported.
        reason: String,
    },

    /// An image file cannot be decoded (corrupt, or not an image format Temper reads).
    #[error("'{path}': cannot decode image: {reason}")]
    Undecodable {
        /// The file involved.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },

    /// Images of an image folder differ in size and no resize was asked for.
    #[error("'{path}' is {found_w}x{found_h} but earlier images are {expected_w}x{expected_h}; pass a resize (e.g. --image-size) to load images of different sizes")]
    ImageSize {
        /// The image whose size differs.
        path: PathBuf,
        /// Width of the first image.
        expected_w: u32,
        /// Height of the first image.
        expected_h: u32,
        /// Width of this image.
        found_w: u32,
        /// Height of this image.
        found_h: u32,
    },

    /// A class folder of an image folder holds no image file.
    #[error("class folder '{path}' holds no image file (.jpg, .jpeg, .png)")]
    EmptyClass {
        /// The class folder.
        path: PathBuf,
    },

    /// A split's class folders are not all among the classes labels are numbered by.
    #[error(
        "'{path}' has class folders {unknown:?} that the train split does not have (its classes: \
         {known:?}); every split must use the train split's class names, so that a label means \
         the same class in each"
    )]
    ClassMismatch {
        /// The split folder.
        path: PathBuf,
        /// Its class folders missing from the list.
        unknown: Vec<String>,
        /// The class list.
        known: Vec<String>,
    },

    /// An image folder root holds no class folder.
    #[error("'{path}' holds no class folder; expected the layout root/<class>/<image>")]
    NoClasses {
        /// The root folder.
        path: PathBuf,
    },

    /// The requested split does not exist in this data set's directory.
    #[error("'{path}' has no {split} split{hint}")]
    NoSplit {
        /// The directory looked at.
        path: PathBuf,
        /// The split asked for.
        split: String,
        /// Extra guidance, empty or starting with "; ".
        hint: String,
    },

    /// A data set name is not one Temper knows.
    #[error("unknown data set '{name}'; known: {known}")]
    UnknownDataset {
        /// The name given.
        name: String,
        /// The names accepted, comma separated.
        known: String,
    },

    /// The data set needs a data directory and none was given.
    #[error("data set '{name}' needs a data directory (--data-dir)")]
    NeedsDataDir {
        /// The data set's name.
        name: String,
    },

    /// A user-supplied parameter is out of range or malformed.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter name as the user spells it.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A tensor operation failed inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// The background prefetch thread stopped without delivering its batches.
    #[error("the loader's prefetch thread died: {reason}")]
    Worker {
        /// What is known of the cause.
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::InvalidParam`].
    pub fn param(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`], turning "not found" into [`Error::MissingFile`] so that the
    /// commonest mistake reads plainly.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return Error::MissingFile {
                path,
                hint: String::new(),
            };
        }
        Error::Io { op, path, source }
    }

    /// The file or directory this error is about, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::MissingDir { path, .. }
            | Error::MissingFile { path, .. }
            | Error::BadMagic { path, .. }
            | Error::Truncated { path, .. }
            | Error::SizeMismatch { path, .. }
            | Error::LabelOutOfRange { path, .. }
            | Error::Gzip { path, .. }
            | Error::Undecodable { path, .. }
            | Error::ImageSize { path, .. }
            | Error::EmptyClass { path }
            | Error::NoClasses { path }
            | Error::ClassMismatch { path, .. }
            | Error::NoSplit { path, .. } => Some(path),
            Error::UnknownDataset { .. }
            | Error::NeedsDataDir { .. }
            | Error::InvalidParam { .. }
            | Error::Candle(_)
            | Error::Worker { .. } => None,
        }
    }
}
