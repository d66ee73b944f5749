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
//! (image, output row, output column). Every product is then one gemm (the `gemm` crate's,
//! called directly, with its AVX-512 kernels where the CPU has them), on chunks of images
//! small enough to stay in cache:
//!
//! - forward: `Y (O, nb L) = W (O, K) @ cols (K, nb L)`, then permuted to NCHW;
//! - input gradient, stride 1 (every 3x3 and 1x1 layer of the zoo but the downsampling ones):
//!   the forward convolution of `dY` with the flipped, transposed kernel (`flipped`), so `dY`
//!   is unfolded by copies and the gemm writes `C x nb L` values;
//! - input gradient, other strides: `dcols (K, nb L) = W^T @ dY`, folded back by a
//!   scatter-add ("col2im");
//! - weight gradient: `dW (O, K) = sum over chunks of dY (O, nb L) @ cols^T`.
//!
//! Threads. With at least as many images as threads, the chunks are split into one group of
//! consecutive chunks per thread, each running its gemms alone (no synchronisation inside a
//! product, and the weight gradient's long inner dimension, the batch, is split across
//! threads, which the gemm does not do by itself); the per-group weight gradients are added
//! in group order, so results do not depend on scheduling (they do on the thread count, as
//! any parallel sum's rounding does). With fewer images than threads (a single-image attack)
//! the chunks run in order and each gemm uses every thread.
//!
//! The backward returns tensors that do not themselves track gradients, so gradients of
//! gradients (double backward) are not supported through this op.

use super::fast_bf16::{self, Panels, Rhs};
use super::{fast_act, fast_bn, fast_depthwise, BatchStats, CandleKernels, ConvCfg, Kernels, Precision};
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Mutex;

/// Target size of one unfolded chunk, in f32 elements (1 MiB): small enough that the chunk is
/// still in cache when the gemm reads it. Measured on a 2-core machine, chunks of 4 MiB made
/// a 64-channel 3x3 layer's forward and backward 2-3 times faster than one 64 MiB chunk; 1 MiB
/// then made preact-resnet18's PGD step 3-5% faster again at batch 32 and 128 (the early
/// layers now run one image per chunk, which also skips the permutation to NCHW) and
/// small-cnn's 10-20% (2026-12-01, `tmp_train`-style timing, idle machine: 1 MiB and 256 KiB
/// alike, 4 MiB and 16 MiB slower).
const COLS_TARGET: usize = 1 << 18;

/// [`COLS_TARGET`] at `--precision bf16`, whose unfolding holds bf16 pairs (2 MiB for this
/// many elements): preact-resnet18's bf16 forward 4% faster with it than with the f32 target,
/// the PGD step 2% (same timing, three alternating runs each).
const COLS_TARGET_BF16: usize = 1 << 20;

/// Largest unfolded chunk, in f32 elements (64 MiB), so memory stays bounded for any batch.
const COLS_MAX: usize = 16 << 20;

/// Largest unfolded input a training forward keeps for its weight gradient, in f32
/// elements (16 MiB); larger ones are unfolded again in the backward pass. small-cnn's layers
/// (1.6 M and 0.4 M elements at batch 128) fit; PreActResNet-18's early layers (75 M) would
/// hold hundreds of megabytes per layer until the backward pass, so they do not.
const KEEP_COLS_MAX: usize = 4 << 20;

/// Least work for one parallel task, in elements: late layers have planes of a few pixels,
/// and a task per plane would then cost more in scheduling than in arithmetic.
const MIN_TASK: usize = 1 << 13;

/// The least number of consecutive items of `unit` elements one parallel task takes, so that
/// every task does at least [`MIN_TASK`] elements of work (`with_min_len`).
pub(super) fn min_items(unit: usize) -> usize {
    (MIN_TASK / unit.max(1)).max(1)
}

/// Accumulators of [`lane_sum`].
const LANES: usize = 32;

/// `sum of f(a[k], b[k])` over the common length, with [`LANES`] independent accumulators:
/// one accumulator would make every addition wait for the previous one (a scalar chain at a
/// quarter of an element per cycle); these overlap, and the compiler vectorises them into
/// several vector accumulators (four of f64 under AVX-512), so the additions' latency does
/// not bound the pass either.
#[inline(always)]
pub(super) fn lane_sum<T>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> T) -> T
where
    T: Copy + Default + std::ops::AddAssign + std::iter::Sum,
{
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [T::default(); LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for (j, s) in acc.iter_mut().enumerate() {
            *s += f(ca[j], cb[j]);
        }
    }
    let (ra, rb) = (
        a.chunks_exact(LANES).remainder(),
        b.chunks_exact(LANES).remainder(),
    );
    let mut total: T = acc.iter().copied().sum();
    ra.iter().zip(rb).for_each(|(&u, &v)| total += f(u, v));
    total
}

/// Two f64 sums carried together (per-channel sums that one pass computes at once).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Pair(pub(super) f64, pub(super) f64);

impl std::ops::AddAssign for Pair {
    fn add_assign(&mut self, o: Pair) {
        self.0 += o.0;
        self.1 += o.1;
    }
}

/// As [`lane_sum`], two sums in one pass: `sum f(a[k], b[k])` of each half of the pair,
/// over the common length, each in its own [`LANES`] accumulators (an array of pairs would
/// not vectorise).
#[inline(always)]
pub(super) fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> Pair) -> Pair {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let (mut s0, mut s1) = ([0f64; LANES], [0f64; LANES]);
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for j in 0..LANES {
            let Pair(u, v) = f(ca[j], cb[j]);
            s0[j] += u;
            s1[j] += v;
        }
    }
    let mut total = Pair(s0.iter().sum(), s1.iter().sum());
    for k in len / LANES * LANES..len {
        total += f(a[k], b[k]);
    }
    total
}

/// Runs `f` compiled for AVX-512 (with AVX2 and FMA) where the CPU has it, detected at run
/// time, and as it is otherwise.
///
/// The workspace builds for the baseline x86-64 (SSE2), so the element loops of the kernels
/// (depthwise taps, BatchNorm, activations, unfolding) vectorise four lanes wide; inlined
/// into a function with these target features, the same loops are compiled sixteen lanes
/// wide. The closure must be small enough to inline (its loops then take the caller's
/// features); the arithmetic is unchanged, element by element (no contraction into FMA:
/// Rust does not fuse a multiply and an add on its own), so results are the same on every
/// CPU.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: `wide` checked that this CPU has every feature `with_avx512` enables.
        #[allow(unsafe_code)]
        return unsafe { with_avx512(f) };
    }
    f()
}

/// Whether the CPU runs [`with_avx512`]'s features (cached by the standard library).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn wide() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx2") && has!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
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
        // bf16: the convolution's own bf16 products where the CPU has them; elsewhere f32
        // products of bf16-rounded operands (see `Precision::operand`), the same arithmetic
        // at f32 speed.
        if precision == Precision::Bf16 && Self::covers(x, weight, cfg) && fast_bf16::available() {
            let y = x.apply_op2(weight, Conv2dOp::new(cfg, true))?;
            return add_bias(y, bias);
        }
        let (x, weight) = (&precision.operand(x)?, &precision.operand(weight)?);
        let y = if Self::covers(x, weight, cfg) {
            let keep = weight.track_op();
            x.apply_op2(weight, Conv2dOp::new(cfg, false).keeping_cols(keep))?
        } else if fast_depthwise::covers(x, weight, cfg) {
            fast_depthwise::conv2d(x, weight, cfg)?
        } else {
            return CandleKernels.conv2d(x, weight, bias, cfg, Precision::F32);
        };
        add_bias(y, bias)
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Tensor> {
        let covered = [x, weight]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2);
        if !covered {
            return CandleKernels.linear(x, weight, bias, precision);
        }
        let (x, weight) = (
            precision.operand(x)?.contiguous()?,
            precision.operand(weight)?.contiguous()?,
        );
        // `(N, out)`: the bias runs along dimension 1, as a convolution's.
        add_bias(x.apply_op2(&weight, LinearOp)?, bias)
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
        fast_bn::batch_norm_train(x, gamma, beta, eps, false)
    }

    fn batch_norm_train_relu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        if !fast_bn::covers(x, &[gamma, beta]) {
            let (y, stats) = CandleKernels.batch_norm_train(x, gamma, beta, eps)?;
            return Ok((self.relu(&y)?, stats));
        }
        fast_bn::batch_norm_train(x, gamma, beta, eps, true)
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
        fast_bn::batch_norm_eval(x, mean, var, gamma, beta, eps, false)
    }

    fn batch_norm_eval_relu(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        if !fast_bn::covers(x, &[mean, var, gamma, beta]) {
            return self.relu(&CandleKernels.batch_norm_eval(x, mean, var, gamma, beta, eps)?);
        }
        fast_bn::batch_norm_eval(x, mean, var, gamma, beta, eps, true)
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

/// `y + bias` along dimension 1 of an NCHW `y` or an `(N, C)` one (a layer's bias): by
/// [`fast_act::add_bias`] where it covers the tensors, else candle's broadcast.
fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) if fast_act::covers_bias(&y, b) => fast_act::add_bias(&y, b),
        Some(b) if y.rank() == 2 => Ok(y.broadcast_add(b)?),
        _ => super::add_channel_bias(y, bias),
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
    fn chunk(&self, bf16: bool) -> usize {
        let target = if bf16 { COLS_TARGET_BF16 } else { COLS_TARGET };
        let budget = target.max(self.o * self.k()).min(COLS_MAX);
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

/// Output planes up to this many pixels are unfolded through a [`gather_table`]: for them a
/// copy per row of the unfolded matrix cost more in calls than in copying (the 4x4 planes
/// of ResNet's last stage unfold 16 values per row).
const SMALL_PLANE: usize = 64;

/// For output planes of at most [`SMALL_PLANE`] pixels, the input-plane index each unfolded
/// element reads: entry `t * L + o` for kernel tap `t` (row-major over the kernel) and output
/// pixel `o`, `u32::MAX` where it falls in the padding.
pub(super) fn gather_table(g: &Geometry, max_pixels: usize) -> Option<Vec<u32>> {
    let l = g.l();
    if l == 0 || l > max_pixels || g.h * g.w >= u32::MAX as usize {
        return None;
    }
    let mut table = Vec::with_capacity(g.kh * g.kw * l);
    for i in 0..g.kh {
        for j in 0..g.kw {
            for r in 0..g.oh {
                for q in 0..g.ow {
                    let y = (r * g.stride + i * g.dilation)
                        .checked_sub(g.padding)
                        .filter(|&y| y < g.h);
                    let x = (q * g.stride + j * g.dilation)
                        .checked_sub(g.padding)
                        .filter(|&x| x < g.w);
                    table.push(match (y, x) {
                        (Some(y), Some(x)) => (y * g.w + x) as u32,
                        _ => u32::MAX,
                    });
                }
            }
        }
    }
    Some(table)
}

/// The rows `c * kh * kw..(c + 1) * kh * kw` (every tap of input channel `c`) of image
/// `image`'s unfolded matrix, through `table`: tap `t`'s `L` values into the `t`-th of `rows`.
fn gather_channel<'r>(
    x: &[f32],
    g: &Geometry,
    (image, c): (usize, usize),
    table: &[u32],
    rows: impl Iterator<Item = &'r mut [f32]>,
) {
    let hw = g.h * g.w;
    let plane = &x[(image * g.c + c) * hw..][..hw];
    for (idx, row) in table.chunks_exact(g.l()).zip(rows) {
        for (o, &i) in row.iter_mut().zip(idx) {
            *o = plane.get(i as usize).copied().unwrap_or(0.0);
        }
    }
}

/// Unfolds images `first..first + nb` of `x` (NCHW, contiguous) into `cols`, a `(K, nb * L)`
/// matrix, writing every element (padding as zeros), so `cols` may hold anything before.
/// `table` is the geometry's [`gather_table`].
fn im2col(x: &[f32], g: &Geometry, (first, nb): (usize, usize), table: Option<&[u32]>, cols: &mut [f32]) {
    let (l, kk) = (g.l(), g.kh * g.kw);
    if nb * l == 0 {
        return;
    }
    if let Some(table) = table {
        // Straight into the rows of `cols`: the rows of channel `c` are consecutive, image
        // `b`'s segment of each at `b * L`.
        let per_row = nb * l;
        for (c, rows) in cols.chunks_exact_mut(kk * per_row).enumerate() {
            for b in 0..nb {
                let segs = rows.chunks_exact_mut(per_row).map(|r| &mut r[b * l..][..l]);
                gather_channel(x, g, (first + b, c), table, segs);
            }
        }
        return;
    }
    for (row, dst) in cols.chunks_mut(nb * l).enumerate() {
        for (b, seg) in dst.chunks_mut(l).enumerate() {
            unfold_row(x, g, (first + b, row), seg);
        }
    }
}

/// As [`im2col`], but written as the bf16 product's packed right operand (`(K, nb L)` in
/// [`Panels`]: rows `2p` and `2p + 1` of each column as one pair, rounded to bf16), which the
/// product then reads where it is. Half the bytes of the f32 unfolding, and no packing pass.
/// `rows` is scratch space.
fn im2col_pairs(
    x: &[f32],
    g: &Geometry,
    (first, nb): (usize, usize),
    table: Option<&[u32]>,
    out: &mut Panels<'_>,
    rows: &mut Buf<f32>,
) {
    let (k, l, kk) = (g.k(), g.l(), g.kh * g.kw);
    if nb * l == 0 {
        return;
    }
    if let Some(table) = table {
        // Two channels at a time: their 2 kh kw rows start at an even row, so they make
        // whole pairs.
        let rows = take(rows, 2 * kk * l);
        for b in 0..nb {
            for c in (0..g.c).step_by(2) {
                let (lo, hi) = rows.split_at_mut(kk * l);
                gather_channel(x, g, (first + b, c), table, lo.chunks_exact_mut(l));
                if c + 1 < g.c {
                    gather_channel(x, g, (first + b, c + 1), table, hi.chunks_exact_mut(l));
                } else {
                    hi.fill(0.0);
                }
                let first_pair = c * kk / 2;
                let pairs = kk.min(k.div_ceil(2) - first_pair);
                for (q, two) in rows.chunks_exact(2 * l).take(pairs).enumerate() {
                    out.put(first_pair + q, b * l, &two[..l], &two[l..]);
                }
            }
        }
        return;
    }
    let (lo, hi) = take(rows, 2 * l).split_at_mut(l);
    for p in 0..k.div_ceil(2) {
        for b in 0..nb {
            unfold_row(x, g, (first + b, 2 * p), lo);
            if 2 * p + 1 < k {
                unfold_row(x, g, (first + b, 2 * p + 1), hi);
            } else {
                hi.fill(0.0);
            }
            out.put(p, b * l, lo, hi);
        }
    }
}

/// Row `row` (input channel, kernel row, kernel column) of the unfolded matrix for image
/// `image` of `x`, into `seg` (`L` values, every one written, padding as zeros).
fn unfold_row(x: &[f32], g: &Geometry, (image, row): (usize, usize), seg: &mut [f32]) {
    let (hw, kk) = (g.h * g.w, g.kh * g.kw);
    let (c, i, j) = (row / kk, (row % kk) / g.kw, row % g.kw);
    let (r_lo, r_hi) = g.valid(g.oh, g.h, i * g.dilation);
    let (q_lo, q_hi) = g.valid(g.ow, g.w, j * g.dilation);
    let col0 = j * g.dilation; // Input column of q = 0, before removing padding.
    let plane = &x[(image * g.c + c) * hw..][..hw];
    seg[..r_lo * g.ow].fill(0.0);
    seg[r_hi * g.ow..].fill(0.0);
    if g.stride == 1 && g.ow == g.w && r_lo < r_hi && q_lo < q_hi {
        // Output rows as long as input rows: output index `o` reads input index `o + shift`
        // for every valid pixel, so the valid span is one copy; the columns outside
        // `q_lo..q_hi`, copied from a neighbouring row, are then zeroed. Late layers have
        // planes of a few pixels, where a copy per output row was the cost.
        let (first_out, last_out) = (r_lo * g.ow + q_lo, (r_hi - 1) * g.ow + q_hi);
        let first_in = (r_lo + i * g.dilation - g.padding) * g.w + q_lo + col0 - g.padding;
        seg[first_out..last_out].copy_from_slice(&plane[first_in..first_in + (last_out - first_out)]);
        for out in seg[r_lo * g.ow..r_hi * g.ow].chunks_exact_mut(g.ow) {
            out[..q_lo].fill(0.0);
            out[q_hi..].fill(0.0);
        }
        return;
    }
    for r in r_lo..r_hi {
        let out = &mut seg[r * g.ow..][..g.ow];
        out[..q_lo].fill(0.0);
        out[q_hi..].fill(0.0);
        if q_lo == q_hi {
            continue;
        }
        let src = &plane[(r * g.stride + i * g.dilation - g.padding) * g.w..][..g.w];
        if g.stride == 1 {
            let start = q_lo + col0 - g.padding;
            out[q_lo..q_hi].copy_from_slice(&src[start..start + (q_hi - q_lo)]);
        } else {
            let src = src[q_lo * g.stride + col0 - g.padding..].iter().step_by(g.stride);
            out[q_lo..q_hi].iter_mut().zip(src).for_each(|(o, &v)| *o = v);
        }
    }
}

/// Folds a `(K, nb * L)` matrix onto `dx`, images `0..nb` (NCHW), overwriting it: every
/// column entry is added onto the input pixel it was unfolded from (the adjoint of
/// [`im2col`]). `table` is the geometry's [`gather_table`]: small output planes scatter
/// through it instead of a loop per output row.
fn col2im(cols: &[f32], g: &Geometry, nb: usize, table: Option<&[u32]>, dx: &mut [f32]) {
    let (l, hw, kk) = (g.l(), g.h * g.w, g.kh * g.kw);
    dx.fill(0.0);
    if hw == 0 || l == 0 {
        return;
    }
    if let Some(table) = table {
        for (plane_idx, plane) in dx.chunks_mut(hw).enumerate() {
            let (b, c) = (plane_idx / g.c, plane_idx % g.c);
            for (t, idx) in table.chunks_exact(l).enumerate() {
                let seg = &cols[((c * kk + t) * nb + b) * l..][..l];
                for (&i, &v) in idx.iter().zip(seg) {
                    if let Some(d) = plane.get_mut(i as usize) {
                        *d += v;
                    }
                }
            }
        }
        return;
    }
    for (plane_idx, plane) in dx.chunks_mut(hw).enumerate() {
        let (b, c) = (plane_idx / g.c, plane_idx % g.c);
        for i in 0..g.kh {
            let (r_lo, r_hi) = g.valid(g.oh, g.h, i * g.dilation);
            for j in 0..g.kw {
                let (q_lo, q_hi) = g.valid(g.ow, g.w, j * g.dilation);
                if q_lo == q_hi {
                    continue;
                }
                let row = (c * g.kh + i) * g.kw + j;
                let seg = &cols[(row * nb + b) * l..][..l];
                let col0 = j * g.dilation;
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
                        let dst = dst[q_lo * g.stride + col0 - g.padding..]
                            .iter_mut()
                            .step_by(g.stride);
                        dst.zip(&src[q_lo..q_hi]).for_each(|(d, s)| *d += s);
                    }
                }
            }
        }
    }
}

/// Swaps the two outer axes of a `(a, b, inner)` array into `dst`, `(b, a, inner)`.
fn swap_outer(src: &[f32], a: usize, b: usize, inner: usize, dst: &mut [f32]) {
    if inner == 0 {
        return;
    }
    for (idx, out) in dst[..a * b * inner].chunks_mut(inner).enumerate() {
        let (j, i) = (idx / a, idx % a);
        out.copy_from_slice(&src[(i * b + j) * inner..][..inner]);
    }
}

/// Whether the weight gradient stores `cols^T` row-major before its gemm. With `cols^T` as a
/// strided view both operands run along the long inner dimension, and the `gemm` crate packs
/// the one it wants column-major by a strided transpose; an explicit tiled transpose is
/// cheaper where the unfolded rows are few and long. Measured with `bench_conv` (batch 32,
/// idle 2-core Zen 4): the 64-channel 32x32 3x3 layer (K = 576, L = 1024) 21.8 -> 9.9 ms
/// for the weight gradient; 128 channels at 16x16 (K = 1152, L = 256) no change; 512
/// channels at 4x4 (K = 4608) twice slower, small-cnn's 4x4 stride-2 layer (L = 49) a
/// little slower.
fn transpose_cols(g: &Geometry) -> bool {
    g.l() >= 512 && g.k() <= 1024
}

/// Writes the transpose of the row-major `(rows, cols)` matrix `src` into `dst` (`(cols,
/// rows)`, row-major), in square tiles so that reads and writes both stay in cache lines.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                let row = &src[r * cols..][c0..c1];
                for (c, &v) in (c0..c1).zip(row) {
                    dst[c * rows + r] = v;
                }
            }
        }
    }
}

/// A read-only matrix operand of [`matmul`]: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: cols,
        }
    }

    /// Whether a `rows x cols` matrix with these strides lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m, n) = lhs (m, k) @ rhs (k, n)`, or `dst += lhs @ rhs` when `accumulate`, with
/// `dst` row-major and contiguous, on `threads` threads of rayon's pool (1: the calling
/// thread only): the `gemm` crate's f32 kernel (AVX-512 where the CPU has it), or with
/// `bf16` the bf16 product of [`fast_bf16`] (the caller checks [`fast_bf16::available`]).
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    (threads, bf16): (usize, bool),
) -> candle_core::Result<()> {
    if dst.len() < m * n || !lhs.fits(m, k) || !rhs.fits(k, n) {
        candle_core::bail!(
            "fast-cpu matmul: ({m} x {k}) @ ({k} x {n}) does not fit its buffers ({}, {}, {})",
            lhs.data.len(),
            rhs.data.len(),
            dst.len()
        )
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return Ok(());
    }
    if bf16 {
        bf16_matmul((m, n, k), dst, accumulate, lhs, Rhs::Values(rhs), threads);
        return Ok(());
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the checks above keep every element the gemm reads or writes inside its slice:
    // `dst` holds the contiguous row-major `m x n` block (row stride `n`, column stride 1),
    // `lhs` and `rhs` hold their largest index `(rows - 1) * rs + (cols - 1) * cs` (`fits`);
    // strides are converted from `usize` values below those lengths, so they fit an `isize`.
    // `dst` is a unique borrow, so it aliases neither operand. With `read_dst` false the
    // gemm never reads `dst`; with it true `dst` is initialised memory of a `&mut [f32]`.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// [`fast_bf16::matmul`] with the rows of the result split over `threads` threads (each
/// product reads all of `rhs`); the caller has checked the shapes.
fn bf16_matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: Rhs<'_>,
    threads: usize,
) {
    if threads <= 1 || m == 0 || n == 0 {
        fast_bf16::matmul((m, n, k), dst, accumulate, lhs, rhs);
        return;
    }
    let rows = m.div_ceil(threads);
    dst[..m * n]
        .par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, part)| {
            let (first, count) = (i * rows, part.len() / n);
            let lhs = MatRef {
                data: &lhs.data[first * lhs.rs..],
                ..lhs
            };
            fast_bf16::matmul((count, n, k), part, accumulate, lhs, rhs);
        });
}

/// Scratch buffers one worker reuses from chunk to chunk.
#[derive(Default)]
struct Scratch {
    cols: Buf<f32>,
    prod: Buf<f32>,
    dyt: Buf<f32>,
    colst: Buf<f32>,
    /// The unfolded input as the bf16 product's panels (the bf16 forward).
    panels: Buf<u32>,
}

/// Element types with a pool of freed scratch allocations.
pub(super) trait Pooled: Copy + Default + Send + 'static {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
}

static F32_POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static U32_POOL: Mutex<Vec<Vec<u32>>> = Mutex::new(Vec::new());

impl Pooled for f32 {
    fn pool() -> &'static Mutex<Vec<Vec<f32>>> {
        &F32_POOL
    }
}

impl Pooled for u32 {
    fn pool() -> &'static Mutex<Vec<Vec<u32>>> {
        &U32_POOL
    }
}

/// Freed scratch allocations kept for reuse, per element type: at most this many...
const POOL_BUFFERS: usize = 16;

/// ... and at most this many bytes (unless a single buffer is larger), so a run's peak
/// scratch is not held for the rest of the process beyond this.
const POOL_BYTES: usize = 256 << 20;

/// A scratch vector whose allocation comes from, and goes back to, a pool of its element
/// type: kernel calls reuse the buffers of earlier calls instead of allocating and zeroing
/// megabytes per call (the unfolded chunks, the products, the packed panels).
#[derive(Default)]
pub(super) struct Buf<T: Pooled>(Vec<T>);

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
        pool.push(v);
        let bytes = |pool: &Vec<Vec<T>>| pool.iter().map(|v| v.capacity()).sum::<usize>() * size_of::<T>();
        while pool.len() > POOL_BUFFERS || (pool.len() > 1 && bytes(&pool) > POOL_BYTES) {
            // Keep the largest: a later call that fits in one of them allocates nothing.
            let smallest = (0..pool.len()).min_by_key(|&i| pool[i].capacity()).unwrap_or(0);
            pool.swap_remove(smallest);
        }
    }
}

impl<T: Pooled> Buf<T> {
    /// The filled part.
    pub(super) fn as_slice(&self) -> &[T] {
        &self.0
    }
}

/// The first `len` elements of `buf`, grown (never shrunk) to hold them; what they hold is
/// left over from earlier use (of this buffer or of a pooled one).
pub(super) fn take<T: Pooled>(buf: &mut Buf<T>, len: usize) -> &mut [T] {
    if buf.0.len() < len {
        if buf.0.capacity() == 0 {
            // The smallest pooled allocation that holds `len` elements, if any.
            let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
            let fit = (0..pool.len())
                .filter(|&i| pool[i].len() >= len)
                .min_by_key(|&i| pool[i].len());
            if let Some(i) = fit {
                buf.0 = pool.swap_remove(i);
            }
        }
        if buf.0.len() < len {
            buf.0.resize(len, T::default());
        }
    }
    &mut buf.0[..len]
}

/// How a convolution's batch is cut into chunks of images and spread over the threads.
///
/// The batch is first split into one group of consecutive images per thread, as even as
/// integers allow (sizes differ by at most one), then each group into the same number of
/// chunks of at most [`Geometry::chunk`] images, again as even as integers allow. Cutting the
/// batch into chunks of one fixed size first and dealing the chunks out left the threads
/// unequal: 32 images in chunks of 7 gave one thread 21 images and the other 11.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Images in the batch.
    n: usize,
    /// Groups of consecutive images run in parallel, one worker each; the gemm then runs on
    /// that worker alone. With one group, the chunks run in order and the gemm uses every
    /// thread.
    groups: usize,
    /// Chunks in each group (a group with fewer images than this has empty chunks).
    per_group: usize,
    /// Threads of each gemm.
    gemm_threads: usize,
}

impl Plan {
    /// One group per thread when the batch has at least as many images as threads: whole
    /// chunks on each thread need no synchronisation inside the gemm, and the weight
    /// gradient's long inner dimension (the batch) is split across threads, which the gemm
    /// itself does not do.
    fn new(g: &Geometry, bf16: bool) -> Self {
        Self::with_threads(g, bf16, rayon::current_num_threads())
    }

    /// The plan for `threads` threads.
    fn with_threads(g: &Geometry, bf16: bool, threads: usize) -> Self {
        let threads = threads.max(1);
        let n = g.n;
        let (groups, gemm_threads) = if n >= threads && threads > 1 {
            (threads, 1)
        } else {
            (1, threads)
        };
        Plan {
            n,
            groups,
            per_group: n.div_ceil(groups).div_ceil(g.chunk(bf16).max(1)),
            gemm_threads,
        }
    }

    /// The images of group `group`: `(first, count)`.
    fn group_images(&self, group: usize) -> (usize, usize) {
        let (lo, hi) = (group * self.n / self.groups, (group + 1) * self.n / self.groups);
        (lo, hi - lo)
    }

    /// The chunks of group `group`, as `(first, count)` of their images in batch order (the
    /// weight gradient's sum order, hence its rounding, depends on them, so they are the
    /// same for every run of the same shape); empty chunks are left out.
    fn group_chunks(&self, group: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (first, m) = self.group_images(group);
        let per = self.per_group;
        (0..per)
            .map(move |c| (first + c * m / per, (c + 1) * m / per - c * m / per))
            .filter(|&(_, nb)| nb > 0)
    }
}

/// Splits `data`, `per_image` elements per image, into the slices of each group of `plan`
/// (empty slices when `data` is empty: a gradient that is not wanted).
fn split_groups<'a>(data: &'a mut [f32], plan: &Plan, per_image: usize) -> Vec<&'a mut [f32]> {
    let mut rest = data;
    (0..plan.groups)
        .map(|group| {
            let len = if rest.is_empty() {
                0
            } else {
                plan.group_images(group).1 * per_image
            };
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            head
        })
        .collect()
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

/// The convolution `x (N, C, H, W) * w (O, C, kh, kw)` of geometry `g`, NCHW out: per chunk
/// of images, `Y (O, nb L) = W (O, K) @ cols (K, nb L)`, permuted to NCHW. With `keep`
/// (f32 only), the unfolded chunks are written into it, one after another in chunk order
/// (`K x nb L` each, `K x N L` in all), for the weight gradient to reuse.
fn forward(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    bf16: bool,
    keep: Option<&mut Buf<f32>>,
) -> candle_core::Result<Vec<f32>> {
    let (k, l) = (g.k(), g.l());
    let per_image = g.o * l;
    let mut y = vec![0f32; g.n * per_image];
    let plan = Plan::new(g, bf16);
    let table = gather_table(g, SMALL_PLANE);
    let parts = split_groups(&mut y, &plan, per_image);
    let kept = match keep {
        Some(all) if !bf16 => split_groups(take(all, k * g.n * l), &plan, k * l),
        _ => (0..plan.groups).map(|_| &mut [][..]).collect(),
    };
    parts.into_par_iter().zip(kept).enumerate().try_for_each(
        |(group, (ys, mut kept))| -> candle_core::Result<()> {
            let mut buf = Scratch::default();
            let mut offset = 0;
            for (first, nb) in plan.group_chunks(group) {
                let out = &mut ys[offset..offset + nb * per_image];
                // One image's (O, L) product is already its NCHW output: written in place.
                let (prod, permute_into) = if nb == 1 {
                    (out, None)
                } else {
                    (take(&mut buf.prod, g.o * nb * l), Some(out))
                };
                if bf16 {
                    let data = take(&mut buf.panels, Panels::len((k, nb * l)));
                    let mut panels = Panels::new(data, (k, nb * l));
                    im2col_pairs(x, g, (first, nb), table.as_deref(), &mut panels, &mut buf.cols);
                    let w = MatRef::rows(w, k);
                    let rhs = Rhs::Panels(&panels);
                    bf16_matmul((g.o, nb * l, k), prod, false, w, rhs, plan.gemm_threads);
                } else {
                    let cols = if kept.is_empty() {
                        take(&mut buf.cols, k * nb * l)
                    } else {
                        let (head, tail) = std::mem::take(&mut kept).split_at_mut(k * nb * l);
                        kept = tail;
                        head
                    };
                    im2col(x, g, (first, nb), table.as_deref(), cols);
                    let (w, cols) = (MatRef::rows(w, k), MatRef::rows(cols, nb * l));
                    matmul((g.o, nb * l, k), prod, false, w, cols, (plan.gemm_threads, false))?;
                }
                if let Some(out) = permute_into {
                    // (O, nb, L) -> (nb, O, L).
                    swap_outer(prod, g.o, nb, l, out);
                }
                offset += nb * per_image;
            }
            Ok(())
        },
    )?;
    Ok(y)
}

/// A linear layer's product `x (N, in) @ w^T` (`w`: `(out, in)`, PyTorch's layout) as a
/// candle custom op, both operands contiguous: the weight gradient is `dY^T @ x`, computed
/// in the weight's own layout, where candle's `matmul` of `w.t()` produced `x^T @ dY` and a
/// transposed copy of it (small-cnn's 100 x 1568 layer: 0.13 ms a step); each gradient only
/// when its tensor tracks one.
struct LinearOp;

/// `lhs (m, k) @ rhs (k, n)` as a new row-major `(m, n)` matrix, on all of rayon's threads.
fn product(
    (m, n, k): (usize, usize, usize),
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
) -> candle_core::Result<Vec<f32>> {
    let mut out = vec![0f32; m * n];
    matmul(
        (m, n, k),
        &mut out,
        false,
        lhs,
        rhs,
        (rayon::current_num_threads(), false),
    )?;
    Ok(out)
}

/// The elements of a contiguous 2-D f32 storage and its dimensions.
fn matrix<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (&[r, c], Some((a, b))) = (l.dims(), l.contiguous_offsets()) else {
        candle_core::bail!(
            "fast-cpu linear: expected a contiguous matrix, got {:?}",
            l.dims()
        )
    };
    Ok((&s.as_slice::<f32>()?[a..b], r, c))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "temper-fast-cpu-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((x, n, k), (w, o, k2)) = (matrix(s1, l1)?, matrix(s2, l2)?);
        if k != k2 {
            candle_core::bail!("fast-cpu linear: input of {k} features, weight of {k2}")
        }
        let y = product((n, o, k), MatRef::rows(x, k), MatRef::transposed(w, k))?;
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
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
        let ((n, k), o) = (x.dims2()?, weight.dim(0)?);
        let dy = grad_res.detach().contiguous()?;
        // `(m, n) = lhs @ rhs` as a new `(m, n)` tensor.
        let tensor = |(m, n, k): (usize, usize, usize), lhs: MatRef<'_>, rhs: MatRef<'_>| {
            Tensor::from_vec(product((m, n, k), lhs, rhs)?, (m, n), &Device::Cpu)
        };
        with_data(&dy, |dy| {
            // dX (N, in) = dY (N, out) @ W (out, in).
            let dx = need_dx
                .then(|| {
                    with_data(&weight.detach(), |w| {
                        tensor((n, k, o), MatRef::rows(dy, o), MatRef::rows(w, k))
                    })
                })
                .transpose()?;
            // dW (out, in) = dY^T (out, N) @ X (N, in).
            let dw = need_dw
                .then(|| {
                    with_data(&x.detach(), |xv| {
                        tensor((o, k, n), MatRef::transposed(dy, o), MatRef::rows(xv, k))
                    })
                })
                .transpose()?;
            Ok((dx, dw))
        })
    }
}

/// For a stride-1 convolution with a square kernel and at most "full" padding, the input
/// gradient as a convolution of `dY` with the flipped, transposed kernel: its geometry and
/// that kernel, `W' (C, O, kh, kw)` with `W'[c, o, i, j] = W[o, c, kh-1-i, kw-1-j]`. This
/// unfolds `dY` (copies) instead of folding a `K x nb L` product back with a scatter-add.
fn flipped(g: &Geometry, w: &[f32]) -> Option<(Geometry, Vec<f32>)> {
    let span = g.dilation * (g.kh.max(1) - 1);
    if g.stride != 1 || g.kh != g.kw || g.padding > span {
        return None;
    }
    let gt = Geometry {
        n: g.n,
        c: g.o,
        h: g.oh,
        w: g.ow,
        o: g.c,
        kh: g.kh,
        kw: g.kw,
        oh: g.h,
        ow: g.w,
        stride: 1,
        padding: span - g.padding,
        dilation: g.dilation,
    };
    let kk = g.kh * g.kw;
    let mut wt = vec![0f32; w.len()];
    if kk > 0 {
        // Through a tile of 16 x 16 (o, c) kernels held in L1, read and written in runs of
        // consecutive kernels: kernel by kernel, the reads strode C kk floats (18 KiB for a
        // 512-channel 3x3 layer), which fall on a few L1 sets, and missed every time (2% of
        // an attack step of preact-resnet18; the tiled loop without the copy did not help).
        const TILE: usize = 16;
        let mut tile = vec![0f32; TILE * TILE * kk];
        for o0 in (0..g.o).step_by(TILE) {
            let ob = TILE.min(g.o - o0);
            for c0 in (0..g.c).step_by(TILE) {
                let cb = TILE.min(g.c - c0);
                for oi in 0..ob {
                    let src = &w[((o0 + oi) * g.c + c0) * kk..][..cb * kk];
                    tile[oi * TILE * kk..][..cb * kk].copy_from_slice(src);
                }
                for ci in 0..cb {
                    let dst = &mut wt[((c0 + ci) * g.o + o0) * kk..][..ob * kk];
                    for (oi, taps) in dst.chunks_exact_mut(kk).enumerate() {
                        let src = &tile[(oi * TILE + ci) * kk..][..kk];
                        taps.iter_mut().zip(src.iter().rev()).for_each(|(t, &v)| *t = v);
                    }
                }
            }
        }
    }
    Some((gt, wt))
}

/// The convolution as a candle custom op on `(x, weight)`.
struct Conv2dOp {
    cfg: ConvCfg,
    /// Every product (forward and both gradients) in bf16 by [`fast_bf16`], which rounds
    /// `x`, the weight and `dY` to bf16 as it packs them.
    bf16: bool,
    /// Whether the forward keeps its unfolded input for the weight gradient (when it is at
    /// most [`KEEP_COLS_MAX`] elements): a weight that tracks a gradient, f32.
    keep_cols: bool,
    /// The kept unfolding and the plan it was cut with, taken by the backward pass.
    cols: Mutex<Option<(Plan, Buf<f32>)>>,
}

impl Conv2dOp {
    fn new(cfg: ConvCfg, bf16: bool) -> Self {
        Conv2dOp {
            cfg,
            bf16,
            keep_cols: false,
            cols: Mutex::new(None),
        }
    }

    fn keeping_cols(mut self, keep: bool) -> Self {
        self.keep_cols = keep && !self.bf16;
        self
    }
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
        let mut kept = Buf::default();
        let keep = self.keep_cols && g.k() * g.n * g.l() <= KEEP_COLS_MAX;
        let y = forward(
            &dense(s1, l1)?,
            &dense(s2, l2)?,
            &g,
            self.bf16,
            keep.then_some(&mut kept),
        )?;
        if keep {
            let mut cols = self.cols.lock().unwrap_or_else(|e| e.into_inner());
            *cols = Some((Plan::new(&g, self.bf16), kept));
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
        let bf16 = self.bf16;
        if !need_dx && !need_dw {
            return Ok((None, None));
        }
        let g = Geometry::new(x.dims(), weight.dims(), self.cfg)?;
        let (k, l, chw) = (g.k(), g.l(), g.c * g.h * g.w);
        let dev = Device::Cpu;
        // Contiguous once here: `with_data` below then borrows them without copying again.
        let (w, dy) = (weight.detach().contiguous()?, grad_res.detach().contiguous()?);
        // The input gradient as a convolution of dY where the geometry allows (stride 1);
        // otherwise below, folded back from `W^T @ dY` chunk by chunk.
        let flip = if need_dx {
            with_data(&w, |w| Ok(flipped(&g, w)))?
        } else {
            None
        };
        let fold_dx = need_dx && flip.is_none();
        let mut dx = match &flip {
            Some((gt, wt)) => with_data(&dy, |dy| forward(dy, wt, gt, bf16, None))?,
            None if fold_dx => vec![0f32; g.n * chw],
            None => Vec::new(),
        };
        // The input is read only for the weight gradient.
        let x = if need_dw {
            x.detach()
        } else {
            Tensor::zeros(0, DType::F32, &dev)?
        };
        let plan = Plan::new(&g, bf16);
        // The forward's unfolding when it kept one cut the same way (a second backward
        // through the same graph finds none and unfolds again).
        let kept = match self.cols.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some((cut, cols)) if need_dw && cut == plan && cols.as_slice().len() >= k * g.n * l => cols,
            _ => Buf::default(),
        };
        let kept = kept.as_slice();
        let table = if fold_dx || (need_dw && kept.is_empty()) {
            gather_table(&g, SMALL_PLANE)
        } else {
            None
        };
        let parts = split_groups(if fold_dx { &mut dx } else { &mut [] }, &plan, chw);
        // One partial weight gradient per group, summed below in group order, so the result
        // does not depend on which thread finishes first.
        let partials = if !(fold_dx || need_dw) {
            Vec::new()
        } else {
            with_data(&w, |w| {
                with_data(&dy, |dy| {
                    with_data(&x, |x| {
                        parts
                            .into_par_iter()
                            .enumerate()
                            .map(|(group, dxs)| -> candle_core::Result<Option<Vec<f32>>> {
                                let mut buf = Scratch::default();
                                let mut dw: Option<Vec<f32>> = None;
                                let mut offset = 0;
                                for (first, nb) in plan.group_chunks(group) {
                                    let cols_n = nb * l;
                                    // dY of the chunk as (O, nb * L): the columns in the
                                    // unfolded order.
                                    let dyt = if nb == 1 {
                                        // One image's dY is already (O, L).
                                        &dy[first * g.o * l..][..g.o * l]
                                    } else {
                                        let dyt = take(&mut buf.dyt, g.o * cols_n);
                                        swap_outer(&dy[first * g.o * l..], nb, g.o, l, dyt);
                                        dyt
                                    };
                                    let dyt = MatRef::rows(dyt, cols_n);
                                    if fold_dx {
                                        // dcols (K, nb L) = W^T @ dY, folded back onto dX.
                                        let dcols = take(&mut buf.prod, k * cols_n);
                                        let wt = MatRef::transposed(w, k);
                                        matmul(
                                            (k, cols_n, g.o),
                                            dcols,
                                            false,
                                            wt,
                                            dyt,
                                            (plan.gemm_threads, bf16),
                                        )?;
                                        col2im(
                                            dcols,
                                            &g,
                                            nb,
                                            table.as_deref(),
                                            &mut dxs[offset..offset + nb * chw],
                                        );
                                        offset += nb * chw;
                                    }
                                    if need_dw {
                                        // dW (O, K) += dY (O, nb L) @ cols^T.
                                        let cols = if kept.is_empty() {
                                            let cols = take(&mut buf.cols, k * cols_n);
                                            im2col(x, &g, (first, nb), table.as_deref(), cols);
                                            &*cols
                                        } else {
                                            &kept[k * first * l..][..k * cols_n]
                                        };
                                        let acc = dw.get_or_insert_with(|| vec![0f32; g.o * k]);
                                        // The bf16 product packs the strided view itself
                                        // (pairs adjacent in memory), so the transpose
                                        // would be a wasted pass: bench_conv bf16, 64
                                        // channels 32x32, 20.2-21.1 -> 18.6-19.5 ms.
                                        let colst = if transpose_cols(&g) && !bf16 {
                                            let colst = take(&mut buf.colst, k * cols_n);
                                            transpose(cols, k, cols_n, colst);
                                            MatRef::rows(colst, k)
                                        } else {
                                            MatRef::transposed(cols, cols_n)
                                        };
                                        matmul(
                                            (g.o, k, cols_n),
                                            acc,
                                            true,
                                            dyt,
                                            colst,
                                            (plan.gemm_threads, bf16),
                                        )?;
                                    }
                                }
                                Ok(dw)
                            })
                            .collect::<candle_core::Result<Vec<_>>>()
                    })
                })
            })?
        };
        let dx = if need_dx {
            Some(Tensor::from_vec(dx, (g.n, g.c, g.h, g.w), &dev)?)
        } else {
            None
        };
        let dw = if need_dw {
            let mut sum = vec![0f32; g.o * k];
            for part in partials.into_iter().flatten() {
                sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
            }
            Some(Tensor::from_vec(sum, (g.o, g.c, g.kh, g.kw), &dev)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of its own for the test (no kernel uses `u64` scratch), so tests running in
    /// parallel cannot take its buffers.
    static U64_POOL: Mutex<Vec<Vec<u64>>> = Mutex::new(Vec::new());

    impl Pooled for u64 {
        fn pool() -> &'static Mutex<Vec<Vec<u64>>> {
            &U64_POOL
        }
    }

    /// Every image lands in exactly one chunk, in batch order; the groups differ by at most
    /// one image; no chunk exceeds the geometry's chunk size; an empty batch has no chunks.
    #[test]
    fn plans_cover_the_batch_in_order_and_balance_the_threads() -> candle_core::Result<()> {
        let cfg = ConvCfg {
            stride: 1,
            padding: 1,
            dilation: 1,
            groups: 1,
        };
        for (n, c, h, o) in [
            (32, 64, 32, 64),
            (128, 64, 32, 64),
            (33, 16, 14, 32),
            (7, 3, 8, 4),
            (1, 16, 8, 8),
            (0, 4, 8, 4),
        ] {
            let g = Geometry::new(&[n, c, h, h], &[o, c, 3, 3], cfg)?;
            for threads in 1..=5 {
                for bf16 in [false, true] {
                    let plan = Plan::with_threads(&g, bf16, threads);
                    let mut next = 0;
                    let mut sizes = Vec::new();
                    for group in 0..plan.groups {
                        let (first, count) = plan.group_images(group);
                        assert_eq!(first, next, "n {n} threads {threads} group {group}");
                        for (start, nb) in plan.group_chunks(group) {
                            assert_eq!(start, next);
                            assert!(
                                nb >= 1 && nb <= g.chunk(bf16),
                                "chunk of {nb} > {}",
                                g.chunk(bf16)
                            );
                            next += nb;
                        }
                        assert_eq!(next, first + count);
                        sizes.push(count);
                    }
                    assert_eq!(next, n, "n {n} threads {threads}");
                    let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
                    assert!(hi.zip(lo).is_none_or(|(h, l)| h - l <= 1), "{sizes:?}");
                    assert_eq!(plan.groups > 1, n >= threads && threads > 1);
                }
            }
        }
        Ok(())
    }

    /// A dropped scratch buffer is reused by the next one that fits (no new allocation), and
    /// the pool stays within its count and byte bounds.
    #[test]
    fn scratch_buffers_are_reused_and_the_pool_is_bounded() {
        let len = 3 * 1024 * 1024 + 17;
        let first = {
            let mut a: Buf<u64> = Buf::default();
            take(&mut a, len)[0] = 7;
            a.0.as_ptr() as usize
        };
        let mut b: Buf<u64> = Buf::default();
        let got = take(&mut b, len - 5);
        assert_eq!(got.len(), len - 5);
        assert_eq!(
            b.0.as_ptr() as usize,
            first,
            "the pooled allocation was not reused"
        );
        drop(b);
        // Many buffers alive at once, then dropped: the pool keeps at most POOL_BUFFERS of
        // them, and at most POOL_BYTES (the 24 MiB one and fifteen small ones fit).
        let many: Vec<Buf<u64>> = (0..2 * POOL_BUFFERS)
            .map(|i| {
                let mut v: Buf<u64> = Buf::default();
                take(&mut v, 1000 + i);
                v
            })
            .collect();
        drop(many);
        let pool = u64::pool().lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(pool.len(), POOL_BUFFERS);
        let bytes: usize = pool.iter().map(|v| v.capacity() * 8).sum();
        assert!(bytes <= POOL_BYTES);
        // Past the byte bound: the smallest buffers go first, the largest one stays.
        drop(pool);
        let huge: Vec<Buf<u64>> = (0..2)
            .map(|_| {
                let mut v: Buf<u64> = Buf::default();
                take(&mut v, POOL_BYTES / 8 - 1);
                v
            })
            .collect();
        drop(huge);
        let pool = u64::pool().lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(pool.len(), 1, "{} buffers kept", pool.len());
    }
}
