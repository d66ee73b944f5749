//! TRADES (Zhang et al. 2019): the inner maximisation of KL(f(x) || f(x')) over the L-inf
//! ball, and the training loss CE(f(x), y) + beta * KL(f(x) || f(x')).

use crate::Result;
use candle_core::{Tensor, Var};
use rand_distr::{Distribution, Normal};
use temper_core::seed::Rng;
use temper_core::{Classifier, ForwardOpts, Mode};

pub use temper_core::loss::kl_div_sum as kl_sum;

/// The KL-maximising perturbation: start at x + 0.001 N(0, 1), then `steps` signed-gradient
/// steps of size `alpha`, projected onto the eps ball and [0, 1]. Returns the point and the
/// images passed forward and backward.
pub fn perturb(
    model: &dyn Classifier,
    x: &Tensor,
    eps: f64,
    alpha: f64,
    steps: usize,
    rng: &mut Rng,
) -> Result<(Tensor, u64)> {
    let eval = ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    let n = x.dim(0)? as u64;
    let clean = model.forward_opts(x, eval)?.detach();
    let normal = Normal::new(0.0f32, 0.001).map_err(|e| crate::error::param("trades", e.to_string()))?;
    let noise: Vec<f32> = (0..x.elem_count()).map(|_| normal.sample(rng)).collect();
    let mut adv = (x + Tensor::from_vec(noise, x.shape(), x.device())?)?;
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
    // One clean forward, then a forward and backward per step.
    Ok((adv, n * (1 + steps as u64)))
}
