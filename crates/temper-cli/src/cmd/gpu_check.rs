//! `temper gpu-check` (hidden): the checks of a device backend where it runs, as one JSON
//! document. `cargo xtask gpu-check` ships this binary with the PyTorch script to a GPU
//! machine, whose `run.sh` calls this command once per part.
//!
//! Parts: `kernels` (every kernel against the CPU reference on random shapes, both
//! gradients, at each precision: `temper_core::kernels::parity`), `models` (logits and
//! gradients of whole models against the CPU: `temper_train::bench::model_parity`) and
//! `bench` (the four workloads of `temper_train::bench` beside PyTorch on the same device and
//! precision).

use crate::args::DeviceArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use temper_core::kernels::{default_kernels, parity, select_kernels, Precision};
use temper_models::ModelKind;
use temper_train::bench::{self, TorchReference, WORKLOADS};

/// Arguments of `temper gpu-check`.
#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// Parts to run, comma-separated: kernels, models, bench.
    #[arg(long, default_value = "kernels,models,bench")]
    parts: String,
    /// Precisions of the products, comma-separated: f32, tf32, bf16.
    #[arg(long, default_value = "f32,tf32,bf16")]
    precisions: String,
    /// Models of the `models` and `bench` parts, comma-separated.
    #[arg(long, default_value = "preact-resnet18,mobilenet-v2")]
    models: String,
    /// Batch sizes of the benchmark, comma-separated.
    #[arg(long, default_value = "128,512")]
    batches: String,
    /// Batch size of the model parity check.
    #[arg(long, default_value_t = 16)]
    parity_batch: usize,
    /// Timed runs per benchmark workload (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// The PyTorch side of the benchmark (bench_steps.py); without it, Temper alone is timed.
    #[arg(long)]
    torch_script: Option<PathBuf>,
    /// Python interpreter for --torch-script.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Kernels of the CPU reference: fast-cpu (the CPU's default, itself tested against
    /// direct loops and candle) or candle (candle's operations: slow on large shapes).
    #[arg(long, default_value = "fast-cpu")]
    reference_kernels: String,
    /// Small kernel cases (seconds on a CPU) instead of model-sized ones.
    #[arg(long)]
    small: bool,
    /// Stop starting benchmark configurations after this many seconds (those left are listed
    /// as skipped).
    #[arg(long)]
    deadline_s: Option<f64>,
    /// Folder to write gpu-check.json into (created).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Print the JSON on stdout; progress goes to stderr.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

fn list<T>(flag: &str, s: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| parse(p).with_context(|| format!("{flag} '{p}'")))
        .collect()
}

pub fn run(a: GpuCheckArgs) -> Result<()> {
    let device = a.device.init()?;
    let dev_name = temper_core::device::name(&device);
    let parts = list("--parts", &a.parts, |p| match p {
        "kernels" | "models" | "bench" => Ok(p.to_string()),
        _ => anyhow::bail!("expected kernels, models or bench"),
    })?;
    let precisions = list("--precisions", &a.precisions, |p| Ok(Precision::parse(p)?))?;
    let models = list("--models", &a.models, |m| Ok(ModelKind::parse(m)?))?;
    let batches = list("--batches", &a.batches, |b| {
        let n: usize = b.parse()?;
        anyhow::ensure!(n >= 1, "must be at least 1");
        Ok(n)
    })?;
    anyhow::ensure!(
        a.parity_batch >= 2,
        "--parity-batch must be at least 2 (train-mode BatchNorm)"
    );
    let kernels = default_kernels(&device)?;
    let reference = select_kernels(Some(&a.reference_kernels), &candle_core::Device::Cpu)
        .context("--reference-kernels")?;
    let start = Instant::now();
    let mut doc = serde_json::json!({
        "check": "temper.gpu-check.v1",
        "version": env!("CARGO_PKG_VERSION"),
        "features": temper_core::device::compiled_features(),
        "device": dev_name,
        "kernels": kernels.name(),
        "reference_kernels": reference.name(),
        "threads": candle_core::utils::get_num_threads(),
    });
    let mut failed = Vec::new();
    if parts.iter().any(|p| p == "kernels") {
        say!(
            a.json,
            "kernels: {} on {dev_name} against {} on cpu ...",
            kernels.name(),
            reference.name()
        );
        let scale = if a.small {
            parity::Scale::Small
        } else {
            parity::Scale::Full
        };
        let t = Instant::now();
        let rows = parity::check_kernels(
            kernels.as_ref(),
            &device,
            reference.as_ref(),
            &precisions,
            scale,
            a.device.seed,
        )?;
        let bad: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
        for r in &bad {
            say!(
                a.json,
                "  FAIL {} [{}] {}: max error {:.3e} (tolerance {:.0e}){}",
                r.op,
                r.precision,
                r.case,
                r.max_error,
                r.tolerance,
                r.error
                    .as_deref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            );
        }
        say!(
            a.json,
            "  {} of {} cases within tolerance",
            rows.len() - bad.len(),
            rows.len()
        );
        if !bad.is_empty() {
            failed.push(format!("{} kernel cases", bad.len()));
        }
        doc["kernel_parity"] = serde_json::json!({
            "passed": rows.len() - bad.len(), "failed": bad.len(),
            "seconds": t.elapsed().as_secs_f64(), "rows": rows,
        });
    }
    if parts.iter().any(|p| p == "models") {
        let t = Instant::now();
        let mut rows = Vec::new();
        for &kind in &models {
            for &p in &precisions {
                say!(
                    a.json,
                    "models: {} [{p}] on {dev_name} against cpu ...",
                    kind.name()
                );
                for r in bench::model_parity(kind, &device, reference.clone(), p, a.parity_batch)? {
                    say!(
                        a.json,
                        "  {} {}: logits {:.2e}, input grad {:.2e}{} (tolerance {:.0e})",
                        if r.pass { "ok  " } else { "FAIL" },
                        r.mode,
                        r.logits,
                        r.input_grad,
                        r.weight_grad
                            .map(|w| format!(", weight grad {w:.2e}"))
                            .unwrap_or_default(),
                        r.tolerance
                    );
                    if !r.pass {
                        failed.push(format!("{} {} [{p}]", r.model, r.mode));
                    }
                    rows.push(r);
                }
            }
        }
        doc["model_parity"] = serde_json::json!({"seconds": t.elapsed().as_secs_f64(), "rows": rows});
    }
    if parts.iter().any(|p| p == "bench") {
        let t = Instant::now();
        let torch = a.torch_script.as_ref().map(|s| TorchReference {
            python: a.python.clone(),
            script: s.clone(),
        });
        let torch_device = if device.is_cuda() { "cuda" } else { "cpu" };
        let threads = candle_core::utils::get_num_threads();
        let (mut rows, mut skipped) = (Vec::new(), Vec::new());
        for &kind in &models {
            for &batch in &batches {
                for &p in &precisions {
                    let what = format!("{} batch {batch} {p}", kind.name());
                    if a.deadline_s.is_some_and(|d| start.elapsed().as_secs_f64() > d) {
                        skipped.push(what);
                        continue;
                    }
                    say!(a.json, "bench: {what}: Temper ...");
                    let temper = bench::bench_model(kind, batch, a.reps, &device, p)?;
                    let theirs = match &torch {
                        Some(r) => {
                            say!(a.json, "bench: {what}: PyTorch ...");
                            r.run(kind, batch, threads, a.reps, torch_device, p)?
                        }
                        None => None,
                    };
                    for (i, w) in WORKLOADS.iter().enumerate() {
                        let th = theirs.map(|t| t[i]);
                        let ratio = th.map(|t| temper[i] / t);
                        say!(
                            a.json,
                            "  {w:<14} Temper {:>9.0} img/s   PyTorch {:>9}   ratio {}",
                            temper[i],
                            th.map_or("-".into(), |t| format!("{t:.0}")),
                            ratio.map_or("-".into(), |r| format!("{r:.2}x"))
                        );
                        rows.push(serde_json::json!({
                            "model": kind.name(), "batch": batch, "precision": p, "workload": w,
                            "temper_img_s": temper[i], "pytorch_img_s": th, "ratio": ratio,
                        }));
                    }
                }
            }
        }
        doc["bench"] = serde_json::json!({
            "reps": a.reps, "pytorch": torch.is_some(), "seconds": t.elapsed().as_secs_f64(),
            "rows": rows, "skipped": skipped,
        });
    }
    doc["seconds"] = serde_json::json!(start.elapsed().as_secs_f64());
    doc["failed"] = serde_json::json!(failed);
    let text = serde_json::to_string_pretty(&doc)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
        let path = dir.join("gpu-check.json");
        temper_core::fsutil::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    if a.json {
        println!("{text}");
    }
    anyhow::ensure!(failed.is_empty(), "outside tolerance: {}", failed.join(", "));
    Ok(())
}
