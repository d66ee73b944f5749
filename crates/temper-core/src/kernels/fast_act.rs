//! ReLU, ReLU6 and the per-channel bias add for the CPU as one custom op each way.
//!
//! candle's ReLU backward builds a zero tensor, a comparison mask, its f32 conversion and a
//! product: four passes and four allocations per activation. Here the forward is one pass and
//! the backward one pass (`dy` where the input lies strictly inside the linear range).
//!
//! The gradient at the kinks follows PyTorch, not candle: ReLU passes the gradient where
//! `x > 0` (`threshold_backward`), ReLU6 where `0 < x < 6` (`hardtanh_backward`); candle's
//! ReLU passes it at `x = 0` too. The two differ only on inputs exactly at a kink.

use super::fast_bn::{channel_sums, for_planes};
use super::fast_cpu::{lane_sum, simd, with_data};
use crate::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor};
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
            simd(|| {
                for ((o, &v), &d) in out.iter_mut().zip(xs).zip(ds) {
                    *o = if (v > 0.0) & (v < hi) { d } else { 0.0 };
                }
            })
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
                simd(|| {
                    for (o, &v) in out.iter_mut().zip(inp) {
                        *o = clamp_value(v, hi);
                    }
                })
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

/// `y + bias`, with `bias` of `C = y.dim(1)` elements broadcast along dimension 1 of `y`
/// (rank 2 or more: a linear layer's `(N, C)`, a convolution's `(N, C, H, W)`),
/// differentiable in both. Whether the fast path handles it: see [`covers_bias`].
pub(super) fn add_bias(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(y.contiguous()?.apply_op2(&bias.contiguous()?, BiasOp)?)
}

/// Whether [`add_bias`] handles `y` and `bias`: both CPU f32, `y` of rank 2 or more and
/// `bias` with one element per entry of `y`'s dimension 1.
pub(super) fn covers_bias(y: &Tensor, bias: &Tensor) -> bool {
    covers(y) && covers(bias) && y.rank() >= 2 && bias.elem_count() == y.dims()[1]
}

/// `(N, C, L)`: the outer count, the channels and the elements per channel plane of `dims`.
fn bias_dims(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

struct BiasOp;

impl CustomOp2 for BiasOp {
    fn name(&self) -> &'static str {
        "temper-fast-cpu-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, b) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if l1.dims().len() < 2 || b.len() != l1.dims()[1] {
            candle_core::bail!("fast-cpu bias: {:?} does not match {:?}", l2.dims(), l1.dims())
        }
        let (_, c, l) = bias_dims(l1.dims());
        let mut out = vec![0f32; y.len()];
        for_planes(&mut out, l, |plane, o| {
            let bc = b[plane % c];
            o.iter_mut()
                .zip(&y[plane * l..][..l])
                .for_each(|(o, &v)| *o = v + bc);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The gradient of `y` is `dY` itself.
        let dy_in = y.track_op().then(|| grad_res.clone());
        if !bias.track_op() {
            return Ok((dy_in, None));
        }
        let (n, c, l) = bias_dims(y.dims());
        let dy = grad_res.detach().contiguous()?;
        // BatchNorm's per-channel sums (of dY alone).
        let db: Vec<f32> = with_data(&dy, |dy| {
            Ok(channel_sums(n, c, l, |_, at| {
                let p = &dy[at..at + l];
                lane_sum(p, p, |d, _| f64::from(d))
            }))
        })?
        .into_iter()
        .map(|s| s as f32)
        .collect();
        Ok((
            dy_in,
            Some(Tensor::from_vec(db, bias.shape().clone(), &Device::Cpu)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// Values and both gradients of `add_bias` against candle's broadcast, on planes of one
    /// element (a linear layer), of a few and of more than a task's worth of elements.
    #[test]
    fn bias_matches_the_broadcast_in_value_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for dims in [
            vec![5, 3],
            vec![2, 4, 3, 5],
            vec![3, 2, 7],
            vec![2, 3, 130, 130],
            vec![1, 1, 1, 1],
        ] {
            let (c, n) = (dims[1], dims.iter().product::<usize>());
            let y = Var::from_tensor(&Tensor::randn(0f32, 1.0, dims.clone(), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, c, &dev)?)?;
            let r = Tensor::randn(0f32, 1.0, dims.clone(), &dev)?;
            assert!(covers_bias(y.as_tensor(), b.as_tensor()));
            let mut shape = vec![1; dims.len()];
            shape[1] = c;
            let want = y.as_tensor().broadcast_add(&b.as_tensor().reshape(shape)?)?;
            let got = add_bias(y.as_tensor(), b.as_tensor())?;
            let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{dims:?}");
            let gw = (want * &r)?.sum_all()?.backward()?;
            let gg = (got * &r)?.sum_all()?.backward()?;
            for v in [&y, &b] {
                let (a, e) = (
                    gg.get(v.as_tensor()).expect("fast gradient"),
                    gw.get(v.as_tensor()).expect("reference gradient"),
                );
                let scale = e.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                let d = (a - e)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d <= 1e-5 * scale * (n as f32).sqrt(), "{dims:?}: {d}");
            }
        }
        // Only what tracks a gradient gets one.
        let y = Tensor::ones((2, 3, 4, 4), DType::F32, &dev)?;
        let b = Var::from_tensor(&Tensor::ones(3, DType::F32, &dev)?)?;
        let grads = add_bias(&y, b.as_tensor())?.sum_all()?.backward()?;
        assert!(grads.get(&y).is_none());
        let db: Vec<f32> = grads.get(b.as_tensor()).expect("bias gradient").to_vec1()?;
        assert_eq!(db, vec![32.0; 3]);
        // A bias of the wrong length is not covered (and the op refuses it).
        let short = Tensor::ones(2, DType::F32, &dev)?;
        assert!(!covers_bias(&y, &short));
        assert!(add_bias(&y, &short).is_err());
        Ok(())
    }
}
