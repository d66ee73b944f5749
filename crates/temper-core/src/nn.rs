//! Layers with PyTorch semantics and PyTorch `state_dict` names.
//!
//! Every layer takes the forward [`Ctx`], which carries the mode (train or eval), whether
//! parameters need gradients, and the [`Kernels`](crate::kernels::Kernels) that do the
//! compute. Layers own nothing but their [`Var`]s (shared with the model's
//! [`ParamStore`](crate::ParamStore)) and their geometry.

use crate::hooks::{self, LayerCall, LayerKind};
use crate::kernels::{BatchStats, ConvCfg, PoolCfg};
use crate::store::{Builder, Init, Role};
use crate::summary::{self, LayerRecord};
use crate::{Ctx, Mode, Result};
use candle_core::{Tensor, Var};
use rand::Rng as _;

fn shape_wo_batch(t: &Tensor) -> Vec<usize> {
    t.dims().iter().skip(1).copied().collect()
}

/// A parameter as the forward pass should see it: tracked when parameter gradients are
/// wanted, detached otherwise (attacks need input gradients only).
fn param(v: &Var, ctx: &Ctx<'_>) -> Tensor {
    if ctx.param_grads {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

/// `torch.nn.Conv2d`: weight `(out, in / groups, k, k)` and an optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    name: String,
    weight: Var,
    bias: Option<Var>,
    cfg: ConvCfg,
    kernel: usize,
}

impl Conv2d {
    /// Creates the layer under `b`'s prefix with PyTorch's default initialisation
    /// (uniform in ±1/sqrt(fan_in)).
    pub fn new(
        b: &Builder,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        cfg: ConvCfg,
        bias: bool,
    ) -> Result<Self> {
        if cfg.groups == 0 || !in_ch.is_multiple_of(cfg.groups) || !out_ch.is_multiple_of(cfg.groups) {
            return Err(crate::Error::param(
                b.path("groups"),
                format!("{} groups do not divide {in_ch} -> {out_ch} channels", cfg.groups),
            ));
        }
        let fan_in = (in_ch / cfg.groups) * kernel * kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = b.param(
            "weight",
            &[out_ch, in_ch / cfg.groups, kernel, kernel],
            Init::Uniform(bound),
            Role::Weight,
        )?;
        let bias = if bias {
            Some(b.param("bias", &[out_ch], Init::Uniform(bound), Role::NoDecay)?)
        } else {
            None
        };
        Ok(Conv2d {
            name: b.prefix().to_string(),
            weight,
            bias,
            cfg,
            kernel,
        })
    }

    /// The weight variable.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// The convolution geometry.
    pub fn cfg(&self) -> ConvCfg {
        self.cfg
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let w = param(&self.weight, ctx);
        let b = self.bias.as_ref().map(|b| param(b, ctx));
        let call = LayerCall {
            name: &self.name,
            kind: LayerKind::Conv(self.cfg),
            weight_shape: self.weight.dims(),
            has_bias: b.is_some(),
        };
        let xin = hooks::apply_input(ctx.hooks, &call, x)?;
        let w = hooks::apply_weight(ctx.hooks, &call, &w)?;
        let y = ctx
            .kernels
            .conv2d(&xin, &w, b.as_ref(), self.cfg, ctx.precision)?;
        hooks::apply_output(ctx.hooks, &call, x, &y)?;
        if summary::is_tracing() {
            let (out_ch, in_per_group, _, _) = self.weight.dims4()?;
            let (_, _, oh, ow) = y.dims4()?;
            let params = self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count());
            summary::record(LayerRecord {
                name: self.name.clone(),
                kind: format!(
                    "Conv2d {k}x{k} s{s} {i}->{o}{g}",
                    k = self.kernel,
                    s = self.cfg.stride,
                    i = in_per_group * self.cfg.groups,
                    o = out_ch,
                    g = if self.cfg.groups > 1 {
                        format!(" g{}", self.cfg.groups)
                    } else {
                        String::new()
                    }
                ),
                output: shape_wo_batch(&y),
                params,
                macs: (out_ch * oh * ow * in_per_group * self.kernel * self.kernel) as u64,
            });
        }
        Ok(y)
    }
}

/// `torch.nn.Linear`: weight `(out, in)` and an optional bias.
#[derive(Debug, Clone)]
pub struct Linear {
    name: String,
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// Creates the layer with PyTorch's default initialisation.
    pub fn new(b: &Builder, in_f: usize, out_f: usize, bias: bool) -> Result<Self> {
        let bound = 1.0 / (in_f as f64).sqrt();
        let weight = b.param("weight", &[out_f, in_f], Init::Uniform(bound), Role::Weight)?;
        let bias = if bias {
            Some(b.param("bias", &[out_f], Init::Uniform(bound), Role::NoDecay)?)
        } else {
            None
        };
        Ok(Linear {
            name: b.prefix().to_string(),
            weight,
            bias,
        })
    }

    /// Applies the layer to `(N, in)` input.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let w = param(&self.weight, ctx);
        let b = self.bias.as_ref().map(|b| param(b, ctx));
        let call = LayerCall {
            name: &self.name,
            kind: LayerKind::Linear,
            weight_shape: self.weight.dims(),
            has_bias: b.is_some(),
        };
        let xin = hooks::apply_input(ctx.hooks, &call, x)?;
        let w = hooks::apply_weight(ctx.hooks, &call, &w)?;
        let y = ctx.kernels.linear(&xin, &w, b.as_ref(), ctx.precision)?;
        hooks::apply_output(ctx.hooks, &call, x, &y)?;
        if summary::is_tracing() {
            let (o, i) = self.weight.dims2()?;
            summary::record(LayerRecord {
                name: self.name.clone(),
                kind: format!("Linear {i}->{o}"),
                output: shape_wo_batch(&y),
                params: self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count()),
                macs: (o * i) as u64,
            });
        }
        Ok(y)
    }
}

/// `torch.nn.BatchNorm2d` with momentum 0.1 and eps 1e-5.
///
/// `weight`/`bias` are trainable and excluded from weight decay; `running_mean`,
/// `running_var` and `num_batches_tracked` are buffers. Train mode normalises with batch
/// statistics and updates the buffers (running variance with the unbiased estimate, as
/// PyTorch does); eval mode uses the buffers.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    name: String,
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// PyTorch's default epsilon.
    pub const EPS: f64 = 1e-5;
    /// PyTorch's default momentum.
    pub const MOMENTUM: f64 = 0.1;

    /// Creates the layer for `c` channels.
    pub fn new(b: &Builder, c: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            name: b.prefix().to_string(),
            weight: b.param("weight", &[c], Init::Const(1.0), Role::NoDecay)?,
            bias: b.param("bias", &[c], Init::Const(0.0), Role::NoDecay)?,
            running_mean: b.buffer("running_mean", &[c], Init::Const(0.0))?,
            running_var: b.buffer("running_var", &[c], Init::Const(1.0))?,
            num_batches_tracked: b.counter("num_batches_tracked")?,
            eps: Self::EPS,
            momentum: Self::MOMENTUM,
        })
    }

    /// Applies the layer in the context's mode.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let gamma = param(&self.weight, ctx);
        let beta = param(&self.bias, ctx);
        let call = LayerCall {
            name: &self.name,
            kind: LayerKind::BatchNorm,
            weight_shape: self.weight.dims(),
            has_bias: true,
        };
        let x_arrived = x;
        let xin = hooks::apply_input(ctx.hooks, &call, x)?;
        let x = xin.as_ref();
        let y = match ctx.mode {
            Mode::Train => {
                let (y, stats) = ctx.kernels.batch_norm_train(x, &gamma, &beta, self.eps)?;
                self.update_running(x, stats)?;
                y
            }
            Mode::Eval => ctx.kernels.batch_norm_eval(
                x,
                &self.running_mean.as_tensor().detach(),
                &self.running_var.as_tensor().detach(),
                &gamma,
                &beta,
                self.eps,
            )?,
        };
        hooks::apply_output(ctx.hooks, &call, x_arrived, &y)?;
        if summary::is_tracing() {
            summary::record(LayerRecord {
                name: self.name.clone(),
                kind: format!("BatchNorm2d {}", self.weight.elem_count()),
                output: shape_wo_batch(&y),
                params: 2 * self.weight.elem_count(),
                macs: 0,
            });
        }
        Ok(y)
    }

    /// Folds a training batch's statistics into the running buffers (PyTorch's momentum
    /// update, with the unbiased variance) and counts the batch.
    fn update_running(&self, x: &Tensor, stats: BatchStats) -> Result<()> {
        let (n, _, h, w) = x.dims4()?;
        let count = (n * h * w) as f64;
        if count <= 1.0 {
            return Err(crate::Error::BadInput {
                model: self.name.clone(),
                reason: "BatchNorm in train mode needs more than one value per channel".into(),
            });
        }
        let m = self.momentum;
        let mean = stats.mean.detach();
        let unbiased = (stats.var.detach() * (count / (count - 1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        let nbt = (self.num_batches_tracked.as_tensor() + 1.0)?;
        self.num_batches_tracked.set(&nbt)?;
        Ok(())
    }

    /// `relu(self.forward(x))`: with no layer hooks and no summary being traced, one fused
    /// kernel call (`Kernels::batch_norm_train_relu` or `batch_norm_eval_relu`); otherwise
    /// the two calls, so hooks see the BatchNorm's output as they always do.
    pub fn forward_relu(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        if !ctx.hooks.is_empty() || summary::is_tracing() {
            return relu(&self.forward(x, ctx)?, ctx);
        }
        let (gamma, beta) = (param(&self.weight, ctx), param(&self.bias, ctx));
        match ctx.mode {
            Mode::Train => {
                let (y, stats) = ctx.kernels.batch_norm_train_relu(x, &gamma, &beta, self.eps)?;
                self.update_running(x, stats)?;
                Ok(y)
            }
            Mode::Eval => ctx.kernels.batch_norm_eval_relu(
                x,
                &self.running_mean.as_tensor().detach(),
                &self.running_var.as_tensor().detach(),
                &gamma,
                &beta,
                self.eps,
            ),
        }
    }
}

/// Max pooling with PyTorch's semantics.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize, ctx: &Ctx<'_>) -> Result<Tensor> {
    ctx.kernels.max_pool2d(
        x,
        PoolCfg {
            kernel,
            stride,
            padding,
        },
    )
}

/// Average pooling with PyTorch's semantics (padding counted).
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize, ctx: &Ctx<'_>) -> Result<Tensor> {
    ctx.kernels.avg_pool2d(
        x,
        PoolCfg {
            kernel,
            stride,
            padding,
        },
    )
}

/// Mean over the spatial dimensions, `(N, C, H, W) -> (N, C)`.
pub fn global_avg_pool(x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
    Ok(ctx.kernels.adaptive_avg_pool2d(x, 1, 1)?.flatten_from(1)?)
}

/// `torch.nn.ReLU`, through the context's kernels.
pub fn relu(x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
    ctx.kernels.relu(x)
}

/// `torch.nn.ReLU6`, through the context's kernels.
pub fn relu6(x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
    ctx.kernels.relu6(x)
}

/// Inverted dropout with PyTorch's semantics: in train mode each element is zeroed with
/// probability `p` and the rest scaled by `1 / (1 - p)`; in eval mode it is the identity.
/// Masks come from the context's seeded generator.
pub fn dropout(x: &Tensor, p: f64, ctx: &Ctx<'_>) -> Result<Tensor> {
    if ctx.mode == Mode::Eval || p == 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let keep = 1.0 - p;
    let mask: Vec<f32> = {
        let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
        (0..n)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect()
    };
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    Ok((x * mask)?)
}
