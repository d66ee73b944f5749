//! Tensor helpers the attack loops share, so that their per-sample bookkeeping (which sample
//! improved, which step size halves, which point is kept) stays on the device: an iteration
//! reads nothing back to the host.

use crate::norm::expand;
use crate::Result;
use candle_core::{DType, Tensor};

/// Per sample: rows of `a` where `mask` (`(N,)`, u8) is 1, rows of `b` elsewhere; `a` and `b`
/// of the same shape, any rank.
pub(crate) fn pick_rows(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let m = expand(mask, a.rank())?.broadcast_as(a.shape())?;
    Ok(m.where_cond(a, b)?)
}

/// Per sample: rows of `a` where `take` (one flag per row, on the host) is set, rows of `b`
/// elsewhere; one pass (`where_cond` on a broadcast mask), none when every flag agrees.
pub(crate) fn choose_rows(take: &[bool], a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if take.iter().all(|&t| t) {
        return Ok(a.clone());
    }
    if !take.iter().any(|&t| t) {
        return Ok(b.clone());
    }
    let mask: Vec<u8> = take.iter().map(|&t| u8::from(t)).collect();
    pick_rows(&Tensor::from_vec(mask, take.len(), a.device())?, a, b)
}

/// Inclusive cumulative sum along the last dimension of an `(M, D)` tensor, by `log2 D`
/// shifted additions (candle's `cumsum` multiplies by a `D x D` triangular matrix, which does
/// not fit for large images).
pub(crate) fn cumsum_rows(t: &Tensor) -> Result<Tensor> {
    let d = t.dim(1)?;
    let mut out = t.contiguous()?;
    let mut s = 1;
    while s < d {
        let shifted = out.narrow(1, 0, d - s)?.pad_with_zeros(1, s, 0)?;
        out = (out + shifted)?;
        s *= 2;
    }
    Ok(out)
}

/// Per row `i` of an `(M, D)` tensor, its column `idx[i]` (`idx`: `(M,)` u32): `(M,)`.
pub(crate) fn take_cols(t: &Tensor, idx: &Tensor) -> Result<Tensor> {
    Ok(t.contiguous()?
        .gather(&idx.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?)
}

/// `a AND b` for u8 masks.
pub(crate) fn and(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((a * b)?)
}

/// `a OR b` for u8 masks.
pub(crate) fn or(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.maximum(b)?)
}

/// `NOT a` for a u8 mask.
pub(crate) fn not(a: &Tensor) -> Result<Tensor> {
    Ok(a.eq(0u8)?)
}

/// A u8 mask as 0./1. f32.
pub(crate) fn float(a: &Tensor) -> Result<Tensor> {
    Ok(a.to_dtype(DType::F32)?)
}

/// Per sample: the prediction differs from (untargeted) or equals (targeted) `labels`, as a
/// u8 mask `(N,)`.
pub(crate) fn reached(logits: &Tensor, labels: &Tensor, targeted: bool) -> Result<Tensor> {
    let pred = logits.argmax(candle_core::D::Minus1)?;
    Ok(if targeted {
        pred.eq(labels)?
    } else {
        pred.ne(labels)?
    })
}

/// A u8 mask `(N,)` as booleans (one read back to the host).
pub(crate) fn to_bools(mask: &Tensor) -> Result<Vec<bool>> {
    Ok(mask
        .to_dtype(DType::U8)?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|v| v != 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cumulative_sums_match_a_running_total() -> Result<()> {
        for d in [1usize, 2, 3, 7, 64, 100] {
            let v: Vec<f32> = (0..2 * d).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
            let t = Tensor::from_vec(v.clone(), (2, d), &Device::Cpu)?;
            let got = cumsum_rows(&t)?.to_vec2::<f32>()?;
            for (r, row) in got.iter().enumerate() {
                let mut acc = 0f32;
                for (j, g) in row.iter().enumerate() {
                    acc += v[r * d + j];
                    assert!((g - acc).abs() < 1e-4, "d {d} row {r} col {j}: {g} vs {acc}");
                }
            }
        }
        Ok(())
    }
}
