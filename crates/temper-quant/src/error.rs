//! Errors of temper-quant.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while quantizing, exporting or loading a quantized model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hyper-parameter is out of range or malformed.
    #[error("invalid quantization parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter as the user spells it (`bits`, `calib`, `gpfq-c`, ...).
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The model's layer graph is something the quantizer cannot handle.
    #[error("cannot quantize model '{model}': {reason}")]
    Unsupported {
        /// The model's name.
        model: String,
        /// What is in the way.
        reason: String,
    },

    /// A quantized safetensors file is malformed or does not describe a quantized model.
    #[error("quantized weights '{path}': {reason}")]
    BadFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

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

    /// The model or a core helper failed.
    #[error(transparent)]
    Core(#[from] temper_core::Error),

    /// An attack failed.
    #[error(transparent)]
    Attack(#[from] temper_attacks::Error),

    /// Drawing a chart failed.
    #[error(transparent)]
    Eval(#[from] temper_eval::Error),

    /// Reading the data set failed.
    #[error(transparent)]
    Data(#[from] temper_data::Error),

    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub(crate) fn param(name: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidParam {
        name: name.into(),
        reason: reason.into(),
    }
}

pub(crate) fn bad_file(path: &std::path::Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
