//! Learn2Perturb's noise modules in preact-resnet18: the reference's names and shapes, an
//! ordinary model unchanged, seeded and reproducible noise in both modes, gradients for the
//! scales, and weight files that load back into the noisy model without flags.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use temper_core::weights::Strictness;
use temper_core::{Classifier, ForwardOpts, Mode, Network};
use temper_models::{ModelConfig, ModelKind, ValidModelConfig};

fn config(noise: bool) -> Result<ValidModelConfig> {
    Ok(ModelConfig {
        width: 1.0 / 16.0,
        noise_injection: noise,
        ..ModelConfig::new(ModelKind::PreActResNet18, 10)
    }
    .check()?)
}

/// Two deterministic images in [0, 1].
fn input() -> Result<Tensor> {
    let n = 2 * 3 * 32 * 32;
    let x = (Tensor::arange(0u32, n as u32, &Device::Cpu)?.to_dtype(DType::F32)? * 0.618)?;
    Ok((&x - x.floor()?)?.reshape((2, 3, 32, 32))?)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn noise_scales_have_the_reference_names_and_shapes() -> Result<()> {
    let plain = temper_models::build(&config(false)?, &Device::Cpu)?;
    let noisy = temper_models::build(&config(true)?, &Device::Cpu)?;
    let keys = |n: &Network| -> Vec<String> { n.params().entries().iter().map(|e| e.name.clone()).collect() };
    let (pk, nk) = (keys(&plain), keys(&noisy));
    // The ordinary model has none; the noisy one has them and otherwise the same keys in order.
    ensure!(!pk.iter().any(|k| k.contains("sigma")));
    let rest: Vec<&String> = nk.iter().filter(|k| !k.contains("sigma_map")).collect();
    ensure!(rest == pk.iter().collect::<Vec<_>>());
    ensure!(
        nk[0] == "cn1_sigma_map",
        "the stem's scale leads, as in the reference: {}",
        nk[0]
    );
    let shape = |k: &str| -> Result<Vec<usize>> {
        Ok(noisy.params().get(k).context(k.to_string())?.var.dims().to_vec())
    };
    ensure!(shape("cn1_sigma_map")? == [4, 32, 32]);
    ensure!(shape("layer1.1.sigma_map")? == [4, 32, 32]);
    ensure!(shape("layer2.0.sigma_map")? == [8, 16, 16]);
    ensure!(shape("layer4.1.sigma_map")? == [32, 4, 4]);
    ensure!(nk.iter().filter(|k| k.ends_with("sigma_map")).count() == 9);
    ensure!(!temper_core::noise::is_randomized(plain.params()));
    ensure!(temper_core::noise::is_randomized(noisy.params()));
    let scale = noisy.params().get("layer3.0.sigma_map").context("scale")?;
    ensure!(scale.role == temper_core::Role::NoDecay);
    let v = scale.var.flatten_all()?.to_vec1::<f32>()?;
    ensure!(v.iter().all(|s| *s == 0.25), "initial scales 0.25");
    // Other models refuse the option.
    ensure!(ModelConfig {
        noise_injection: true,
        ..ModelConfig::new(ModelKind::SmallCnn, 10)
    }
    .check()
    .is_err());
    Ok(())
}

#[test]
fn noise_is_seeded_random_in_both_modes_and_off_on_request() -> Result<()> {
    let net = temper_models::build(&config(true)?, &Device::Cpu)?;
    let x = input()?;
    for mode in [Mode::Train, Mode::Eval] {
        let opts = ForwardOpts {
            mode,
            param_grads: false,
        };
        let start = net.dropout_rng();
        let a = net.forward_opts(&x, opts)?;
        let b = net.forward_opts(&x, opts)?;
        ensure!(
            max_abs(&a, &b)? > 1e-4,
            "{mode:?}: two passes drew the same noise"
        );
        // The same generator state gives the same noise.
        net.set_dropout_rng(start);
        let again = net.forward_opts(&x, opts)?;
        ensure!(
            max_abs(&a, &again)? == 0.0,
            "{mode:?}: the noise is not reproducible"
        );
        // Switched off, the passes agree.
        let quiet = |net: &Network| temper_core::noise::without_noise(|| net.forward_opts(&x, opts));
        ensure!(max_abs(&quiet(&net)?, &quiet(&net)?)? == 0.0);
    }
    // Without noise the model is the plain one with the same weights.
    let plain = temper_models::build(&config(false)?, &Device::Cpu)?;
    for e in plain.params().entries() {
        e.var
            .set(net.params().get(&e.name).context("key")?.var.as_tensor())?;
    }
    let opts = ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    let quiet = temper_core::noise::without_noise(|| net.forward_opts(&x, opts))?;
    ensure!(max_abs(&quiet, &plain.forward_opts(&x, opts)?)? == 0.0);
    Ok(())
}

#[test]
fn every_noise_scale_gets_a_gradient() -> Result<()> {
    let net = temper_models::build(&config(true)?, &Device::Cpu)?;
    net.set_mode(Mode::Train);
    let y = Tensor::new(&[3u32, 7], &Device::Cpu)?;
    let loss = temper_core::loss::cross_entropy_mean(&net.forward(&input()?)?, &y)?;
    let grads = loss.backward()?;
    for e in net
        .params()
        .trainable()
        .filter(|e| temper_core::noise::is_scale(&e.name))
    {
        let g = grads
            .get(e.var.as_tensor())
            .with_context(|| format!("no gradient for {}", e.name))?;
        let n = g.abs()?.sum_all()?.to_scalar::<f32>()?;
        ensure!(n > 0.0 && n.is_finite(), "{}: gradient {n}", e.name);
    }
    // Attacks pass param_grads: false, and then the scales are left out of the graph.
    let opts = ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    let loss = temper_core::loss::cross_entropy_mean(&net.forward_opts(&input()?, opts)?, &y)?;
    let grads = loss.backward()?;
    ensure!(grads
        .get(
            net.params()
                .get("cn1_sigma_map")
                .context("scale")?
                .var
                .as_tensor()
        )
        .is_none());
    Ok(())
}

#[test]
fn noisy_weights_load_back_without_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("l2p.safetensors");
    let cfg = config(true)?;
    let net = temper_models::build(&cfg, &Device::Cpu)?;
    let scale = net.params().get("layer2.1.sigma_map").context("scale")?;
    scale.var.set(&(scale.var.as_tensor() * 3.0)?)?;
    temper_models::save(&net, &cfg, &path, DType::F32, &Default::default())?;
    // The caller asks for the plain model; the file's record adds the noise modules.
    let (found, _) = temper_models::config_for_file(&config(false)?, &path)?;
    ensure!(found.get().noise_injection && found.is_randomized());
    let (back, _) = temper_models::build_from_file(&found, &path, Strictness::Strict, &Device::Cpu)?;
    let got = back.params().get("layer2.1.sigma_map").context("scale")?;
    ensure!(max_abs(got.var.as_tensor(), scale.var.as_tensor())? == 0.0);
    // A plain model's file loads into the plain model, as before.
    let plain_path = dir.path().join("plain.safetensors");
    let plain_cfg = config(false)?;
    temper_models::save(
        &temper_models::build(&plain_cfg, &Device::Cpu)?,
        &plain_cfg,
        &plain_path,
        DType::F32,
        &Default::default(),
    )?;
    ensure!(
        !temper_models::config_for_file(&plain_cfg, &plain_path)?
            .0
            .get()
            .noise_injection
    );
    Ok(())
}
