//! Quantization-aware training: every layer computes with its quantized weights, and the
//! gradient of each quantized weight is handed straight through to its float latent weight.
//!
//! [`QatHook`] is a layer hook (as [`crate::act::ActHook`] is for activations) that replaces
//! the weight of every convolution and linear layer it knows, by the layer's name, with
//! `straight_through(w, Q(w))` ([`crate::ste`]): the
//! value `Q(w)` forward, the identity backward. `Q` is the data-free rounding of
//! [`Method::data_free`] on each layer's grid (first and last layer at their own width, as
//! after training): round to nearest for uniform, TWN ternary and binary grids, or pruning
//! ternary quantization ([`crate::pruned_ternary`]). Installed under a model that a trainer
//! fine-tunes on adversarial examples, the inner attack, the loss and the validation all see
//! the quantized network, and the optimizer updates the float weights: quantization-aware
//! adversarial fine-tuning.
//!
//! BatchNorms are not folded during training (their batch statistics are part of the
//! computation), so [`export`] quantizes the trained weights with the same rounding and the
//! BatchNorms kept in float: the exported model computes exactly what the trained network
//! computes in eval mode with this hook.

use crate::error::param;
use crate::graph::LayerGraph;
use crate::params::{Method, Precision, QuantParams, ValidQuantParams};
use crate::{quantize, Granularity, QuantModel, Result, WeightScheme};
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::Arc;
use temper_core::hooks::{LayerCall, LayerHook};
use temper_core::{Classifier, Network};
use temper_models::ValidModelConfig;

/// Unchecked settings of quantization-aware training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QatParams {
    /// The weight grid of every layer but the first and last.
    pub scheme: WeightScheme,
    /// One scale per tensor or per output channel.
    pub granularity: Granularity,
    /// The first and last layers' width, or `None` to treat them like the others.
    pub first_last_bits: Option<u8>,
    /// [`Method::Rtn`] or [`Method::PrunedTernary`] (GPFQ needs data and is post-training only).
    pub method: Method,
}

impl QatParams {
    /// Round to nearest onto `scheme`, per output channel, first and last layer at 8 bits.
    pub fn new(scheme: WeightScheme) -> Self {
        QatParams {
            scheme,
            granularity: Granularity::PerChannel,
            first_last_bits: Some(8),
            method: Method::Rtn,
        }
    }

    /// Parses `GRID[,per-tensor|per-channel][,first-last=N|none]`, where `GRID` is a width of
    /// 2 to 8 bits, `ternary` (TWN), `binary`, or `ptq` / `ptq:prune=F` (pruning ternary
    /// quantization). [`QatParams`]'s `Display` writes this form back.
    ///
    /// ```
    /// use temper_quant::qat::QatParams;
    /// use temper_quant::{Granularity, Method, WeightScheme};
    /// let p = QatParams::parse("ptq:prune=0.6,per-tensor,first-last=none")?;
    /// assert_eq!(p.scheme, WeightScheme::Ternary);
    /// assert_eq!(p.method, Method::PrunedTernary { prune: 0.6 });
    /// assert_eq!((p.granularity, p.first_last_bits), (Granularity::PerTensor, None));
    /// assert_eq!(QatParams::parse(&p.to_string())?, p);
    /// assert_eq!(QatParams::parse("4")?.to_string(), "4,per-channel,first-last=8");
    /// # Ok::<(), temper_quant::Error>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = s.split(',').map(str::trim);
        let grid = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut p = if grid.starts_with("ptq") || grid.starts_with("pruned-ternary") {
            QatParams {
                method: Method::parse(&grid, crate::GpfqParams::default())?,
                ..QatParams::new(WeightScheme::Ternary)
            }
        } else {
            QatParams::new(WeightScheme::parse(&grid, true).map_err(|e| param("quantize", e.to_string()))?)
        };
        for opt in parts {
            match opt.to_ascii_lowercase().as_str() {
                "per-tensor" => p.granularity = Granularity::PerTensor,
                "per-channel" => p.granularity = Granularity::PerChannel,
                "first-last=none" => p.first_last_bits = None,
                o => match o.strip_prefix("first-last=").map(str::parse::<u8>) {
                    Some(Ok(b)) => p.first_last_bits = Some(b),
                    _ => {
                        return Err(param(
                            "quantize",
                            format!("'{s}': '{opt}' is not per-tensor, per-channel or first-last=N|none"),
                        ))
                    }
                },
            }
        }
        Ok(p)
    }

    /// Validates: a valid grid, round to nearest or pruning ternary quantization (the latter
    /// with ternary weights), first and last widths of 2 to 8 bits.
    pub fn check(self) -> Result<ValidQatParams> {
        if let Method::Gpfq(_) = self.method {
            return Err(param(
                "quantize",
                "GPFQ needs calibration data and is a post-training method; train with rtn or ptq",
            ));
        }
        let export = QuantParams {
            scheme: self.scheme,
            granularity: self.granularity,
            method: self.method,
            first_last_bits: self.first_last_bits,
            act: None,
            fold_batchnorm: false,
            bias_correction: false,
            ..QuantParams::new(self.scheme)
        }
        .check()?;
        Ok(ValidQatParams { params: self, export })
    }
}

impl std::fmt::Display for QatParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let grid = match (self.method, self.scheme) {
            (Method::PrunedTernary { .. }, _) => self.method.spec(),
            (_, WeightScheme::Uniform { bits, .. }) => bits.to_string(),
            (_, s) => s.label(),
        };
        let edges = self.first_last_bits.map_or("none".to_string(), |b| b.to_string());
        write!(
            f,
            "{grid},{},first-last={edges}",
            self.granularity.name().replace('_', "-")
        )
    }
}

/// [`QatParams`] that passed [`QatParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidQatParams {
    params: QatParams,
    export: ValidQuantParams,
}

impl ValidQatParams {
    /// The checked settings.
    pub fn get(&self) -> QatParams {
        self.params
    }

    /// The post-training settings that reproduce the training forward pass: the same
    /// rounding, BatchNorm not folded, float activations.
    pub fn export_params(&self) -> &ValidQuantParams {
        &self.export
    }
}

/// One quantized layer, as the kernels know it.
#[derive(Debug, Clone)]
struct QatLayer {
    name: String,
    shape: Vec<usize>,
    scheme: WeightScheme,
}

/// A layer hook that runs every known convolution and linear layer on its quantized weight,
/// with a straight-through gradient to the float weight, whatever kernels compute it.
pub struct QatHook {
    by_layer: HashMap<String, QatLayer>,
    granularity: Granularity,
    method: Method,
}

impl std::fmt::Debug for QatHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QatHook")
            .field("layers", &self.by_layer.len())
            .finish()
    }
}

impl QatHook {
    /// A hook that quantizes `net`'s layers as `params` says. The layers are found by tracing
    /// one eval-mode forward pass of a probe batch.
    pub fn new(net: &Network, params: &ValidQatParams) -> Result<Self> {
        let graph = LayerGraph::trace(net)?;
        let mut by_layer = HashMap::new();
        for layer in graph.layers() {
            let Precision::Quantized(scheme) = params.export.precision(&graph, &layer.name) else {
                continue;
            };
            by_layer.insert(
                layer.name.clone(),
                QatLayer {
                    name: layer.name.clone(),
                    shape: layer.weight_shape.clone(),
                    scheme,
                },
            );
        }
        Ok(QatHook {
            by_layer,
            granularity: params.params.granularity,
            method: params.params.method,
        })
    }

    /// Adds the quantization-aware hook to `net` (its kernels are untouched).
    pub fn install(net: &Network, params: &ValidQatParams) -> Result<()> {
        net.add_hook(Arc::new(QatHook::new(net, params)?));
        Ok(())
    }

    /// The names of the layers that run quantized, with their grids, in no particular order.
    pub fn layers(&self) -> Vec<(String, WeightScheme)> {
        self.by_layer
            .values()
            .map(|l| (l.name.clone(), l.scheme))
            .collect()
    }
}

impl LayerHook for QatHook {
    /// For known layers, the quantized weight forward and the identity backward.
    fn weight(&self, call: &LayerCall<'_>, weight: &Tensor) -> temper_core::Result<Option<Tensor>> {
        let Some(layer) = self.by_layer.get(call.name) else {
            return Ok(None);
        };
        let fail =
            |e: crate::Error| temper_core::Error::param(format!("quantize {}", layer.name), e.to_string());
        let values = weight.detach().flatten_all()?.to_vec1::<f32>()?;
        let q = self
            .method
            .data_free(&values, &layer.shape, layer.scheme, self.granularity)
            .ok_or_else(|| temper_core::Error::param("quantize", "GPFQ cannot run during training"))?
            .map_err(fail)?;
        let q = Tensor::from_vec(q.dequantize(), weight.shape(), weight.device())?;
        crate::ste::straight_through(weight, &q).map(Some).map_err(fail)
    }
}

/// The quantized model of weights trained with [`QatHook`]: `trained`'s float weights
/// (architecture `config`) rounded as during training, BatchNorms kept in float. In eval mode
/// it computes exactly what the trained network computed with the hook installed.
pub fn export(
    trained: &dyn Classifier,
    config: &ValidModelConfig,
    params: &ValidQatParams,
) -> Result<QuantModel> {
    let [c, h, w] = trained.input_shape();
    let none = Tensor::zeros((0, c, h, w), candle_core::DType::F32, trained.device())?;
    quantize(trained, config, &none, &params.export)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_check_and_print_back() -> Result<()> {
        for spec in [
            "4,per-channel,first-last=8",
            "2,per-tensor,first-last=none",
            "ternary,per-channel,first-last=8",
            "binary,per-tensor,first-last=4",
            "ptq:prune=0.5,per-channel,first-last=8",
        ] {
            let p = QatParams::parse(spec)?;
            assert_eq!(p.to_string(), spec);
            p.check()?;
        }
        assert_eq!(QatParams::parse("ptq")?, QatParams::parse("ptq:prune=0.5")?);
        assert_eq!(QatParams::parse("TERNARY")?.scheme, WeightScheme::Ternary);
        for bad in ["", "9", "4,per-row", "4,first-last=x", "ptq:prune=1.5", "gpfq"] {
            assert!(QatParams::parse(bad).and_then(QatParams::check).is_err(), "{bad}");
        }
        let gpfq = QatParams {
            method: Method::Gpfq(crate::GpfqParams::default()),
            ..QatParams::new(WeightScheme::bits(4))
        };
        assert!(gpfq.check().is_err());
        Ok(())
    }
}
