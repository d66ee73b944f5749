//! Issue 15's evidence, through the real `temper` binary: quantization-aware robust
//! fine-tuning against post-training quantization of the robust model, at 4, 3, 2 bits and
//! ternary, over several seeds; small-cnn on mnist10k, or with `--cifar10 [--data DIR]`
//! preact-resnet18 at width 1/8 on the reproduction's CIFAR-10 split (`evidence::Setting`).
//!
//! `cargo xtask qat-evidence [OUT_DIR] [--seeds 0,1] [--limit N] [--qat-epochs E]
//! [--cifar10 [--data DIR]]`
//!
//! Per seed: the natural model (shared; issue 5's recipe, or the reproduction's on CIFAR-10)
//! is fine-tuned adversarially (2 epochs, SSFD, PGD-10 at eps 0.1, or 8/255 with step 2/255
//! on CIFAR-10) into the robust model. Then, per width:
//! - **PTQ**: GPFQ (per channel, 512 calibration images) of the robust model;
//! - **PTQ, equal budget**: GPFQ of the robust model after E more epochs of float adversarial
//!   fine-tuning at the QAT learning rate, so PTQ gets the training QAT gets;
//! - **QAT**: E epochs of adversarial fine-tuning of the robust model *through* the quantizer
//!   (`temper finetune --quantize W`, straight-through gradients, PGD examples crafted against
//!   the quantized model), exported with the rounding it trained through.
//!
//! Each model is evaluated through its quantizer on the first N test images (clean, PGD-20
//! and APGD-CE at the training eps). Finished runs and quantized files in OUT_DIR are reused.
//! Never in CI.

use crate::evidence::{accuracies, cell, flag, out_and_seeds, Runner, Setting};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

const WIDTHS: &[&str] = &["4", "3", "2", "ternary"];

/// Clean and robust accuracy (percent) of `weights` under `attack` at the training eps.
fn accuracy(r: &Runner, weights: &Path, attack: &str, limit: &str) -> Result<(f64, f64)> {
    let w = weights.to_string_lossy();
    let s = &r.setting;
    let mut args = vec![
        "attack",
        "--weights",
        &w,
        "--attack",
        attack,
        "--eps",
        s.eps,
        "--batch-size",
        "500",
        "--limit",
        limit,
    ];
    args.extend(s.dataset.iter().map(String::as_str));
    // A quantized file names its own architecture.
    if !w.ends_with("quantized.safetensors") {
        args.extend(s.model.iter().map(String::as_str));
    }
    accuracies(&r.temper(&args)?)
}

/// GPFQ of `float` at `width` into `OUT/name/quantized.safetensors`, unless it is there.
fn gpfq(r: &Runner, float: &Path, width: &str, name: &str) -> Result<PathBuf> {
    let dir = r.out.join(name);
    let file = dir.join("quantized.safetensors");
    if !file.exists() {
        let (f, d) = (float.to_string_lossy(), dir.to_string_lossy());
        let mut a = vec![
            "quantize",
            "--weights",
            &f,
            "--bits",
            width,
            "--quantizer",
            "gpfq",
            "--per-channel",
            "--calib",
            "512",
            "--limit",
            "200",
            "--out",
            &d,
        ];
        a.extend(r.setting.model_and_data());
        r.temper(&a)?;
    }
    Ok(file)
}

/// `temper finetune` of `weights` at the evidence's threat model, through the quantizer
/// `quantize` when given.
fn finetune<'a>(
    s: &'a Setting,
    weights: &'a str,
    epochs: &'a str,
    schedule: &'a str,
    seed: &'a str,
    quantize: Option<&'a str>,
) -> Vec<&'a str> {
    let mut a = vec![
        "finetune",
        "--weights",
        weights,
        "--epochs",
        epochs,
        "--lr-schedule",
        schedule,
        "--seed",
        seed,
    ];
    a.extend(s.threat());
    if let Some(q) = quantize {
        a.extend(["--quantize", q]);
    }
    a
}

/// Clean, PGD-20 and APGD-CE accuracies of one table cell over its seeds.
#[derive(Default)]
struct Cell {
    clean: Vec<f64>,
    pgd: Vec<f64>,
    apgd: Vec<f64>,
}

impl Cell {
    fn add(&mut self, r: &Runner, weights: &Path, limit: &str) -> Result<()> {
        let (clean, pgd) = accuracy(r, weights, "pgd-20", limit)?;
        let (_, apgd) = accuracy(r, weights, "apgd-ce", limit)?;
        self.clean.push(clean);
        self.pgd.push(pgd);
        self.apgd.push(apgd);
        Ok(())
    }

    fn cells(&self) -> String {
        format!(
            "{} | {} | {}",
            cell(&self.clean),
            cell(&self.pgd),
            cell(&self.apgd)
        )
    }
}

/// `cargo xtask qat-evidence [OUT_DIR] [--seeds 0,1] [--limit N] [--qat-epochs E]
/// [--cifar10 [--data DIR]]`.
pub fn qat_evidence(args: &[String]) -> Result<()> {
    let (out, seeds) = out_and_seeds(args, "runs/qat-evidence", "0,1");
    let limit = flag(args, "--limit").unwrap_or("1000");
    let epochs = flag(args, "--qat-epochs").unwrap_or("1");
    let qat_lr = "constant:lr=0.005";
    let r = Runner::with_setting(out, Setting::from_args(args, Path::new(out))?)?;
    let s = &r.setting;
    let natural = r.natural()?.join("model.safetensors");
    let natural = natural.to_string_lossy().into_owned();

    let mut float = Cell::default();
    let mut rows: Vec<(String, Cell, Cell, Cell)> = WIDTHS
        .iter()
        .map(|w| (w.to_string(), Cell::default(), Cell::default(), Cell::default()))
        .collect();
    for seed in &seeds {
        let ft = finetune(s, &natural, "2", "ssfd", seed, None);
        let robust = r
            .train(&format!("ft-{seed}"), &ft, 500)?
            .join("model.safetensors");
        let robust_s = robust.to_string_lossy().into_owned();
        float.add(&r, &robust, limit)?;
        // The equal-budget control: E more float epochs at the QAT learning rate.
        let more = finetune(s, &robust_s, epochs, qat_lr, seed, None);
        let longer = r
            .train(&format!("ft-more-{seed}"), &more, 500)?
            .join("model.safetensors");
        for (w, ptq, ptq_more, qat) in rows.iter_mut() {
            let p = gpfq(&r, &robust, w, &format!("ptq-{seed}-{w}"))?;
            ptq.add(&r, &p, limit)?;
            let p = gpfq(&r, &longer, w, &format!("ptq-more-{seed}-{w}"))?;
            ptq_more.add(&r, &p, limit)?;
            let q = finetune(s, &robust_s, epochs, qat_lr, seed, Some(w));
            let dir = r.train(&format!("qat-{seed}-{w}"), &q, 500)?;
            qat.add(&r, &dir.join("quantized.safetensors"), limit)?;
        }
    }
    let mut table = format!(
        "{}, test accuracy (%) on the first {limit} {} through each quantizer: \
         clean / PGD-20 / APGD-CE (100 steps), L-inf eps {}; mean ± sd over seeds {}. The robust model: the \
         natural model fine-tuned 2 epochs (SSFD, PGD-10 at eps {}). PTQ: GPFQ per channel (512 calibration \
         images), first and last layer 8-bit. PTQ +{epochs} ep: GPFQ after {epochs} more float epochs of \
         adversarial fine-tuning ({qat_lr}). QAT: {epochs} epoch(s) of adversarial fine-tuning through the \
         quantizer ({qat_lr}; round to nearest per channel, TWN for ternary; first and last layer 8-bit).\n\n\
         float robust model: {}\n\n\
         | weights | PTQ clean | PTQ PGD-20 | PTQ APGD-CE | PTQ +{epochs} ep clean | PGD-20 | APGD-CE | QAT clean | QAT PGD-20 | QAT APGD-CE |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        s.label,
        s.points,
        s.eps,
        seeds.join(", "),
        s.eps,
        float.cells().replace(" | ", " / ")
    );
    for (w, ptq, more, qat) in &rows {
        let label = if w == "ternary" {
            w.clone()
        } else {
            format!("{w}-bit")
        };
        table.push_str(&format!(
            "| {label} | {} | {} | {} |\n",
            ptq.cells(),
            more.cells(),
            qat.cells()
        ));
    }
    let path = r.out.join("table.md");
    std::fs::write(&path, &table).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{table}");
    eprintln!("written to {}", path.display());
    Ok(())
}
