//! The error type shared by Temper's library crates.

use std::path::PathBuf;

/// Result alias used throughout `temper-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A shape mismatch found while loading weights: the key, what the model expects and what the
/// file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The PyTorch-style key, e.g. `layer1.0.conv1.weight`.
    pub key: String,
    /// The shape the model expects.
    pub expected: Vec<usize>,
    /// The shape stored in the file.
    pub found: Vec<usize>,
}

/// Every way a weight file can disagree with a model. All disagreements are collected so that
/// a user sees the complete picture in one error rather than one key at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightMismatch {
    /// Keys the model needs that the file lacks.
    pub missing: Vec<String>,
    /// Keys the file holds that the model does not know.
    pub unexpected: Vec<String>,
    /// Keys present on both sides with different shapes.
    pub shape: Vec<ShapeMismatch>,
}

impl WeightMismatch {
    /// True when the file and the model agree exactly.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape.is_empty()
    }
}

impl std::fmt::Display for WeightMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Lists are printed in full: a user fixing a conversion script needs every key.
        if !self.missing.is_empty() {
            writeln!(f, "  missing keys ({}):", self.missing.len())?;
            for k in &self.missing {
                writeln!(f, "    {k}")?;
            }
        }
        if !self.unexpected.is_empty() {
            writeln!(f, "  unexpected keys ({}):", self.unexpected.len())?;
            for k in &self.unexpected {
                writeln!(f, "    {k}")?;
            }
        }
        if !self.shape.is_empty() {
            writeln!(f, "  shape mismatches ({}):", self.shape.len())?;
            for m in &self.shape {
                writeln!(
                    f,
                    "    {}: model expects {:?}, file has {:?}",
                    m.key, m.expected, m.found
                )?;
            }
        }
        Ok(())
    }
}

/// Errors raised by `temper-core` and re-used by the model zoo.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle (boxed: candle's error is large, and this
    /// enum travels through every `Result`).
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),

    /// Reading or writing a file failed.
    #[error("{op} '{path}'")]
    Io {
        /// What was being done, e.g. "cannot read".
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A safetensors file could not be parsed.
    #[error("'{path}' is not a valid safetensors file: {reason}")]
    BadWeightFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A weight file does not match the model (strict loading).
    #[error("weights in '{path}' do not match model '{model}':\n{mismatch}")]
    WeightMismatch {
        /// The file involved.
        path: PathBuf,
        /// The model's name.
        model: String,
        /// Every missing, unexpected and mis-shaped key.
        mismatch: Box<WeightMismatch>,
    },

    /// Two parameter sets that should describe the same architecture do not (interpolation).
    #[error(
        "'{a}' and '{b}' are not the same architecture:\n{}",
        describe_differences(a, b, mismatch)
    )]
    StoresDiffer {
        /// The first set's name (usually its file).
        a: String,
        /// The second set's name.
        b: String,
        /// Keys only in `a` (`missing`), only in `b` (`unexpected`), and different shapes.
        mismatch: Box<WeightMismatch>,
    },

    /// A user-supplied parameter is out of range or malformed.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter name as the user spells it.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A device string could not be parsed or the device is not available in this build.
    #[error("device '{spec}': {reason}")]
    Device {
        /// The string the user gave, e.g. `cuda:1`.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// An input tensor has the wrong shape or type for the model.
    #[error("bad input for model '{model}': {reason}")]
    BadInput {
        /// The model's name.
        model: String,
        /// What is wrong with the input.
        reason: String,
    },
}

/// Every difference between two parameter sets, one per line, in their own names.
fn describe_differences(a: &str, b: &str, m: &WeightMismatch) -> String {
    let mut out = String::new();
    for (keys, side) in [(&m.missing, a), (&m.unexpected, b)] {
        if !keys.is_empty() {
            out.push_str(&format!(
                "  keys only in '{side}' ({}): {}\n",
                keys.len(),
                keys.join(", ")
            ));
        }
    }
    for s in &m.shape {
        out.push_str(&format!(
            "  '{}': {:?} in '{a}', {:?} in '{b}'{}\n",
            s.key,
            s.expected,
            s.found,
            if s.expected == s.found {
                " (different dtypes)"
            } else {
                ""
            }
        ));
    }
    out
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(Box::new(e))
    }
}

impl Error {
    /// Builds an [`Error::InvalidParam`].
    pub fn param(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
