//! PGD adversarial training (Madry et al. 2018): cross-entropy on PGD examples.

use crate::step::{adversarial_cross_entropy, StepBatch, StepCtx, StepOutput, TrainStep};
use crate::Result;
use temper_attacks::{Pgd, PgdParams};

/// Madry et al.'s method: an L-inf PGD attack from a random start, then a step on the
/// adversarial batch.
#[derive(Debug, Clone)]
pub struct PgdAt {
    attack: Pgd,
}

impl PgdAt {
    /// PGD with budget `eps`, step size `alpha` and `steps` steps.
    pub fn new(eps: f64, alpha: f64, steps: usize) -> Result<Self> {
        Ok(PgdAt {
            attack: madry_pgd(eps, alpha, steps)?,
        })
    }
}

/// Madry et al.'s inner attack: L-inf PGD on the cross-entropy from a uniform random start,
/// budget `eps`, step `alpha`, `steps` steps.
pub(crate) fn madry_pgd(eps: f64, alpha: f64, steps: usize) -> Result<Pgd> {
    Ok(PgdParams {
        eps,
        alpha,
        steps,
        ..PgdParams::default()
    }
    .check()?)
}

impl TrainStep for PgdAt {
    fn name(&self) -> &'static str {
        "pgd-at"
    }

    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        adversarial_cross_entropy(&self.attack, batch, ctx)
    }
}
