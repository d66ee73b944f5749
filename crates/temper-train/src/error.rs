//! Errors of temper-train.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid training parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter as spelled in config.toml and on the command line.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A run directory or one of its files is unusable.
    #[error("run directory '{path}': {reason}")]
    RunDir {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The loss or the gradients stopped being finite; nothing non-finite was applied or
    /// saved.
    #[error("training diverged at iteration {iter}: {reason}; lower the learning rate (--lr-schedule). The weights were not updated with it and nothing non-finite was saved; {kept}")]
    Diverged {
        /// The iteration (1-based) whose loss or gradients were not finite.
        iter: u64,
        /// What was not finite.
        reason: String,
        /// What the run directory still holds.
        kept: String,
    },
    /// Reading or writing a file failed.
    #[error("{op} '{path}'")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The model or weights failed.
    #[error(transparent)]
    Core(#[from] temper_core::Error),
    /// The data failed.
    #[error(transparent)]
    Data(#[from] temper_data::Error),
    /// An attack failed.
    #[error(transparent)]
    Attack(#[from] temper_attacks::Error),
    /// Validation failed.
    #[error(transparent)]
    Eval(#[from] temper_eval::Error),
    /// A schedule or optimizer failed.
    #[error(transparent)]
    Sched(#[from] temper_sched::Error),
    /// A reference implementation run beside Temper (the PyTorch side of a benchmark)
    /// failed.
    #[error("reference '{script}' {reason}")]
    Reference {
        /// The reference's script.
        script: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidParam {
        name,
        reason: reason.into(),
    }
}

pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.into(),
        source,
    }
}
