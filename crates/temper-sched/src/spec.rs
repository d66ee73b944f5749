//! The `kind:key=value,key=value` syntax shared by schedule and optimizer specs.
//!
//! Parsing here is purely syntactic: values are read into numbers, progress points, lists
//! and keywords, but whether they are in range is decided by each kind's `check`, so that a
//! spec built in code and a spec parsed from a string are validated by the same code.

use crate::{Error, Result};
use std::fmt;

/// Splits `kind:body` at the first `:`; a spec without `:` is a kind with no parameters.
pub(crate) fn split_kind(spec: &str) -> (&str, &str) {
    match spec.split_once(':') {
        Some((kind, body)) => (kind.trim(), body),
        None => (spec.trim(), ""),
    }
}

/// The `key=value` pairs of one spec, with bookkeeping so that every key is read once and
/// unknown keys are reported with the list of keys the kind takes.
pub(crate) struct Params<'a> {
    what: &'static str,
    kind: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    /// Splits `body` at top-level commas (commas inside `[...]` belong to a nested spec) and
    /// rejects keys outside `keys` and keys given twice.
    pub(crate) fn new(
        what: &'static str,
        kind: &'static str,
        keys: &'static [&'static str],
        body: &'a str,
    ) -> Result<Self> {
        let mut pairs: Vec<(&'a str, &'a str)> = Vec::new();
        for item in split_top_level(what, body)? {
            let Some((key, value)) = item.split_once('=') else {
                return Err(Error::Syntax {
                    what,
                    spec: item.to_string(),
                    reason: "expected `key=value`".into(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            if !keys.contains(&key) {
                return Err(Error::UnknownKey {
                    kind,
                    key: key.to_string(),
                    expected: keys.join(", "),
                });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(Error::DuplicateKey {
                    kind,
                    key: key.to_string(),
                });
            }
            pairs.push((key, value));
        }
        Ok(Params { what, kind, pairs })
    }

    /// The raw value of `key`, if given.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// A required value.
    pub(crate) fn required<T>(
        &self,
        key: &'static str,
        read: impl Fn(&Self, &'static str) -> Result<Option<T>>,
    ) -> Result<T> {
        read(self, key)?.ok_or(Error::MissingKey { kind: self.kind, key })
    }

    /// A finite number.
    pub(crate) fn f64(&self, key: &'static str) -> Result<Option<f64>> {
        self.raw(key).map(|v| number(key, v)).transpose()
    }

    /// A point in the run: a fraction of it (`0.3`) or a number of epochs (`5ep`).
    pub(crate) fn progress(&self, key: &'static str) -> Result<Option<Progress>> {
        self.raw(key).map(|v| progress(key, v)).transpose()
    }

    /// `true` or `false`.
    pub(crate) fn bool(&self, key: &'static str) -> Result<Option<bool>> {
        self.raw(key)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad_value(key, v, "expected `true` or `false`")),
            })
            .transpose()
    }

    /// One of a fixed set of keywords.
    pub(crate) fn keyword<T: Keyword>(&self, key: &'static str) -> Result<Option<T>> {
        self.raw(key)
            .map(|v| {
                T::ALL.iter().copied().find(|k| k.name() == v).ok_or_else(|| {
                    let names: Vec<&str> = T::ALL.iter().map(|k| k.name()).collect();
                    bad_value(key, v, format!("expected one of {}", names.join(", ")))
                })
            })
            .transpose()
    }

    /// A `/`-separated list, each item read by `item`.
    pub(crate) fn list<T>(
        &self,
        key: &'static str,
        item: impl Fn(&'static str, &str) -> Result<T>,
    ) -> Result<Option<Vec<T>>> {
        self.raw(key)
            .map(|v| {
                if v.is_empty() {
                    return Err(bad_value(key, v, "expected a `/`-separated list"));
                }
                v.split('/').map(|s| item(key, s.trim())).collect()
            })
            .transpose()
    }

    /// A nested spec written in brackets, `[kind:key=value,...]`; returns what is inside.
    pub(crate) fn nested(&self, key: &'static str) -> Result<Option<&'a str>> {
        self.raw(key)
            .map(|v| {
                v.strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .ok_or_else(|| {
                        bad_value(
                            key,
                            v,
                            format!("expected a {} in brackets, e.g. `[cosine:peak=0.1]`", self.what),
                        )
                    })
            })
            .transpose()
    }
}

/// Splits at commas outside brackets, rejecting unbalanced brackets and empty items.
fn split_top_level<'a>(what: &'static str, body: &'a str) -> Result<Vec<&'a str>> {
    let syntax = |reason: &str| Error::Syntax {
        what,
        spec: body.to_string(),
        reason: reason.to_string(),
    };
    if body.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in body.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(|| syntax("unbalanced `]`"))?,
            ',' if depth == 0 => {
                items.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(syntax("unbalanced `[`"));
    }
    items.push(&body[start..]);
    if items.iter().any(|s| s.trim().is_empty()) {
        return Err(syntax("empty parameter (stray comma?)"));
    }
    Ok(items)
}

pub(crate) fn bad_value(key: &str, value: &str, reason: impl Into<String>) -> Error {
    Error::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Reads a finite number; `inf` and `NaN`, which Rust's parser accepts, are refused here.
pub(crate) fn number(key: &str, v: &str) -> Result<f64> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(bad_value(key, v, "expected a finite number")),
        Err(_) => Err(bad_value(key, v, "expected a number")),
    }
}

/// Reads a [`Progress`]: `5ep` is epochs, a plain number a fraction of the run.
pub(crate) fn progress(key: &str, v: &str) -> Result<Progress> {
    match v.strip_suffix("ep") {
        Some(n) => number(key, n).map(Progress::Epochs),
        None => number(key, v).map(Progress::Fraction),
    }
}

/// A keyword-valued parameter, such as the decay shape.
pub(crate) trait Keyword: Copy + 'static {
    /// Every value, in the order they are listed in error messages.
    const ALL: &'static [Self];
    /// The spelling in a spec.
    fn name(self) -> &'static str;
}

/// Writes numbers so that they read back bit for bit: Rust's shortest round-trip formatting,
/// in exponent form when that is easier to read (`1e-4` rather than `0.0001`).
pub(crate) struct Num(pub f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0.abs();
        if a != 0.0 && !(1e-3..1e6).contains(&a) {
            write!(f, "{:e}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Writes `kind:key=value,...`, the inverse of [`Params`].
pub(crate) struct SpecWriter<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    first: bool,
}

impl<'a, 'b> SpecWriter<'a, 'b> {
    /// Starts a spec of `kind`.
    pub(crate) fn new(f: &'a mut fmt::Formatter<'b>, kind: &str) -> Result<Self, fmt::Error> {
        f.write_str(kind)?;
        Ok(SpecWriter { f, first: true })
    }

    /// Writes `key=value` (any `Display` value).
    pub(crate) fn kv(&mut self, key: &str, value: impl fmt::Display) -> fmt::Result {
        let sep = if self.first { ':' } else { ',' };
        self.first = false;
        write!(self.f, "{sep}{key}={value}")
    }

    /// Writes a number.
    pub(crate) fn num(&mut self, key: &str, value: f64) -> fmt::Result {
        self.kv(key, Num(value))
    }
}

/// A point in the run: a fraction of its length or an absolute number of epochs.
///
/// Written `0.3` (30 % of the run) or `5ep` (epoch 5) in specs. Fractions make a schedule
/// independent of the run length, so the same spec serves a 10-epoch and a 200-epoch run;
/// epochs are there for the cases where a paper fixes them (e.g. milestones 100 and 150).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// A fraction of the run, in `[0, 1]`.
    Fraction(f64),
    /// A number of epochs, in `[0, total_epochs]`.
    Epochs(f64),
}

impl Progress {
    /// The point in epochs, for a run of `total_epochs`.
    pub fn epochs(self, total_epochs: f64) -> f64 {
        match self {
            Progress::Fraction(f) => f * total_epochs,
            Progress::Epochs(e) => e,
        }
    }

    /// Checks that the point lies within a run of `total_epochs`; errors name `name`.
    pub fn check(self, name: &str, total_epochs: f64) -> Result<()> {
        match self {
            Progress::Fraction(f) if !(0.0..=1.0).contains(&f) => Err(Error::param(
                name,
                format!("fraction of the run must be in [0, 1], got {f} (write `{f}ep` for epochs)"),
            )),
            Progress::Epochs(e) if !(0.0..=total_epochs).contains(&e) => Err(Error::param(
                name,
                format!("must be within the run of {total_epochs} epochs, got {e} epochs"),
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Progress::Fraction(x) => write!(f, "{}", Num(x)),
            Progress::Epochs(e) => write!(f, "{}ep", Num(e)),
        }
    }
}

impl std::str::FromStr for Progress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        progress("progress", s.trim())
    }
}
