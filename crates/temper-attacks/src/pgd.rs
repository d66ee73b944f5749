//! Projected gradient descent (Madry et al. 2018), L-inf and L2.

use crate::error::param;
use crate::loss::LossKind;
use crate::ops::choose_rows;
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::Tensor;
use temper_core::seed::Rng;
use temper_core::{Classifier, Mode, ModeGuard};

/// Unchecked PGD hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PgdParams {
    /// Threat model.
    pub norm: Norm,
    /// Budget in pixel units (L-inf: per pixel; L2: per image).
    pub eps: f64,
    /// Step size in the same units.
    pub alpha: f64,
    /// Gradient steps per restart.
    pub steps: usize,
    /// Independent runs; the worst case per sample is kept.
    pub restarts: usize,
    /// Start uniformly inside the eps ball (otherwise at the clean point).
    pub random_start: bool,
    /// Objective.
    pub loss: LossKind,
    /// Stop moving a sample once the attack has succeeded on it.
    pub early_stop: bool,
}

impl Default for PgdParams {
    /// Madry's CIFAR setting: L-inf, eps 8/255, step 2/255, 10 steps, random start.
    fn default() -> Self {
        PgdParams {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            alpha: 2.0 / 255.0,
            steps: 10,
            restarts: 1,
            random_start: true,
            loss: LossKind::CrossEntropy,
            early_stop: false,
        }
    }
}

impl PgdParams {
    /// Validates: `eps >= 0`, `alpha > 0`, `steps >= 1`, `restarts >= 1`.
    pub fn check(self) -> Result<Pgd> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(param("eps", format!("{} must be finite and >= 0", self.eps)));
        }
        // Steps first: a step size derived from the step count (2.5 eps / steps) is infinite
        // for zero steps, and the error must name the cause.
        if self.steps == 0 {
            return Err(param("steps", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(param("alpha", format!("{} must be finite and > 0", self.alpha)));
        }
        if self.restarts == 0 {
            return Err(param("restarts", "must be at least 1"));
        }
        Ok(Pgd(self))
    }
}

/// A validated PGD attack.
#[derive(Debug, Clone, Copy)]
pub struct Pgd(PgdParams);

impl Pgd {
    /// The parameters.
    pub fn params(&self) -> &PgdParams {
        &self.0
    }

    /// One restart from `start` (clean point plus an initial perturbation), calling
    /// `observe(step, x_adv)` after every step. Returns the per-sample strongest iterate
    /// (a success beats a failure, then the higher objective) with its outcome, so more
    /// steps can never make the result weaker.
    fn run_from(
        &self,
        p: &mut Problem<'_>,
        start: Tensor,
        observe: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<Best> {
        let c = &self.0;
        let x = &p.x.clone();
        let mut adv = (x + c.norm.project(&(start - x)?, c.eps)?)?.clamp(0f32, 1f32)?;
        let mut frozen = vec![false; p.n()];
        let mut best: Option<Best> = None;
        for step in 0..c.steps {
            let (obj, g, logits) = p.grad(&adv, c.loss)?;
            let succ = p.success(&logits)?;
            best = Some(Best::merge(
                best,
                adv.clone(),
                succ.clone(),
                obj.to_vec1::<f32>()?,
            )?);
            let dir = c.norm.ascent_direction(&g)?;
            let mut moved = (&adv + (dir * c.alpha)?)?;
            if c.early_stop {
                // A sample that already fools the model keeps its point.
                for (f, s) in frozen.iter_mut().zip(succ) {
                    *f |= s;
                }
                if frozen.iter().all(|&f| f) {
                    break;
                }
                moved = choose_rows(&frozen, &adv, &moved)?;
            }
            let delta = c.norm.project(&(moved - x)?, c.eps)?;
            adv = (x + delta)?.clamp(0f32, 1f32)?.detach();
            observe(step, &adv);
        }
        let logits = p.logits(&adv)?;
        let succ = p.success(&logits)?;
        let obj = p.objective(&logits, c.loss)?.to_vec1::<f32>()?;
        Best::merge(best, adv, succ, obj)
    }

    /// Runs one restart from `start` (a point near the clean batch `x`; `x` itself for no
    /// random start) and returns every iterate: for checking trajectories against a
    /// reference, or for plotting an attack's progress.
    pub fn trajectory(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        start: &Tensor,
        y: &Tensor,
        goal: Goal<'_>,
    ) -> Result<Vec<Tensor>> {
        let _eval = ModeGuard::new(model, Mode::Eval);
        let mut p = Problem::new(model, x, y, goal)?;
        let mut out = Vec::with_capacity(self.0.steps);
        self.run_from(&mut p, start.clone(), &mut |_, a| out.push(a.clone()))?;
        Ok(out)
    }
}

impl Attack for Pgd {
    fn name(&self) -> String {
        let c = &self.0;
        format!(
            "pgd-{}(eps={:.4}, alpha={:.4}, steps={}, restarts={}, loss={})",
            c.norm.name(),
            c.eps,
            c.alpha,
            c.steps,
            c.restarts,
            c.loss.name()
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
        let mut best: Option<Best> = None;
        for _ in 0..c.restarts {
            let start = if c.random_start {
                (x + c.norm.random_start(x, c.eps, rng)?)?
            } else {
                x.clone()
            };
            let run = self.run_from(&mut p, start, &mut |_, _| {})?;
            best = Some(Best::merge(best, run.adv, run.success, run.loss)?);
        }
        let adv = best
            .map(|b| b.adv)
            .ok_or_else(|| param("restarts", "must be at least 1"))?;
        p.finish(adv, c.loss)
    }
}

/// The strongest point found so far, per sample.
struct Best {
    adv: Tensor,
    success: Vec<bool>,
    loss: Vec<f32>,
}

impl Best {
    /// Keeps, per sample, the stronger of `best` and the candidate: a success beats a
    /// failure, then the higher objective.
    fn merge(best: Option<Best>, adv: Tensor, success: Vec<bool>, loss: Vec<f32>) -> Result<Best> {
        let Some(b) = best else {
            return Ok(Best { adv, success, loss });
        };
        let take: Vec<bool> = (0..success.len())
            .map(|i| (success[i] && !b.success[i]) || (success[i] == b.success[i] && loss[i] > b.loss[i]))
            .collect();
        if !take.iter().any(|&t| t) {
            return Ok(b);
        }
        let merged = choose_rows(&take, &adv, &b.adv)?;
        Ok(Best {
            adv: merged,
            success: (0..take.len())
                .map(|i| if take[i] { success[i] } else { b.success[i] })
                .collect(),
            loss: (0..take.len())
                .map(|i| if take[i] { loss[i] } else { b.loss[i] })
                .collect(),
        })
    }
}
