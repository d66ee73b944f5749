//! Learning-rate schedules: pure functions of training progress.
//!
//! A schedule is written as a spec, `kind:key=value,...` (see the [crate docs](crate) for the
//! grammar of every kind), parsed into a [`ScheduleSpec`] and validated once, for a run of a
//! given length, into a [`Schedule`]:
//!
//! ```
//! use temper_sched::{Schedule, ScheduleSpec};
//!
//! # fn main() -> temper_sched::Result<()> {
//! let spec: ScheduleSpec = "ssfd:peak=0.05,warmup=0.3,decay=exp,final=1e-4".parse()?;
//! let sched: Schedule = spec.check(10.0)?;
//! assert_eq!(sched.lr(3.0), 0.05); // the peak, reached at the end of the warm-up
//! assert_eq!(sched.lr(10.0), 1e-4); // the final value, reached at the end of the run
//! # Ok(()) }
//! ```
//!
//! The learning rate depends on nothing but the fractional epoch (`iteration /
//! iters_per_epoch`), so per-iteration schedules are exact and a resumed run, which knows
//! its iteration, continues exactly.

mod constant;
mod cosine;
mod cyclic;
mod exponential;
mod onecycle;
mod piecewise;
mod shape;
mod ssfd;
mod step;
mod warmup;

pub use constant::Constant;
pub use cosine::{Cosine, Restarts};
pub use cyclic::Cyclic;
pub use exponential::{ExpRate, Exponential};
pub use onecycle::OneCycle;
pub use piecewise::Piecewise;
pub use shape::Shape;
pub use ssfd::Ssfd;
pub use step::{Milestones, Step};
pub use warmup::Warmup;

use crate::spec::{split_kind, Params, SpecWriter};
use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// What every schedule kind provides; [`ScheduleSpec`] dispatches to it.
trait Kind: Sized + Into<ScheduleSpec> {
    /// The kind's name in a spec.
    const NAME: &'static str;
    /// The keys the kind takes, in the order `Display` writes them.
    const KEYS: &'static [&'static str];
    /// Reads the parameters; defaults are resolved here, so that a stored spec never changes
    /// meaning when a default is retuned.
    fn parse(p: &Params<'_>) -> Result<Self>;
    /// Writes every parameter, defaults included.
    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result;
    /// Validates the parameters for a run of `total` epochs.
    fn check(&self, total: f64) -> Result<()>;
    /// The learning rate at epoch `t`, with `0 <= t <= total`.
    fn lr(&self, t: f64, total: f64) -> f64;
}

/// The schedule kinds and their spellings, for error messages.
const KINDS: &str =
    "constant, step (multistep), exp (exponential), cosine, warmup, cyclic, onecycle, piecewise, ssfd";

/// An unchecked schedule: what a spec string says, with every default filled in.
///
/// Parse one from a string with [`str::parse`], or build one from the kinds' constructors.
/// [`Display`](fmt::Display) writes a spec that parses back to an equal value, and serde
/// stores it as that string. Turn it into a usable [`Schedule`] with [`ScheduleSpec::check`].
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleSpec {
    /// A constant learning rate.
    Constant(Constant),
    /// Multiplied by `gamma` at each milestone (PyTorch's `MultiStepLR` and `StepLR`).
    Step(Step),
    /// Exponential decay.
    Exponential(Exponential),
    /// Cosine annealing, optionally with SGDR warm restarts.
    Cosine(Cosine),
    /// A linear warm-up in front of another schedule.
    Warmup(Warmup),
    /// Fast-AT's triangle: 0 up to the peak and back down to 0 over the run.
    Cyclic(Cyclic),
    /// Smith's one-cycle policy (PyTorch's `OneCycleLR`).
    OneCycle(OneCycle),
    /// Linear interpolation between points.
    Piecewise(Piecewise),
    /// Slow start, fast decay (Jeddi et al. 2020), the default for adversarial fine-tuning.
    Ssfd(Ssfd),
}

macro_rules! dispatch {
    ($spec:expr, $k:ident => $body:expr) => {
        match $spec {
            ScheduleSpec::Constant($k) => $body,
            ScheduleSpec::Step($k) => $body,
            ScheduleSpec::Exponential($k) => $body,
            ScheduleSpec::Cosine($k) => $body,
            ScheduleSpec::Warmup($k) => $body,
            ScheduleSpec::Cyclic($k) => $body,
            ScheduleSpec::OneCycle($k) => $body,
            ScheduleSpec::Piecewise($k) => $body,
            ScheduleSpec::Ssfd($k) => $body,
        }
    };
}

fn parse_as<K: Kind>(body: &str) -> Result<ScheduleSpec> {
    let p = Params::new("schedule", K::NAME, K::KEYS, body)?;
    Ok(K::parse(&p)?.into())
}

impl ScheduleSpec {
    /// Validates every parameter for a run of `total_epochs` epochs (which must be positive)
    /// and returns the usable schedule. Errors name the offending parameter.
    pub fn check(self, total_epochs: f64) -> Result<Schedule> {
        if !(total_epochs.is_finite() && total_epochs > 0.0) {
            return Err(Error::param(
                "epochs",
                format!("the run length must be a positive number of epochs, got {total_epochs}"),
            ));
        }
        self.validate(total_epochs)?;
        Ok(Schedule {
            spec: self,
            total_epochs,
        })
    }

    /// The kind's name as written in specs, e.g. `ssfd`.
    pub fn kind(&self) -> &'static str {
        fn name<K: Kind>(_: &K) -> &'static str {
            K::NAME
        }
        dispatch!(self, k => name(k))
    }

    fn validate(&self, total: f64) -> Result<()> {
        dispatch!(self, k => k.check(total))
    }

    fn lr_at(&self, t: f64, total: f64) -> f64 {
        dispatch!(self, k => k.lr(t, total))
    }
}

impl FromStr for ScheduleSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, body) = split_kind(s.trim());
        match kind {
            "constant" | "const" => parse_as::<Constant>(body),
            "step" | "multistep" => parse_as::<Step>(body),
            "exp" | "exponential" => parse_as::<Exponential>(body),
            "cosine" => parse_as::<Cosine>(body),
            "warmup" => parse_as::<Warmup>(body),
            "cyclic" => parse_as::<Cyclic>(body),
            "onecycle" | "one-cycle" => parse_as::<OneCycle>(body),
            "piecewise" => parse_as::<Piecewise>(body),
            "ssfd" => parse_as::<Ssfd>(body),
            _ => Err(Error::UnknownKind {
                what: "schedule",
                kind: kind.to_string(),
                expected: KINDS.to_string(),
            }),
        }
    }
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write<K: Kind>(k: &K, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut w = SpecWriter::new(f, K::NAME)?;
            k.write(&mut w)
        }
        dispatch!(self, k => write(k, f))
    }
}

impl TryFrom<String> for ScheduleSpec {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ScheduleSpec> for String {
    fn from(s: ScheduleSpec) -> String {
        s.to_string()
    }
}

// Serialised as its spec string: readable in a TOML run config and in a checkpoint, and
// parsed by the same code as the command line.
impl serde::Serialize for ScheduleSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ScheduleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A validated schedule for a run of `total_epochs` epochs.
///
/// Only [`ScheduleSpec::check`] (and deserialisation, which calls it) makes one, so every
/// `Schedule` is valid. Serde stores the spec string and the run length.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "ScheduleRepr", into = "ScheduleRepr")]
pub struct Schedule {
    spec: ScheduleSpec,
    total_epochs: f64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ScheduleRepr {
    spec: ScheduleSpec,
    total_epochs: f64,
}

impl TryFrom<ScheduleRepr> for Schedule {
    type Error = Error;

    fn try_from(r: ScheduleRepr) -> Result<Self> {
        r.spec.check(r.total_epochs)
    }
}

impl From<Schedule> for ScheduleRepr {
    fn from(s: Schedule) -> Self {
        ScheduleRepr {
            spec: s.spec,
            total_epochs: s.total_epochs,
        }
    }
}

impl Schedule {
    /// The learning rate at fractional epoch `epoch` (`iteration / iters_per_epoch`).
    ///
    /// Epochs before 0 read as 0 and epochs past the end of the run as its end (NaN reads as
    /// 0), so the result is always a finite, non-negative learning rate.
    pub fn lr(&self, epoch: f64) -> f64 {
        // NaN fails the comparison and reads as 0 too.
        let t = if epoch > 0.0 {
            epoch.min(self.total_epochs)
        } else {
            0.0
        };
        self.spec.lr_at(t, self.total_epochs)
    }

    /// The learning rate for iteration `iteration` (counted from 0) of a run with
    /// `iters_per_epoch` iterations per epoch: `lr(iteration / iters_per_epoch)`, computed
    /// the same way everywhere so that a resumed run sees the same values.
    pub fn lr_at_iter(&self, iteration: u64, iters_per_epoch: u64) -> f64 {
        self.lr(iteration as f64 / iters_per_epoch.max(1) as f64)
    }

    /// The run length the schedule was checked for.
    pub fn total_epochs(&self) -> f64 {
        self.total_epochs
    }

    /// The spec the schedule was built from.
    pub fn spec(&self) -> &ScheduleSpec {
        &self.spec
    }

    /// `points` evenly spaced `(epoch, lr)` pairs over `[0, epochs]`, both ends included, for
    /// plotting. `epochs` is usually [`Schedule::total_epochs`]; beyond it the curve is flat.
    pub fn sample(&self, epochs: f64, points: usize) -> Vec<(f64, f64)> {
        match points {
            0 => Vec::new(),
            1 => vec![(0.0, self.lr(0.0))],
            n => (0..n)
                .map(|i| {
                    // The last point is `epochs` exactly, not a rounded multiple of the step.
                    let e = if i == n - 1 {
                        epochs
                    } else {
                        epochs * i as f64 / (n - 1) as f64
                    };
                    (e, self.lr(e))
                })
                .collect(),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

/// Rejects a learning rate that is negative or not finite.
fn check_lr(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::param(
            name,
            format!("must be a finite number >= 0, got {v}"),
        ))
    }
}

/// Rejects a value that is not a finite positive number.
fn check_positive(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::param(
            name,
            format!("must be a finite number > 0, got {v}"),
        ))
    }
}

/// Rejects `v > limit`, naming both parameters.
fn check_at_most(name: &str, v: f64, limit_name: &str, limit: f64) -> Result<()> {
    if v <= limit {
        Ok(())
    } else {
        Err(Error::param(
            name,
            format!("must be <= `{limit_name}` ({limit}), got {v}"),
        ))
    }
}
