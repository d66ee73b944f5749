//! Carlini-Wagner L2 (Carlini & Wagner 2017): the smallest L2 perturbation that changes the
//! decision, found with Adam in tanh space and a per-sample binary search over the
//! trade-off constant c.

use crate::error::param;
use crate::loss::margin;
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, LossKind, Norm, Result};
use candle_core::{Tensor, Var};
use temper_core::seed::Rng;
use temper_core::{Classifier, Mode, ModeGuard};

/// Unchecked Carlini-Wagner L2 hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CwParams {
    /// Initial trade-off constant between distance and misclassification.
    pub c: f64,
    /// Confidence margin kappa: success requires winning by at least this much.
    pub kappa: f64,
    /// Adam steps per binary-search round.
    pub steps: usize,
    /// Rounds of binary search over c.
    pub binary_steps: usize,
    /// Adam learning rate in tanh space.
    pub lr: f64,
    /// Stop a round when the loss stops decreasing (checked every steps/10 iterations).
    pub abort_early: bool,
}

impl Default for CwParams {
    /// Carlini & Wagner's settings, with fewer Adam steps (100 instead of 10,000) so that an
    /// evaluation finishes.
    fn default() -> Self {
        CwParams {
            c: 1e-2,
            kappa: 0.0,
            steps: 100,
            binary_steps: 9,
            lr: 0.01,
            abort_early: true,
        }
    }
}

impl CwParams {
    /// Validates: `c > 0`, `kappa >= 0`, `steps >= 1`, `binary_steps >= 1`, `lr > 0`.
    pub fn check(self) -> Result<CarliniWagner> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(param("c", format!("{} must be finite and > 0", self.c)));
        }
        if !(self.kappa.is_finite() && self.kappa >= 0.0) {
            return Err(param("kappa", format!("{} must be finite and >= 0", self.kappa)));
        }
        if self.steps == 0 {
            return Err(param("steps", "must be at least 1"));
        }
        if self.binary_steps == 0 {
            return Err(param("binary-steps", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(param("lr", format!("{} must be finite and > 0", self.lr)));
        }
        Ok(CarliniWagner(self))
    }
}

/// A validated Carlini-Wagner L2 attack.
#[derive(Debug, Clone, Copy)]
pub struct CarliniWagner(CwParams);

impl CarliniWagner {
    /// The parameters.
    pub fn params(&self) -> &CwParams {
        &self.0
    }
}

/// Adam on one tensor, as `torch.optim.Adam` with default betas.
struct Adam {
    m: Tensor,
    v: Tensor,
    t: i32,
    lr: f64,
}

impl Adam {
    fn step(&mut self, w: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        self.t += 1;
        self.m = ((&self.m * b1)? + (g * (1.0 - b1))?)?;
        self.v = ((&self.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        let denom = ((&self.v / bc2)?.sqrt()? + eps)?;
        let upd = ((&self.m / bc1)? / denom)?;
        Ok((w - (upd * self.lr)?)?)
    }
}

fn to_pixels(w: &Tensor) -> Result<Tensor> {
    Ok(((w.tanh()? + 1.0)? * 0.5)?)
}

impl Attack for CarliniWagner {
    fn name(&self) -> String {
        let c = &self.0;
        format!(
            "cw-l2(c={}, kappa={}, steps={}, binary_steps={})",
            c.c, c.kappa, c.steps, c.binary_steps
        )
    }

    fn norm(&self) -> Norm {
        Norm::L2
    }

    fn eps(&self) -> Option<f64> {
        None
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
        let prm = &self.0;
        let n = p.n();
        // Signed so that positive means "the attack is winning": the target's margin
        // (targeted) or minus the true label's margin (untargeted).
        let sign = if p.targeted { 1.0 } else { -1.0 };
        // atanh of the clean image, shrunk slightly so pixels at 0 or 1 stay finite.
        let w0 = {
            let s = (((x * 2.0)? - 1.0)? * 0.999_999)?;
            (((&s + 1.0)? / (1.0 - &s)?)?.log()? * 0.5)?
        };
        let mut c = vec![prm.c; n];
        let mut lo = vec![0.0f64; n];
        let mut hi = vec![f64::INFINITY; n];
        let mut best_l2 = vec![f32::INFINITY; n];
        let mut best_adv = x.clone();
        for _ in 0..prm.binary_steps {
            let c_t = Tensor::from_vec(c.iter().map(|&v| v as f32).collect::<Vec<_>>(), n, x.device())?;
            let mut w = w0.clone();
            let mut adam = Adam {
                m: w.zeros_like()?,
                v: w.zeros_like()?,
                t: 0,
                lr: prm.lr,
            };
            let mut round_success = vec![false; n];
            let mut prev = f64::INFINITY;
            let check_every = (prm.steps / 10).max(1);
            for step in 0..prm.steps {
                let wv = Var::from_tensor(&w)?;
                let adv = to_pixels(wv.as_tensor())?;
                let logits = p.model.forward_opts(
                    &adv,
                    temper_core::ForwardOpts {
                        mode: Mode::Eval,
                        param_grads: false,
                    },
                )?;
                p.cost.forward += n as u64;
                p.cost.backward += n as u64;
                let win = (margin(&logits, &p.labels)? * sign)?;
                // f = max(-win, -kappa): zero once the attack wins by kappa.
                let f = win.neg()?.maximum(-prm.kappa)?;
                let dist = (&adv - x)?.sqr()?.flatten_from(1)?.sum(1)?;
                let total = (&dist + (&f * &c_t)?)?.sum_all()?;
                let grads = total.backward()?;
                let g = grads
                    .get(wv.as_tensor())
                    .cloned()
                    .map_or_else(|| w.zeros_like(), Ok)?;
                // Record the smallest successful point seen, per sample.
                let won = win.to_vec1::<f32>()?;
                let l2 = dist.sqrt()?.to_vec1::<f32>()?;
                let success: Vec<bool> = won
                    .iter()
                    .map(|&v| f64::from(v) >= prm.kappa && v > 0.0)
                    .collect();
                let improve: Vec<bool> = (0..n).map(|i| success[i] && l2[i] < best_l2[i]).collect();
                if improve.iter().any(|&b| b) {
                    best_adv = crate::ops::choose_rows(&improve, &adv.detach(), &best_adv)?;
                    for i in 0..n {
                        if improve[i] {
                            best_l2[i] = l2[i];
                        }
                    }
                }
                for i in 0..n {
                    round_success[i] |= success[i];
                }
                let total = total.to_scalar::<f32>()? as f64;
                if prm.abort_early && step % check_every == 0 {
                    if total > prev * 0.9999 {
                        break;
                    }
                    prev = total;
                }
                w = adam.step(&w, &g)?;
            }
            // Binary search on c, per sample: smaller after a success, larger after a failure.
            for i in 0..n {
                if round_success[i] {
                    hi[i] = hi[i].min(c[i]);
                    c[i] = (lo[i] + hi[i]) / 2.0;
                } else {
                    lo[i] = lo[i].max(c[i]);
                    c[i] = if hi[i].is_finite() {
                        (lo[i] + hi[i]) / 2.0
                    } else {
                        c[i] * 10.0
                    };
                }
            }
        }
        p.finish(best_adv, LossKind::CwMargin)
    }
}
