//! [`QuantModel`]: a quantized classifier that every Temper tool takes as it is.

use crate::act::{ActHook, ActQuant};
use crate::fold::FoldReport;
use crate::graph::LayerGraph;
use crate::params::{ActParams, Method};
use crate::{Granularity, QTensor, Result, WeightScheme};
use candle_core::{Device, Tensor};
use std::sync::Arc;
use temper_core::{Classifier, ForwardOpts, Mode, ModelInfo, Network, ParamStore};
use temper_models::ValidModelConfig;

/// One quantized convolution or linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLayer {
    /// The PyTorch module name.
    pub name: String,
    /// The quantized (BatchNorm-folded) weight.
    pub weight: QTensor,
    /// The grid of the layer's input, when activations are quantized.
    pub input: Option<ActQuant>,
    /// GPFQ's relative output error on the calibration rows, `|XW - X~Q| / |XW|`.
    pub gpfq_error: Option<f64>,
}

/// How a model was quantized: written into exported files and reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantInfo {
    /// The default weight grid.
    pub scheme: WeightScheme,
    /// Scales per tensor or per output channel.
    pub granularity: Granularity,
    /// Round to nearest or GPFQ.
    pub method: Method,
    /// The first and last layers' width, if they have their own.
    pub first_last_bits: Option<u8>,
    /// Activation quantization, if any.
    pub act: Option<ActParams>,
    /// BatchNorms folded into convolutions, and those kept in float.
    pub fold: FoldReport,
    /// Whether biases were corrected on calibration data.
    pub bias_correction: bool,
    /// Number of calibration images used (0 for data-free round to nearest).
    pub calib_images: usize,
}

impl QuantInfo {
    /// One line for people, e.g. `gpfq 4-bit, per-channel, first/last 8-bit, weights only`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {}, {}, first/last {}, {}",
            self.method.name(),
            self.scheme,
            self.granularity.name().replace('_', "-"),
            self.first_last_bits
                .map_or("as the rest".to_string(), |b| format!("{b}-bit")),
            self.act.map_or("weights only".to_string(), |a| format!(
                "activations {} bits",
                a.bits
            )),
        );
        if self.bias_correction {
            s.push_str(", bias-corrected");
        }
        s
    }
}

/// A quantized model. It implements [`Classifier`], so attacks, evaluation and every other
/// tool run on it unchanged.
///
/// Forward: the network's parameters hold the dequantized weights (`code * scale`, exactly
/// the values an integer kernel multiplies by, after BatchNorm folding), and, when
/// activations are quantized, every quantized layer's input is rounded onto its calibrated
/// grid by a layer hook ([`ActHook`]), whatever kernels run under the layers.
///
/// Backward: activation rounding passes gradients straight through
/// ([`crate::ste::straight_through`]), so white-box attacks see the gradient of the quantized
/// network rather than the zero gradient of a rounding step. Weights need no estimator for
/// input gradients (the product with fixed quantized weights is differentiated exactly); a
/// gradient with respect to a weight parameter is the straight-through gradient of its
/// float latent.
///
/// A post-training-quantized model is an inference artefact: its BatchNorms are folded into
/// constants, so it always computes with eval-mode semantics. [`Classifier::set_mode`] is
/// recorded (so [`temper_core::ModeGuard`] works) but does not change the computation.
pub struct QuantModel {
    net: Network,
    config: ValidModelConfig,
    graph: LayerGraph,
    layers: Vec<QuantizedLayer>,
    info: QuantInfo,
}

impl std::fmt::Debug for QuantModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantModel")
            .field("model", &self.net.info().name)
            .field("layers", &self.layers.len())
            .field("info", &self.info)
            .finish()
    }
}

impl QuantModel {
    /// Assembles a quantized model from a network whose parameters already hold the
    /// dequantized weights, and installs the activation grids of `layers`.
    pub(crate) fn assemble(
        net: Network,
        config: ValidModelConfig,
        graph: LayerGraph,
        layers: Vec<QuantizedLayer>,
        info: QuantInfo,
    ) -> Result<Self> {
        let act: Vec<_> = layers
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.input?)))
            .collect();
        if !act.is_empty() {
            net.add_hook(Arc::new(ActHook::new(&act)));
        }
        Ok(QuantModel {
            net,
            config,
            graph,
            layers,
            info,
        })
    }

    /// The underlying network, with dequantized weights and (if enabled) the activation
    /// quantization hook. Its kernels can be swapped freely: the hook stays.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The architecture.
    pub fn config(&self) -> &ValidModelConfig {
        &self.config
    }

    /// The layer graph (execution order, BatchNorm pairs).
    pub fn graph(&self) -> &LayerGraph {
        &self.graph
    }

    /// The quantized layers, in execution order (layers kept in float are absent).
    pub fn layers(&self) -> &[QuantizedLayer] {
        &self.layers
    }

    /// How the model was quantized.
    pub fn quant_info(&self) -> &QuantInfo {
        &self.info
    }

    /// Bytes of the quantized weights as exported (packed codes, scales and zero points).
    pub fn quantized_weight_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.weight.stored_bytes()).sum()
    }
}

impl Classifier for QuantModel {
    fn info(&self) -> &ModelInfo {
        self.net.info()
    }

    fn forward_opts(&self, x: &Tensor, opts: ForwardOpts) -> temper_core::Result<Tensor> {
        self.net.forward_opts(
            x,
            ForwardOpts {
                mode: Mode::Eval,
                param_grads: opts.param_grads,
            },
        )
    }

    fn mode(&self) -> Mode {
        self.net.mode()
    }

    fn set_mode(&self, mode: Mode) {
        self.net.set_mode(mode);
    }

    fn params(&self) -> &ParamStore {
        self.net.params()
    }

    fn device(&self) -> &Device {
        self.net.device()
    }
}
