//! Watching a forward pass from below: kernels that record which layer ran, on which tensor,
//! and optionally keep its input or output.
//!
//! Temper's layers hand their work to [`Kernels`]; a layer is recognised by the storage of the
//! parameter it passes down (its weight, or a BatchNorm's running mean), which it shares with
//! its entry in the [`ParamStore`]. That gives every kernel call the layer's PyTorch name
//! without touching the model definitions.

use candle_core::{Tensor, TensorId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use temper_core::kernels::{ConvCfg, Kernels};
use temper_core::{Classifier, ForwardOpts, Mode, Network, ParamStore};

/// A key that identifies a tensor's storage: equal for a [`candle_core::Var`], its clones and
/// its detached copies, different for any other allocation.
pub(crate) fn storage_key(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    std::ptr::from_ref::<candle_core::Storage>(&*storage) as usize
}

/// Storage key of every layer's identifying parameter, mapped to the layer's name:
/// `X.weight` of rank >= 2 (convolutions and linear layers) and `X.running_mean`
/// (BatchNorm) both name layer `X`.
pub(crate) fn layer_keys(store: &ParamStore) -> HashMap<usize, String> {
    let mut keys = HashMap::new();
    for e in store.entries() {
        let layer = if e.var.rank() >= 2 {
            e.name.strip_suffix("weight")
        } else {
            e.name.strip_suffix("running_mean")
        };
        if let Some(prefix) = layer {
            let name = prefix.strip_suffix('.').unwrap_or(prefix).to_string();
            keys.insert(storage_key(e.var.as_tensor()), name);
        }
    }
    keys
}

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
    /// The layer's name, when its parameter is in the store.
    pub layer: Option<String>,
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

    fn wants(&self, layer: Option<&String>) -> bool {
        match (self, layer) {
            (Capture::Nothing, _) | (Capture::Only(_), None) => false,
            (Capture::Only(s), Some(l)) => s.contains(l),
        }
    }
}

/// Kernels that delegate to `inner` and record every convolution, linear and BatchNorm call.
pub(crate) struct Recorder {
    inner: Arc<dyn Kernels>,
    names: HashMap<usize, String>,
    inputs: Capture,
    outputs: Capture,
    calls: Mutex<Vec<Call>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl Recorder {
    fn push(
        &self,
        kind: CallKind,
        key: &Tensor,
        x: &Tensor,
        y: &Tensor,
        weight_shape: Vec<usize>,
        has_bias: bool,
    ) {
        let layer = self.names.get(&storage_key(key)).cloned();
        let call = Call {
            kind,
            x: self.inputs.wants(layer.as_ref()).then(|| x.detach()),
            y: self.outputs.wants(layer.as_ref()).then(|| y.detach()),
            layer,
            input: x.id(),
            output: y.id(),
            weight_shape,
            has_bias,
        };
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
    }
}

impl Kernels for Recorder {
    fn name(&self) -> &str {
        "temper-quant-recorder"
    }

    // Quantization only ever runs models in eval mode: train-mode BatchNorm and pooling
    // pass through unrecorded.
    fn fallback(&self) -> &dyn Kernels {
        self.inner.as_ref()
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
    ) -> temper_core::Result<Tensor> {
        let y = self.inner.conv2d(x, weight, bias, cfg)?;
        self.push(
            CallKind::Conv(cfg),
            weight,
            x,
            &y,
            weight.dims().to_vec(),
            bias.is_some(),
        );
        Ok(y)
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> temper_core::Result<Tensor> {
        let y = self.inner.linear(x, weight, bias)?;
        self.push(
            CallKind::Linear,
            weight,
            x,
            &y,
            weight.dims().to_vec(),
            bias.is_some(),
        );
        Ok(y)
    }

    fn batch_norm_eval(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> temper_core::Result<Tensor> {
        let y = self.inner.batch_norm_eval(x, mean, var, gamma, beta, eps)?;
        self.push(CallKind::BatchNorm, mean, x, &y, vec![], true);
        Ok(y)
    }
}

/// Puts the previous kernels back when dropped, even on an early return.
struct Restore<'a> {
    net: &'a Network,
    previous: Arc<dyn Kernels>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.net.set_kernels(self.previous.clone());
    }
}

/// Eval-mode forward options without parameter gradients.
pub(crate) const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

/// Runs `x` through `net` in eval mode with a recorder over its current kernels, and returns
/// the logits and the calls. The network's kernels are restored afterwards.
///
/// Only networks this crate built itself are recorded, so no other thread is using them.
pub(crate) fn record(
    net: &Network,
    x: &Tensor,
    inputs: Capture,
    outputs: Capture,
) -> crate::Result<(Tensor, Vec<Call>)> {
    let previous = net.kernels();
    let recorder = Arc::new(Recorder {
        inner: previous.clone(),
        names: layer_keys(net.params()),
        inputs,
        outputs,
        calls: Mutex::new(Vec::new()),
    });
    let logits = {
        let _restore = Restore { net, previous };
        net.set_kernels(recorder.clone());
        net.forward_opts(x, EVAL)?
    };
    let calls = std::mem::take(&mut *recorder.calls.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((logits, calls))
}
