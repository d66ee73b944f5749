//! The training loop: data, model, optimizer, schedule and an optional inner attack.

use crate::checkpoint::{self, BestByMetric, CheckpointPolicy, EveryIters, Position};
use crate::config::{Method, ValidTrainConfig};
use crate::error::{io, param};
use crate::metrics::{Accuracy, JsonlLog, MeanLoss, Metric, TrainCost};
use crate::render::{IterInfo, Renderer};
use crate::{trades, Error, Result, TrainConfig};
use candle_core::{DType, Device, Tensor, D};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use temper_attacks::{Attack, FgsmParams, Goal, PgdParams};
use temper_core::seed::rng_with;
use temper_core::{Classifier, ForwardOpts, Mode, Network};
use temper_data::augment::{AugmentParams, PadMode};
use temper_data::split::{SplitParams, ValSize};
use temper_data::{Dataset, Loader, LoaderParams, Split};

/// File names inside a run directory.
pub mod files {
    /// The run's configuration.
    pub const CONFIG: &str = "config.toml";
    /// The metrics log.
    pub const METRICS: &str = "metrics.jsonl";
    /// The resumable checkpoint (model, optimizer, position).
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// The final weights, a plain PyTorch-style state dict.
    pub const LAST: &str = "model.safetensors";
    /// The weights with the best validation robust accuracy, a plain state dict.
    pub const BEST: &str = "best.safetensors";
    /// The cost counter and final numbers.
    pub const SUMMARY: &str = "summary.json";
}

/// How a run is driven.
pub struct RunOptions {
    /// Where progress goes.
    pub renderer: Box<dyn Renderer>,
    /// Stop (as if interrupted) after this many iterations in total; for tests and for
    /// budgeted runs. The run can be resumed afterwards.
    pub stop_after: Option<u64>,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Iterations done.
    pub iters: u64,
    /// Epochs completed.
    pub epochs_done: u64,
    /// Last validation clean accuracy.
    pub val_clean: Option<f64>,
    /// Last validation robust accuracy (PGD-10).
    pub val_robust: Option<f64>,
    /// Best validation robust accuracy.
    pub best_robust: Option<f64>,
    /// Work done.
    pub cost: TrainCost,
    /// Why the run stopped before its last epoch, if it did.
    pub stopped: Option<String>,
    /// True when every epoch ran.
    pub complete: bool,
}

struct Data {
    loader: Loader,
    val: Option<Dataset>,
}

fn data(cfg: &TrainConfig) -> Result<Data> {
    let full = temper_data::load(&cfg.dataset, cfg.data_dir.as_deref(), Split::Train)?;
    let [c, h, w] = full.shape();
    let m = &cfg.model;
    if [c, h, w] != [m.in_channels, m.input_size.0, m.input_size.1] {
        return Err(param(
            "model",
            format!(
                "data set '{}' has {c}x{h}x{w} images but the model takes {}x{}x{} (set --in-channels / --input-size)",
                full.name(),
                m.in_channels,
                m.input_size.0,
                m.input_size.1
            ),
        ));
    }
    if full.num_classes() > m.num_classes {
        return Err(param(
            "num-classes",
            format!(
                "data set has {} classes, model {}",
                full.num_classes(),
                m.num_classes
            ),
        ));
    }
    let (train, val) = if cfg.val_split > 0.0 {
        let size = if cfg.val_split >= 1.0 {
            ValSize::Count(cfg.val_split as usize)
        } else {
            ValSize::Fraction(cfg.val_split)
        };
        let split = SplitParams {
            val: size,
            seed: cfg.seed,
        }
        .check(full.len())?;
        let (t, v) = split.split_dataset(&full)?;
        let v = if cfg.val_size > 0 && cfg.val_size < v.len() {
            v.subset(&(0..cfg.val_size).collect::<Vec<_>>())?
        } else {
            v
        };
        (t, Some(v))
    } else {
        (full, None)
    };
    let train = match cfg.train_size {
        Some(k) if k < train.len() => train.subset(&(0..k).collect::<Vec<_>>())?,
        _ => train,
    };
    let mut loader = Loader::new(
        Arc::new(train),
        LoaderParams::new(cfg.batch_size)
            .seed(cfg.seed)
            .drop_last(true)
            .check()?,
    )?;
    if cfg.augment {
        let pad = if h >= 32 { 4 } else { 2 };
        let mut a = AugmentParams::new().random_crop(h.min(w), pad, PadMode::Zero);
        if c == 3 {
            a = a.hflip(0.5);
        }
        loader = loader.with_augment(a.check([c, h, w])?)?;
    }
    if loader.is_empty() {
        return Err(param(
            "batch-size",
            format!("{} is larger than the training set", cfg.batch_size),
        ));
    }
    Ok(Data { loader, val })
}

fn labels_u32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::U32)?)
}

/// Clean and PGD-10 accuracy (and clean loss) of `model` on `val`, in eval mode.
fn validate(
    model: &Network,
    val: &Dataset,
    cfg: &TrainConfig,
    epoch: u64,
    device: &Device,
    cost: &mut TrainCost,
) -> Result<(f64, f64, f64)> {
    let t = &cfg.threat;
    let pgd = PgdParams {
        eps: t.eps,
        alpha: 2.5 * t.eps / 10.0,
        steps: 10,
        ..PgdParams::default()
    }
    .check()?;
    let mut rng = rng_with(cfg.seed, &format!("temper-train/val/{epoch}"));
    let (mut clean, mut robust, mut loss_sum, mut n) = (0usize, 0usize, 0f64, 0usize);
    let idx: Vec<usize> = (0..val.len()).collect();
    let eval = ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    for chunk in idx.chunks(500) {
        let b = val.batch(chunk, device)?;
        let y = labels_u32(&b.labels)?;
        let logits = model.forward_opts(&b.images, eval)?;
        cost.val_forward += chunk.len() as u64;
        loss_sum +=
            temper_core::loss::cross_entropy_mean(&logits, &y)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let yv = y.to_vec1::<u32>()?;
        let out = pgd.perturb(model, &b.images, &y, Goal::Untargeted, &mut rng)?;
        cost.val_forward += out.cost.forward;
        cost.val_backward += out.cost.backward;
        for i in 0..chunk.len() {
            clean += usize::from(pred[i] == yv[i]);
            robust += usize::from(pred[i] == yv[i] && !out.success[i]);
        }
        n += chunk.len();
    }
    let n = n.max(1) as f64;
    Ok((clean as f64 / n, robust as f64 / n, loss_sum / n))
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| param("summary", e.to_string()))?;
    temper_core::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn save_weights(model: &Network, path: &Path, cfg: &TrainConfig) -> Result<()> {
    let meta = HashMap::from([
        ("temper.model".to_string(), cfg.model.kind.name().to_string()),
        ("temper.method".to_string(), cfg.method.name().to_string()),
    ]);
    temper_core::weights::save(model.params(), path, DType::F32, &meta)?;
    Ok(())
}

/// Starts a new run in `run_dir` (created; it must not already hold a run).
pub fn train(
    cfg: ValidTrainConfig,
    run_dir: &Path,
    device: &Device,
    opts: RunOptions,
) -> Result<TrainReport> {
    if run_dir.join(files::CHECKPOINT).exists() || run_dir.join(files::CONFIG).exists() {
        return Err(Error::RunDir {
            path: run_dir.to_path_buf(),
            reason: "already holds a run; continue it with --resume, or choose a new --out".into(),
        });
    }
    std::fs::create_dir_all(run_dir).map_err(|e| io("cannot create", run_dir, e))?;
    temper_core::fsutil::write_atomic(&run_dir.join(files::CONFIG), cfg.get().to_toml()?.as_bytes())?;
    run(cfg, run_dir, device, opts, false)
}

/// Continues the run in `run_dir` from its checkpoint, with the configuration it was started
/// with. On CPU the result is bit-identical to a run that was never interrupted.
pub fn resume(run_dir: &Path, device: &Device, opts: RunOptions) -> Result<TrainReport> {
    let cpath = run_dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&cpath).map_err(|e| io("cannot read", &cpath, e))?;
    let cfg = TrainConfig::from_toml(&text, &cpath)?.check()?;
    run(cfg, run_dir, device, opts, true)
}

fn run(
    v: ValidTrainConfig,
    run_dir: &Path,
    device: &Device,
    mut opts: RunOptions,
    resuming: bool,
) -> Result<TrainReport> {
    let cfg = v.get().clone();
    let started = Instant::now();
    temper_core::seed::set_seed(cfg.seed);
    let model = match &cfg.weights {
        Some(w) => {
            temper_models::build_from_file(&v.model, w, temper_core::weights::Strictness::Strict, device)?.0
        }
        None => temper_models::build(&v.model, device)?,
    };
    let Data { loader, val } = data(&cfg)?;
    let mut optim = v.optimizer.build()?;
    let schedule = v.schedule.clone();
    let ckpt_path = run_dir.join(files::CHECKPOINT);
    let mut pos = Position {
        epoch: 0,
        batch: 0,
        iter: 0,
        best_robust: None,
        cost: TrainCost::default(),
        stopped: None,
    };
    if resuming {
        if ckpt_path.exists() {
            let l = checkpoint::load(&ckpt_path, device)?;
            checkpoint::restore_model(model.params(), &l.model, &ckpt_path)?;
            optim.import_state(model.params(), &l.optim)?;
            pos = l.position;
        } else {
            opts.renderer
                .message("no checkpoint yet: starting the run from its beginning");
        }
    }
    let prior_wall = pos.cost.wall_seconds;
    let mut log = JsonlLog::open(
        &run_dir.join(files::METRICS),
        if resuming { Some(pos.iter) } else { None },
    )?;
    let policy: Box<dyn CheckpointPolicy> = Box::new(EveryIters {
        every: cfg.checkpoint_every,
    });
    let mut best = BestByMetric {
        best: pos.best_robust,
    };
    let per_epoch = loader.len() as u64;
    let total = per_epoch * cfg.epochs as u64;
    let mut metrics: Vec<Box<dyn Metric>> =
        vec![Box::new(MeanLoss::default()), Box::new(Accuracy::default())];
    let t = cfg.threat;
    let inner: Option<Box<dyn Attack>> = match cfg.method {
        Method::Natural | Method::Trades => None,
        Method::PgdAt => Some(Box::new(
            PgdParams {
                eps: t.eps,
                alpha: t.alpha,
                steps: t.steps,
                ..PgdParams::default()
            }
            .check()?,
        )),
        Method::FgsmRs => Some(Box::new(
            FgsmParams {
                eps: t.eps,
                random_start: Some(1.25 * t.eps),
                ..FgsmParams::default()
            }
            .check()?,
        )),
        Method::Finetune if cfg.finetune_attack == "fgsm-rs" => Some(Box::new(
            FgsmParams {
                eps: t.eps,
                random_start: Some(1.25 * t.eps),
                ..FgsmParams::default()
            }
            .check()?,
        )),
        Method::Finetune => Some(Box::new(
            PgdParams {
                eps: t.eps,
                alpha: t.alpha,
                steps: t.steps,
                ..PgdParams::default()
            }
            .check()?,
        )),
    };
    let (mut last_clean, mut last_robust) = (None, None);
    let mut cost = pos.cost;
    let mut stopped = pos.stopped.clone();
    let mut renderer = std::mem::replace(&mut opts.renderer, Box::new(crate::render::Silent));
    'epochs: while pos.epoch < cfg.epochs as u64 && stopped.is_none() {
        let epoch = pos.epoch;
        for m in metrics.iter_mut() {
            m.clear();
        }
        for batch in loader.epoch_from(epoch, pos.batch, device) {
            let b = batch?;
            let iter = pos.iter;
            let epoch_f = epoch as f64 + b.index as f64 / per_epoch as f64;
            let lr = schedule.lr(epoch_f);
            let y = labels_u32(&b.labels)?;
            let n = y.dim(0)? as u64;
            let mut rng = rng_with(cfg.seed, &format!("temper-train/attack/{iter}"));
            model.set_dropout_rng(rng_with(cfg.seed, &format!("temper-train/dropout/{iter}")));
            let x_train = match &inner {
                Some(a) => {
                    let out = a.perturb(&model, &b.images, &y, Goal::Untargeted, &mut rng)?;
                    cost.forward += out.cost.forward;
                    cost.backward += out.cost.backward;
                    out.adv
                }
                None if cfg.method == Method::Trades => {
                    let (adv, passes) =
                        trades::perturb(&model, &b.images, t.eps, t.alpha, t.steps, &mut rng)?;
                    cost.forward += passes;
                    cost.backward += passes - n;
                    adv
                }
                None => b.images.clone(),
            };
            model.set_mode(Mode::Train);
            let logits = model.forward(&x_train)?;
            let mut loss = temper_core::loss::cross_entropy_mean(&logits, &y)?;
            cost.forward += n;
            cost.backward += n;
            if cfg.method == Method::Trades {
                // TRADES trains on the clean logits; x_train holds the perturbation.
                let clean = model.forward(&b.images)?;
                let kl = (trades::kl_sum(&clean, &logits)? / n as f64)?;
                loss = (temper_core::loss::cross_entropy_mean(&clean, &y)? + (kl * cfg.trades_beta)?)?;
                cost.forward += n;
                cost.backward += n;
            }
            let grads = loss.backward()?;
            optim.step(model.params(), &grads, lr)?;
            model.set_mode(Mode::Eval);
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                stopped = Some(format!(
                    "loss became {l} at iteration {iter}; lower the learning rate"
                ));
                renderer.message(stopped.as_deref().unwrap_or_default());
                break 'epochs;
            }
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let yv = y.to_vec1::<u32>()?;
            for m in metrics.iter_mut() {
                m.update(&pred, &yv, l);
            }
            cost.images += n;
            pos.iter += 1;
            pos.batch = b.index + 1;
            let (mloss, macc) = (metrics[0].compute(), metrics[1].compute());
            renderer.iter(&IterInfo {
                iter: pos.iter,
                total,
                epoch: epoch_f,
                loss: mloss,
                acc: macc,
                lr,
            });
            if pos.iter.is_multiple_of(cfg.log_every) {
                log.write(
                    &json!({"kind": "train", "epoch": epoch as f64 + pos.batch as f64 / per_epoch as f64,
                    "iter": pos.iter, "loss": mloss, "acc": macc, "lr": lr}),
                )?;
            }
            let epoch_end = pos.batch as u64 >= per_epoch;
            if epoch_end {
                // Validation belongs to the epoch, before its checkpoint.
                if let Some(val) = &val {
                    let (c, r, vl) = validate(&model, val, &cfg, epoch, device, &mut cost)?;
                    last_clean = Some(c);
                    last_robust = Some(r);
                    log.write(
                        &json!({"kind": "val", "epoch": (epoch + 1) as f64, "iter": pos.iter,
                        "clean_acc": c, "robust_acc": r, "loss": vl}),
                    )?;
                    renderer.message(&format!(
                        "epoch {}/{}: val clean {:.2}%  PGD-10 robust {:.2}% (eps {:.4})",
                        epoch + 1,
                        cfg.epochs,
                        100.0 * c,
                        100.0 * r,
                        t.eps
                    ));
                    if best.improves(r) {
                        save_weights(&model, &run_dir.join(files::BEST), &cfg)?;
                    }
                    if cfg.method == Method::FgsmRs {
                        if let Some(b) = best.best {
                            if b - r > cfg.co_drop {
                                stopped = Some(format!(
                                    "catastrophic overfitting: validation robust accuracy fell from {:.1}% to {:.1}% in epoch {}; \
                                     best.safetensors holds the weights from before",
                                    100.0 * b,
                                    100.0 * r,
                                    epoch + 1
                                ));
                                renderer.message(stopped.as_deref().unwrap_or_default());
                            }
                        }
                    }
                }
                pos.epoch += 1;
                pos.batch = 0;
            }
            if policy.should_save(pos.iter, epoch_end) || stopped.is_some() {
                pos.best_robust = best.best;
                pos.stopped = stopped.clone();
                cost.wall_seconds = prior_wall + started.elapsed().as_secs_f64();
                pos.cost = cost;
                checkpoint::save(&ckpt_path, model.params(), &optim.export_state()?, &pos)?;
            }
            if stopped.is_some() {
                break 'epochs;
            }
            if opts.stop_after.is_some_and(|s| pos.iter >= s) {
                renderer.finish();
                return Ok(report(
                    run_dir,
                    &pos,
                    cost,
                    last_clean,
                    last_robust,
                    &best,
                    stopped,
                    total,
                ));
            }
            if epoch_end {
                break;
            }
        }
    }
    renderer.finish();
    cost.wall_seconds = prior_wall + started.elapsed().as_secs_f64();
    save_weights(&model, &run_dir.join(files::LAST), &cfg)?;
    if val.is_none() {
        // Without validation "best" means "last".
        save_weights(&model, &run_dir.join(files::BEST), &cfg)?;
    }
    let r = report(
        run_dir,
        &pos,
        cost,
        last_clean,
        last_robust,
        &best,
        stopped,
        total,
    );
    write_json(&run_dir.join(files::SUMMARY), &r)?;
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
fn report(
    run_dir: &Path,
    pos: &Position,
    cost: TrainCost,
    val_clean: Option<f64>,
    val_robust: Option<f64>,
    best: &BestByMetric,
    stopped: Option<String>,
    total: u64,
) -> TrainReport {
    TrainReport {
        run_dir: run_dir.to_path_buf(),
        iters: pos.iter,
        epochs_done: pos.epoch,
        val_clean,
        val_robust,
        best_robust: best.best,
        cost,
        complete: pos.iter >= total,
        stopped,
    }
}
