//! Optimizer behaviour that PyTorch parity does not cover: bit-identical resuming through a
//! safetensors file, in-place updates, buffers, weight-decay scopes, and errors.

use anyhow::{ensure, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use temper_core::{Builder, Init, ParamStore, Role};
use temper_sched::{
    AdamWConfig, DecayScope, Error, Optimizer, OptimizerConfig, Schedule, ScheduleSpec, Sgd, SgdConfig,
};

const ITERS_PER_EPOCH: u64 = 3;

/// A linear layer with a bias, a BatchNorm-like scale, a buffer, and a parameter that never
/// gets a gradient.
fn model(init: Option<&HashMap<String, Tensor>>) -> Result<ParamStore> {
    let b = Builder::new(&Device::Cpu, temper_core::seed::rng("optim-test"));
    b.param("fc.weight", &[4, 3], Init::Uniform(0.5), Role::Weight)?;
    b.param("fc.bias", &[4], Init::Uniform(0.5), Role::NoDecay)?;
    b.param("bn.weight", &[4], Init::Const(1.0), Role::NoDecay)?;
    b.buffer("bn.running_mean", &[4], Init::Const(0.25))?;
    b.param("unused.weight", &[2], Init::Const(0.5), Role::Weight)?;
    let store = b.finish();
    if let Some(init) = init {
        for e in store.entries() {
            e.var.set(&init[&e.name])?;
        }
    }
    Ok(store)
}

/// The gradients of a small non-linear loss on batch `it`, a deterministic function of the
/// iteration, as a data loader seeded per epoch would give.
fn grads(store: &ParamStore, it: u64) -> Result<GradStore> {
    let x: Vec<f32> = (0..6).map(|i| ((it * 7 + i) as f32 * 0.37).sin()).collect();
    let x = Tensor::from_vec(x, (2, 3), &Device::Cpu)?;
    let p = |n: &str| -> Result<Tensor> {
        Ok(store
            .get(n)
            .ok_or_else(|| anyhow::anyhow!("no {n}"))?
            .var
            .as_tensor()
            .clone())
    };
    let h = x.matmul(&p("fc.weight")?.t()?)?.broadcast_add(&p("fc.bias")?)?;
    let h = h.tanh()?.broadcast_mul(&p("bn.weight")?)?;
    Ok(h.sqr()?.sum_all()?.backward()?)
}

fn schedule() -> Result<Schedule> {
    Ok("ssfd:peak=0.05,warmup=0.3".parse::<ScheduleSpec>()?.check(3.0)?)
}

fn train(store: &ParamStore, opt: &mut dyn Optimizer, iters: std::ops::Range<u64>) -> Result<()> {
    let sched = schedule()?;
    for it in iters {
        opt.step(store, &grads(store, it)?, sched.lr_at_iter(it, ITERS_PER_EPOCH))?;
    }
    Ok(())
}

fn bits(store: &ParamStore) -> Result<Vec<(String, Vec<u32>)>> {
    store
        .entries()
        .iter()
        .filter(|e| e.var.dtype() == DType::F32)
        .map(|e| {
            let v = e.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            Ok((e.name.clone(), v.iter().map(|x| x.to_bits()).collect()))
        })
        .collect()
}

/// N steps straight, versus k steps, a checkpoint written to disk with safetensors, a fresh
/// model and optimizer rebuilt from it, and N - k steps: the weights must be bit-identical.
fn resume_is_bit_identical(spec: &str) -> Result<()> {
    const N: u64 = 9;
    const K: u64 = 4;
    let config: OptimizerConfig = spec.parse()?;

    let straight = model(None)?;
    let init = straight.state_dict()?.into_iter().collect::<HashMap<_, _>>();
    let mut opt = config.build()?;
    train(&straight, opt.as_mut(), 0..N)?;

    let first = model(Some(&init))?;
    let mut opt = config.build()?;
    train(&first, opt.as_mut(), 0..K)?;
    let mut ckpt: HashMap<String, Tensor> = first.state_dict()?.into_iter().collect();
    for (k, t) in opt.export_state()? {
        ckpt.insert(format!("optim.{k}"), t);
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ckpt.safetensors");
    candle_core::safetensors::save(&ckpt, &path)?;
    let saved_config = config.to_string();
    drop((first, opt));

    let loaded = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let resumed = model(Some(&loaded))?;
    let state: Vec<(String, Tensor)> = loaded
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("optim.").map(|k| (k.to_string(), t.clone())))
        .collect();
    let mut opt = saved_config.parse::<OptimizerConfig>()?.build()?;
    opt.import_state(&resumed, &state)?;
    ensure!(opt.steps() == K);
    train(&resumed, opt.as_mut(), K..N)?;

    ensure!(
        bits(&resumed)? == bits(&straight)?,
        "{spec}: resumed weights differ"
    );
    ensure!(opt.steps() == N);
    Ok(())
}

#[test]
fn sgd_resumes_bit_identically() -> Result<()> {
    resume_is_bit_identical("sgd:momentum=0.9,weight_decay=5e-4")?;
    resume_is_bit_identical("sgd:momentum=0.9,nesterov=true,weight_decay=5e-4")?;
    resume_is_bit_identical("sgd:momentum=0.9,dampening=0.5,decay_scope=all")?;
    resume_is_bit_identical("sgd:momentum=0,weight_decay=0")
}

#[test]
fn adamw_resumes_bit_identically() -> Result<()> {
    resume_is_bit_identical("adamw")?;
    resume_is_bit_identical("adamw:beta1=0.8,beta2=0.99,eps=1e-6,weight_decay=0.1,decay_scope=all")
}

#[test]
fn updates_in_place_and_leaves_buffers_and_gradless_params_alone() -> Result<()> {
    for spec in ["sgd", "adamw"] {
        let store = model(None)?;
        // What a layer holds: a clone of the variable, sharing its storage.
        let layer_view = store
            .get("fc.weight")
            .map(|e| e.var.clone())
            .ok_or_else(|| anyhow::anyhow!("fc"))?;
        let before = layer_view.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let mut opt = spec.parse::<OptimizerConfig>()?.build()?;
        train(&store, opt.as_mut(), 0..2)?;
        let after = layer_view.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        ensure!(after != before, "{spec}: the layer's view did not see the update");

        let e = |n: &str| {
            store
                .get(n)
                .map(|e| e.var.as_tensor().flatten_all())
                .ok_or_else(|| anyhow::anyhow!("{n}"))
        };
        ensure!(
            e("bn.running_mean")??.to_vec1::<f32>()? == vec![0.25f32; 4],
            "buffer touched"
        );
        ensure!(
            e("unused.weight")??.to_vec1::<f32>()? == vec![0.5f32; 2],
            "gradless param touched"
        );
        let state = opt.export_state()?;
        ensure!(!state
            .iter()
            .any(|(k, _)| k.contains("unused") || k.contains("running_mean")));
    }
    Ok(())
}

/// One SGD step with zero gradients: only weight decay moves the parameters.
fn decay_only(scope: DecayScope) -> Result<(f32, f32)> {
    let store = model(None)?;
    let mut g = GradStore::default();
    for e in store.trainable() {
        g.insert(e.var.as_tensor(), e.var.as_tensor().zeros_like()?);
    }
    let config = SgdConfig {
        momentum: 0.0,
        weight_decay: 0.5,
        decay_scope: scope,
        ..SgdConfig::default()
    };
    Sgd::new(config)?.step(&store, &g, 0.1)?;
    let first = |n: &str| -> Result<f32> {
        let e = store.get(n).ok_or_else(|| anyhow::anyhow!("{n}"))?;
        Ok(e.var.as_tensor().flatten_all()?.to_vec1::<f32>()?[0])
    };
    Ok((first("unused.weight")?, first("bn.weight")?))
}

#[test]
fn weight_decay_skips_biases_and_norms_by_default() -> Result<()> {
    // p - lr * wd * p = p * (1 - 0.05)
    assert_eq!(decay_only(DecayScope::Weights)?, (0.5 - 0.1 * (0.5 * 0.5), 1.0));
    assert_eq!(
        decay_only(DecayScope::All)?,
        (0.5 - 0.1 * (0.5 * 0.5), 1.0 - 0.1 * 0.5)
    );
    Ok(())
}

#[test]
fn import_rejects_state_that_does_not_fit() -> Result<()> {
    let store = model(None)?;
    let mut opt = "sgd".parse::<OptimizerConfig>()?.build()?;
    train(&store, opt.as_mut(), 0..2)?;
    let good = opt.export_state()?;

    let mut fresh = "sgd".parse::<OptimizerConfig>()?.build()?;
    let with = |key: &str, t: Tensor| {
        let mut s = good.clone();
        s.push((key.to_string(), t));
        s
    };
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu);
    let cases: Vec<(Vec<(String, Tensor)>, &str)> = vec![
        (with("velocity.fc.weight", zeros(&[4, 3])?), "velocity.fc.weight"),
        (
            with("momentum_buffer.nope", zeros(&[4, 3])?),
            "momentum_buffer.nope",
        ),
        (
            with("momentum_buffer.bn.running_mean", zeros(&[4])?),
            "momentum_buffer.bn.running_mean",
        ),
        (
            with("momentum_buffer.unused.weight", zeros(&[3])?),
            "momentum_buffer.unused.weight",
        ),
        (
            with(
                "momentum_buffer.unused.weight",
                Tensor::zeros(2, DType::F64, &Device::Cpu)?,
            ),
            "momentum_buffer.unused.weight",
        ),
        (with("step", Tensor::new(1i64, &Device::Cpu)?), "step"),
        (
            good.iter().filter(|(k, _)| k != "step").cloned().collect(),
            "step",
        ),
    ];
    for (state, key) in cases {
        match fresh.import_state(&store, &state) {
            Err(Error::BadState { key: k, .. }) if k == key => {}
            other => anyhow::bail!("expected an error about `{key}`, got {other:?}"),
        }
        ensure!(
            fresh.steps() == 0 && fresh.export_state()?.len() == 1,
            "state changed on error"
        );
    }

    let mut adam = "adamw".parse::<OptimizerConfig>()?.build()?;
    train(&store, adam.as_mut(), 0..1)?;
    let partial: Vec<_> = adam
        .export_state()?
        .into_iter()
        .filter(|(k, _)| k != "exp_avg_sq.fc.bias")
        .collect();
    let mut fresh = "adamw".parse::<OptimizerConfig>()?.build()?;
    match fresh.import_state(&store, &partial) {
        Err(Error::BadState { key, .. }) if key == "exp_avg_sq.fc.bias" => {}
        other => anyhow::bail!("expected an error about `exp_avg_sq.fc.bias`, got {other:?}"),
    }
    // An SGD checkpoint does not load into AdamW.
    ensure!(fresh.import_state(&store, &good).is_err());
    Ok(())
}

#[test]
fn configs_parse_display_and_check() -> Result<()> {
    for text in [
        "sgd",
        "sgd:momentum=0.9,nesterov=true,weight_decay=5e-4",
        "sgd:momentum=0,dampening=0,nesterov=false,weight_decay=0,decay_scope=all",
        "adamw",
        "adamw:beta1=0.8,beta2=0.99,eps=1e-6,weight_decay=0.05,decay_scope=all",
    ] {
        let c: OptimizerConfig = text.parse()?;
        let shown = c.to_string();
        ensure!(shown.parse::<OptimizerConfig>()? == c, "{text} -> {shown}");
        let json = serde_json::to_string(&c)?;
        ensure!(serde_json::from_str::<OptimizerConfig>(&json)? == c);
        ensure!(c.build()?.config() == c);
    }
    assert_eq!(
        OptimizerConfig::default().to_string(),
        "sgd:momentum=0.9,dampening=0,nesterov=false,weight_decay=5e-4,decay_scope=weights"
    );
    assert_eq!(
        "adamw".parse::<OptimizerConfig>()?.to_string(),
        "adamw:beta1=0.9,beta2=0.999,eps=1e-8,weight_decay=0.01,decay_scope=weights"
    );
    // The config structs are serde-able on their own, with defaults for missing fields.
    let c: SgdConfig = serde_json::from_str(r#"{"nesterov":true,"decay_scope":"all"}"#)?;
    assert_eq!(
        c,
        SgdConfig {
            nesterov: true,
            decay_scope: DecayScope::All,
            ..SgdConfig::default()
        }
    );
    let a: AdamWConfig = serde_json::from_str("{}")?;
    assert_eq!(a, AdamWConfig::default());

    let named = |text: &str| match text.parse::<OptimizerConfig>().and_then(|c| c.build()) {
        Err(Error::InvalidParam { name, .. }) => name,
        Err(Error::UnknownKey { key, .. }) | Err(Error::BadValue { key, .. }) => key,
        Err(e) => e.to_string(),
        Ok(_) => "accepted".to_string(),
    };
    assert_eq!(named("sgd:momentum=1"), "momentum");
    assert_eq!(named("sgd:dampening=1.5"), "dampening");
    assert_eq!(named("sgd:weight_decay=-1"), "weight_decay");
    assert_eq!(named("sgd:momentum=0,nesterov=true"), "nesterov");
    assert_eq!(named("sgd:dampening=0.1,nesterov=true"), "nesterov");
    assert_eq!(named("sgd:nesterov=yes"), "nesterov");
    assert_eq!(named("sgd:wd=5e-4"), "wd");
    assert_eq!(named("adamw:beta1=1"), "beta1");
    assert_eq!(named("adamw:beta2=-0.1"), "beta2");
    assert_eq!(named("adamw:eps=0"), "eps");
    assert_eq!(named("adamw:decay_scope=biases"), "decay_scope");
    assert!(matches!(
        "adam".parse::<OptimizerConfig>(),
        Err(Error::UnknownKind { .. })
    ));

    // A learning rate that would corrupt the weights is refused before anything changes.
    let store = model(None)?;
    let mut opt = "sgd".parse::<OptimizerConfig>()?.build()?;
    for lr in [f64::NAN, -0.1, f64::INFINITY] {
        match opt.step(&store, &grads(&store, 0)?, lr) {
            Err(Error::InvalidParam { name, .. }) if name == "lr" => {}
            other => anyhow::bail!("lr {lr}: {other:?}"),
        }
    }
    ensure!(opt.steps() == 0);
    Ok(())
}
