//! Calibration of activation grids on sample images: min-max, percentile or MSE-optimal
//! clipping of each layer's input range.

use crate::act::ActQuant;
use crate::error::param;
use crate::Result;
use candle_core::Tensor;

/// How an activation range is chosen from calibration data.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActCalibration {
    /// The observed minimum and maximum.
    MinMax,
    /// The given percentile of the values (e.g. 99.99) and its mirror for the minimum:
    /// outliers are clipped.
    Percentile {
        /// In percent, in `(50, 100]`.
        percent: f64,
    },
    /// The clipping range, a fraction of the min-max range, that minimises the mean squared
    /// rounding-and-clipping error over the sampled values.
    Mse,
}

impl ActCalibration {
    /// Parses `minmax`, `percentile` (99.99), `percentile:99.9` or `mse`; the result is checked.
    ///
    /// ```
    /// use temper_quant::ActCalibration;
    /// assert_eq!(ActCalibration::parse("percentile:99.9")?, ActCalibration::Percentile { percent: 99.9 });
    /// assert!(ActCalibration::parse("percentile:20").is_err());
    /// # Ok::<(), temper_quant::Error>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let c = match t.split_once(':') {
            None if t == "minmax" || t == "min-max" => ActCalibration::MinMax,
            None if t == "mse" => ActCalibration::Mse,
            None if t == "percentile" => ActCalibration::Percentile { percent: 99.99 },
            Some(("percentile", p)) => ActCalibration::Percentile {
                percent: p
                    .trim()
                    .parse()
                    .map_err(|_| param("act-calib", format!("'{p}' is not a percentage")))?,
            },
            _ => {
                return Err(param(
                    "act-calib",
                    format!("'{s}' is not one of minmax, percentile[:P], mse"),
                ))
            }
        };
        c.check()
    }

    /// Validates the percentile.
    pub fn check(self) -> Result<Self> {
        if let ActCalibration::Percentile { percent } = self {
            if !(percent > 50.0 && percent <= 100.0) {
                return Err(param(
                    "act-calib",
                    format!("percentile {percent} is not in (50, 100]"),
                ));
            }
        }
        Ok(self)
    }
}

/// Most values sampled from one batch of one layer's input.
const SAMPLES_PER_BATCH: usize = 1 << 16;

/// What calibration keeps about one layer's input: the exact extremes and an evenly strided
/// sample of the values.
#[derive(Debug, Clone)]
pub(crate) struct RangeStats {
    min: f32,
    max: f32,
    samples: Vec<f32>,
}

impl Default for RangeStats {
    fn default() -> Self {
        RangeStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            samples: Vec::new(),
        }
    }
}

impl RangeStats {
    /// Adds a batch of activations.
    pub fn observe(&mut self, x: &Tensor) -> Result<()> {
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let stride = v.len().div_ceil(SAMPLES_PER_BATCH).max(1);
        for &a in &v {
            self.min = self.min.min(a);
            self.max = self.max.max(a);
        }
        self.samples.extend(v.iter().step_by(stride));
        Ok(())
    }

    /// The grid for these values.
    pub fn grid(&mut self, method: ActCalibration, bits: u8) -> ActQuant {
        if self.samples.is_empty() {
            return ActQuant::from_range(0.0, 0.0, bits);
        }
        match method {
            ActCalibration::MinMax => ActQuant::from_range(self.min, self.max, bits),
            ActCalibration::Percentile { percent } => {
                self.samples.sort_by(f32::total_cmp);
                let n = self.samples.len();
                let at = |q: f64| self.samples[((q * (n - 1) as f64).round() as usize).min(n - 1)];
                let hi = at(percent / 100.0);
                let lo = if self.min < 0.0 {
                    at(1.0 - percent / 100.0)
                } else {
                    0.0
                };
                ActQuant::from_range(lo, hi, bits)
            }
            ActCalibration::Mse => {
                let mut best = (f64::INFINITY, ActQuant::from_range(self.min, self.max, bits));
                for k in 0..=30 {
                    let f = 0.25 + 0.025 * k as f32;
                    let q = ActQuant::from_range(self.min * f, self.max * f, bits);
                    let err: f64 = self
                        .samples
                        .iter()
                        .map(|&v| f64::from(q.round(v) - v).powi(2))
                        .sum();
                    if err < best.0 {
                        best = (err, q);
                    }
                }
                best.1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_methods_tighten_the_range_around_outliers() -> Result<()> {
        // Mostly small values with one huge outlier.
        let mut v: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 100.0).collect();
        v.push(100.0);
        let mut s = RangeStats::default();
        s.observe(&Tensor::from_vec(v, 10_001, &Device::Cpu)?)?;
        let minmax = s.grid(ActCalibration::MinMax, 8).range().1;
        let pct = s.grid(ActCalibration::Percentile { percent: 99.9 }, 8).range().1;
        assert!((minmax - 100.0).abs() < 0.5, "{minmax}");
        assert!(pct < 1.5, "{pct}");
        Ok(())
    }

    #[test]
    fn mse_clips_a_heavy_tail_at_low_bits() -> Result<()> {
        // Exponentially distributed values: at 4 bits the best range is well inside the max.
        let v: Vec<f32> = (1..20_000).map(|i| -(i as f32 / 20_000.0).ln()).collect();
        let mut s = RangeStats::default();
        s.observe(&Tensor::from_vec(v.clone(), v.len(), &Device::Cpu)?)?;
        let err = |q: ActQuant| v.iter().map(|&a| f64::from(q.round(a) - a).powi(2)).sum::<f64>();
        let (mm, mse) = (s.grid(ActCalibration::MinMax, 4), s.grid(ActCalibration::Mse, 4));
        assert!(
            mse.range().1 < 0.8 * mm.range().1,
            "{:?} vs {:?}",
            mse.range(),
            mm.range()
        );
        assert!(err(mse) < err(mm));
        Ok(())
    }
}
