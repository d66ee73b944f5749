//! Learn2Perturb (Jeddi, Shafiee, Karg, Scharfenberger and Wong, CVPR 2020; reference code
//! `ArmenJeddi/Learn2Perturb`, `train.py`): a model with learned noise modules
//! ([`temper_core::noise`]) trained by alternating updates.
//!
//! Every iteration, as the reference does it:
//!
//! 1. the noise scales `theta` alone take a step on their regularizer
//!    `R = -gamma / H_t · Σ sqrt(theta)` (summed over every scale of every module), which
//!    pushes the noise up; `H_t = Σ_{i<=t} 1/i` grows with `t`, the epochs since the noise
//!    was switched on, so the push fades ([`TrainStep::pre_update`]);
//! 2. every parameter, the scales included, takes a step on `0.5 CE(clean) + 0.5 CE(PGD)`,
//!    where PGD attacks the model's own predictions on the clean batch (not the labels, so
//!    there is no label leaking), with BatchNorm in eval mode and the noise on;
//! 3. the scales are clamped at 0.01 ([`TrainStep::after_update`]).
//!
//! The reference first trains `noise_delay` epochs without noise (10 of its 350) and
//! `adv_delay` epochs on clean examples only (20 of 350); both delays are settings here,
//! 0 by default, since short runs have no epochs to spare. Where the reference divides by
//! `H_0 = 0` in the first epoch with noise (a division by zero in Python), `t` counts that
//! epoch: `t = epoch - noise_delay + 1`. During the noise delay the noise is off in the
//! step's passes only; validation sees the model as evaluation will, with its noise.
//!
//! A model with noise is randomized: evaluate it with attacks that average their gradients
//! over the noise (`autoattack-rand`), never with one pass per gradient.

use crate::error::param;
use crate::step::{cross_entropy, finish, PreUpdate, StepBatch, StepCtx, StepOutput, TrainStep};
use crate::Result;
use candle_core::{Tensor, D};
use temper_attacks::{Attack, Goal, Pgd};
use temper_core::noise::{is_scale, without_noise};
use temper_core::{Classifier, ParamStore};

/// The smallest noise scale; the reference clamps its `sigma_map`s here after every update.
pub const MIN_SCALE: f64 = 0.01;

/// Unchecked Learn2Perturb hyper-parameters; [`L2pParams::check`] validates them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2pParams {
    /// Strength of the noise regularizer (the reference's `--gamma`, 1e-4).
    pub gamma: f64,
    /// Epochs trained without noise first (the reference's `--noise_add_delay`, 10 of 350).
    pub noise_delay: u64,
    /// Epochs trained on clean examples only first (the reference's `--adv_train_delay`, 20
    /// of 350).
    pub adv_delay: u64,
}

impl Default for L2pParams {
    /// The reference's gamma; no delays.
    fn default() -> Self {
        L2pParams {
            gamma: 1e-4,
            noise_delay: 0,
            adv_delay: 0,
        }
    }
}

/// [`L2pParams`] that passed [`L2pParams::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidL2pParams(L2pParams);

impl L2pParams {
    /// Validates: `gamma` finite and `>= 0`.
    pub fn check(self) -> Result<ValidL2pParams> {
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(param(
                "l2p-gamma",
                format!("{} must be a finite number >= 0", self.gamma),
            ));
        }
        Ok(ValidL2pParams(self))
    }
}

/// The harmonic number `H_t = Σ_{i=1..t} 1/i`.
fn harmonic(t: u64) -> f64 {
    (1..=t).map(|i| 1.0 / i as f64).sum()
}

/// The regularizer of the noise scales in `store`, `-coef Σ sqrt(theta)`, as the reference
/// writes it (`reg_term = -coef * torch.sqrt(sigma_map)`, summed). `None` when the store has
/// no scales.
pub fn regularizer(store: &ParamStore, coef: f64) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for e in store.trainable().filter(|e| is_scale(&e.name)) {
        let r = (e.var.as_tensor().sqrt()?.sum_all()? * -coef)?;
        total = Some(match total {
            Some(t) => (t + r)?,
            None => r,
        });
    }
    Ok(total)
}

/// The Learn2Perturb step.
#[derive(Debug, Clone)]
pub struct Learn2Perturb {
    params: L2pParams,
    attack: Pgd,
    epoch: u64,
}

impl Learn2Perturb {
    /// Learn2Perturb with its hyper-parameters and an L-inf PGD of budget `eps`, step `alpha`
    /// and `steps` steps from a random start (the reference's: 8/255, 0.01, 7).
    pub fn new(params: ValidL2pParams, eps: f64, alpha: f64, steps: usize) -> Result<Self> {
        Ok(Learn2Perturb {
            params: params.0,
            attack: super::pgd_at::madry_pgd(eps, alpha, steps)?,
            epoch: 0,
        })
    }

    fn noise_on(&self) -> bool {
        self.epoch >= self.params.noise_delay
    }

    /// The regularizer's coefficient in the current epoch, `gamma / H_t`.
    pub fn coefficient(&self) -> f64 {
        let t = self.epoch.saturating_sub(self.params.noise_delay) + 1;
        self.params.gamma / harmonic(t)
    }

    fn clean_and_adversarial(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        let (clean, logits) = cross_entropy(ctx.model, batch.x, batch.y, ctx.cost)?;
        if self.epoch < self.params.adv_delay {
            return finish(&clean, logits);
        }
        // The reference attacks the model's own predictions, so labels do not leak.
        let pred = logits.argmax(D::Minus1)?.detach();
        let out = self
            .attack
            .perturb(ctx.attack_model, batch.x, &pred, Goal::Untargeted, ctx.rng)?;
        ctx.cost.forward += out.cost.forward;
        ctx.cost.backward += out.cost.backward;
        let (adv, adv_logits) = cross_entropy(ctx.model, &out.adv, batch.y, ctx.cost)?;
        let loss = ((clean * 0.5)? + (adv * 0.5)?)?;
        finish(&loss, adv_logits)
    }
}

impl TrainStep for Learn2Perturb {
    fn name(&self) -> &'static str {
        "l2p"
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn pre_update(&mut self, model: &dyn Classifier) -> Result<Option<PreUpdate>> {
        if !self.noise_on() {
            return Ok(None);
        }
        let reg = regularizer(model.params(), self.coefficient())?.ok_or_else(|| {
            param(
                "method",
                "l2p trains a model with noise modules (noise_injection)",
            )
        })?;
        Ok(Some(PreUpdate {
            grads: reg.backward()?,
            active: None,
        }))
    }

    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        if self.noise_on() {
            self.clean_and_adversarial(batch, ctx)
        } else {
            without_noise(|| self.clean_and_adversarial(batch, ctx))
        }
    }

    fn after_update(&mut self, params: &ParamStore) -> Result<()> {
        for e in params.trainable().filter(|e| is_scale(&e.name)) {
            let clamped = e.var.as_tensor().maximum(MIN_SCALE)?;
            e.var.set(&clamped)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coefficient_fades_harmonically_from_the_first_noisy_epoch() -> Result<()> {
        let params = L2pParams {
            gamma: 1e-4,
            noise_delay: 2,
            adv_delay: 0,
        }
        .check()?;
        let mut s = Learn2Perturb::new(params, 0.1, 0.01, 1)?;
        s.start_epoch(2);
        assert!((s.coefficient() - 1e-4).abs() < 1e-18);
        s.start_epoch(4);
        assert!((s.coefficient() - 1e-4 / (1.0 + 0.5 + 1.0 / 3.0)).abs() < 1e-18);
        assert!(L2pParams {
            gamma: -1.0,
            ..L2pParams::default()
        }
        .check()
        .is_err());
        Ok(())
    }
}
