//! The speed benchmark of issue 11: forward (eval), PGD step (input gradient only, eval
//! mode), training step (train-mode forward, backward, SGD update) and one PGD-10
//! adversarial-training iteration, for small-cnn, preact-resnet18 and mobilenet-v2, each
//! side by side with PyTorch on the same architecture, batch and thread count, run by the
//! same command (`bench_steps.py` beside this file; skipped with a message where torch is
//! absent).
//!
//! Every number is the median of `--reps` timed runs (at least 5) after two warm-up calls; a
//! run repeats a workload faster than 0.2 s until it lasts about that long
//! (`temper_train::bench::median_secs`; `bench_steps.py` does the same).
//! Writes a Markdown table to stdout and `steps.json` into `--out` (default `target/bench`).
//!
//! The models of `--bf16` (default preact-resnet18; `none` for none) are also run with
//! `--precision bf16` where the CPU multiplies bf16 natively, against the same PyTorch f32
//! numbers: the comparison of issue 11's bf16 target.
//!
//! `cargo run --release -p temper-train --example bench_steps -- [--quick] [--models a,b]
//!  [--bf16 a,b] [--batch N] [--reps N] [--out DIR]`

use anyhow::{Context, Result};
use candle_core::Device;
use std::path::PathBuf;
use temper_core::kernels::Precision;
use temper_models::ModelKind;
use temper_train::bench::{bench_model, TorchReference, WORKLOADS};

struct Row {
    model: &'static str,
    /// Temper's precision (PyTorch's is always f32).
    precision: Precision,
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
    let bf16_models = value("--bf16").unwrap_or_else(|| "preact-resnet18".into());
    let threads = candle_core::utils::get_num_threads();
    let mut runs = Vec::new();
    for name in models.split(',') {
        runs.push((ModelKind::parse(name).context("--models")?, Precision::F32));
    }
    if temper_core::kernels::native_bf16() {
        for name in bf16_models.split(',').filter(|n| *n != "none") {
            runs.push((ModelKind::parse(name).context("--bf16")?, Precision::Bf16));
        }
    } else if bf16_models != "none" {
        eprintln!("bf16 rows skipped: this CPU has no native bf16 products (AVX512-BF16)");
    }
    let mut rows: Vec<Row> = Vec::new();
    for (kind, precision) in runs {
        let name = kind.name();
        eprintln!("{name}: Temper ({precision}) ...");
        let temper = bench_model(kind, batch, reps, &Device::Cpu, precision)?;
        // PyTorch runs f32 once per model; a bf16 row compares with that run.
        let torch = match rows.iter().find(|r| r.model == name) {
            Some(r) => r.torch,
            None => {
                eprintln!("{name}: PyTorch (f32) ...");
                TorchReference::from_source_tree().run(kind, batch, threads, reps, "cpu", Precision::F32)?
            }
        };
        rows.push(Row {
            model: name,
            precision,
            batch,
            temper,
            torch,
        });
    }
    println!(
        "Images per second, {threads} threads, PyTorch in f32, median of {reps} runs (Temper / PyTorch = ratio)\n"
    );
    println!("| model | batch | Temper precision | workload | Temper | PyTorch f32 | ratio |");
    println!("|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for r in &rows {
        for (i, w) in WORKLOADS.iter().enumerate() {
            let t = r.torch.map(|t| t[i]);
            println!(
                "| {} | {} | {} | {} | {:.0} | {} | {} |",
                r.model,
                r.batch,
                r.precision,
                w,
                r.temper[i],
                t.map_or("-".into(), |t| format!("{t:.0}")),
                t.map_or("-".into(), |t| format!("{:.2}x", r.temper[i] / t))
            );
            json_rows.push(
                serde_json::json!({"model": r.model, "batch": r.batch, "precision": r.precision.name(), "workload": w,
                "temper_img_s": r.temper[i], "pytorch_img_s": t,
                "ratio": t.map(|t| r.temper[i] / t)}),
            );
        }
    }
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let path = out_dir.join("steps.json");
    let json = serde_json::json!({"bench": "steps", "threads": threads, "reps": reps,
        "pytorch_precision": "f32", "rows": json_rows});
    temper_core::fsutil::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
