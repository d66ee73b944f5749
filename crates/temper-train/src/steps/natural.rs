//! Natural training: cross-entropy on the clean batch.

use crate::step::{cross_entropy, finish, StepBatch, StepCtx, StepOutput, TrainStep};
use crate::Result;

/// Clean examples only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Natural;

impl TrainStep for Natural {
    fn name(&self) -> &'static str {
        "natural"
    }

    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        let (loss, logits) = cross_entropy(ctx.model, batch.x, batch.y, ctx.cost)?;
        finish(&loss, logits)
    }
}
