//! Errors of temper-eval.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while evaluating, reading a run or drawing a chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An evaluation option is out of range.
    #[error("invalid evaluation parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter as the user spells it (`batch-size`, `eps`, `masking-samples`, ...).
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The data set does not fit the model.
    #[error("data set '{dataset}' does not fit model '{model}': {reason}")]
    Mismatch {
        /// The data set's name.
        dataset: String,
        /// The model's name.
        model: String,
        /// What disagrees.
        reason: String,
    },
    /// An attack failed.
    #[error("attack '{attack}' failed")]
    Attack {
        /// The attack's name in the evaluation.
        attack: String,
        /// The attack's error.
        source: Box<temper_attacks::Error>,
    },
    /// Building an attack from its spec failed.
    #[error(transparent)]
    AttackSpec(Box<temper_attacks::Error>),
    /// Reading a batch failed.
    #[error(transparent)]
    Data(Box<temper_data::Error>),
    /// The model failed.
    #[error(transparent)]
    Model(Box<temper_core::Error>),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(Box<candle_core::Error>),
    /// A file could not be read or written.
    #[error("cannot {op} '{}'", path.display())]
    Io {
        /// What was being done (`read`, `create directory`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a training log is not what `metrics.jsonl` holds.
    #[error("'{}' line {line}: {reason}", path.display())]
    BadLogLine {
        /// The log file.
        path: PathBuf,
        /// The line number, counted from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A report is not valid JSON of the expected schema.
    #[error("{what} is not a {expected} report: {reason}")]
    BadReport {
        /// The file or text that was read.
        what: String,
        /// The schema this crate reads.
        expected: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An evaluation state file cannot continue this evaluation.
    #[error("evaluation state file '{}': {reason}", path.display())]
    BadState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A chart could not be drawn or encoded.
    #[error("cannot draw chart '{chart}': {reason}")]
    Chart {
        /// The chart's title or file.
        chart: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::InvalidParam`].
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name,
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wraps an attack's error with the attack's name.
    pub(crate) fn attack(name: &str) -> impl FnOnce(temper_attacks::Error) -> Self + '_ {
        move |source| Error::Attack {
            attack: name.to_string(),
            source: Box::new(source),
        }
    }
}

/// The errors of the crates below are boxed: they are large, errors are rare, and every
/// `Result` of this crate stays small.
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
    temper_attacks::Error => AttackSpec,
    temper_data::Error => Data,
    temper_core::Error => Model,
    candle_core::Error => Candle,
);
