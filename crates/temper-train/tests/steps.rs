//! Training steps: each method learns on a tiny problem, the attack's BatchNorm mode updates
//! running statistics as the reference does, the catastrophic-overfitting stop fires, and
//! gradient hooks run between backward and the optimizer step.

mod common;

use anyhow::{ensure, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use common::{config, opts, val_set};
use temper_attacks::PgdParams;
use temper_core::{Classifier, Mode, ParamStore};
use temper_eval::{EvalParams, Threat};
use temper_models::{ModelConfig, ModelKind};
use temper_train::attack_bn::AttackView;
use temper_train::hooks::GradHook;
use temper_train::metrics::TrainCost;
use temper_train::step::{StepBatch, StepCtx, TrainStep, Validation};
use temper_train::steps::{FastAt, PgdAt, Trades};
use temper_train::{files, train, AttackBn, Method, TrainConfig};

/// Clean and PGD-10 accuracy of `model` on the run's validation set, with the evaluator.
fn accuracy(model: &dyn Classifier, cfg: &TrainConfig) -> Result<(f64, f64)> {
    let val = val_set(cfg)?;
    let eps = cfg.threat.eps;
    let pgd = PgdParams {
        eps,
        alpha: 2.5 * eps / 10.0,
        steps: 10,
        ..PgdParams::default()
    }
    .check()?;
    let params = EvalParams {
        batch_size: 500,
        threat: Threat {
            norm: temper_attacks::Norm::Linf,
            eps,
        },
        masking: None,
        state: None,
        cascade: false,
    }
    .check()?;
    temper_core::seed::set_seed(cfg.seed);
    let e = temper_eval::evaluate(
        model,
        &val,
        &[("pgd-10".into(), Box::new(pgd))],
        &params,
        &Device::Cpu,
    )?;
    Ok((e.clean.accuracy.accuracy, e.attacks[0].robust.accuracy))
}

/// The model a run starts from (the trainer seeds initialisation with the run's seed).
fn initial(cfg: &TrainConfig) -> Result<temper_core::Network> {
    temper_core::seed::set_seed(cfg.seed);
    Ok(temper_models::build(&cfg.model.clone().check()?, &Device::Cpu)?)
}

/// A tiny problem: 1280 digits, 2 epochs of 20 iterations with Adam, eps 0.1.
fn tiny(method: Method) -> TrainConfig {
    let mut c = config(method);
    c.train_size = Some(1280);
    c.epochs = 2;
    c.val_size = 200;
    c.threat.eps = 0.1;
    c.threat.alpha = if method == Method::FgsmRs { 0.125 } else { 0.04 };
    c.threat.steps = 3;
    c.lr_schedule = "constant:lr=0.002".into();
    c.optimizer = "adamw:weight_decay=0".into();
    c
}

#[test]
fn every_method_learns_on_a_tiny_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (c0, r0) = accuracy(&initial(&tiny(Method::Natural))?, &tiny(Method::Natural))?;
    let mut natural_weights = None;
    for method in [Method::Natural, Method::PgdAt, Method::FgsmRs, Method::Trades] {
        let cfg = tiny(method);
        let d = dir.path().join(method.name());
        let r = train(cfg.check()?, &d, &Device::Cpu, opts(None))?;
        let (c, rob) = (r.val_clean.unwrap_or(0.0), r.val_robust.unwrap_or(0.0));
        eprintln!(
            "{}: clean {c0:.3} -> {c:.3}, robust {r0:.3} -> {rob:.3}",
            method.name()
        );
        ensure!(r.complete && r.stopped.is_none(), "{method:?}: {:?}", r.stopped);
        ensure!(
            c > c0 + 0.3,
            "{method:?}: clean accuracy {c0} -> {c} did not improve"
        );
        if method.is_adversarial() {
            ensure!(
                rob > r0 + 0.1,
                "{method:?}: robust accuracy {r0} -> {rob} did not improve"
            );
        }
        if method == Method::Natural {
            natural_weights = Some(d.join(files::LAST));
        }
    }
    // Fine-tuning starts from the naturally trained weights and must make them more robust.
    let mut cfg = tiny(Method::Finetune);
    cfg.weights = natural_weights;
    let start = temper_models::build_from_file(
        &cfg.model.clone().check()?,
        cfg.weights.clone().unwrap_or_default(),
        temper_core::weights::Strictness::Strict,
        &Device::Cpu,
    )?
    .0;
    let (_, before) = accuracy(&start, &cfg)?;
    let r = train(
        cfg.check()?,
        &dir.path().join("finetune"),
        &Device::Cpu,
        opts(None),
    )?;
    let after = r.val_robust.unwrap_or(0.0);
    eprintln!("finetune: robust {before:.3} -> {after:.3}");
    ensure!(
        after > before + 0.05,
        "finetune: robust accuracy {before} -> {after} did not improve"
    );
    Ok(())
}

/// A narrow PreAct ResNet-18 (BatchNorm everywhere) on 28x28 grey inputs.
fn bn_model() -> Result<temper_core::Network> {
    let mut m = ModelConfig::new(ModelKind::PreActResNet18, 10);
    m.width = 0.125;
    m.in_channels = 1;
    m.input_size = (28, 28);
    temper_core::seed::set_seed(3);
    Ok(temper_models::build(&m.check()?, &Device::Cpu)?)
}

fn batches_tracked(store: &ParamStore) -> Result<i64> {
    let e = store
        .entries()
        .iter()
        .find(|e| e.name.ends_with("num_batches_tracked"))
        .ok_or_else(|| anyhow::anyhow!("no BatchNorm"))?;
    Ok(e.var.as_tensor().to_dtype(DType::I64)?.to_scalar::<i64>()?)
}

/// Runs one step of `step` on a batch of 8 digits with the attack in mode `bn`, and returns
/// how many times BatchNorm updated its running statistics.
fn updates(step: &mut dyn TrainStep, bn: AttackBn) -> Result<i64> {
    let model = bn_model()?;
    let ds = temper_data::load("mnist10k", None, temper_data::Split::Train)?;
    let b = ds.batch(&(0..8).collect::<Vec<_>>(), &Device::Cpu)?;
    let y = b.labels.to_dtype(DType::U32)?;
    let before = batches_tracked(model.params())?;
    let view = AttackView::new(&model, bn);
    let mut rng = temper_core::seed::rng("test");
    let mut cost = TrainCost::default();
    model.set_mode(Mode::Train);
    step.step(
        StepBatch { x: &b.images, y: &y },
        StepCtx {
            model: &model,
            attack_model: &view,
            rng: &mut rng,
            cost: &mut cost,
        },
    )?;
    ensure!(model.mode() == Mode::Train, "the step changed the model's mode");
    Ok(batches_tracked(model.params())? - before)
}

#[test]
fn attack_bn_updates_running_statistics_as_the_reference() -> Result<()> {
    // Wong et al.'s Fast-AT in train mode: one attack forward and one training forward.
    ensure!(updates(&mut FastAt::new(0.1, 0.125, 0.2)?, AttackBn::Train)? == 2);
    ensure!(updates(&mut FastAt::new(0.1, 0.125, 0.2)?, AttackBn::Eval)? == 1);
    // PGD-AT: one update per attack step (Rice et al. make one more, to score the final
    // point), and Temper's own extra forwards (the final success check) leave none.
    ensure!(updates(&mut PgdAt::new(0.1, 0.04, 3)?, AttackBn::Train)? == 4);
    ensure!(updates(&mut PgdAt::new(0.1, 0.04, 3)?, AttackBn::Eval)? == 1);
    // TRADES trains on two forwards (perturbed and clean); its reference attacks in eval.
    ensure!(updates(&mut Trades::new(0.1, 0.04, 3, 6.0), AttackBn::Eval)? == 2);
    ensure!(updates(&mut Trades::new(0.1, 0.04, 3, 6.0), AttackBn::Train)? == 5);
    Ok(())
}

#[test]
fn attack_bn_defaults_follow_the_references() -> Result<()> {
    let m = ModelConfig::new(ModelKind::SmallCnn, 10);
    for (method, bn) in [
        (Method::PgdAt, AttackBn::Train),
        (Method::FgsmRs, AttackBn::Train),
        (Method::Finetune, AttackBn::Train),
        (Method::Trades, AttackBn::Eval),
    ] {
        ensure!(
            TrainConfig::new(method, m.clone(), "mnist10k").attack_bn == bn,
            "{method:?}"
        );
    }
    // A config.toml written before the setting existed resumes as it ran: eval mode.
    let text = TrainConfig::new(Method::PgdAt, m, "mnist10k").to_toml()?;
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("attack_bn"))
        .map(|l| format!("{l}\n"))
        .collect();
    ensure!(TrainConfig::from_toml(&old, "config.toml".as_ref())?.attack_bn == AttackBn::Eval);
    Ok(())
}

#[test]
fn attack_in_train_mode_uses_batch_statistics() -> Result<()> {
    // With BatchNorm the two modes see different models, so they find different points.
    let model = bn_model()?;
    let ds = temper_data::load("mnist10k", None, temper_data::Split::Train)?;
    let b = ds.batch(&(0..8).collect::<Vec<_>>(), &Device::Cpu)?;
    let y = b.labels.to_dtype(DType::U32)?;
    let pgd = PgdParams {
        eps: 0.1,
        alpha: 0.04,
        steps: 3,
        random_start: false,
        ..PgdParams::default()
    }
    .check()?;
    let run = |bn| -> Result<Tensor> {
        let view = AttackView::new(&model, bn);
        let mut rng = temper_core::seed::rng("test");
        use temper_attacks::Attack;
        Ok(pgd
            .perturb(&view, &b.images, &y, temper_attacks::Goal::Untargeted, &mut rng)?
            .adv)
    };
    let d = (run(AttackBn::Train)? - run(AttackBn::Eval)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    ensure!(d > 0.0, "train and eval mode attacks found the same points");
    Ok(())
}

#[test]
fn catastrophic_overfitting_stop_fires_on_a_collapse() -> Result<()> {
    let mut s = FastAt::new(0.1, 0.125, 0.2)?;
    let v = |robust, best_before| Validation {
        epoch: 4,
        clean: 0.95,
        robust,
        best_before,
    };
    // Robust accuracy collapsing from 45% to 5% (FGSM accuracy would keep rising).
    let why = s.after_validation(&v(0.05, Some(0.45))).unwrap_or_default();
    ensure!(
        why.contains("catastrophic overfitting") && why.contains("45.0%"),
        "{why}"
    );
    // A drop within the tolerance, an improvement, and the first epoch do not stop the run.
    ensure!(s.after_validation(&v(0.30, Some(0.45))).is_none());
    ensure!(s.after_validation(&v(0.50, Some(0.45))).is_none());
    ensure!(s.after_validation(&v(0.0, None)).is_none());
    // The other methods never stop on it.
    ensure!(PgdAt::new(0.1, 0.04, 3)?
        .after_validation(&v(0.05, Some(0.45)))
        .is_none());
    Ok(())
}

/// Replaces every gradient by zero and records the iterations it saw.
struct ZeroGrads {
    seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl GradHook for ZeroGrads {
    fn on_grads(
        &mut self,
        iter: u64,
        params: &ParamStore,
        grads: &mut GradStore,
    ) -> temper_train::Result<()> {
        if let Ok(mut s) = self.seen.lock() {
            s.push(iter);
        }
        for e in params.trainable() {
            if let Some(g) = grads.get(e.var.as_tensor()) {
                let z = g.zeros_like()?;
                grads.insert(e.var.as_tensor(), z);
            }
        }
        Ok(())
    }
}

#[test]
fn gradient_hooks_run_between_backward_and_step() -> Result<()> {
    // Plain SGD applies exactly the gradients the hook leaves: zeros keep the initial weights.
    let dir = tempfile::tempdir()?;
    let mut cfg = config(Method::PgdAt);
    cfg.optimizer = "sgd:momentum=0,weight_decay=0".into();
    cfg.val_split = 0.0;
    let start = common::bits_of(&initial(&cfg)?)?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut o = opts(None);
    o.grad_hooks.push(Box::new(ZeroGrads { seen: seen.clone() }));
    let r = train(cfg.check()?, &dir.path().join("run"), &Device::Cpu, o)?;
    let after = common::bits(&dir.path().join("run").join(files::LAST))?;
    ensure!(start == after, "the optimizer did not apply the hook's gradients");
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(seen == (0..r.iters).collect::<Vec<_>>(), "hook saw {seen:?}");
    Ok(())
}

#[test]
fn fast_at_takes_its_step_size_from_alpha() -> Result<()> {
    // Wong et al.'s default step, 1.25 eps...
    let c = TrainConfig::new(
        Method::FgsmRs,
        ModelConfig::new(ModelKind::SmallCnn, 10),
        "mnist10k",
    );
    ensure!(
        (c.threat.alpha - 1.25 * c.threat.eps).abs() < 1e-12,
        "{:?}",
        c.threat
    );
    // ...and a different alpha trains differently.
    let dir = tempfile::tempdir()?;
    let run = |alpha: f64, name: &str| -> Result<Vec<(String, Vec<u32>)>> {
        let mut c = config(Method::FgsmRs);
        c.epochs = 1;
        c.val_split = 0.0;
        c.threat.eps = 0.1;
        c.threat.alpha = alpha;
        let d = dir.path().join(name);
        train(c.check()?, &d, &Device::Cpu, opts(None))?;
        common::bits(&d.join(files::LAST))
    };
    ensure!(
        run(0.125, "a")? != run(0.05, "b")?,
        "--alpha does not change Fast-AT"
    );
    Ok(())
}
