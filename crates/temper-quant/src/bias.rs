//! Empirical bias correction (Nagel et al. 2019, "Data-free quantization through weight
//! equalization and bias correction", section 4.2).
//!
//! Quantization error is not zero-mean per channel: a layer's outputs drift by a constant
//! that the next layers amplify. Layer by layer in execution order, each quantized layer's
//! bias is shifted by the difference between the float and the quantized network's mean
//! output per channel on the calibration images, the quantized network already carrying the
//! corrections of the layers before it.

use crate::fold::{bias_key, folded_bn, FoldReport};
use crate::graph::LayerGraph;
use crate::quantize::batches;
use crate::record::{record, Capture};
use crate::{tensors, Result};
use candle_core::Tensor;
use std::collections::{HashMap, HashSet};
use temper_core::{Classifier, Network};

/// Per-channel sums of a `(N, C, ...)` activation and the number of values per channel.
fn channel_sums(y: &Tensor) -> Result<(Vec<f64>, usize)> {
    let c = y.dim(1)?;
    let per = y.elem_count() / c.max(1);
    let y = y.transpose(0, 1)?.contiguous()?.reshape((c, per))?;
    let s = y.to_dtype(candle_core::DType::F64)?.sum(1)?.to_vec1::<f64>()?;
    Ok((s, per))
}

/// Mean output per channel of each layer in `points` over `calib`.
fn means(
    net: &Network,
    points: &HashSet<String>,
    calib: &Tensor,
    batch: usize,
) -> Result<HashMap<String, Vec<f64>>> {
    let mut acc: HashMap<String, (Vec<f64>, usize)> = HashMap::new();
    for b in batches(calib, batch)? {
        let (_, calls) = record(net, &b, Capture::Nothing, Capture::Only(points.clone()))?;
        for c in calls {
            if let Some(y) = c.y {
                let (s, n) = channel_sums(&y)?;
                let e = acc.entry(c.layer).or_insert_with(|| (vec![0.0; s.len()], 0));
                for (a, v) in e.0.iter_mut().zip(&s) {
                    *a += v;
                }
                e.1 += n;
            }
        }
    }
    Ok(acc
        .into_iter()
        .map(|(k, (s, n))| (k, s.into_iter().map(|v| v / n.max(1) as f64).collect()))
        .collect())
}

/// Corrects the biases of `layers` (names, in any order) of `qnet` against `reference`;
/// returns each corrected layer with the mean absolute shift applied. Layers with no bias to
/// carry the shift (a convolution with neither bias nor folded BatchNorm) are skipped.
pub(crate) fn correct(
    reference: &Network,
    qnet: &Network,
    graph: &LayerGraph,
    fold: &FoldReport,
    layers: &[&str],
    calib: &Tensor,
    batch: usize,
) -> Result<Vec<(String, f32)>> {
    // (layer, where its output is observed, the tensor that carries its bias)
    let plan: Vec<(String, String, String)> = graph
        .layers()
        .iter()
        .filter(|l| layers.contains(&l.name.as_str()))
        .filter_map(|l| {
            let carrier = bias_key(l, fold)?;
            let point = folded_bn(l, fold).map_or_else(|| l.name.clone(), str::to_string);
            Some((l.name.clone(), point, carrier))
        })
        .collect();
    let points: HashSet<String> = plan.iter().map(|(_, p, _)| p.clone()).collect();
    let float = means(reference, &points, calib, batch)?;
    let mut shifts = Vec::new();
    for (name, point, carrier) in plan {
        let quant = means(qnet, &HashSet::from([point.clone()]), calib, batch)?;
        let (Some(f), Some(q)) = (float.get(&point), quant.get(&point)) else {
            continue;
        };
        let mut b = tensors::read(qnet.params(), &carrier)?;
        let mut total = 0f32;
        for ((bi, fi), qi) in b.iter_mut().zip(f).zip(q) {
            let d = (fi - qi) as f32;
            *bi += d;
            total += d.abs();
        }
        let n = b.len().max(1) as f32;
        tensors::write(qnet.params(), &carrier, b)?;
        shifts.push((name, total / n));
    }
    Ok(shifts)
}
