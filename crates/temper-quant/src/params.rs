//! Quantization settings, validated once: [`QuantParams`] becomes [`ValidQuantParams`] through
//! [`QuantParams::check`], and [`crate::quantize`] accepts only the valid type.

use crate::error::param;
use crate::graph::LayerGraph;
use crate::{ActCalibration, GpfqParams, Granularity, Result, WeightScheme};
use std::collections::BTreeMap;

/// How weights are put on the grid.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// Round to nearest, each weight on its own (TWN for ternary, sign for binary).
    Rtn,
    /// The greedy path-following quantizer, which needs calibration images.
    Gpfq(GpfqParams),
    /// Pruning ternary quantization ([`crate::pruned_ternary`]) for ternary layers: the
    /// fraction `prune` of the L2-normalized weights set to zero, the rest projected onto
    /// `{-a, +a}`. Layers of other widths (the first and last at 8 bits) round to nearest.
    PrunedTernary {
        /// Fraction of each layer's weights set to zero, in `[0, 1)`.
        prune: f64,
    },
}

impl Method {
    /// Parses `rtn`, `gpfq` (with `gpfq` settings for the latter), or `ptq` /
    /// `pruned-ternary`, optionally with its fraction: `ptq:prune=0.6` (default
    /// [`crate::pruned_ternary::DEFAULT_PRUNE`]).
    ///
    /// ```
    /// use temper_quant::{GpfqParams, Method};
    /// assert_eq!(Method::parse("ptq:prune=0.7", GpfqParams::default())?, Method::PrunedTernary { prune: 0.7 });
    /// assert!(Method::parse("ptq:prune=1", GpfqParams::default()).is_err());
    /// # Ok::<(), temper_quant::Error>(())
    /// ```
    pub fn parse(s: &str, gpfq: GpfqParams) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let (name, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
        let method = match name {
            "rtn" | "round" | "nearest" if opts.is_empty() => Method::Rtn,
            "gpfq" if opts.is_empty() => Method::Gpfq(gpfq),
            "ptq" | "pruned-ternary" => {
                let prune = match opts {
                    "" => crate::pruned_ternary::DEFAULT_PRUNE,
                    o => o
                        .strip_prefix("prune=")
                        .and_then(|v| v.parse::<f64>().ok())
                        .ok_or_else(|| param("method", format!("'{s}': expected ptq or ptq:prune=F")))?,
                };
                crate::pruned_ternary::check_prune(prune)?;
                Method::PrunedTernary { prune }
            }
            _ => {
                return Err(param(
                    "method",
                    format!("'{s}' is not one of rtn, gpfq, ptq[:prune=F] (pruned ternary)"),
                ))
            }
        };
        Ok(method)
    }

    /// `rtn`, `gpfq` or `ptq`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gpfq(_) => "gpfq",
            Method::PrunedTernary { .. } => "ptq",
        }
    }

    /// The method as [`Method::parse`] reads it back: `rtn`, `gpfq`, `ptq:prune=0.5`.
    pub fn spec(&self) -> String {
        match self {
            Method::PrunedTernary { prune } => format!("ptq:prune={prune}"),
            m => m.name().to_string(),
        }
    }

    /// The weight of one layer on `scheme`'s grid without data: round to nearest, or, under
    /// pruning ternary quantization, the pruned ternary weight for ternary layers. `None` for
    /// GPFQ, which needs the layer's inputs.
    pub fn data_free(
        &self,
        w: &[f32],
        shape: &[usize],
        scheme: WeightScheme,
        granularity: Granularity,
    ) -> Option<Result<crate::QTensor>> {
        match (self, scheme) {
            (Method::Gpfq(_), _) => None,
            (Method::PrunedTernary { prune }, WeightScheme::Ternary) => {
                Some(crate::pruned_ternary::quantize(w, shape, *prune, granularity))
            }
            _ => Some(crate::rtn::quantize(w, shape, scheme, granularity)),
        }
    }
}

/// Activation quantization: every quantized layer's input on a calibrated per-tensor grid.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActParams {
    /// Bit width, 2 to 8.
    pub bits: u8,
    /// How each range is calibrated.
    pub calibration: ActCalibration,
}

/// The precision of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Precision {
    /// Left in floating point (weights and input).
    Float,
    /// Quantized onto this grid.
    Quantized(WeightScheme),
}

/// Unchecked quantization settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantParams {
    /// The weight grid of every layer not otherwise configured.
    pub scheme: WeightScheme,
    /// One scale per tensor or per output channel.
    pub granularity: Granularity,
    /// Round to nearest or GPFQ.
    pub method: Method,
    /// Bit width of the first and last layers (weights, and inputs when activations are
    /// quantized); `None` treats them like the others. Practitioners keep them at 8 bits: the
    /// first sees raw pixels, the last produces the logits, and both are small.
    pub first_last_bits: Option<u8>,
    /// Activation quantization, or `None` for weight-only quantization.
    pub act: Option<ActParams>,
    /// Fold BatchNorms into the convolution before them first.
    pub fold_batchnorm: bool,
    /// Shift each quantized layer's bias by the mean error of its outputs on the calibration
    /// images (Nagel et al. 2019's empirical bias correction).
    pub bias_correction: bool,
    /// Images per forward pass during calibration.
    pub batch_size: usize,
    /// Per-layer precision by layer name, overriding everything above (mixed precision).
    pub layers: BTreeMap<String, Precision>,
}

impl QuantParams {
    /// Defaults around `scheme`: per-channel round to nearest, first and last layer at 8
    /// bits, weight-only, BatchNorm folded, no bias correction.
    pub fn new(scheme: WeightScheme) -> Self {
        QuantParams {
            scheme,
            granularity: Granularity::PerChannel,
            method: Method::Rtn,
            first_last_bits: Some(8),
            act: None,
            fold_batchnorm: true,
            bias_correction: false,
            batch_size: 128,
            layers: BTreeMap::new(),
        }
    }

    /// Validates every field: bit widths 2 to 8, a percentile in `(50, 100]`, GPFQ's `c > 0`
    /// and symmetric grids only with GPFQ, a batch size of at least 1.
    pub fn check(self) -> Result<ValidQuantParams> {
        let scheme = self.scheme.check()?;
        if let Some(b) = self.first_last_bits {
            if !WeightScheme::BITS.contains(&b) {
                return Err(param("first-last-bits", format!("{b} is not between 2 and 8")));
            }
        }
        if let Some(a) = &self.act {
            if !WeightScheme::BITS.contains(&a.bits) {
                return Err(param("act-bits", format!("{} is not between 2 and 8", a.bits)));
            }
            a.calibration.check()?;
        }
        for (name, p) in &self.layers {
            if let Precision::Quantized(s) = p {
                s.check()
                    .map_err(|e| param(format!("layer {name}"), e.to_string()))?;
            }
        }
        if let Method::PrunedTernary { prune } = self.method {
            crate::pruned_ternary::check_prune(prune)?;
            if scheme != WeightScheme::Ternary {
                return Err(param(
                    "method",
                    format!("pruning ternary quantization makes ternary weights, not {scheme}"),
                ));
            }
        }
        if let Method::Gpfq(g) = &self.method {
            g.check()?;
            let asym = std::iter::once(scheme)
                .chain(self.layers.values().filter_map(|p| match p {
                    Precision::Quantized(s) => Some(*s),
                    Precision::Float => None,
                }))
                .find(|s| !s.is_symmetric());
            if let Some(s) = asym {
                return Err(param(
                    "method",
                    format!("GPFQ uses symmetric alphabets, but {s} is asymmetric"),
                ));
            }
        }
        if self.batch_size == 0 {
            return Err(param("batch-size", "must be at least 1"));
        }
        Ok(ValidQuantParams(self))
    }
}

/// [`QuantParams`] that passed [`QuantParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidQuantParams(QuantParams);

impl ValidQuantParams {
    /// The checked settings.
    pub fn get(&self) -> &QuantParams {
        &self.0
    }

    /// True when the first and last layers get their own bit width and `layer` is one of them.
    fn is_edge(&self, graph: &LayerGraph, layer: &str) -> bool {
        self.0.first_last_bits.is_some() && (graph.first().name == layer || graph.last().name == layer)
    }

    /// The precision of `layer`: its override, else the first/last width for the first and
    /// last layer, else the default scheme.
    pub fn precision(&self, graph: &LayerGraph, layer: &str) -> Precision {
        if let Some(p) = self.0.layers.get(layer) {
            return *p;
        }
        match self.0.first_last_bits {
            Some(bits) if self.is_edge(graph, layer) => Precision::Quantized(WeightScheme::Uniform {
                bits,
                symmetric: self.0.scheme.is_symmetric(),
            }),
            _ => Precision::Quantized(self.0.scheme),
        }
    }

    /// The activation width of `layer`'s input, or `None` when activations stay in float.
    pub fn act_bits(&self, graph: &LayerGraph, layer: &str) -> Option<u8> {
        let a = self.0.act?;
        match self.0.first_last_bits {
            Some(b) if self.is_edge(graph, layer) => Some(b),
            _ => Some(a.bits),
        }
    }

    /// True when the settings need calibration images.
    pub fn needs_calibration(&self) -> bool {
        matches!(self.0.method, Method::Gpfq(_)) || self.0.act.is_some() || self.0.bias_correction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_out_of_range_settings() {
        let ok = QuantParams::new(WeightScheme::bits(4));
        assert!(ok.clone().check().is_ok());
        let bad = [
            QuantParams {
                scheme: WeightScheme::bits(1),
                ..ok.clone()
            },
            QuantParams {
                first_last_bits: Some(9),
                ..ok.clone()
            },
            QuantParams {
                act: Some(ActParams {
                    bits: 1,
                    calibration: ActCalibration::MinMax,
                }),
                ..ok.clone()
            },
            QuantParams {
                method: Method::Gpfq(GpfqParams {
                    c: crate::AlphabetScale::Fixed { c: -1.0 },
                    ..GpfqParams::default()
                }),
                ..ok.clone()
            },
            QuantParams {
                method: Method::Gpfq(GpfqParams::default()),
                scheme: WeightScheme::Uniform {
                    bits: 4,
                    symmetric: false,
                },
                ..ok.clone()
            },
            QuantParams {
                batch_size: 0,
                ..ok.clone()
            },
            QuantParams {
                layers: BTreeMap::from([("fc1".to_string(), Precision::Quantized(WeightScheme::bits(12)))]),
                ..ok
            },
        ];
        for b in bad {
            assert!(b.clone().check().is_err(), "{b:?}");
        }
    }
}
