//! `temper attack`: clean and robust accuracy of a model under one or more attacks, computed
//! by `temper_eval::evaluate_with` (the evaluator every command shares), optionally with the
//! adversarial images written out.

use crate::args::{
    check_fit, check_randomized, load_any, AttackOpts, DataArgs, DeviceArgs, ModelArgs, PrecisionArgs,
    StateArgs, WeightsArgs,
};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_eval::{evaluate_with, AdversarialBatch, EvalParams, Evaluation};

/// Arguments of `temper attack`.
#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
    #[arg(
        long = "attacks",
        short = 'a',
        visible_alias = "attack",
        default_value = "pgd",
        help = concat!("Attacks, comma-separated: ", attack_names!(), ". `--attack` is the same flag")
    )]
    attacks: String,
    /// Attack settings; `--norm` and `--eps` also define the threat model: an adversarial
    /// example counts only inside that ball (so CW, which minimises the perturbation and
    /// ignores eps, counts where its example fits).
    #[command(flatten)]
    opts: AttackOpts,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Folder to write adversarial.safetensors into: per attack, the images that count
    /// (`adv/<attack>`: the adversarial example inside the threat model, the clean image where
    /// there is none), and the labels.
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
    /// Print the evaluation as JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
}

pub fn run(a: AttackArgs) -> Result<()> {
    let device = a.device.init()?;
    let loaded = load_any(&a.model, &a.weights, &device)?;
    loaded.set_precision(a.precision.get()?);
    let model = loaded.classifier();
    let data = a.data.load()?;
    check_fit(model, &data)?;
    let (settings, specs, attacks) = a.opts.build_list(&a.attacks, data.shape())?;
    check_randomized(model, &specs)?;
    let params = EvalParams {
        batch_size: a.batch_size,
        masking: None,
        state: a.state.state.clone(),
        ..EvalParams::new(settings.norm, settings.eps)
    }
    .check()?;
    if !a.json {
        println!(
            "model:   {} ({} parameters)",
            model.info().name,
            model.params().num_trainable()
        );
        if let Some(q) = loaded.quantization() {
            println!("         quantized: {q}; attacked through the quantizer (straight-through gradients)");
        }
        println!(
            "data:    {} {} ({} images)",
            data.name(),
            a.data.split,
            data.len()
        );
        for (name, attack) in &attacks {
            println!("attack:  {name} = {}", attack.name());
        }
        println!(
            "threat:  {} eps {}",
            settings.norm.name(),
            temper_eval::fmt_eps(settings.eps)
        );
        a.state.announce(false);
    }
    let mut advs: Vec<Vec<candle_core::Tensor>> = attacks.iter().map(|_| Vec::new()).collect();
    let mut labels: Vec<u32> = Vec::new();
    let keep = a.out.is_some();
    let mut sink = |b: AdversarialBatch<'_>| -> temper_eval::Result<()> {
        if keep {
            if b.attack == 0 {
                labels.extend_from_slice(b.labels);
            }
            advs[b.attack].push(b.images.to_device(&candle_core::Device::Cpu)?);
        }
        Ok(())
    };
    let evaluation = evaluate_with(model, &data, &attacks, &params, &device, &mut sink)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&evaluation)?);
    } else {
        print_text(&evaluation);
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
        let path = dir.join("adversarial.safetensors");
        let mut tensors = Vec::new();
        for ((name, _), batches) in attacks.iter().zip(&advs) {
            tensors.push((format!("adv/{name}"), candle_core::Tensor::cat(batches, 0)?));
        }
        let n = labels.len();
        tensors.push((
            "labels".to_string(),
            candle_core::Tensor::from_vec(labels, n, &candle_core::Device::Cpu)?,
        ));
        let mut meta = std::collections::HashMap::from([
            ("model".to_string(), model.info().name.clone()),
            ("dataset".to_string(), data.name().to_string()),
            ("threat".to_string(), evaluation.threat.describe()),
        ]);
        for (name, attack) in &attacks {
            meta.insert(format!("attack/{name}"), attack.name());
        }
        if let Some(q) = loaded.quantization() {
            meta.insert("quantization".to_string(), q);
        }
        temper_core::weights::save_tensors(&tensors, &path, &meta)
            .with_context(|| format!("cannot save adversarial examples to '{}'", path.display()))?;
        if !a.json {
            println!("adversarial examples written to {}", path.display());
        }
    }
    Ok(())
}

/// The evaluation as the terminal shows it.
fn print_text(e: &Evaluation) {
    let n = e.samples;
    let clean = &e.clean.accuracy;
    println!();
    println!(
        "clean accuracy:   {:6.2}%  ({}/{n})",
        100.0 * clean.accuracy,
        clean.correct
    );
    for r in &e.attacks {
        println!(
            "robust accuracy:  {:6.2}%  ({}/{n})  under {}",
            100.0 * r.robust.accuracy,
            r.robust.correct,
            r.name
        );
        if r.outside_threat > 0 {
            println!(
                "                  {} successful examples lay outside the threat model and did not count",
                r.outside_threat
            );
        }
        println!(
            "mean ‖δ‖∞:        {:.5}   (max {:.5}) over {} attacked images",
            r.perturbation.linf_mean, r.perturbation.linf_max, r.perturbation.count
        );
        println!("mean ‖δ‖₂:        {:.5}", r.perturbation.l2_mean);
        println!("cost:             {}", passes(&r.cost));
    }
    if e.attacks.len() > 1 {
        if let Some(w) = &e.worst_case {
            println!(
                "worst case:       {:6.2}%  ({}/{n})",
                100.0 * w.accuracy.accuracy,
                w.accuracy.correct
            );
        }
    }
    println!(
        "total cost:       {}, {:.0} images/s",
        passes(&e.cost),
        e.cost.images_per_second
    );
}

/// `F forward + B backward image passes (Q of them queries), S s`.
fn passes(c: &temper_eval::CostSummary) -> String {
    let queries = if c.queries > 0 {
        format!(" ({} of them black-box queries)", c.queries)
    } else {
        String::new()
    };
    format!(
        "{} forward{queries} + {} backward image passes, {:.1} s",
        c.forward, c.backward, c.seconds
    )
}
