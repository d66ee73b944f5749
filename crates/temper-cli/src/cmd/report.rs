//! `temper report RUN_DIR`: training-curve charts from a run's `metrics.jsonl`.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_eval::chart::training_curves;
use temper_eval::TrainingLog;

/// Arguments of `temper report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A training run's folder, holding metrics.jsonl.
    run_dir: PathBuf,
    /// Folder to write curves.png into (default: RUN_DIR).
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    out: Option<PathBuf>,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let log = TrainingLog::read_run(&a.run_dir)?;
    if log.is_empty() {
        anyhow::bail!(
            "'{}' has no training or validation lines to plot",
            a.run_dir.join("metrics.jsonl").display()
        );
    }
    let name = a
        .run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| a.run_dir.display().to_string());
    let dir = a.out.clone().unwrap_or_else(|| a.run_dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let out = dir.join("curves.png");
    training_curves(&log, &name)
        .save(&out)
        .with_context(|| format!("cannot write the training curves to '{}'", out.display()))?;
    println!(
        "{}: {} training and {} validation lines{}",
        a.run_dir.join("metrics.jsonl").display(),
        log.train.len(),
        log.val.len(),
        if log.truncated_tail {
            " (an unfinished last line was left out)"
        } else {
            ""
        }
    );
    if let Some(v) = log.last_val() {
        let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.2}%", 100.0 * x));
        println!(
            "last validation (epoch {}): clean {}, robust {}",
            v.epoch,
            pct(v.clean_acc),
            pct(v.robust_acc)
        );
    }
    println!("training curves written to {}", out.display());
    Ok(())
}
