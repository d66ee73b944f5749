//! The straight-through estimator.
//!
//! Rounding is flat almost everywhere, so its true gradient is zero and an attack that
//! differentiates through a quantizer sees no signal: robust accuracy would look perfect
//! while the model is as fragile as before (gradient masking). The straight-through
//! estimator (Bengio et al. 2013) uses the quantized value forward and the identity backward.

use crate::Result;
use candle_core::Tensor;

/// Returns a tensor whose value is exactly `q` and whose gradient flows to `x` unchanged.
///
/// It is `(x - detach(x)) + detach(q)`: the first term is exactly zero forward and has
/// gradient identity, so, unlike the common `x + detach(q - x)`, the forward value is
/// bit for bit the quantized one.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let x = Var::new(&[0.26f32, -1.4], &Device::Cpu)?;
/// let q = x.as_tensor().detach().round()?;
/// let y = temper_quant::ste::straight_through(x.as_tensor(), &q)?;
/// assert_eq!(y.to_vec1::<f32>()?, vec![0.0, -1.0]);
/// let g = (y * 3.0)?.sum_all()?.backward()?;
/// assert_eq!(g.get(x.as_tensor()).unwrap().to_vec1::<f32>()?, vec![3.0, 3.0]);
/// # Ok::<(), temper_quant::Error>(())
/// ```
pub fn straight_through(x: &Tensor, q: &Tensor) -> Result<Tensor> {
    Ok(((x - x.detach())? + q.detach())?)
}
