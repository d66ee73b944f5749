//! Caller-supplied parts of a run that are not a training method: gradient hooks, which run
//! between a step's backward pass and the optimizer step, and layer kernels, which every
//! forward pass of the run goes through.
//!
//! **Gradient hooks.**
//! This is where data-parallel training reduces gradients across workers (each worker runs
//! the step on its shard, a hook replaces every gradient by the mean over workers, and every
//! worker applies the same update), and where gradient clipping or logging of gradient norms
//! would go. Hooks run in order, after the loop has checked the step's loss and before it
//! checks the gradients the optimizer will apply.

use crate::Result;
use candle_core::backprop::GradStore;
use std::sync::Arc;
use temper_core::hooks::LayerHook;
use temper_core::{Network, ParamStore};

/// Sees, and may replace, the gradients of one iteration before the optimizer applies them.
pub trait GradHook: Send {
    /// Called once per iteration with its number (0-based), the model's parameters (not yet
    /// updated) and the gradients the step computed.
    fn on_grads(&mut self, iter: u64, params: &ParamStore, grads: &mut GradStore) -> Result<()>;
}

/// A layer hook the caller puts on every layer of the trained model for the whole run: the
/// step's forward passes, its inner attack and the validation all run through it, and the
/// optimizer still updates the model's own parameters.
///
/// This is how quantization-aware (adversarial) training runs through a quantizer that
/// temper-train knows nothing of (it does not depend on temper-quant): the caller builds a
/// hook that gives each layer its quantized weights and hands the gradient straight through
/// (`temper_quant::qat::QatHook`), and any training method, fine-tuning on PGD
/// examples included, becomes quantization-aware unchanged. The run records [`spec`] as
/// `quantize` in config.toml (set [`crate::TrainConfig::quantize`] to it), so a resumed run
/// must be given a transform with the same spec, and the weight files say what they were trained
/// through.
///
/// [`spec`]: LayerTransform::spec
pub trait LayerTransform: Send {
    /// What the hook computes, as recorded in the configuration, e.g. `4,per-channel,first-last=8`.
    fn spec(&self) -> String;

    /// The hook to add to `net` for the run.
    fn hook(&self, net: &Network) -> Result<Arc<dyn LayerHook>>;
}
