//! The training loop: it owns data, schedule, optimizer, checkpoints, metrics, validation and
//! rendering, and asks a [`TrainStep`] for each iteration's loss and gradients. Methods live
//! in `steps/`; nothing here depends on which one runs.

use crate::attack_bn::AttackView;
use crate::checkpoint::{self, BestByMetric, CheckpointPolicy, EveryIters, Loaded, Position};
use crate::config::ValidTrainConfig;
use crate::data::{self, Data};
use crate::error::{io, param};
use crate::hooks::{GradHook, LayerTransform};
use crate::metrics::{Accuracy, JsonlLog, MeanLoss, Metric, TrainCost};
use crate::render::{IterInfo, Renderer};
use crate::step::{StepBatch, StepCtx, TrainStep, Validation};
use crate::{steps, Error, Result, TrainConfig};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, D};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use temper_attacks::{Norm, PgdParams};
use temper_core::seed::rng_with;
use temper_core::{Classifier, Mode, Network, ParamStore};
use temper_data::Dataset;
use temper_eval::{EvalParams, NamedAttack, Threat};
use temper_sched::{Active, Optimizer, ParamGroups, Schedule};

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
    /// Every file a run writes.
    pub const ALL: &[&str] = &[CONFIG, METRICS, CHECKPOINT, LAST, BEST, SUMMARY];
}

/// How a run is driven.
pub struct RunOptions {
    /// Where progress goes.
    pub renderer: Box<dyn Renderer>,
    /// Stop (as if interrupted) after this many iterations in total; for tests and for
    /// budgeted runs. The run can be resumed afterwards.
    pub stop_after: Option<u64>,
    /// Run, in order, between each step's backward pass and the optimizer step.
    pub grad_hooks: Vec<Box<dyn GradHook>>,
    /// Kernels under every layer for the whole run (quantization-aware training); required
    /// exactly when the configuration's `quantize` is set, and with the same spec.
    pub layer_transform: Option<Box<dyn LayerTransform>>,
}

impl RunOptions {
    /// Progress to `renderer`, no stop, no hooks.
    pub fn new(renderer: Box<dyn Renderer>) -> Self {
        RunOptions {
            renderer,
            stop_after: None,
            grad_hooks: Vec::new(),
            layer_transform: None,
        }
    }
}

/// What a finished (or stopped) run reports; also the content of summary.json.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// The weight files the run directory holds (names inside it).
    #[serde(default)]
    pub files: Vec<String>,
}

/// Everything a run needs, built before the run directory is touched, so a configuration
/// that cannot start leaves nothing behind.
struct Setup {
    cfg: TrainConfig,
    model: Network,
    data: Data,
    optim: Box<dyn Optimizer>,
    schedule: Schedule,
    groups: ParamGroups,
    step: Box<dyn TrainStep>,
}

fn prepare(v: &ValidTrainConfig, device: &Device) -> Result<Setup> {
    let cfg = v.get().clone();
    temper_core::seed::set_seed(cfg.seed);
    let model = match &cfg.weights {
        Some(w) => {
            temper_models::build_from_file(&v.model, w, temper_core::weights::Strictness::Strict, device)?.0
        }
        None => temper_models::build(&v.model, device)?,
    };
    model.set_precision(cfg.precision);
    let data = data::load(&cfg)?;
    v.groups.check_store(model.params())?;
    Ok(Setup {
        step: steps::for_config(v)?,
        optim: v.optimizer.build()?,
        schedule: v.schedule.clone(),
        groups: v.groups.clone(),
        model,
        data,
        cfg,
    })
}

/// Installs the caller's layer kernels on the model when the configuration asks for them
/// (`quantize`), refusing a run given none, other ones, or kernels it does not record.
fn install_layer_transform(cfg: &TrainConfig, model: &Network, opts: &RunOptions) -> Result<()> {
    let given = opts.layer_transform.as_ref().map(|k| k.spec());
    match (&cfg.quantize, &opts.layer_transform, given) {
        (None, None, _) => Ok(()),
        (Some(spec), Some(k), Some(g)) if *spec == g => {
            model.add_hook(k.hook(model)?);
            Ok(())
        }
        (Some(spec), None, _) => Err(param(
            "quantize",
            format!("the run trains through the quantizer '{spec}', but no quantizer kernels were given"),
        )),
        (recorded, _, given) => Err(param(
            "quantize",
            format!(
                "the configuration records {} but the kernels given are '{}'",
                recorded
                    .as_deref()
                    .map_or("no quantizer".to_string(), |s| format!("'{s}'")),
                given.unwrap_or_default()
            ),
        )),
    }
}

/// Removes temporary files that an interrupted atomic write of one of the run's files left
/// behind (`fsutil::write_atomic` names them `.<file>.tmp-<pid>`).
fn clean_stale_temps(run_dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(run_dir).map_err(|e| io("cannot list", run_dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = files::ALL.iter().any(|f| name.starts_with(&format!(".{f}.tmp-")));
        if stale {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| io("cannot remove stale temporary file", &p, e))?;
        }
    }
    Ok(())
}

/// Starts a new run in `run_dir` (created; it must not already hold a run). Everything that
/// can fail before training (model, weights, data, groups) is checked before the directory
/// is written to; a run that fails before its first checkpoint removes what it wrote, so the
/// corrected command can use the same directory.
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
    let setup = prepare(&cfg, device)?;
    install_layer_transform(&setup.cfg, &setup.model, &opts)?;
    let created = !run_dir.exists();
    std::fs::create_dir_all(run_dir).map_err(|e| io("cannot create", run_dir, e))?;
    clean_stale_temps(run_dir)?;
    temper_core::fsutil::write_atomic(&run_dir.join(files::CONFIG), cfg.get().to_toml()?.as_bytes())?;
    let result = run(setup, run_dir, opts, None);
    if result.is_err() && !run_dir.join(files::CHECKPOINT).exists() {
        for f in files::ALL {
            let _ = std::fs::remove_file(run_dir.join(f));
        }
        if created {
            // Only succeeds when empty, so nothing of the user's is removed.
            let _ = std::fs::remove_dir(run_dir);
        }
    }
    result
}

/// Continues the run in `run_dir` from its checkpoint, with the configuration it was started
/// with. On CPU the result is bit-identical to a run that was never interrupted. A finished
/// run is left as it is and its summary returned.
pub fn resume(run_dir: &Path, device: &Device, mut opts: RunOptions) -> Result<TrainReport> {
    let cpath = run_dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&cpath).map_err(|e| io("cannot read", &cpath, e))?;
    let v = TrainConfig::from_toml(&text, &cpath)?.check()?;
    let setup = prepare(&v, device)?;
    install_layer_transform(&setup.cfg, &setup.model, &opts)?;
    clean_stale_temps(run_dir)?;
    let ckpt_path = run_dir.join(files::CHECKPOINT);
    let loaded = if ckpt_path.exists() {
        Some(checkpoint::load(&ckpt_path, device)?)
    } else {
        None
    };
    if loaded.is_none() {
        opts.renderer
            .message("no checkpoint yet: starting the run from its beginning");
    }
    if let Some(l) = &loaded {
        let p = &l.position;
        let finished = p.stopped.is_some() || p.epoch >= v.get().epochs as u64;
        if finished {
            if let Some(report) = read_summary(run_dir) {
                return Ok(report);
            }
        }
    }
    run(setup, run_dir, opts, loaded)
}

/// The summary of a finished run, when it is there, readable, and every weight file it
/// names exists.
fn read_summary(run_dir: &Path) -> Option<TrainReport> {
    let text = std::fs::read_to_string(run_dir.join(files::SUMMARY)).ok()?;
    let r: TrainReport = serde_json::from_str(&text).ok()?;
    r.files.iter().all(|f| run_dir.join(f).is_file()).then_some(r)
}

/// Clean and PGD-10 robust accuracy of `model` on `val` with the one evaluator,
/// `temper_eval::evaluate`, so validation numbers mean what `temper eval` numbers mean.
pub(crate) fn validate(
    model: &dyn Classifier,
    val: &Dataset,
    cfg: &TrainConfig,
    device: &Device,
    cost: &mut TrainCost,
) -> Result<(f64, f64)> {
    let eps = cfg.threat.eps;
    let attacks: Vec<NamedAttack> = vec![("pgd-10".to_string(), Box::new(validation_attack(eps)?))];
    let params = EvalParams {
        batch_size: 500,
        threat: Threat {
            norm: Norm::Linf,
            eps,
        },
        masking: None,
        state: None,
        cascade: false,
    }
    .check()?;
    // The evaluator draws its attack starts from the global seed's `eval` stream.
    temper_core::seed::set_seed(cfg.seed);
    let e = temper_eval::evaluate(model, val, &attacks, &params, device)?;
    cost.val_forward += e.cost.forward;
    cost.val_backward += e.cost.backward;
    let robust = e.attacks.first().map_or(f64::NAN, |a| a.robust.accuracy);
    Ok((e.clean.accuracy.accuracy, robust))
}

/// The validation attack: L-inf PGD-10 with step 2.5 eps / 10 (Madry et al.'s ratio) from a
/// random start.
pub fn validation_attack(eps: f64) -> Result<temper_attacks::Pgd> {
    Ok(PgdParams {
        eps,
        alpha: 2.5 * eps / 10.0,
        steps: 10,
        ..PgdParams::default()
    }
    .check()?)
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| param("summary", e.to_string()))?;
    temper_core::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// The name of the first tensor among `named` whose sum of absolute values is not finite.
fn first_non_finite<'a>(named: impl Iterator<Item = (&'a str, Tensor)>) -> Result<Option<String>> {
    let (names, sums): (Vec<&str>, Vec<Tensor>) = named
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.abs()?.sum_all()?)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    if sums.is_empty() {
        return Ok(None);
    }
    // One transfer for all tensors rather than one per tensor.
    let sums = Tensor::stack(&sums, 0)?.to_vec1::<f32>()?;
    Ok(sums
        .iter()
        .position(|s| !s.is_finite())
        .map(|i| names[i].to_string()))
}

fn non_finite_grad(store: &ParamStore, grads: &GradStore) -> Result<Option<String>> {
    first_non_finite(
        store
            .trainable()
            .filter_map(|e| grads.get(e.var.as_tensor()).map(|g| (e.name.as_str(), g.clone()))),
    )
}

fn non_finite_param(store: &ParamStore) -> Result<Option<String>> {
    first_non_finite(
        store
            .entries()
            .iter()
            .map(|e| (e.name.as_str(), e.var.as_tensor().clone())),
    )
}

fn save_weights(model: &Network, path: &Path, cfg: &TrainConfig) -> Result<()> {
    if let Some(name) = non_finite_param(model.params())? {
        return Err(Error::RunDir {
            path: path.to_path_buf(),
            reason: format!("refusing to save weights: '{name}' is not finite"),
        });
    }
    let mut meta = HashMap::from([
        ("temper.model".to_string(), cfg.model.kind.name().to_string()),
        ("temper.method".to_string(), cfg.method.name().to_string()),
    ]);
    if let Some(q) = &cfg.quantize {
        // The float weights of a quantization-aware run: what they were trained through.
        meta.insert("temper.quantize".to_string(), q.clone());
    }
    // The model's configuration (normalisation included) goes into the metadata, so the file
    // loads back into the same model without flags.
    temper_models::save(model, &cfg.model.clone().check()?, path, DType::F32, &meta)?;
    Ok(())
}

/// The weight files present in `run_dir`.
fn weight_files(run_dir: &Path) -> Vec<String> {
    [files::LAST, files::BEST]
        .into_iter()
        .filter(|f| run_dir.join(f).is_file())
        .map(str::to_string)
        .collect()
}

fn report(run_dir: &Path, pos: &Position, cost: TrainCost, best: &BestByMetric, total: u64) -> TrainReport {
    TrainReport {
        run_dir: run_dir.to_path_buf(),
        iters: pos.iter,
        epochs_done: pos.epoch,
        val_clean: pos.val_clean,
        val_robust: pos.val_robust,
        best_robust: best.best,
        cost,
        complete: pos.iter >= total,
        stopped: pos.stopped.clone(),
        files: weight_files(run_dir),
    }
}

/// Ends a run whose loss or gradients stopped being finite at iteration `iter` (0-based):
/// nothing is applied or saved; the summary says why and names only files that exist.
fn diverged(
    run_dir: &Path,
    mut pos: Position,
    cost: TrainCost,
    best: &BestByMetric,
    total: u64,
    iter: u64,
    reason: String,
) -> Error {
    pos.stopped = Some(format!("diverged at iteration {}: {reason}", iter + 1));
    let r = report(run_dir, &pos, cost, best, total);
    let mut kept: Vec<String> = r.files.clone();
    if run_dir.join(files::CHECKPOINT).is_file() {
        kept.push(format!("{} (a resumable earlier state)", files::CHECKPOINT));
    }
    let kept = if kept.is_empty() {
        "no weights were saved".to_string()
    } else {
        format!("the run directory keeps {}", kept.join(", "))
    };
    if let Err(e) = write_json(&run_dir.join(files::SUMMARY), &r) {
        return e;
    }
    Error::Diverged {
        iter: iter + 1,
        reason,
        kept,
    }
}

/// One optimizer step on the groups `active` names (all of them for `None`).
fn apply(
    optim: &mut dyn Optimizer,
    model: &Network,
    grads: &GradStore,
    lr: f64,
    groups: &ParamGroups,
    active: Option<&[String]>,
) -> Result<()> {
    let names: Vec<&str> = active.iter().flat_map(|a| a.iter()).map(String::as_str).collect();
    let active = match active {
        None => Active::All,
        Some(_) => Active::Only(&names),
    };
    optim.step_groups(model.params(), grads, lr, groups, active)?;
    Ok(())
}

fn run(s: Setup, run_dir: &Path, mut opts: RunOptions, resume_from: Option<Loaded>) -> Result<TrainReport> {
    let Setup {
        cfg,
        model,
        data: Data { loader, val },
        mut optim,
        schedule,
        groups,
        mut step,
    } = s;
    let device = model.device().clone();
    let started = Instant::now();
    let ckpt_path = run_dir.join(files::CHECKPOINT);
    let mut pos = Position {
        epoch: 0,
        batch: 0,
        iter: 0,
        best_robust: None,
        cost: TrainCost::default(),
        stopped: None,
        val_clean: None,
        val_robust: None,
    };
    let mut renderer = std::mem::replace(&mut opts.renderer, Box::new(crate::render::Silent));
    if let Some(k) = step.wrap_kernels(model.kernels()) {
        model.set_kernels(k);
    }
    if let Some(l) = resume_from {
        checkpoint::restore_model(model.params(), &l.model, &ckpt_path)?;
        optim.import_state(model.params(), &l.optim)?;
        pos = l.position;
    }
    let prior_wall = pos.cost.wall_seconds;
    // Lines after the checkpoint's iteration (all of them for a fresh start) belong to an
    // interrupted attempt and are dropped.
    let mut log = JsonlLog::open(&run_dir.join(files::METRICS), Some(pos.iter))?;
    let policy: Box<dyn CheckpointPolicy> = Box::new(EveryIters {
        every: cfg.checkpoint_every,
    });
    let mut best = BestByMetric {
        best: pos.best_robust,
    };
    let per_epoch = loader.len() as u64;
    let total = per_epoch * cfg.epochs as u64;
    renderer.start(total, pos.iter);
    let mut metrics: Vec<Box<dyn Metric>> =
        vec![Box::new(MeanLoss::default()), Box::new(Accuracy::default())];
    let attack_model = AttackView::new(&model, cfg.attack_bn);
    let mut cost = pos.cost;
    'epochs: while pos.epoch < cfg.epochs as u64 && pos.stopped.is_none() {
        let epoch = pos.epoch;
        for m in metrics.iter_mut() {
            m.clear();
        }
        step.start_epoch(epoch);
        for batch in loader.epoch_from(epoch, pos.batch, &device) {
            let b = batch?;
            let iter = pos.iter;
            let lr = schedule.lr(epoch as f64 + b.index as f64 / per_epoch as f64);
            let y = b.labels.to_dtype(DType::U32)?;
            let n = y.dim(0)? as u64;
            let mut rng = rng_with(cfg.seed, &format!("temper-train/attack/{iter}"));
            model.set_dropout_rng(rng_with(cfg.seed, &format!("temper-train/dropout/{iter}")));
            if let Some(pre) = step.pre_update(&model)? {
                if let Some(name) = non_finite_grad(model.params(), &pre.grads)? {
                    renderer.finish();
                    let reason = format!("the gradient of '{name}' before the batch is not finite");
                    return Err(diverged(run_dir, pos, cost, &best, total, iter, reason));
                }
                apply(
                    optim.as_mut(),
                    &model,
                    &pre.grads,
                    lr,
                    &groups,
                    pre.active.as_deref(),
                )?;
            }
            model.set_mode(Mode::Train);
            let out = step.step(
                StepBatch { x: &b.images, y: &y },
                StepCtx {
                    model: &model,
                    attack_model: &attack_model,
                    rng: &mut rng,
                    cost: &mut cost,
                },
            );
            model.set_mode(Mode::Eval);
            let mut out = out?;
            // Checked before anything is applied: a non-finite update would poison the
            // weights, the optimizer state and every file written afterwards.
            if !out.loss.is_finite() {
                renderer.finish();
                let reason = format!("the loss is {}", out.loss);
                return Err(diverged(run_dir, pos, cost, &best, total, iter, reason));
            }
            for h in opts.grad_hooks.iter_mut() {
                h.on_grads(iter, model.params(), &mut out.grads)?;
            }
            if let Some(name) = non_finite_grad(model.params(), &out.grads)? {
                renderer.finish();
                let reason = format!("the gradient of '{name}' is not finite");
                return Err(diverged(run_dir, pos, cost, &best, total, iter, reason));
            }
            apply(
                optim.as_mut(),
                &model,
                &out.grads,
                lr,
                &groups,
                out.active.as_deref(),
            )?;
            step.after_update(model.params())?;
            let pred = out.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let yv = y.to_vec1::<u32>()?;
            for m in metrics.iter_mut() {
                m.update(&pred, &yv, out.loss);
            }
            cost.images += n;
            pos.iter += 1;
            pos.batch = b.index + 1;
            let epoch_now = epoch as f64 + pos.batch as f64 / per_epoch as f64;
            let (mloss, macc) = (metrics[0].compute(), metrics[1].compute());
            renderer.iter(&IterInfo {
                iter: pos.iter,
                total,
                epoch: epoch_now,
                loss: mloss,
                acc: macc,
                lr,
            });
            if pos.iter.is_multiple_of(cfg.log_every) {
                log.write(&json!({"kind": "train", "epoch": epoch_now, "iter": pos.iter,
                    "loss": mloss, "acc": macc, "lr": lr}))?;
            }
            let epoch_end = pos.batch as u64 >= per_epoch;
            if epoch_end {
                // Validation belongs to the epoch, before its checkpoint.
                if let Some(val) = &val {
                    let (c, r) = validate(&model, val, &cfg, &device, &mut cost)?;
                    pos.val_clean = Some(c);
                    pos.val_robust = Some(r);
                    log.write(
                        &json!({"kind": "val", "epoch": (epoch + 1) as f64, "iter": pos.iter,
                        "clean_acc": c, "robust_acc": r}),
                    )?;
                    renderer.message(&format!(
                        "epoch {}/{}: val clean {:.2}%  PGD-10 robust {:.2}% (eps {:.4})",
                        epoch + 1,
                        cfg.epochs,
                        100.0 * c,
                        100.0 * r,
                        cfg.threat.eps
                    ));
                    let best_before = best.best;
                    if best.improves(r) {
                        save_weights(&model, &run_dir.join(files::BEST), &cfg)?;
                    }
                    let v = Validation {
                        epoch: epoch + 1,
                        clean: c,
                        robust: r,
                        best_before,
                    };
                    if let Some(reason) = step.after_validation(&v) {
                        renderer.message(&reason);
                        pos.stopped = Some(reason);
                    }
                }
                pos.epoch += 1;
                pos.batch = 0;
            }
            if policy.should_save(pos.iter, epoch_end) || pos.stopped.is_some() {
                pos.best_robust = best.best;
                cost.wall_seconds = prior_wall + started.elapsed().as_secs_f64();
                pos.cost = cost;
                if let Some(name) = non_finite_param(model.params())? {
                    renderer.finish();
                    let reason = format!("'{name}' is not finite after the update");
                    return Err(diverged(run_dir, pos, cost, &best, total, iter, reason));
                }
                checkpoint::save(&ckpt_path, model.params(), &optim.export_state()?, &pos)?;
            }
            if pos.stopped.is_some() {
                break 'epochs;
            }
            if opts.stop_after.is_some_and(|s| pos.iter >= s) {
                renderer.finish();
                pos.best_robust = best.best;
                return Ok(report(run_dir, &pos, cost, &best, total));
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
    let r = report(run_dir, &pos, cost, &best, total);
    write_json(&run_dir.join(files::SUMMARY), &r)?;
    Ok(r)
}
