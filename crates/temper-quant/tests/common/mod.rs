//! Shared helpers of the integration tests.
#![allow(dead_code)]

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::path::PathBuf;
use temper_core::{Classifier, Network};
use temper_data::{Dataset, Split};
use temper_models::{ModelConfig, ModelKind, ValidModelConfig};

/// The workspace's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The naturally trained MNIST small-cnn (96% on the mnist10k test split).
pub fn mnist_cnn() -> Result<(Network, ValidModelConfig)> {
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let (net, _) = temper_models::build_from_file(
        &cfg,
        fixtures().join("attacks/small_cnn_mnist.safetensors"),
        temper_core::weights::Strictness::Strict,
        &Device::Cpu,
    )?;
    Ok((net, cfg))
}

/// The first `n` images of the mnist10k test split (all 2000 for `None`).
pub fn test_set(n: Option<usize>) -> Result<Dataset> {
    let ds = temper_data::load("mnist10k", None, Split::Test)?;
    Ok(match n {
        Some(n) => ds.subset(&(0..n).collect::<Vec<_>>())?,
        None => ds,
    })
}

/// `n` calibration images from the mnist10k train split.
pub fn calib(n: usize) -> Result<Tensor> {
    let train = temper_data::load("mnist10k", None, Split::Train)?;
    Ok(temper_quant::eval::calibration_images(
        &train,
        n,
        "test-calib",
        &Device::Cpu,
    )?)
}

/// Eval-mode logits without parameter gradients.
pub fn logits(model: &dyn Classifier, x: &Tensor) -> Result<Tensor> {
    let opts = temper_core::ForwardOpts {
        mode: temper_core::Mode::Eval,
        param_grads: false,
    };
    Ok(model.forward_opts(x, opts)?)
}

/// `|a - b| / |b|` over whole tensors.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let num = f64::from((a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
    let den = f64::from(b.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
    Ok(num / den.max(1e-30))
}
