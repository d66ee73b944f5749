//! `piecewise:points=0:0/0.4:0.2/1:0`

use super::{check_lr, Kind, ScheduleSpec};
use crate::spec::{self, bad_value, Params, Progress, SpecWriter};
use crate::{Error, Result};
use std::fmt;

/// Linear interpolation between `(point, lr)` pairs, flat before the first point and after
/// the last (like `numpy.interp`).
///
/// Spec: `piecewise:points=P:LR/P:LR/...`, with points strictly increasing; for example
/// Fast-AT's triangle is `piecewise:points=0:0/0.4:0.2/1:0` and a warm-up held for two
/// epochs then cut is `piecewise:points=0:0.01/1ep:0.1/2ep:0.1/1:0.001`.
#[derive(Debug, Clone, PartialEq)]
pub struct Piecewise {
    /// `(where, learning rate)`, strictly increasing in `where`.
    pub points: Vec<(Progress, f64)>,
}

impl Piecewise {
    /// Interpolates between `points`.
    pub fn new(points: Vec<(Progress, f64)>) -> Self {
        Piecewise { points }
    }
}

impl From<Piecewise> for ScheduleSpec {
    fn from(k: Piecewise) -> Self {
        ScheduleSpec::Piecewise(k)
    }
}

fn point(key: &'static str, v: &str) -> Result<(Progress, f64)> {
    let (at, lr) = v
        .split_once(':')
        .ok_or_else(|| bad_value(key, v, "expected a point `where:lr`, e.g. `0.5:0.1`"))?;
    Ok((spec::progress(key, at.trim())?, spec::number(key, lr.trim())?))
}

impl Kind for Piecewise {
    const NAME: &'static str = "piecewise";
    const KEYS: &'static [&'static str] = &["points"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        Ok(Piecewise::new(p.required("points", |p, k| p.list(k, point))?))
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        let list: Vec<String> = self
            .points
            .iter()
            .map(|(at, lr)| format!("{at}:{}", spec::Num(*lr)))
            .collect();
        w.kv("points", list.join("/"))
    }

    fn check(&self, total: f64) -> Result<()> {
        if self.points.is_empty() {
            return Err(Error::param("points", "needs at least one point"));
        }
        let mut prev = f64::NEG_INFINITY;
        for (at, lr) in &self.points {
            at.check("points", total)?;
            check_lr("points", *lr)?;
            let e = at.epochs(total);
            if e <= prev {
                return Err(Error::param(
                    "points",
                    format!("must be strictly increasing, got {at} after epoch {prev}"),
                ));
            }
            prev = e;
        }
        Ok(())
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        let xs = self.points.iter().map(|(at, lr)| (at.epochs(total), *lr));
        let mut prev: Option<(f64, f64)> = None;
        for (x, y) in xs {
            if t <= x {
                return match prev {
                    // Exactly at a point, or before the first: that point's value.
                    Some((x0, y0)) if t > x0 && t < x => y0 + (y - y0) * ((t - x0) / (x - x0)),
                    _ => y,
                };
            }
            prev = Some((x, y));
        }
        prev.map_or(0.0, |(_, y)| y)
    }
}
