//! Fused BatchNorm for the CPU: one custom op per layer instead of candle's chain of
//! broadcast operations.
//!
//! Through candle's differentiable operations, a training-mode BatchNorm is about ten passes
//! over the activation forward (mean, centring, square, variance, scale, gamma, beta, each
//! allocating) and more backward (every broadcast op's gradient reduces again). Here the
//! statistics are one parallel pass per channel (accumulated in f64), the output one pass,
//! and the backward two: per-channel sums of `dy` and `dy * x_hat`, then the input gradient
//! of the full BatchNorm formula,
//!
//! `dx = gamma / sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat))` (training mode, where the
//! batch statistics depend on `x`), or `dx = dy * gamma / sigma` (evaluation mode, running
//! statistics). `dgamma = sum(dy * x_hat)` and `dbeta = sum(dy)` are computed only when those
//! parameters track gradients; attacks (detached parameters, evaluation mode) pay for a
//! single multiply per element.
//!
//! As for the convolution, the backward returns tensors that do not track gradients, so
//! double backward is not supported through this op.

use super::fast_act::{clamp_grad, clamp_value};
use super::fast_cpu::{dense, lane_sum2, min_items, simd, with_data, Pair};
use super::BatchStats;
use crate::Result;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Whether the fused path handles this input: CPU f32 NCHW with per-channel f32 parameters.
pub(super) fn covers(x: &Tensor, per_channel: &[&Tensor]) -> bool {
    let c = x.dims().get(1).copied();
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && x.rank() == 4
        && x.elem_count() > 0
        && per_channel.iter().all(|p| {
            p.device().is_cpu()
                && p.dtype() == DType::F32
                && p.rank() == 1
                && Some(p.dim(0).unwrap_or(0)) == c
        })
}

/// Per-channel sums over (N, H, W) of `f(channel, first_index)` for an NCHW buffer, where
/// `f` sums one plane and `first_index` is the plane's offset in the buffer (so `f` can read
/// other buffers of the same layout); accumulated in f64, images in order.
///
/// Parallel over blocks of channels, each walking the images and, within an image, its
/// block's planes, which lie next to each other: one channel at a time over all images read
/// one plane per image `C H W` elements apart, which for MobileNetV2's one-pixel planes was
/// a cache miss per element (its training-mode BatchNorm on 960 x 1 x 1: 0.8 ms a call).
pub(super) fn channel_sums<A, F>(n: usize, c: usize, hw: usize, f: F) -> Vec<A>
where
    A: Copy + Default + std::ops::AddAssign + Send,
    F: Fn(usize, usize) -> A + Sync,
{
    let block = min_items(n * hw).clamp(1, c.max(1));
    (0..c.div_ceil(block))
        .into_par_iter()
        .flat_map_iter(|blk| {
            let channels = blk * block..((blk + 1) * block).min(c);
            let mut acc = vec![A::default(); channels.len()];
            simd(|| {
                for b in 0..n {
                    for (a, ch) in acc.iter_mut().zip(channels.clone()) {
                        *a += f(ch, (b * c + ch) * hw);
                    }
                }
            });
            acc
        })
        .collect()
}

/// Runs `f(plane, out)` on every `hw`-element plane of `buf`, in parallel with several
/// planes per task and the loop over them inside one [`simd`] call: planes of one pixel
/// (MobileNetV2's last layers) made a task, or a call, per plane the cost.
pub(super) fn for_planes(buf: &mut [f32], hw: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if hw == 0 {
        return;
    }
    let per_task = min_items(hw);
    buf.par_chunks_mut(hw * per_task)
        .enumerate()
        .for_each(|(task, outs)| {
            simd(|| {
                for (k, out) in outs.chunks_exact_mut(hw).enumerate() {
                    f(task * per_task + k, out);
                }
            })
        });
}

/// Per-channel mean and biased variance of an NCHW buffer, in one pass with f64 sums of
/// `x - shift` and its square, the shift a value of the channel (its first): the variance
/// `E[(x - shift)^2] - E[x - shift]^2` then does not cancel away, as it could around a mean
/// far from zero. (The two-pass form, the mean first, reads the activation twice.)
fn moments(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let count = (n * hw) as f64;
    let shift: Vec<f64> = (0..c)
        .map(|ch| x.get(ch * hw).map_or(0.0, |&v| v as f64))
        .collect();
    channel_sums(n, c, hw, |ch, at| {
        let (p, s) = (&x[at..at + hw], shift[ch]);
        lane_sum2(p, p, |v, _| {
            let d = v as f64 - s;
            Pair(d, d * d)
        })
    })
    .into_iter()
    .zip(&shift)
    .map(|(Pair(s1, s2), s)| {
        let m = s1 / count;
        let v = s2 / count - m * m;
        // Rounding can leave a tiny negative variance; NaN stays NaN.
        (s + m, if v < 0.0 { 0.0 } else { v })
    })
    .unzip()
}

/// BatchNorm in training mode with the batch's own statistics, followed by a ReLU in the
/// same pass when `relu`.
pub(super) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    let (mean, var) = with_data(&x.detach(), |d| Ok(moments(d, n, c, h * w)))?;
    let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let op = BatchNormOp {
        mean: mean32.clone(),
        invstd: var.iter().map(|&v| (1.0 / (v + eps).sqrt()) as f32).collect(),
        train: true,
        relu,
    };
    let y = x.apply_op3(gamma, beta, op)?;
    let dev = Device::Cpu;
    let stats = BatchStats {
        mean: Tensor::from_vec(mean32, c, &dev)?,
        var: Tensor::from_vec(var.iter().map(|&v| v as f32).collect::<Vec<_>>(), c, &dev)?,
    };
    Ok((y, stats))
}

/// BatchNorm in evaluation mode with running statistics `mean` and `var`, followed by a ReLU
/// in the same pass when `relu`.
pub(super) fn batch_norm_eval(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    // The same f32 arithmetic as the reference: 1 / sqrt(var + eps).
    let invstd = (var.detach() + eps)?.sqrt()?.recip()?.to_vec1::<f32>()?;
    let op = BatchNormOp {
        mean: mean.detach().to_vec1::<f32>()?,
        invstd,
        train: false,
        relu,
    };
    Ok(x.contiguous()?.apply_op3(gamma, beta, op)?)
}

/// `y = (x - mean) * invstd * gamma + beta` on `(x, gamma, beta)`, with the statistics fixed
/// at construction: the batch's own (training mode) or the running ones (evaluation mode).
struct BatchNormOp {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    /// The statistics are the batch's own, so the input gradient flows through them too.
    train: bool,
    /// A ReLU follows in the same pass (`max(y, 0)`, NaN kept, as `fast_act`); the
    /// backward passes the gradient where the output is positive, PyTorch's rule.
    relu: bool,
}

/// The elements of a 1-D f32 storage.
fn vector(s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<f32>> {
    let data = s.as_slice::<f32>()?;
    let (&[len], &[stride]) = (l.dims(), l.stride()) else {
        candle_core::bail!(
            "fast-cpu batch norm: expected a 1-D parameter, got {:?}",
            l.dims()
        )
    };
    Ok((0..len).map(|i| data[l.start_offset() + i * stride]).collect())
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "temper-fast-cpu-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l1.dims() else {
            candle_core::bail!("fast-cpu batch norm: expected NCHW input, got {:?}", l1.dims())
        };
        let x = dense(s1, l1)?;
        let (gamma, beta) = (vector(s2, l2)?, vector(s3, l3)?);
        if gamma.len() != c || beta.len() != c || self.mean.len() != c {
            candle_core::bail!("fast-cpu batch norm: {c} channels but {} parameters", gamma.len())
        }
        let hw = h * w;
        let mut y = vec![0f32; n * c * hw];
        for_planes(&mut y, hw, |plane, out| {
            let ch = plane % c;
            let (m, s, b) = (self.mean[ch], self.invstd[ch] * gamma[ch], beta[ch]);
            let xs = &x[plane * hw..(plane + 1) * hw];
            if self.relu {
                for (o, &v) in out.iter_mut().zip(xs) {
                    *o = clamp_value((v - m) * s + b, f32::INFINITY);
                }
            } else {
                for (o, &v) in out.iter_mut().zip(xs) {
                    *o = (v - m) * s + b;
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_dg, need_db) = (x.track_op(), gamma.track_op(), beta.track_op());
        if !(need_dx || need_dg || need_db) {
            return Ok((None, None, None));
        }
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let count = (n * hw) as f64;
        let dev = Device::Cpu;
        let g = gamma.detach().to_vec1::<f32>()?;
        let x = x.detach().contiguous()?;
        // With the fused ReLU, the gradient reaching the normalisation: the ReLU's gradient,
        // taken at the output (positive exactly where the normalised value was).
        let dy = if self.relu {
            let masked = with_data(&res.detach(), |y| {
                with_data(&grad_res.detach(), |d| Ok(clamp_grad(y, d, f32::INFINITY)))
            })?;
            Tensor::from_vec(masked, res.shape(), &Device::Cpu)?
        } else {
            grad_res.detach().contiguous()?
        };
        let (mean, invstd) = (&self.mean, &self.invstd);
        with_data(&x, |x| {
            with_data(&dy, |dy| {
                // Per-channel sums of dy and dy * x_hat: the parameter gradients, and the two
                // corrections of the training-mode input gradient.
                let want_sums = need_dg || need_db || (need_dx && self.train);
                let (sum_dy, sum_dy_xhat): (Vec<f64>, Vec<f64>) = if want_sums {
                    channel_sums(n, c, hw, |ch, at| {
                        let (m, s) = (mean[ch], invstd[ch]);
                        let (d, v) = (&dy[at..at + hw], &x[at..at + hw]);
                        lane_sum2(d, v, |d, v| Pair(d as f64, d as f64 * ((v - m) * s) as f64))
                    })
                    .into_iter()
                    .map(|Pair(a, b)| (a, b))
                    .unzip()
                } else {
                    (Vec::new(), Vec::new())
                };
                let dx = if need_dx {
                    let mut dx = vec![0f32; n * c * hw];
                    for_planes(&mut dx, hw, |plane, out| {
                        let ch = plane % c;
                        let scale = g[ch] * invstd[ch];
                        let at = plane * hw;
                        if self.train {
                            let (m, s) = (mean[ch], invstd[ch]);
                            let mean_dy = (sum_dy[ch] / count) as f32;
                            let mean_dy_xhat = (sum_dy_xhat[ch] / count) as f32;
                            let (dys, xs) = (&dy[at..at + hw], &x[at..at + hw]);
                            for ((o, &d), &v) in out.iter_mut().zip(dys).zip(xs) {
                                *o = scale * (d - mean_dy - (v - m) * s * mean_dy_xhat);
                            }
                        } else {
                            for (o, &d) in out.iter_mut().zip(&dy[at..at + hw]) {
                                *o = d * scale;
                            }
                        }
                    });
                    Some(Tensor::from_vec(dx, (n, c, h, w), &dev)?)
                } else {
                    None
                };
                let to_tensor =
                    |v: &[f64]| Tensor::from_vec(v.iter().map(|&s| s as f32).collect::<Vec<_>>(), c, &dev);
                let dg = need_dg.then(|| to_tensor(&sum_dy_xhat)).transpose()?;
                let db = need_db.then(|| to_tensor(&sum_dy)).transpose()?;
                Ok((dx, dg, db))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The one-pass moments equal the two-pass ones (mean first, then centred squares, in
    /// f64) to f64 rounding, also where the mean is far from zero against the spread, which
    /// the plain `E[x^2] - E[x]^2` would cancel away; a NaN stays a NaN.
    #[test]
    fn one_pass_moments_equal_two_pass_moments() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (n, c, hw) = (3, 4, 37);
        // Channel 0 near 0, channel 1 at 1000 with spread 0.01, channel 2 constant, channel
        // 3 with its first value an outlier.
        let mut x = vec![0f32; n * c * hw];
        for b in 0..n {
            for ch in 0..c {
                for i in 0..hw {
                    x[(b * c + ch) * hw + i] = match ch {
                        0 => rng.random_range(-1f32..1.0),
                        1 => 1000.0 + rng.random_range(-0.01f32..0.01),
                        2 => 7.5,
                        _ => rng.random_range(0f32..1.0),
                    };
                }
            }
        }
        x[3 * hw] = 5e4;
        let (mean, var) = moments(&x, n, c, hw);
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|b| x[(b * c + ch) * hw..][..hw].iter().map(|&v| v as f64))
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|&u| (u - m) * (u - m)).sum::<f64>() / vals.len() as f64;
            assert!(
                (mean[ch] - m).abs() <= 1e-12 * m.abs().max(1.0),
                "mean {ch}: {} vs {m}",
                mean[ch]
            );
            assert!(
                (var[ch] - v).abs() <= 1e-9 * v.max(1e-12),
                "var {ch}: {} vs {v}",
                var[ch]
            );
        }
        x[5] = f32::NAN;
        assert!(moments(&x, n, c, hw).1[0].is_nan());
    }
}
