//! Parameter groups: learning-rate multipliers, frozen groups, alternating updates, and the
//! errors that catch misspelt groups.

use anyhow::{ensure, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use temper_core::{Builder, Init, ParamStore, Role};
use temper_sched::{Active, Optimizer, OptimizerConfig, ParamGroup, ParamGroups};

/// A "backbone" and a "head", each a weight and a bias.
fn model() -> Result<ParamStore> {
    let b = Builder::new(&Device::Cpu, temper_core::seed::rng("groups-test"));
    b.param("backbone.weight", &[3, 3], Init::Uniform(0.5), Role::Weight)?;
    b.param("backbone.bias", &[3], Init::Uniform(0.5), Role::NoDecay)?;
    b.param("head.weight", &[2, 3], Init::Uniform(0.5), Role::Weight)?;
    b.param("head.bias", &[2], Init::Uniform(0.5), Role::NoDecay)?;
    Ok(b.finish())
}

fn loss_grads(store: &ParamStore) -> Result<GradStore> {
    let x = Tensor::new(&[[0.3f32, -0.7, 1.1]], &Device::Cpu)?;
    let p = |n: &str| {
        store
            .get(n)
            .map(|e| e.var.as_tensor().clone())
            .ok_or_else(|| anyhow::anyhow!(n.to_string()))
    };
    let h = x
        .matmul(&p("backbone.weight")?.t()?)?
        .broadcast_add(&p("backbone.bias")?)?
        .tanh()?;
    let out = h
        .matmul(&p("head.weight")?.t()?)?
        .broadcast_add(&p("head.bias")?)?;
    Ok(out.sqr()?.sum_all()?.backward()?)
}

fn values(store: &ParamStore) -> Result<Vec<(String, Vec<f32>)>> {
    store
        .entries()
        .iter()
        .map(|e| Ok((e.name.clone(), e.var.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

fn optim(spec: &str) -> Result<Box<dyn Optimizer>> {
    Ok(spec.parse::<OptimizerConfig>()?.build()?)
}

#[test]
fn lr_scale_multiplies_the_scheduled_rate() -> Result<()> {
    // Plain SGD: p - lr * g, so a group at scale 0.1 with lr 1 equals no groups with lr 0.1.
    let (a, b) = (model()?, model()?);
    let groups = ParamGroups::new(vec![ParamGroup::new("head", &["head."]).lr_scale(0.1)])?;
    groups.check_store(&a)?;
    let mut oa = optim("sgd:momentum=0,weight_decay=0")?;
    oa.step_groups(&a, &loss_grads(&a)?, 1.0, &groups, Active::All)?;
    let gb = loss_grads(&b)?;
    // The same update done by hand, per parameter.
    for e in b.trainable() {
        let lr = if e.name.starts_with("head.") { 0.1 } else { 1.0 };
        let g = gb
            .get(e.var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no grad"))?;
        e.var.set(&(e.var.as_tensor() - (g * lr)?)?)?;
    }
    let (va, vb) = (values(&a)?, values(&b)?);
    for ((n, x), (_, y)) in va.iter().zip(&vb) {
        for (p, q) in x.iter().zip(y) {
            ensure!((p - q).abs() <= 1e-6, "{n}: {p} vs {q}");
        }
    }
    Ok(())
}

#[test]
fn frozen_groups_keep_values_and_state() -> Result<()> {
    let store = model()?;
    let before = values(&store)?;
    let groups = ParamGroups::new(vec![ParamGroup::new("backbone", &["backbone."]).frozen()])?;
    let mut opt = optim("sgd:momentum=0.9,weight_decay=5e-4")?;
    for _ in 0..3 {
        opt.step_groups(&store, &loss_grads(&store)?, 0.1, &groups, Active::All)?;
    }
    let after = values(&store)?;
    for ((n, x), (_, y)) in before.iter().zip(&after) {
        if n.starts_with("backbone.") {
            ensure!(x == y, "{n} changed although frozen");
        } else {
            ensure!(x != y, "{n} did not train");
        }
    }
    let state = opt.export_state()?;
    ensure!(
        !state.iter().any(|(k, _)| k.contains("backbone.")),
        "state kept for a frozen group"
    );
    ensure!(state.iter().any(|(k, _)| k == "momentum_buffer.head.weight"));
    Ok(())
}

#[test]
fn alternating_updates_equal_two_optimizers() -> Result<()> {
    // One optimizer updating "head" on even steps and "default" (the rest) on odd steps
    // equals two optimizers that each own one set of parameters (PyTorch's way).
    let (a, b) = (model()?, model()?);
    let groups = ParamGroups::new(vec![ParamGroup::new("head", &["head."])])?;
    let mut one = optim("adamw:weight_decay=0.01")?;
    let mut head_opt = optim("adamw:weight_decay=0.01")?;
    let mut rest_opt = optim("adamw:weight_decay=0.01")?;
    let only_head = ParamGroups::new(vec![ParamGroup::new("rest", &["backbone."]).frozen()])?;
    let only_rest = ParamGroups::new(vec![ParamGroup::new("head", &["head."]).frozen()])?;
    for it in 0..4 {
        let names: &[&str] = if it % 2 == 0 { &["head"] } else { &["default"] };
        one.step_groups(&a, &loss_grads(&a)?, 0.01, &groups, Active::Only(names))?;
        let gb = loss_grads(&b)?;
        if it % 2 == 0 {
            head_opt.step_groups(&b, &gb, 0.01, &only_head, Active::All)?;
        } else {
            rest_opt.step_groups(&b, &gb, 0.01, &only_rest, Active::All)?;
        }
    }
    ensure!(
        values(&a)? == values(&b)?,
        "alternating updates differ from two optimizers"
    );
    Ok(())
}

#[test]
fn bad_groups_are_errors_that_name_the_group() -> Result<()> {
    let err = |r: temper_sched::Result<ParamGroups>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let e = err(ParamGroups::new(vec![
        ParamGroup::new("head", &["head."]).lr_scale(-1.0)
    ]));
    ensure!(e.contains("param_groups.head") && e.contains("lr_scale"), "{e}");
    let e = err(ParamGroups::new(vec![
        ParamGroup::new("head", &["head."]),
        ParamGroup::new("head", &["fc."]),
    ]));
    ensure!(e.contains("twice"), "{e}");
    let e = err(ParamGroups::new(vec![ParamGroup::new("default", &["x"])]));
    ensure!(e.contains("default"), "{e}");
    // A misspelt prefix claims nothing.
    let g = ParamGroups::new(vec![ParamGroup::new("head", &["haed."])])?;
    let e = g
        .check_store(&model()?)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(e.contains("param_groups.head") && e.contains("haed."), "{e}");
    // A step that names a group that does not exist.
    let store = model()?;
    let mut opt = optim("sgd")?;
    let e = opt
        .step_groups(
            &store,
            &loss_grads(&store)?,
            0.1,
            &ParamGroups::default(),
            Active::Only(&["nope"]),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(e.contains("'nope'"), "{e}");
    Ok(())
}
