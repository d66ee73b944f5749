//! The layer graph a quantizer needs: which convolutions and linear layers a model runs, in
//! which order, with which geometry, and which BatchNorm directly consumes each one's output.
//!
//! It is read off one eval-mode forward pass of a probe batch by a layer hook that records
//! every call with the layer's `state_dict` name; models need no annotation.

use crate::record::{record, CallKind, Capture};
use crate::{Error, Result};
use candle_core::{Tensor, TensorId};
use rand::Rng as _;
use std::collections::HashMap;
use temper_core::kernels::ConvCfg;
use temper_core::{Classifier, Network};

/// What a quantizable layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A 2-D convolution with this geometry.
    Conv(ConvCfg),
    /// A fully connected layer.
    Linear,
}

/// A convolution or linear layer, as the forward pass runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// The PyTorch module name, e.g. `layer1.0.conv1`; its weight is `<name>.weight`.
    pub name: String,
    /// Convolution or linear.
    pub kind: LayerKind,
    /// The weight's shape: `(out, in / groups, kh, kw)` or `(out, in)`.
    pub weight_shape: Vec<usize>,
    /// True when the layer has its own bias (`<name>.bias`).
    pub has_bias: bool,
    /// The BatchNorm whose input is exactly this layer's output: a candidate for folding
    /// (whether the output has other consumers is checked when folding).
    pub bn: Option<String>,
}

impl Layer {
    /// Number of weights.
    pub fn num_weights(&self) -> usize {
        self.weight_shape.iter().product()
    }

    /// The key of the weight tensor.
    pub fn weight_key(&self) -> String {
        format!("{}.weight", self.name)
    }

    /// Inputs per output neuron: `in / groups * kh * kw`, or `in`.
    pub fn fan_in(&self) -> usize {
        self.num_weights() / self.weight_shape[0].max(1)
    }
}

/// Every quantizable layer of a model, in execution order.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGraph {
    model: String,
    layers: Vec<Layer>,
    batch_norms: Vec<String>,
}

/// A seeded batch of `n` uniform random images shaped for `model`.
pub(crate) fn probe(model: &dyn Classifier, n: usize) -> Result<Tensor> {
    let [c, h, w] = model.input_shape();
    let mut rng = temper_core::seed::rng_with(0, "temper-quant/probe");
    let v: Vec<f32> = (0..n * c * h * w).map(|_| rng.random::<f32>()).collect();
    Ok(Tensor::from_vec(v, (n, c, h, w), model.device())?)
}

impl LayerGraph {
    /// Traces `net` on a probe batch.
    ///
    /// Fails when a convolution or linear layer's weight is not in the parameter store, or
    /// when one layer runs twice in a forward pass (shared weights).
    pub fn trace(net: &Network) -> Result<Self> {
        let model = net.info().name.clone();
        let unsupported = |reason: String| Error::Unsupported {
            model: model.clone(),
            reason,
        };
        let x = probe(net, 2)?;
        let (_, calls) = record(net, &x, Capture::Nothing, Capture::Nothing)?;
        let mut layers: Vec<Layer> = Vec::new();
        let mut by_output: HashMap<TensorId, usize> = HashMap::new();
        let mut batch_norms = Vec::new();
        for call in calls {
            let kind = match call.kind {
                CallKind::Conv(cfg) => LayerKind::Conv(cfg),
                CallKind::Linear => LayerKind::Linear,
                CallKind::BatchNorm => {
                    let name = call.layer;
                    if let Some(&i) = by_output.get(&call.input) {
                        if layers[i].bn.is_none() {
                            layers[i].bn = Some(name.clone());
                        }
                    }
                    batch_norms.push(name);
                    continue;
                }
            };
            let name = call.layer;
            if layers.iter().any(|l| l.name == name) {
                return Err(unsupported(format!(
                    "layer '{name}' runs twice in one forward pass; shared weights are not supported"
                )));
            }
            by_output.insert(call.output, layers.len());
            layers.push(Layer {
                name,
                kind,
                weight_shape: call.weight_shape,
                has_bias: call.has_bias,
                bn: None,
            });
        }
        if layers.is_empty() {
            return Err(unsupported("it has no convolution or linear layer".into()));
        }
        Ok(LayerGraph {
            model,
            layers,
            batch_norms,
        })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Convolution and linear layers in execution order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// A layer by name.
    pub fn get(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// The first layer to run (it sees the input image).
    pub fn first(&self) -> &Layer {
        &self.layers[0]
    }

    /// The last layer to run (it produces the logits).
    pub fn last(&self) -> &Layer {
        &self.layers[self.layers.len() - 1]
    }

    /// Every BatchNorm, in execution order.
    pub fn batch_norms(&self) -> &[String] {
        &self.batch_norms
    }

    /// Total number of weights in the quantizable layers.
    pub fn num_weights(&self) -> usize {
        self.layers.iter().map(Layer::num_weights).sum()
    }
}
