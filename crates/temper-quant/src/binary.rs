//! Binary weights: sign and mean-magnitude scale (BinaryConnect, XNOR-Net).

use crate::{Granularity, QTensor, Result, WeightScheme};

/// Binary quantization: `sign(w) * mean|w|` per group (zero maps to `+a`).
///
/// ```
/// use temper_quant::{binary, Granularity};
/// let q = binary::quantize(&[0.5, -0.1, 0.0, -0.2], &[1, 4], Granularity::PerTensor)?;
/// assert_eq!(q.codes(), &[1, -1, 1, -1]);
/// assert!((q.scale()[0] - 0.2).abs() < 1e-6);
/// # Ok::<(), temper_quant::Error>(())
/// ```
pub fn quantize(w: &[f32], shape: &[usize], granularity: Granularity) -> Result<QTensor> {
    let (_, per) = granularity.groups(shape);
    let mut codes = Vec::with_capacity(w.len());
    let mut scale = Vec::new();
    for g in w.chunks(per.max(1)) {
        let a = g.iter().map(|v| v.abs()).sum::<f32>() / g.len().max(1) as f32;
        codes.extend(g.iter().map(|&v| if v >= 0.0 { 1 } else { -1 }));
        scale.push(if a > 0.0 && a.is_finite() { a } else { 1.0 });
    }
    QTensor::new(
        WeightScheme::Binary,
        granularity,
        shape.to_vec(),
        codes,
        scale,
        vec![],
    )
}
