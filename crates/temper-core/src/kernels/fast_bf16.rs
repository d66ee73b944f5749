//! A bf16 matrix product for CPUs with AVX512-BF16: the products of `--precision bf16` at the
//! machine's bf16 rate instead of its f32 rate.
//!
//! `dst (m, n) (+)= lhs (m, k) @ rhs (k, n)` with both operands rounded to bf16 (nearest even,
//! the rounding of [`Precision::operand`](super::Precision::operand)) as they are packed, and
//! every product summed in f32 by `vdpbf16ps`, which multiplies two pairs of bf16 values per
//! f32 lane. On the development machine (AMD EPYC, Zen 4) one core runs 460 GFLOP/s of
//! `vdpbf16ps` against 228 GFLOP/s of f32 FMA, and packing to bf16 halves the operand traffic.
//!
//! The structure is the usual one of a packed gemm (BLIS): the inner dimension in blocks of
//! [`KC`] values, the right operand packed per block of [`NC`] columns into panels of [`NR`]
//! columns, the left operand per block of [`MC`] rows into panels of [`MR`] rows; a
//! micro-kernel keeps an `MR x NR` tile of the result in 24 registers while it walks one
//! panel pair. The packed layouts hold bf16 *pairs* along the inner dimension (one `u32`:
//! element `2p` in the low half, `2p + 1` in the high half), which is what `vdpbf16ps` reads;
//! an odd inner dimension is padded with zeros.
//!
//! Numerics: the result equals the f32 product of the rounded operands up to the order of the
//! f32 additions, except that `vdpbf16ps` treats subnormal inputs and results as zero (a bf16
//! subnormal is below 1.2e-38).

use super::fast_cpu::MatRef;

/// Rows of a micro-tile.
const MR: usize = 8;
/// Columns of a micro-tile: three vectors of 16 f32 lanes, so the tile is 24 accumulators,
/// enough independent sums to keep both of Zen 4's `vdpbf16ps` pipes busy.
const NR: usize = 48;
/// Inner dimension per block (an even number): a packed right panel, `KC / 2 * NR` pairs
/// (24 KiB), stays in the first-level cache while the micro-kernel sweeps the left block.
const KC: usize = 256;
/// Rows per packed left block (`MC * KC / 2` pairs, 128 KiB: second-level cache).
const MC: usize = 256;
/// Columns per packed right block, a multiple of [`NR`] (`NC * KC / 2` pairs, 480 KiB).
const NC: usize = 20 * NR;

/// Whether this CPU runs the bf16 product (AVX512F, AVX512BW and AVX512-BF16, detected at
/// run time).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bf16 bits of `v` rounded to nearest even, as the low 16 bits of a `u32`; NaN stays a
/// (quiet) NaN. The same rounding as `half::bf16::from_f32`, which candle's `to_dtype` uses,
/// and as `vcvtne2ps2bf16` (which also flushes subnormal inputs to zero, as `vdpbf16ps`
/// does with subnormal operands anyway).
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let x = v.to_bits();
    if x & 0x7fff_ffff > 0x7f80_0000 {
        (x >> 16) | 0x40
    } else {
        (x + 0x7fff + ((x >> 16) & 1)) >> 16
    }
}

/// One packed pair: `lo` (inner index `2p`) in the low half, `hi` (`2p + 1`) in the high half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// The right operand of [`matmul`].
#[derive(Clone, Copy)]
pub(super) enum Rhs<'a> {
    /// f32 values, rounded as they are packed.
    Values(MatRef<'a>),
    /// Values already rounded, paired and laid out as the micro-kernel reads them (written
    /// by [`Panels::put`]): the product packs nothing.
    Panels(&'a Panels<'a>),
}

/// A right operand `(k, n)` in the product's own layout: panel `q` of [`NR`] columns, pair
/// `p` (rows `2p` in the low half and `2p + 1` in the high half, zero past `k`), lane `t`
/// (column `q NR + t`, zero past `n`) at `data[(q pairs + p) NR + t]`. A block of the inner
/// dimension is then one contiguous stretch of each panel, so the product reads the panels
/// where they are.
pub(super) struct Panels<'a> {
    data: &'a mut [u32],
    pairs: usize,
    n: usize,
}

impl<'a> Panels<'a> {
    /// Values of `data` needed for a `(k, n)` operand.
    pub(super) fn len((k, n): (usize, usize)) -> usize {
        n.div_ceil(NR) * k.div_ceil(2) * NR
    }

    /// The operand `(k, n)` in `data` (at least [`Panels::len`] values), its padding lanes
    /// (columns `n..` of the last panel) zeroed; [`Panels::put`] writes the rest.
    ///
    /// # Panics
    /// Where `data` is too short.
    pub(super) fn new(data: &'a mut [u32], (k, n): (usize, usize)) -> Self {
        let len = Self::len((k, n));
        assert!(
            data.len() >= len,
            "fast-bf16 panels: {} values for {len}",
            data.len()
        );
        let pairs = k.div_ceil(2);
        let data = &mut data[..len];
        let (full, rest) = (n / NR, n % NR);
        if rest > 0 {
            for p in 0..pairs {
                data[(full * pairs + p) * NR + rest..][..NR - rest].fill(0);
            }
        }
        Panels { data, pairs, n }
    }

    /// Pair `p` of columns `col ..` (as many as `lo` holds): the pairs `(lo[t], hi[t])`,
    /// rounded to bf16.
    ///
    /// # Panics
    /// Where [`available`] is false, the slices differ in length, or the columns or the pair
    /// lie outside the operand.
    pub(super) fn put(&mut self, p: usize, col: usize, lo: &[f32], hi: &[f32]) {
        assert!(
            p < self.pairs && col + lo.len() <= self.n && hi.len() == lo.len(),
            "fast-bf16 panels: pair {p}, columns {col}..+{} outside the operand",
            lo.len()
        );
        let mut done = 0;
        while done < lo.len() {
            let (q, t) = ((col + done) / NR, (col + done) % NR);
            let run = (NR - t).min(lo.len() - done);
            let out = &mut self.data[(q * self.pairs + p) * NR + t..][..run];
            interleave(&lo[done..][..run], &hi[done..][..run], out);
            done += run;
        }
    }
}

/// `out[t]` = the pair `(lo[t], hi[t])`, each rounded to bf16.
///
/// # Panics
/// Where [`available`] is false, or the slices differ in length.
fn interleave(lo: &[f32], hi: &[f32], out: &mut [u32]) {
    assert!(available(), "fast-bf16: this CPU has no AVX512-BF16");
    assert!(
        lo.len() == out.len() && hi.len() == out.len(),
        "fast-bf16 interleave: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the target features `avx512::interleave` is compiled with
    // (asserted above), its only requirement beyond its (safe) signature.
    #[allow(unsafe_code)]
    unsafe {
        avx512::interleave(lo, hi, out)
    };
}

/// `dst (m, n) = lhs (m, k) @ rhs (k, n)`, or `dst += lhs @ rhs` when `accumulate`, `dst`
/// row-major and contiguous, in bf16 products with f32 sums, on the calling thread. The
/// caller checks the shapes against the buffers.
///
/// # Panics
/// Where [`available`] is false.
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: Rhs<'_>,
) {
    assert!(available(), "fast-bf16: this CPU has no AVX512-BF16");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has every target feature `avx512::matmul` is compiled with (asserted
    // above), which is its only requirement beyond those of its (safe) signature.
    #[allow(unsafe_code)]
    unsafe {
        avx512::matmul((m, n, k), dst, accumulate, lhs, rhs)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ((m, n, k), dst, accumulate, lhs, rhs);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::fast_cpu::{take, Buf};
    use super::{pair, MatRef, Rhs, KC, MC, MR, NC, NR};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// 16 pairs from 16 `lo` and 16 `hi` values: pair `t` is `(lo[t], hi[t])`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn interleave16(lo: &[f32], hi: &[f32], out: &mut [u32]) {
        assert!(lo.len() >= 16 && hi.len() >= 16 && out.len() >= 16);
        // SAFETY: the lengths asserted above cover the 64-byte unaligned loads and store.
        #[allow(unsafe_code)]
        unsafe {
            let packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi.as_ptr()), _mm512_loadu_ps(lo.as_ptr()));
            // Words 0..16 hold lo, 16..32 hi: word 2t takes lo[t], word 2t + 1 takes hi[t].
            let idx = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19,
                3, 18, 2, 17, 1, 16, 0,
            );
            let words = _mm512_permutexvar_epi16(idx, std::mem::transmute::<__m512bh, __m512i>(packed));
            _mm512_storeu_si512(out.as_mut_ptr().cast(), words);
        }
    }

    /// See [`super::interleave`]: 16 pairs at a time, in one target-feature function so
    /// that `interleave16` inlines (a call per 16 values showed in the profile).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn interleave(lo: &[f32], hi: &[f32], out: &mut [u32]) {
        let vectors = out.len() / 16 * 16;
        for ((lo, hi), out) in lo
            .chunks_exact(16)
            .zip(hi.chunks_exact(16))
            .zip(out.chunks_exact_mut(16))
        {
            interleave16(lo, hi, out);
        }
        for ((o, &l), &h) in out[vectors..].iter_mut().zip(&lo[vectors..]).zip(&hi[vectors..]) {
            *o = pair(l, h);
        }
    }

    /// 16 pairs from 32 consecutive values: lane `t` is the pair `(v[2t], v[2t + 1])`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pairs16(v: &[f32]) -> __m512i {
        assert!(v.len() >= 32);
        // SAFETY: the length asserted above covers the two 64-byte unaligned loads; the
        // transmute reinterprets 64 plain bytes.
        #[allow(unsafe_code)]
        unsafe {
            let packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(v[16..].as_ptr()), _mm512_loadu_ps(v.as_ptr()));
            std::mem::transmute::<__m512bh, __m512i>(packed)
        }
    }

    /// Stores the 16 lanes of `v` at `out[..16]`.
    #[target_feature(enable = "avx512f")]
    fn store16(v: __m512i, out: &mut [u32]) {
        assert!(out.len() >= 16);
        // SAFETY: the length asserted above covers the 64-byte unaligned store.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_storeu_si512(out.as_mut_ptr().cast(), v)
        };
    }

    /// Stores lanes 0..8 of `v` at `lo[..8]` and lanes 8..16 at `hi[..8]`.
    #[target_feature(enable = "avx512f")]
    fn store8x2(v: __m512i, lo: &mut [u32], hi: &mut [u32]) {
        assert!(lo.len() >= 8 && hi.len() >= 8);
        // SAFETY: the lengths asserted above cover the two 32-byte unaligned stores.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_si256(lo.as_mut_ptr().cast(), _mm512_castsi512_si256(v));
            _mm256_storeu_si256(hi.as_mut_ptr().cast(), _mm512_extracti64x4_epi64::<1>(v));
        }
    }

    /// The 16 x 16 transpose of 32-bit lanes: lane `j` of `r[i]` moves to lane `i` of
    /// `r[j]`, in four rounds of in-register shuffles (pairs of lanes, pairs of pairs, then
    /// 128-bit quarters twice).
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(r: &mut [__m512i; 16]) {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for b in (0..16).step_by(4) {
            r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        for b in [0, 8] {
            for i in 0..4 {
                t[b + i] = _mm512_shuffle_i32x4::<0x88>(r[b + i], r[b + 4 + i]);
                t[b + 4 + i] = _mm512_shuffle_i32x4::<0xdd>(r[b + i], r[b + 4 + i]);
            }
        }
        for i in 0..8 {
            r[i] = _mm512_shuffle_i32x4::<0x88>(t[i], t[8 + i]);
            r[8 + i] = _mm512_shuffle_i32x4::<0xdd>(t[i], t[8 + i]);
        }
    }

    /// The pairs `p .. p + 16` of 16 lines, each 32 consecutive values from `data[start]`
    /// (`start` from `line(t)`, `t < 16`), transposed: `r[u]` holds pair `p + u` of every
    /// line, line `t` in lane `t`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pairs16x16(data: &[f32], line: impl Fn(usize) -> usize) -> [__m512i; 16] {
        let mut r = [_mm512_setzero_si512(); 16];
        for (t, r) in r.iter_mut().enumerate() {
            *r = pairs16(&data[line(t)..]);
        }
        transpose16(&mut r);
        r
    }

    /// Packs the line `data[base + c * step]`, `c` in `ks`, as pairs into one panel of
    /// `width` lanes: pair `p` at `panel[p * width + lane]` for `p >= from` (the pairs before
    /// it are packed already), zero past `ks`. A contiguous line (`step == 1`) converts 16
    /// pairs at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_line(
        data: &[f32],
        (base, step): (usize, usize),
        (ks, from): (Range<usize>, usize),
        panel: &mut [u32],
        (lane, width): (usize, usize),
    ) {
        let kp = ks.len().div_ceil(2);
        let mut p = from;
        if step == 1 {
            let line = &data[base..];
            let mut pairs = [0u32; 16];
            while 2 * p + 32 <= ks.len() {
                store16(pairs16(&line[ks.start + 2 * p..]), &mut pairs);
                for (t, &v) in pairs.iter().enumerate() {
                    panel[(p + t) * width + lane] = v;
                }
                p += 16;
            }
        }
        let at = |c: usize| if c < ks.end { data[base + c * step] } else { 0.0 };
        for p in p..kp {
            let c = ks.start + 2 * p;
            panel[p * width + lane] = pair(at(c), at(c + 1));
        }
    }

    /// Packs rows `rows` and inner indices `ks` of `a` into panels of [`MR`] rows: panel
    /// `q`, pair `p`, row `i` at `out[(q * kp + p) * MR + i]`, zeros past the matrix.
    ///
    /// Two whole panels (16 rows) at a time take whole vectors where the layout allows: rows
    /// contiguous along the inner dimension (`cs == 1`: the weight, `dY`) convert 16 pairs
    /// of each of the 16 rows and transpose them in registers; columns contiguous along the
    /// rows (`rs == 1`: the transposed weight of a strided layer's input gradient) interleave
    /// two inner indices of the 16 rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_lhs(a: MatRef<'_>, rows: Range<usize>, ks: Range<usize>, out: &mut Buf<u32>) {
        let kp = ks.len().div_ceil(2);
        let panels = rows.len().div_ceil(MR);
        let out = take(out, panels * kp * MR);
        // Pairs of whole panels, and the pairs (inner index / 2) of each they fill.
        let twins = rows.len() / (2 * MR);
        let done = if a.cs == 1 {
            ks.len() / 32 * 16
        } else if a.rs == 1 {
            ks.len() / 2
        } else {
            0
        };
        if done > 0 {
            for (q, two) in out.chunks_exact_mut(2 * kp * MR).take(twins).enumerate() {
                let (lo, hi) = two.split_at_mut(kp * MR);
                let r0 = rows.start + 2 * q * MR;
                if a.cs == 1 {
                    for p in (0..done).step_by(16) {
                        let c = ks.start + 2 * p;
                        let r = pairs16x16(a.data, |t| (r0 + t) * a.rs + c);
                        for (u, &v) in r.iter().enumerate() {
                            store8x2(v, &mut lo[(p + u) * MR..], &mut hi[(p + u) * MR..]);
                        }
                    }
                } else {
                    let mut pairs = [0u32; 16];
                    for p in 0..done {
                        let c = ks.start + 2 * p;
                        let line = |c: usize| &a.data[r0 + c * a.cs..][..16];
                        interleave16(line(c), line(c + 1), &mut pairs);
                        lo[p * MR..][..MR].copy_from_slice(&pairs[..MR]);
                        hi[p * MR..][..MR].copy_from_slice(&pairs[MR..]);
                    }
                }
            }
        }
        for (q, panel) in out.chunks_exact_mut(kp * MR).enumerate() {
            let valid = MR.min(rows.end - rows.start - q * MR);
            if valid < MR {
                panel.fill(0);
            }
            let from = if q < 2 * twins { done } else { 0 };
            for i in 0..valid {
                let r = rows.start + q * MR + i;
                pack_line(a.data, (r * a.rs, a.cs), (ks.clone(), from), panel, (i, MR));
            }
        }
    }

    /// Packs inner indices `ks` and columns `cols` of `b` into panels of [`NR`] columns:
    /// panel `q`, pair `p`, column `j` at `out[(q * kp + p) * NR + j]`, zeros past the matrix.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_rhs(b: MatRef<'_>, ks: Range<usize>, cols: Range<usize>, out: &mut Buf<u32>) {
        let kp = ks.len().div_ceil(2);
        let panels = cols.len().div_ceil(NR);
        let out = take(out, panels * kp * NR);
        for (q, panel) in out.chunks_exact_mut(kp * NR).enumerate() {
            let j0 = cols.start + q * NR;
            let width = NR.min(cols.end - j0);
            if width < NR {
                panel.fill(0);
            }
            if b.cs == 1 && width == NR {
                // Rows contiguous along the columns (the unfolded input): two rows make 16
                // pairs at a time.
                for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    let c = ks.start + 2 * p;
                    let lo = &b.data[c * b.rs + j0..][..NR];
                    if c + 1 < ks.end {
                        let hi = &b.data[(c + 1) * b.rs + j0..][..NR];
                        for t in (0..NR).step_by(16) {
                            interleave16(&lo[t..], &hi[t..], &mut dst[t..]);
                        }
                    } else {
                        dst.iter_mut().zip(lo).for_each(|(d, &l)| *d = pair(l, 0.0));
                    }
                }
                continue;
            }
            // Columns contiguous along the inner dimension (`rs == 1`: the transposed unfolded
            // input of the weight gradient): 16 columns x 16 pairs at a time, transposed in
            // registers, so the panel takes whole vectors instead of single values.
            let (groups, done) = if b.rs == 1 {
                (width / 16, ks.len() / 32 * 16)
            } else {
                (0, 0)
            };
            for jj in (0..groups * 16).step_by(16) {
                for p in (0..done).step_by(16) {
                    let c = ks.start + 2 * p;
                    let r = pairs16x16(b.data, |t| (j0 + jj + t) * b.cs + c);
                    for (u, &v) in r.iter().enumerate() {
                        store16(v, &mut panel[(p + u) * NR + jj..]);
                    }
                }
            }
            for j in 0..width {
                let from = if j < groups * 16 { done } else { 0 };
                pack_line(
                    b.data,
                    ((j0 + j) * b.cs, b.rs),
                    (ks.clone(), from),
                    panel,
                    (j, NR),
                );
            }
        }
    }

    /// See [`super::matmul`].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn matmul(
        (m, n, k): (usize, usize, usize),
        dst: &mut [f32],
        accumulate: bool,
        lhs: MatRef<'_>,
        rhs: Rhs<'_>,
    ) {
        if let Rhs::Panels(p) = rhs {
            assert!(
                p.n == n && p.pairs == k.div_ceil(2),
                "fast-bf16: a ({k}, {n}) product given panels of {} pairs and {} columns",
                p.pairs,
                p.n
            );
        }
        let (mut lpack, mut rpack) = (Buf::default(), Buf::default());
        let mut tile = [0f32; MR * NR];
        if k == 0 && !accumulate {
            dst[..m * n].fill(0.0);
        }
        for n0 in (0..n).step_by(NC) {
            let n1 = (n0 + NC).min(n);
            for k0 in (0..k).step_by(KC) {
                let ks = k0..(k0 + KC).min(k);
                let kp = ks.len().div_ceil(2);
                let rpanels = (n1 - n0).div_ceil(NR);
                if let Rhs::Values(b) = rhs {
                    pack_rhs(b, ks.clone(), n0..n1, &mut rpack);
                }
                // Panel `qj` of the block: packed above, or where the operand has it (`n0`
                // is a multiple of NR, `k0` of 2).
                let rpanel = |qj: usize| -> &[u32] {
                    match rhs {
                        Rhs::Values(_) => &rpack.as_slice()[qj * kp * NR..][..kp * NR],
                        Rhs::Panels(p) => &p.data[((n0 / NR + qj) * p.pairs + k0 / 2) * NR..][..kp * NR],
                    }
                };
                for m0 in (0..m).step_by(MC) {
                    let m1 = (m0 + MC).min(m);
                    pack_lhs(lhs, m0..m1, ks.clone(), &mut lpack);
                    let llen = (m1 - m0).div_ceil(MR) * kp * MR;
                    for qj in 0..rpanels {
                        let rpanel = rpanel(qj);
                        let j0 = n0 + qj * NR;
                        let width = NR.min(n1 - j0);
                        for (qi, lpanel) in lpack.as_slice()[..llen].chunks_exact(kp * MR).enumerate() {
                            let i0 = m0 + qi * MR;
                            micro_kernel(lpanel, rpanel, &mut tile);
                            // The first block of the inner dimension writes the result
                            // (unless accumulating), the others add to it.
                            let assign = k0 == 0 && !accumulate;
                            for (i, row) in tile.chunks_exact(NR).take(MR.min(m1 - i0)).enumerate() {
                                let out = &mut dst[(i0 + i) * n + j0..][..width];
                                match (assign, <&mut [f32; NR]>::try_from(&mut *out)) {
                                    // Fixed-size copies compile to vector moves.
                                    (true, Ok(out)) => out.copy_from_slice(&row[..NR]),
                                    (true, Err(_)) => out.copy_from_slice(&row[..width]),
                                    (false, _) => out.iter_mut().zip(row).for_each(|(o, t)| *o += t),
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `tile (MR, NR) = lpanel^T @ rpanel` over the pairs of one packed panel pair, the
    /// tile in 24 registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn micro_kernel(lpanel: &[u32], rpanel: &[u32], tile: &mut [f32; MR * NR]) {
        let mut acc = [[_mm512_setzero_ps(); NR / 16]; MR];
        for (a, b) in lpanel.chunks_exact(MR).zip(rpanel.chunks_exact(NR)) {
            // SAFETY: `b` holds NR = 48 u32 values (`chunks_exact`): the three unaligned
            // 64-byte loads read b[0..16], b[16..32] and b[32..48]. `__m512i` and `__m512bh`
            // are both 64 plain bytes, so the transmutes only reinterpret them.
            #[allow(unsafe_code)]
            let bv: [__m512bh; NR / 16] = unsafe {
                [0, 16, 32].map(|t| {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b[t..].as_ptr().cast()))
                })
            };
            for (acc, &ai) in acc.iter_mut().zip(a) {
                // SAFETY: a reinterpretation of 64 plain bytes, as above.
                #[allow(unsafe_code)]
                let av = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(ai as i32)) };
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, bv);
                }
            }
        }
        for (row, acc) in tile.chunks_exact_mut(NR).zip(&acc) {
            for (t, &acc) in acc.iter().enumerate() {
                // SAFETY: `row` holds NR = 48 f32 values (`chunks_exact_mut`): the store
                // writes row[16 t..16 t + 16], t < 3.
                #[allow(unsafe_code)]
                unsafe {
                    _mm512_storeu_ps(row[16 * t..].as_mut_ptr(), acc)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `v` rounded to bf16 and back to f32.
    fn rounded(v: f32) -> f32 {
        f32::from_bits(bf16_bits(v) << 16)
    }

    #[test]
    fn rounding_is_the_one_candle_uses() -> candle_core::Result<()> {
        use candle_core::{DType, Device, Tensor};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut v: Vec<f32> = (0..4096).map(|_| rng.random_range(-1e3f32..1e3)).collect();
        v.extend([
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        // Ties: 1 + 2^-8 rounds down to 1 (even), 1 + 3 * 2^-8 rounds up.
        v.extend([1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)]);
        let candle = Tensor::new(v.as_slice(), &Device::Cpu)?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?;
        for (x, c) in v.iter().zip(candle.to_vec1::<f32>()?) {
            assert_eq!(rounded(*x).to_bits(), c.to_bits(), "{x}");
        }
        assert!(rounded(f32::NAN).is_nan());
        Ok(())
    }

    /// The f32 product of the bf16-rounded operands, summed in f64.
    fn reference((m, n, k): (usize, usize, usize), a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|c| {
                        let x = rounded(a.data[i * a.rs + c * a.cs]) * rounded(b.data[c * b.rs + j * b.cs]);
                        f64::from(x)
                    })
                    .sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn product_equals_f32_products_of_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Shapes across every edge: partial tiles, an odd inner dimension, several blocks of
        // KC, MC and NC; and every stride combination the convolution uses.
        for (m, n, k) in [
            (1, 1, 1),
            (3, 5, 7),
            (8, 32, 2),
            (9, 33, 257),
            (20, 1100, 30),
            (300, 40, 600),
            // Whole and partial 16 x 16 blocks of the vector packings: 16-row panel pairs
            // with a panel left over, 16-column groups with columns left over, 32-value runs
            // with an odd remainder.
            (40, 70, 101),
            (33, 64, 96),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1f32..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1f32..1.0)).collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let lhs = if ta {
                    MatRef {
                        data: &a,
                        rs: 1,
                        cs: m,
                    }
                } else {
                    MatRef {
                        data: &a,
                        rs: k,
                        cs: 1,
                    }
                };
                let rhs = if tb {
                    MatRef {
                        data: &b,
                        rs: 1,
                        cs: k,
                    }
                } else {
                    MatRef {
                        data: &b,
                        rs: n,
                        cs: 1,
                    }
                };
                let want = reference((m, n, k), lhs, rhs);
                let mut got = vec![f32::NAN; m * n];
                matmul((m, n, k), &mut got, false, lhs, Rhs::Values(rhs));
                let tol = 1e-5 * k as f32;
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= tol, "({m}, {n}, {k}) {ta} {tb}: {g} vs {w}");
                }
                // The same operand written as panels (rows by pairs, columns in uneven
                // stretches that cross panel boundaries) gives the same bits.
                let at = |c: usize, j: usize| {
                    if c < k {
                        rhs.data[c * rhs.rs + j * rhs.cs]
                    } else {
                        0.0
                    }
                };
                // Garbage first: every value must be written by `new` or `put`.
                let mut data = vec![u32::MAX; Panels::len((k, n)) + 3];
                let mut panels = Panels::new(&mut data, (k, n));
                for p in 0..k.div_ceil(2) {
                    let mut col = 0;
                    for stretch in [5, 50, 17].iter().cycle() {
                        let end = (col + stretch).min(n);
                        let lo: Vec<f32> = (col..end).map(|j| at(2 * p, j)).collect();
                        let hi: Vec<f32> = (col..end).map(|j| at(2 * p + 1, j)).collect();
                        panels.put(p, col, &lo, &hi);
                        col = end;
                        if col == n {
                            break;
                        }
                    }
                }
                let mut paired = vec![f32::NAN; m * n];
                matmul((m, n, k), &mut paired, false, lhs, Rhs::Panels(&panels));
                assert!(paired.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()));
                // Accumulating adds the product onto what is there.
                let mut acc = vec![1.5f32; m * n];
                matmul((m, n, k), &mut acc, true, lhs, Rhs::Values(rhs));
                for (g, w) in acc.iter().zip(&want) {
                    assert!(
                        (g - (w + 1.5)).abs() <= tol,
                        "({m}, {n}, {k}) accumulate: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn packing_rounds_every_operand_to_nearest_even() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // A product with the identity picks single operands (x * 1 plus zeros is exact), so
        // the result shows each packed value: the vector packing paths (rows of 32
        // consecutive values, and two rows interleaved) must round exactly as the scalar one.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let k = 64;
        let mut v: Vec<f32> = (0..k * 48).map(|_| rng.random_range(-4f32..4.0)).collect();
        for (i, tie) in [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            -(1.0 + 2f32.powi(-8)),
        ]
        .into_iter()
        .enumerate()
        {
            v[5 * i + 1] = tie;
        }
        let eye: Vec<f32> = (0..k * k)
            .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
            .collect();
        let want: Vec<u32> = v.iter().map(|&x| rounded(x).to_bits()).collect();
        // The left operand row-major (cs = 1), the identity on the right with rs = 1.
        let mut out = vec![0f32; k];
        let row = MatRef {
            data: &v[..k],
            rs: k,
            cs: 1,
        };
        matmul(
            (1, k, k),
            &mut out,
            false,
            row,
            Rhs::Values(MatRef {
                data: &eye,
                rs: 1,
                cs: k,
            }),
        );
        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want[..k]);
        // The identity on the left, the right operand row-major (cs = 1), 48 columns.
        let mut out = vec![0f32; k * 48];
        let rhs = MatRef {
            data: &v,
            rs: 48,
            cs: 1,
        };
        matmul(
            (k, 48, k),
            &mut out,
            false,
            MatRef {
                data: &eye,
                rs: k,
                cs: 1,
            },
            Rhs::Values(rhs),
        );
        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        // The operand on the left, 48 rows (three whole panel pairs), row-major and then
        // transposed (rs = 1), times the identity.
        let eye_rhs = Rhs::Values(MatRef {
            data: &eye,
            rs: k,
            cs: 1,
        });
        let want_t: Vec<u32> = (0..48 * k).map(|e| want[e / k + (e % k) * 48]).collect();
        for (rs, cs, want) in [(k, 1, &want), (1, 48, &want_t)] {
            let mut out = vec![0f32; 48 * k];
            matmul((48, k, k), &mut out, false, MatRef { data: &v, rs, cs }, eye_rhs);
            assert_eq!(&out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn the_register_transpose_is_a_transpose() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_storeu_si512};
            let m: Vec<u32> = (0..256).collect();
            // SAFETY: AVX512F is present (`available` above); each load and store moves 64
            // bytes inside a 16-element row of `m` or `out`.
            #[allow(unsafe_code)]
            let out = unsafe {
                let mut r: [__m512i; 16] =
                    std::array::from_fn(|i| _mm512_loadu_si512(m[16 * i..].as_ptr().cast()));
                avx512::transpose16(&mut r);
                let mut out = vec![0u32; 256];
                for (i, r) in r.iter().enumerate() {
                    _mm512_storeu_si512(out[16 * i..].as_mut_ptr().cast(), *r);
                }
                out
            };
            for i in 0..16 {
                for j in 0..16 {
                    assert_eq!(out[16 * i + j], m[16 * j + i], "({i}, {j})");
                }
            }
        }
    }
}
