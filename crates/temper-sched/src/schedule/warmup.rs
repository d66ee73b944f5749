//! `warmup:length=5ep,start=0,then=[step:lr=0.1,milestones=0.5/0.75]`

use super::{check_lr, Kind, ScheduleSpec};
use crate::spec::{Params, Progress, SpecWriter};
use crate::{Error, Result};
use std::fmt;

/// A linear warm-up in front of any schedule (Goyal et al. 2017's "gradual warm-up").
///
/// For `t < length`, the learning rate rises linearly from `start` to the wrapped schedule's
/// value at `length`; from `length` on it is the wrapped schedule's, unchanged. Times are not
/// shifted: the wrapped schedule still sees the whole run, so `milestones=100ep` means epoch
/// 100 with or without a warm-up, and the curve is continuous at the joint.
///
/// Spec: `warmup:length=P,start=S,then=[SPEC]`; `length` and `then` required, `start`
/// defaults to 0. The wrapped spec goes in brackets because it has commas of its own (quote
/// the whole spec in zsh, where brackets are glob characters).
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup {
    /// How long the warm-up lasts.
    pub length: Progress,
    /// The learning rate at epoch 0.
    pub start: f64,
    /// The schedule that takes over.
    pub then: Box<ScheduleSpec>,
}

impl Warmup {
    /// A warm-up from 0 over `length` in front of `then`.
    pub fn new(length: Progress, then: impl Into<ScheduleSpec>) -> Self {
        Warmup {
            length,
            start: 0.0,
            then: Box::new(then.into()),
        }
    }
}

impl From<Warmup> for ScheduleSpec {
    fn from(k: Warmup) -> Self {
        ScheduleSpec::Warmup(k)
    }
}

impl Kind for Warmup {
    const NAME: &'static str = "warmup";
    const KEYS: &'static [&'static str] = &["length", "start", "then"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        let length = p.required("length", Params::progress)?;
        let start = p.f64("start")?.unwrap_or(0.0);
        let then: ScheduleSpec = p.required("then", Params::nested)?.parse()?;
        Ok(Warmup {
            length,
            start,
            then: Box::new(then),
        })
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.kv("length", self.length)?;
        w.num("start", self.start)?;
        w.kv("then", format_args!("[{}]", self.then))
    }

    fn check(&self, total: f64) -> Result<()> {
        self.length.check("length", total)?;
        check_lr("start", self.start)?;
        // `then.` tells the user which of the two schedules the offending parameter belongs to.
        self.then.validate(total).map_err(|e| match e {
            Error::InvalidParam { name, reason } => Error::param(format!("then.{name}"), reason),
            e => e,
        })
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        let len = self.length.epochs(total);
        if t >= len {
            return self.then.lr_at(t, total);
        }
        let target = self.then.lr_at(len, total);
        self.start + (target - self.start) * (t / len)
    }
}
