//! Adversarial fine-tuning of given weights (after Jeddi, Shafiee and Wong 2020): a few
//! epochs of adversarial training from pre-trained weights, with a slow-start-fast-decay
//! schedule by default (set in the configuration, not here).

use crate::error::param;
use crate::step::{adversarial_cross_entropy, StepBatch, StepCtx, StepOutput, TrainStep};
use crate::Result;
use temper_attacks::{Attack, FgsmParams, PgdParams};

/// Cross-entropy on examples of the configured inner attack.
pub struct Finetune {
    attack: Box<dyn Attack>,
}

impl Finetune {
    /// `attack` is `pgd` (eps, alpha, steps) or `fgsm-rs` (eps, step size alpha).
    pub fn new(attack: &str, eps: f64, alpha: f64, steps: usize) -> Result<Self> {
        let attack: Box<dyn Attack> = match attack {
            "pgd" => Box::new(
                PgdParams {
                    eps,
                    alpha,
                    steps,
                    ..PgdParams::default()
                }
                .check()?,
            ),
            "fgsm-rs" => Box::new(
                FgsmParams {
                    eps,
                    random_start: Some(alpha),
                    ..FgsmParams::default()
                }
                .check()?,
            ),
            other => {
                return Err(param(
                    "finetune-attack",
                    format!("'{other}' is not pgd or fgsm-rs"),
                ))
            }
        };
        Ok(Finetune { attack })
    }
}

impl TrainStep for Finetune {
    fn name(&self) -> &'static str {
        "finetune"
    }

    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        adversarial_cross_entropy(self.attack.as_ref(), batch, ctx)
    }
}
