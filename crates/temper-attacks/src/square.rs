//! The Square attack (Andriushchenko et al. 2020), L-inf and L2: a score-based random search
//! that needs no gradient, so gradient masking cannot stop it.
//!
//! As in the AutoAttack reference (`square.py`). L-inf: the start is vertical stripes of
//! `±eps`; each query changes one random square window of the current best point to `x ± eps`
//! (one sign per channel). L2: the start is a grid of square blocks, each a signed
//! "pseudo-Gaussian" bump (nested rectangles weighted `1/k²`, positive on one half, negative
//! on the other); each query replaces one random window by such a bump plus the window's
//! current direction, moves the perturbation mass of a second random window into it, and
//! rescales the whole perturbation to norm eps. Either way a change is kept if it lowers the
//! margin `z_y - max_{j≠y} z_j` or misclassifies, and the square's side shrinks with the
//! reference's p-schedule. Every sample of the batch shares the windows of a query, as in the
//! reference.

use crate::apgd::Assembly;
use crate::error::param;
use crate::loss::LossKind;
use crate::norm::{expand, per_sample_l2};
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::Tensor;
use rand::Rng as _;
use temper_core::seed::Rng;
use temper_core::{Classifier, Mode, ModeGuard};

/// Unchecked Square hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SquareParams {
    /// Threat model: L-inf or L2.
    pub norm: Norm,
    /// Budget in pixel units.
    pub eps: f64,
    /// Queries per sample and restart.
    pub queries: usize,
    /// The fraction of pixels the first squares cover.
    pub p_init: f64,
    /// Runs on the samples still unbroken.
    pub restarts: usize,
    /// Stretch the p-schedule (written for 10,000 queries) to `queries`; AutoAttack runs
    /// without (the reference's `resc_schedule=False`).
    pub rescale_schedule: bool,
}

impl Default for SquareParams {
    /// AutoAttack's Square: L-inf 8/255, 5000 queries, p_init 0.8, one run, no rescaling.
    fn default() -> Self {
        SquareParams {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            queries: 5000,
            p_init: 0.8,
            restarts: 1,
            rescale_schedule: false,
        }
    }
}

impl SquareParams {
    /// Validates: L-inf or L2, `eps >= 0`, `queries >= 1`, `0 < p_init <= 1`, `restarts >= 1`.
    pub fn check(self) -> Result<Square> {
        if self.norm == Norm::L1 {
            return Err(param(
                "norm",
                "the Square attack is implemented for linf and l2, not l1",
            ));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(param("eps", format!("{} must be finite and >= 0", self.eps)));
        }
        if self.queries == 0 {
            return Err(param("queries", "must be at least 1"));
        }
        if !(self.p_init > 0.0 && self.p_init <= 1.0) {
            return Err(param("p_init", format!("{} must be in (0, 1]", self.p_init)));
        }
        if self.restarts == 0 {
            return Err(param("restarts", "must be at least 1"));
        }
        Ok(Square(self))
    }
}

/// A validated Square attack.
#[derive(Debug, Clone, Copy)]
pub struct Square(SquareParams);

/// The fraction of pixels a square covers at query `it`: the reference's schedule, halving
/// `p_init` at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (of 10,000; with
/// `rescale`, `it` is first mapped onto 10,000).
pub fn square_p(it: usize, queries: usize, p_init: f64, rescale: bool) -> f64 {
    let it = if rescale {
        (it as f64 / queries as f64 * 10000.0) as usize
    } else {
        it
    };
    let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
        .iter()
        .filter(|&&b| it > b)
        .count();
    p_init / f64::from(1u32 << halvings)
}

/// The reference's `eta_rectangles` (L2): an `x` by `y` block of nested rectangles around its
/// centre, the `k`-th weighted `1/k²`, scaled to norm 1 (empty when `x` or `y` is 0).
fn eta_rectangles(x: usize, y: usize) -> Vec<f32> {
    let mut delta = vec![0f32; x * y];
    if x == 0 || y == 0 {
        return delta;
    }
    let (xc, yc) = (x / 2 + 1, y / 2 + 1);
    let (mut c0, mut c1) = (xc as isize - 1, yc as isize - 1);
    for k in 0..xc.max(yc) {
        let side = 2 * k as isize + 1;
        let weight = 1.0 / ((k + 1) as f32).powi(2);
        for r in c0.max(0)..(c0 + side).min(x as isize) {
            for q in c1.max(0)..(c1 + side).min(y as isize) {
                delta[r as usize * y + q as usize] += weight;
            }
        }
        c0 -= 1;
        c1 -= 1;
    }
    let norm = delta.iter().map(|v| v * v).sum::<f32>().sqrt();
    delta.iter().map(|v| v / norm.max(1e-12)).collect()
}

/// The reference's `eta` (L2): an `s` by `s` bump, rectangles positive on the upper half and
/// negative on the lower, of norm 1, transposed with probability 1/2.
fn eta(s: usize, rng: &mut Rng) -> Vec<f32> {
    let mut delta = eta_rectangles(s / 2, s);
    delta.extend(eta_rectangles(s - s / 2, s).iter().map(|v| -v));
    let norm = delta.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let delta: Vec<f32> = delta.iter().map(|v| v / norm).collect();
    if rng.random::<f64>() > 0.5 {
        (0..s * s).map(|i| delta[(i % s) * s + i / s]).collect()
    } else {
        delta
    }
}

/// One random sign per sample and channel, `(n, c, 1, 1)`.
fn signs(n: usize, c: usize, dev: &candle_core::Device, rng: &mut Rng) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * c)
        .map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 })
        .collect();
    Ok(Tensor::from_vec(v, (n, c, 1, 1), dev)?)
}

/// `d` scaled to L2 norm 1 per sample (the reference's `normalize`).
fn unit_l2(d: &Tensor) -> Result<Tensor> {
    let norms = (per_sample_l2(d)? + 1e-12)?;
    Ok(d.broadcast_div(&expand(&norms, d.rank())?)?)
}

/// Per sample and channel, the L2 norm over the last two dimensions, `(n, c, 1, 1)`.
fn plane_l2(t: &Tensor) -> Result<Tensor> {
    Ok(t.sqr()?.sum_keepdim(3)?.sum_keepdim(2)?.sqrt()?)
}

impl Square {
    /// The parameters.
    pub fn params(&self) -> &SquareParams {
        &self.0
    }

    /// `m = -objective`: the margin the reference minimises; at most 0 means broken.
    fn margins(p: &mut Problem<'_>, x: &Tensor) -> Result<Vec<f32>> {
        let n = x.dim(0)? as u64;
        p.cost.queries += n;
        let logits = p.logits(x)?;
        Ok(p.objective(&logits, LossKind::CwMargin)?
            .neg()?
            .to_vec1::<f32>()?)
    }

    /// The reference's L2 start: a grid of `h/5`-sided blocks, each a bump with one random
    /// sign per sample and channel, scaled to norm eps.
    fn l2_start(&self, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let (n, ch, h, w) = x.dims4()?;
        let dev = x.device();
        let s = (h / 5).max(1);
        let start = (h.saturating_sub(5 * s)) / 2;
        let mut delta = x.zeros_like()?;
        let mut vh = start;
        for _ in 0..h / s {
            let mut vw = start;
            for _ in 0..w / s {
                if vh + s <= h && vw + s <= w {
                    let bump = Tensor::from_vec(eta(s, rng), (1, 1, s, s), dev)?;
                    let block = bump.broadcast_mul(&signs(n, ch, dev, rng)?)?;
                    let old = delta.narrow(2, vh, s)?.narrow(3, vw, s)?;
                    delta = delta.slice_assign(&[0..n, 0..ch, vh..vh + s, vw..vw + s], &(old + block)?)?;
                }
                vw += s;
            }
            vh += s;
        }
        Ok((x + (unit_l2(&delta)? * self.0.eps)?)?.clamp(0f32, 1f32)?)
    }

    /// The reference's L2 query at iteration `it` from the current best points `best` of the
    /// clean points `x`.
    fn l2_candidate(&self, x: &Tensor, best: &Tensor, it: usize, rng: &mut Rng) -> Result<Tensor> {
        let c = &self.0;
        let (n, ch, h, w) = x.dims4()?;
        let dev = x.device();
        let mut delta = (best - x)?;
        let frac = square_p(it, c.queries, c.p_init, c.rescale_schedule);
        let mut s = ((frac * (ch * h * w) as f64 / ch as f64).sqrt().round() as usize).max(3);
        if s.is_multiple_of(2) {
            s += 1;
        }
        let s = s.min(h.min(w));
        let corner = |rng: &mut Rng| {
            (
                (rng.random::<f64>() * (h - s) as f64) as usize,
                (rng.random::<f64>() * (w - s) as f64) as usize,
            )
        };
        let (vh, vw) = corner(rng);
        let (vh2, vw2) = corner(rng);
        let window =
            |t: &Tensor, r: usize, q: usize| -> Result<Tensor> { Ok(t.narrow(2, r, s)?.narrow(3, q, s)?) };
        let norm_window_1 = plane_l2(&window(&delta, vh, vw)?)?;
        let norm_image = expand(&per_sample_l2(&delta)?, 4)?;
        // The perturbation inside either window, per sample and channel.
        let mut mask = vec![0f32; h * w];
        for (r, q) in [(vh, vw), (vh2, vw2)] {
            for i in r..r + s {
                for j in q..q + s {
                    mask[i * w + j] = 1.0;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, h, w), dev)?;
        let norm_windows = plane_l2(&delta.broadcast_mul(&mask)?)?;
        let bump = Tensor::from_vec(eta(s, rng), (1, 1, s, s), dev)?;
        let fresh = bump.broadcast_mul(&signs(n, ch, dev, rng)?)?;
        let old = window(&delta, vh, vw)?.broadcast_div(&(norm_window_1 + 1e-12)?)?;
        let new = (fresh + old)?;
        // The window gets the budget left over by the rest of the image, plus the mass of
        // both windows.
        let room = ((norm_image.sqr()?.neg()? + c.eps * c.eps)?.relu()? / ch as f64)?;
        let size = (room + norm_windows.sqr()?)?.sqrt()?;
        let new = new
            .broadcast_div(&(plane_l2(&new)? + 1e-12)?)?
            .broadcast_mul(&size)?;
        let zeros = Tensor::zeros((n, ch, s, s), delta.dtype(), dev)?;
        delta = delta.slice_assign(&[0..n, 0..ch, vh2..vh2 + s, vw2..vw2 + s], &zeros)?;
        delta = delta.slice_assign(&[0..n, 0..ch, vh..vh + s, vw..vw + s], &new)?;
        Ok((x + (unit_l2(&delta)? * c.eps)?)?.clamp(0f32, 1f32)?)
    }

    /// The reference's L-inf query at iteration `it`: one window of the best points set to
    /// `x ± eps` (a sign per channel, shared by the batch).
    fn linf_candidate(&self, x: &Tensor, best: &Tensor, it: usize, rng: &mut Rng) -> Result<Tensor> {
        let c = &self.0;
        let eps = c.eps as f32;
        let (_, ch, h, w) = x.dims4()?;
        let features = ch * h * w;
        let frac = square_p(it, c.queries, c.p_init, c.rescale_schedule);
        let s = ((frac * features as f64 / ch as f64).sqrt().round() as usize).clamp(1, h.min(w));
        let vh = (rng.random::<f64>() * (h - s) as f64) as usize;
        let vw = (rng.random::<f64>() * (w - s) as f64) as usize;
        let mut window = vec![0f32; features];
        for k in 0..ch {
            let v = if rng.random_bool(0.5) {
                2.0 * eps
            } else {
                -2.0 * eps
            };
            for r in vh..vh + s {
                for q in vw..vw + s {
                    window[(k * h + r) * w + q] = v;
                }
            }
        }
        let window = Tensor::from_vec(window, (1, ch, h, w), x.device())?;
        Ok(best
            .broadcast_add(&window)?
            .maximum(&(x - c.eps)?)?
            .minimum(&(x + c.eps)?)?
            .clamp(0f32, 1f32)?)
    }

    /// One run on the rows `rows` of `p`; hands each row to `asm` when it breaks or at the
    /// end.
    fn run(&self, p: &mut Problem<'_>, rows: Vec<usize>, asm: &mut Assembly, rng: &mut Rng) -> Result<()> {
        let c = &self.0;
        let eps = c.eps as f32;
        let dims = p.x.dims().to_vec();
        let (ch, w) = (dims[1], dims[3]);
        let dev = p.x.device().clone();
        let mut act = rows;
        let mut sub = p.subset(&act)?;
        let mut best = match c.norm {
            Norm::L2 => self.l2_start(&sub.x, rng)?,
            _ => {
                // Vertical stripes: one sign per sample, channel and column.
                let stripes: Vec<f32> = (0..act.len() * ch * w)
                    .map(|_| if rng.random_bool(0.5) { eps } else { -eps })
                    .collect();
                let stripes = Tensor::from_vec(stripes, (act.len(), ch, 1, w), &dev)?;
                sub.x.broadcast_add(&stripes)?.clamp(0f32, 1f32)?
            }
        };
        let mut margin = Self::margins(&mut sub, &best)?;
        for it in 0..c.queries {
            // Hand over the broken rows and continue with the others only.
            let broken: Vec<usize> = (0..act.len()).filter(|&j| margin[j] <= 0.0).collect();
            if !broken.is_empty() {
                let keep: Vec<usize> = (0..act.len()).filter(|&j| margin[j] > 0.0).collect();
                let pick = |t: &Tensor, r: &[usize]| -> Result<Tensor> {
                    let idx =
                        Tensor::from_vec(r.iter().map(|&v| v as u32).collect::<Vec<_>>(), r.len(), &dev)?;
                    Ok(t.index_select(&idx, 0)?)
                };
                let gone: Vec<usize> = broken.iter().map(|&j| act[j]).collect();
                let loss: Vec<f32> = broken.iter().map(|&j| -margin[j]).collect();
                asm.take(&gone, pick(&best, &broken)?, &vec![true; gone.len()], &loss)?;
                if keep.is_empty() {
                    p.absorb(&sub);
                    return Ok(());
                }
                let kept_rows: Vec<usize> = keep.iter().map(|&j| act[j]).collect();
                best = pick(&best, &keep)?;
                margin = keep.iter().map(|&j| margin[j]).collect();
                p.absorb(&sub);
                sub = p.subset(&kept_rows)?;
                act = kept_rows;
            }
            let cand = match c.norm {
                Norm::L2 => self.l2_candidate(&sub.x, &best, it, rng)?,
                _ => self.linf_candidate(&sub.x, &best, it, rng)?,
            };
            let m_new = Self::margins(&mut sub, &cand)?;
            let take: Vec<bool> = m_new
                .iter()
                .zip(&margin)
                .map(|(&new, &old)| new < old || new <= 0.0)
                .collect();
            if take.iter().any(|&t| t) {
                best = crate::ops::choose_rows(&take, &cand, &best)?;
                for j in 0..take.len() {
                    if take[j] {
                        margin[j] = m_new[j];
                    }
                }
            }
        }
        let success: Vec<bool> = margin.iter().map(|&m| m <= 0.0).collect();
        let loss: Vec<f32> = margin.iter().map(|&m| -m).collect();
        p.absorb(&sub);
        asm.take(&act, best, &success, &loss)
    }
}

impl Attack for Square {
    fn name(&self) -> String {
        let c = &self.0;
        format!(
            "square-{}(eps={:.4}, queries={}, p_init={}, restarts={})",
            c.norm.name(),
            c.eps,
            c.queries,
            c.p_init,
            c.restarts
        )
    }

    fn norm(&self) -> Norm {
        self.0.norm
    }

    fn eps(&self) -> Option<f64> {
        Some(self.0.eps)
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        goal: Goal<'_>,
        rng: &mut Rng,
    ) -> Result<AttackOutput> {
        let _eval = ModeGuard::new(model, Mode::Eval);
        let mut p = Problem::new(model, x, y, goal)?;
        let clean = p.logits(x)?;
        let mut asm = Assembly::new(x, p.success(&clean)?)?;
        for _ in 0..self.0.restarts {
            let rows = asm.alive();
            if rows.is_empty() {
                break;
            }
            self.run(&mut p, rows, &mut asm, rng)?;
        }
        let adv = asm.finish()?;
        p.finish(adv, LossKind::CwMargin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_schedule_halves_at_the_reference_queries() {
        let p = |it| square_p(it, 5000, 0.8, false);
        assert_eq!(p(0), 0.8);
        assert_eq!(p(10), 0.8);
        assert_eq!(p(11), 0.4);
        assert_eq!(p(50), 0.4);
        assert_eq!(p(51), 0.2);
        assert_eq!(p(4001), 0.8 / 128.0);
        assert_eq!(p(8001), 0.8 / 512.0);
        // Rescaled to 1000 queries, query 100 is the reference's query 1000.
        assert_eq!(square_p(100, 1000, 0.8, true), 0.8 / 16.0);
        assert_eq!(square_p(101, 1000, 0.8, true), 0.8 / 32.0);
    }
}
