//! FAB-T (Croce and Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
//! boundary attack"), targeted, L-inf: a minimum-norm attack whose result is then checked
//! against eps, as AutoAttack uses it.
//!
//! As in the reference (`fab_base.py`, `fab_projections.py`): towards each of the top-9 other
//! classes in turn, the decision boundary between the true class and the target is
//! linearised at the current point; the current point and the clean point are both projected
//! onto that hyperplane (inside the image box), and the next point mixes the two projections
//! (weight at most `alpha_max` on the clean one), overshooting by `eta`. Whenever the point is
//! adversarial and closer than the best so far it is kept, and the point is pulled back
//! towards the clean image by `beta`.

use crate::apgd::Assembly;
use crate::error::param;
use crate::loss::LossKind;
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::{Tensor, Var, D};
use temper_core::seed::Rng;
use temper_core::{Classifier, ForwardOpts, Mode, ModeGuard};

/// Unchecked FAB-T hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FabParams {
    /// Threat model (L-inf only for now).
    pub norm: Norm,
    /// The budget a result must respect to count.
    pub eps: f64,
    /// Iterations per target.
    pub steps: usize,
    /// Target classes: the most likely other classes, clamped to `classes - 1`.
    pub targets: usize,
    /// Largest weight of the clean point's projection in a step.
    pub alpha_max: f64,
    /// Overshoot of each projection.
    pub eta: f64,
    /// Pull-back towards the clean point after an adversarial step.
    pub beta: f64,
}

impl Default for FabParams {
    /// The reference's FAB-T in standard AutoAttack: 100 iterations, 9 targets,
    /// `alpha_max` 0.1, `eta` 1.05, `beta` 0.9.
    fn default() -> Self {
        FabParams {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            steps: 100,
            targets: 9,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
        }
    }
}

impl FabParams {
    /// Validates: L-inf, `eps >= 0`, `steps >= 1`, `targets >= 1`, `0 <= alpha_max <= 1`,
    /// `eta >= 1`, `0 < beta <= 1`.
    pub fn check(self) -> Result<Fab> {
        if self.norm != Norm::Linf {
            return Err(param("norm", "FAB-T is implemented for linf only"));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(param("eps", format!("{} must be finite and >= 0", self.eps)));
        }
        if self.steps == 0 {
            return Err(param("steps", "must be at least 1"));
        }
        if self.targets == 0 {
            return Err(param("targets", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.alpha_max) {
            return Err(param(
                "alpha_max",
                format!("{} must be in [0, 1]", self.alpha_max),
            ));
        }
        if !(self.eta.is_finite() && self.eta >= 1.0) {
            return Err(param("eta", format!("{} must be finite and >= 1", self.eta)));
        }
        if !(self.beta > 0.0 && self.beta <= 1.0) {
            return Err(param("beta", format!("{} must be in (0, 1]", self.beta)));
        }
        Ok(Fab(self))
    }
}

/// A validated FAB-T attack.
#[derive(Debug, Clone, Copy)]
pub struct Fab(FabParams);

/// The smallest L-inf step `d` that takes `t` onto the hyperplane `<w, x> = b` while staying in
/// the box `[0, 1]` (or as close as the box allows): the reference's `projection_linf` for
/// one point, a search over the coordinates sorted by how far they can move.
pub fn projection_linf(t: &[f32], w: &[f32], b: f32) -> Vec<f32> {
    let dim = t.len();
    let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
    let sign = if dot(w, t) - b >= 0.0 { 1.0 } else { -1.0 };
    let w: Vec<f32> = w.iter().map(|v| v * sign).collect();
    let b = b * sign;
    let a: Vec<f32> = w.iter().map(|&v| if v < 0.0 { 1.0 } else { 0.0 }).collect();
    let mut d: Vec<f32> = (0..dim)
        .map(|i| if w[i] != 0.0 { a[i] - t[i] } else { 0.0 })
        .collect();
    let p: Vec<f32> = (0..dim).map(|i| a[i] - t[i] * (2.0 * a[i] - 1.0)).collect();
    let mut indp: Vec<usize> = (0..dim).collect();
    indp.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let b = b - dot(&w, t);
    let b0 = dot(&w, &d);
    // Coordinates in decreasing order of p, with cumulative sums of |w| and of -w d.
    let mut s = Vec::with_capacity(dim);
    let mut sb = Vec::with_capacity(dim);
    let (mut cs, mut cb) = (0f32, 0f32);
    for &i in indp.iter().rev() {
        cs += w[i].abs();
        cb += -w[i] * d[i];
        s.push(cs);
        sb.push(cb + b0);
    }
    let last = dim - 1;
    let b2 = sb[last] - s[last] * p[indp[0]];
    let c_l = b - b2 > 0.0;
    let c2 = b - b0 > 0.0 && !c_l;
    if c_l {
        let lmbd = ((b - sb[last]) / -s[last]).max(0.0);
        for i in 0..dim {
            d[i] = (2.0 * a[i] - 1.0) * lmbd;
        }
    } else if c2 {
        let (mut lb, mut ub) = (0f32, last as f32);
        let iters = (dim as f64).log2().ceil() as usize;
        for _ in 0..iters {
            let mid = ((lb + ub) / 2.0).floor();
            let k = mid as usize;
            let cur = indp[last - k];
            let b2 = sb[k] - s[k] * p[cur];
            if b - b2 > 0.0 {
                lb = mid;
            } else {
                ub = mid;
            }
        }
        let k = lb as usize;
        let lmbd = ((b - sb[k]) / -s[k]).max(0.0);
        for i in 0..dim {
            d[i] = lmbd.min(d[i]) * a[i] + (-lmbd).max(d[i]) * (1.0 - a[i]);
        }
    }
    for i in 0..dim {
        if w[i] == 0.0 {
            d[i] = 0.0;
        }
    }
    d
}

const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

impl Fab {
    /// The parameters.
    pub fn params(&self) -> &FabParams {
        &self.0
    }

    /// One targeted run on every row of `p` towards `target`: per row, the closest
    /// adversarial point found (L-inf) and its distance, or `None`.
    fn run(&self, p: &mut Problem<'_>, target: &Tensor) -> Result<(Tensor, Vec<Option<f32>>)> {
        let c = &self.0;
        let n = p.n();
        let im2 = p.x.clone();
        let dims = im2.dims().to_vec();
        let dev = im2.device().clone();
        let x0 = im2.flatten_from(1)?.to_vec2::<f32>()?;
        let y_idx = p.y.unsqueeze(1)?;
        let t_idx = target.unsqueeze(1)?;
        let mut x1 = im2.clone();
        let mut best = im2.clone();
        let mut res: Vec<Option<f32>> = vec![None; n];
        for _ in 0..c.steps {
            // The linearised boundary between the true class and the target at x1.
            let v = Var::from_tensor(&x1)?;
            let logits = p.model.forward_opts(v.as_tensor(), EVAL)?;
            p.cost.forward += n as u64;
            p.cost.backward += n as u64;
            let df = (logits.gather(&t_idx, 1)? - logits.gather(&y_idx, 1)?)?.squeeze(1)?;
            let grads = df.sum_all()?.backward()?;
            let dg = grads
                .get(v.as_tensor())
                .cloned()
                .map_or_else(|| x1.zeros_like(), Ok)?;
            let df = df.to_vec1::<f32>()?;
            let w = dg.flatten_from(1)?.to_vec2::<f32>()?;
            let cur = x1.flatten_from(1)?.to_vec2::<f32>()?;
            let mut next = Vec::with_capacity(cur.len() * cur.first().map_or(0, Vec::len));
            for s in 0..n {
                let b = -df[s] + w[s].iter().zip(&cur[s]).map(|(a, b)| a * b).sum::<f32>();
                let d1 = projection_linf(&cur[s], &w[s], b);
                let d2 = projection_linf(&x0[s], &w[s], b);
                let size = |d: &[f32]| d.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-8);
                let (a1, a2) = (size(&d1), size(&d2));
                let alpha = (a1 / (a1 + a2)).max(0.0).min(c.alpha_max as f32);
                let eta = c.eta as f32;
                next.extend((0..d1.len()).map(|i| {
                    ((cur[s][i] + eta * d1[i]) * (1.0 - alpha) + (x0[s][i] + d2[i] * eta) * alpha)
                        .clamp(0.0, 1.0)
                }));
            }
            x1 = Tensor::from_vec(next, dims.clone(), &dev)?;
            let pred = p.logits(&x1)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let y = p.y.to_vec1::<u32>()?;
            let adv: Vec<bool> = (0..n).map(|s| pred[s] != y[s]).collect();
            if adv.iter().any(|&a| a) {
                let dist = crate::norm::per_sample_linf(&(&x1 - &im2)?)?.to_vec1::<f32>()?;
                let closer: Vec<bool> = (0..n)
                    .map(|s| adv[s] && res[s].is_none_or(|r| dist[s] < r))
                    .collect();
                if closer.iter().any(|&b| b) {
                    let m = crate::norm::mask_like(&closer, &x1)?;
                    best = ((&x1 * &m)? + (&best * (1.0 - &m)?)?)?;
                    for s in 0..n {
                        if closer[s] {
                            res[s] = Some(dist[s]);
                        }
                    }
                }
                // Adversarial points step back towards the clean image.
                let m = crate::norm::mask_like(&adv, &x1)?;
                let pulled = (&im2 + ((&x1 - &im2)? * c.beta)?)?;
                x1 = ((pulled * &m)? + (&x1 * (1.0 - &m)?)?)?;
            }
        }
        Ok((best, res))
    }
}

impl Attack for Fab {
    fn name(&self) -> String {
        let c = &self.0;
        format!(
            "fab-t-{}(eps={:.4}, steps={}, targets={})",
            c.norm.name(),
            c.eps,
            c.steps,
            c.targets
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
        _rng: &mut Rng,
    ) -> Result<AttackOutput> {
        let _eval = ModeGuard::new(model, Mode::Eval);
        let mut p = Problem::new(model, x, y, goal)?;
        let c = &self.0;
        let k = model.num_classes();
        let clean = p.logits(x)?;
        let mut asm = Assembly::new(x, p.success(&clean)?)?;
        let user_target = p.objective_target.clone();
        let ranks: Vec<Option<usize>> = match user_target {
            Some(_) => vec![None],
            None => (2..=c.targets.min(k.saturating_sub(1)) + 1).map(Some).collect(),
        };
        for rank in ranks {
            let rows = asm.alive();
            if rows.is_empty() {
                break;
            }
            let mut sub = p.subset(&rows)?;
            let target = match (rank, &sub.objective_target) {
                (_, Some(t)) => t.clone(),
                (Some(r), None) => {
                    let logits = sub.logits(&sub.x.clone())?;
                    let order = logits.arg_sort_last_dim(false)?;
                    order
                        .narrow(D::Minus1, r - 1, 1)?
                        .squeeze(D::Minus1)?
                        .contiguous()?
                }
                (None, None) => break,
            };
            let (best, res) = self.run(&mut sub, &target)?;
            p.absorb(&sub);
            // A minimum-norm result counts only inside the budget.
            let success: Vec<bool> = res
                .iter()
                .map(|r| r.is_some_and(|d| f64::from(d) <= c.eps + 1e-7))
                .collect();
            let loss: Vec<f32> = res.iter().map(|r| r.map_or(f32::NEG_INFINITY, |d| -d)).collect();
            let keep: Vec<bool> = success.clone();
            // Points whose closest adversarial example lies outside the ball stay clean.
            let m = crate::norm::mask_like(&keep, &best)?;
            let adv = ((&best * &m)? + (&sub.x * (1.0 - &m)?)?)?;
            asm.take(&rows, adv, &success, &loss)?;
        }
        let adv = asm.finish()?;
        p.finish(adv, LossKind::CwMargin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_reaches_the_hyperplane_inside_the_box() {
        let t = [0.2f32, 0.9, 0.5, 0.0];
        let w = [1.0f32, -2.0, 0.5, 0.0];
        // <w, t> = 0.2 - 1.8 + 0.25 = -1.35; ask for -1.0.
        let d = projection_linf(&t, &w, -1.0);
        let reached: f32 = (0..4).map(|i| w[i] * (t[i] + d[i])).sum();
        assert!((reached + 1.0).abs() < 1e-5, "{d:?} reaches {reached}");
        assert!((0..4).all(|i| (0.0..=1.0).contains(&(t[i] + d[i]))));
        assert_eq!(d[3], 0.0, "a coordinate without weight does not move");
        // The L-inf optimum moves every weighted coordinate by the same amount here:
        // 0.35 / (1 + 2 + 0.5) = 0.1.
        assert!(d[..3].iter().all(|v| (v.abs() - 0.1).abs() < 1e-5), "{d:?}");
    }
}
