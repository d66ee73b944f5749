//! Gradient hooks: code that runs between a step's backward pass and the optimizer step.
//!
//! This is where data-parallel training reduces gradients across workers (each worker runs
//! the step on its shard, a hook replaces every gradient by the mean over workers, and every
//! worker applies the same update), and where gradient clipping or logging of gradient norms
//! would go. Hooks run in order, after the loop has checked the step's loss and before it
//! checks the gradients the optimizer will apply.

use crate::Result;
use candle_core::backprop::GradStore;
use temper_core::ParamStore;

/// Sees, and may replace, the gradients of one iteration before the optimizer applies them.
pub trait GradHook: Send {
    /// Called once per iteration with its number (0-based), the model's parameters (not yet
    /// updated) and the gradients the step computed.
    fn on_grads(&mut self, iter: u64, params: &ParamStore, grads: &mut GradStore) -> Result<()>;
}
