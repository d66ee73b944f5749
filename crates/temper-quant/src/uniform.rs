//! Uniform quantization: symmetric or asymmetric grids of 2 to 8 bits, rounding to nearest.

use crate::{Granularity, QTensor, Result, WeightScheme};

/// The step and zero point of a uniform grid over `[lo, hi]` (which must contain 0) with
/// codes `0..=qmax`: the asymmetric grid.
pub fn asymmetric_grid(lo: f32, hi: f32, qmax: i16) -> (f32, i16) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / f32::from(qmax);
    if !(scale.is_finite() && scale > 0.0) {
        // An all-zero group: any positive scale represents it exactly.
        return (1.0, 0);
    }
    let zp = (-lo / scale).round().clamp(0.0, f32::from(qmax)) as i16;
    (scale, zp)
}

/// The step of a symmetric grid with codes `-k..=k` whose largest level is `max_abs`.
pub fn symmetric_step(max_abs: f32, k: i16) -> f32 {
    let s = max_abs / f32::from(k);
    if s.is_finite() && s > 0.0 {
        s
    } else {
        1.0
    }
}

/// Rounds `v / step` to the nearest code in `lo..=hi`.
pub fn round_code(v: f32, step: f32, lo: i16, hi: i16) -> i16 {
    (v / step).round().clamp(f32::from(lo), f32::from(hi)) as i16
}

/// Round-to-nearest uniform quantization of a weight of `shape` (row-major values `w`):
/// symmetric grids take their step from the group's largest magnitude, asymmetric ones from
/// its minimum and maximum (widened to contain 0, so zero stays exact).
///
/// ```
/// use temper_quant::{uniform, Granularity};
/// let q = uniform::quantize(&[0.7, -0.35, 0.1, 0.0], &[2, 2], 4, true, Granularity::PerTensor)?;
/// assert_eq!(q.codes(), &[7, -4, 1, 0]); // step 0.1: -3.5 rounds away from zero
/// # Ok::<(), temper_quant::Error>(())
/// ```
pub fn quantize(
    w: &[f32],
    shape: &[usize],
    bits: u8,
    symmetric: bool,
    granularity: Granularity,
) -> Result<QTensor> {
    let scheme = WeightScheme::Uniform { bits, symmetric }.check()?;
    let (lo, hi) = scheme.code_range();
    let (_, per) = granularity.groups(shape);
    let mut codes = Vec::with_capacity(w.len());
    let mut scale = Vec::new();
    let mut zero_point = Vec::new();
    for g in w.chunks(per.max(1)) {
        if symmetric {
            let m = g.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = symmetric_step(m, hi);
            codes.extend(g.iter().map(|&v| round_code(v, s, lo, hi)));
            scale.push(s);
        } else {
            let (mn, mx) = g.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
            let (s, z) = asymmetric_grid(mn, mx, hi);
            codes.extend(
                g.iter()
                    .map(|&v| ((v / s).round() + f32::from(z)).clamp(0.0, f32::from(hi)) as i16),
            );
            scale.push(s);
            zero_point.push(z);
        }
    }
    QTensor::new(scheme, granularity, shape.to_vec(), codes, scale, zero_point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn error_is_at_most_half_a_step(
            w in proptest::collection::vec(-3f32..3.0, 12),
            bits in 2u8..=8,
            symmetric: bool,
            per_channel: bool,
        ) {
            let g = if per_channel { Granularity::PerChannel } else { Granularity::PerTensor };
            let q = quantize(&w, &[3, 4], bits, symmetric, g).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let d = q.dequantize();
            let (_, per) = g.groups(&[3, 4]);
            for (i, (a, b)) in w.iter().zip(&d).enumerate() {
                let s = q.scale()[i / per];
                prop_assert!((a - b).abs() <= 0.5 * s * (1.0 + 1e-5) + 1e-7, "{a} -> {b}, step {s}");
            }
        }
    }

    #[test]
    fn zero_stays_exact_and_extremes_are_levels() -> Result<()> {
        let w = [-0.2f32, 0.0, 0.9, 0.3];
        let q = quantize(&w, &[1, 4], 3, false, Granularity::PerTensor)?;
        let d = q.dequantize();
        assert_eq!(d[1], 0.0);
        assert!((d[2] - 0.9).abs() < 0.08 && (d[0] + 0.2).abs() < 0.08, "{d:?}");
        let q = quantize(&w, &[1, 4], 8, true, Granularity::PerTensor)?;
        assert!((q.dequantize()[2] - 0.9).abs() < 1e-6);
        let zeros = quantize(&[0.0; 4], &[2, 2], 4, false, Granularity::PerChannel)?;
        assert!(zeros.dequantize().iter().all(|v| *v == 0.0));
        Ok(())
    }

    #[test]
    fn per_channel_scales_follow_each_row() -> Result<()> {
        let w = [1.0f32, -0.5, 0.01, 0.02];
        let q = quantize(&w, &[2, 2], 8, true, Granularity::PerChannel)?;
        assert_eq!(q.scale().len(), 2);
        let d = q.dequantize();
        // The small row keeps its resolution with its own scale.
        assert!((d[2] - 0.01).abs() < 1e-4 && (d[3] - 0.02).abs() < 1e-6, "{d:?}");
        Ok(())
    }
}
