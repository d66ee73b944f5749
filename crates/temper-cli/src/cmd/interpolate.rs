//! `temper interpolate`: clean and robust accuracy of the models on the line between two
//! checkpoints of the same architecture, and the trade-off curve.

use crate::args::{check_fit, load_model, AttackOpts, DataArgs, DeviceArgs, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_attacks::spec::parse_sweep;
use temper_core::weights::Strictness;
use temper_core::Classifier;
use temper_eval::interpolation::{fmt_alpha, interpolation_path, InterpolationParams, InterpolationPoint};
use temper_eval::EvalParams;

/// Arguments of `temper interpolate`.
#[derive(Args, Debug)]
pub struct InterpolateArgs {
    /// Model A (alpha 0), e.g. the natural model: safetensors or a PyTorch checkpoint.
    a: PathBuf,
    /// Model B (alpha 1), e.g. its adversarially fine-tuned version; same architecture.
    b: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Points of the line, start:stop:step (both ends included) or a comma-separated list;
    /// values outside 0..1 extrapolate.
    #[arg(long, default_value = "0:1:0.1")]
    alphas: String,
    /// Attacks, comma-separated (fgsm, pgd-N, pgd-cw-N, apgd-ce, autoattack, ...); the robust
    /// accuracy of a point is the worst case over them.
    #[arg(long, short = 'a', visible_alias = "attack", default_value = "pgd-20")]
    attacks: String,
    /// Attack settings; `--norm` and `--eps` also define the threat model.
    #[command(flatten)]
    attack: AttackOpts,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Folder for interpolation.json, interpolation.md and interpolation.png.
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    out: PathBuf,
    /// Print the result as JSON (interpolation.json's content) instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

fn pct(v: f64) -> String {
    format!("{:6.2}%", 100.0 * v)
}

pub fn run(a: InterpolateArgs) -> Result<()> {
    let device = a.device.init()?;
    let params = InterpolationParams {
        alphas: parse_sweep(&a.alphas, "alphas")?,
    }
    .check()?;
    let asked = a.model.config()?;
    // The blend has one input normalisation: each file's recorded one (if any) must agree.
    // The architecture itself is checked key by key when the weights load and are blended.
    let (cfg_a, _) = temper_models::config_for_file(&asked, &a.a)?;
    let (cfg_b, _) = temper_models::config_for_file(&asked, &a.b)?;
    if cfg_a.normalization() != cfg_b.normalization() {
        anyhow::bail!(
            "'{}' and '{}' record different input normalisations ({:?} and {:?}); the interpolated model needs one (pass --normalize to choose)",
            a.a.display(),
            a.b.display(),
            cfg_a.normalization(),
            cfg_b.normalization()
        );
    }
    let ma = load_model(&cfg_a, Some(&a.a), Strictness::Strict, &device)
        .with_context(|| format!("model A '{}'", a.a.display()))?;
    let mb = load_model(&cfg_a, Some(&a.b), Strictness::Strict, &device)
        .with_context(|| format!("model B '{}'", a.b.display()))?;
    let blend = temper_models::build_zeroed(&cfg_a, &device)?;
    let data = a.data.load()?;
    check_fit(&ma, &data)?;
    let (settings, _, attacks) = a.attack.build_list(&a.attacks, data.shape())?;
    let eval = EvalParams {
        batch_size: a.batch_size,
        masking: None,
        ..EvalParams::new(settings.norm, settings.eps)
    }
    .check()?;
    // Progress goes to stderr under --json (`say!`), so stdout is the JSON alone.
    let json = a.json;
    say!(json, "model:   {} ({})", ma.info().name, cfg_a.get().kind);
    say!(json, "A:       {} (alpha 0)", a.a.display());
    say!(json, "B:       {} (alpha 1)", a.b.display());
    say!(json, "data:    {} ({} images)", data.name(), data.len());
    say!(
        json,
        "attacks: {} at {} eps {}; {} points",
        a.attacks,
        settings.norm.name(),
        temper_eval::fmt_eps(settings.eps),
        params.get().alphas.len()
    );
    let mut progress = |p: &InterpolationPoint| {
        let cells: Vec<String> = p
            .attacks
            .iter()
            .map(|r| format!("{} {}", r.name, pct(r.robust)))
            .collect();
        say!(
            json,
            "alpha {:>5}  clean {}  {}  worst case {}  [{:.0} s]",
            fmt_alpha(p.alpha),
            pct(p.clean),
            cells.join("  "),
            pct(p.robust),
            p.seconds
        );
    };
    let names = (a.a.display().to_string(), a.b.display().to_string());
    let report = interpolation_path(
        &ma,
        &mb,
        &blend,
        (&names.0, &names.1),
        &params,
        &data,
        &attacks,
        &eval,
        &device,
        &mut progress,
    )?;
    let files = report
        .write(&a.out)
        .with_context(|| format!("cannot write the report into '{}'", a.out.display()))?;
    crate::cmd::print_written(json, &report, &report.to_markdown(), &files)
}
