//! Round to nearest: each weight independently onto its scheme's grid.

use crate::{binary, ternary, uniform, Granularity, QTensor, Result, WeightScheme};

/// Quantizes a weight of `shape` (row-major values `w`) onto `scheme`'s grid, each weight on
/// its own: uniform rounding, TWN ternarization or sign binarization.
pub fn quantize(
    w: &[f32],
    shape: &[usize],
    scheme: WeightScheme,
    granularity: Granularity,
) -> Result<QTensor> {
    match scheme {
        WeightScheme::Uniform { bits, symmetric } => {
            uniform::quantize(w, shape, bits, symmetric, granularity)
        }
        WeightScheme::Ternary => ternary::quantize(w, shape, granularity),
        WeightScheme::Binary => binary::quantize(w, shape, granularity),
    }
}
