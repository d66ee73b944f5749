//! Learn2Perturb: the noise scales' regularizer step and clamp against the reference
//! `train.py` in PyTorch (tests/fixtures/l2p/make_fixtures.py), and short runs of
//! `--method l2p` and `--method hero` through the trainer (resumable, weights that load back).

mod common;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use common::{bits, opts};
use std::collections::HashMap;
use std::path::PathBuf;
use temper_core::noise::is_scale;
use temper_core::{Classifier, Normalization};
use temper_models::{ModelConfig, ModelKind};
use temper_sched::{Active, OptimizerConfig, ParamGroups};
use temper_train::step::TrainStep;
use temper_train::steps::{L2pParams, Learn2Perturb};
use temper_train::{files, resume, train, Method, TrainConfig};

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn the_noise_regularizer_step_equals_the_reference() -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/l2p");
    let t: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("l2p.safetensors"), &Device::Cpu)?;
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("l2p.json"))?)?;
    let num = |k: &str| s[k].as_f64().with_context(|| format!("l2p.json has no {k}"));
    let get = |k: &str| t.get(k).cloned().with_context(|| format!("fixture has no {k}"));
    let cfg = ModelConfig {
        width: 1.0 / 16.0,
        noise_injection: true,
        normalization: Some(Normalization::identity(3)),
        ..ModelConfig::new(ModelKind::PreActResNet18, 10)
    }
    .check()?;
    let net = temper_models::build(&cfg, &Device::Cpu)?;
    let scales: Vec<String> = net
        .params()
        .trainable()
        .filter(|e| is_scale(&e.name))
        .map(|e| e.name.clone())
        .collect();
    let names: Vec<String> = serde_json::from_value(s["names"].clone())?;
    ensure!(
        scales == names,
        "Temper's scales {scales:?}, the fixture's {names:?}"
    );
    for n in &names {
        net.params()
            .get(n)
            .context("scale")?
            .var
            .set(&get(&format!("before.{n}"))?)?;
    }
    let before: Vec<Tensor> = net
        .params()
        .entries()
        .iter()
        .map(|e| e.var.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;

    let params = L2pParams {
        gamma: num("gamma")?,
        noise_delay: 4,
        adv_delay: 0,
    };
    let mut step = Learn2Perturb::new(params.check()?, 0.1, 0.01, 1)?;
    // The reference's harmonic number H_3 three epochs after its noise delay is Temper's in
    // the third epoch with noise (it counts the current epoch).
    let epochs = num("epochs_with_noise")? as u64;
    step.start_epoch(params.noise_delay + epochs - 1);
    ensure!((step.coefficient() - num("coef")?).abs() <= 1e-12 * num("coef")?);
    // Before the noise is switched on there is no update of the scales.
    let mut early = Learn2Perturb::new(params.check()?, 0.1, 0.01, 1)?;
    early.start_epoch(params.noise_delay - 1);
    ensure!(early.pre_update(&net)?.is_none());

    let pre = step.pre_update(&net)?.context("an update of the scales")?;
    ensure!(pre.active.is_none());
    let reg = temper_train::steps::l2p::regularizer(net.params(), step.coefficient())?.context("scales")?;
    let r = reg.to_scalar::<f32>()? as f64;
    ensure!(
        (r - num("loss2")?).abs() <= 1e-6 * num("loss2")?.abs(),
        "R {r} vs {}",
        num("loss2")?
    );
    for n in &names {
        let g = pre
            .grads
            .get(net.params().get(n).context("scale")?.var.as_tensor())
            .context("grad")?;
        let d = max_abs(g, &get(&format!("grad.{n}"))?)?;
        ensure!(d <= 1e-9, "{n}: gradient off by {d}");
    }
    // The reference's second optimizer: SGD, Nesterov momentum 0.9, no weight decay; then
    // the clamp at 0.01.
    let mut opt = format!("sgd:momentum={},nesterov=true,weight_decay=0", num("momentum")?)
        .parse::<OptimizerConfig>()?
        .build()?;
    opt.step_groups(
        net.params(),
        &pre.grads,
        num("lr")?,
        &ParamGroups::default(),
        Active::All,
    )?;
    step.after_update(net.params())?;
    for (e, b) in net.params().entries().iter().zip(&before) {
        let d = if is_scale(&e.name) {
            max_abs(e.var.as_tensor(), &get(&format!("after.{}", e.name))?)?
        } else {
            // Nothing but the scales has a gradient, so nothing else moves.
            let d = max_abs(
                &e.var.as_tensor().to_dtype(candle_core::DType::F32)?,
                &b.to_dtype(candle_core::DType::F32)?,
            )?;
            ensure!(d == 0.0, "{} moved", e.name);
            d
        };
        ensure!(d <= 1e-7, "{}: off by {d} after the step and the clamp", e.name);
    }
    Ok(())
}

/// The trainer tests' tiny run (320 digits, batches of 64, 2 epochs) with preact-resnet18 at
/// width 1/16 on 28x28 digits.
fn tiny(method: Method) -> TrainConfig {
    let mut c = common::config(method);
    c.model = ModelConfig {
        width: 1.0 / 16.0,
        in_channels: 1,
        input_size: (28, 28),
        noise_injection: method == Method::L2p,
        ..ModelConfig::new(ModelKind::PreActResNet18, 10)
    };
    c.val_size = 20;
    c.lr_schedule = "constant:lr=0.05".into();
    c
}

#[test]
fn l2p_trains_its_noise_and_resumes_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    ensure!(
        TrainConfig::new(Method::L2p, tiny(Method::Natural).model, "mnist10k")
            .model
            .noise_injection,
        "l2p turns the noise modules on"
    );
    let mut cfg = tiny(Method::L2p);
    cfg.l2p.noise_delay = 1;
    let whole = dir.path().join("whole");
    let r = train(cfg.clone().check()?, &whole, &Device::Cpu, opts(None))?;
    ensure!(r.complete && r.epochs_done == 2, "{r:?}");
    // The weights load back into the noisy model from the file alone.
    let plain = ModelConfig {
        noise_injection: false,
        ..cfg.model.clone()
    }
    .check()?;
    let (found, _) = temper_models::config_for_file(&plain, &whole.join(files::LAST))?;
    let (net, _) = temper_models::build_from_file(
        &found,
        whole.join(files::LAST),
        temper_core::weights::Strictness::Strict,
        &Device::Cpu,
    )?;
    // The scales moved in the epoch with noise, and none is below the floor.
    let mut moved = false;
    for e in net.params().trainable().filter(|e| is_scale(&e.name)) {
        let v = e.var.flatten_all()?.to_vec1::<f32>()?;
        ensure!(v.iter().all(|s| *s >= 0.01 - 1e-7), "{} below 0.01", e.name);
        moved |= v.iter().any(|s| (*s - 0.25).abs() > 1e-6);
    }
    ensure!(moved, "no noise scale was trained");
    // Interrupted after 3 iterations (mid first epoch) and resumed: the same bits.
    let split = dir.path().join("split");
    train(cfg.check()?, &split, &Device::Cpu, opts(Some(3)))?;
    resume(&split, &Device::Cpu, opts(None))?;
    ensure!(bits(&whole.join(files::LAST))? == bits(&split.join(files::LAST))?);
    Ok(())
}

#[test]
fn hero_runs_through_the_trainer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = tiny(Method::Hero);
    cfg.epochs = 1;
    cfg.hero.rho = 0.05;
    let r = train(
        cfg.clone().check()?,
        &dir.path().join("hero"),
        &Device::Cpu,
        opts(None),
    )?;
    ensure!(r.complete && r.val_clean.is_some(), "{r:?}");
    // Four passes per image: at W, at W', and the two finite differences.
    ensure!(
        r.cost.forward == 4 * 320 && r.cost.backward == 4 * 320,
        "{:?}",
        r.cost
    );
    // HERO refuses models whose passes differ by more than the weights.
    let mut noisy = cfg.clone();
    noisy.model.noise_injection = true;
    ensure!(noisy.check().is_err());
    let mut vgg = cfg;
    vgg.model = ModelConfig::new(ModelKind::Vgg16Bn, 10);
    let e = vgg.check().err().context("vgg with dropout")?;
    ensure!(e.to_string().contains("dropout"), "{e}");
    Ok(())
}
