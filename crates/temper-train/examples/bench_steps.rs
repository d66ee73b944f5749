//! The speed benchmark of issue 11: forward (eval), PGD step (input gradient only, eval
//! mode), training step (train-mode forward, backward, SGD update) and one PGD-10
//! adversarial-training iteration, for small-cnn, preact-resnet18 and mobilenet-v2, each
//! side by side with PyTorch on the same architecture, batch and thread count, run by the
//! same command (`bench_steps.py` beside this file; skipped with a message where torch is
//! absent).
//!
//! Every number is the median of `--reps` timed runs (at least 5) after one warm-up run.
//! Writes a Markdown table to stdout and `steps.json` into `--out` (default `target/bench`).
//!
//! `cargo run --release -p temper-train --example bench_steps -- [--quick] [--models a,b]
//!  [--batch N] [--reps N] [--out DIR]`

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::path::PathBuf;
use std::time::Instant;
use temper_attacks::{Attack, Goal, PgdParams};
use temper_core::{Classifier, ForwardOpts, Mode, Network};
use temper_models::{build, ModelConfig, ModelKind};
use temper_sched::OptimizerConfig;

/// The median of `reps` timed runs of `f` after one warm-up run, in seconds.
fn median_secs<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

/// One L-inf PGD step as every attack runs it: eval mode, parameters detached, the gradient
/// of the summed cross-entropy with respect to the input, a signed step, the projection.
fn pgd_step(model: &Network, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let v = Var::from_tensor(x)?;
    let logits = model.forward_opts(v.as_tensor(), EVAL)?;
    let grads = temper_core::loss::cross_entropy(&logits, y)?
        .sum_all()?
        .backward()?;
    let g = grads.get(v.as_tensor()).context("no input gradient")?;
    let adv = (v.as_tensor() + (g.sign()? * (2.0 / 255.0))?)?;
    let delta = (adv - x)?.clamp(-8.0f32 / 255.0, 8.0f32 / 255.0)?;
    Ok((x + delta)?.clamp(0f32, 1f32)?)
}

/// One training step: train-mode forward, mean cross-entropy, backward, SGD update
/// (momentum 0.9, weight decay 5e-4).
fn train_step(
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

struct Row {
    model: &'static str,
    batch: usize,
    /// Images per second: forward, PGD step, training step, PGD-10 AT iteration.
    temper: [f64; 4],
    torch: Option<[f64; 4]>,
}

const WORKLOADS: [&str; 4] = ["forward", "pgd_step", "train_step", "pgd10_at_iter"];

fn bench_model(kind: ModelKind, batch: usize, reps: usize) -> Result<[f64; 4]> {
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::new(kind, 10);
    if kind == ModelKind::MobileNetV2 {
        // The benchmark's setting: CIFAR-sized 32x32 inputs (the zoo's default is 224).
        cfg.input_size = (32, 32);
    }
    let model = build(&cfg.check()?, &dev)?;
    let [c, h, w] = model.input_shape();
    let mut rng = temper_core::seed::rng("bench");
    let x = Tensor::rand(0f32, 1f32, (batch, c, h, w), &dev)?;
    let y = (Tensor::rand(0f32, 10f32, batch, &dev)?.floor()?).to_dtype(DType::U32)?;
    let mut optim = OptimizerConfig::default().build()?;
    let fwd = median_secs(reps, || {
        model.forward_opts(&x, EVAL)?;
        Ok(())
    })?;
    let pgd = median_secs(reps, || {
        pgd_step(&model, &x, &y)?;
        Ok(())
    })?;
    let train = median_secs(reps, || train_step(&model, optim.as_mut(), &x, &y))?;
    let pgd10 = PgdParams {
        eps: 8.0 / 255.0,
        alpha: 2.0 / 255.0,
        steps: 10,
        ..PgdParams::default()
    }
    .check()?;
    let at = median_secs(reps, || {
        let out = pgd10.perturb(&model, &x, &y, Goal::Untargeted, &mut rng)?;
        train_step(&model, optim.as_mut(), &out.adv, &y)
    })?;
    let ips = |s: f64| batch as f64 / s;
    Ok([ips(fwd), ips(pgd), ips(train), ips(at)])
}

fn pytorch(model: &str, batch: usize, reps: usize) -> Result<Option<[f64; 4]>> {
    let py = std::env::var("TEMPER_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/bench_steps.py");
    let threads = candle_core::utils::get_num_threads().to_string();
    let out = match std::process::Command::new(&py)
        .arg(&script)
        .args([model, &batch.to_string(), &threads, &reps.to_string()])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("PyTorch skipped: cannot run {py}: {e}");
            return Ok(None);
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'torch'") {
            eprintln!("PyTorch skipped: {py} has no torch (set TEMPER_PYTHON)");
            return Ok(None);
        }
        bail!("{} failed for {model}: {err}", script.display());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} printed no JSON", script.display()))?;
    let mut r = [0f64; 4];
    for (i, k) in WORKLOADS.iter().enumerate() {
        r[i] = v[k].as_f64().with_context(|| format!("PyTorch JSON lacks {k}"))?;
    }
    Ok(Some(r))
}

fn main() -> Result<()> {
    // As the `temper` binary does, so the benchmark measures what users run.
    temper_core::device::tune_cpu_runtime();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let reps: usize = value("--reps").map_or(Ok(if quick { 3 } else { 5 }), |s| s.parse())?;
    let batch: usize = value("--batch").map_or(Ok(128), |s| s.parse())?;
    let out_dir = PathBuf::from(value("--out").unwrap_or_else(|| "target/bench".into()));
    let models = value("--models").unwrap_or_else(|| "small-cnn,preact-resnet18,mobilenet-v2".into());
    let threads = candle_core::utils::get_num_threads();
    let mut rows = Vec::new();
    for name in models.split(',') {
        let kind = ModelKind::parse(name).context("--models")?;
        eprintln!("{name}: Temper ...");
        let temper = bench_model(kind, batch, reps)?;
        eprintln!("{name}: PyTorch ...");
        let torch = pytorch(kind.name(), batch, reps)?;
        rows.push(Row {
            model: kind.name(),
            batch,
            temper,
            torch,
        });
    }
    println!("Images per second, {threads} threads, f32, median of {reps} runs (Temper / PyTorch = ratio)\n");
    println!("| model | batch | workload | Temper | PyTorch | ratio |");
    println!("|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for r in &rows {
        for (i, w) in WORKLOADS.iter().enumerate() {
            let t = r.torch.map(|t| t[i]);
            println!(
                "| {} | {} | {} | {:.0} | {} | {} |",
                r.model,
                r.batch,
                w,
                r.temper[i],
                t.map_or("-".into(), |t| format!("{t:.0}")),
                t.map_or("-".into(), |t| format!("{:.2}x", r.temper[i] / t))
            );
            json_rows.push(
                serde_json::json!({"model": r.model, "batch": r.batch, "workload": w,
                "temper_img_s": r.temper[i], "pytorch_img_s": t,
                "ratio": t.map(|t| r.temper[i] / t)}),
            );
        }
    }
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let path = out_dir.join("steps.json");
    let json = serde_json::json!({"bench": "steps", "threads": threads, "reps": reps,
        "precision": "f32", "rows": json_rows});
    temper_core::fsutil::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
