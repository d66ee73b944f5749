//! Mixed precision: how much each layer suffers at each bit width, and a bit width per layer
//! that fits a size budget.
//!
//! [`sensitivity`] quantizes one layer at a time (the others stay in float) at every
//! candidate width and measures the accuracy drop and the logits' relative error on held-out
//! images. [`allocate`] then starts every layer at its widest candidate and, while the model
//! is over budget, narrows the layer whose next step costs the least sensitivity per byte
//! saved (the greedy knapsack heuristic of HAWQ-style allocators, with measured rather than
//! Hessian-estimated sensitivities).

use crate::error::param;
use crate::graph::LayerGraph;
use crate::params::{Precision, QuantParams};
use crate::record::EVAL;
use crate::{eval, quantize, Result, WeightScheme};
use candle_core::Tensor;
use std::collections::BTreeMap;
use temper_core::Classifier;
use temper_models::ValidModelConfig;

/// One layer at one width.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trial {
    /// The width tried.
    pub scheme: WeightScheme,
    /// Accuracy with only this layer quantized, in `[0, 1]`.
    pub accuracy: f64,
    /// Float accuracy minus `accuracy`.
    pub drop: f64,
    /// `|z_q - z| / |z|` over the held-out logits.
    pub logit_error: f64,
    /// Bytes of the layer's packed weight, scales and zero points.
    pub bytes: usize,
}

/// The sensitivity of one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerSensitivity {
    /// The layer's name.
    pub layer: String,
    /// Number of weights.
    pub weights: usize,
    /// One trial per candidate width, widest first.
    pub trials: Vec<Trial>,
}

/// Per-layer sensitivities of a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sensitivity {
    /// Float accuracy on the held-out images.
    pub float_accuracy: f64,
    /// One entry per layer, in execution order.
    pub layers: Vec<LayerSensitivity>,
}

fn logits(model: &dyn Classifier, images: &Tensor, batch: usize) -> Result<Tensor> {
    let parts: Vec<Tensor> = crate::quantize::batches(images, batch)?
        .iter()
        .map(|b| Ok(model.forward_opts(b, EVAL)?))
        .collect::<Result<_>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// Measures every layer at every width of `candidates`, quantizing with `base`'s method and
/// granularity (its scheme, first/last width and per-layer settings are replaced), calibrating
/// on `calib` and scoring on `images` with labels `labels`.
pub fn sensitivity(
    float: &dyn Classifier,
    config: &ValidModelConfig,
    calib: &Tensor,
    images: &Tensor,
    labels: &[u32],
    candidates: &[WeightScheme],
    base: &QuantParams,
) -> Result<Sensitivity> {
    if candidates.is_empty() {
        return Err(param(
            "bits",
            "mixed precision needs at least one candidate width",
        ));
    }
    let mut candidates = candidates.to_vec();
    candidates.sort_by_key(|s| std::cmp::Reverse(s.storage_bits()));
    let batch = base.batch_size.max(1);
    let z_float = logits(float, images, batch)?;
    let norm = f64::from(z_float.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
    let float_accuracy = eval::agreement(&z_float.argmax(1)?.to_vec1::<u32>()?, labels);
    let net = temper_models::build_zeroed(config, float.device())?;
    crate::tensors::copy_all(float.params(), net.params())?;
    let graph = LayerGraph::trace(&net)?;
    let mut layers = Vec::new();
    for layer in graph.layers() {
        let mut trials = Vec::new();
        for &scheme in &candidates {
            let mut p = base.clone();
            p.first_last_bits = None;
            p.layers = graph
                .layers()
                .iter()
                .map(|l| {
                    let prec = if l.name == layer.name {
                        Precision::Quantized(scheme)
                    } else {
                        Precision::Float
                    };
                    (l.name.clone(), prec)
                })
                .collect();
            let q = quantize(float, config, calib, &p.check()?)?;
            let z = logits(&q, images, batch)?;
            let accuracy = eval::agreement(&z.argmax(1)?.to_vec1::<u32>()?, labels);
            let err = f64::from((&z - &z_float)?.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
            trials.push(Trial {
                scheme,
                accuracy,
                drop: float_accuracy - accuracy,
                logit_error: err / norm.max(1e-30),
                bytes: q.quantized_weight_bytes(),
            });
        }
        layers.push(LayerSensitivity {
            layer: layer.name.clone(),
            weights: layer.num_weights(),
            trials,
        });
    }
    Ok(Sensitivity {
        float_accuracy,
        layers,
    })
}

/// A size limit for the quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SizeBudget {
    /// Bytes of packed weights, scales and zero points over all quantized layers.
    Bytes {
        /// The limit.
        bytes: usize,
    },
    /// Average bits per weight, scales and zero points included.
    AvgBits {
        /// The limit, e.g. 4.5.
        bits: f64,
    },
}

impl SizeBudget {
    /// Parses `4.5bits` / `4.5b` (average bits) or `120kb` / `2mb` / `90000` (bytes).
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let num = |v: &str| -> Result<f64> {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    param(
                        "size-budget",
                        format!("'{s}' is not a positive size such as 4.5bits or 120kb"),
                    )
                })
        };
        if let Some(v) = t.strip_suffix("bits").or_else(|| t.strip_suffix("bit")) {
            return Ok(SizeBudget::AvgBits { bits: num(v)? });
        }
        let (v, unit) = if let Some(v) = t.strip_suffix("kb") {
            (v, 1024.0)
        } else if let Some(v) = t.strip_suffix("mb") {
            (v, 1024.0 * 1024.0)
        } else {
            (t.strip_suffix('b').unwrap_or(&t), 1.0)
        };
        Ok(SizeBudget::Bytes {
            bytes: (num(v)? * unit) as usize,
        })
    }

    fn bytes(self, weights: usize) -> usize {
        match self {
            SizeBudget::Bytes { bytes } => bytes,
            SizeBudget::AvgBits { bits } => (weights as f64 * bits / 8.0) as usize,
        }
    }
}

/// A bit width per layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    /// The chosen width of every layer.
    pub layers: BTreeMap<String, WeightScheme>,
    /// Bytes of the quantized weights under this allocation.
    pub bytes: usize,
    /// The budget in bytes.
    pub budget: usize,
    /// Sum of the chosen trials' accuracy drops (an estimate: drops are measured one layer
    /// at a time).
    pub estimated_drop: f64,
}

impl Allocation {
    /// The per-layer settings for [`QuantParams::layers`].
    pub fn precisions(&self) -> BTreeMap<String, Precision> {
        self.layers
            .iter()
            .map(|(k, v)| (k.clone(), Precision::Quantized(*v)))
            .collect()
    }
}

/// Weight of the logit error against the accuracy drop in the greedy cost: accuracy drops on a
/// few hundred images are coarse (often exactly zero), and the logit error breaks the ties.
const LOGIT_WEIGHT: f64 = 0.1;

fn cost(t: &Trial) -> f64 {
    t.drop.max(0.0) + LOGIT_WEIGHT * t.logit_error
}

/// Chooses a width per layer so that the quantized weights fit `budget`, narrowing greedily
/// the layer with the smallest cost increase per byte saved, except that a single move that
/// meets the budget at no more cost than that step is taken instead (so the last step does
/// not overshoot). Layers in `pinned` keep the given width (e.g. the first and last at 8
/// bits). Finally, any layer that fits a wider width within the budget gets it back.
pub fn allocate(
    sens: &Sensitivity,
    budget: SizeBudget,
    pinned: &BTreeMap<String, WeightScheme>,
) -> Result<Allocation> {
    let weights: usize = sens.layers.iter().map(|l| l.weights).sum();
    let budget_bytes = budget.bytes(weights);
    // Index of the current trial per layer; pinned layers use their pinned width.
    let mut at: Vec<usize> = Vec::new();
    for l in &sens.layers {
        let i = match pinned.get(&l.layer) {
            Some(s) => l.trials.iter().position(|t| t.scheme == *s).ok_or_else(|| {
                param(
                    "bits",
                    format!("layer '{}' is pinned to {s}, which was not measured", l.layer),
                )
            })?,
            None => 0,
        };
        at.push(i);
    }
    let size = |at: &[usize]| -> usize { sens.layers.iter().zip(at).map(|(l, &i)| l.trials[i].bytes).sum() };
    while size(&at) > budget_bytes {
        let over = size(&at) - budget_bytes;
        // Every possible move: some layer to a strictly smaller width, with its cost increase
        // and the bytes it saves.
        let mut moves: Vec<(f64, usize, usize, usize)> = Vec::new();
        for (k, l) in sens.layers.iter().enumerate() {
            if pinned.contains_key(&l.layer) {
                continue;
            }
            let cur = &l.trials[at[k]];
            for (j, next) in l.trials.iter().enumerate().skip(at[k] + 1) {
                if next.bytes < cur.bytes {
                    moves.push(((cost(next) - cost(cur)).max(0.0), cur.bytes - next.bytes, k, j));
                }
            }
        }
        // The cheapest move per byte saved, among each layer's next narrower width...
        let greedy = moves
            .iter()
            .filter(|m| {
                let l = &sens.layers[m.2];
                (at[m.2] + 1..m.3).all(|j| l.trials[j].bytes >= l.trials[at[m.2]].bytes)
            })
            .min_by(|a, b| (a.0 / a.1 as f64).total_cmp(&(b.0 / b.1 as f64)));
        // ...unless one move meets the budget at a lower cost: then the greedy step would
        // only overshoot the budget.
        let finishing = moves
            .iter()
            .filter(|m| m.1 >= over)
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let chosen = match (greedy, finishing) {
            (Some(g), Some(f)) if f.0 <= g.0 => Some(f),
            (Some(g), _) => Some(g),
            (None, f) => f,
        };
        let Some(&(_, _, k, j)) = chosen else {
            return Err(param(
                "size-budget",
                format!(
                    "{budget_bytes} bytes is below the smallest reachable size of {} bytes",
                    size(&at)
                ),
            ));
        };
        at[k] = j;
    }
    // Greedy narrowing can leave slack (an early small step made redundant by the last big
    // one): widen again whatever still fits, the largest cost reduction first.
    loop {
        let total = size(&at);
        let mut best: Option<(f64, usize, usize)> = None;
        for (k, l) in sens.layers.iter().enumerate() {
            if pinned.contains_key(&l.layer) {
                continue;
            }
            let cur = &l.trials[at[k]];
            for (j, wider) in l.trials.iter().enumerate().take(at[k]) {
                let gain = cost(cur) - cost(wider);
                if total - cur.bytes + wider.bytes <= budget_bytes
                    && gain > 0.0
                    && best.is_none_or(|b| gain > b.0)
                {
                    best = Some((gain, k, j));
                }
            }
        }
        match best {
            Some((_, k, j)) => at[k] = j,
            None => break,
        }
    }
    Ok(Allocation {
        layers: sens
            .layers
            .iter()
            .zip(&at)
            .map(|(l, &i)| (l.layer.clone(), l.trials[i].scheme))
            .collect(),
        bytes: size(&at),
        budget: budget_bytes,
        estimated_drop: sens.layers.iter().zip(&at).map(|(l, &i)| l.trials[i].drop).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(bits: u8, drop: f64, bytes: usize) -> Trial {
        Trial {
            scheme: WeightScheme::bits(bits),
            accuracy: 0.9 - drop,
            drop,
            logit_error: drop,
            bytes,
        }
    }

    fn sens() -> Sensitivity {
        Sensitivity {
            float_accuracy: 0.9,
            layers: vec![
                LayerSensitivity {
                    layer: "a".into(),
                    weights: 800,
                    trials: vec![trial(8, 0.0, 800), trial(4, 0.001, 400), trial(2, 0.3, 200)],
                },
                LayerSensitivity {
                    layer: "b".into(),
                    weights: 800,
                    trials: vec![trial(8, 0.0, 800), trial(4, 0.05, 400), trial(2, 0.4, 200)],
                },
            ],
        }
    }

    #[test]
    fn greedy_narrows_the_least_sensitive_layer_first() -> Result<()> {
        let a = allocate(&sens(), SizeBudget::Bytes { bytes: 1200 }, &BTreeMap::new())?;
        assert_eq!(a.layers["a"], WeightScheme::bits(4));
        assert_eq!(a.layers["b"], WeightScheme::bits(8));
        assert_eq!(a.bytes, 1200);
        let a = allocate(&sens(), SizeBudget::AvgBits { bits: 4.0 }, &BTreeMap::new())?;
        assert!(a.bytes <= 800, "{a:?}");
        let pinned = BTreeMap::from([("a".to_string(), WeightScheme::bits(8))]);
        let a = allocate(&sens(), SizeBudget::Bytes { bytes: 1200 }, &pinned)?;
        assert_eq!(a.layers["b"], WeightScheme::bits(4));
        assert!(allocate(&sens(), SizeBudget::Bytes { bytes: 300 }, &BTreeMap::new()).is_err());
        // 1000 bytes: "a" to 4 bits (the cheapest per byte) would leave 1200; the finishing
        // move is then "a" to 2 bits (1000) or "b" to 4 bits (800): the latter costs less.
        let a = allocate(&sens(), SizeBudget::Bytes { bytes: 1000 }, &BTreeMap::new())?;
        assert_eq!(
            (a.layers["a"], a.layers["b"]),
            (WeightScheme::bits(4), WeightScheme::bits(4))
        );
        Ok(())
    }

    #[test]
    fn budgets_parse() -> Result<()> {
        assert_eq!(SizeBudget::parse("4.5bits")?, SizeBudget::AvgBits { bits: 4.5 });
        assert_eq!(SizeBudget::parse("2kb")?, SizeBudget::Bytes { bytes: 2048 });
        assert_eq!(SizeBudget::parse("900")?, SizeBudget::Bytes { bytes: 900 });
        assert!(SizeBudget::parse("-3kb").is_err());
        assert!(SizeBudget::parse("lots").is_err());
        Ok(())
    }
}
