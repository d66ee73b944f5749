//! The curve between two learning rates, shared by SSFD's decay and one-cycle's phases.

use crate::spec::Keyword;
use crate::{Error, Result};
use std::f64::consts::PI;
use std::fmt;

/// How a schedule goes from one learning rate to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Geometric: `from * (to / from)^p`. Both ends must be positive. It falls fastest at
    /// first, spending the most time near `to`.
    Exp,
    /// A straight line.
    Linear,
    /// Half a cosine (PyTorch's `CosineAnnealingLR` curve): flat at both ends.
    Cos,
}

impl Keyword for Shape {
    const ALL: &'static [Self] = &[Shape::Exp, Shape::Linear, Shape::Cos];

    fn name(self) -> &'static str {
        match self {
            Shape::Exp => "exp",
            Shape::Linear => "linear",
            Shape::Cos => "cos",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Shape {
    /// The value at progress `p` in `[0, 1]` from `from` to `to`. Both ends are returned
    /// exactly (not through the formula, which may round), so a schedule reaches its peak and
    /// its final value bit for bit.
    pub fn interp(self, from: f64, to: f64, p: f64) -> f64 {
        if p <= 0.0 {
            return from;
        }
        if p >= 1.0 {
            return to;
        }
        match self {
            Shape::Exp => from * (to / from).powf(p),
            Shape::Linear => from + (to - from) * p,
            Shape::Cos => to + (from - to) * (1.0 + (PI * p).cos()) / 2.0,
        }
    }

    /// Checks that the shape can join `from` and `to`: geometric interpolation needs both
    /// positive. `to_name` is the parameter blamed, since it is usually the one set to 0.
    pub(crate) fn check(self, from: f64, to: f64, from_name: &str, to_name: &str) -> Result<()> {
        if self == Shape::Exp {
            for (name, v) in [(from_name, from), (to_name, to)] {
                if v <= 0.0 {
                    return Err(Error::param(
                        name,
                        format!(
                            "must be > 0 with an `exp` shape (a geometric curve never reaches 0), got {v}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The two-phase curve of one-cycle and SSFD: from `start` up to `peak` along `up` over
/// `[0, w]`, then down to `final_lr` along `down` over `[w, total]`. The peak is returned
/// exactly at `w`, and a warm-up covering the whole run ends at the peak.
pub(crate) fn rise_and_fall(
    t: f64,
    total: f64,
    w: f64,
    (start, peak, final_lr): (f64, f64, f64),
    up: Shape,
    down: Shape,
) -> f64 {
    if t < w {
        up.interp(start, peak, t / w)
    } else if total > w {
        down.interp(peak, final_lr, (t - w) / (total - w))
    } else {
        peak
    }
}
