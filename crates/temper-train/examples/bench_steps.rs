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

use anyhow::{Context, Result};
use candle_core::Device;
use std::path::PathBuf;
use temper_core::kernels::Precision;
use temper_models::ModelKind;
use temper_train::bench::{bench_model, TorchReference, WORKLOADS};

struct Row {
    model: &'static str,
    batch: usize,
    /// Images per second: forward, PGD step, training step, PGD-10 AT iteration.
    temper: [f64; 4],
    torch: Option<[f64; 4]>,
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
        let temper = bench_model(kind, batch, reps, &Device::Cpu, Precision::F32)?;
        eprintln!("{name}: PyTorch ...");
        let torch =
            TorchReference::from_source_tree().run(kind, batch, threads, reps, "cpu", Precision::F32)?;
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
