//! Ternary weights (Li and Liu 2016, "Ternary weight networks").

use crate::{Granularity, QTensor, Result, WeightScheme};

/// The TWN threshold as a fraction of the mean magnitude.
pub const THRESHOLD: f32 = 0.7;

/// The TWN threshold `0.7 * mean|w|` and scale (the mean magnitude of the weights above the
/// threshold) of one group. A group with no weight above the threshold (all zero) gets scale 1.
pub fn threshold_and_scale(w: &[f32]) -> (f32, f32) {
    let mean = w.iter().map(|v| v.abs()).sum::<f32>() / w.len().max(1) as f32;
    let t = THRESHOLD * mean;
    (t, kept_scale(w.iter().filter(|v| v.abs() > t)))
}

/// The scale of a ternary group: the mean magnitude of its kept (non-zero) weights, which is
/// the L2 projection of the weights onto their ternary pattern; 1 for a group with none.
pub(crate) fn kept_scale<'a>(kept: impl Iterator<Item = &'a f32>) -> f32 {
    let (sum, n) = kept.fold((0f32, 0usize), |(s, n), v| (s + v.abs(), n + 1));
    if n > 0 && sum > 0.0 {
        sum / n as f32
    } else {
        1.0
    }
}

/// Ternary quantization: `sign(w) * a` where `|w| > 0.7 * mean|w|`, else 0, with `a` the mean
/// magnitude of the kept weights, per group.
///
/// ```
/// use temper_quant::{ternary, Granularity};
/// let q = ternary::quantize(&[0.9, -0.1, -0.8, 0.05], &[1, 4], Granularity::PerTensor)?;
/// assert_eq!(q.codes(), &[1, 0, -1, 0]);
/// assert!((q.scale()[0] - 0.85).abs() < 1e-6);
/// # Ok::<(), temper_quant::Error>(())
/// ```
pub fn quantize(w: &[f32], shape: &[usize], granularity: Granularity) -> Result<QTensor> {
    let (_, per) = granularity.groups(shape);
    let mut codes = Vec::with_capacity(w.len());
    let mut scale = Vec::new();
    for g in w.chunks(per.max(1)) {
        let (t, a) = threshold_and_scale(g);
        codes.extend(g.iter().map(|&v| {
            if v > t {
                1
            } else if v < -t {
                -1
            } else {
                0
            }
        }));
        scale.push(a);
    }
    QTensor::new(
        WeightScheme::Ternary,
        granularity,
        shape.to_vec(),
        codes,
        scale,
        vec![],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_scales_differ() -> Result<()> {
        let w = [1.0f32, -1.0, 0.1, 0.0, 0.02, -0.02, 0.001, 0.0];
        let q = quantize(&w, &[2, 4], Granularity::PerChannel)?;
        assert_eq!(q.codes(), &[1, -1, 0, 0, 1, -1, 0, 0]);
        assert!((q.scale()[0] - 1.0).abs() < 1e-6 && (q.scale()[1] - 0.02).abs() < 1e-6);
        let zeros = quantize(&[0.0; 4], &[1, 4], Granularity::PerChannel)?;
        assert!(zeros.dequantize().iter().all(|v| *v == 0.0));
        Ok(())
    }
}
