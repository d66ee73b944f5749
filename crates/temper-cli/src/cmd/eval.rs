//! `temper eval`: clean, per-attack and worst-case robust accuracy, eps sweeps and
//! gradient-masking checks, written as a report folder.

use crate::args::{
    check_fit, check_randomized, load_any, parse_attack_list, AttackOpts, DataArgs, DeviceArgs, ModelArgs,
    PrecisionArgs, StateArgs, WeightsArgs,
};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_attacks::spec::parse_sweep;
use temper_eval::{
    evaluate, sweep, DatasetSection, EvalParams, MaskingParams, ModelSection, Report, RunSection, SweepParams,
};

/// Arguments of `temper eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
    #[arg(
        long,
        short = 'a',
        visible_alias = "attack",
        default_value = "fgsm,pgd-20",
        help = concat!(
            "Attacks, comma-separated: ",
            attack_names!(),
            ". The worst case runs them in this order, each on the samples the ones before it left correct"
        )
    )]
    attacks: String,
    /// Attack settings; `--norm` and `--eps` also define the threat model: robust accuracy
    /// counts adversarial examples inside that ball only.
    #[command(flatten)]
    opts: AttackOpts,
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
    /// AutoAttack's cascade: each attack runs only on the points the attacks before it left
    /// robust, and its row is the robust accuracy after it (the worst case is the same, the
    /// cost lower). auto: on when every name in --attacks is an AutoAttack version
    /// (autoattack, autoattack-plus, autoattack-rand); off: each attack on every
    /// clean-correct point, with its own robust accuracy
    #[arg(long, value_enum, default_value_t = Cascade::Auto)]
    cascade: Cascade,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Folder for report.json, report.md and robust_vs_eps.png (`--report` is the same flag).
    #[arg(long, short = 'o', visible_alias = "report", value_name = "OUT_DIR")]
    out: PathBuf,
    #[command(flatten)]
    state: StateArgs,
    /// Print the report as JSON (report.json's content) instead of the table.
    #[arg(long)]
    json: bool,
}

/// When `temper eval` runs its attacks as AutoAttack's cascade.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cascade {
    /// When the list names only AutoAttack versions.
    Auto,
    /// Always.
    On,
    /// Never: every attack on every clean-correct point.
    Off,
}

impl Cascade {
    /// Whether the attack list `list` runs as a cascade.
    fn resolve(self, list: &str) -> bool {
        match self {
            Cascade::On => true,
            Cascade::Off => false,
            Cascade::Auto => list.split(',').all(|p| {
                temper_attacks::spec::AttackSpec::parse(p)
                    .is_ok_and(|s| matches!(s.kind, temper_attacks::spec::AttackKind::AutoAttack(_)))
            }),
        }
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.device.init()?;
    let loaded = load_any(&a.model, &a.weights, &device)?;
    loaded.set_precision(a.precision.get()?);
    let model = loaded.classifier();
    let data = a.data.load()?;
    check_fit(model, &data)?;
    let (settings, specs, attacks) = a.opts.build_list(&a.attacks, data.shape())?;
    check_randomized(model, &specs)?;
    let norm = settings.norm;
    let params = EvalParams {
        batch_size: a.batch_size,
        masking: (!a.no_masking_checks).then(|| MaskingParams {
            samples: a.masking_samples,
            ..MaskingParams::default()
        }),
        state: a.state.state.clone(),
        cascade: a.cascade.resolve(&a.attacks),
        ..EvalParams::new(norm, settings.eps)
    }
    .check()?;
    // Validate the sweep before spending time on the evaluation.
    let sweep_plan = match &a.eps_sweep {
        Some(s) => {
            let eps = parse_sweep(s, "eps-sweep")?;
            let which = match &a.sweep_attack {
                Some(list) => parse_attack_list(list)?,
                None => specs.clone(),
            };
            check_randomized(model, &which)?;
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

    // Progress goes to stderr under --json (`say!`), so stdout is the JSON alone.
    if let Some(q) = loaded.quantization() {
        say!(
            a.json,
            "quantized: {q}; attacks go through the quantizer (straight-through gradients)"
        );
    }
    say!(
        a.json,
        "evaluating {} on {} ({} images) under {}{} at {} eps {} ...",
        model.info().name,
        data.name(),
        data.len(),
        a.attacks,
        if params.cascade() {
            " (cascade: each attack on what the ones before it left)"
        } else {
            ""
        },
        norm.name(),
        temper_eval::fmt_eps(settings.eps)
    );
    a.state.announce(a.json);
    let evaluation = evaluate(model, &data, &attacks, &params, &device)?;
    let mut sweeps = Vec::new();
    if let Some((sp, which)) = &sweep_plan {
        for spec in which {
            say!(
                a.json,
                "sweeping {} over {} eps values ...",
                spec.text,
                sp.eps().len()
            );
            sweeps.push(sweep(model, &data, spec, &settings, sp, &device)?);
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut model_section = ModelSection::of(model, a.weights.weights.as_deref());
    model_section.quantization = loaded.quantization();
    let report = Report::new(
        model_section,
        DatasetSection::of(&data),
        RunSection::new(&a.device.device, Some(command)),
        evaluation,
        sweeps,
    );
    if a.json {
        println!("{}", report.to_json()?);
    } else {
        println!();
        print!("{}", report.to_text());
    }
    let files = report
        .write(&a.out)
        .with_context(|| format!("cannot write the report into '{}'", a.out.display()))?;
    say!(a.json, "");
    say!(a.json, "report written to {}", files.json.display());
    say!(a.json, "summary written to {}", files.markdown.display());
    if let Some(c) = &files.chart {
        say!(a.json, "chart written to {}", c.display());
    }
    Ok(())
}
