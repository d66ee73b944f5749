//! Fast adversarial training (Wong, Rice and Kolter 2020, "Fast is better than free"): FGSM
//! from a uniform random start, stopped when catastrophic overfitting sets in.

use crate::step::{adversarial_cross_entropy, StepBatch, StepCtx, StepOutput, TrainStep, Validation};
use crate::Result;
use temper_attacks::{Fgsm, FgsmParams};

/// FGSM-RS training with the catastrophic-overfitting stop.
#[derive(Debug, Clone)]
pub struct FastAt {
    attack: Fgsm,
    co_drop: f64,
}

impl FastAt {
    /// FGSM with budget `eps` and step size `alpha` (Wong et al. use 1.25 eps) from a
    /// uniform start in the eps ball; the run stops when validation robust accuracy falls
    /// more than `co_drop` (absolute) below its best.
    pub fn new(eps: f64, alpha: f64, co_drop: f64) -> Result<Self> {
        let attack = FgsmParams {
            eps,
            random_start: Some(alpha),
            ..FgsmParams::default()
        }
        .check()?;
        Ok(FastAt { attack, co_drop })
    }
}

impl TrainStep for FastAt {
    fn name(&self) -> &'static str {
        "fgsm-rs"
    }

    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        adversarial_cross_entropy(&self.attack, batch, ctx)
    }

    /// Catastrophic overfitting shows as a sudden collapse of PGD robust accuracy while
    /// FGSM accuracy keeps rising (Wong et al., section 5.2); stopping at the collapse keeps
    /// the weights from before it in `best.safetensors`.
    fn after_validation(&mut self, v: &Validation) -> Option<String> {
        let best = v.best_before?;
        (best - v.robust > self.co_drop).then(|| {
            format!(
                "catastrophic overfitting: validation robust accuracy fell from {:.1}% to {:.1}% in epoch {}; \
                 best.safetensors holds the weights from before",
                100.0 * best,
                100.0 * v.robust,
                v.epoch
            )
        })
    }
}
