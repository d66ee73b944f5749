//! `temper train` and `temper finetune`.

use crate::args::{DeviceArgs, ModelArgs, PrecisionArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_attacks::spec::parse_number;
use temper_train::{AttackBn, Method, RunOptions, TrainConfig, TrainReport};

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
    /// Inner attack step size: a number (2/255) or a multiple of eps (eps/4). Default for
    /// PGD and TRADES: 0.01 for digits, 2/255 otherwise; for FGSM-RS: 1.25 eps (Wong et al.).
    #[arg(long)]
    alpha: Option<String>,
    /// Inner attack steps (default 40 for digits, 10 otherwise; `--attack-steps` is the same
    /// flag).
    #[arg(long = "steps", visible_alias = "attack-steps")]
    attack_steps: Option<usize>,
    /// TRADES beta.
    #[arg(long)]
    trades_beta: Option<f64>,
    /// BatchNorm mode of the inner attack: train (batch statistics; the PGD-AT, Fast-AT and
    /// fine-tuning default, as their reference code) or eval (running statistics; the TRADES
    /// default).
    #[arg(long, value_name = "train|eval")]
    attack_bn: Option<String>,
    /// Validation hold-out from the training split: a whole count (800), a fraction in
    /// (0, 1) (0.1), or 0 for no validation.
    #[arg(long)]
    val_split: Option<f64>,
    /// Validation images evaluated (clean and PGD-10) after each epoch, at least 1.
    #[arg(long)]
    val_size: Option<usize>,
    /// Train on only N images of the training part (after the validation hold-out), evenly
    /// spaced through it so every class stays, for shorter experiments.
    #[arg(long)]
    train_size: Option<usize>,
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
    /// Quantization-aware training: run every layer on its quantized weights (straight-through
    /// gradients to the float ones), so the method trains through the quantizer. A width of
    /// 2-8 bits, ternary (TWN), binary or ptq[:prune=F] (pruning ternary quantization), then
    /// optionally ,per-tensor and ,first-last=N|none (default per-channel, first and last
    /// layer 8-bit). The run also writes quantized.safetensors.
    #[arg(long, value_name = "BITS|ternary|ptq")]
    quantize: Option<String>,
    /// Print the run's summary (as in summary.json) on stdout as JSON; progress stays on
    /// stderr.
    #[arg(long)]
    json: bool,
    /// Run directory to create (config.toml, metrics.jsonl, checkpoints, weights, summary).
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Continue the interrupted run in this directory, with its own config.toml.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
}

/// Arguments of `temper train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Method: natural, pgd-at, fgsm-rs, trades, finetune, hero (Hessian-regularized
    /// training for models that quantize well; with --weights it fine-tunes them), l2p
    /// (Learn2Perturb: learned noise modules in preact-resnet18, a randomized model to
    /// evaluate with --attacks autoattack-rand).
    #[arg(long, default_value = "natural")]
    method: String,
    /// Initial weights (safetensors, PyTorch names).
    #[arg(long, short = 'w')]
    weights: Option<PathBuf>,
    #[command(flatten)]
    methods: MethodArgs,
    #[command(flatten)]
    run: RunArgs,
}

/// The hyper-parameters of HERO and Learn2Perturb.
#[derive(Args, Debug)]
pub struct MethodArgs {
    /// HERO: size rho of the weight perturbation (the reference's step_size; default 0.01).
    #[arg(long)]
    hero_rho: Option<f64>,
    /// HERO: strength lambda of the gradient-difference regularizer (default 1).
    #[arg(long)]
    hero_lambda: Option<f64>,
    /// HERO: step of the finite-difference Hessian-vector product, relative to the weights'
    /// norm (default 1e-4).
    #[arg(long)]
    hero_fd_step: Option<f64>,
    /// Learn2Perturb: strength gamma of the regularizer that grows the noise (default 1e-4).
    #[arg(long)]
    l2p_gamma: Option<f64>,
    /// Learn2Perturb: epochs trained without noise first (the reference: 10 of 350; default 0).
    #[arg(long)]
    l2p_noise_delay: Option<u64>,
    /// Learn2Perturb: epochs trained on clean examples only first (the reference: 20 of 350;
    /// default 0).
    #[arg(long)]
    l2p_adv_delay: Option<u64>,
}

impl MethodArgs {
    /// The flags given, by name, with the method each belongs to.
    fn given(&self) -> [(&'static str, Method, bool); 6] {
        [
            ("--hero-rho", Method::Hero, self.hero_rho.is_some()),
            ("--hero-lambda", Method::Hero, self.hero_lambda.is_some()),
            ("--hero-fd-step", Method::Hero, self.hero_fd_step.is_some()),
            ("--l2p-gamma", Method::L2p, self.l2p_gamma.is_some()),
            ("--l2p-noise-delay", Method::L2p, self.l2p_noise_delay.is_some()),
            ("--l2p-adv-delay", Method::L2p, self.l2p_adv_delay.is_some()),
        ]
    }

    /// Sets the given values in `cfg`; a flag of another method than `cfg`'s is an error.
    fn apply(&self, cfg: &mut TrainConfig) -> Result<()> {
        for (flag, method, given) in self.given() {
            if given && cfg.method != method {
                anyhow::bail!(
                    "{flag} applies to --method {}, not {}",
                    method.name(),
                    cfg.method.name()
                );
            }
        }
        let (h, l) = (&mut cfg.hero, &mut cfg.l2p);
        h.rho = self.hero_rho.unwrap_or(h.rho);
        h.lambda = self.hero_lambda.unwrap_or(h.lambda);
        h.fd_step = self.hero_fd_step.unwrap_or(h.fd_step);
        l.gamma = self.l2p_gamma.unwrap_or(l.gamma);
        l.noise_delay = self.l2p_noise_delay.unwrap_or(l.noise_delay);
        l.adv_delay = self.l2p_adv_delay.unwrap_or(l.adv_delay);
        Ok(())
    }
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
    cfg.precision = r.precision.get()?;
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
    if let Some(v) = &r.attack_bn {
        cfg.attack_bn = AttackBn::parse(v)?;
    }
    if let Some(v) = r.val_split {
        cfg.val_split = v;
    }
    if let Some(v) = r.val_size {
        cfg.val_size = v;
    }
    if r.train_size.is_some() {
        cfg.train_size = r.train_size;
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
    if let Some(q) = &r.quantize {
        cfg.quantize = Some(temper_harden::qat::Qat::parse(q)?.0.get().to_string());
    }
    Ok(cfg)
}

/// The run flags given on the command line, which `--resume` would ignore: a resumed run
/// continues with its own config.toml, so that it ends as the uninterrupted run would.
fn ignored_by_resume(r: &RunArgs, extra: &[(&'static str, bool)]) -> Vec<&'static str> {
    let m = &r.model;
    let given = [
        ("--model", m.model.is_some()),
        ("--num-classes", m.num_classes != 10),
        ("--in-channels", m.in_channels.is_some()),
        ("--input-size", m.input_size.is_some()),
        ("--stem", m.stem.is_some()),
        ("--width", m.width != 1.0),
        ("--normalize", m.normalize.is_some()),
        ("--dataset", r.dataset != "mnist10k"),
        ("--data-dir", r.data_dir.is_some()),
        ("--epochs", r.epochs.is_some()),
        ("--lr-schedule", r.lr_schedule.is_some()),
        ("--optimizer", r.optimizer.is_some()),
        ("--batch-size", r.batch_size.is_some()),
        ("--eps", r.eps.is_some()),
        ("--alpha", r.alpha.is_some()),
        ("--steps", r.attack_steps.is_some()),
        ("--trades-beta", r.trades_beta.is_some()),
        ("--attack-bn", r.attack_bn.is_some()),
        ("--val-split", r.val_split.is_some()),
        ("--val-size", r.val_size.is_some()),
        ("--train-size", r.train_size.is_some()),
        ("--augment", r.augment.is_some()),
        ("--checkpoint-every", r.checkpoint_every.is_some()),
        ("--log-every", r.log_every.is_some()),
        ("--quantize", r.quantize.is_some()),
        ("--seed", r.device.seed != 0),
        ("--precision", r.precision.precision != "f32"),
    ];
    given
        .iter()
        .chain(extra)
        .filter(|(_, g)| *g)
        .map(|(f, _)| *f)
        .collect()
}

fn go(cfg: Option<TrainConfig>, r: &RunArgs, extra: &[(&'static str, bool)]) -> Result<()> {
    let device = r.device.init()?;
    let log_every = r.log_every.unwrap_or(10);
    let report = match (&r.resume, cfg) {
        (Some(dir), _) => {
            let ignored = ignored_by_resume(r, extra);
            if !ignored.is_empty() {
                anyhow::bail!(
                    "--resume continues {} with the settings in its config.toml, so {} would be ignored; \
                     drop them, or start a new run with --out",
                    dir.display(),
                    ignored.join(", ")
                );
            }
            let recorded = temper_harden::qat::run_config(dir)?;
            let opts = with_quantizer(
                RunOptions::new(temper_train::render::default_renderer(0, 0, log_every)),
                &recorded,
            )?;
            eprintln!("resuming {}", dir.display());
            (temper_train::resume(dir, &device, opts)?, recorded)
        }
        (None, Some(cfg)) => {
            let out = r.out.clone().context("--out RUN_DIR is required")?;
            let valid = cfg.check()?;
            let c = valid.get();
            eprintln!(
                "{} {} on {} for {} epochs: lr {}, eps {:.4}, out {}",
                c.method.name(),
                c.model.kind,
                c.dataset,
                c.epochs,
                c.lr_schedule,
                c.threat.eps,
                out.display()
            );
            if c.model.noise_injection {
                eprintln!(
                    "note: the model has noise modules, so the per-epoch PGD-10 validation (one pass \
                     per gradient) overstates its robustness; evaluate the result with \
                     `temper eval --attacks autoattack-rand`"
                );
            }
            if let Some(q) = &c.quantize {
                eprintln!("quantization-aware: every layer runs through the quantizer {q}");
            }
            let opts = with_quantizer(
                RunOptions::new(temper_train::render::default_renderer(0, 0, log_every)),
                c,
            )?;
            let recorded = c.clone();
            (temper_train::train(valid, &out, &device, opts)?, recorded)
        }
        (None, None) => anyhow::bail!("nothing to run"),
    };
    let (report, recorded) = report;
    let quantized = if report.files.iter().any(|f| f == temper_train::files::LAST) {
        temper_harden::qat::save_run_export(&report.run_dir, &recorded, &device)?
    } else {
        None
    };
    if r.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(q) = &quantized {
            v["quantized"] = serde_json::json!(q);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&report);
        if let Some(q) = &quantized {
            println!(
                "quantized:         {} (the weights as training saw them)",
                q.display()
            );
        }
    }
    Ok(())
}

/// `opts` with the quantizer kernels the configuration records, if any.
fn with_quantizer(mut opts: RunOptions, cfg: &TrainConfig) -> Result<RunOptions> {
    opts.layer_transform = temper_harden::qat::Qat::for_config(cfg)?;
    Ok(opts)
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
    let describe = |f: &String| match f.as_str() {
        temper_train::files::LAST => format!("{f} (last)"),
        temper_train::files::BEST => format!("{f} (best robust)"),
        _ => f.clone(),
    };
    if r.files.is_empty() {
        println!("weights:           none saved in {}", r.run_dir.display());
    } else {
        println!(
            "weights:           {}/{}",
            r.run_dir.display(),
            r.files.iter().map(describe).collect::<Vec<_>>().join(", ")
        );
    }
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let cfg = if a.run.resume.is_some() {
        None
    } else {
        let mut c = config(Method::parse(&a.method)?, a.weights.clone(), &a.run)?;
        a.methods.apply(&mut c)?;
        Some(c)
    };
    let mut extra = vec![
        ("--method", a.method != "natural"),
        ("--weights", a.weights.is_some()),
    ];
    extra.extend(a.methods.given().iter().map(|(f, _, g)| (*f, *g)));
    go(cfg, &a.run, &extra)
}

pub fn run_finetune(a: FinetuneArgs) -> Result<()> {
    let cfg = if a.run.resume.is_some() {
        None
    } else {
        let mut c = config(Method::Finetune, a.weights.clone(), &a.run)?;
        c.finetune_attack = a.attack.clone();
        if a.attack == "fgsm-rs" && a.run.alpha.is_none() {
            // Wong et al.'s FGSM step, 1.25 eps, unless --alpha says otherwise.
            c.threat.alpha = 1.25 * c.threat.eps;
        }
        Some(c)
    };
    let extra = [
        ("--attack", a.attack != "pgd"),
        ("--weights", a.weights.is_some()),
    ];
    go(cfg, &a.run, &extra)
}
