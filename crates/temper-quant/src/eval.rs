//! Small evaluation helpers the quantizer needs: predictions, accuracy and calibration sets.

use crate::record::EVAL;
use crate::Result;
use candle_core::{Device, Tensor};
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
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len());
    for chunk in idx.chunks(batch.max(1)) {
        let b = data.batch(chunk, model.device())?;
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
