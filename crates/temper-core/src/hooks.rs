//! Layer hooks: observers and input transforms that see every layer by its parameter name.
//!
//! The compute under a layer is its [`Kernels`](crate::kernels::Kernels); what watches or
//! changes a layer (a recorder keeping activations for calibration, activation quantization
//! rounding a layer's input) is a [`LayerHook`], installed on a
//! [`Network`](crate::Network) beside the kernels with
//! [`Network::add_hook`](crate::Network::add_hook). Hooks and kernels are independent: swapping
//! the kernels (a faster backend, CUDA) keeps the hooks, and a hook never has to forward
//! calls to the kernels under it.
//!
//! A layer is named as in PyTorch's `state_dict` without the parameter suffix: the
//! convolution whose weight is `layer1.0.conv1.weight` is `layer1.0.conv1`.

use crate::kernels::ConvCfg;
use crate::Result;
use candle_core::Tensor;
use std::borrow::Cow;
use std::sync::Arc;

/// What kind of layer a hook sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A 2-D convolution with its geometry.
    Conv(ConvCfg),
    /// A fully connected layer.
    Linear,
    /// A BatchNorm layer (either mode).
    BatchNorm,
}

/// One layer application, as a hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct LayerCall<'a> {
    /// The layer's name: its parameters' `state_dict` prefix.
    pub name: &'a str,
    /// Convolution, linear or BatchNorm.
    pub kind: LayerKind,
    /// The weight's shape (`(out, in / groups, kh, kw)`, `(out, in)` or `(C,)`).
    pub weight_shape: &'a [usize],
    /// Whether the layer adds a bias (always true for BatchNorm).
    pub has_bias: bool,
}

/// Something that watches layers, or replaces their input, without being a compute backend.
///
/// Both methods default to doing nothing. Hooks run in the order they were added.
pub trait LayerHook: Send + Sync + std::fmt::Debug {
    /// The input the layer should compute on: `Ok(None)` keeps `x`. Activation quantization
    /// returns the rounded input here (with a straight-through gradient).
    fn input(&self, call: &LayerCall<'_>, x: &Tensor) -> Result<Option<Tensor>> {
        let _ = (call, x);
        Ok(None)
    }

    /// The weight a convolution or linear layer should compute with: `Ok(None)` keeps `w`.
    /// Quantization-aware training returns the fake-quantized weight here (with a
    /// straight-through gradient to the float weight). Not called for BatchNorm.
    fn weight(&self, call: &LayerCall<'_>, w: &Tensor) -> Result<Option<Tensor>> {
        let _ = (call, w);
        Ok(None)
    }

    /// Sees the layer's input as it arrived (before any hook replaced it, so that its id is
    /// the previous layer's output id) and the layer's output.
    fn output(&self, call: &LayerCall<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
        let _ = (call, x, y);
        Ok(())
    }
}

/// The hooks of one forward pass, in order.
pub type Hooks = [Arc<dyn LayerHook>];

/// The input after every hook's [`LayerHook::input`], borrowed when no hook changes it.
pub(crate) fn apply_input<'x>(hooks: &Hooks, call: &LayerCall<'_>, x: &'x Tensor) -> Result<Cow<'x, Tensor>> {
    let mut cur = Cow::Borrowed(x);
    for h in hooks {
        if let Some(next) = h.input(call, &cur)? {
            cur = Cow::Owned(next);
        }
    }
    Ok(cur)
}

/// The weight after every hook's [`LayerHook::weight`], borrowed when no hook changes it.
pub(crate) fn apply_weight<'w>(
    hooks: &Hooks,
    call: &LayerCall<'_>,
    w: &'w Tensor,
) -> Result<Cow<'w, Tensor>> {
    let mut cur = Cow::Borrowed(w);
    for h in hooks {
        if let Some(next) = h.weight(call, &cur)? {
            cur = Cow::Owned(next);
        }
    }
    Ok(cur)
}

/// Calls every hook's [`LayerHook::output`].
pub(crate) fn apply_output(hooks: &Hooks, call: &LayerCall<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    for h in hooks {
        h.output(call, x, y)?;
    }
    Ok(())
}
