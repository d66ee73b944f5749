//! Small evaluation helpers the quantizer needs: predictions, accuracy, calibration sets and
//! per-layer output errors.

use crate::record::{record, Capture, EVAL};
use crate::{QuantModel, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use temper_core::Classifier;
use temper_data::Dataset;

/// Predicted classes of `model` on `images` (pixels in `[0, 1]`, NCHW), in eval mode, in
/// batches of `batch`.
pub fn predict(model: &dyn Classifier, images: &Tensor, batch: usize) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(images.dim(0)?);
    for b in crate::quantize::batches(images, batch)? {
        out.extend(model.forward_opts(&b, EVAL)?.argmax(1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// Predicted classes of `model` on every image of `data`.
pub fn predict_dataset(model: &dyn Classifier, data: &Dataset, batch: usize) -> Result<Vec<u32>> {
    let idx = data.all_indices();
    let mut out = Vec::with_capacity(data.len());
    for item in data.eval_batches(&idx, batch, model.device()) {
        let (_, b) = item?;
        out.extend(model.forward_opts(&b.images, EVAL)?.argmax(1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// Fraction of `labels` that `predictions` get right.
pub fn agreement(predictions: &[u32], labels: &[u32]) -> f64 {
    let hits = predictions.iter().zip(labels).filter(|(p, l)| p == l).count();
    hits as f64 / labels.len().max(1) as f64
}

/// Clean accuracy of `model` on `data`, in `[0, 1]`.
pub fn accuracy(model: &dyn Classifier, data: &Dataset, batch: usize) -> Result<f64> {
    Ok(agreement(&predict_dataset(model, data, batch)?, data.labels()))
}

/// `n` images of `data` (all of them if it has fewer), a seeded random subset drawn from the
/// `stream` stream, in their original order: a calibration set with its labels.
pub fn calibration_set(data: &Dataset, n: usize, stream: &str) -> Result<Dataset> {
    let n = n.min(data.len());
    let mut rng = temper_core::seed::rng(stream);
    let mut idx = rand::seq::index::sample(&mut rng, data.len(), n).into_vec();
    idx.sort_unstable();
    Ok(data.subset(&idx)?)
}

/// The images of [`calibration_set`] as f32 pixels on `device`; `(0, C, H, W)` for `n = 0`.
pub fn calibration_images(data: &Dataset, n: usize, stream: &str, device: &Device) -> Result<Tensor> {
    if n == 0 || data.is_empty() {
        let [c, h, w] = data.shape();
        return Ok(Tensor::zeros((0, c, h, w), candle_core::DType::F32, device)?);
    }
    Ok(calibration_set(data, n, stream)?.to_batch(device)?.images)
}

/// The relative error `|Y_q - Y| / |Y|` of every quantized layer's output over `images`, in
/// execution order: `Y` from `float` (with BatchNorms folded as in `q`), `Y_q` from `q`, each
/// through its own earlier layers, so a layer's error includes what the layers before it
/// passed on. GPFQ minimises exactly this, layer by layer, on its calibration rows; it shows
/// where GPFQ and round to nearest differ even when accuracy cannot tell them apart.
pub fn layer_output_errors(
    float: &dyn Classifier,
    q: &QuantModel,
    images: &Tensor,
    batch: usize,
) -> Result<Vec<(String, f64)>> {
    let reference = crate::quantize::rebuild(float, q.config())?;
    if !q.quant_info().fold.folded.is_empty() {
        crate::fold::fold_batchnorm(&reference, q.graph(), Some(&q.quant_info().fold))?;
    }
    let names: Vec<String> = q.layers().iter().map(|l| l.name.clone()).collect();
    let want = || Capture::Only(names.iter().cloned().collect());
    let outputs = |calls: Vec<crate::record::Call>| -> HashMap<String, Tensor> {
        calls.into_iter().filter_map(|c| Some((c.layer, c.y?))).collect()
    };
    let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
    for b in crate::quantize::batches(images, batch)? {
        let (_, f) = record(&reference, &b, Capture::Nothing, want())?;
        let (_, g) = record(q.network(), &b, Capture::Nothing, want())?;
        let (f, g) = (outputs(f), outputs(g));
        for name in &names {
            let (Some(y), Some(yq)) = (f.get(name), g.get(name)) else {
                return Err(crate::error::param(name, "did not run in the forward pass"));
            };
            let e = sums.entry(name.clone()).or_default();
            e.0 += f64::from((yq - y)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
            e.1 += f64::from(y.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    Ok(names
        .into_iter()
        .map(|n| {
            let (d, r) = sums.get(&n).copied().unwrap_or_default();
            let e = (d / r.max(1e-30)).sqrt();
            (n, e)
        })
        .collect())
}
