//! Layer kernels: the replaceable compute under every layer.
//!
//! Model definitions never call candle's convolution or pooling directly; layers call a
//! [`Kernels`] implementation passed in the forward [`Ctx`](crate::Ctx). The default,
//! [`CandleKernels`], is written with candle's differentiable tensor operations only, so it
//! runs on every device and its gradients come from candle's autograd. A faster
//! implementation (own CPU kernels, an input-gradient-only backward for attacks, cuDNN calls
//! on CUDA) implements the same trait and is swapped in with
//! [`Network::set_kernels`](crate::Network::set_kernels) without touching any model.
//!
//! [`FastCpuKernels`] is such an implementation: an im2col + gemm convolution with its own
//! backward, which skips the weight gradient when the weight is detached (attacks).
//! `CudaKernels` (feature `cudnn`) is another: convolutions through cuDNN in both directions.
//! A [`Network`](crate::Network) starts with [`default_kernels`] for its device:
//! [`FastCpuKernels`] on CPU, `CudaKernels` on CUDA devices in builds with the `cudnn`
//! feature, [`CandleKernels`] elsewhere. The environment variable `TEMPER_KERNELS` overrides
//! the choice for debugging: `candle` forces the reference, `fast-cpu` the fast CPU kernels
//! and `cudnn` the cuDNN kernels (each still falls back to the reference off its device).

pub mod alloc;
#[cfg(feature = "cudnn")]
mod cuda;
mod fast_act;
mod fast_bf16;
mod fast_bn;
mod fast_cpu;
mod fast_depthwise;
pub mod parity;

#[cfg(feature = "cudnn")]
pub use cuda::CudaKernels;
pub use fast_cpu::FastCpuKernels;

use crate::Result;
use candle_core::{DType, Device, Tensor, D};
use std::sync::Arc;

/// The environment variable that overrides [`default_kernels`]: `candle` or `fast-cpu`.
pub const KERNELS_ENV: &str = "TEMPER_KERNELS";

/// The kernels a new [`Network`](crate::Network) on `device` starts with:
/// [`select_kernels`] with the value of [`KERNELS_ENV`], if set.
pub fn default_kernels(device: &Device) -> Result<Arc<dyn Kernels>> {
    let choice = std::env::var(KERNELS_ENV).ok();
    select_kernels(choice.as_deref(), device)
}

/// Kernels by name: `candle` (or `candle-reference`) for [`CandleKernels`], `fast-cpu` (or
/// `fast`) for [`FastCpuKernels`], `cudnn` for `CudaKernels` (in builds with the `cudnn`
/// feature), and `None` or an empty name for the device's default ([`FastCpuKernels`] on
/// CPU; on CUDA devices `CudaKernels` with the `cudnn` feature, [`CandleKernels`] without;
/// [`CandleKernels`] elsewhere).
pub fn select_kernels(name: Option<&str>, device: &Device) -> Result<Arc<dyn Kernels>> {
    match name.map(str::trim).unwrap_or("") {
        "" if device.is_cpu() => Ok(Arc::new(FastCpuKernels)),
        "" if device.is_cuda() && cfg!(feature = "cudnn") => cudnn_kernels(),
        "" => Ok(Arc::new(CandleKernels)),
        "candle" | "candle-reference" => Ok(Arc::new(CandleKernels)),
        "fast-cpu" | "fast" => Ok(Arc::new(FastCpuKernels)),
        "cudnn" => cudnn_kernels(),
        other => Err(crate::Error::param(
            KERNELS_ENV,
            format!("unknown kernels '{other}': expected 'candle', 'fast-cpu' or 'cudnn'"),
        )),
    }
}

/// The name of the kernels a model on a CUDA device starts with in this build (without
/// opening a device): `cudnn` with the `cudnn` feature, `candle-reference` otherwise.
pub fn cuda_default_name() -> &'static str {
    if cfg!(feature = "cudnn") {
        "cudnn"
    } else {
        CandleKernels.name_static()
    }
}

/// `CudaKernels`, or an error saying the build lacks the `cudnn` feature.
fn cudnn_kernels() -> Result<Arc<dyn Kernels>> {
    #[cfg(feature = "cudnn")]
    {
        Ok(Arc::new(CudaKernels))
    }
    #[cfg(not(feature = "cudnn"))]
    {
        Err(crate::Error::param(
            KERNELS_ENV,
            "kernels 'cudnn' need a build with `--features cudnn`",
        ))
    }
}

/// Geometry of a 2-D convolution, as in `torch.nn.Conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvCfg {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Dilation in both directions.
    pub dilation: usize,
    /// Number of groups (the input channel count for a depthwise convolution).
    pub groups: usize,
}

impl Default for ConvCfg {
    fn default() -> Self {
        ConvCfg {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// Geometry of a 2-D pooling window, as in `torch.nn.MaxPool2d` / `AvgPool2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCfg {
    /// Window size in both directions.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Implicit padding on every side (negative infinity for max pooling, and excluded from
    /// nothing: average pooling counts padded zeros, as PyTorch's default
    /// `count_include_pad=True` does).
    pub padding: usize,
}

impl PoolCfg {
    /// Output spatial size for an input of size `n` (floor mode, as PyTorch's default).
    pub fn out_size(&self, n: usize) -> Option<usize> {
        let padded = n + 2 * self.padding;
        if padded < self.kernel || self.stride == 0 {
            None
        } else {
            Some((padded - self.kernel) / self.stride + 1)
        }
    }
}

/// Batch statistics returned by [`Kernels::batch_norm_train`].
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// Per-channel mean over (N, H, W), shape `(C,)`.
    pub mean: Tensor,
    /// Per-channel biased variance over (N, H, W), shape `(C,)`.
    pub var: Tensor,
}

/// The arithmetic of the products (convolutions and linear layers) in a forward pass, as
/// PyTorch's TF32 switch and bf16 autocast: inputs rounded to the format, products
/// accumulated in f32, outputs, BatchNorm statistics, losses and master weights in f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Full f32 products.
    #[default]
    F32,
    /// TF32 tensor-core products (10-bit mantissa inputs) where the device has them, as
    /// PyTorch does by default for cuDNN convolutions. CPUs have no TF32: there it is f32.
    Tf32,
    /// bf16 operands (8-bit mantissa, rounded to nearest even), f32 accumulation.
    Bf16,
}

impl Precision {
    /// Every precision, in the order the CLI lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

    /// The name used by `--precision`: `f32`, `tf32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses a `--precision` value.
    pub fn parse(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                crate::Error::param(
                    "precision",
                    format!("unknown precision '{s}': expected f32, tf32 or bf16"),
                )
            })
    }

    /// A product operand as this precision's multiplier sees it, still stored as f32.
    ///
    /// For bf16 the value is rounded to bf16 (nearest even). A bf16 x bf16 product is exact in
    /// f32 (8 + 8 significant bits), so an f32 product of rounded operands, accumulated in
    /// f32, is exactly what a bf16 unit with f32 accumulation computes: any f32 kernel gives
    /// bf16 arithmetic this way. The rounding passes gradients straight through, as
    /// autocast's casts do. F32 and TF32 (on devices without TF32) return the operand.
    pub fn operand(self, t: &Tensor) -> Result<Tensor> {
        match self {
            Precision::F32 | Precision::Tf32 => Ok(t.clone()),
            Precision::Bf16 => Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?),
        }
    }
}

/// Whether this machine's CPU kernels multiply bf16 natively (AVX512-BF16): there
/// `--precision bf16` runs the convolutions at the CPU's bf16 rate; elsewhere it computes the
/// same arithmetic with f32 products, no faster than f32.
pub fn native_bf16() -> bool {
    fast_bf16::available()
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The compute primitives every Temper layer is built from: the compute backend, and only
/// that.
///
/// All tensors are NCHW f32. Implementations must be differentiable with respect to `x` (and
/// to weights, when the caller passes weights that track gradients).
///
/// Every operation has a default that runs the reference, [`CandleKernels`], so a backend
/// writes only the operations it makes faster. Observing or changing what a layer computes
/// (recording activations, quantizing a layer's input) is not a backend's job: that is a
/// [`LayerHook`](crate::hooks::LayerHook), installed beside the kernels, which sees every
/// layer by its parameter name. So no wrapper around kernels is needed and none can drop the
/// kernels it wraps.
///
/// Products (convolution, linear) take the [`Precision`] of the forward pass; every other
/// operation runs in f32.
pub trait Kernels: Send + Sync + std::fmt::Debug {
    /// A short name for logs and `temper info`.
    fn name(&self) -> &str;

    /// 2-D convolution, `weight` of shape `(out, in / groups, kh, kw)`.
    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
        precision: Precision,
    ) -> Result<Tensor> {
        CandleKernels.conv2d(x, weight, bias, cfg, precision)
    }

    /// Fully connected layer: `x @ weight.T + bias`, `weight` of shape `(out, in)`.
    fn linear(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Tensor> {
        CandleKernels.linear(x, weight, bias, precision)
    }

    /// BatchNorm in training mode: normalises with the batch's own statistics and returns
    /// them so the layer can update its running buffers.
    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        CandleKernels.batch_norm_train(x, gamma, beta, eps)
    }

    /// `relu(batch_norm_train(..))` with the batch statistics: the pair every pre-activation
    /// block runs in training, which a backend may fuse into one pass each way. By default
    /// the two operations of `self`.
    fn batch_norm_train_relu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        let (y, stats) = self.batch_norm_train(x, gamma, beta, eps)?;
        Ok((self.relu(&y)?, stats))
    }

    /// BatchNorm in evaluation mode, with the running statistics.
    fn batch_norm_eval(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        CandleKernels.batch_norm_eval(x, mean, var, gamma, beta, eps)
    }

    /// `relu(batch_norm_eval(..))`: the pair every pre-activation block runs, which a
    /// backend may fuse into one pass each way. By default the two operations of `self`.
    fn batch_norm_eval_relu(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.relu(&self.batch_norm_eval(x, mean, var, gamma, beta, eps)?)
    }

    /// Max pooling. Gradients go to the first maximal element of each window (PyTorch's
    /// rule), for any kernel, stride, padding and input size.
    fn max_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        CandleKernels.max_pool2d(x, cfg)
    }

    /// `max(x, 0)`, element-wise, any shape.
    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        CandleKernels.relu(x)
    }

    /// `min(max(x, 0), 6)`, element-wise, any shape.
    fn relu6(&self, x: &Tensor) -> Result<Tensor> {
        CandleKernels.relu6(x)
    }

    /// Average pooling (padding counted, as PyTorch's default).
    fn avg_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        CandleKernels.avg_pool2d(x, cfg)
    }

    /// Adaptive average pooling to `(oh, ow)`, with PyTorch's bin boundaries.
    fn adaptive_avg_pool2d(&self, x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
        CandleKernels.adaptive_avg_pool2d(x, oh, ow)
    }
}

/// Kernels that change a few operations of other kernels and pass every other one through,
/// for what is neither a backend nor a layer hook (a per-operation timer, HERO's frozen
/// activation masks). Every method defaults to the wrapped kernels, so a wrapper cannot drop
/// them; wrap it in [`Wrapped`] to use it as [`Kernels`].
pub trait KernelsWrapper: Send + Sync + std::fmt::Debug {
    /// The kernels every operation not overridden runs on.
    fn inner(&self) -> &dyn Kernels;

    /// A short name for logs; the wrapped kernels' name by default.
    fn name(&self) -> &str {
        self.inner().name()
    }

    /// See [`Kernels::conv2d`].
    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
        precision: Precision,
    ) -> Result<Tensor> {
        self.inner().conv2d(x, weight, bias, cfg, precision)
    }

    /// See [`Kernels::linear`].
    fn linear(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Tensor> {
        self.inner().linear(x, weight, bias, precision)
    }

    /// See [`Kernels::batch_norm_train`].
    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        self.inner().batch_norm_train(x, gamma, beta, eps)
    }

    /// See [`Kernels::batch_norm_train_relu`]: this wrapper's own `batch_norm_train` and
    /// `relu`, so a wrapper that changes either sees the pair.
    fn batch_norm_train_relu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        let (y, stats) = self.batch_norm_train(x, gamma, beta, eps)?;
        Ok((self.relu(&y)?, stats))
    }

    /// See [`Kernels::batch_norm_eval`].
    fn batch_norm_eval(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.inner().batch_norm_eval(x, mean, var, gamma, beta, eps)
    }

    /// See [`Kernels::batch_norm_eval_relu`]: this wrapper's own `batch_norm_eval` and
    /// `relu`, so a wrapper that changes either (HERO's frozen masks, a timer) sees the pair.
    fn batch_norm_eval_relu(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.relu(&self.batch_norm_eval(x, mean, var, gamma, beta, eps)?)
    }

    /// See [`Kernels::max_pool2d`].
    fn max_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        self.inner().max_pool2d(x, cfg)
    }

    /// See [`Kernels::relu`].
    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        self.inner().relu(x)
    }

    /// See [`Kernels::relu6`].
    fn relu6(&self, x: &Tensor) -> Result<Tensor> {
        self.inner().relu6(x)
    }

    /// See [`Kernels::avg_pool2d`].
    fn avg_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        self.inner().avg_pool2d(x, cfg)
    }

    /// See [`Kernels::adaptive_avg_pool2d`].
    fn adaptive_avg_pool2d(&self, x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
        self.inner().adaptive_avg_pool2d(x, oh, ow)
    }
}

/// A [`KernelsWrapper`] as [`Kernels`].
#[derive(Debug)]
pub struct Wrapped<W>(pub W);

impl<W> std::ops::Deref for Wrapped<W> {
    type Target = W;
    fn deref(&self) -> &W {
        &self.0
    }
}

impl<W: KernelsWrapper> Kernels for Wrapped<W> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
        precision: Precision,
    ) -> Result<Tensor> {
        self.0.conv2d(x, weight, bias, cfg, precision)
    }
    fn linear(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Tensor> {
        self.0.linear(x, weight, bias, precision)
    }
    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        self.0.batch_norm_train(x, gamma, beta, eps)
    }
    fn batch_norm_train_relu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        self.0.batch_norm_train_relu(x, gamma, beta, eps)
    }
    fn batch_norm_eval(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.0.batch_norm_eval(x, mean, var, gamma, beta, eps)
    }
    fn batch_norm_eval_relu(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.0.batch_norm_eval_relu(x, mean, var, gamma, beta, eps)
    }
    fn max_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        self.0.max_pool2d(x, cfg)
    }
    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        self.0.relu(x)
    }
    fn relu6(&self, x: &Tensor) -> Result<Tensor> {
        self.0.relu6(x)
    }
    fn avg_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        self.0.avg_pool2d(x, cfg)
    }
    fn adaptive_avg_pool2d(&self, x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
        self.0.adaptive_avg_pool2d(x, oh, ow)
    }
}

/// `y + bias` with `bias` of shape `(C,)` broadcast over an NCHW `y`: a convolution's bias.
fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?),
        None => Ok(y),
    }
}

/// Reference kernels written with candle's differentiable operations; correct on every
/// device.
///
/// candle's own pooling backward is wrong when the input size is not a multiple of the
/// kernel and fails when kernel != stride, so pooling here is built from strided views
/// instead, whose gradients candle computes exactly.
#[derive(Debug, Default, Clone, Copy)]
pub struct CandleKernels;

/// Pads `x` (N, C, H, W) on the spatial dims with `value`: `before` rows/cols in front and
/// `after` behind.
fn pad_value(x: &Tensor, before: usize, after: usize, value: f32) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    let dev = x.device();
    let mut parts = Vec::new();
    let row = |k: usize, w: usize| Tensor::full(value, (n, c, k, w), dev).map(|t| t.to_dtype(x.dtype()));
    if before > 0 {
        parts.push(row(before, w)??);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(row(after, w)??);
    }
    let x = Tensor::cat(&parts, 2)?;
    let h2 = h + before + after;
    let mut parts = Vec::new();
    let col = |k: usize| Tensor::full(value, (n, c, h2, k), dev).map(|t| t.to_dtype(x.dtype()));
    if before > 0 {
        parts.push(col(before)??);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(col(after)??);
    }
    Ok(Tensor::cat(&parts, 3)?)
}

/// The `(oh, ow)` strided views of a padded input, one per window offset `(i, j)`, in
/// row-major order. View `(i, j)` holds element `x[.., i + s*r, j + s*c]` at `(r, c)`.
fn window_views(x: &Tensor, cfg: PoolCfg, fill: f32) -> Result<(Vec<Tensor>, usize, usize)> {
    let (_, _, h, w) = x.dims4()?;
    let oh = cfg.out_size(h).ok_or_else(|| {
        crate::Error::param(
            "pool kernel",
            format!("window {} larger than padded input {h}", cfg.kernel),
        )
    })?;
    let ow = cfg.out_size(w).ok_or_else(|| {
        crate::Error::param(
            "pool kernel",
            format!("window {} larger than padded input {w}", cfg.kernel),
        )
    })?;
    let s = cfg.stride;
    // Pad enough behind so that every view can be reshaped to (oh, s) x (ow, s).
    let need_h = (cfg.kernel - 1) + oh * s;
    let need_w = (cfg.kernel - 1) + ow * s;
    let hp = h + 2 * cfg.padding;
    let wp = w + 2 * cfg.padding;
    let extra = need_h.saturating_sub(hp).max(need_w.saturating_sub(wp));
    let xp = pad_value(x, cfg.padding, cfg.padding + extra, fill)?;
    let (n, c, _, _) = xp.dims4()?;
    let mut views = Vec::with_capacity(cfg.kernel * cfg.kernel);
    for i in 0..cfg.kernel {
        let rows = xp.narrow(2, i, oh * s)?;
        let rows = if s > 1 {
            let wp2 = rows.dim(3)?;
            rows.reshape((n, c, oh, s, wp2))?.narrow(3, 0, 1)?.squeeze(3)?
        } else {
            rows
        };
        for j in 0..cfg.kernel {
            let v = rows.narrow(3, j, ow * s)?;
            let v = if s > 1 {
                v.reshape((n, c, oh, ow, s))?.narrow(4, 0, 1)?.squeeze(4)?
            } else {
                v
            };
            views.push(v);
        }
    }
    Ok((views, oh, ow))
}

impl CandleKernels {
    /// The name [`Kernels::name`] returns, without a value at hand.
    pub const fn name_static(&self) -> &'static str {
        "candle-reference"
    }
}

impl Kernels for CandleKernels {
    fn name(&self) -> &str {
        self.name_static()
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
        precision: Precision,
    ) -> Result<Tensor> {
        let (x, weight) = (precision.operand(x)?, precision.operand(weight)?);
        let y = x.conv2d(&weight, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)?;
        add_channel_bias(y, bias)
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Tensor> {
        let (x, weight) = (precision.operand(x)?, precision.operand(weight)?);
        let y = x.matmul(&weight.t()?)?;
        match bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }

    fn batch_norm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, BatchStats)> {
        let c = x.dim(1)?;
        let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered
            .sqr()?
            .mean_keepdim(0)?
            .mean_keepdim(2)?
            .mean_keepdim(3)?;
        let scale = (var.clone() + eps)?.sqrt()?.recip()?;
        let y = centered
            .broadcast_mul(&scale)?
            .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
            .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
        Ok((
            y,
            BatchStats {
                mean: mean.flatten_all()?,
                var: var.flatten_all()?,
            },
        ))
    }

    fn batch_norm_eval(
        &self,
        x: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let c = x.dim(1)?;
        // Fold into one scale and shift per channel: two broadcast ops over the activation.
        let scale = ((var + eps)?.sqrt()?.recip()? * gamma)?;
        let shift = (beta - (mean * &scale)?)?;
        Ok(x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.relu()?)
    }

    fn relu6(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clamp(0f32, 6f32)?)
    }

    fn max_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        if cfg.padding * 2 > cfg.kernel {
            return Err(crate::Error::param(
                "max pool padding",
                format!(
                    "padding {} must be at most half the kernel {}",
                    cfg.padding, cfg.kernel
                ),
            ));
        }
        // Padding uses the lowest finite value so that the mask products below never meet
        // an infinity (0 * inf = NaN); PyTorch requires every window to hold a real element.
        let (views, _, _) = window_views(x, cfg, f32::MIN)?;
        let detached: Vec<Tensor> = views.iter().map(|v| v.detach()).collect();
        let mut max = detached[0].clone();
        for v in &detached[1..] {
            max = max.maximum(v)?;
        }
        // Route the gradient to the first maximal element of each window: view k gets mask 1
        // where it equals the max and no earlier view did. The output is then an exact sum of
        // one selected value per position.
        let mut taken = max.zeros_like()?.to_dtype(DType::U8)?;
        let mut out: Option<Tensor> = None;
        for (v, d) in views.iter().zip(&detached) {
            let hit = d.eq(&max)?;
            let first = hit.gt(&taken)?;
            taken = taken.maximum(&hit)?;
            let term = v.broadcast_mul(&first.to_dtype(v.dtype())?)?;
            out = Some(match out {
                None => term,
                Some(o) => (o + term)?,
            });
        }
        Ok(out.unwrap_or(max))
    }

    fn avg_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if cfg.padding == 0 && cfg.kernel == h && cfg.kernel == w {
            return Ok(x.mean_keepdim(2)?.mean_keepdim(3)?);
        }
        let (views, _, _) = window_views(x, cfg, 0.0)?;
        let k2 = (cfg.kernel * cfg.kernel) as f64;
        let mut sum = views[0].clone();
        for v in &views[1..] {
            sum = (sum + v)?;
        }
        Ok((sum / k2)?)
    }

    fn adaptive_avg_pool2d(&self, x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if oh == 1 && ow == 1 {
            return Ok(x.mean_keepdim(2)?.mean_keepdim(3)?);
        }
        if h == 1 && w == 1 {
            return Ok(x.broadcast_as((n, c, oh, ow))?.contiguous()?);
        }
        if h % oh == 0 && w % ow == 0 {
            let (kh, kw) = (h / oh, w / ow);
            return Ok(x.reshape((n, c, oh, kh, ow, kw))?.mean(D::Minus1)?.mean(3)?);
        }
        // General case: PyTorch's bins [floor(i*h/oh), ceil((i+1)*h/oh)).
        let bins = |i: usize, o: usize, n: usize| (i * n / o, ((i + 1) * n).div_ceil(o));
        let mut rows = Vec::with_capacity(oh);
        for i in 0..oh {
            let (h0, h1) = bins(i, oh, h);
            let band = x.narrow(2, h0, h1 - h0)?.mean_keepdim(2)?;
            let mut cols = Vec::with_capacity(ow);
            for j in 0..ow {
                let (w0, w1) = bins(j, ow, w);
                cols.push(band.narrow(3, w0, w1 - w0)?.mean_keepdim(3)?);
            }
            rows.push(Tensor::cat(&cols, 3)?);
        }
        Ok(Tensor::cat(&rows, 2)?)
    }
}
