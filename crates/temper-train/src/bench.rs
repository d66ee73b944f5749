//! Whole-model workloads for speed and device checks: the four workloads of the steps
//! benchmark (forward, PGD step, training step, one PGD-10 adversarial-training iteration)
//! on any device and precision, the PyTorch reference of the same workloads run beside
//! them, and the parity of a model's logits and gradients on a device against the CPU.
//!
//! Used by `cargo xtask bench steps` (the `bench_steps` example, CPU) and by
//! `temper gpu-check` (a GPU, against PyTorch on the same GPU).

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use temper_attacks::{Attack, Goal, PgdParams};
use temper_core::kernels::{Kernels, Precision};
use temper_core::{Classifier, ForwardOpts, Mode, Network};
use temper_models::{build, build_zeroed, ModelConfig, ModelKind, ValidModelConfig};
use temper_sched::OptimizerConfig;

/// The workloads, in the order [`bench_model`] and [`TorchReference::run`] return them:
/// forward in eval mode; one PGD step (input gradient only, eval mode, parameters
/// detached); one training step (train-mode forward, backward, SGD update); one PGD-10
/// adversarial-training iteration (ten PGD steps, then a training step on the result).
pub const WORKLOADS: [&str; 4] = ["forward", "pgd_step", "train_step", "pgd10_at_iter"];

/// Images per second of each of [`WORKLOADS`].
pub type Throughput = [f64; 4];

const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

/// Shortest timed run, in seconds: a workload faster than this (small-cnn's forward at batch
/// 128 takes about a millisecond) is repeated within each run until the run lasts about this
/// long, so that one run is not one timer-sized sample of thread wake-ups and page faults.
/// `bench_steps.py` uses the same rule.
pub const MIN_RUN_SECS: f64 = 0.2;

/// The median of `reps` (at least 1) timed runs of `f` after two warm-up calls, in seconds per
/// call of `f`. Each run calls `f` the same number of times, as many as make one run last
/// about [`MIN_RUN_SECS`] by the second warm-up call's time (at least once), and ends with
/// `device.synchronize()`, so queued GPU work is timed, not only its launch.
pub fn median_secs(device: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    device.synchronize()?;
    // A second warm-up call, timed: the first also pays for first-touch allocations.
    let start = Instant::now();
    f()?;
    device.synchronize()?;
    let calls = calls_per_run(start.elapsed().as_secs_f64());
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        device.synchronize()?;
        t.push(start.elapsed().as_secs_f64() / calls as f64);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Calls of a workload whose one call took `secs` that make a run of about
/// [`MIN_RUN_SECS`]: at least 1, at most 1,000.
fn calls_per_run(secs: f64) -> usize {
    if secs > 0.0 && secs.is_finite() {
        ((MIN_RUN_SECS / secs).ceil() as usize).clamp(1, 1000)
    } else {
        1000
    }
}

/// One L-inf PGD step as every attack runs it (eps 8/255, step 2/255): eval mode,
/// parameters detached, the gradient of the summed cross-entropy with respect to the input,
/// a signed step, the projection.
pub fn pgd_step(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let v = Var::from_tensor(x)?;
    let logits = model.forward_opts(v.as_tensor(), EVAL)?;
    let grads = temper_core::loss::cross_entropy(&logits, y)?
        .sum_all()?
        .backward()?;
    let g = grads
        .get(v.as_tensor())
        .ok_or_else(|| crate::error::param("bench", "the model gave no input gradient"))?;
    let adv = (v.as_tensor() + (g.sign()? * (2.0 / 255.0))?)?;
    let delta = (adv - x)?.clamp(-8.0f32 / 255.0, 8.0f32 / 255.0)?;
    Ok((x + delta)?.clamp(0f32, 1f32)?)
}

/// One training step: train-mode forward, mean cross-entropy, backward, optimizer update;
/// the model is left in eval mode.
pub fn train_step(
    model: &Network,
    optim: &mut dyn temper_sched::Optimizer,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    model.set_mode(Mode::Train);
    let loss = temper_core::loss::cross_entropy_mean(&model.forward(x)?, y)?;
    let grads = loss.backward()?;
    optim.step(model.params(), &grads, 0.01)?;
    model.set_mode(Mode::Eval);
    Ok(())
}

/// The benchmark's configuration of a model: 10 classes, and CIFAR-sized 32x32 inputs for
/// MobileNet-V2 (the zoo's default is 224).
pub fn bench_config(kind: ModelKind) -> Result<ValidModelConfig> {
    let mut cfg = ModelConfig::new(kind, 10);
    if kind == ModelKind::MobileNetV2 {
        cfg.input_size = (32, 32);
    }
    Ok(cfg.check()?)
}

/// A batch of random images in `[0, 1]` and labels for `model`, drawn on the CPU from
/// `stream` (so every device gets the same batch) and moved to `device`.
pub fn random_batch(
    model: &dyn Classifier,
    batch: usize,
    device: &Device,
    stream: &str,
) -> Result<(Tensor, Tensor)> {
    let mut rng = temper_core::seed::rng(stream);
    let [c, h, w] = model.input_shape();
    let classes = model.num_classes();
    let x: Vec<f32> = (0..batch * c * h * w).map(|_| rng.random::<f32>()).collect();
    let y: Vec<u32> = (0..batch).map(|_| rng.random_range(0..classes as u32)).collect();
    Ok((
        Tensor::from_vec(x, (batch, c, h, w), &Device::Cpu)?.to_device(device)?,
        Tensor::from_vec(y, batch, &Device::Cpu)?.to_device(device)?,
    ))
}

/// Images per second of [`WORKLOADS`] for `kind` at `batch` on `device` with `precision`,
/// each the median of `reps` runs of [`median_secs`]. SGD with momentum 0.9 and weight
/// decay 5e-4 (the optimizer's defaults) for the training steps.
pub fn bench_model(
    kind: ModelKind,
    batch: usize,
    reps: usize,
    device: &Device,
    precision: Precision,
) -> Result<Throughput> {
    let model = build(&bench_config(kind)?, device)?;
    model.set_precision(precision);
    let (x, y) = random_batch(&model, batch, device, "bench")?;
    let mut rng = temper_core::seed::rng("bench/pgd");
    let mut optim = OptimizerConfig::default().build()?;
    let fwd = median_secs(device, reps, || {
        model.forward_opts(&x, EVAL)?;
        Ok(())
    })?;
    let pgd = median_secs(device, reps, || {
        pgd_step(&model, &x, &y)?;
        Ok(())
    })?;
    let train = median_secs(device, reps, || train_step(&model, optim.as_mut(), &x, &y))?;
    let pgd10 = PgdParams {
        eps: 8.0 / 255.0,
        alpha: 2.0 / 255.0,
        steps: 10,
        ..PgdParams::default()
    }
    .check()?;
    let at = median_secs(device, reps, || {
        let out = pgd10.perturb(&model, &x, &y, Goal::Untargeted, &mut rng)?;
        train_step(&model, optim.as_mut(), &out.adv, &y)
    })?;
    let ips = |s: f64| batch as f64 / s;
    Ok([ips(fwd), ips(pgd), ips(train), ips(at)])
}

/// The PyTorch side of the benchmark: `bench_steps.py` (beside the `bench_steps` example of
/// this crate), run by `python`.
#[derive(Debug, Clone)]
pub struct TorchReference {
    /// The Python interpreter.
    pub python: String,
    /// The script.
    pub script: PathBuf,
}

impl TorchReference {
    /// The script of this source tree, run by `$TEMPER_PYTHON` or `python3`.
    pub fn from_source_tree() -> Self {
        TorchReference {
            python: std::env::var("TEMPER_PYTHON").unwrap_or_else(|_| "python3".into()),
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/bench_steps.py"),
        }
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Reference {
            script: self.script.clone(),
            reason: reason.into(),
        }
    }

    /// Images per second of [`WORKLOADS`] in PyTorch for the same model, batch, thread count,
    /// device (`cpu`, `cuda`) and precision (fp32 with TF32 off, TF32, bf16 autocast with
    /// channels-last), or `None` with a message on stderr when Python or torch is missing.
    pub fn run(
        &self,
        model: ModelKind,
        batch: usize,
        threads: usize,
        reps: usize,
        device: &str,
        precision: Precision,
    ) -> Result<Option<Throughput>> {
        let out = match std::process::Command::new(&self.python)
            .arg(&self.script)
            .args([
                model.name(),
                &batch.to_string(),
                &threads.to_string(),
                &reps.to_string(),
            ])
            .args(["--device", device, "--precision", precision.name()])
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("PyTorch skipped: cannot run {}: {e}", self.python);
                return Ok(None);
            }
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No module named 'torch'") {
                eprintln!(
                    "PyTorch skipped: {} has no torch (set TEMPER_PYTHON)",
                    self.python
                );
                return Ok(None);
            }
            return Err(self.err(format!("failed for {}: {err}", model.name())));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| self.err(format!("printed no JSON: {e}")))?;
        let mut r = [0f64; 4];
        for (i, k) in WORKLOADS.iter().enumerate() {
            r[i] = v[k]
                .as_f64()
                .ok_or_else(|| self.err(format!("its JSON lacks {k}")))?;
        }
        Ok(Some(r))
    }
}

/// The largest tolerated difference of a whole model's logits and gradients on a device
/// from the CPU's: 1e-4 relative in f32, 1e-2 in TF32, 5e-2 in bf16 (a GPU computing in bf16
/// also rounds activations and output gradients to bf16 at every convolution, which the
/// CPU's exact bf16 products do not).
pub fn model_tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => 1e-4,
        Precision::Tf32 => 1e-2,
        Precision::Bf16 => 5e-2,
    }
}

/// One model compared on a device against the CPU, in one mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelParity {
    /// The model.
    pub model: String,
    /// Eval (running statistics) or train (batch statistics) mode.
    pub mode: String,
    /// The precision of products on both devices.
    pub precision: Precision,
    /// The batch size.
    pub batch: usize,
    /// Relative difference of the logits (largest absolute difference over the CPU's largest
    /// magnitude).
    pub logits: f32,
    /// Relative difference of the gradient of the mean cross-entropy with respect to the
    /// input.
    pub input_grad: f32,
    /// Relative difference of the gradient of the first convolution's weight (train mode).
    pub weight_grad: Option<f32>,
    /// [`model_tolerance`] of the precision.
    pub tolerance: f32,
    /// Whether every difference is within the tolerance.
    pub pass: bool,
}

/// Largest absolute difference relative to the reference's largest magnitude.
fn rel_error(got: &Tensor, want: &Tensor) -> Result<f32> {
    let max_abs = |t: &Tensor| -> Result<f32> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?)
    };
    let scale = max_abs(want)?;
    let diff = max_abs(&(got.to_device(&Device::Cpu)? - want.to_device(&Device::Cpu)?)?)?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// Logits, input gradient and (when `mode` is train) first-convolution weight gradient of
/// the mean cross-entropy.
fn forward_backward(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    mode: Mode,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let v = Var::from_tensor(x)?;
    let train = mode == Mode::Train;
    let logits = net.forward_opts(
        v.as_tensor(),
        ForwardOpts {
            mode,
            param_grads: train,
        },
    )?;
    let grads = temper_core::loss::cross_entropy_mean(&logits, y)?.backward()?;
    let missing = |what: &str| crate::error::param("model parity", format!("no gradient for {what}"));
    let dx = grads
        .get(v.as_tensor())
        .ok_or_else(|| missing("the input"))?
        .clone();
    let dw = if train {
        let first = net
            .params()
            .trainable()
            .find(|e| e.var.rank() == 4)
            .ok_or_else(|| missing("a convolution weight"))?;
        Some(
            grads
                .get(first.var.as_tensor())
                .ok_or_else(|| missing(&first.name))?
                .clone(),
        )
    } else {
        None
    };
    Ok((logits, dx, dw))
}

/// `kind` (the benchmark's configuration) with the same weights on `device` (with its
/// default kernels) and on the CPU with `reference` kernels, both at `precision`: logits,
/// input gradients and, in train mode, the first convolution's weight gradient, compared in
/// eval mode and then in train mode on one random batch.
pub fn model_parity(
    kind: ModelKind,
    device: &Device,
    reference: Arc<dyn Kernels>,
    precision: Precision,
    batch: usize,
) -> Result<Vec<ModelParity>> {
    let cfg = bench_config(kind)?;
    let cpu = build(&cfg, &Device::Cpu)?;
    cpu.set_kernels(reference);
    let dev = build_zeroed(&cfg, device)?;
    for (a, b) in cpu.params().entries().iter().zip(dev.params().entries()) {
        b.var.set(&a.var.as_tensor().to_device(device)?)?;
    }
    cpu.set_precision(precision);
    dev.set_precision(precision);
    let (x, y) = random_batch(&cpu, batch, &Device::Cpu, "model-parity")?;
    let (xd, yd) = (x.to_device(device)?, y.to_device(device)?);
    let tolerance = model_tolerance(precision);
    let mut rows = Vec::new();
    // Eval first: train mode updates the running statistics (on both sides alike).
    for mode in [Mode::Eval, Mode::Train] {
        let (l0, dx0, dw0) = forward_backward(&cpu, &x, &y, mode)?;
        let (l1, dx1, dw1) = forward_backward(&dev, &xd, &yd, mode)?;
        let logits = rel_error(&l1, &l0)?;
        let input_grad = rel_error(&dx1, &dx0)?;
        let weight_grad = match (dw1, dw0) {
            (Some(a), Some(b)) => Some(rel_error(&a, &b)?),
            _ => None,
        };
        let errs = [Some(logits), Some(input_grad), weight_grad];
        rows.push(ModelParity {
            model: kind.name().to_string(),
            mode: if mode == Mode::Train { "train" } else { "eval" }.to_string(),
            precision,
            batch,
            logits,
            input_grad,
            weight_grad,
            tolerance,
            pass: errs.iter().flatten().all(|e| e.is_finite() && *e <= tolerance),
        });
    }
    Ok(rows)
}
