//! The Square attack (Andriushchenko et al. 2020), L-inf: a score-based random search that
//! needs no gradient, so gradient masking cannot stop it.
//!
//! As in the AutoAttack reference (`square.py`): the start is vertical stripes of `±eps`;
//! each query changes one random square window of the current best point to `x ± eps` (one
//! sign per channel), and keeps the change if it lowers the margin `z_y - max_{j≠y} z_j` or
//! misclassifies. The square's side shrinks with the reference's p-schedule. Every sample of
//! the batch shares the window and signs of a query, as in the reference.

use crate::apgd::Assembly;
use crate::error::param;
use crate::loss::LossKind;
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::Tensor;
use rand::Rng as _;
use temper_core::seed::Rng;
use temper_core::{Classifier, Mode, ModeGuard};

/// Unchecked Square hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SquareParams {
    /// Threat model (L-inf only for now).
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
    /// Validates: L-inf, `eps >= 0`, `queries >= 1`, `0 < p_init <= 1`, `restarts >= 1`.
    pub fn check(self) -> Result<Square> {
        if self.norm != Norm::Linf {
            return Err(param("norm", "the Square attack is implemented for linf only"));
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

    /// One run on the rows `rows` of `p`; hands each row to `asm` when it breaks or at the
    /// end.
    fn run(&self, p: &mut Problem<'_>, rows: Vec<usize>, asm: &mut Assembly, rng: &mut Rng) -> Result<()> {
        let c = &self.0;
        let eps = c.eps as f32;
        let dims = p.x.dims().to_vec();
        let (ch, h, w) = (dims[1], dims[2], dims[3]);
        let features = ch * h * w;
        let dev = p.x.device().clone();
        let mut act = rows;
        let mut sub = p.subset(&act)?;
        // Vertical stripes: one sign per sample, channel and column.
        let stripes: Vec<f32> = (0..act.len() * ch * w)
            .map(|_| if rng.random_bool(0.5) { eps } else { -eps })
            .collect();
        let stripes = Tensor::from_vec(stripes, (act.len(), ch, 1, w), &dev)?;
        let mut best = sub.x.broadcast_add(&stripes)?.clamp(0f32, 1f32)?;
        let mut margin = Self::margins(&mut sub, &best)?;
        let (mut lo, mut hi) = ((&sub.x - c.eps)?, (&sub.x + c.eps)?);
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
                lo = (&sub.x - c.eps)?;
                hi = (&sub.x + c.eps)?;
                act = kept_rows;
            }
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
            let window = Tensor::from_vec(window, (1, ch, h, w), &dev)?;
            let cand = best
                .broadcast_add(&window)?
                .maximum(&lo)?
                .minimum(&hi)?
                .clamp(0f32, 1f32)?;
            let m_new = Self::margins(&mut sub, &cand)?;
            let take: Vec<bool> = m_new
                .iter()
                .zip(&margin)
                .map(|(&new, &old)| new < old || new <= 0.0)
                .collect();
            if take.iter().any(|&t| t) {
                let m = crate::norm::mask_like(&take, &best)?;
                best = ((&cand * &m)? + (&best * (1.0 - &m)?)?)?;
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
