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
use temper_core::kernels::Kernels;
use temper_core::{Network, ParamStore};

/// Sees, and may replace, the gradients of one iteration before the optimizer applies them.
pub trait GradHook: Send {
    /// Called once per iteration with its number (0-based), the model's parameters (not yet
    /// updated) and the gradients the step computed.
    fn on_grads(&mut self, iter: u64, params: &ParamStore, grads: &mut GradStore) -> Result<()>;
}

/// Kernels the caller puts under every layer of the trained model for the whole run: the
/// step's forward passes, its inner attack and the validation all run through them, and the
/// optimizer still updates the model's own parameters.
///
/// This is how quantization-aware (adversarial) training runs through a quantizer that
/// temper-train knows nothing of (it does not depend on temper-quant): the caller builds
/// kernels that compute each layer with its quantized weights and hand the gradient straight
/// through (`temper_quant::qat::QatKernels`), and any training method, fine-tuning on PGD
/// examples included, becomes quantization-aware unchanged. The run records [`spec`] as
/// `quantize` in config.toml (set [`crate::TrainConfig::quantize`] to it), so a resumed run
/// must be given kernels with the same spec, and the weight files say what they were trained
/// through.
///
/// [`spec`]: LayerKernels::spec
pub trait LayerKernels: Send {
    /// What the kernels compute, as recorded in the configuration, e.g. `4,per-channel,first-last=8`.
    fn spec(&self) -> String;

    /// The kernels to install on `net`, wrapping its current ones.
    fn wrap(&self, net: &Network) -> Result<Arc<dyn Kernels>>;
}
