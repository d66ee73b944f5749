//! ReLU and ReLU6 for the CPU as one custom op each way.
//!
//! candle's ReLU backward builds a zero tensor, a comparison mask, its f32 conversion and a
//! product: four passes and four allocations per activation. Here the forward is one pass and
//! the backward one pass (`dy` where the input lies strictly inside the linear range).
//!
//! The gradient at the kinks follows PyTorch, not candle: ReLU passes the gradient where
//! `x > 0` (`threshold_backward`), ReLU6 where `0 < x < 6` (`hardtanh_backward`); candle's
//! ReLU passes it at `x = 0` too. The two differ only on inputs exactly at a kink.

use super::fast_cpu::with_data;
use crate::Result;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling costs nothing next to the work.
const GRAIN: usize = 1 << 14;

/// Whether the fast path handles this tensor: CPU f32, any shape.
pub(super) fn covers(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `min(max(x, 0), max)` (ReLU when `max` is `None`), differentiable.
pub(super) fn clamp(x: &Tensor, max: Option<f32>) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(ClampOp { max })?)
}

/// `min(max(v, 0), hi)` with NaN kept, as in PyTorch. Branch-free selects (`|`, not `||`),
/// so the loops calling it vectorise; `v > hi` is false for NaN.
#[inline]
pub(super) fn clamp_value(v: f32, hi: f32) -> f32 {
    let pos = if v > hi { hi } else { v };
    if (v > 0.0) | v.is_nan() {
        pos
    } else {
        0.0
    }
}

/// The gradient through [`clamp_value`]: `dy` where `0 < x < hi`, zero elsewhere (PyTorch's
/// rule at the kinks), in parallel. `&` rather than `&&`: no branch, so the loop vectorises.
pub(super) fn clamp_grad(x: &[f32], dy: &[f32], hi: f32) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(GRAIN)
        .zip(x.par_chunks(GRAIN).zip(dy.par_chunks(GRAIN)))
        .for_each(|(out, (xs, ds))| {
            for ((o, &v), &d) in out.iter_mut().zip(xs).zip(ds) {
                *o = if (v > 0.0) & (v < hi) { d } else { 0.0 };
            }
        });
    dx
}

struct ClampOp {
    max: Option<f32>,
}

/// The elements of a contiguous CPU f32 storage.
fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("fast-cpu activation: input is not contiguous"))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

impl CustomOp1 for ClampOp {
    fn name(&self) -> &'static str {
        match self.max {
            None => "temper-fast-cpu-relu",
            Some(_) => "temper-fast-cpu-relu6",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut y = vec![0f32; x.len()];
        let hi = self.max.unwrap_or(f32::INFINITY);
        y.par_chunks_mut(GRAIN)
            .zip(x.par_chunks(GRAIN))
            .for_each(|(out, inp)| {
                for (o, &v) in out.iter_mut().zip(inp) {
                    *o = clamp_value(v, hi);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let x = arg.detach().contiguous()?;
        let dy = grad_res.detach().contiguous()?;
        let hi = self.max.unwrap_or(f32::INFINITY);
        let dx = with_data(&x, |xv| with_data(&dy, |dyv| Ok(clamp_grad(xv, dyv, hi))))?;
        Ok(Some(Tensor::from_vec(dx, x.shape().clone(), &Device::Cpu)?))
    }
}
