//! # temper-models
//!
//! Temper's model zoo. Every model is a [`temper_core::Network`]: it takes pixels in
//! `[0, 1]`, holds its own normalisation, and names its parameters and buffers exactly as
//! the PyTorch reference does, so a checkpoint written by
//! `safetensors.torch.save_file(model.state_dict(), path)` loads with no renaming.
//!
//! | name | layout of |
//! |---|---|
//! | `small-cnn` | Wong et al. 2020 MNIST net |
//! | `preact-resnet18` | Wong et al. 2020 / Rice et al. 2020 |
//! | `resnet18`, `resnet34`, `resnet50` | torchvision (`--stem cifar` for 32x32) |
//! | `wrn-28-10`, `wrn-34-10` | RobustBench |
//! | `vgg16-bn`, `mobilenet-v2` | torchvision |
//!
//! ```
//! use temper_models::{build, ModelConfig, ModelKind};
//! use temper_core::Classifier;
//!
//! # fn main() -> temper_core::Result<()> {
//! let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
//! let model = build(&cfg, &candle_core::Device::Cpu)?;
//! assert_eq!(model.params().num_trainable(), 166_406);
//! let x = candle_core::Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, model.device())?;
//! assert_eq!(model.forward(&x)?.dims(), &[2, 10]);
//! # Ok(()) }
//! ```

mod config;
mod mobilenet_v2;
mod preact_resnet;
mod resnet;
mod small_cnn;
mod vgg;
mod wrn;

pub use config::{ModelConfig, ModelKind, ValidModelConfig};

use candle_core::{DType, Device, Tensor};
use temper_core::summary::LayerRecord;
use temper_core::{Backbone, Builder, Classifier, ModelInfo, Network, Normalization, Result};

/// The first layers of a ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 3x3 stride-1 convolution, no max pool: for 32x32 inputs.
    Cifar,
    /// torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max pool: for 224x224 inputs.
    Imagenet,
}

impl Stem {
    /// Parses `cifar` or `imagenet`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            _ => Err(temper_core::Error::param(
                "stem",
                format!("'{s}' is not one of cifar, imagenet"),
            )),
        }
    }
}

/// Builds a model with freshly initialised parameters (drawn from the global seed's `init`
/// stream, so the same seed gives the same model on every machine).
pub fn build(cfg: &ValidModelConfig, device: &Device) -> Result<Network> {
    let b = Builder::new(
        device,
        temper_core::seed::rng(&format!("init/{}", cfg.get().kind)),
    );
    assemble(cfg, b, device)
}

/// Builds a model whose parameters are zero (BatchNorm scales one): fast, for when weights
/// are loaded next or only the architecture is wanted (`temper model summary`).
pub fn build_zeroed(cfg: &ValidModelConfig, device: &Device) -> Result<Network> {
    assemble(cfg, Builder::zeroed(device), device)
}

/// The safetensors metadata key under which Temper records the configuration of a model it
/// writes (JSON of [`ModelConfig`], its normalisation resolved), so a reader knows the
/// architecture options and the input normalisation the weights were trained with.
pub const META_CONFIG: &str = "temper.model_config";

/// The metadata to write beside a model's weights ([`META_CONFIG`]): every weight file
/// Temper writes carries it, so loading it later needs no `--normalize`.
pub fn metadata(cfg: &ValidModelConfig) -> std::collections::HashMap<String, String> {
    let mut c = cfg.get().clone();
    c.normalization = Some(cfg.normalization());
    // A ModelConfig is plain data; serialising it cannot fail.
    let json = serde_json::to_string(&c).unwrap_or_default();
    std::collections::HashMap::from([(META_CONFIG.to_string(), json)])
}

/// Saves a model's weights with PyTorch names and its configuration in the metadata
/// ([`metadata`]), atomically; `extra` adds metadata of the caller's.
pub fn save(
    model: &Network,
    cfg: &ValidModelConfig,
    path: impl AsRef<std::path::Path>,
    dtype: candle_core::DType,
    extra: &std::collections::HashMap<String, String>,
) -> Result<()> {
    let mut meta = metadata(cfg);
    meta.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    temper_core::weights::save(model.params(), path, dtype, &meta)
}

/// How the normalisation of a model loaded from a file was decided.
#[derive(Debug, Clone, PartialEq)]
pub enum NormalizationSource {
    /// The caller gave one (`--normalize`).
    Given,
    /// The file recorded one ([`META_CONFIG`]).
    File,
    /// Neither: the model's default was assumed. A message says which, for a warning, when
    /// the default is not the identity (a checkpoint trained on raw pixels would then be
    /// evaluated on normalised ones, silently).
    Assumed(Option<String>),
}

/// The configuration recorded in a weight file's metadata ([`META_CONFIG`]), if any.
fn recorded_config(path: &std::path::Path) -> Result<Option<ModelConfig>> {
    let meta = temper_core::weights::read_metadata(path)?;
    meta.get(META_CONFIG)
        .map(|json| {
            serde_json::from_str(json).map_err(|e| temper_core::Error::BadWeightFile {
                path: path.to_path_buf(),
                reason: format!("metadata '{META_CONFIG}': {e}"),
            })
        })
        .transpose()
}

/// The configuration to load the weights at `path` with: `cfg`, taking the normalisation the
/// file records when the caller gave none, and the file's noise modules
/// ([`ModelConfig::noise_injection`]) when it records them (weights with noise scales load
/// into no other model).
pub fn config_for_file(
    cfg: &ValidModelConfig,
    path: &std::path::Path,
) -> Result<(ValidModelConfig, NormalizationSource)> {
    let given = cfg.get().normalization.is_some();
    // With --normalize given, unreadable metadata is no reason to refuse the file, as before.
    let recorded = match recorded_config(path) {
        Ok(r) => r,
        Err(_) if given => None,
        Err(e) => return Err(e),
    };
    let mut c = cfg.get().clone();
    if recorded.as_ref().is_some_and(|r| r.noise_injection) {
        c.noise_injection = true;
    }
    if given {
        return Ok((c.check()?, NormalizationSource::Given));
    }
    if let Some(n) = recorded.and_then(|r| r.normalization) {
        c.normalization = Some(n);
        return Ok((c.check()?, NormalizationSource::File));
    }
    let n = cfg.normalization();
    let note = (!n.is_identity()).then(|| {
        let name = if n == Normalization::cifar10() {
            "CIFAR-10 (--normalize cifar10)".to_string()
        } else if n == Normalization::imagenet() {
            "ImageNet (--normalize imagenet)".to_string()
        } else {
            format!("mean {:?}, std {:?}", n.mean, n.std)
        };
        format!(
            "'{}' records no input normalisation; assuming {}'s default, {name}. If the weights \
             were trained on raw pixels, pass --normalize none",
            path.display(),
            cfg.get().kind
        )
    });
    Ok((c.check()?, NormalizationSource::Assumed(note)))
}

/// Builds a model and loads a safetensors file (or a PyTorch `.pt`/`.pth` checkpoint) with
/// PyTorch key names into it.
pub fn build_from_file(
    cfg: &ValidModelConfig,
    path: impl AsRef<std::path::Path>,
    strictness: temper_core::weights::Strictness,
    device: &Device,
) -> Result<(Network, temper_core::weights::LoadReport)> {
    let net = build_zeroed(cfg, device)?;
    let report = temper_core::weights::load(net.params(), path, cfg.get().kind.name(), strictness)?;
    Ok((net, report))
}

fn assemble(cfg: &ValidModelConfig, b: Builder, device: &Device) -> Result<Network> {
    let c = cfg.get();
    let backbone: Box<dyn Backbone> = match c.kind {
        ModelKind::SmallCnn => Box::new(small_cnn::build(&b, cfg)?),
        ModelKind::PreActResNet18 => Box::new(preact_resnet::build(&b, cfg)?),
        ModelKind::ResNet18 => Box::new(resnet::build(&b, cfg, [2, 2, 2, 2], false)?),
        ModelKind::ResNet34 => Box::new(resnet::build(&b, cfg, [3, 4, 6, 3], false)?),
        ModelKind::ResNet50 => Box::new(resnet::build(&b, cfg, [3, 4, 6, 3], true)?),
        ModelKind::Wrn28x10 => Box::new(wrn::build(&b, cfg, 28)?),
        ModelKind::Wrn34x10 => Box::new(wrn::build(&b, cfg, 34)?),
        ModelKind::Vgg16Bn => Box::new(vgg::build(&b, cfg)?),
        ModelKind::MobileNetV2 => Box::new(mobilenet_v2::build(&b, cfg)?),
    };
    let info = ModelInfo {
        name: c.kind.name().to_string(),
        num_classes: c.num_classes,
        input_shape: [c.in_channels, c.input_size.0, c.input_size.1],
    };
    Network::new(info, b.finish(), backbone, cfg.normalization(), device)
}

/// Runs one eval-mode forward pass on a zero image and returns the layer table.
pub fn layer_table(model: &dyn Classifier) -> Result<Vec<LayerRecord>> {
    let [c, h, w] = model.input_shape();
    let x = Tensor::zeros((1, c, h, w), DType::F32, model.device())?;
    let opts = temper_core::ForwardOpts {
        mode: temper_core::Mode::Eval,
        param_grads: false,
    };
    let (out, rows) = temper_core::summary::trace(|| model.forward_opts(&x, opts));
    out?;
    Ok(rows)
}
