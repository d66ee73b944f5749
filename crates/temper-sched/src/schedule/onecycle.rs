//! `onecycle:peak=0.1,warmup=0.3,start=0.004,final=4e-7,anneal=cos`

use super::shape::rise_and_fall;
use super::{check_at_most, check_lr, check_positive, Kind, ScheduleSpec, Shape};
use crate::spec::{Params, Progress, SpecWriter};
use crate::Result;
use std::fmt;

/// Smith & Topin's one-cycle policy, as PyTorch's `OneCycleLR` (two phases): from `start` up
/// to `peak` over the first `warmup` of the run, then down to `final`, both phases along the
/// `anneal` curve.
///
/// Spec: `onecycle:peak=LR,warmup=P,start=S,final=F,anneal=cos|linear|exp` (alias
/// `one-cycle`); `peak` required. The defaults are PyTorch's: `warmup=0.3` (`pct_start`),
/// `start = peak / 25` (`div_factor`), `final = start / 1e4` (`final_div_factor`),
/// `anneal=cos`. They are resolved when the spec is parsed, so `onecycle:peak=0.1` displays
/// as `onecycle:peak=0.1,warmup=0.3,start=0.004,final=4e-7,anneal=cos`.
#[derive(Debug, Clone, PartialEq)]
pub struct OneCycle {
    /// The highest learning rate.
    pub peak: f64,
    /// Where the peak is.
    pub warmup: Progress,
    /// The learning rate at epoch 0.
    pub start: f64,
    /// The learning rate at the end of the run.
    pub final_lr: f64,
    /// The curve of both phases.
    pub anneal: Shape,
}

impl OneCycle {
    /// One cycle with PyTorch's defaults around `peak`.
    pub fn new(peak: f64) -> Self {
        let start = peak / 25.0;
        OneCycle {
            peak,
            warmup: Progress::Fraction(0.3),
            start,
            final_lr: start / 1e4,
            anneal: Shape::Cos,
        }
    }
}

impl From<OneCycle> for ScheduleSpec {
    fn from(k: OneCycle) -> Self {
        ScheduleSpec::OneCycle(k)
    }
}

impl Kind for OneCycle {
    const NAME: &'static str = "onecycle";
    const KEYS: &'static [&'static str] = &["peak", "warmup", "start", "final", "anneal"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        let mut k = OneCycle::new(p.required("peak", Params::f64)?);
        if let Some(v) = p.progress("warmup")? {
            k.warmup = v;
        }
        if let Some(v) = p.f64("start")? {
            k.start = v;
            // PyTorch derives the final value from the initial one; so does an explicit start.
            k.final_lr = v / 1e4;
        }
        if let Some(v) = p.f64("final")? {
            k.final_lr = v;
        }
        if let Some(v) = p.keyword("anneal")? {
            k.anneal = v;
        }
        Ok(k)
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("peak", self.peak)?;
        w.kv("warmup", self.warmup)?;
        w.num("start", self.start)?;
        w.num("final", self.final_lr)?;
        w.kv("anneal", self.anneal)
    }

    fn check(&self, total: f64) -> Result<()> {
        check_positive("peak", self.peak)?;
        self.warmup.check("warmup", total)?;
        check_lr("start", self.start)?;
        check_at_most("start", self.start, "peak", self.peak)?;
        check_lr("final", self.final_lr)?;
        check_at_most("final", self.final_lr, "peak", self.peak)?;
        self.anneal.check(self.start, self.final_lr, "start", "final")
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        let w = self.warmup.epochs(total);
        let lrs = (self.start, self.peak, self.final_lr);
        rise_and_fall(t, total, w, lrs, self.anneal, self.anneal)
    }
}
