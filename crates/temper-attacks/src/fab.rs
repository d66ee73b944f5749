//! FAB (Croce and Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
//! boundary attack"), L-inf and L2, untargeted (`fab`) or targeted (`fab-t`): a minimum-norm
//! attack whose result is then checked against eps, as AutoAttack uses it.
//!
//! As in the reference (`fab_base.py`, `fab_projections.py`): the decision boundary between
//! the true class and another class is linearised at the current point (FAB-T: towards each of
//! the top-9 other classes in turn; FAB: the class whose linearised boundary is closest, from
//! the full Jacobian); the current point and the clean point are both projected onto that
//! hyperplane (inside the image box), and the next point mixes the two projections (weight at
//! most `alpha_max` on the clean one), overshooting by `eta`. Whenever the point is adversarial
//! and closer than the best so far it is kept, and the point is pulled back towards the clean
//! image by `beta`. Restarts after the first start from a random point at half of eps.
//!
//! The whole iteration, projections included, is tensor operations: nothing is read back to
//! the host until a run ends.

use crate::apgd::Assembly;
use crate::error::param;
use crate::loss::LossKind;
use crate::norm::{expand, per_sample_l2, per_sample_linf};
use crate::ops::{and, cumsum_rows, float, not, or, pick_rows, take_cols, to_bools};
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::{DType, Tensor, Var, D};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use temper_core::seed::Rng;
use temper_core::{Classifier, ForwardOpts, Mode, ModeGuard};

/// Unchecked FAB hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FabParams {
    /// Threat model: L-inf or L2.
    pub norm: Norm,
    /// The budget a result must respect to count (and the radius of random restarts).
    pub eps: f64,
    /// Iterations per run.
    pub steps: usize,
    /// Targeted (FAB-T): one run towards each of the `targets` most likely other classes;
    /// untargeted (FAB): runs against the closest boundary among all classes.
    pub targeted: bool,
    /// Target classes of FAB-T: the most likely other classes, clamped to `classes - 1`.
    pub targets: usize,
    /// Runs (per target for FAB-T) on the samples still unbroken; every run after the first
    /// starts from a random point.
    pub restarts: usize,
    /// Largest weight of the clean point's projection in a step.
    pub alpha_max: f64,
    /// Overshoot of each projection.
    pub eta: f64,
    /// Pull-back towards the clean point after an adversarial step.
    pub beta: f64,
}

impl Default for FabParams {
    /// The reference's FAB-T in standard AutoAttack: L-inf 8/255, 100 iterations, 9 targets,
    /// one run, `alpha_max` 0.1, `eta` 1.05, `beta` 0.9.
    fn default() -> Self {
        FabParams {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            steps: 100,
            targeted: true,
            targets: 9,
            restarts: 1,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
        }
    }
}

impl FabParams {
    /// Validates: L-inf or L2, `eps >= 0`, `steps >= 1`, `targets >= 1`, `restarts >= 1`,
    /// `0 <= alpha_max <= 1`, `eta >= 1`, `0 < beta <= 1`.
    pub fn check(self) -> Result<Fab> {
        if self.norm == Norm::L1 {
            return Err(param("norm", "FAB is implemented for linf and l2, not l1"));
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
        if self.restarts == 0 {
            return Err(param("restarts", "must be at least 1"));
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

/// A validated FAB or FAB-T attack.
#[derive(Debug, Clone, Copy)]
pub struct Fab(FabParams);

/// Per row: the number of halvings a binary search over `0..d` needs, the reference's
/// `ceil(log2(d))`.
fn search_steps(d: usize) -> usize {
    (d as f64).log2().ceil() as usize
}

/// Per row `i` of `(M, D)` points `t`, the smallest L-inf step `d` that takes `t_i` onto the
/// hyperplane `<w_i, x> = b_i` while staying in the box `[0, 1]` (or as close as the box
/// allows): the reference's `projection_linf`, a search over the coordinates sorted by how far
/// they can move, in tensor operations. `b` is `(M,)`.
pub fn projection_linf(t: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d_len = t.dim(1)?;
    let dot = |u: &Tensor, v: &Tensor| -> Result<Tensor> { Ok((u * v)?.sum(1)?) };
    let sign = ((float(&(dot(w, t)? - b)?.ge(0f32)?)? * 2.0)? - 1.0)?;
    let w = w.broadcast_mul(&sign.unsqueeze(1)?)?;
    let b = (b * &sign)?;
    let nonzero = float(&w.ne(0f32)?)?;
    let a = float(&w.lt(0f32)?)?;
    let d = ((&a - t)? * &nonzero)?;
    let two_a_1 = ((&a * 2.0)? - 1.0)?;
    let p = (&a - (t * &two_a_1)?)?;
    // Coordinates in decreasing order of p (the reference's flipped ascending order).
    let order = p.contiguous()?.arg_sort_last_dim(false)?;
    let b = (b - dot(&w, t)?)?;
    let b0 = dot(&w, &d)?;
    let ws = w.contiguous()?.gather(&order, 1)?;
    let bs2 = (ws.neg()? * d.contiguous()?.gather(&order, 1)?)?;
    let s = cumsum_rows(&ws.abs()?)?;
    let sb = cumsum_rows(&bs2)?.broadcast_add(&b0.unsqueeze(1)?)?;
    let last = |u: &Tensor| -> Result<Tensor> { Ok(u.narrow(1, d_len - 1, 1)?.squeeze(1)?) };
    let p_min = p.min(1)?;
    let b2 = (last(&sb)? - (last(&s)? * &p_min)?)?;
    let c_l = (&b - &b2)?.gt(0f32)?;
    let c2 = and(&(&b - &b0)?.gt(0f32)?, &not(&c_l)?)?;
    let m = t.dim(0)?;
    let dev = t.device();
    let mut lb = Tensor::zeros(m, DType::F32, dev)?;
    let mut ub = Tensor::full((d_len - 1) as f32, m, dev)?;
    for _ in 0..search_steps(d_len) {
        let mid = ((&lb + &ub)? / 2.0)?.floor()?;
        let k = mid.to_dtype(DType::U32)?;
        let cur = take_cols(&order, &k)?;
        let b2 = (take_cols(&sb, &k)? - (take_cols(&s, &k)? * take_cols(&p, &cur)?)?)?;
        let c = (&b - b2)?.gt(0f32)?;
        lb = c.where_cond(&mid, &lb)?;
        ub = c.where_cond(&ub, &mid)?;
    }
    let k = lb.to_dtype(DType::U32)?;
    let lmbd_l = ((&b - last(&sb)?)? / last(&s)?.neg()?)?.relu()?;
    let d_l = two_a_1.broadcast_mul(&lmbd_l.unsqueeze(1)?)?;
    let lmbd_2 = ((&b - take_cols(&sb, &k)?)? / take_cols(&s, &k)?.neg()?)?
        .relu()?
        .unsqueeze(1)?;
    let lm = lmbd_2.broadcast_as(d.shape())?;
    let d_2 = ((lm.minimum(&d)? * &a)? + (lm.neg()?.maximum(&d)? * (1.0 - &a)?)?)?;
    let d = pick_rows(&c_l, &d_l, &pick_rows(&c2, &d_2, &d)?)?;
    Ok((d * nonzero)?)
}

/// Per row, the smallest L2 step that takes `t_i` onto the hyperplane `<w_i, x> = b_i` inside
/// the box `[0, 1]`: the reference's `projection_l2` in tensor operations.
pub fn projection_l2(t: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    const BIG: f32 = 1e12;
    let d_len = t.dim(1)?;
    let c = ((t * w)?.sum(1)? - b)?;
    let sign = ((float(&c.ge(0f32)?)? * 2.0)? - 1.0)?;
    let w = w.broadcast_mul(&sign.unsqueeze(1)?)?;
    let c = (c * &sign)?;
    let live = w.abs()?.gt(1e-8f32)?;
    let live_f = float(&live)?;
    let r = (t / &w)?.maximum(&((t - 1.0)? / &w)?)?.clamp(-BIG, BIG)?;
    let big = r.ones_like()?.affine(f64::from(BIG), 0.0)?;
    let r = live.where_cond(&r, &big)?;
    let r = r.eq(-BIG)?.where_cond(&big, &r)?;
    let (rs, indr) = r.contiguous()?.sort_last_dim(true)?;
    let rs2 = rs.narrow(1, 1, d_len - 1)?.pad_with_zeros(1, 0, 1)?;
    let zero = rs.zeros_like()?;
    let rs = rs.eq(BIG)?.where_cond(&zero, &rs)?;
    let rs2 = rs2.eq(BIG)?.where_cond(&zero, &rs2)?;
    let w3s = w.sqr()?.contiguous()?.gather(&indr, 1)?;
    let w5 = w3s.sum_keepdim(1)?;
    let ws = w5.broadcast_sub(&cumsum_rows(&w3s)?)?;
    let d = ((&r * &w)?.neg()? * &live_f)?;
    let first = (w5.neg()? * rs.narrow(1, 0, 1)?)?;
    let s = Tensor::cat(
        &[
            first.clone(),
            cumsum_rows(&((&rs - &rs2)? * &ws)?)?.broadcast_add(&first)?,
        ],
        1,
    )?;
    let c4 = (s.narrow(1, 0, 1)?.squeeze(1)? + &c)?.lt(0f32)?;
    let c3 = ((&d * &w)?.sum(1)? + &c)?.gt(0f32)?;
    let c2 = not(&or(&c4, &c3)?)?;
    let m = t.dim(0)?;
    let dev = t.device();
    let mut lb = Tensor::zeros(m, DType::F32, dev)?;
    let mut ub = Tensor::full((d_len - 1) as f32, m, dev)?;
    for _ in 0..search_steps(d_len) {
        let mid = ((&lb + &ub)? / 2.0)?.floor()?;
        let k = mid.to_dtype(DType::U32)?;
        let cond = (take_cols(&s, &k)? + &c)?.gt(0f32)?;
        lb = cond.where_cond(&mid, &lb)?;
        ub = cond.where_cond(&ub, &mid)?;
    }
    let k = lb.to_dtype(DType::U32)?;
    let alpha4 = (&c / w5.squeeze(1)?)?;
    let d4 = w.broadcast_mul(&alpha4.unsqueeze(1)?)?.neg()?;
    let ws_k = take_cols(&ws, &k)?;
    let alpha2 = (((take_cols(&s, &k)? + &c)? / &ws_k)? + take_cols(&rs, &k)?)?;
    let alpha2 = ws_k.eq(0f32)?.where_cond(&alpha2.zeros_like()?, &alpha2)?;
    let alpha2 = alpha2.unsqueeze(1)?;
    let c5 = float(&alpha2.broadcast_gt(&r)?)?;
    let d2 = ((&d * &c5)? - (w.broadcast_mul(&alpha2)? * (1.0 - &c5)?)?)?;
    let d = pick_rows(&c4, &d4, &pick_rows(&c2, &d2, &d)?)?;
    Ok((d * live_f)?)
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

    /// Per sample, the size of `d` (rows of a `(M, ...)` tensor) in the attack's norm.
    fn size(&self, d: &Tensor) -> Result<Tensor> {
        match self.0.norm {
            Norm::L2 => per_sample_l2(d),
            _ => per_sample_linf(d),
        }
    }

    /// The hyperplane to project on at `x1`, as `(f, g)`: per sample the logit difference
    /// `(N,)` and its input gradient `(N, D)`. FAB-T: the target against the true class.
    /// FAB: of every other class, the one whose linearised boundary is closest in the dual
    /// norm (the full Jacobian: one backward pass per class).
    fn boundary(
        &self,
        p: &mut Problem<'_>,
        x1: &Tensor,
        target: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let n = x1.dim(0)?;
        let v = Var::from_tensor(x1)?;
        let logits = p.model.forward_opts(v.as_tensor(), EVAL)?;
        p.cost.forward += n as u64;
        let y_idx = p.y.unsqueeze(1)?;
        let grad_of = |t: &Tensor| -> Result<Tensor> {
            let grads = t.sum_all()?.backward()?;
            Ok(grads
                .get(v.as_tensor())
                .cloned()
                .map_or_else(|| x1.zeros_like(), Ok)?
                .flatten_from(1)?)
        };
        if let Some(target) = target {
            p.cost.backward += n as u64;
            let df = (logits.gather(&target.unsqueeze(1)?, 1)? - logits.gather(&y_idx, 1)?)?.squeeze(1)?;
            let dg = grad_of(&df)?;
            return Ok((df.detach(), dg));
        }
        let k = logits.dim(1)?;
        p.cost.backward += (n * k) as u64;
        let g: Vec<Tensor> = (0..k)
            .map(|c| grad_of(&logits.narrow(1, c, 1)?))
            .collect::<Result<_>>()?;
        let g = Tensor::stack(&g, 1)?; // (N, K, D)
        let logits = logits.detach();
        let g_y = g.gather(
            &y_idx
                .unsqueeze(2)?
                .broadcast_as((n, 1, g.dim(2)?))?
                .contiguous()?,
            1,
        )?;
        let df = logits.broadcast_sub(&logits.gather(&y_idx, 1)?)?; // (N, K)
        let dg = g.broadcast_sub(&g_y)?;
        let dual = match self.0.norm {
            Norm::L2 => dg.sqr()?.sum(2)?.sqrt()?,
            _ => dg.abs()?.sum(2)?,
        };
        let dist = (df.abs()? / (dual + 1e-12)?)?;
        // The true class is never the boundary to cross (the reference sets its df to 1e10).
        let own = Tensor::arange(0u32, k as u32, x1.device())?
            .unsqueeze(0)?
            .broadcast_as((n, k))?
            .broadcast_eq(&y_idx)?;
        let dist = own.where_cond(&dist.ones_like()?.affine(1e10, 0.0)?, &dist)?;
        let ind = dist.argmin(1)?;
        let f = take_cols(&df, &ind)?;
        let idx = ind
            .reshape((n, 1, 1))?
            .broadcast_as((n, 1, dg.dim(2)?))?
            .contiguous()?;
        let w = dg.gather(&idx, 1)?.squeeze(1)?;
        Ok((f, w))
    }

    /// The reference's random restart: a point at half of eps in a random direction.
    fn random_start(&self, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let n = dims[0];
        let d: usize = dims[1..].iter().product();
        let mut data = Vec::with_capacity(n * d);
        for _ in 0..n {
            let t: Vec<f64> = match self.0.norm {
                Norm::L2 => (0..d).map(|_| StandardNormal.sample(rng)).collect(),
                _ => (0..d).map(|_| rng.random_range(-1.0..1.0)).collect(),
            };
            let size = match self.0.norm {
                Norm::L2 => t.iter().map(|v| v * v).sum::<f64>().sqrt(),
                _ => t.iter().fold(0f64, |m, v| m.max(v.abs())),
            };
            data.extend(t.iter().map(|v| (0.5 * self.0.eps * v / size.max(1e-12)) as f32));
        }
        Ok((x + Tensor::from_vec(data, dims, x.device())?)?.clamp(0f32, 1f32)?)
    }

    /// One run on every row of `p` from `start` (towards `target` for FAB-T): per row, the
    /// closest adversarial point found and its distance (`+inf` where none was found).
    fn run(&self, p: &mut Problem<'_>, start: Tensor, target: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let c = &self.0;
        let n = p.n();
        let im2 = p.x.clone();
        let shape = im2.shape().clone();
        let x0 = im2.flatten_from(1)?;
        let mut x1 = start;
        let mut best = im2.clone();
        let mut res = Tensor::full(f32::INFINITY, n, im2.device())?;
        let eta = c.eta;
        for _ in 0..c.steps {
            let (f, w) = self.boundary(p, &x1, target)?;
            let cur = x1.flatten_from(1)?;
            let b = ((&w * &cur)?.sum(1)? - f)?;
            let pts = Tensor::cat(&[&cur, &x0], 0)?;
            let ww = Tensor::cat(&[&w, &w], 0)?;
            let bb = Tensor::cat(&[&b, &b], 0)?;
            let d3 = match c.norm {
                Norm::L2 => projection_l2(&pts, &ww, &bb)?,
                _ => projection_linf(&pts, &ww, &bb)?,
            };
            let a0 = self.size(&d3)?.maximum(1e-8f32)?;
            let (a1, a2) = (a0.narrow(0, 0, n)?, a0.narrow(0, n, n)?);
            let alpha = (&a1 / (&a1 + &a2)?)?.relu()?.minimum(c.alpha_max as f32)?;
            let alpha = expand(&alpha, 2)?;
            let (d1, d2) = (d3.narrow(0, 0, n)?, d3.narrow(0, n, n)?);
            let moved = ((&cur + (d1 * eta)?)?.broadcast_mul(&(1.0 - &alpha)?)?
                + (&x0 + (d2 * eta)?)?.broadcast_mul(&alpha)?)?;
            x1 = moved.clamp(0f32, 1f32)?.reshape(&shape)?;
            let logits = p.logits(&x1)?;
            let adv = logits.argmax(D::Minus1)?.ne(&p.y)?;
            let dist = self.size(&(&x1 - &im2)?)?;
            let closer = and(&adv, &dist.lt(&res)?)?;
            best = pick_rows(&closer, &x1, &best)?;
            res = closer.where_cond(&dist, &res)?;
            // Adversarial points step back towards the clean image.
            let pulled = (&im2 + ((&x1 - &im2)? * c.beta)?)?;
            x1 = pick_rows(&adv, &pulled, &x1)?;
        }
        Ok((best, res))
    }
}

impl Attack for Fab {
    fn name(&self) -> String {
        let c = &self.0;
        let targets = if c.targeted {
            format!(", targets={}", c.targets)
        } else {
            String::new()
        };
        format!(
            "fab{}-{}(eps={:.4}, steps={}, restarts={}{targets})",
            if c.targeted { "-t" } else { "" },
            c.norm.name(),
            c.eps,
            c.steps,
            c.restarts,
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
        let c = &self.0;
        let k = model.num_classes();
        let clean = p.logits(x)?;
        let mut asm = Assembly::new(x, p.success(&clean)?)?;
        // FAB-T's targets by rank among the clean logits; a user-given target replaces them.
        let ranks: Vec<Option<usize>> = match (&p.objective_target, c.targeted) {
            (None, true) => (2..=c.targets.min(k.saturating_sub(1)) + 1).map(Some).collect(),
            _ => vec![None],
        };
        for rank in ranks {
            for restart in 0..c.restarts {
                let rows = asm.alive();
                if rows.is_empty() {
                    break;
                }
                let mut sub = p.subset(&rows)?;
                let target = match (rank, &sub.objective_target) {
                    (_, Some(t)) => Some(t.clone()),
                    (Some(r), None) => {
                        let logits = sub.logits(&sub.x.clone())?;
                        let order = logits.arg_sort_last_dim(false)?;
                        Some(
                            order
                                .narrow(D::Minus1, r - 1, 1)?
                                .squeeze(D::Minus1)?
                                .contiguous()?,
                        )
                    }
                    (None, None) => None,
                };
                let start = if restart > 0 {
                    self.random_start(&sub.x, rng)?
                } else {
                    sub.x.clone()
                };
                let (best, res) = self.run(&mut sub, start, target.as_ref())?;
                p.absorb(&sub);
                // A minimum-norm result counts only inside the budget; points whose closest
                // adversarial example lies outside the ball stay clean.
                let inside = res.le(c.eps as f32 + 1e-7)?;
                let adv = pick_rows(&inside, &best, &sub.x)?;
                let success = to_bools(&inside)?;
                let loss: Vec<f32> = res
                    .neg()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .zip(&success)
                    .map(|(l, &s)| if s { l } else { f32::NEG_INFINITY })
                    .collect();
                asm.take(&rows, adv, &success, &loss)?;
            }
        }
        let adv = asm.finish()?;
        p.finish(adv, LossKind::CwMargin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The smallest L-inf step `d` that takes `t` onto the hyperplane `<w, x> = b` while staying in
    /// the box `[0, 1]` (or as close as the box allows): the reference's `projection_linf` for
    /// one point, a search over the coordinates sorted by how far they can move.
    fn host_projection_linf(t: &[f32], w: &[f32], b: f32) -> Vec<f32> {
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

    /// `m` rows of `d` values `f(row, column, u)`, `u` uniform in `[0, 1)`.
    fn random(rng: &mut Rng, (m, d): (usize, usize), f: impl Fn(usize, usize, f32) -> f32) -> Vec<Vec<f32>> {
        (0..m)
            .map(|i| (0..d).map(|j| f(i, j, rng.random::<f32>())).collect())
            .collect()
    }

    fn rows(v: &[Vec<f32>]) -> Result<Tensor> {
        let d = v[0].len();
        Ok(Tensor::from_vec(v.concat(), (v.len(), d), &Device::Cpu)?)
    }

    #[test]
    fn linf_projection_reaches_the_hyperplane_inside_the_box() -> Result<()> {
        let t = [0.2f32, 0.9, 0.5, 0.0];
        let w = [1.0f32, -2.0, 0.5, 0.0];
        // <w, t> = 0.2 - 1.8 + 0.25 = -1.35; ask for -1.0.
        let d = projection_linf(
            &rows(&[t.to_vec()])?,
            &rows(&[w.to_vec()])?,
            &Tensor::new(&[-1.0f32], &Device::Cpu)?,
        )?
        .to_vec2::<f32>()?
        .remove(0);
        let reached: f32 = (0..4).map(|i| w[i] * (t[i] + d[i])).sum();
        assert!((reached + 1.0).abs() < 1e-5, "{d:?} reaches {reached}");
        assert!((0..4).all(|i| (0.0..=1.0).contains(&(t[i] + d[i]))));
        assert_eq!(d[3], 0.0, "a coordinate without weight does not move");
        // The L-inf optimum moves every weighted coordinate by the same amount here:
        // 0.35 / (1 + 2 + 0.5) = 0.1.
        assert!(d[..3].iter().all(|v| (v.abs() - 0.1).abs() < 1e-5), "{d:?}");
        Ok(())
    }

    /// The tensor projection equals the per-point search it replaced (a line-by-line port of
    /// the reference), on random hyperplanes, reachable or not.
    #[test]
    fn linf_projection_equals_the_per_point_search() -> Result<()> {
        let mut rng = temper_core::seed::rng_with(1, "fab-proj");
        let (m, d) = (24, 37);
        let t = random(&mut rng, (m, d), |_, _, u| u);
        let w = random(&mut rng, (m, d), |i, j, u| {
            if (i + j) % 7 == 0 {
                0.0
            } else {
                u * 2.0 - 1.0
            }
        });
        let b: Vec<f32> = (0..m).map(|_| rng.random::<f32>() * 6.0 - 3.0).collect();
        let got = projection_linf(
            &rows(&t)?,
            &rows(&w)?,
            &Tensor::from_vec(b.clone(), m, &Device::Cpu)?,
        )?
        .to_vec2::<f32>()?;
        for i in 0..m {
            let want = host_projection_linf(&t[i], &w[i], b[i]);
            for j in 0..d {
                assert!(
                    (got[i][j] - want[j]).abs() < 1e-4,
                    "row {i} col {j}: {} vs {}",
                    got[i][j],
                    want[j]
                );
            }
        }
        Ok(())
    }

    /// The L2 projection lands on the hyperplane inside the box when the box allows it, and no
    /// point of the hyperplane in the box is closer (checked against random feasible points).
    #[test]
    fn l2_projection_is_the_closest_point_of_the_hyperplane_in_the_box() -> Result<()> {
        let mut rng = temper_core::seed::rng_with(2, "fab-proj-l2");
        let (m, d) = (16, 20);
        let t = random(&mut rng, (m, d), |_, _, u| u);
        let w = random(&mut rng, (m, d), |_, _, u| u * 2.0 - 1.0);
        // A target value reachable inside the box: that of another point of the box.
        let other = random(&mut rng, (m, d), |_, _, u| u);
        let b: Vec<f32> = (0..m)
            .map(|i| (0..d).map(|j| w[i][j] * other[i][j]).sum())
            .collect();
        let got = projection_l2(
            &rows(&t)?,
            &rows(&w)?,
            &Tensor::from_vec(b.clone(), m, &Device::Cpu)?,
        )?
        .to_vec2::<f32>()?;
        for i in 0..m {
            let z: Vec<f32> = (0..d).map(|j| t[i][j] + got[i][j]).collect();
            assert!(
                z.iter().all(|v| (-1e-5..=1.0 + 1e-5).contains(v)),
                "row {i} leaves the box"
            );
            let on: f32 = (0..d).map(|j| w[i][j] * z[j]).sum();
            assert!((on - b[i]).abs() < 1e-3, "row {i}: {on} vs {}", b[i]);
            let dist: f32 = got[i].iter().map(|v| v * v).sum::<f32>().sqrt();
            let to_other: f32 = (0..d)
                .map(|j| (other[i][j] - t[i][j]).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!(dist <= to_other + 1e-4, "row {i}: {dist} > {to_other}");
        }
        Ok(())
    }
}
