//! Errors of temper-attacks.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in an attack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyper-parameter is out of range.
    #[error("invalid attack parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter as the user spells it (`eps`, `alpha`, `steps`, ...).
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The inputs or labels do not fit the model or the conventions.
    #[error("bad attack input: {0}")]
    BadInput(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] temper_core::Error),
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
