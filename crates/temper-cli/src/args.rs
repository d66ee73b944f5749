//! Arguments shared by several subcommands.

use anyhow::{Context, Result};
use clap::Args;
use temper_models::{ModelConfig, ModelKind, Stem, ValidModelConfig};

/// Which model, and how it is shaped.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model name from `temper model list`, e.g. small-cnn, preact-resnet18, resnet50.
    #[arg(long, short = 'm')]
    pub model: String,
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
    #[arg(long, default_value_t = 1.0)]
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
        let kind = ModelKind::parse(&self.model)?;
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
