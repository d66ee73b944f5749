//! TRADES (Zhang et al. 2019): the inner maximisation of KL(f(x) || f(x')) over the L-inf
//! ball, and the training loss CE(f(x), y) + beta * KL(f(x) || f(x')).
//!
//! The functions follow the reference `trades.py` operation for operation (checked against
//! PyTorch in `tests/trades_parity.rs`): the KL term is `KLDivLoss(reduction="sum")` of the
//! perturbed log-probabilities against the clean probabilities, divided by the batch size.

use crate::step::{finish, StepBatch, StepCtx, StepOutput, TrainStep};
use crate::Result;
use candle_core::{Tensor, Var};
use rand_distr::{Distribution, Normal};
use temper_core::seed::Rng;
use temper_core::{Classifier, ForwardOpts, Mode};

pub use temper_core::loss::kl_div_sum as kl_sum;

/// The random start of the reference: `x + 0.001 N(0, 1)` (not clipped to `[0, 1]`).
pub fn random_start(x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let normal = Normal::new(0.0f32, 0.001).map_err(|e| crate::error::param("trades", e.to_string()))?;
    let noise: Vec<f32> = (0..x.elem_count()).map(|_| normal.sample(rng)).collect();
    Ok((x + Tensor::from_vec(noise, x.shape(), x.device())?)?)
}

/// The KL-maximising perturbation from `start`: `steps` signed-gradient steps of size
/// `alpha` on KL(f(x) || f(x')), each projected onto the eps ball around `x` and onto
/// `[0, 1]`. The model runs in eval mode as far as the attack is concerned (the reference
/// calls `model.eval()`); `model` may be an [`AttackView`](crate::attack_bn::AttackView)
/// that overrides it. Returns the point and the images passed forward and backward.
pub fn perturb_from(
    model: &dyn Classifier,
    x: &Tensor,
    start: Tensor,
    eps: f64,
    alpha: f64,
    steps: usize,
) -> Result<(Tensor, u64, u64)> {
    let eval = ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    let n = x.dim(0)? as u64;
    let clean = model.forward_opts(x, eval)?.detach();
    let mut adv = start;
    for _ in 0..steps {
        let v = Var::from_tensor(&adv.detach())?;
        let logits = model.forward_opts(v.as_tensor(), eval)?;
        let grads = kl_sum(&clean, &logits)?.backward()?;
        let g = grads
            .get(v.as_tensor())
            .cloned()
            .map_or_else(|| adv.zeros_like(), Ok)?;
        adv = (adv + (g.sign()? * alpha)?)?;
        let delta = (&adv - x)?.clamp(-eps as f32, eps as f32)?;
        adv = (x + delta)?.clamp(0f32, 1f32)?.detach();
    }
    // One clean forward, then a forward and a backward per step.
    Ok((adv, n * (1 + steps as u64), n * steps as u64))
}

/// The reference's perturbation: [`random_start`], then [`perturb_from`]. Returns the point
/// and the images passed forward.
pub fn perturb(
    model: &dyn Classifier,
    x: &Tensor,
    eps: f64,
    alpha: f64,
    steps: usize,
    rng: &mut Rng,
) -> Result<(Tensor, u64)> {
    let start = random_start(x, rng)?;
    let (adv, forward, _) = perturb_from(model, x, start, eps, alpha, steps)?;
    Ok((adv, forward))
}

/// The TRADES loss from clean and perturbed logits: `CE(clean, y) + beta * KL / n`.
pub fn loss(clean: &Tensor, adv: &Tensor, y: &Tensor, beta: f64) -> Result<Tensor> {
    let n = clean.dim(0)? as f64;
    let kl = (kl_sum(clean, adv)? / n)?;
    Ok((temper_core::loss::cross_entropy_mean(clean, y)? + (kl * beta)?)?)
}

/// The TRADES step: perturb, then minimise [`loss`] with the model in train mode.
#[derive(Debug, Clone, Copy)]
pub struct Trades {
    eps: f64,
    alpha: f64,
    steps: usize,
    beta: f64,
}

impl Trades {
    /// Budget `eps`, inner step size `alpha`, `steps` inner steps, trade-off `beta`.
    pub fn new(eps: f64, alpha: f64, steps: usize, beta: f64) -> Self {
        Trades {
            eps,
            alpha,
            steps,
            beta,
        }
    }
}

impl TrainStep for Trades {
    fn name(&self) -> &'static str {
        "trades"
    }

    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        let n = batch.x.dim(0)? as u64;
        let start = random_start(batch.x, ctx.rng)?;
        let (adv, forward, backward) =
            perturb_from(ctx.attack_model, batch.x, start, self.eps, self.alpha, self.steps)?;
        ctx.cost.forward += forward;
        ctx.cost.backward += backward;
        let adv_logits = ctx.model.forward(&adv)?;
        let clean_logits = ctx.model.forward(batch.x)?;
        ctx.cost.forward += 2 * n;
        ctx.cost.backward += 2 * n;
        let loss = loss(&clean_logits, &adv_logits, batch.y, self.beta)?;
        // The running accuracy is on the perturbed inputs, as for the other methods.
        finish(&loss, adv_logits)
    }
}
