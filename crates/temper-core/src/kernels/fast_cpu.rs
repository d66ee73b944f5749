//! [`FastCpuKernels`]: an im2col + gemm convolution for the CPU with a backward of its own
//! (and the depthwise convolution of `fast_depthwise`, the fused BatchNorm of `fast_bn` and
//! the activations of `fast_act`).
//!
//! candle's CPU convolution backward always computes both gradients, and its input gradient
//! goes through a direct transposed convolution with one dot product per output element. Here
//! the convolution is a candle [`CustomOp2`] whose backward is two matrix products over the
//! same unfolded ("im2col") layout, and which skips each gradient whose tensor does not track
//! gradients: attacks pass detached weights and get the input gradient only, and the first
//! layer of a training step gets the weight gradient only.
//!
//! Layout. For a chunk of `nb` images, the unfolded input is one `(K, nb * L)` matrix with
//! `K = C * kh * kw` rows (input channel, kernel row, kernel column) and `nb * L` columns
//! (image, output row, output column). Every product is then a single large gemm (candle's
//! own, which runs on its thread pool), on chunks of images small enough to stay in cache:
//!
//! - forward: `Y (O, nb L) = W (O, K) @ cols (K, nb L)`, then permuted to NCHW;
//! - input gradient: `dcols (K, nb L) = W^T @ dY`, folded back by a scatter-add ("col2im");
//! - weight gradient: `dW (O, K) = sum over chunks of dY (O, nb L) @ cols^T`.
//!
//! The backward returns tensors that do not themselves track gradients, so gradients of
//! gradients (double backward) are not supported through this op.

use super::{fast_act, fast_bn, fast_depthwise, BatchStats, CandleKernels, ConvCfg, Kernels, Precision};
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// Target size of one unfolded chunk, in f32 elements (4 MiB): small enough that the chunk is
/// still in cache when the gemm reads it. Measured on a 2-core machine, chunks of 4 MiB made
/// a 64-channel 3x3 layer's forward and backward 2-3 times faster than one 64 MiB chunk.
const COLS_TARGET: usize = 1 << 20;

/// Largest unfolded chunk, in f32 elements (64 MiB), so memory stays bounded for any batch.
const COLS_MAX: usize = 16 << 20;

/// Least work for one parallel task, in elements: late layers have planes of a few pixels,
/// and a task per plane would then cost more in scheduling than in arithmetic.
const MIN_TASK: usize = 1 << 13;

/// The least number of consecutive items of `unit` elements one parallel task takes, so that
/// every task does at least [`MIN_TASK`] elements of work (`with_min_len`).
pub(super) fn min_items(unit: usize) -> usize {
    (MIN_TASK / unit.max(1)).max(1)
}

/// Kernels with a fast CPU convolution (forward and backward); everything else, and every
/// case the fast path does not cover (dtypes other than f32, `groups > 1`, non-CPU devices),
/// is delegated to [`CandleKernels`].
///
/// This is the default on CPU (see [`default_kernels`](super::default_kernels)).
#[derive(Debug, Default, Clone, Copy)]
pub struct FastCpuKernels;

impl FastCpuKernels {
    /// The name [`Kernels::name`] returns, without a value at hand.
    pub const fn name_static(&self) -> &'static str {
        "fast-cpu"
    }

    /// Whether the fast path handles this convolution.
    fn covers(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> bool {
        x.device().is_cpu()
            && weight.device().is_cpu()
            && x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && cfg.groups == 1
            && cfg.stride >= 1
            && cfg.dilation >= 1
            && x.rank() == 4
            && weight.rank() == 4
    }
}

impl Kernels for FastCpuKernels {
    fn name(&self) -> &str {
        self.name_static()
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
        precision: Precision,
    ) -> Result<Tensor> {
        // bf16 runs as f32 products of bf16-rounded operands (see `Precision::operand`): the
        // exact bf16 arithmetic, at f32 speed until a native bf16 gemm is wired in.
        let (x, weight) = (&precision.operand(x)?, &precision.operand(weight)?);
        let y = if Self::covers(x, weight, cfg) {
            x.apply_op2(weight, Conv2dOp { cfg })?
        } else if fast_depthwise::covers(x, weight, cfg) {
            fast_depthwise::conv2d(x, weight, cfg)?
        } else {
            return CandleKernels.conv2d(x, weight, bias, cfg, Precision::F32);
        };
        super::add_channel_bias(y, bias)
    }

    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        if !fast_bn::covers(x, &[gamma, beta]) {
            return CandleKernels.batch_norm_train(x, gamma, beta, eps);
        }
        fast_bn::batch_norm_train(x, gamma, beta, eps)
    }

    fn batch_norm_eval(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        if !fast_bn::covers(x, &[mean, var, gamma, beta]) {
            return CandleKernels.batch_norm_eval(x, mean, var, gamma, beta, eps);
        }
        fast_bn::batch_norm_eval(x, mean, var, gamma, beta, eps)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        if !fast_act::covers(x) {
            return CandleKernels.relu(x);
        }
        fast_act::clamp(x, None)
    }

    fn relu6(&self, x: &Tensor) -> Result<Tensor> {
        if !fast_act::covers(x) {
            return CandleKernels.relu6(x);
        }
        fast_act::clamp(x, Some(6.0))
    }
}

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) dilation: usize,
}

impl Geometry {
    pub(super) fn new(x: &[usize], weight: &[usize], cfg: ConvCfg) -> candle_core::Result<Self> {
        let (&[n, c, h, w], &[o, ci, kh, kw]) = (x, weight) else {
            candle_core::bail!("fast-cpu conv2d: expected 4-D input and weight, got {x:?} and {weight:?}")
        };
        if ci != c {
            candle_core::bail!(
                "fast-cpu conv2d: input {x:?} has {c} channels, weight {weight:?} expects {ci}"
            )
        }
        let out = |size: usize, k: usize| {
            let padded = size + 2 * cfg.padding;
            let span = cfg.dilation * (k - 1) + 1;
            (k > 0 && padded >= span).then(|| (padded - span) / cfg.stride + 1)
        };
        let (Some(oh), Some(ow)) = (out(h, kh), out(w, kw)) else {
            candle_core::bail!(
                "fast-cpu conv2d: kernel {kh}x{kw} (dilation {}) larger than padded input {h}x{w} (padding {})",
                cfg.dilation,
                cfg.padding
            )
        };
        Ok(Geometry {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            oh,
            ow,
            stride: cfg.stride,
            padding: cfg.padding,
            dilation: cfg.dilation,
        })
    }

    /// Rows of the unfolded input: `C * kh * kw`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions per image: `oh * ow`.
    pub(super) fn l(&self) -> usize {
        self.oh * self.ow
    }

    /// Images per chunk: about [`COLS_TARGET`] elements of unfolded input, but no fewer than
    /// the weight has (every chunk streams the whole weight through the gemm again, so a
    /// chunk much smaller than the weight would make that the cost), and at most
    /// [`COLS_MAX`].
    fn chunk(&self) -> usize {
        let budget = COLS_TARGET.max(self.o * self.k()).min(COLS_MAX);
        (budget / (self.k() * self.l()).max(1)).clamp(1, self.n.max(1))
    }

    /// The output indices `[lo, hi)` along one axis whose input index
    /// `r * stride + offset - padding` falls inside `0..size`.
    pub(super) fn valid(&self, out: usize, size: usize, offset: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.padding.saturating_sub(offset).div_ceil(s);
        let hi = (size + self.padding).saturating_sub(offset).div_ceil(s).min(out);
        (lo.min(hi), hi)
    }
}

/// Unfolds images `first..first + nb` of `x` (NCHW, contiguous) into a `(K, nb * L)` matrix.
fn im2col(x: &[f32], g: &Geometry, first: usize, nb: usize) -> Vec<f32> {
    let (l, hw, kk) = (g.l(), g.h * g.w, g.kh * g.kw);
    let mut cols = vec![0f32; g.k() * nb * l];
    if cols.is_empty() {
        return cols;
    }
    cols.par_chunks_mut(nb * l)
        .enumerate()
        .with_min_len(min_items(nb * l))
        .for_each(|(row, dst)| {
            let (c, i, j) = (row / kk, (row % kk) / g.kw, row % g.kw);
            let (r_lo, r_hi) = g.valid(g.oh, g.h, i * g.dilation);
            let (q_lo, q_hi) = g.valid(g.ow, g.w, j * g.dilation);
            for (b, seg) in dst.chunks_mut(l).enumerate() {
                let plane = &x[((first + b) * g.c + c) * hw..][..hw];
                for r in r_lo..r_hi {
                    let src = &plane[(r * g.stride + i * g.dilation - g.padding) * g.w..][..g.w];
                    let out = &mut seg[r * g.ow..][..g.ow];
                    let col0 = j * g.dilation; // Input column of q = 0, before removing padding.
                    if q_lo == q_hi {
                        continue;
                    }
                    if g.stride == 1 {
                        let start = q_lo + col0 - g.padding;
                        out[q_lo..q_hi].copy_from_slice(&src[start..start + (q_hi - q_lo)]);
                    } else {
                        for (q, o) in out.iter_mut().enumerate().take(q_hi).skip(q_lo) {
                            *o = src[q * g.stride + col0 - g.padding];
                        }
                    }
                }
            }
        });
    cols
}

/// Folds a `(K, nb * L)` matrix back onto images `0..nb` of `dx` (NCHW), adding every column
/// entry onto the input pixel it was unfolded from: the adjoint of [`im2col`].
fn col2im(cols: &[f32], g: &Geometry, nb: usize, dx: &mut [f32]) {
    let (l, hw) = (g.l(), g.h * g.w);
    if hw == 0 {
        return;
    }
    dx.par_chunks_mut(hw)
        .enumerate()
        .with_min_len(min_items(hw * g.kh * g.kw))
        .for_each(|(plane_idx, plane)| {
            let (b, c) = (plane_idx / g.c, plane_idx % g.c);
            for i in 0..g.kh {
                let (r_lo, r_hi) = g.valid(g.oh, g.h, i * g.dilation);
                for j in 0..g.kw {
                    let (q_lo, q_hi) = g.valid(g.ow, g.w, j * g.dilation);
                    let row = (c * g.kh + i) * g.kw + j;
                    let seg = &cols[(row * nb + b) * l..][..l];
                    let col0 = j * g.dilation;
                    if q_lo == q_hi {
                        continue;
                    }
                    for r in r_lo..r_hi {
                        let dst = &mut plane[(r * g.stride + i * g.dilation - g.padding) * g.w..][..g.w];
                        let src = &seg[r * g.ow..][..g.ow];
                        if g.stride == 1 {
                            let start = q_lo + col0 - g.padding;
                            let dst = &mut dst[start..start + (q_hi - q_lo)];
                            for (d, s) in dst.iter_mut().zip(&src[q_lo..q_hi]) {
                                *d += s;
                            }
                        } else {
                            for (q, s) in src.iter().enumerate().take(q_hi).skip(q_lo) {
                                dst[q * g.stride + col0 - g.padding] += s;
                            }
                        }
                    }
                }
            }
        });
}

/// The elements of a 4-D f32 storage in row-major order: borrowed when contiguous, gathered
/// otherwise.
pub(super) fn dense<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<Cow<'a, [f32]>> {
    let data = s.as_slice::<f32>()?;
    if let Some((a, b)) = l.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[a..b]));
    }
    let (&[d0, d1, d2, d3], &[s0, s1, s2, s3]) = (l.dims(), l.stride()) else {
        candle_core::bail!("fast-cpu conv2d: expected a 4-D layout, got {:?}", l.dims())
    };
    let mut out = Vec::with_capacity(d0 * d1 * d2 * d3);
    for a in 0..d0 {
        for b in 0..d1 {
            for c in 0..d2 {
                let base = l.start_offset() + a * s0 + b * s1 + c * s2;
                out.extend((0..d3).map(|d| data[base + d * s3]));
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// Runs `f` on the row-major elements of a CPU f32 tensor, without copying when it is
/// contiguous.
pub(super) fn with_data<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fast-cpu conv2d: tensor is not on the CPU")
    };
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg("fast-cpu conv2d: tensor is not contiguous"))?;
    f(&cpu.as_slice::<f32>()?[a..b])
}

/// The convolution as a candle custom op on `(x, weight)`.
struct Conv2dOp {
    cfg: ConvCfg,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "temper-fast-cpu-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.cfg)?;
        let x = dense(s1, l1)?;
        let w = dense(s2, l2)?;
        let (k, l) = (g.k(), g.l());
        let w = Tensor::from_slice(&w, (g.o, k), &Device::Cpu)?;
        let mut y = vec![0f32; g.n * g.o * l];
        let step = g.chunk();
        for first in (0..g.n).step_by(step) {
            let nb = step.min(g.n - first);
            let cols = Tensor::from_vec(im2col(&x, &g, first, nb), (k, nb * l), &Device::Cpu)?;
            let prod = w.matmul(&cols)?; // (O, nb * L)
            let dst = &mut y[first * g.o * l..(first + nb) * g.o * l];
            with_data(&prod, |prod| {
                // (O, nb, L) -> (nb, O, L): one output channel row of one image per task.
                if l > 0 {
                    dst.par_chunks_mut(l)
                        .enumerate()
                        .with_min_len(min_items(l))
                        .for_each(|(idx, out)| {
                            let (b, oc) = (idx / g.o, idx % g.o);
                            out.copy_from_slice(&prod[(oc * nb + b) * l..][..l]);
                        });
                }
                Ok(())
            })?;
        }
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // A tensor that tracks no gradient (a detached weight in an attack, the data at the
        // first layer) gets none: this is where the fast path saves half of the work.
        let (need_dx, need_dw) = (x.track_op(), weight.track_op());
        if !need_dx && !need_dw {
            return Ok((None, None));
        }
        let g = Geometry::new(x.dims(), weight.dims(), self.cfg)?;
        let (k, l) = (g.k(), g.l());
        let dev = Device::Cpu;
        let w = weight.detach().contiguous()?.reshape((g.o, k))?;
        let wt = w.t()?; // (K, O), a strided view: gemm takes it as is.
        let mut dx = if need_dx {
            vec![0f32; g.n * g.c * g.h * g.w]
        } else {
            Vec::new()
        };
        let mut dw: Option<Tensor> = None;
        let step = g.chunk();
        let x = if need_dw {
            x.detach().contiguous()?
        } else {
            x.detach()
        };
        with_data(&grad_res.detach(), |dy| {
            for first in (0..g.n).step_by(step) {
                let nb = step.min(g.n - first);
                // dY of the chunk as (O, nb * L): the columns in the unfolded order.
                let mut dyt = vec![0f32; g.o * nb * l];
                if l > 0 {
                    dyt.par_chunks_mut(l)
                        .enumerate()
                        .with_min_len(min_items(l))
                        .for_each(|(idx, out)| {
                            let (oc, b) = (idx / nb, idx % nb);
                            out.copy_from_slice(&dy[((first + b) * g.o + oc) * l..][..l]);
                        });
                }
                let dyt = Tensor::from_vec(dyt, (g.o, nb * l), &dev)?;
                if need_dx {
                    let dcols = wt.matmul(&dyt)?; // (K, nb * L)
                    let dst = &mut dx[first * g.c * g.h * g.w..(first + nb) * g.c * g.h * g.w];
                    with_data(&dcols, |dcols| {
                        col2im(dcols, &g, nb, dst);
                        Ok(())
                    })?;
                }
                if need_dw {
                    let cols = with_data(&x, |x| Ok(im2col(x, &g, first, nb)))?;
                    let cols = Tensor::from_vec(cols, (k, nb * l), &dev)?;
                    let part = dyt.matmul(&cols.t()?)?; // (O, K)
                    dw = Some(match dw.take() {
                        Some(acc) => (acc + part)?,
                        None => part,
                    });
                }
            }
            Ok(())
        })?;
        let dx = if need_dx {
            Some(Tensor::from_vec(dx, (g.n, g.c, g.h, g.w), &dev)?)
        } else {
            None
        };
        let dw = match (need_dw, dw) {
            (false, _) => None,
            (true, Some(dw)) => Some(dw.reshape((g.o, g.c, g.kh, g.kw))?),
            (true, None) => Some(Tensor::zeros((g.o, g.c, g.kh, g.kw), DType::F32, &dev)?),
        };
        Ok((dx, dw))
    }
}
