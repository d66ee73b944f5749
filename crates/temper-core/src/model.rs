//! The one model abstraction: [`Classifier`], and [`Network`], the standard implementation.

use crate::hooks::{Hooks, LayerHook};
use crate::kernels::{Kernels, Precision};
use crate::seed::Rng;
use crate::store::ParamStore;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Train or eval mode, as PyTorch's `model.train()` / `model.eval()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Batch statistics, buffer updates, dropout on.
    Train,
    /// Running statistics, no dropout.
    Eval,
}

/// Options of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardOpts {
    /// Train or eval behaviour of BatchNorm and dropout.
    pub mode: Mode,
    /// Whether parameters should take part in autograd. Attacks pass `false`: they need the
    /// gradient with respect to the input only, and kernels may skip weight gradients.
    pub param_grads: bool,
}

/// Everything a layer needs besides its input, passed down the forward pass.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Train or eval behaviour.
    pub mode: Mode,
    /// Whether parameters take part in autograd.
    pub param_grads: bool,
    /// The compute under every layer.
    pub kernels: &'a dyn Kernels,
    /// The arithmetic of convolutions and linear layers.
    pub precision: Precision,
    /// Observers and input transforms, called by every convolution, linear and BatchNorm
    /// layer with its name.
    pub hooks: &'a Hooks,
    /// Generator for dropout masks.
    pub rng: &'a Mutex<Rng>,
}

/// Static facts about a classifier.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    /// Zoo name, e.g. `preact-resnet18`.
    pub name: String,
    /// Number of output logits.
    pub num_classes: usize,
    /// Expected input `(C, H, W)`. Models with global pooling accept other `H, W` too.
    pub input_shape: [usize; 3],
}

/// The model abstraction taken by attacks, evaluation, quantization and training.
///
/// A classifier maps pixels in `[0, 1]` (NCHW f32) to logits; input normalisation lives
/// inside it. It runs in train or eval mode and exposes its parameters and buffers by
/// PyTorch `state_dict` names.
pub trait Classifier: Send + Sync {
    /// Static facts: name, classes, input shape.
    fn info(&self) -> &ModelInfo;

    /// The forward pass with explicit options; the mode stored in the model is ignored.
    fn forward_opts(&self, x: &Tensor, opts: ForwardOpts) -> Result<Tensor>;

    /// The current mode.
    fn mode(&self) -> Mode;

    /// Sets the mode, as `model.train()` / `model.eval()`.
    fn set_mode(&self, mode: Mode);

    /// Named parameters and buffers.
    fn params(&self) -> &ParamStore;

    /// The device the model lives on.
    fn device(&self) -> &Device;

    /// Logits in the current mode, with parameter gradients tracked.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_opts(
            x,
            ForwardOpts {
                mode: self.mode(),
                param_grads: true,
            },
        )
    }

    /// Number of classes.
    fn num_classes(&self) -> usize {
        self.info().num_classes
    }

    /// Expected input `(C, H, W)`.
    fn input_shape(&self) -> [usize; 3] {
        self.info().input_shape
    }
}

/// Sets a mode for a scope and restores the previous one when dropped, so an attack leaves
/// the model as it found it even on an early return.
///
/// ```
/// # use temper_core::{Mode, ModeGuard, Classifier};
/// # fn attack(model: &dyn Classifier) {
/// let _eval = ModeGuard::new(model, Mode::Eval);
/// // ... run the attack in eval mode ...
/// # }
/// ```
pub struct ModeGuard<'a> {
    model: &'a dyn Classifier,
    previous: Mode,
}

impl<'a> ModeGuard<'a> {
    /// Switches `model` to `mode` until the guard is dropped.
    pub fn new(model: &'a dyn Classifier, mode: Mode) -> Self {
        let previous = model.mode();
        model.set_mode(mode);
        ModeGuard { model, previous }
    }
}

impl Drop for ModeGuard<'_> {
    fn drop(&mut self) {
        self.model.set_mode(self.previous);
    }
}

/// Per-channel input normalisation `(x - mean) / std`, held inside the model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Per-channel mean, in pixel units.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, in pixel units.
    pub std: Vec<f32>,
}

impl Normalization {
    /// The CIFAR-10 statistics used by Wong et al. and Rice et al.
    pub fn cifar10() -> Self {
        Normalization {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2471, 0.2435, 0.2616],
        }
    }

    /// The ImageNet statistics used by torchvision and timm.
    pub fn imagenet() -> Self {
        Normalization {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// The identity: mean 0, std 1 on every channel.
    pub fn identity(channels: usize) -> Self {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Parses `none`, `cifar10`, `imagenet` or `mean=a,b,c;std=d,e,f` (a single value is
    /// repeated over channels).
    pub fn parse(spec: &str, channels: usize) -> Result<Self> {
        let bad = |r: &str| Error::param("normalize", format!("'{spec}': {r}"));
        let n = match spec.trim() {
            "none" | "identity" => Self::identity(channels),
            "cifar10" => Self::cifar10(),
            "imagenet" => Self::imagenet(),
            s => {
                let mut mean = None;
                let mut std = None;
                for part in s.split(';') {
                    let (k, v) = part
                        .split_once('=')
                        .ok_or_else(|| bad("expected none, cifar10, imagenet or mean=..;std=.."))?;
                    let vals: Vec<f32> = v
                        .split(',')
                        .map(|x| x.trim().parse::<f32>())
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| bad(&e.to_string()))?;
                    match k.trim() {
                        "mean" => mean = Some(vals),
                        "std" => std = Some(vals),
                        other => return Err(bad(&format!("unknown key '{other}'"))),
                    }
                }
                let expand = |v: Vec<f32>| if v.len() == 1 { vec![v[0]; channels] } else { v };
                Normalization {
                    mean: expand(mean.ok_or_else(|| bad("missing mean"))?),
                    std: expand(std.ok_or_else(|| bad("missing std"))?),
                }
            }
        };
        n.check(channels)?;
        Ok(n)
    }

    /// Checks lengths against the channel count and that every std is positive.
    pub fn check(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::param(
                "normalize",
                format!(
                    "{} mean and {} std values for a {channels}-channel model",
                    self.mean.len(),
                    self.std.len()
                ),
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::param("normalize", "every std must be positive"));
        }
        Ok(())
    }

    /// True when this is the identity.
    pub fn is_identity(&self) -> bool {
        self.mean.iter().all(|m| *m == 0.0) && self.std.iter().all(|s| *s == 1.0)
    }
}

/// The body of a zoo model: maps normalised input to logits.
pub trait Backbone: Send + Sync {
    /// The forward pass.
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor>;
}

/// The standard [`Classifier`]: a [`Backbone`] with its parameters, normalisation, mode and
/// kernels.
pub struct Network {
    info: ModelInfo,
    store: ParamStore,
    backbone: Box<dyn Backbone>,
    normalization: Normalization,
    norm_tensors: Option<(Tensor, Tensor)>,
    train: AtomicBool,
    kernels: RwLock<Arc<dyn Kernels>>,
    hooks: RwLock<Arc<[Arc<dyn LayerHook>]>>,
    precision: RwLock<Precision>,
    rng: Mutex<Rng>,
    device: Device,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("info", &self.info)
            .field("entries", &self.store.len())
            .field("normalization", &self.normalization)
            .finish()
    }
}

impl Network {
    /// Assembles a network. It starts in eval mode with the device's
    /// [`default_kernels`](crate::kernels::default_kernels) (fast CPU kernels on CPU, cuDNN
    /// convolutions on CUDA with the `cudnn` feature, the candle reference elsewhere;
    /// `TEMPER_KERNELS=candle` forces the reference).
    pub fn new(
        info: ModelInfo,
        store: ParamStore,
        backbone: Box<dyn Backbone>,
        normalization: Normalization,
        device: &Device,
    ) -> Result<Self> {
        normalization.check(info.input_shape[0])?;
        let kernels = crate::kernels::default_kernels(device)?;
        let norm_tensors = if normalization.is_identity() {
            None
        } else {
            let c = normalization.mean.len();
            let mean = Tensor::from_vec(normalization.mean.clone(), (1, c, 1, 1), device)?;
            let std = Tensor::from_vec(normalization.std.clone(), (1, c, 1, 1), device)?;
            Some((mean, std))
        };
        Ok(Network {
            info,
            store,
            backbone,
            normalization,
            norm_tensors,
            train: AtomicBool::new(false),
            kernels: RwLock::new(kernels),
            hooks: RwLock::new(Arc::from(Vec::new())),
            precision: RwLock::new(Precision::F32),
            rng: Mutex::new(crate::seed::rng("dropout")),
            device: device.clone(),
        })
    }

    /// Replaces the kernels under every layer (e.g. with a faster implementation). Hooks and
    /// precision are kept.
    pub fn set_kernels(&self, kernels: Arc<dyn Kernels>) {
        *self.kernels.write().unwrap_or_else(|e| e.into_inner()) = kernels;
    }

    /// The kernels in use.
    pub fn kernels(&self) -> Arc<dyn Kernels> {
        self.kernels.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a hook after the ones already installed; it sees every later forward pass until
    /// [`Network::remove_hook`].
    pub fn add_hook(&self, hook: Arc<dyn LayerHook>) {
        let mut hooks = self.hooks.write().unwrap_or_else(|e| e.into_inner());
        let mut list = hooks.to_vec();
        list.push(hook);
        *hooks = Arc::from(list);
    }

    /// Removes `hook` (compared by pointer); returns whether it was installed.
    pub fn remove_hook(&self, hook: &Arc<dyn LayerHook>) -> bool {
        let mut hooks = self.hooks.write().unwrap_or_else(|e| e.into_inner());
        let before = hooks.len();
        let list: Vec<_> = hooks.iter().filter(|h| !Arc::ptr_eq(h, hook)).cloned().collect();
        let removed = list.len() != before;
        *hooks = Arc::from(list);
        removed
    }

    /// The installed hooks, in call order.
    pub fn hooks(&self) -> Arc<[Arc<dyn LayerHook>]> {
        self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the arithmetic of convolutions and linear layers for later forward passes.
    pub fn set_precision(&self, precision: Precision) {
        *self.precision.write().unwrap_or_else(|e| e.into_inner()) = precision;
    }

    /// The arithmetic of convolutions and linear layers.
    pub fn precision(&self) -> Precision {
        *self.precision.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The input normalisation.
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// Re-seeds the dropout generator (part of a training run's RNG state).
    pub fn set_dropout_rng(&self, rng: Rng) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = rng;
    }

    /// The dropout generator's current state.
    pub fn dropout_rng(&self) -> Rng {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let bad = |reason: String| Error::BadInput {
            model: self.info.name.clone(),
            reason,
        };
        if x.dtype() != DType::F32 {
            return Err(bad(format!("expected f32 pixels, got {:?}", x.dtype())));
        }
        let dims = x.dims();
        if dims.len() != 4 {
            return Err(bad(format!("expected NCHW input, got shape {dims:?}")));
        }
        if dims[1] != self.info.input_shape[0] {
            return Err(bad(format!(
                "expected {} input channels, got {} (shape {dims:?})",
                self.info.input_shape[0], dims[1]
            )));
        }
        Ok(())
    }
}

impl Classifier for Network {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward_opts(&self, x: &Tensor, opts: ForwardOpts) -> Result<Tensor> {
        self.check_input(x)?;
        let x = match &self.norm_tensors {
            Some((m, s)) => x.broadcast_sub(m)?.broadcast_div(s)?,
            None => x.clone(),
        };
        let kernels = self.kernels();
        let hooks = self.hooks();
        let ctx = Ctx {
            mode: opts.mode,
            param_grads: opts.param_grads,
            kernels: kernels.as_ref(),
            precision: self.precision(),
            hooks: &hooks,
            rng: &self.rng,
        };
        self.backbone.forward(&x, &ctx)
    }

    fn mode(&self) -> Mode {
        if self.train.load(Ordering::SeqCst) {
            Mode::Train
        } else {
            Mode::Eval
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.train.store(mode == Mode::Train, Ordering::SeqCst);
    }

    fn params(&self) -> &ParamStore {
        &self.store
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
