//! Issue 15's evidence for HERO and Learn2Perturb on mnist10k, run through the real `temper`
//! binary (never in CI):
//!
//! - `cargo xtask hero-l2p-evidence [OUT_DIR] [--seeds 0,1] [--limit N] [--aa-limit N]
//!   [--only hero|l2p]`
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

use crate::evidence::{cell, flag, out_and_seeds, Runner};
use anyhow::{Context, Result};
use std::path::Path;

/// The SGD recipe both HERO and its baseline train with.
const SGD: &[&str] = &[
    "train",
    "--model",
    "small-cnn",
    "--dataset",
    "mnist10k",
    "--epochs",
    "10",
    "--batch-size",
    "128",
    "--optimizer",
    "sgd:momentum=0.9,weight_decay=5e-4",
    "--lr-schedule",
    "step:lr=0.05,milestones=0.5/0.75",
    "--val-size",
    "200",
];

/// The bit widths of the quantization sweep.
const BITS: &str = "8,4,3,2";

/// preact-resnet18 at width 1/16 (4 to 32 channels) on 28x28 grey digits: small enough
/// for EOT attacks on two CPU cores.
const PREACT: &[&str] = &[
    "--model",
    "preact-resnet18",
    "--width",
    "0.0625",
    "--in-channels",
    "1",
    "--input-size",
    "28",
];

/// The threat model of both robust methods: L-inf eps 0.1, PGD-10 with step 0.025.
const THREAT: &[&str] = &["--eps", "0.1", "--alpha", "0.025", "--steps", "10"];

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
    let labels = ["float", "8-bit", "4-bit", "3-bit", "2-bit"];
    let mut table = format!(
        "small-cnn on mnist10k, 10 epochs of SGD (momentum 0.9, weight decay 5e-4, step \
         schedule from 0.05), with and without HERO (finite-difference step 1e-4); clean test \
         accuracy (%) on the first {limit} test digits after post-training quantization (round \
         to nearest, per tensor, every layer), mean ± sd over seeds {}.\n\n\
         | training | {} |\n|---|{}\n",
        seeds.join(", "),
        labels.join(" | "),
        "---|".repeat(labels.len())
    );
    for (label, name, method, extra) in HERO_ROWS {
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); labels.len()];
        for seed in seeds {
            let mut a = SGD.to_vec();
            a.extend(["--method", method, "--seed", seed]);
            a.extend(extra.iter());
            let run = r.run_once(&format!("{name}-s{seed}"), &a, "summary.json")?;
            let w = run.join("model.safetensors").to_string_lossy().into_owned();
            let sweep = r.run_once(
                &format!("{name}-s{seed}-sweep"),
                &[
                    "quant",
                    "sweep",
                    "--model",
                    "small-cnn",
                    "--weights",
                    &w,
                    "--bits",
                    BITS,
                    "--first-last-bits",
                    "0",
                    "--attacks",
                    "fgsm",
                    "--eps",
                    "0.05",
                    "--limit",
                    limit,
                ],
                "sweep.json",
            )?;
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
    let mut table = format!(
        "preact-resnet18 (width 1/16) on mnist10k's 28x28 digits, 4 epochs, L-inf eps 0.1 \
         (PGD-10, step 0.025) for both methods; test accuracy (%) on the first {limit} test \
         digits: clean, and the worst case of autoattack-rand (APGD-CE and APGD-DLR, 100 \
         iterations, 20 gradient passes per step) at eps 0.1; mean ± sd over seeds {}.\n\n\
         | training | clean | autoattack-rand eps 0.1 |\n|---|---|---|\n",
        seeds.join(", ")
    );
    for method in ["pgd-at", "l2p"] {
        let (mut clean, mut robust) = (Vec::new(), Vec::new());
        for seed in seeds {
            let mut a = vec!["train", "--method", method, "--epochs", "4", "--seed", seed];
            a.extend(PREACT);
            a.extend(THREAT);
            a.extend(["--val-size", "200"]);
            let run = r.run_once(&format!("{method}-s{seed}"), &a, "summary.json")?;
            let w = run.join("model.safetensors").to_string_lossy().into_owned();
            let mut e = vec![
                "eval",
                "--weights",
                &w,
                "--attacks",
                "autoattack-rand",
                "--eps",
                "0.1",
            ];
            e.extend(PREACT);
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
/// [--only hero|l2p]`.
pub fn evidence(args: &[String]) -> Result<()> {
    let (out, seeds) = out_and_seeds(args, "runs/hero-l2p", "0,1");
    // Test digits for the quantization sweep (all 2,000) and for autoattack-rand.
    let limit = flag(args, "--limit").unwrap_or("2000");
    let aa_limit = flag(args, "--aa-limit").unwrap_or("100");
    let only = flag(args, "--only");
    let r = Runner::new(out)?;
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
