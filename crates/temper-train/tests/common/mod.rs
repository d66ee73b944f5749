//! Shared by the trainer's integration tests: a tiny run on the bundled mnist10k.
#![allow(dead_code)]

use anyhow::Result;
use candle_core::Device;
use std::path::Path;
use temper_data::split::{SplitParams, ValSize};
use temper_data::{Dataset, Split};
use temper_models::{ModelConfig, ModelKind};
use temper_train::{render::Silent, Method, RunOptions, TrainConfig};

/// Half-width small-cnn, 320 training digits in batches of 64 (5 iterations per epoch), 100
/// validation digits, a 2-step inner attack.
pub fn config(method: Method) -> TrainConfig {
    let mut m = ModelConfig::new(ModelKind::SmallCnn, 10);
    m.width = 0.5;
    let mut c = TrainConfig::new(method, m, "mnist10k");
    c.epochs = 2;
    c.train_size = Some(320);
    c.batch_size = 64;
    c.val_size = 100;
    c.threat.steps = 2;
    c.checkpoint_every = 3;
    c.log_every = 1;
    c.lr_schedule = "ssfd:peak=0.05,warmup=0.3".into();
    c
}

pub fn opts(stop_after: Option<u64>) -> RunOptions {
    RunOptions {
        stop_after,
        ..RunOptions::new(Box::new(Silent))
    }
}

/// The validation set the trainer holds out for `cfg`, built here from temper-data alone.
pub fn val_set(cfg: &TrainConfig) -> Result<Dataset> {
    let full = temper_data::load(&cfg.dataset, None, Split::Train)?;
    let split = SplitParams {
        val: ValSize::Fraction(cfg.val_split),
        seed: cfg.seed,
    }
    .check(full.len())?;
    let (_, v) = split.split_dataset(&full)?;
    // The trainer's rule: `val_size` rows evenly spaced through the hold-out.
    let (n, k) = (v.len(), cfg.val_size.min(v.len()));
    Ok(v.subset(&(0..k).map(|i| i * n / k).collect::<Vec<_>>())?)
}

/// Every tensor of a safetensors file as bits, sorted by name.
pub fn bits(p: &Path) -> Result<Vec<(String, Vec<u32>)>> {
    let t = candle_core::safetensors::load(p, &Device::Cpu)?;
    let mut v = t
        .into_iter()
        .map(|(k, x)| {
            let b = x
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|f| f.to_bits())
                .collect();
            Ok((k, b))
        })
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// True when every value in the file is finite.
pub fn all_finite(p: &Path) -> Result<bool> {
    Ok(bits(p)?
        .iter()
        .all(|(_, b)| b.iter().all(|x| f32::from_bits(*x).is_finite())))
}

/// Every tensor of a model (parameters and buffers) as bits, sorted by name.
pub fn bits_of(model: &temper_core::Network) -> Result<Vec<(String, Vec<u32>)>> {
    use temper_core::Classifier;
    let mut v = model
        .params()
        .state_dict()?
        .into_iter()
        .map(|(k, x)| {
            let b = x
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|f| f.to_bits())
                .collect();
            Ok((k, b))
        })
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}
