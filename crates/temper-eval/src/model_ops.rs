//! What evaluation asks of a model besides attacking it: predictions, input gradients and
//! batch bookkeeping.

use crate::{Error, Result};
use candle_core::{Tensor, Var, D};
use temper_attacks::Cost;
use temper_core::{Classifier, ForwardOpts, Mode};

/// Evaluation runs the model as attacks do: eval mode, parameters detached.
pub(crate) const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

/// Predicted classes of a batch.
pub(crate) fn predict(model: &dyn Classifier, x: &Tensor, cost: &mut Cost) -> Result<Vec<u32>> {
    cost.forward += x.dim(0)? as u64;
    let logits = model.forward_opts(&x.detach(), EVAL)?;
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

use temper_core::loss::cross_entropy;

/// The gradient of the cross-entropy of the true label with respect to the input, per sample
/// (the quantity every gradient attack follows). A model whose output does not depend on its
/// input through differentiable operations gets an all-zero gradient, as PyTorch reports it.
pub(crate) fn input_gradient(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    cost: &mut Cost,
) -> Result<Tensor> {
    let n = x.dim(0)? as u64;
    cost.forward += n;
    cost.backward += n;
    let v = Var::from_tensor(&x.detach())?;
    let logits = model.forward_opts(v.as_tensor(), EVAL)?;
    // Summed, not averaged: each sample's gradient is then independent of the batch size.
    let grads = cross_entropy(&logits, y)?.sum_all()?.backward()?;
    match grads.get(v.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(x.zeros_like()?),
    }
}

/// The rows `rows` of a batch tensor.
pub(crate) fn select(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let idx = Tensor::from_vec(idx, rows.len(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

/// Checks that a data set can be fed to a model: same channel count, and no label past the
/// model's outputs.
pub(crate) fn check_fit(model: &dyn Classifier, data: &temper_data::Dataset) -> Result<()> {
    let mismatch = |reason: String| Error::Mismatch {
        dataset: data.name().to_string(),
        model: model.info().name.clone(),
        reason,
    };
    let [c, h, w] = data.shape();
    let mc = model.input_shape()[0];
    if c != mc {
        return Err(mismatch(format!(
            "{c}-channel {h}x{w} images, but the model takes {mc} channels"
        )));
    }
    if data.num_classes() > model.num_classes() {
        return Err(mismatch(format!(
            "{} classes, but the model has {} outputs",
            data.num_classes(),
            model.num_classes()
        )));
    }
    Ok(())
}

/// Class names for a `k`-class confusion matrix: the data set's names, then indices for any
/// extra model outputs.
pub(crate) fn class_names(data: &temper_data::Dataset, k: usize) -> Vec<String> {
    (0..k)
        .map(|i| data.classes().get(i).cloned().unwrap_or_else(|| i.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_the_formula() -> Result<()> {
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [1000.0, 0.0, 0.0]], &Device::Cpu)?;
        let y = Tensor::new(&[0u32, 0], &Device::Cpu)?;
        let ce = cross_entropy(&logits, &y)?.to_vec1::<f32>()?;
        let want = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln() - 1.0;
        assert!((ce[0] - want).abs() < 1e-5, "{ce:?}");
        assert!(ce[1].abs() < 1e-5, "large logits stay finite: {ce:?}");
        Ok(())
    }
}
