//! `temper train` and `temper finetune`.

use crate::args::{DeviceArgs, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_attacks::spec::parse_number;
use temper_train::{Method, RunOptions, TrainConfig, TrainReport};

/// Options shared by `train` and `finetune`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Data set: mnist10k (bundled), mnist, fashion-mnist, cifar10, cifar100, image-folder.
    #[arg(long, short = 'd', default_value = "mnist10k")]
    dataset: String,
    /// Directory of the data set's files (not needed for mnist10k).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Learning-rate schedule, e.g. ssfd:peak=0.05,warmup=0.3,decay=exp,final=1e-4 or
    /// step:lr=0.1,milestones=0.5/0.75 or cyclic:peak=0.2 (see `temper sched`).
    #[arg(long)]
    lr_schedule: Option<String>,
    /// Optimizer, e.g. sgd:momentum=0.9,weight_decay=5e-4 or adamw:weight_decay=0.01.
    #[arg(long)]
    optimizer: Option<String>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Threat model budget (L-inf, pixel units): default 0.3 for 28x28 digits, 8/255 otherwise.
    #[arg(long)]
    eps: Option<String>,
    /// Inner attack step size: a number (2/255) or a multiple of eps (eps/4) (default 0.01 for
    /// digits, 2/255 otherwise).
    #[arg(long)]
    alpha: Option<String>,
    /// Inner attack steps (default 40 for digits, 10 otherwise; `--attack-steps` is the same
    /// flag).
    #[arg(long = "steps", visible_alias = "attack-steps")]
    attack_steps: Option<usize>,
    /// TRADES beta.
    #[arg(long)]
    trades_beta: Option<f64>,
    /// Validation hold-out from the training split: a count (800) or a fraction (0.1).
    #[arg(long)]
    val_split: Option<f64>,
    /// Validation images evaluated (clean and PGD-10) after each epoch.
    #[arg(long)]
    val_size: Option<usize>,
    /// Random-crop (and for RGB, flip) augmentation: on or off (true and false work too;
    /// default: on except for digits).
    #[arg(long, value_parser = crate::args::parse_on_off)]
    augment: Option<bool>,
    /// Write a resumable checkpoint every N iterations (always at epoch ends).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Metrics line every N iterations.
    #[arg(long)]
    log_every: Option<u64>,
    /// Run directory to create (config.toml, metrics.jsonl, checkpoints, weights, summary).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Continue the interrupted run in this directory, with its own config.toml.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Arguments of `temper train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Method: natural, pgd-at, fgsm-rs, trades, finetune.
    #[arg(long, default_value = "natural")]
    method: String,
    /// Initial weights (safetensors, PyTorch names).
    #[arg(long, short = 'w')]
    weights: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

/// Arguments of `temper finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// Pre-trained weights to fine-tune (safetensors with PyTorch state_dict names).
    #[arg(long, short = 'w')]
    weights: Option<PathBuf>,
    /// Inner attack: pgd (default) or fgsm-rs.
    #[arg(long, default_value = "pgd")]
    attack: String,
    #[command(flatten)]
    run: RunArgs,
}

fn config(method: Method, weights: Option<PathBuf>, r: &RunArgs) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::new(method, r.model.config()?.get().clone(), &r.dataset);
    cfg.weights = weights;
    cfg.data_dir = r.data_dir.clone();
    cfg.seed = r.device.seed;
    if let Some(v) = r.epochs {
        cfg.epochs = v;
    }
    if let Some(v) = &r.lr_schedule {
        cfg.lr_schedule = v.clone();
    }
    if let Some(v) = &r.optimizer {
        cfg.optimizer = v.clone();
    }
    if let Some(v) = r.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = &r.eps {
        cfg.threat.eps = parse_number(v, "eps")?;
        if r.alpha.is_none() {
            // Keep Madry's ratio of step to budget when only eps is given.
            let d = TrainConfig::new(method, cfg.model.clone(), &r.dataset).threat;
            cfg.threat.alpha = d.alpha * cfg.threat.eps / d.eps;
        }
    }
    if let Some(v) = &r.alpha {
        cfg.threat.alpha = crate::args::parse_alpha(v, cfg.threat.eps)?;
    }
    if let Some(v) = r.attack_steps {
        cfg.threat.steps = v;
    }
    if let Some(v) = r.trades_beta {
        cfg.trades_beta = v;
    }
    if let Some(v) = r.val_split {
        cfg.val_split = v;
    }
    if let Some(v) = r.val_size {
        cfg.val_size = v;
    }
    if let Some(v) = r.augment {
        cfg.augment = v;
    }
    if let Some(v) = r.checkpoint_every {
        cfg.checkpoint_every = v;
    }
    if let Some(v) = r.log_every {
        cfg.log_every = v;
    }
    Ok(cfg)
}

fn go(cfg: Option<TrainConfig>, r: &RunArgs) -> Result<()> {
    let device = r.device.init()?;
    let log_every = r.log_every.unwrap_or(10);
    let report = match (&r.resume, cfg) {
        (Some(dir), _) => {
            let opts = RunOptions {
                renderer: temper_train::render::default_renderer(0, 0, log_every),
                stop_after: None,
            };
            println!("resuming {}", dir.display());
            temper_train::resume(dir, &device, opts)?
        }
        (None, Some(cfg)) => {
            let out = r.out.clone().context("--out RUN_DIR is required")?;
            let valid = cfg.check()?;
            let c = valid.get();
            println!(
                "{} {} on {} for {} epochs: lr {}, eps {:.4}, out {}",
                c.method.name(),
                c.model.kind,
                c.dataset,
                c.epochs,
                c.lr_schedule,
                c.threat.eps,
                out.display()
            );
            let opts = RunOptions {
                renderer: temper_train::render::default_renderer(0, 0, log_every),
                stop_after: None,
            };
            temper_train::train(valid, &out, &device, opts)?
        }
        (None, None) => anyhow::bail!("nothing to run"),
    };
    print_report(&report);
    Ok(())
}

/// Prints a finished run's numbers.
pub fn print_report(r: &TrainReport) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    println!();
    if let Some(s) = &r.stopped {
        println!("stopped early: {s}");
    }
    println!("iterations:        {} ({} epochs)", r.iters, r.epochs_done);
    println!("val clean:         {}", pct(r.val_clean));
    println!(
        "val robust PGD-10: {}  (best {})",
        pct(r.val_robust),
        pct(r.best_robust)
    );
    println!(
        "cost:              {} forward + {} backward image passes, {} images, {:.1} s",
        r.cost.forward, r.cost.backward, r.cost.images, r.cost.wall_seconds
    );
    println!(
        "weights:           {}/model.safetensors (last), best.safetensors (best robust)",
        r.run_dir.display()
    );
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let cfg = if a.run.resume.is_some() {
        None
    } else {
        Some(config(Method::parse(&a.method)?, a.weights.clone(), &a.run)?)
    };
    go(cfg, &a.run)
}

pub fn run_finetune(a: FinetuneArgs) -> Result<()> {
    let cfg = if a.run.resume.is_some() {
        None
    } else {
        let mut c = config(Method::Finetune, a.weights.clone(), &a.run)?;
        c.finetune_attack = a.attack.clone();
        Some(c)
    };
    go(cfg, &a.run)
}
