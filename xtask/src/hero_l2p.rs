//! Issue 15's evidence for HERO and Learn2Perturb, run through the real `temper` binary
//! (never in CI), on mnist10k, or with `--cifar10 [--data DIR]` on the reproduction's
//! CIFAR-10 split with preact-resnet18 at width 1/8 for every model (`evidence::Setting`;
//! 8/255, step 2/255; SGD from 0.1; only HERO's reference defaults; 5 robust epochs):
//!
//! - `cargo xtask hero-l2p-evidence [OUT_DIR] [--seeds 0,1] [--limit N] [--aa-limit N]
//!   [--only hero|l2p] [--cifar10 [--data DIR]]`
//!
//! 1. HERO against plain SGD: small-cnn trained naturally with the same SGD recipe, with and
//!    without HERO (its reference defaults, rho 0.01 and lambda 1, and a stronger setting,
//!    rho 0.05 and lambda 10), then quantized after
//!    training (`temper quant sweep`: round to nearest, one step per tensor, every layer at
//!    the bit width); clean test accuracy per bit width. HERO's claim: better accuracy after
//!    quantization at low bit widths.
//! 2. Learn2Perturb against PGD-AT: preact-resnet18 at width 1/16 on the 28x28 digits,
//!    L-inf eps 0.1 (PGD-10, step 0.025) for both; clean accuracy and the worst case of
//!    `autoattack-rand` (APGD-CE and APGD-DLR with 20 gradient passes per step) on the
//!    first test digits. Learn2Perturb's model is randomized, so only EOT attacks count.
//!
//! Finished runs in `OUT_DIR` (default `runs/hero-l2p`) are reused, so an interrupted
//! experiment continues where it stopped. `TEMPER_BIN` names a prebuilt `temper` binary;
//! otherwise the release binary is built first. Writes `hero.md` and `l2p.md` there.

use crate::evidence::{cell, flag, out_and_seeds, Data, Runner, Setting};
use anyhow::{Context, Result};
use std::path::Path;

/// The SGD recipe both HERO and its baseline train with (the setting adds model and data):
/// 10 epochs, batch 128, momentum 0.9, weight decay 5e-4, a step schedule from `lr`.
fn sgd(s: &Setting) -> (Vec<&'static str>, &'static str) {
    let (lr, schedule) = match s.data {
        Data::Mnist => ("0.05", "step:lr=0.05,milestones=0.5/0.75"),
        Data::Cifar10 => ("0.1", "step:lr=0.1,milestones=0.5/0.75"),
    };
    let recipe = vec![
        "train",
        "--epochs",
        "10",
        "--batch-size",
        "128",
        "--optimizer",
        "sgd:momentum=0.9,weight_decay=5e-4",
        "--lr-schedule",
        schedule,
    ];
    (recipe, lr)
}

/// Validation images of a training run.
fn val_size(s: &Setting) -> usize {
    match s.data {
        Data::Mnist => 200,
        Data::Cifar10 => 500,
    }
}

/// The bit widths of the quantization sweep.
const BITS: &str = "8,4,3,2";

/// The accuracy (percent) on the line of `text` that starts with `key`.
fn percent(text: &str, key: &str) -> Result<f64> {
    text.lines()
        .find(|l| l.trim_start().starts_with(key))
        .and_then(|l| {
            l.split_whitespace()
                .map(|w| w.trim_matches('*'))
                .find(|w| w.ends_with('%'))
        })
        .and_then(|w| w.trim_end_matches('%').parse().ok())
        .with_context(|| format!("no '{key}' line with a percentage in:\n{text}"))
}

/// Clean accuracy (percent) of each row of a quant sweep's `sweep.json`, by label.
fn sweep_clean(dir: &Path) -> Result<Vec<(String, f64)>> {
    let path = dir.join("sweep.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    let mut label = None;
    for line in text.lines() {
        let l = line.trim().trim_end_matches(',');
        if let Some(v) = l.strip_prefix("\"label\": ") {
            label = Some(v.trim_matches('"').to_string());
        } else if let Some(v) = l.strip_prefix("\"clean\": ") {
            if let (Some(name), Ok(c)) = (label.take(), v.parse::<f64>()) {
                rows.push((name, 100.0 * c));
            }
        }
    }
    if rows.is_empty() {
        anyhow::bail!("no rows in {}", path.display());
    }
    Ok(rows)
}

/// The rows of the HERO table: label, run name, method and extra flags.
const HERO_ROWS: &[(&str, &str, &str, &[&str])] = &[
    ("SGD", "natural", "natural", &[]),
    (
        "HERO (rho 0.01, lambda 1: the reference's defaults)",
        "hero",
        "hero",
        &[],
    ),
    (
        "HERO (rho 0.05, lambda 10)",
        "hero-r0.05-l10",
        "hero",
        &["--hero-rho", "0.05", "--hero-lambda", "10"],
    ),
];

fn hero(r: &Runner, seeds: &[&str], limit: &str) -> Result<String> {
    let s = &r.setting;
    let labels = ["float", "8-bit", "4-bit", "3-bit", "2-bit"];
    let (recipe, lr) = sgd(s);
    let mut table = format!(
        "{}, 10 epochs of SGD (momentum 0.9, weight decay 5e-4, step \
         schedule from {lr}), with and without HERO (finite-difference step 1e-4); clean test \
         accuracy (%) on the first {limit} {} after post-training quantization (round \
         to nearest, per tensor, every layer), mean ± sd over seeds {}.\n\n\
         | training | {} |\n|---|{}\n",
        s.label,
        s.points,
        seeds.join(", "),
        labels.join(" | "),
        "---|".repeat(labels.len())
    );
    // HERO costs four passes per image: CIFAR-10 runs only the reference's defaults.
    let rows = match s.data {
        Data::Mnist => HERO_ROWS,
        Data::Cifar10 => &HERO_ROWS[..2],
    };
    for (label, name, method, extra) in rows {
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); labels.len()];
        for seed in seeds {
            let mut a = recipe.clone();
            a.extend(["--method", method, "--seed", seed]);
            a.extend(extra.iter());
            let run = r.train(&format!("{name}-s{seed}"), &a, val_size(s))?;
            let w = run.join("model.safetensors").to_string_lossy().into_owned();
            let mut q = vec![
                "quant",
                "sweep",
                "--weights",
                &w,
                "--bits",
                BITS,
                "--first-last-bits",
                "0",
                "--attacks",
                "fgsm",
                "--eps",
                s.eps,
                "--limit",
                limit,
            ];
            q.extend(s.model_and_data());
            let sweep = r.run_once(&format!("{name}-s{seed}-sweep"), &q, "sweep.json")?;
            let rows = sweep_clean(&sweep)?;
            for (i, l) in labels.iter().enumerate() {
                let v = rows
                    .iter()
                    .find(|(n, _)| n == l)
                    .with_context(|| format!("no {l} row in {}", sweep.display()))?;
                cols[i].push(v.1);
            }
        }
        let cells: Vec<String> = cols.iter().map(|c| cell(c)).collect();
        table.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    Ok(table)
}

fn l2p(r: &Runner, seeds: &[&str], limit: &str) -> Result<String> {
    let s = &r.setting;
    let (model, epochs) = match s.data {
        Data::Mnist => ("preact-resnet18 (width 1/16) on mnist10k's 28x28 digits", "4"),
        Data::Cifar10 => (s.label, "5"),
    };
    let eps = s.eps;
    let mut table = format!(
        "{model}, {epochs} epochs, L-inf eps {eps} (PGD-10, step {}) for both methods; test \
         accuracy (%) on {limit} {} (the first of each class where the test part is sorted by \
         class): clean, and the worst case of autoattack-rand (APGD-CE and APGD-DLR, 100 \
         iterations, 20 gradient passes per step) at eps {eps}; mean ± sd over seeds {}.\n\n\
         | training | clean | autoattack-rand eps {eps} |\n|---|---|---|\n",
        s.alpha,
        s.points,
        seeds.join(", ")
    );
    let val = val_size(s).to_string();
    let noisy = || s.noisy_model.iter().map(String::as_str);
    for method in ["pgd-at", "l2p"] {
        let (mut clean, mut robust) = (Vec::new(), Vec::new());
        for seed in seeds {
            let mut a = vec!["train", "--method", method, "--epochs", epochs, "--seed", seed];
            a.extend(noisy());
            a.extend(s.dataset.iter().map(String::as_str));
            a.extend(s.train.iter().map(String::as_str));
            a.extend(s.threat());
            a.extend(["--val-size", &val]);
            let run = r.run_once(&format!("{method}-s{seed}"), &a, "summary.json")?;
            let w = run.join("model.safetensors").to_string_lossy().into_owned();
            let mut e = vec![
                "eval",
                "--weights",
                &w,
                "--attacks",
                "autoattack-rand",
                "--eps",
                eps,
            ];
            e.extend(noisy());
            e.extend(s.balanced.iter().map(String::as_str));
            e.extend(["--limit", limit, "--no-masking-checks"]);
            let report = r.run_once(&format!("{method}-s{seed}-aa-rand"), &e, "report.md")?;
            let text = std::fs::read_to_string(report.join("report.md"))?;
            clean.push(percent(&text, "| clean")?);
            robust.push(percent(&text, "| **worst case**")?);
        }
        let name = if method == "l2p" {
            "Learn2Perturb"
        } else {
            "PGD-AT"
        };
        table.push_str(&format!("| {name} | {} | {} |\n", cell(&clean), cell(&robust)));
    }
    Ok(table)
}

/// `cargo xtask hero-l2p-evidence [OUT_DIR] [--seeds 0,1] [--limit N] [--aa-limit N]
/// [--only hero|l2p] [--cifar10 [--data DIR]]`.
pub fn evidence(args: &[String]) -> Result<()> {
    let (out, seeds) = out_and_seeds(args, "runs/hero-l2p", "0,1");
    let r = Runner::with_setting(out, Setting::from_args(args, Path::new(out))?)?;
    // Test images for the quantization sweep (all of them) and for autoattack-rand.
    let all = match r.setting.data {
        Data::Mnist => "2000",
        Data::Cifar10 => "1000",
    };
    let limit = flag(args, "--limit").unwrap_or(all);
    let aa_limit = flag(args, "--aa-limit").unwrap_or("100");
    let only = flag(args, "--only");
    if only != Some("l2p") {
        let t = hero(&r, &seeds, limit)?;
        std::fs::write(r.out.join("hero.md"), &t)?;
        println!("{t}");
    }
    if only != Some("hero") {
        let t = l2p(&r, &seeds, aa_limit)?;
        std::fs::write(r.out.join("l2p.md"), &t)?;
        println!("{t}");
    }
    Ok(())
}
