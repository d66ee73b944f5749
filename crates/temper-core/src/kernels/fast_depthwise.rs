//! Depthwise convolution (`groups == in_channels == out_channels`, MobileNet's 3x3 layers) for
//! the CPU, computed directly, one image plane per task.
//!
//! candle runs a grouped convolution as one convolution per group, which for a depthwise layer
//! means hundreds of tiny convolutions and as many allocations; im2col would build a `kh * kw`
//! times larger copy of the activation for a product with one row per channel. A depthwise
//! layer has `kh * kw` multiply-adds per output element, so a direct loop over each plane is
//! memory-bound and as fast as the data allows:
//!
//! - forward: `y[b, c] = sum_{i, j} w[c, i, j] * shift_{i, j}(x[b, c])`;
//! - input gradient: the adjoint, scattered back onto `dx[b, c]` (one plane per task, so no
//!   two tasks write the same memory);
//! - weight gradient: `dw[c, i, j] = sum_b <dy[b, c], shift_{i, j}(x[b, c])>`, one channel per
//!   task.
//!
//! Each gradient is computed only when its tensor tracks gradients, as for the dense
//! convolution. Output planes of at most [`TABLE_PLANE`] pixels (MobileNetV2's layers at 32x32
//! input from 16x16 down to 1x1) go through the dense convolution's gather table (input index
//! per tap and output pixel) instead of row segments of one to sixteen pixels, whose loop
//! overhead was the cost: MobileNetV2's PGD step 1,049 -> 1,328-1,441 img/s.

use super::fast_cpu::{dense, gather_table, lane_sum, min_items, simd, transpose, with_data, Geometry};
use super::ConvCfg;
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Output planes up to this many pixels use the gather table (64, 256 and 1,024 measured
/// the same within noise on MobileNetV2; 256 covers its 16x16 layers).
const TABLE_PLANE: usize = 256;

/// Output planes up to this many pixels run channels-last (see [`ChannelsLast`]).
const CL_PLANE: usize = 16;

/// Channels per task of the channels-last weight gradient.
const CL_BLOCK: usize = 64;

/// A depthwise convolution with small output planes (MobileNetV2's layers at 32x32 input
/// from 4x4 down to 1x1, where a 3x3 kernel with padding 1 keeps only its centre tap), run
/// channels-last: per image, the planes transposed to `(pixels, C)`, each valid (tap, output
/// pixel) pair of the gather table is one multiply-add over all channels, contiguous and
/// sixteen lanes wide. One plane per task, as the other paths run, spent its time in the
/// per-plane loop overhead (1x1 planes: 23 ns per output element).
struct ChannelsLast<'a> {
    g: &'a Geometry,
    table: &'a [u32],
    /// The weight transposed to `(kh kw, C)`.
    wt: Vec<f32>,
}

impl<'a> ChannelsLast<'a> {
    fn new(g: &'a Geometry, table: Option<&'a [u32]>, w: &[f32]) -> Option<Self> {
        let table = table.filter(|_| g.l() <= CL_PLANE && g.c > 0)?;
        let kk = g.kh * g.kw;
        let mut wt = vec![0f32; w.len()];
        transpose(w, g.c, kk, &mut wt);
        Some(ChannelsLast { g, table, wt })
    }

    /// The valid `(tap, output pixel, input pixel)` triples, in table order.
    fn pairs(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (l, hw) = (self.g.l(), self.g.h * self.g.w);
        self.table.iter().enumerate().filter_map(move |(e, &i)| {
            let i = i as usize;
            (i < hw).then_some((e / l, e % l, i))
        })
    }

    /// `y (N, C, L) = depthwise(x)`.
    fn forward(&self, x: &[f32], y: &mut [f32]) {
        self.apply(x, y, false);
    }

    /// `dx (N, C, H, W)` from `dy (N, C, L)`: the adjoint of [`Self::forward`].
    fn input_grad(&self, dy: &[f32], dx: &mut [f32]) {
        self.apply(dy, dx, true);
    }

    /// Per image, `src`'s planes transposed to `(pixels, C)`, for every valid pair one
    /// multiply-add over all channels, the result transposed back into `dst`: from input
    /// pixel to output pixel (forward), or back (`adjoint`, the input gradient).
    fn apply(&self, src: &[f32], dst: &mut [f32], adjoint: bool) {
        let (g, c) = (self.g, self.g.c);
        let (hw, l) = (g.h * g.w, g.l());
        let (sp, dp) = if adjoint { (l, hw) } else { (hw, l) };
        dst.par_chunks_mut(c * dp).enumerate().for_each_init(
            || (vec![0f32; sp * c], vec![0f32; dp * c]),
            |(st, dt), (b, db)| {
                simd(|| {
                    transpose(&src[b * c * sp..][..c * sp], c, sp, st);
                    dt.fill(0.0);
                    for (t, o, i) in self.pairs() {
                        let (to, from) = if adjoint { (i, o) } else { (o, i) };
                        let (out, wv, v) = (
                            &mut dt[to * c..][..c],
                            &self.wt[t * c..][..c],
                            &st[from * c..][..c],
                        );
                        out.iter_mut()
                            .zip(wv)
                            .zip(v)
                            .for_each(|((o, &w), &v)| *o += w * v);
                    }
                    transpose(dt, dp, c, db);
                })
            },
        );
    }

    /// `dw (C, kh kw)`: per block of [`CL_BLOCK`] channels, the sum over images (in order)
    /// and valid pairs of `dy[o] * x[i]`.
    fn weight_grad(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (g, c) = (self.g, self.g.c);
        let (hw, l, kk) = (g.h * g.w, g.l(), g.kh * g.kw);
        let blocks: Vec<Vec<f32>> = (0..c.div_ceil(CL_BLOCK))
            .into_par_iter()
            .map(|blk| {
                simd(|| {
                    let (c0, cb) = (blk * CL_BLOCK, CL_BLOCK.min(c - blk * CL_BLOCK));
                    let (mut xt, mut dyt) = (vec![0f32; hw * cb], vec![0f32; l * cb]);
                    let mut acc = vec![0f32; kk * cb];
                    for b in 0..g.n {
                        transpose(&x[(b * c + c0) * hw..][..cb * hw], cb, hw, &mut xt);
                        transpose(&dy[(b * c + c0) * l..][..cb * l], cb, l, &mut dyt);
                        for (t, o, i) in self.pairs() {
                            let (out, d, v) = (
                                &mut acc[t * cb..][..cb],
                                &dyt[o * cb..][..cb],
                                &xt[i * cb..][..cb],
                            );
                            out.iter_mut().zip(d).zip(v).for_each(|((a, &d), &v)| *a += d * v);
                        }
                    }
                    acc
                })
            })
            .collect();
        let mut dw = vec![0f32; c * kk];
        for (blk, acc) in blocks.iter().enumerate() {
            let (c0, cb) = (blk * CL_BLOCK, CL_BLOCK.min(c - blk * CL_BLOCK));
            for t in 0..kk {
                for j in 0..cb {
                    dw[(c0 + j) * kk + t] = acc[t * cb + j];
                }
            }
        }
        dw
    }
}

/// Whether the depthwise path handles this convolution: CPU f32, one input and one output
/// channel per group.
pub(super) fn covers(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> bool {
    let (xd, wd) = (x.dims(), weight.dims());
    x.device().is_cpu()
        && weight.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && xd.len() == 4
        && wd.len() == 4
        && cfg.groups > 1
        && cfg.groups == xd[1]
        && wd[0] == xd[1]
        && wd[1] == 1
        && cfg.stride >= 1
        && cfg.dilation >= 1
}

/// The depthwise convolution of `x` with `weight` `(C, 1, kh, kw)`.
pub(super) fn conv2d(x: &Tensor, weight: &Tensor, cfg: ConvCfg) -> Result<Tensor> {
    Ok(x.apply_op2(weight, DepthwiseOp { cfg })?)
}

/// The geometry of a depthwise convolution, seen as a dense one on a single channel.
fn geometry(x: &[usize], weight: &[usize], cfg: ConvCfg) -> candle_core::Result<Geometry> {
    let (&[n, c, h, w], &[o, _, kh, kw]) = (x, weight) else {
        candle_core::bail!(
            "fast-cpu depthwise conv2d: expected 4-D input and weight, got {x:?} and {weight:?}"
        )
    };
    if o != c {
        candle_core::bail!("fast-cpu depthwise conv2d: {c} input channels but {o} filters")
    }
    let g = Geometry::new(&[n, 1, h, w], &[1, 1, kh, kw], ConvCfg { groups: 1, ..cfg })?;
    Ok(Geometry { c, o: c, ..g })
}

/// One kernel tap `(i, j)` (`t = i * kw + j`) and the output rows `r_lo..r_hi` and columns
/// `q_lo..q_hi` whose input under it lies inside the image: computed once per convolution,
/// not once per plane (the divisions cost more than the work on a 2 x 2 plane).
#[derive(Debug, Clone, Copy)]
struct Tap {
    t: usize,
    i: usize,
    j: usize,
    rows: (usize, usize),
    cols: (usize, usize),
}

/// The taps of `g` that read anything.
fn taps(g: &Geometry) -> Vec<Tap> {
    let mut v = Vec::with_capacity(g.kh * g.kw);
    for i in 0..g.kh {
        for j in 0..g.kw {
            let rows = g.valid(g.oh, g.h, i * g.dilation);
            let cols = g.valid(g.ow, g.w, j * g.dilation);
            if rows.0 < rows.1 && cols.0 < cols.1 {
                v.push(Tap {
                    t: i * g.kw + j,
                    i,
                    j,
                    rows,
                    cols,
                });
            }
        }
    }
    v
}

/// Calls `f(y0, x0, len)` for every output row of one plane that `tap` reads from inside the
/// input: plane-relative outputs `y0..y0 + len` read the inputs `x0`, `x0 + stride`, ...
/// Whole row segments, so the loops over them vectorise.
#[inline]
fn for_tap(g: &Geometry, tap: &Tap, mut f: impl FnMut(usize, usize, usize)) {
    let ((r_lo, r_hi), (q_lo, q_hi)) = (tap.rows, tap.cols);
    let col = q_lo * g.stride + tap.j * g.dilation - g.padding;
    for r in r_lo..r_hi {
        let xr = (r * g.stride + tap.i * g.dilation - g.padding) * g.w;
        f(r * g.ow + q_lo, xr + col, q_hi - q_lo);
    }
}

/// `out[k] += w * src[k * stride]` for every `k` of `out`.
#[inline]
fn axpy(out: &mut [f32], w: f32, src: &[f32], stride: usize) {
    if stride == 1 {
        out.iter_mut().zip(src).for_each(|(o, &v)| *o += w * v);
    } else {
        out.iter_mut()
            .zip(src.iter().step_by(stride))
            .for_each(|(o, &v)| *o += w * v);
    }
}

/// `out[k * stride] += w * src[k]` for every `k` of `src`.
#[inline]
fn axpy_scatter(out: &mut [f32], w: f32, src: &[f32], stride: usize) {
    if stride == 1 {
        axpy(out, w, src, 1);
    } else {
        out.iter_mut()
            .step_by(stride)
            .zip(src)
            .for_each(|(o, &v)| *o += w * v);
    }
}

/// `sum of a[k] * b[k * stride]` over `a`.
#[inline]
fn dot(a: &[f32], b: &[f32], stride: usize) -> f32 {
    if stride == 1 {
        lane_sum(a, b, |u, v| u * v)
    } else {
        a.iter().zip(b.iter().step_by(stride)).map(|(&u, &v)| u * v).sum()
    }
}

/// A stride-1 depthwise convolution on zero-padded planes of width `W = w + 2 padding`: for
/// the output laid out with row stride `W` too, tap `(i, j)` reads the padded input at the
/// constant offset `(i W + j) dilation`, so each tap is one contiguous multiply-add (or dot
/// product) over the whole plane, which vectorises, instead of a row segment or an indexed
/// element at a time. The `W - ow` extra columns of each output row are computed and
/// dropped (forward), or held at zero (gradients).
struct Padded {
    /// Padded height and width.
    ph: usize,
    pw: usize,
    /// Elements of a plane's output in the padded layout: `(oh - 1) W + ow`.
    span: usize,
    /// Offset of each tap in the padded input, row-major over the kernel.
    offsets: Vec<usize>,
}

impl Padded {
    /// The layout for `g`, when it has stride 1 and an output (other geometries keep the
    /// other paths).
    fn new(g: &Geometry) -> Option<Self> {
        if g.stride != 1 || g.oh == 0 || g.ow == 0 {
            return None;
        }
        let (ph, pw) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
        let mut offsets = Vec::with_capacity(g.kh * g.kw);
        for i in 0..g.kh {
            for j in 0..g.kw {
                offsets.push((i * pw + j) * g.dilation);
            }
        }
        Some(Padded {
            ph,
            pw,
            span: (g.oh - 1) * pw + g.ow,
            offsets,
        })
    }

    /// Copies an `h x w` plane into the padded plane `dst` (`ph x pw`), zeros around it.
    fn pad(&self, g: &Geometry, plane: &[f32], dst: &mut [f32]) {
        let p = g.padding;
        dst[..p * self.pw].fill(0.0);
        dst[(p + g.h) * self.pw..].fill(0.0);
        for (y, row) in plane.chunks_exact(g.w.max(1)).take(g.h).enumerate() {
            let out = &mut dst[(y + p) * self.pw..][..self.pw];
            out[..p].fill(0.0);
            out[p..p + g.w].copy_from_slice(row);
            out[p + g.w..].fill(0.0);
        }
    }

    /// Scratch for one plane: the padded input and an output-sized span.
    fn scratch(&self) -> (Vec<f32>, Vec<f32>) {
        (vec![0f32; self.ph * self.pw], vec![0f32; self.span])
    }
}

/// One output plane (`oh x ow`) in the padded layout of `pad` (row stride `W`, the extra
/// columns zero), into `dst` (`span` elements).
fn spread(g: &Geometry, pad: &Padded, plane: &[f32], dst: &mut [f32]) {
    for (r, row) in plane.chunks_exact(g.ow).enumerate() {
        let out = &mut dst[r * pad.pw..];
        out[..g.ow].copy_from_slice(row);
        if r + 1 < g.oh {
            out[g.ow..pad.pw].fill(0.0);
        }
    }
}

struct DepthwiseOp {
    cfg: ConvCfg,
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "temper-fast-cpu-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geometry(l1.dims(), l2.dims(), self.cfg)?;
        let x = dense(s1, l1)?;
        let w = dense(s2, l2)?;
        let (hw, l, kk) = (g.h * g.w, g.l(), g.kh * g.kw);
        let taps = taps(&g);
        let table = gather_table(&g, TABLE_PLANE);
        let mut y = vec![0f32; g.n * g.c * l];
        if let Some(cl) = ChannelsLast::new(&g, table.as_deref(), &w) {
            cl.forward(&x, &mut y);
        } else if let Some(pad) = Padded::new(&g) {
            y.par_chunks_mut(l)
                .enumerate()
                .with_min_len(min_items(l * kk))
                .for_each_init(
                    || pad.scratch(),
                    |(xp, acc), (plane, out)| {
                        simd(|| {
                            let c = plane % g.c;
                            pad.pad(&g, &x[plane * hw..(plane + 1) * hw], xp);
                            acc.fill(0.0);
                            for (&off, &wv) in pad.offsets.iter().zip(&w[c * kk..(c + 1) * kk]) {
                                axpy(acc, wv, &xp[off..], 1);
                            }
                            for (r, row) in out.chunks_exact_mut(g.ow).enumerate() {
                                row.copy_from_slice(&acc[r * pad.pw..][..g.ow]);
                            }
                        })
                    },
                );
        } else if l > 0 {
            y.par_chunks_mut(l)
                .enumerate()
                .with_min_len(min_items(l * kk))
                .for_each(|(plane, out)| {
                    let c = plane % g.c;
                    let xp = &x[plane * hw..(plane + 1) * hw];
                    if let Some(table) = &table {
                        for (t, idx) in table.chunks_exact(l).enumerate() {
                            let wv = w[c * kk + t];
                            for (o, &i) in out.iter_mut().zip(idx) {
                                *o += wv * xp.get(i as usize).copied().unwrap_or(0.0);
                            }
                        }
                        return;
                    }
                    for tap in &taps {
                        let wv = w[c * kk + tap.t];
                        for_tap(&g, tap, |y0, x0, len| {
                            axpy(&mut out[y0..y0 + len], wv, &xp[x0..], g.stride)
                        });
                    }
                });
        }
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (need_dx, need_dw) = (x.track_op(), weight.track_op());
        if !need_dx && !need_dw {
            return Ok((None, None));
        }
        let g = geometry(x.dims(), weight.dims(), self.cfg)?;
        let (hw, l, kk) = (g.h * g.w, g.l(), g.kh * g.kw);
        let taps = taps(&g);
        let table = gather_table(&g, TABLE_PLANE);
        let padded = Padded::new(&g);
        let dev = Device::Cpu;
        let w = weight.detach().contiguous()?;
        let x = x.detach().contiguous()?;
        let dy = grad_res.detach().contiguous()?;
        // Small planes run channels-last in both directions; its transposed weight is made
        // once for the two.
        let cl = with_data(&w, |w| Ok(ChannelsLast::new(&g, table.as_deref(), w)))?;
        with_data(&dy, |dy| {
            let dx = if need_dx && hw > 0 {
                let mut dx = vec![0f32; g.n * g.c * hw];
                with_data(&w, |w| {
                    if let Some(cl) = &cl {
                        cl.input_grad(dy, &mut dx);
                        return Ok(());
                    }
                    if let Some(pad) = &padded {
                        // The adjoint of the forward: dY in the padded layout (zeros in
                        // the extra columns) added at each tap's offset onto a padded dX,
                        // whose inside is dX.
                        dx.par_chunks_mut(hw)
                            .enumerate()
                            .with_min_len(min_items(hw * kk))
                            .for_each_init(
                                || pad.scratch(),
                                |(dxp, dyw), (plane, out)| {
                                    simd(|| {
                                        let c = plane % g.c;
                                        spread(&g, pad, &dy[plane * l..(plane + 1) * l], dyw);
                                        dxp.fill(0.0);
                                        for (&off, &wv) in pad.offsets.iter().zip(&w[c * kk..(c + 1) * kk]) {
                                            axpy(&mut dxp[off..off + pad.span], wv, dyw, 1);
                                        }
                                        let p = g.padding;
                                        for (y, row) in out.chunks_exact_mut(g.w).enumerate() {
                                            row.copy_from_slice(&dxp[(y + p) * pad.pw + p..][..g.w]);
                                        }
                                    })
                                },
                            );
                        return Ok(());
                    }
                    dx.par_chunks_mut(hw)
                        .enumerate()
                        .with_min_len(min_items(hw * kk))
                        .for_each(|(plane, out)| {
                            let c = plane % g.c;
                            let dyp = &dy[plane * l..(plane + 1) * l];
                            if let Some(table) = &table {
                                for (t, idx) in table.chunks_exact(l).enumerate() {
                                    let wv = w[c * kk + t];
                                    for (&d, &i) in dyp.iter().zip(idx) {
                                        if let Some(o) = out.get_mut(i as usize) {
                                            *o += wv * d;
                                        }
                                    }
                                }
                                return;
                            }
                            for tap in &taps {
                                let wv = w[c * kk + tap.t];
                                for_tap(&g, tap, |y0, x0, len| {
                                    axpy_scatter(&mut out[x0..], wv, &dyp[y0..y0 + len], g.stride)
                                });
                            }
                        });
                    Ok(())
                })?;
                Some(Tensor::from_vec(dx, (g.n, g.c, g.h, g.w), &dev)?)
            } else if need_dx {
                Some(Tensor::zeros((g.n, g.c, g.h, g.w), DType::F32, &dev)?)
            } else {
                None
            };
            let dw = if need_dw {
                let mut dw = vec![0f32; g.c * kk];
                with_data(&x, |x| {
                    if let Some(cl) = &cl {
                        dw = cl.weight_grad(x, dy);
                        return Ok(());
                    }
                    if let Some(pad) = &padded {
                        // dw[c, t] = sum over images of <dY in the padded layout, the
                        // padded input at tap t's offset>: one dot product per tap.
                        dw.par_chunks_mut(kk.max(1))
                            .enumerate()
                            .with_min_len(min_items(g.n * l * kk))
                            .for_each_init(
                                || pad.scratch(),
                                |(xp, dyw), (c, out)| {
                                    simd(|| {
                                        for b in 0..g.n {
                                            let plane = b * g.c + c;
                                            pad.pad(&g, &x[plane * hw..(plane + 1) * hw], xp);
                                            spread(&g, pad, &dy[plane * l..(plane + 1) * l], dyw);
                                            for (o, &off) in out.iter_mut().zip(&pad.offsets) {
                                                *o += lane_sum(dyw, &xp[off..off + pad.span], |u, v| u * v);
                                            }
                                        }
                                    })
                                },
                            );
                        return Ok(());
                    }
                    dw.par_chunks_mut(kk.max(1))
                        .enumerate()
                        .with_min_len(min_items(g.n * l * kk))
                        .for_each(|(c, out)| {
                            for b in 0..g.n {
                                let plane = b * g.c + c;
                                let xp = &x[plane * hw..(plane + 1) * hw];
                                let dyp = &dy[plane * l..(plane + 1) * l];
                                if let Some(table) = &table {
                                    for (t, idx) in table.chunks_exact(l).enumerate() {
                                        out[t] += dyp
                                            .iter()
                                            .zip(idx)
                                            .map(|(&d, &i)| d * xp.get(i as usize).copied().unwrap_or(0.0))
                                            .sum::<f32>();
                                    }
                                    continue;
                                }
                                for tap in &taps {
                                    let mut acc = 0f32;
                                    for_tap(&g, tap, |y0, x0, len| {
                                        acc += dot(&dyp[y0..y0 + len], &xp[x0..], g.stride)
                                    });
                                    out[tap.t] += acc;
                                }
                            }
                        });
                    Ok(())
                })?;
                Some(Tensor::from_vec(dw, (g.c, 1, g.kh, g.kw), &dev)?)
            } else {
                None
            };
            Ok((dx, dw))
        })
    }
}
