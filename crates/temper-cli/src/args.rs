//! Arguments shared by several subcommands.

use anyhow::{Context, Result};
use clap::Args;
use temper_models::{ModelConfig, ModelKind, Stem, ValidModelConfig};

/// Which model, and how it is shaped.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model name from `temper model list`, e.g. small-cnn, preact-resnet18, resnet50
    /// (required; `temper train --resume` reads it from the run instead).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Number of output classes.
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    /// Input channels (default: the model's usual, 1 for small-cnn, 3 otherwise).
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// Input height and width, e.g. 32 or 224x224 (default: the model's usual).
    #[arg(long)]
    pub input_size: Option<String>,
    /// ResNet stem: cifar (3x3 conv, for 32x32) or imagenet (7x7 conv + max pool).
    #[arg(long)]
    pub stem: Option<String>,
    /// Width multiplier on every channel count (1 = the published model).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub width: f64,
    /// Input normalisation inside the model: none, cifar10, imagenet, or
    /// "mean=0.5,0.5,0.5;std=0.25,0.25,0.25" (default: the model's usual).
    #[arg(long)]
    pub normalize: Option<String>,
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .with_context(|| format!("--input-size '{s}': '{v}' is not a number"))
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => {
            let n = parse(s)?;
            Ok((n, n))
        }
    }
}

impl ModelArgs {
    /// The validated model configuration these arguments describe.
    pub fn config(&self) -> Result<ValidModelConfig> {
        let name = self
            .model
            .as_deref()
            .context("--model is required (see `temper model list`)")?;
        let kind = ModelKind::parse(name)?;
        let mut cfg = ModelConfig::new(kind, self.num_classes);
        if let Some(c) = self.in_channels {
            cfg.in_channels = c;
        }
        if let Some(stem) = &self.stem {
            if !kind.has_stem() {
                anyhow::bail!("--stem applies to resnet18/34/50 only, not {kind}");
            }
            cfg.stem = Stem::parse(stem)?;
            // The stem decides the usual input size unless the user gave one.
            if self.input_size.is_none() {
                cfg.input_size = if cfg.stem == Stem::Cifar {
                    (32, 32)
                } else {
                    (224, 224)
                };
            }
        }
        if let Some(s) = &self.input_size {
            cfg.input_size = parse_size(s)?;
        }
        cfg.width = self.width;
        if let Some(n) = &self.normalize {
            cfg.normalization = Some(temper_core::Normalization::parse(n, cfg.in_channels)?);
        }
        Ok(cfg.check()?)
    }
}

/// Which data set, and which part of it.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data set: mnist10k (bundled, needs no files), mnist, fashion-mnist, cifar10, cifar100,
    /// image-folder.
    #[arg(long, short = 'd', default_value = "mnist10k")]
    pub dataset: String,
    /// Directory holding the data set's files (not needed for mnist10k).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Split to use: train or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Use only the first N samples of the split.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl DataArgs {
    /// Loads the chosen split (and applies `--limit`).
    pub fn load(&self) -> Result<temper_data::Dataset> {
        let split: temper_data::Split = self.split.parse()?;
        let ds = temper_data::load(&self.dataset, self.data_dir.as_deref(), split)?;
        match self.limit {
            Some(0) => anyhow::bail!("--limit must be at least 1"),
            Some(n) if n < ds.len() => Ok(ds.subset(&(0..n).collect::<Vec<_>>())?),
            _ => Ok(ds),
        }
    }
}

/// Where to run.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Device: cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Global seed for every random choice (initialisation, shuffling, attack starts).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DeviceArgs {
    /// Opens the device and sets the global seed.
    pub fn init(&self) -> Result<candle_core::Device> {
        temper_core::seed::set_seed(self.seed);
        Ok(temper_core::device::parse(&self.device)?)
    }
}

/// Builds the model, loading `weights` (strictly) when given.
pub fn load_model(
    cfg: &ValidModelConfig,
    weights: Option<&std::path::Path>,
    device: &candle_core::Device,
) -> Result<temper_core::Network> {
    match weights {
        Some(w) => {
            let (net, report) =
                temper_models::build_from_file(cfg, w, temper_core::weights::Strictness::Strict, device)?;
            tracing::info!(loaded = report.loaded, file = %w.display(), "weights loaded");
            Ok(net)
        }
        None => Ok(temper_models::build(cfg, device)?),
    }
}

/// Checks that a data set fits a model: same channels and class count.
pub fn check_fit(model: &dyn temper_core::Classifier, data: &temper_data::Dataset) -> Result<()> {
    let [c, h, w] = data.shape();
    let [mc, _, _] = model.input_shape();
    if c != mc {
        anyhow::bail!("data set '{}' has {c}-channel {h}x{w} images but the model takes {mc} channels (use --in-channels)", data.name());
    }
    if data.num_classes() > model.num_classes() {
        anyhow::bail!(
            "data set '{}' has {} classes but the model has {} outputs (use --num-classes)",
            data.name(),
            data.num_classes(),
            model.num_classes()
        );
    }
    Ok(())
}
