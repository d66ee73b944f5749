//! `cosine:peak=0.1,final=0` and, with SGDR warm restarts, `cosine:peak=0.1,period=10ep,mult=2`

use super::{check_at_most, check_lr, check_positive, Kind, ScheduleSpec, Shape};
use crate::spec::{Params, Progress, SpecWriter};
use crate::{Error, Result};
use std::fmt;

/// SGDR warm restarts (Loshchilov & Hutter 2017; PyTorch's `CosineAnnealingWarmRestarts`).
#[derive(Debug, Clone, PartialEq)]
pub struct Restarts {
    /// The length of the first cycle (`T_0`).
    pub period: Progress,
    /// Each cycle is `mult` times longer than the one before (`T_mult`), `>= 1`.
    pub mult: f64,
}

/// Cosine annealing from `peak` to `final`.
///
/// Without restarts the curve spans the whole run and ends at `final`. With restarts, cycle
/// `i` lasts `period * mult^i`, and each starts again from `peak`; a cycle covers
/// `[start, end)`, so at a restart the learning rate is already back at `peak`, as in
/// PyTorch; but a run that ends exactly on a restart ends at `final`.
///
/// Spec: `cosine:peak=LR,final=F[,period=P[,mult=M]]`; `peak` required, `final` defaults to
/// 0, `mult` to 1 and needs `period`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cosine {
    /// The learning rate at the start of each cycle.
    pub peak: f64,
    /// The learning rate at the end of each cycle.
    pub final_lr: f64,
    /// Warm restarts, or `None` for a single cycle over the run.
    pub restarts: Option<Restarts>,
}

impl Cosine {
    /// A single cosine from `peak` to 0 over the run.
    pub fn new(peak: f64) -> Self {
        Cosine {
            peak,
            final_lr: 0.0,
            restarts: None,
        }
    }
}

impl From<Cosine> for ScheduleSpec {
    fn from(k: Cosine) -> Self {
        ScheduleSpec::Cosine(k)
    }
}

impl Kind for Cosine {
    const NAME: &'static str = "cosine";
    const KEYS: &'static [&'static str] = &["peak", "final", "period", "mult"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        let peak = p.required("peak", Params::f64)?;
        let final_lr = p.f64("final")?.unwrap_or(0.0);
        let restarts = match (p.progress("period")?, p.f64("mult")?) {
            (Some(period), mult) => Some(Restarts {
                period,
                mult: mult.unwrap_or(1.0),
            }),
            (None, Some(_)) => return Err(Error::param("mult", "needs `period`")),
            (None, None) => None,
        };
        Ok(Cosine {
            peak,
            final_lr,
            restarts,
        })
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("peak", self.peak)?;
        w.num("final", self.final_lr)?;
        if let Some(r) = &self.restarts {
            w.kv("period", r.period)?;
            w.num("mult", r.mult)?;
        }
        Ok(())
    }

    fn check(&self, total: f64) -> Result<()> {
        check_positive("peak", self.peak)?;
        check_lr("final", self.final_lr)?;
        check_at_most("final", self.final_lr, "peak", self.peak)?;
        if let Some(r) = &self.restarts {
            r.period.check("period", total)?;
            if r.period.epochs(total) <= 0.0 {
                return Err(Error::param("period", "must be > 0"));
            }
            if !(r.mult.is_finite() && r.mult >= 1.0) {
                return Err(Error::param("mult", format!("must be >= 1, got {}", r.mult)));
            }
        }
        Ok(())
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        let (t_cur, len) = match &self.restarts {
            None => (t, total),
            Some(r) => {
                let (t_cur, len) = cycle(t, r.period.epochs(total), r.mult);
                // Cycles are `[start, end)`, so a restart applies from its first instant, as
                // in PyTorch. The end of the run is the exception: a run that ends on a
                // restart ends at `final`, the limit from the left, since no step is taken
                // there and a plot should not spike. The tolerance absorbs rounding in
                // `cycle`.
                if t >= total && t_cur <= 1e-9 * len {
                    return self.final_lr;
                }
                (t_cur, len)
            }
        };
        Shape::Cos.interp(self.peak, self.final_lr, t_cur / len)
    }
}

/// The position within the current SGDR cycle and the cycle's length, at epoch `t`.
fn cycle(t: f64, t0: f64, mult: f64) -> (f64, f64) {
    if mult == 1.0 {
        let i = (t / t0).floor();
        return ((t - i * t0).clamp(0.0, t0), t0);
    }
    // Cycle i starts at t0 * (mult^i - 1) / (mult - 1); invert that for i, then correct by
    // one either way, since the logarithm may round across a cycle boundary.
    let start = |i: f64| t0 * (mult.powf(i) - 1.0) / (mult - 1.0);
    let mut i = ((t / t0 * (mult - 1.0)).ln_1p() / mult.ln()).floor().max(0.0);
    if start(i) > t {
        i -= 1.0;
    } else if start(i + 1.0) <= t {
        i += 1.0;
    }
    let len = t0 * mult.powf(i);
    ((t - start(i)).clamp(0.0, len), len)
}
