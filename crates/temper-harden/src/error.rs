//! Errors of temper-harden.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while hardening a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range or malformed.
    #[error("invalid harden parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter as the user spells it (`bits`, `qat-epochs`, ...).
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The output folder holds something this run would overwrite or contradict.
    #[error("'{}': {reason}", path.display())]
    OutDir {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot {op} '{}'", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Training failed.
    #[error(transparent)]
    Train(Box<temper_train::Error>),
    /// Quantization failed.
    #[error(transparent)]
    Quant(Box<temper_quant::Error>),
    /// Evaluation or a report failed.
    #[error(transparent)]
    Eval(Box<temper_eval::Error>),
    /// An attack spec failed.
    #[error(transparent)]
    Attack(Box<temper_attacks::Error>),
    /// The data failed.
    #[error(transparent)]
    Data(Box<temper_data::Error>),
    /// The model or weights failed.
    #[error(transparent)]
    Core(Box<temper_core::Error>),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
}

impl Error {
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}

/// The errors of the crates below are boxed: they are large, and every `Result` of this
/// crate stays small.
macro_rules! boxed_from {
    ($($source:ty => $variant:ident),* $(,)?) => {$(
        impl From<$source> for Error {
            fn from(e: $source) -> Self {
                Error::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    temper_train::Error => Train,
    temper_quant::Error => Quant,
    temper_eval::Error => Eval,
    temper_attacks::Error => Attack,
    temper_data::Error => Data,
    temper_core::Error => Core,
    candle_core::Error => Candle,
);
