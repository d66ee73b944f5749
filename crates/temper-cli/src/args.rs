//! Arguments shared by several subcommands.

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use temper_attacks::spec::{parse_number, AttackSettings, AttackSpec};
use temper_attacks::{LossKind, Norm};
use temper_core::weights::Strictness;
use temper_eval::NamedAttack;
use temper_models::{ModelConfig, ModelKind, NormalizationSource, Stem, ValidModelConfig};

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
    /// "mean=0.5,0.5,0.5;std=0.25,0.25,0.25" (default: what the weights file records; for a file
    /// recording none, the model's usual, with a warning naming it).
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

/// How attacks are completed: budget, step, steps, restarts, loss, norm and start.
///
/// Shared by `temper attack`, `temper eval` and `temper quant sweep`; each turns it into one
/// [`AttackSettings`] that completes every attack name the user gave (`pgd-20`, `fgsm`, ...).
/// `--eps` defaults by data set ([`default_eps`]), the same on every command.
#[derive(Args, Debug, Clone)]
pub struct AttackOpts {
    /// Threat model norm: Linf, L2 or L1 (any case; inf and l-inf mean Linf). `pgd-l2-N` fixes
    /// it for one attack; FGSM is L-inf and CW is L2 whatever this says, but every attack's
    /// examples count only inside this norm's eps ball. L1: APGD (apgd-ce, apgd-dlr, apgd-t)
    /// and PGD.
    #[arg(long, default_value = "Linf")]
    pub norm: String,
    /// Budget in pixel units, a decimal or a fraction: 0.3, 8/255 (default by data set: for
    /// 28x28 grey digits 0.3 in L-inf, 2.0 in L2 and 10 in L1, otherwise 8/255 in L-inf, 0.5 in
    /// L2 and 12 in L1).
    #[arg(long)]
    pub eps: Option<String>,
    /// Step size: a number (2/255, 0.01) or a multiple of eps (eps/4, 0.25*eps). Default:
    /// 2.5*eps/steps for PGD (Madry et al.), which is torchattacks' 2/255 for PGD-10 at
    /// 8/255; eps/4 keeps torchattacks' step at any step count; 1.25*eps for FGSM-RS.
    #[arg(long)]
    pub alpha: Option<String>,
    /// PGD steps when the attack name has none (`pgd`; `pgd-40` says 40).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// PGD restarts; the worst case per sample is kept.
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Objective for FGSM/PGD when the attack name has none: ce (cross-entropy) or cw
    /// (margin).
    #[arg(long, default_value = "ce")]
    pub loss: String,
    /// Start PGD at the clean point instead of a random point of the eps ball.
    #[arg(long)]
    pub no_random_start: bool,
}

/// The usual budget for data of shape `[C, H, W]` in `norm`: the one default of every
/// command's `--eps` (`temper_data::default_linf_eps` and `default_l2_eps`).
pub fn default_eps(shape: [usize; 3], norm: Norm) -> f64 {
    match norm {
        Norm::Linf => temper_data::default_linf_eps(shape),
        Norm::L2 => temper_data::default_l2_eps(shape),
        Norm::L1 => temper_data::default_l1_eps(shape),
    }
}

/// Parses `--eps`, or picks the data set's default.
pub fn eps_or_default(eps: Option<&str>, shape: [usize; 3], norm: Norm) -> Result<f64> {
    match eps {
        Some(s) => Ok(parse_number(s, "eps")?),
        None => Ok(default_eps(shape, norm)),
    }
}

/// Parses a step size: a number (`0.01`, `2/255`) or a multiple of eps (`eps/4`,
/// `0.25*eps`, `eps`).
pub fn parse_alpha(s: &str, eps: f64) -> Result<f64> {
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let v = if let Some(rest) = t.strip_prefix("eps") {
        match rest {
            "" => eps,
            r => match r.strip_prefix('/') {
                Some(d) => eps / parse_number(d, "alpha")?,
                None => match r.strip_prefix('*') {
                    Some(m) => eps * parse_number(m, "alpha")?,
                    None => anyhow::bail!("--alpha '{s}': expected a number, eps/K or K*eps"),
                },
            },
        }
    } else if let Some(k) = t.strip_suffix("*eps") {
        eps * parse_number(k, "alpha")?
    } else {
        parse_number(&t, "alpha")?
    };
    if !(v.is_finite() && v > 0.0) {
        anyhow::bail!("--alpha '{s}' must be a positive step size (it is {v} at eps {eps})");
    }
    Ok(v)
}

/// Parses a comma-separated attack list; an empty list or an empty name is an error rather
/// than a silently shorter list.
pub fn parse_attack_list(list: &str) -> Result<Vec<AttackSpec>> {
    if list.trim().is_empty() || list.split(',').any(|p| p.trim().is_empty()) {
        anyhow::bail!(
            "--attacks '{list}' has an empty attack name; give a comma-separated list such as fgsm,pgd-20"
        );
    }
    Ok(AttackSpec::parse_list(list)?)
}

impl AttackOpts {
    /// The settings these options describe for data of shape `shape` (each attack validates
    /// them when built).
    pub fn settings(&self, shape: [usize; 3]) -> Result<AttackSettings> {
        if self.steps == 0 {
            anyhow::bail!("--steps must be at least 1");
        }
        let norm = Norm::parse(&self.norm)?;
        let eps = eps_or_default(self.eps.as_deref(), shape, norm)?;
        Ok(AttackSettings {
            eps,
            alpha: self.alpha.as_deref().map(|s| parse_alpha(s, eps)).transpose()?,
            norm,
            restarts: self.restarts,
            steps: self.steps,
            loss: LossKind::parse(&self.loss)?,
            random_start: !self.no_random_start,
        })
    }

    /// The attacks of a comma-separated list such as `fgsm,pgd-20`, each named as the user
    /// wrote it and completed with [`AttackOpts::settings`], with their specs and settings.
    pub fn build_list(
        &self,
        list: &str,
        shape: [usize; 3],
    ) -> Result<(AttackSettings, Vec<AttackSpec>, Vec<NamedAttack>)> {
        let settings = self.settings(shape)?;
        let specs = parse_attack_list(list)?;
        let attacks = specs
            .iter()
            .map(|s| Ok((s.text.clone(), s.build(&settings)?)))
            .collect::<Result<_>>()?;
        Ok((settings, specs, attacks))
    }
}

/// Where a long evaluation records its progress.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// State file: progress is recorded after every attack on every batch (written
    /// atomically), and a rerun given the same file skips what it records and ends with the
    /// numbers of an uninterrupted run. Refused when written for another model, attack list,
    /// threat, batch size, seed or data; a larger --limit continues a smaller one
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

impl StateArgs {
    /// Says whether the evaluation starts afresh or continues a file.
    pub fn announce(&self, json: bool) {
        if let Some(p) = &self.state {
            if p.exists() {
                say!(json, "state:   continuing from {}", p.display());
            } else {
                say!(json, "state:   recording progress in {}", p.display());
            }
        }
    }
}

/// Weights to load, and how strictly.
#[derive(Args, Debug, Clone)]
pub struct WeightsArgs {
    /// Weights with PyTorch state_dict names: safetensors, or a PyTorch checkpoint (.pt/.pth;
    /// a plain state dict or one under "state_dict"/"model", DataParallel "module." prefixes
    /// stripped), or a file written by `temper quantize` (run through its quantizer).
    #[arg(long, short = 'w')]
    pub weights: Option<PathBuf>,
    /// Load the keys that match and list the rest, instead of refusing a file whose keys
    /// differ from the model's (shapes must still match).
    #[arg(long)]
    pub lenient: bool,
}

impl WeightsArgs {
    /// How strictly to load.
    pub fn strictness(&self) -> Strictness {
        if self.lenient {
            Strictness::Lenient
        } else {
            Strictness::Strict
        }
    }

    /// The weights, which this command needs.
    pub fn required(&self) -> Result<&Path> {
        self.weights
            .as_deref()
            .context("--weights is required: the float model to start from")
    }
}

/// Parses a switch: on, off, true, false (any case; also yes/no, 1/0).
pub fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
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
    pub data_dir: Option<PathBuf>,
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

/// The arithmetic of convolutions and linear layers.
#[derive(Args, Debug, Clone)]
pub struct PrecisionArgs {
    /// Arithmetic of convolutions and linear layers: f32, tf32 (TF32 tensor cores where the
    /// device has them; f32 on CPUs) or bf16 (bf16 operands, f32 accumulation; BatchNorm,
    /// losses and weights stay f32; on CPUs with AVX512-BF16 the convolutions run at the bf16
    /// rate, elsewhere the same arithmetic runs at f32 speed).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

impl PrecisionArgs {
    /// The parsed setting.
    pub fn get(&self) -> Result<temper_core::kernels::Precision> {
        Ok(temper_core::kernels::Precision::parse(&self.precision)?)
    }
}

impl DeviceArgs {
    /// Opens the device and sets the global seed.
    pub fn init(&self) -> Result<candle_core::Device> {
        temper_core::seed::set_seed(self.seed);
        Ok(temper_core::device::parse(&self.device)?)
    }
}

/// Builds the model, loading `weights` when given. The file's recorded normalisation is used
/// when `--normalize` is not given; a file recording none, loaded into a model whose default
/// normalisation is not the identity, gets a warning on stderr saying which one was assumed.
pub fn load_model(
    cfg: &ValidModelConfig,
    weights: Option<&Path>,
    strictness: Strictness,
    device: &candle_core::Device,
) -> Result<temper_core::Network> {
    match weights {
        Some(w) => {
            let (cfg, source) = temper_models::config_for_file(cfg, w)?;
            if let NormalizationSource::Assumed(Some(note)) = &source {
                eprintln!("warning: {note}");
            }
            let (net, report) = temper_models::build_from_file(&cfg, w, strictness, device)?;
            if !report.mismatch.is_empty() {
                eprintln!(
                    "warning: --lenient loading of '{}' left keys unmatched: {}",
                    w.display(),
                    report.mismatch
                );
            }
            tracing::info!(loaded = report.loaded, file = %w.display(), "weights loaded");
            Ok(net)
        }
        None => Ok(temper_models::build(cfg, device)?),
    }
}

/// A model to attack or evaluate: a float network, or a quantized model read from a file that
/// `temper quantize` wrote.
pub enum LoadedModel {
    /// A zoo network with float weights.
    Float(Box<temper_core::Network>),
    /// A quantized model; attacks go through its quantizer (straight-through gradients).
    Quantized(Box<temper_quant::QuantModel>),
}

impl LoadedModel {
    /// The model as every tool takes it.
    pub fn classifier(&self) -> &dyn temper_core::Classifier {
        match self {
            LoadedModel::Float(n) => n.as_ref(),
            LoadedModel::Quantized(q) => q.as_ref(),
        }
    }

    /// Sets the arithmetic of the model's convolutions and linear layers.
    pub fn set_precision(&self, precision: temper_core::kernels::Precision) {
        match self {
            LoadedModel::Float(n) => n.set_precision(precision),
            LoadedModel::Quantized(q) => q.network().set_precision(precision),
        }
    }

    /// How the model was quantized, e.g. `gpfq 4-bit, per-channel, ...`; `None` for float.
    pub fn quantization(&self) -> Option<String> {
        match self {
            LoadedModel::Float(_) => None,
            LoadedModel::Quantized(q) => Some(q.quant_info().describe()),
        }
    }
}

/// Loads `weights`: a float state dict into the model `model` describes (a random
/// initialisation when `None`), or a quantized file from `temper quantize`, whose architecture
/// comes from the file (`--model`, if given, must name the same one).
pub fn load_any(
    model: &ModelArgs,
    weights: &WeightsArgs,
    device: &candle_core::Device,
) -> Result<LoadedModel> {
    if let Some(w) = weights.weights.as_deref() {
        // A PyTorch checkpoint is a zip archive, never a quantized safetensors file.
        if !temper_core::pytorch::is_pytorch(w) && temper_quant::export::is_quantized(w)? {
            let q = temper_quant::export::load(w, device)?;
            if model.model.is_some() {
                let asked = model.config()?;
                if !asked.same_model(q.config()) {
                    anyhow::bail!(
                        "'{}' holds a quantized {} ({:?}), not the model of --model and its options ({:?}); leave out --model to take the file's",
                        w.display(),
                        temper_core::Classifier::info(&q).name,
                        q.config().get(),
                        asked.get()
                    );
                }
            }
            tracing::info!(file = %w.display(), "quantized model loaded");
            return Ok(LoadedModel::Quantized(Box::new(q)));
        }
    }
    Ok(LoadedModel::Float(Box::new(load_model(
        &model.config()?,
        weights.weights.as_deref(),
        weights.strictness(),
        device,
    )?)))
}

/// Refuses attacks that take one forward pass per gradient when `model` is randomized (it has
/// Learn2Perturb's noise modules, noise at test time too): the noise makes their gradients
/// point anywhere, so their robust accuracy is not evidence (Athalye et al. 2018). Only
/// attacks with expectation over transformation evaluate such a model.
pub fn check_randomized(model: &dyn temper_core::Classifier, specs: &[AttackSpec]) -> Result<()> {
    if !temper_core::noise::is_randomized(model.params()) {
        return Ok(());
    }
    let single: Vec<&str> = specs
        .iter()
        .filter(|s| !s.averages_over_randomness())
        .map(|s| s.text.as_str())
        .collect();
    if !single.is_empty() {
        anyhow::bail!(
            "{} has noise modules (Learn2Perturb): its outputs are random at test time, and {} \
             take(s) one pass per gradient, which the noise fools; evaluate it with attacks that \
             average gradients over the noise: --attacks autoattack-rand (or apgd-ce-eot20, \
             apgd-dlr-eot20)",
            model.info().name,
            single.join(", ")
        );
    }
    Ok(())
}

/// Refuses to quantize a model with noise modules: the quantizer's checks compare passes
/// that the noise makes differ, and nothing in Temper has measured such a model quantized.
pub fn check_quantizable(model: &dyn temper_core::Classifier) -> Result<()> {
    if temper_core::noise::is_randomized(model.params()) {
        anyhow::bail!(
            "{} has noise modules (Learn2Perturb); quantizing a randomized model is not supported",
            model.info().name
        );
    }
    Ok(())
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
