//! The error type of `temper-sched`.

/// Result alias used throughout `temper-sched`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when parsing or checking a schedule or an optimizer, or when
/// stepping one. Messages name the offending parameter or state key as the user spells it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec string is not of the form `kind:key=value,...`.
    #[error("cannot parse {what} spec '{spec}': {reason}")]
    Syntax {
        /// What was being parsed: "schedule" or "optimizer".
        what: &'static str,
        /// The offending (part of the) spec string.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The kind before the `:` is not known.
    #[error("unknown {what} `{kind}` (expected one of: {expected})")]
    UnknownKind {
        /// What was being parsed: "schedule" or "optimizer".
        what: &'static str,
        /// The kind the user wrote.
        kind: String,
        /// The kinds that exist.
        expected: String,
    },

    /// A key that the kind does not take.
    #[error("`{kind}` has no parameter `{key}` (expected one of: {expected})")]
    UnknownKey {
        /// The schedule or optimizer kind, e.g. `ssfd`.
        kind: &'static str,
        /// The key the user wrote.
        key: String,
        /// The keys the kind takes.
        expected: String,
    },

    /// A key given twice.
    #[error("`{kind}`: parameter `{key}` is given twice")]
    DuplicateKey {
        /// The schedule or optimizer kind.
        kind: &'static str,
        /// The repeated key.
        key: String,
    },

    /// A required key is missing.
    #[error("`{kind}` needs parameter `{key}`")]
    MissingKey {
        /// The schedule or optimizer kind.
        kind: &'static str,
        /// The missing key.
        key: &'static str,
    },

    /// A value that cannot be read as the type its key needs.
    #[error("parameter `{key}`: cannot read '{value}': {reason}")]
    BadValue {
        /// The key whose value is malformed.
        key: String,
        /// The value as written.
        value: String,
        /// What was expected.
        reason: String,
    },

    /// A parameter that is well formed but out of range (found by `check`).
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter as the user spells it, e.g. `warmup`.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// Optimizer state that does not fit the parameter store it is imported into.
    #[error("optimizer state `{key}`: {reason}")]
    BadState {
        /// The state key, e.g. `momentum_buffer.fc.weight`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor operation failed inside candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Builds an [`Error::InvalidParam`].
    pub fn param(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::BadState`].
    pub fn state(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadState {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
