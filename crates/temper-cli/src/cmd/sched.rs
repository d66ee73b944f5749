//! `temper sched plot`: draw a learning-rate schedule.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use temper_sched::ScheduleSpec;

/// The `sched` subcommands.
#[derive(Subcommand, Debug)]
pub enum SchedCmd {
    /// Draw a learning-rate schedule against epoch as a PNG.
    Plot(PlotArgs),
}

/// Arguments of `temper sched plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Schedule spec, e.g. "ssfd:peak=0.05,warmup=0.3" or "cosine:peak=0.1,period=10ep,mult=2".
    spec: String,
    /// Length of the run in epochs.
    #[arg(long)]
    epochs: f64,
    /// Folder to write lr_schedule.png into.
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    out: PathBuf,
    /// Points sampled along the run.
    #[arg(long, default_value_t = 400)]
    points: usize,
}

pub fn run(cmd: SchedCmd) -> Result<()> {
    match cmd {
        SchedCmd::Plot(a) => plot(&a),
    }
}

fn plot(a: &PlotArgs) -> Result<()> {
    if a.points < 2 {
        anyhow::bail!("--points must be at least 2");
    }
    let schedule = a
        .spec
        .parse::<ScheduleSpec>()?
        .check(a.epochs)
        .with_context(|| format!("schedule '{}' for {} epochs", a.spec, a.epochs))?;
    let points = schedule.sample(a.epochs, a.points);
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create '{}'", a.out.display()))?;
    let out = a.out.join("lr_schedule.png");
    // The canonical spec (every key written out) titles the chart, so the picture says exactly
    // which schedule it shows.
    temper_eval::chart::lr_schedule(&points, &schedule.to_string())
        .save(&out)
        .with_context(|| format!("cannot write the chart to '{}'", out.display()))?;
    let (peak_at, peak) =
        points
            .iter()
            .copied()
            .fold((0.0, f64::NEG_INFINITY), |m, p| if p.1 > m.1 { p } else { m });
    let last = points.last().map_or(0.0, |p| p.1);
    println!("schedule: {schedule}");
    println!(
        "highest sampled lr {peak:.6} at epoch {peak_at:.2}; final lr {last:.6} at epoch {} ({} points)",
        a.epochs, a.points
    );
    println!("chart written to {}", out.display());
    Ok(())
}
