//! Model configuration, validated once.

use crate::Stem;
use temper_core::{Error, Normalization, Result};

/// The models of the zoo, as the CLI spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ModelKind {
    /// `small-cnn`: two strided convolutions and two linear layers, for 28x28 digits.
    SmallCnn,
    /// `preact-resnet18`: the CIFAR PreAct ResNet-18 of Wong et al. and Rice et al.
    PreActResNet18,
    /// `resnet18`, torchvision layout.
    ResNet18,
    /// `resnet34`, torchvision layout.
    ResNet34,
    /// `resnet50`, torchvision layout.
    ResNet50,
    /// `wrn-28-10`, RobustBench layout.
    Wrn28x10,
    /// `wrn-34-10`, RobustBench layout.
    Wrn34x10,
    /// `vgg16-bn`, torchvision layout.
    Vgg16Bn,
    /// `mobilenet-v2`, torchvision layout.
    MobileNetV2,
}

impl ModelKind {
    /// Every model, in the order `temper model list` prints them.
    pub const ALL: [ModelKind; 9] = [
        ModelKind::SmallCnn,
        ModelKind::PreActResNet18,
        ModelKind::ResNet18,
        ModelKind::ResNet34,
        ModelKind::ResNet50,
        ModelKind::Wrn28x10,
        ModelKind::Wrn34x10,
        ModelKind::Vgg16Bn,
        ModelKind::MobileNetV2,
    ];

    /// The name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::SmallCnn => "small-cnn",
            ModelKind::PreActResNet18 => "preact-resnet18",
            ModelKind::ResNet18 => "resnet18",
            ModelKind::ResNet34 => "resnet34",
            ModelKind::ResNet50 => "resnet50",
            ModelKind::Wrn28x10 => "wrn-28-10",
            ModelKind::Wrn34x10 => "wrn-34-10",
            ModelKind::Vgg16Bn => "vgg16-bn",
            ModelKind::MobileNetV2 => "mobilenet-v2",
        }
    }

    /// One line on what the model is and where its layout comes from.
    pub fn description(self) -> &'static str {
        match self {
            ModelKind::SmallCnn => "2 conv + 2 linear, MNIST-sized (Wong et al. 2020 Fast-AT MNIST net)",
            ModelKind::PreActResNet18 => "PreAct ResNet-18 for 32x32 (Wong et al. 2020, Rice et al. 2020)",
            ModelKind::ResNet18 => "ResNet-18, torchvision keys, --stem cifar|imagenet",
            ModelKind::ResNet34 => "ResNet-34, torchvision keys, --stem cifar|imagenet",
            ModelKind::ResNet50 => "ResNet-50 (bottleneck), torchvision keys, --stem cifar|imagenet",
            ModelKind::Wrn28x10 => "WideResNet-28-10, RobustBench keys",
            ModelKind::Wrn34x10 => "WideResNet-34-10, RobustBench keys",
            ModelKind::Vgg16Bn => "VGG-16 with BatchNorm, torchvision keys (7x7 adaptive pool)",
            ModelKind::MobileNetV2 => "MobileNet-V2, torchvision keys",
        }
    }

    /// Parses a CLI name.
    pub fn parse(name: &str) -> Result<Self> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
                Error::param(
                    "model",
                    format!("unknown model '{name}'; known: {}", names.join(", ")),
                )
            })
    }

    /// The input `(C, H, W)` the model is usually trained on.
    pub fn default_input(self) -> [usize; 3] {
        match self {
            ModelKind::SmallCnn => [1, 28, 28],
            ModelKind::ResNet18
            | ModelKind::ResNet34
            | ModelKind::ResNet50
            | ModelKind::Vgg16Bn
            | ModelKind::MobileNetV2 => [3, 224, 224],
            _ => [3, 32, 32],
        }
    }

    /// True for the models that can carry Learn2Perturb's noise modules
    /// ([`ModelConfig::noise_injection`]).
    pub fn has_noise_injection(self) -> bool {
        self == ModelKind::PreActResNet18
    }

    /// True for the torchvision ResNets, which take `--stem`.
    pub fn has_stem(self) -> bool {
        matches!(
            self,
            ModelKind::ResNet18 | ModelKind::ResNet34 | ModelKind::ResNet50
        )
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The most classes a model may have (ImageNet-21k has 21,843).
pub const MAX_CLASSES: usize = 1_000_000;
/// The most input channels a model may take.
pub const MAX_CHANNELS: usize = 4096;
/// The largest input side, in pixels.
pub const MAX_SIDE: usize = 4096;
/// The most parameters a model may have (4 GB of f32).
pub const MAX_PARAMS: f64 = 1e9;

/// Unchecked model configuration. Turn it into a [`ValidModelConfig`] with
/// [`ModelConfig::check`]; the constructors accept only the valid type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Which architecture.
    pub kind: ModelKind,
    /// Number of output classes.
    pub num_classes: usize,
    /// Input channels (1 for grey, 3 for RGB, anything else works too).
    pub in_channels: usize,
    /// Input height and width.
    pub input_size: (usize, usize),
    /// ResNet stem; ignored by the other models.
    pub stem: Stem,
    /// Width multiplier: 1.0 is the published model. Scales every channel count (for WRN,
    /// the widen factor 10; for MobileNet-V2, torchvision's `width_mult`).
    pub width: f64,
    /// Dropout before the classifier (VGG and MobileNet-V2). `None` keeps the published
    /// value (0.5 and 0.2).
    pub dropout: Option<f64>,
    /// WRN only: also create RobustBench's unused `sub_block1`, which some RobustBench
    /// checkpoints contain.
    pub wrn_sub_block1: bool,
    /// Input normalisation held inside the model. `None` picks the model's default.
    pub normalization: Option<Normalization>,
    /// Learn2Perturb's noise modules after the stem and after every residual block
    /// ([`temper_core::noise`]): a randomized model, at training and test time. Only
    /// `preact-resnet18` has them.
    #[serde(default)]
    pub noise_injection: bool,
}

impl ModelConfig {
    /// The published configuration of `kind` with `num_classes` outputs and the model's usual
    /// input.
    pub fn new(kind: ModelKind, num_classes: usize) -> Self {
        let [c, h, w] = kind.default_input();
        ModelConfig {
            kind,
            num_classes,
            in_channels: c,
            input_size: (h, w),
            stem: if kind.default_input()[1] >= 64 {
                Stem::Imagenet
            } else {
                Stem::Cifar
            },
            width: 1.0,
            dropout: None,
            wrn_sub_block1: false,
            normalization: None,
            noise_injection: false,
        }
    }

    /// A close upper estimate of the parameter count, computed without building anything:
    /// the published body scaled by `width²`, plus the layers that grow with the input size
    /// or the number of classes.
    pub fn estimated_params(&self) -> f64 {
        let w = self.width;
        let (h, wd) = (self.input_size.0 as f64, self.input_size.1 as f64);
        let classes = self.num_classes as f64;
        let cin = self.in_channels as f64;
        // (parameters of the body at width 1 with 3 input channels, features into the head)
        let (body, features) = match self.kind {
            ModelKind::SmallCnn => {
                // fc1 takes every pixel of the 4x-downsampled map.
                let fc1 = 32.0 * w * (h / 4.0 + 1.0) * (wd / 4.0 + 1.0) * 100.0 * w;
                (fc1 + 16.0 * 32.0 * 16.0 * w * w, 100.0)
            }
            ModelKind::PreActResNet18 | ModelKind::ResNet18 => (11.2e6, 512.0),
            ModelKind::ResNet34 => (21.3e6, 512.0),
            ModelKind::ResNet50 => (23.6e6, 2048.0),
            ModelKind::Wrn28x10 => (36.5e6, 640.0),
            ModelKind::Wrn34x10 => (46.2e6, 640.0),
            ModelKind::Vgg16Bn => (134.3e6, 4096.0),
            ModelKind::MobileNetV2 => (2.3e6, 1280.0),
        };
        let stem = cin * 64.0 * 49.0 * w;
        body * w.max(1.0) * w.max(1.0) + stem + features * w.max(1.0) * classes
    }

    /// Validates every field.
    pub fn check(self) -> Result<ValidModelConfig> {
        if self.num_classes == 0 {
            return Err(Error::param("num-classes", "must be at least 1"));
        }
        if self.num_classes > MAX_CLASSES {
            return Err(Error::param(
                "num-classes",
                format!("{} is more than {MAX_CLASSES}", self.num_classes),
            ));
        }
        if self.in_channels == 0 {
            return Err(Error::param("in-channels", "must be at least 1"));
        }
        if self.in_channels > MAX_CHANNELS {
            return Err(Error::param(
                "in-channels",
                format!("{} is more than {MAX_CHANNELS}", self.in_channels),
            ));
        }
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 16.0) {
            return Err(Error::param("width", format!("{} is not in (0, 16]", self.width)));
        }
        if let Some(p) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::param("dropout", format!("{p} is not in [0, 1)")));
            }
        }
        let (h, w) = self.input_size;
        let min = match self.kind {
            ModelKind::SmallCnn => 4,
            ModelKind::Vgg16Bn => 32,
            ModelKind::ResNet18 | ModelKind::ResNet34 | ModelKind::ResNet50
                if self.stem == Stem::Imagenet =>
            {
                32
            }
            ModelKind::MobileNetV2 => 32,
            _ => 8,
        };
        if h < min || w < min {
            return Err(Error::param(
                "input-size",
                format!("{h}x{w} is too small for {} (at least {min}x{min})", self.kind),
            ));
        }
        if h > MAX_SIDE || w > MAX_SIDE {
            return Err(Error::param(
                "input-size",
                format!("{h}x{w} is larger than {MAX_SIDE}x{MAX_SIDE}"),
            ));
        }
        // Sizes are bounded before anything is allocated, so an absurd request is an error
        // and not an aborted process.
        let params = self.estimated_params();
        if params > MAX_PARAMS {
            return Err(Error::param(
                "model size",
                format!(
                    "{} with {} classes, {} input channels, {h}x{w} inputs and width {} would have \
                     about {:.1e} parameters, more than the {MAX_PARAMS:.0e} Temper allows",
                    self.kind, self.num_classes, self.in_channels, self.width, params
                ),
            ));
        }
        if let Some(n) = &self.normalization {
            n.check(self.in_channels)?;
        }
        if self.noise_injection && !self.kind.has_noise_injection() {
            return Err(Error::param(
                "noise-injection",
                format!(
                    "Learn2Perturb's noise modules exist for preact-resnet18, not {}",
                    self.kind
                ),
            ));
        }
        Ok(ValidModelConfig(self))
    }
}

/// A [`ModelConfig`] that passed [`ModelConfig::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidModelConfig(ModelConfig);

impl ValidModelConfig {
    /// The checked configuration.
    pub fn get(&self) -> &ModelConfig {
        &self.0
    }

    /// Whether both describe the same model once each normalisation is resolved (a
    /// configuration that leaves it to the default equals one that spells the default out).
    pub fn same_model(&self, other: &ValidModelConfig) -> bool {
        let resolve = |c: &ValidModelConfig| ModelConfig {
            normalization: Some(c.normalization()),
            ..c.0.clone()
        };
        resolve(self) == resolve(other)
    }

    /// The normalisation to use: the configured one, or the model's default (CIFAR-10
    /// statistics for 3-channel CIFAR models, ImageNet statistics for 3-channel ImageNet-stem
    /// models, the identity otherwise).
    pub fn normalization(&self) -> Normalization {
        let c = &self.0;
        if let Some(n) = &c.normalization {
            return n.clone();
        }
        if c.in_channels != 3 || c.kind == ModelKind::SmallCnn {
            return Normalization::identity(c.in_channels);
        }
        let imagenet = match c.kind {
            ModelKind::ResNet18 | ModelKind::ResNet34 | ModelKind::ResNet50 => c.stem == Stem::Imagenet,
            ModelKind::Vgg16Bn | ModelKind::MobileNetV2 => c.input_size.0 >= 64,
            _ => false,
        };
        if imagenet {
            Normalization::imagenet()
        } else {
            Normalization::cifar10()
        }
    }

    /// True when the model is randomized: its outputs differ between two passes over the same
    /// input, in evaluation too, so only attacks with expectation over transformation
    /// evaluate it honestly.
    pub fn is_randomized(&self) -> bool {
        self.0.noise_injection
    }

    /// Scales a channel count by the width multiplier (at least 1).
    pub fn scaled(&self, channels: usize) -> usize {
        ((channels as f64 * self.0.width).round() as usize).max(1)
    }
}
