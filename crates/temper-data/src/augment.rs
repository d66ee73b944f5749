//! Training-time augmentation on `u8` CHW images: random crop with zero or reflect padding,
//! horizontal flip and random-resized-crop, composed in order and driven by a seeded
//! generator.
//!
//! The semantics follow torchvision (`RandomCrop(size, padding, padding_mode)`,
//! `RandomHorizontalFlip(p)`, `RandomResizedCrop(size, scale, ratio)`), so recipes from papers
//! carry over. The random draws are made in a fixed order from the sample's own generator,
//! so a sample gets the same augmentation on every machine and under any thread schedule.
//!
//! ```
//! use temper_data::augment::{AugmentParams, PadMode};
//! let aug = AugmentParams::new()
//!     .random_crop(32, 4, PadMode::Reflect)
//!     .hflip(0.5)
//!     .check([3, 32, 32])?;
//! let img = vec![128u8; 3 * 32 * 32];
//! let mut rng = temper_core::seed::rng_with(0, "augment-example");
//! let out = aug.apply(&img, &mut rng);
//! assert_eq!(out.len(), 3 * 32 * 32);
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::random::{range_inclusive, unit};
use crate::{Error, Result};
use temper_core::seed::Rng;

/// How [`Op::RandomCrop`] fills the border it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    /// Black (zero) pixels, torchvision's default `constant` mode.
    Zero,
    /// Mirror the image without repeating the edge pixel (`reflect`, as in numpy).
    Reflect,
}

/// One augmentation step.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Pads every side by `padding`, then cuts a random `size` window out of the result.
    RandomCrop {
        /// Output `(height, width)`.
        size: (usize, usize),
        /// Pixels added on each side before cropping.
        padding: usize,
        /// How the added pixels are filled.
        mode: PadMode,
    },
    /// Mirrors the image left-right with probability `p`.
    HorizontalFlip {
        /// Probability of flipping, in `[0, 1]`.
        p: f64,
    },
    /// Cuts a random window of random area and aspect ratio and resizes it (bilinear) to
    /// `size`, the standard ImageNet training crop.
    RandomResizedCrop {
        /// Output `(height, width)`.
        size: (usize, usize),
        /// Range of the window's area as a fraction of the image's, e.g. `(0.08, 1.0)`.
        scale: (f64, f64),
        /// Range of the window's width/height ratio, e.g. `(3/4, 4/3)`.
        ratio: (f64, f64),
    },
}

/// An unchecked list of augmentation steps; [`AugmentParams::check`] turns it into an
/// [`Augment`] for a given input shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AugmentParams {
    /// The steps, applied in order.
    pub ops: Vec<Op>,
}

impl AugmentParams {
    /// No augmentation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a square [`Op::RandomCrop`].
    pub fn random_crop(mut self, size: usize, padding: usize, mode: PadMode) -> Self {
        self.ops.push(Op::RandomCrop {
            size: (size, size),
            padding,
            mode,
        });
        self
    }

    /// Appends an [`Op::HorizontalFlip`].
    pub fn hflip(mut self, p: f64) -> Self {
        self.ops.push(Op::HorizontalFlip { p });
        self
    }

    /// Appends a square [`Op::RandomResizedCrop`] with torchvision's default ranges
    /// (scale 0.08..1, ratio 3/4..4/3).
    pub fn random_resized_crop(mut self, size: usize) -> Self {
        self.ops.push(Op::RandomResizedCrop {
            size: (size, size),
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        });
        self
    }

    /// Appends any step.
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Validates every step against the shape `[C, H, W]` it will receive.
    pub fn check(self, input: [usize; 3]) -> Result<Augment> {
        if input.contains(&0) {
            return Err(Error::param(
                "augment input shape",
                format!("{input:?} has a zero dimension"),
            ));
        }
        let mut shape = input;
        let mut shapes = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            shapes.push(shape);
            let [c, h, w] = shape;
            shape = match *op {
                Op::RandomCrop { size, padding, mode } => {
                    if size.0 == 0 || size.1 == 0 {
                        return Err(Error::param("crop size", "must be at least 1"));
                    }
                    if size.0 > h + 2 * padding || size.1 > w + 2 * padding {
                        return Err(Error::param(
                            "crop size",
                            format!(
                                "{}x{} does not fit in a {h}x{w} image padded by {padding}",
                                size.0, size.1
                            ),
                        ));
                    }
                    if mode == PadMode::Reflect && (padding >= h || padding >= w) {
                        return Err(Error::param(
                            "padding",
                            format!("reflect padding {padding} needs an image larger than it, got {h}x{w}"),
                        ));
                    }
                    [c, size.0, size.1]
                }
                Op::HorizontalFlip { p } => {
                    if !(0.0..=1.0).contains(&p) {
                        return Err(Error::param("flip probability", format!("{p} is not in [0, 1]")));
                    }
                    shape
                }
                Op::RandomResizedCrop { size, scale, ratio } => {
                    if size.0 == 0 || size.1 == 0 {
                        return Err(Error::param("crop size", "must be at least 1"));
                    }
                    if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                        return Err(Error::param(
                            "scale",
                            format!("{scale:?} must satisfy 0 < min <= max <= 1"),
                        ));
                    }
                    if !(ratio.0 > 0.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                        return Err(Error::param(
                            "ratio",
                            format!("{ratio:?} must satisfy 0 < min <= max < inf"),
                        ));
                    }
                    [c, size.0, size.1]
                }
            };
        }
        Ok(Augment {
            ops: self.ops,
            shapes,
            input,
            output: shape,
        })
    }
}

/// A validated augmentation pipeline for images of one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    ops: Vec<Op>,
    shapes: Vec<[usize; 3]>,
    input: [usize; 3],
    output: [usize; 3],
}

impl Augment {
    /// The steps, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Shape `[C, H, W]` the pipeline accepts.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input
    }

    /// Shape `[C, H, W]` the pipeline produces.
    pub fn output_shape(&self) -> [usize; 3] {
        self.output
    }

    /// Applies every step to `img` (CHW, of [`Self::input_shape`]) and returns the result.
    ///
    /// An image of the wrong size is returned unchanged (the loader checks shapes up
    /// front, so this cannot happen there).
    pub fn apply(&self, img: &[u8], rng: &mut Rng) -> Vec<u8> {
        if img.len() != self.input.iter().product::<usize>() {
            return img.to_vec();
        }
        let mut cur = img.to_vec();
        let mut next = Vec::new();
        for (op, &shape) in self.ops.iter().zip(&self.shapes) {
            apply_op(op, &cur, shape, rng, &mut next);
            std::mem::swap(&mut cur, &mut next);
        }
        cur
    }
}

/// Applies one step to `src` of `shape`, writing the result to `dst`.
fn apply_op(op: &Op, src: &[u8], shape: [usize; 3], rng: &mut Rng, dst: &mut Vec<u8>) {
    let [c, h, w] = shape;
    dst.clear();
    match *op {
        Op::RandomCrop {
            size: (oh, ow),
            padding: p,
            mode,
        } => {
            let top = range_inclusive(rng, 0, h + 2 * p - oh);
            let left = range_inclusive(rng, 0, w + 2 * p - ow);
            // Coordinates are computed in the padded frame and mapped back, so no padded
            // copy of the image is ever built.
            let map = |v: isize, n: usize| -> Option<usize> {
                let n = n as isize;
                if (0..n).contains(&v) {
                    return Some(v as usize);
                }
                match mode {
                    PadMode::Zero => None,
                    PadMode::Reflect => {
                        let r = if v < 0 { -v } else { 2 * (n - 1) - v };
                        Some(r.clamp(0, n - 1) as usize)
                    }
                }
            };
            // The row and column maps are the same for every channel: compute them once, so
            // the inner loop is a plain gather.
            let cols: Vec<Option<usize>> = (0..ow)
                .map(|x| map((left + x) as isize - p as isize, w))
                .collect();
            let rows: Vec<Option<usize>> = (0..oh).map(|y| map((top + y) as isize - p as isize, h)).collect();
            dst.resize(c * oh * ow, 0);
            for (ch, out_plane) in dst.chunks_exact_mut(oh * ow).enumerate() {
                let plane = &src[ch * h * w..(ch + 1) * h * w];
                for (out_row, sy) in out_plane.chunks_exact_mut(ow).zip(&rows) {
                    let Some(sy) = sy else { continue };
                    let row = &plane[sy * w..(sy + 1) * w];
                    for (o, sx) in out_row.iter_mut().zip(&cols) {
                        if let Some(sx) = sx {
                            *o = row[*sx];
                        }
                    }
                }
            }
        }
        Op::HorizontalFlip { p } => {
            // The draw is made even when p is 0 or 1 so later steps see the same stream.
            let flip = unit(rng) < p;
            dst.extend_from_slice(src);
            if flip {
                for row in dst.chunks_exact_mut(w) {
                    row.reverse();
                }
            }
        }
        Op::RandomResizedCrop { size, scale, ratio } => {
            let (top, left, ch_, cw) = rrc_window(rng, h, w, scale, ratio);
            resize_bilinear(src, shape, (top, left, ch_, cw), size, dst);
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a window of random area and
/// aspect ratio, then the largest centred window within the ratio range.
pub(crate) fn rrc_window(
    rng: &mut Rng,
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * unit(rng));
        let aspect = (lr0 + (lr1 - lr0) * unit(rng)).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = range_inclusive(rng, 0, h - ch);
            let left = range_inclusive(rng, 0, w - cw);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        (((w as f64 / ratio.0).round() as usize).clamp(1, h), w)
    } else if in_ratio > ratio.1 {
        (h, ((h as f64 * ratio.1).round() as usize).clamp(1, w))
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Bilinear resize of the window `(top, left, height, width)` of `src` to `size`, with
/// half-pixel centres (PyTorch's `align_corners=False`), replacing the contents of `dst`.
pub(crate) fn resize_bilinear(
    src: &[u8],
    [c, h, w]: [usize; 3],
    (top, left, wh, ww): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    dst: &mut Vec<u8>,
) {
    let axis = |out: usize, n: usize, off: usize, full: usize| -> Vec<(usize, usize, f32)> {
        let s = n as f32 / out as f32;
        (0..out)
            .map(|i| {
                let f = ((i as f32 + 0.5) * s - 0.5).max(0.0);
                let i0 = (f.floor() as usize).min(n - 1);
                let i1 = (i0 + 1).min(n - 1);
                let t = f - i0 as f32;
                ((off + i0).min(full - 1), (off + i1).min(full - 1), t)
            })
            .collect()
    };
    let ys = axis(oh, wh, top, h);
    let xs = axis(ow, ww, left, w);
    dst.clear();
    dst.reserve(c * oh * ow);
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for &(y0, y1, ty) in &ys {
            for &(x0, x1, tx) in &xs {
                let a = f32::from(plane[y0 * w + x0]);
                let b = f32::from(plane[y0 * w + x1]);
                let cc = f32::from(plane[y1 * w + x0]);
                let d = f32::from(plane[y1 * w + x1]);
                let top_ = a + (b - a) * tx;
                let bot = cc + (d - cc) * tx;
                dst.push((top_ + (bot - top_) * ty).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use temper_core::seed::rng_with;

    /// A 1x4x4 image whose pixel values are their row-major positions.
    fn ramp() -> Vec<u8> {
        (0..16).collect()
    }

    #[test]
    fn flip_mirrors_rows() -> Result<()> {
        let aug = AugmentParams::new().hflip(1.0).check([1, 2, 3])?;
        let out = aug.apply(&[1, 2, 3, 4, 5, 6], &mut rng_with(0, "t"));
        assert_eq!(out, vec![3, 2, 1, 6, 5, 4]);
        let aug = AugmentParams::new().hflip(0.0).check([1, 2, 3])?;
        assert_eq!(
            aug.apply(&[1, 2, 3, 4, 5, 6], &mut rng_with(0, "t")),
            vec![1, 2, 3, 4, 5, 6]
        );
        Ok(())
    }

    #[test]
    fn zero_padded_crop_is_a_shifted_window() -> Result<()> {
        let aug = AugmentParams::new()
            .random_crop(4, 2, PadMode::Zero)
            .check([1, 4, 4])?;
        let img = ramp();
        let mut saw_shift = false;
        for s in 0..50 {
            let out = aug.apply(&img, &mut rng_with(s, "t"));
            // Every output pixel is either padding (0) or the source pixel shifted by one
            // common offset; find it from any non-zero pixel and check all of them.
            let pos = out.iter().position(|&v| v != 0);
            if let Some(p) = pos {
                let (oy, ox) = ((p / 4) as isize, (p % 4) as isize);
                let (sy, sx) = ((out[p] / 4) as isize, (out[p] % 4) as isize);
                let (dy, dx) = (sy - oy, sx - ox);
                saw_shift |= dy != 0 || dx != 0;
                for y in 0..4isize {
                    for x in 0..4isize {
                        let (yy, xx) = (y + dy, x + dx);
                        let want = if (0..4).contains(&yy) && (0..4).contains(&xx) {
                            (yy * 4 + xx) as u8
                        } else {
                            0
                        };
                        assert_eq!(out[(y * 4 + x) as usize], want, "seed {s}");
                    }
                }
            }
        }
        assert!(saw_shift);
        Ok(())
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() -> Result<()> {
        // A 1x1x3 row [a b c] reflect-padded by 2 is [c b a b c b a]; every 3-wide window of
        // it must appear for some seed.
        let aug = AugmentParams::new()
            .random_crop(3, 2, PadMode::Reflect)
            .then(Op::RandomCrop {
                size: (1, 3),
                padding: 0,
                mode: PadMode::Zero,
            })
            .check([1, 3, 3])?;
        let img = [1, 2, 3, 1, 2, 3, 1, 2, 3];
        let padded = [3, 2, 1, 2, 3, 2, 1];
        let mut seen = std::collections::BTreeSet::new();
        for s in 0..200 {
            let out = aug.apply(&img, &mut rng_with(s, "t"));
            assert!(padded.windows(3).any(|win| win == out.as_slice()), "{out:?}");
            seen.insert(out);
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        Ok(())
    }

    #[test]
    fn same_seed_same_result() -> Result<()> {
        let aug = AugmentParams::new()
            .random_crop(4, 1, PadMode::Reflect)
            .hflip(0.5)
            .random_resized_crop(3)
            .check([2, 4, 4])?;
        let img: Vec<u8> = (0..32).collect();
        let a = aug.apply(&img, &mut rng_with(9, "t"));
        let b = aug.apply(&img, &mut rng_with(9, "t"));
        assert_eq!(a, b);
        assert_eq!(a.len(), 2 * 3 * 3);
        assert_eq!(aug.output_shape(), [2, 3, 3]);
        Ok(())
    }

    #[test]
    fn bilinear_resize_of_a_constant_is_constant_and_identity_is_exact() {
        let mut out = Vec::new();
        resize_bilinear(&[9; 12], [1, 3, 4], (0, 0, 3, 4), (5, 7), &mut out);
        assert_eq!(out, vec![9; 35]);
        let img = ramp();
        resize_bilinear(&img, [1, 4, 4], (0, 0, 4, 4), (4, 4), &mut out);
        assert_eq!(out, img);
    }

    #[test]
    fn check_rejects_bad_steps() {
        let s = [3, 8, 8];
        assert!(AugmentParams::new()
            .random_crop(12, 1, PadMode::Zero)
            .check(s)
            .is_err());
        assert!(AugmentParams::new()
            .random_crop(8, 8, PadMode::Reflect)
            .check(s)
            .is_err());
        assert!(AugmentParams::new().hflip(1.5).check(s).is_err());
        assert!(AugmentParams::new()
            .random_crop(0, 0, PadMode::Zero)
            .check(s)
            .is_err());
        let bad_scale = Op::RandomResizedCrop {
            size: (4, 4),
            scale: (0.5, 0.2),
            ratio: (1.0, 1.0),
        };
        assert!(AugmentParams::new().then(bad_scale).check(s).is_err());
        assert!(AugmentParams::new()
            .random_crop(8, 4, PadMode::Zero)
            .check([3, 0, 8])
            .is_err());
    }
}
