//! Folding BatchNorm into the convolution before it.
//!
//! In eval mode a BatchNorm that directly consumes a convolution's output is a per-channel
//! affine map, so it can be merged into the convolution:
//! `W' = W * g / sqrt(v + eps)` per output channel and `b' = (b - m) * g / sqrt(v + eps) + beta`.
//! Quantizing `W'` then quantizes what the deployed integer kernel really multiplies by.
//!
//! The model's architecture is not changed: the folded BatchNorm stays in place as a pure
//! bias, with running mean 0, a running variance `v` chosen so that `v + eps` is exactly 1 in
//! f32, and weight 1, so it computes `x + beta` exactly. The folded bias `b'` lives in the
//! convolution's own bias when it has one (VGG), otherwise in the BatchNorm's `beta`. The
//! file written by [`crate::export`] therefore loads into the unmodified zoo model.
//!
//! BatchNorms that do not directly follow a convolution (pre-activation blocks
//! `bn -> relu -> conv` in PreAct ResNet and WideResNet, and the final `bn` after the last
//! residual sum) cannot be folded into the convolution before them, and the ReLU in between
//! forbids folding into the one after: they stay in floating point, like the residual sums,
//! as per-channel scale-and-shift steps of the integer pipeline. So does a BatchNorm whose
//! convolution's output is also used elsewhere (a PreAct ResNet's stem output feeds the first
//! block's BatchNorm and its identity shortcut): every fold is checked, see
//! [`fold_batchnorm`]. In PreAct ResNet-18 the `bn2` of every block folds into its `conv1`.

use crate::graph::{probe, Layer, LayerGraph};
use crate::record::EVAL;
use crate::{tensors, Error, Result};
use temper_core::nn::BatchNorm2d;
use temper_core::{Classifier, Network};

/// What [`fold_batchnorm`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FoldReport {
    /// `(convolution, batchnorm)` pairs folded.
    pub folded: Vec<(String, String)>,
    /// BatchNorms kept in floating point.
    pub kept: Vec<String>,
}

/// A running variance `v` with `v + eps == 1` exactly in f32, so that a BatchNorm with mean 0
/// and weight 1 multiplies by exactly 1.
pub(crate) fn identity_var(eps: f64) -> f32 {
    let e = eps as f32;
    let mut v = 1.0f32 - e;
    // Rounding may leave v one or two ulps off; walk to a value that lands on 1.
    for _ in 0..8 {
        let s = v + e;
        if s == 1.0 {
            break;
        }
        v = if s > 1.0 {
            v.next_down_compat()
        } else {
            v.next_up_compat()
        };
    }
    v
}

/// `f32::next_up` / `next_down` for toolchains older than 1.86.
trait NextCompat {
    fn next_up_compat(self) -> Self;
    fn next_down_compat(self) -> Self;
}

impl NextCompat for f32 {
    fn next_up_compat(self) -> Self {
        f32::from_bits(self.to_bits() + 1)
    }
    fn next_down_compat(self) -> Self {
        f32::from_bits(self.to_bits() - 1)
    }
}

/// Where the output bias of `layer` lives once BatchNorms are folded as `fold` reports: its
/// own bias, or its folded BatchNorm's `beta`; `None` for a layer with neither.
pub fn bias_key(layer: &Layer, fold: &FoldReport) -> Option<String> {
    if layer.has_bias {
        Some(format!("{}.bias", layer.name))
    } else {
        folded_bn(layer, fold).map(|b| format!("{b}.bias"))
    }
}

/// The BatchNorm folded into `layer`, if any.
pub fn folded_bn<'a>(layer: &Layer, fold: &'a FoldReport) -> Option<&'a str> {
    fold.folded
        .iter()
        .find(|(conv, _)| *conv == layer.name)
        .map(|(_, bn)| bn.as_str())
}

/// The entries a fold rewrites, to put them back if the fold is refused.
fn snapshot(net: &Network, layer: &Layer, bn: &str) -> Result<Vec<(String, Vec<f32>)>> {
    let mut keys = vec![layer.weight_key()];
    if layer.has_bias {
        keys.push(format!("{}.bias", layer.name));
    }
    keys.extend(["weight", "bias", "running_mean", "running_var"].map(|s| format!("{bn}.{s}")));
    keys.into_iter()
        .map(|k| Ok((k.clone(), tensors::read(net.params(), &k)?)))
        .collect()
}

fn fold_one(net: &Network, layer: &Layer, bn: &str) -> Result<()> {
    let store = net.params();
    let w = tensors::read(store, &layer.weight_key())?;
    let out = layer.weight_shape[0];
    let per = w.len() / out;
    let key = |s: &str| format!("{bn}.{s}");
    let gamma = tensors::read(store, &key("weight"))?;
    let beta = tensors::read(store, &key("bias"))?;
    let mean = tensors::read(store, &key("running_mean"))?;
    let var = tensors::read(store, &key("running_var"))?;
    let bias = if layer.has_bias {
        tensors::read(store, &format!("{}.bias", layer.name))?
    } else {
        vec![0.0; out]
    };
    if [gamma.len(), beta.len(), mean.len(), var.len(), bias.len()]
        .iter()
        .any(|&n| n != out)
    {
        return Err(Error::Unsupported {
            model: net.info().name.clone(),
            reason: format!(
                "BatchNorm '{bn}' does not have one channel per output of '{}'",
                layer.name
            ),
        });
    }
    let scale: Vec<f64> = (0..out)
        .map(|o| f64::from(gamma[o]) / (f64::from(var[o]) + BatchNorm2d::EPS).sqrt())
        .collect();
    let folded_w: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, &v)| (f64::from(v) * scale[i / per]) as f32)
        .collect();
    let folded_b: Vec<f32> = (0..out)
        .map(|o| ((f64::from(bias[o]) - f64::from(mean[o])) * scale[o] + f64::from(beta[o])) as f32)
        .collect();
    tensors::write(store, &layer.weight_key(), folded_w)?;
    let (conv_bias, bn_beta) = if layer.has_bias {
        (Some(folded_b), vec![0.0; out])
    } else {
        (None, folded_b)
    };
    if let Some(b) = conv_bias {
        tensors::write(store, &format!("{}.bias", layer.name), b)?;
    }
    tensors::write(store, &key("bias"), bn_beta)?;
    tensors::write(store, &key("weight"), vec![1.0; out])?;
    tensors::write(store, &key("running_mean"), vec![0.0; out])?;
    tensors::write(
        store,
        &key("running_var"),
        vec![identity_var(BatchNorm2d::EPS); out],
    )?;
    Ok(())
}

/// Largest relative change of the logits a fold may cause.
const FOLD_TOLERANCE: f32 = 1e-4;

/// Folds every BatchNorm that directly consumes a convolution's output into it, in place.
///
/// The graph shows that a BatchNorm reads a convolution's output, not that nothing else does
/// (a pre-activation ResNet's stem output feeds both the first block's BatchNorm and its
/// identity shortcut). So each fold is checked on a probe batch: it is kept only if the
/// eval-mode logits stay within a relative 1e-4 of the unfolded ones, and undone otherwise
/// (the BatchNorm then stays in float, like those that follow no convolution).
///
/// `only`, when given, restricts folding to those `(convolution, batchnorm)` pairs, without
/// per-fold checks: it replays the decisions of an earlier fold on a copy of the same model.
///
/// The network must be eval-only from then on: in train mode a folded BatchNorm would
/// normalise with batch statistics again.
pub fn fold_batchnorm(net: &Network, graph: &LayerGraph, only: Option<&FoldReport>) -> Result<FoldReport> {
    let x = probe(net, 2)?;
    let before = net.forward_opts(&x, EVAL)?;
    let unchanged = || -> Result<bool> {
        Ok(tensors::relative_diff(&before, &net.forward_opts(&x, EVAL)?)? <= FOLD_TOLERANCE)
    };
    let pairs: Vec<(&Layer, &str)> = graph
        .layers()
        .iter()
        .filter_map(|l| l.bn.as_deref().map(|bn| (l, bn)))
        .filter(|(l, bn)| only.is_none_or(|o| folded_bn(l, o) == Some(*bn)))
        .collect();
    let mut report = FoldReport::default();
    let mut saved = Vec::new();
    for (layer, bn) in &pairs {
        saved.push(snapshot(net, layer, bn)?);
        fold_one(net, layer, bn)?;
    }
    // One check for all folds is enough when none is refused, the common case; otherwise
    // undo everything and decide fold by fold.
    if only.is_some() || unchanged()? {
        report.folded = pairs
            .iter()
            .map(|(l, bn)| (l.name.clone(), bn.to_string()))
            .collect();
    } else {
        for s in saved.iter().rev() {
            restore(net, s)?;
        }
        for ((layer, bn), s) in pairs.iter().zip(&saved) {
            fold_one(net, layer, bn)?;
            if unchanged()? {
                report.folded.push((layer.name.clone(), bn.to_string()));
            } else {
                restore(net, s)?;
            }
        }
    }
    report.kept = graph
        .batch_norms()
        .iter()
        .filter(|b| !report.folded.iter().any(|(_, f)| f == *b))
        .cloned()
        .collect();
    let rel = tensors::relative_diff(&before, &net.forward_opts(&x, EVAL)?)?;
    if rel.is_nan() || rel > FOLD_TOLERANCE {
        return Err(Error::Unsupported {
            model: net.info().name.clone(),
            reason: format!("folding BatchNorm changed the logits by {rel:.2e} (relative)"),
        });
    }
    Ok(report)
}

fn restore(net: &Network, saved: &[(String, Vec<f32>)]) -> Result<()> {
    for (k, v) in saved {
        tensors::write(net.params(), k, v.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_var_makes_an_exact_one() {
        for eps in [1e-5, 1e-3, 0.1] {
            let v = super::identity_var(eps);
            assert_eq!(v + eps as f32, 1.0);
        }
    }
}
