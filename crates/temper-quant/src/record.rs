//! Watching a forward pass: a [`LayerHook`] that records which layer ran, on which tensor,
//! and optionally keeps its input or output.
//!
//! Every convolution, linear and BatchNorm layer calls the network's hooks with its PyTorch
//! name, so the recorder knows each call's layer without touching the model definitions or
//! the kernels under them.

use candle_core::{Tensor, TensorId};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use temper_core::hooks::{LayerCall, LayerHook, LayerKind};
use temper_core::kernels::ConvCfg;
use temper_core::{Classifier, ForwardOpts, Mode, Network};

/// The kind of a recorded kernel call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    Conv(ConvCfg),
    Linear,
    BatchNorm,
}

/// One recorded kernel call.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub kind: CallKind,
    /// The layer's name.
    pub layer: String,
    pub input: TensorId,
    pub output: TensorId,
    pub weight_shape: Vec<usize>,
    pub has_bias: bool,
    /// The input, detached, when asked for.
    pub x: Option<Tensor>,
    /// The output, detached, when asked for.
    pub y: Option<Tensor>,
}

/// Which layers' tensors to keep.
#[derive(Debug, Clone, Default)]
pub(crate) enum Capture {
    #[default]
    Nothing,
    Only(HashSet<String>),
}

impl Capture {
    pub fn one(name: &str) -> Self {
        Capture::Only(HashSet::from([name.to_string()]))
    }

    fn wants(&self, layer: &str) -> bool {
        match self {
            Capture::Nothing => false,
            Capture::Only(s) => s.contains(layer),
        }
    }
}

/// A hook that records every convolution, linear and BatchNorm call.
#[derive(Debug)]
pub(crate) struct Recorder {
    inputs: Capture,
    outputs: Capture,
    calls: Mutex<Vec<Call>>,
}

impl LayerHook for Recorder {
    fn output(&self, call: &LayerCall<'_>, x: &Tensor, y: &Tensor) -> temper_core::Result<()> {
        let kind = match call.kind {
            LayerKind::Conv(cfg) => CallKind::Conv(cfg),
            LayerKind::Linear => CallKind::Linear,
            LayerKind::BatchNorm => CallKind::BatchNorm,
        };
        let record = Call {
            kind,
            x: self.inputs.wants(call.name).then(|| x.detach()),
            y: self.outputs.wants(call.name).then(|| y.detach()),
            layer: call.name.to_string(),
            input: x.id(),
            output: y.id(),
            weight_shape: call.weight_shape.to_vec(),
            has_bias: call.has_bias,
        };
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        Ok(())
    }
}

/// Removes the recorder when dropped, even on an early return.
struct Detach<'a> {
    net: &'a Network,
    hook: Arc<dyn LayerHook>,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.net.remove_hook(&self.hook);
    }
}

/// Eval-mode forward options without parameter gradients.
pub(crate) const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

/// Runs `x` through `net` in eval mode with a recorder after its current hooks, and returns
/// the logits and the calls. The recorder is removed afterwards.
///
/// Only networks this crate built itself are recorded, so no other thread is using them.
pub(crate) fn record(
    net: &Network,
    x: &Tensor,
    inputs: Capture,
    outputs: Capture,
) -> crate::Result<(Tensor, Vec<Call>)> {
    let recorder = Arc::new(Recorder {
        inputs,
        outputs,
        calls: Mutex::new(Vec::new()),
    });
    let logits = {
        let hook: Arc<dyn LayerHook> = recorder.clone();
        net.add_hook(hook.clone());
        let _detach = Detach { net, hook };
        net.forward_opts(x, EVAL)?
    };
    let calls = std::mem::take(&mut *recorder.calls.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((logits, calls))
}
