//! `temper eval`: clean, per-attack and worst-case robust accuracy, eps sweeps and
//! gradient-masking checks, written as a report folder.

use crate::args::{check_fit, load_model, DataArgs, DeviceArgs, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_attacks::spec::{parse_number, parse_sweep, AttackSettings, AttackSpec};
use temper_attacks::{LossKind, Norm};
use temper_core::Classifier as _;
use temper_eval::{
    evaluate, sweep, DatasetSection, EvalParams, MaskingParams, ModelSection, NamedAttack, Report,
    RunSection, SweepParams,
};

/// Arguments of `temper eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights: safetensors with PyTorch state_dict names (random initialisation if omitted).
    #[arg(long, short = 'w')]
    weights: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Attacks, comma-separated: fgsm, fgsm-rs, pgd, pgd-N, pgd-l2-N, cw, cw-N. The worst case
    /// runs them in this order, each on the samples the ones before it left correct.
    #[arg(long, short = 'a', default_value = "fgsm,pgd-20")]
    attacks: String,
    /// Threat model norm: linf or l2. Robust accuracy counts adversarial examples inside this
    /// ball only.
    #[arg(long, default_value = "linf")]
    norm: String,
    /// Budget in pixel units: 8/255, 0.3, ...
    #[arg(long, default_value = "8/255")]
    eps: String,
    /// Step size (default: 2.5*eps/steps for PGD, 1.25*eps for FGSM-RS).
    #[arg(long)]
    alpha: Option<String>,
    /// PGD steps when the attack name has none (`pgd`).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// PGD restarts; the worst case per sample is kept.
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Objective for FGSM/PGD: ce (cross-entropy) or cw (margin).
    #[arg(long, default_value = "ce")]
    loss: String,
    /// Eps sweep, start:stop:step or a comma-separated list (e.g. 0:8/255:1/255); draws
    /// robust_vs_eps.png.
    #[arg(long)]
    eps_sweep: Option<String>,
    /// Attacks to sweep, comma-separated (default: every attack of --attacks).
    #[arg(long)]
    sweep_attack: Option<String>,
    /// Samples the gradient-masking checks use (the first ones of the data).
    #[arg(long, default_value_t = 200)]
    masking_samples: usize,
    /// Skip the gradient-masking checks.
    #[arg(long)]
    no_masking_checks: bool,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Folder for report.json, report.md and robust_vs_eps.png.
    #[arg(long, value_name = "OUT_DIR")]
    report: PathBuf,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.device.init()?;
    let cfg = a.model.config()?;
    let model = load_model(&cfg, a.weights.as_deref(), &device)?;
    let data = a.data.load()?;
    check_fit(&model, &data)?;
    let norm = Norm::parse(&a.norm)?;
    let settings = AttackSettings {
        eps: parse_number(&a.eps, "eps")?,
        alpha: a
            .alpha
            .as_deref()
            .map(|s| parse_number(s, "alpha").map_err(anyhow::Error::from))
            .transpose()?,
        norm,
        restarts: a.restarts,
        steps: a.steps,
        loss: LossKind::parse(&a.loss)?,
        random_start: true,
    };
    let specs = AttackSpec::parse_list(&a.attacks)?;
    let attacks: Vec<NamedAttack> = specs
        .iter()
        .map(|s| Ok((s.text.clone(), s.build(&settings)?)))
        .collect::<Result<_>>()?;
    let params = EvalParams {
        batch_size: a.batch_size,
        masking: (!a.no_masking_checks).then(|| MaskingParams {
            samples: a.masking_samples,
            ..MaskingParams::default()
        }),
        ..EvalParams::new(norm, settings.eps)
    }
    .check()?;
    // Validate the sweep before spending time on the evaluation.
    let sweep_plan = match &a.eps_sweep {
        Some(s) => {
            let eps = parse_sweep(s, "eps-sweep")?;
            let which = match &a.sweep_attack {
                Some(list) => AttackSpec::parse_list(list)?,
                None => specs.clone(),
            };
            Some((
                SweepParams {
                    eps,
                    batch_size: a.batch_size,
                }
                .check()?,
                which,
            ))
        }
        None => None,
    };

    println!(
        "evaluating {} on {} ({} images) under {} at {} eps {} ...",
        model.info().name,
        data.name(),
        data.len(),
        a.attacks,
        norm.name(),
        a.eps
    );
    let evaluation = evaluate(&model, &data, &attacks, &params, &device)?;
    let mut sweeps = Vec::new();
    if let Some((sp, which)) = &sweep_plan {
        for spec in which {
            println!("sweeping {} over {} eps values ...", spec.text, sp.eps().len());
            sweeps.push(sweep(&model, &data, spec, &settings, sp, &device)?);
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = Report::new(
        ModelSection::of(&model, a.weights.as_deref()),
        DatasetSection::of(&data),
        RunSection::new(&a.device.device, Some(command)),
        evaluation,
        sweeps,
    );
    println!();
    print!("{}", report.to_text());
    let files = report
        .write(&a.report)
        .with_context(|| format!("cannot write the report into '{}'", a.report.display()))?;
    println!();
    println!("report written to {}", files.json.display());
    println!("summary written to {}", files.markdown.display());
    if let Some(c) = &files.chart {
        println!("chart written to {}", c.display());
    }
    Ok(())
}
