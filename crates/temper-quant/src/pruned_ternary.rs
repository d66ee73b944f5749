//! Pruning ternary quantization (after Liu, Chen, Fu, Ma and Liu 2021, "Pruning Ternary
//! Quantization"): ternary weights whose zeros come from pruning the L2-normalized weights.
//!
//! Our reading of the method, step by step (the paper's code is not public; each choice is
//! stated so it can be checked):
//! 1. **L2 normalization**: each output channel's weights `w_c` become `u_c = w_c / |w_c|_2`
//!    (an all-zero channel stays zero), so channels of different magnitude compete on equal
//!    terms for the pruning threshold.
//! 2. **Pruning**: the fraction `prune` of the layer's weights with the smallest `|u|` are set
//!    to zero (one threshold over the whole layer: the `prune`-quantile of `|u|`; ties at the
//!    threshold are pruned too).
//! 3. **Ternary projection**: the kept weights become `sign(w)`, and each group (the tensor,
//!    or an output channel with [`Granularity::PerChannel`]) gets the scale
//!    `a = <w, t> / <t, t>`, the mean magnitude of its kept weights: the L2 projection of the
//!    float weights onto their ternary pattern `t`.
//! 4. **Training** (in [`crate::qat`]): the forward pass uses `a * t`, the backward pass hands
//!    the gradient straight through to the float weights (the straight-through estimator,
//!    [`crate::ste`]), and the optimizer's weight decay pulls pruned weights towards zero so
//!    the float weights drift towards their ternary values. The paper's refinement of the
//!    estimator is not reproduced: this is the plain straight-through estimator.
//!
//! The codes and scales are those of [`WeightScheme::Ternary`], so a pruned ternary layer is
//! packed and loaded as any ternary layer. Unlike TWN ([`crate::ternary`], threshold
//! `0.7 * mean|w|` per group), the sparsity is chosen directly.

use crate::error::param;
use crate::{Granularity, QTensor, Result, WeightScheme};

/// The default fraction of weights pruned: half, near TWN's 42% for Gaussian weights.
pub const DEFAULT_PRUNE: f64 = 0.5;

/// Pruned ternary quantization of a weight of `shape` (row-major values `w`, output channels
/// first), pruning the fraction `prune` in `[0, 1)` of its weights.
///
/// ```
/// use temper_quant::{pruned_ternary, Granularity};
/// // Two channels a hundred times apart in magnitude: after normalization the small one keeps
/// // two weights, the large one one (half of the six are pruned).
/// let w = [4.0, -1.0, 0.5, 0.04, -0.02, 0.001];
/// let q = pruned_ternary::quantize(&w, &[2, 3], 0.5, Granularity::PerChannel)?;
/// assert_eq!(q.codes(), &[1, 0, 0, 1, -1, 0]);
/// assert_eq!(q.scale()[0], 4.0);
/// assert!((q.scale()[1] - 0.03).abs() < 1e-7);
/// # Ok::<(), temper_quant::Error>(())
/// ```
pub fn quantize(w: &[f32], shape: &[usize], prune: f64, granularity: Granularity) -> Result<QTensor> {
    check_prune(prune)?;
    let n = w.len();
    let rows = shape.first().copied().unwrap_or(1).max(1);
    let per_row = n / rows;
    if per_row * rows != n || per_row == 0 {
        return Err(param("shape", format!("{shape:?} does not hold {n} weights")));
    }
    // 1. L2 normalization per output channel.
    let mut u = Vec::with_capacity(n);
    for row in w.chunks(per_row) {
        let norm = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        u.extend(row.iter().map(|v| (f64::from(*v) * inv).abs()));
    }
    // 2. One threshold for the layer: the k-th smallest normalized magnitude.
    let k = (prune * n as f64).floor() as usize;
    let threshold = if k == 0 {
        0.0
    } else {
        let mut sorted = u.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[k - 1]
    };
    let codes: Vec<i16> = w
        .iter()
        .zip(&u)
        .map(|(v, m)| {
            if *m > threshold && *m > 0.0 {
                if *v > 0.0 {
                    1
                } else {
                    -1
                }
            } else {
                0
            }
        })
        .collect();
    // 3. The L2 projection onto each group's ternary pattern.
    let (_, per_group) = granularity.groups(shape);
    let scale: Vec<f32> = w
        .chunks(per_group.max(1))
        .zip(codes.chunks(per_group.max(1)))
        .map(|(g, c)| crate::ternary::kept_scale(g.iter().zip(c).filter(|(_, c)| **c != 0).map(|(v, _)| v)))
        .collect();
    QTensor::new(
        WeightScheme::Ternary,
        granularity,
        shape.to_vec(),
        codes,
        scale,
        vec![],
    )
}

/// Validates a pruning fraction: in `[0, 1)`.
pub fn check_prune(prune: f64) -> Result<()> {
    if prune.is_finite() && (0.0..1.0).contains(&prune) {
        Ok(())
    } else {
        Err(param(
            "prune",
            format!("{prune} is not a fraction in [0, 1) of the weights to set to zero"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pruned_fraction_is_the_one_asked_for() -> Result<()> {
        let w: Vec<f32> = (0..200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0 + 0.01)
            .collect();
        for prune in [0.0, 0.25, 0.5, 0.9] {
            let q = quantize(&w, &[10, 20], prune, Granularity::PerTensor)?;
            let zeros = q.codes().iter().filter(|c| **c == 0).count();
            assert_eq!(zeros, (prune * 200.0) as usize, "prune {prune}");
            // Kept weights keep their sign.
            for (c, v) in q.codes().iter().zip(&w) {
                assert!(*c == 0 || (*c > 0) == (*v > 0.0));
            }
        }
        Ok(())
    }

    #[test]
    fn the_scale_is_the_l2_projection_onto_the_pattern() -> Result<()> {
        let w = [0.9f32, -0.7, 0.1, -0.05, 0.3, -0.2, 0.01, 0.6];
        let q = quantize(&w, &[2, 4], 0.5, Granularity::PerChannel)?;
        let d = q.dequantize();
        for (row, qrow) in w.chunks(4).zip(d.chunks(4)) {
            // The residual is orthogonal to the ternary pattern: <w - a t, t> = 0.
            let dot: f32 = row.iter().zip(qrow).map(|(a, b)| (a - b) * b).sum();
            assert!(dot.abs() < 1e-6, "{dot}");
        }
        assert!(quantize(&[0.0; 4], &[1, 4], 0.5, Granularity::PerTensor)?
            .dequantize()
            .iter()
            .all(|v| *v == 0.0));
        for bad in [-0.1, 1.0, f64::NAN] {
            assert!(
                quantize(&w, &[2, 4], bad, Granularity::PerTensor).is_err(),
                "{bad}"
            );
        }
        Ok(())
    }
}
