//! Quantization-aware training against PyTorch (tests/fixtures/qat, made by its
//! make_fixtures.py): the quantized weights, logits, loss and straight-through gradients of a
//! small-cnn for uniform, TWN ternary and pruning ternary grids; and the exported model
//! computing exactly what the trained network computes, BatchNorm models included.

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{fixtures, logits};
use std::collections::HashMap;
use temper_core::{Classifier, ForwardOpts, Mode};
use temper_models::{ModelConfig, ModelKind};
use temper_quant::qat::{export, QatHook, QatParams};

/// The Temper spelling of each fixture case (see make_fixtures.py's CASES).
const CASES: &[(&str, &str)] = &[
    ("int4", "4,per-channel,first-last=8"),
    ("int2_all", "2,per-tensor,first-last=none"),
    ("twn", "ternary,per-tensor,first-last=8"),
    ("ptq", "ptq:prune=0.5,per-channel,first-last=8"),
];

fn fixture() -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        fixtures().join("qat/qat.safetensors"),
        &Device::Cpu,
    )?)
}

fn get<'a>(f: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    f.get(key).with_context(|| format!("fixture lacks '{key}'"))
}

/// `max |a - b| / max |b|`.
fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let s = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
    Ok(d / s)
}

/// The fixture's small-cnn (width 0.25) with its weights.
fn model(f: &HashMap<String, Tensor>) -> Result<(temper_core::Network, temper_models::ValidModelConfig)> {
    let mut cfg = ModelConfig::new(ModelKind::SmallCnn, 10);
    cfg.width = 0.25;
    let cfg = cfg.check()?;
    let net = temper_models::build_zeroed(&cfg, &Device::Cpu)?;
    for e in net.params().entries() {
        e.var.set(get(f, &format!("weights.{}", e.name))?)?;
    }
    Ok((net, cfg))
}

#[test]
fn straight_through_gradients_equal_pytorch() -> Result<()> {
    let f = fixture()?;
    let x = get(&f, "x")?.clone();
    let y = get(&f, "y")?.to_dtype(DType::U32)?;
    for (case, spec) in CASES {
        let (net, cfg) = model(&f)?;
        let params = QatParams::parse(spec)?.check()?;
        QatHook::install(&net, &params)?;
        // One training step's forward and backward, as the trainer's steps compute them.
        let out = net.forward_opts(
            &x,
            ForwardOpts {
                mode: Mode::Train,
                param_grads: true,
            },
        )?;
        let loss = temper_core::loss::cross_entropy_mean(&out, &y)?;
        let want_logits = get(&f, &format!("{case}.logits"))?;
        assert!(
            rel(&out, want_logits)? < 1e-5,
            "{case}: logits {}",
            rel(&out, want_logits)?
        );
        let want_loss = get(&f, &format!("{case}.loss"))?.to_vec1::<f32>()?[0];
        let got_loss = loss.to_scalar::<f32>()?;
        assert!(
            (got_loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
            "{case}: {got_loss} {want_loss}"
        );
        let grads = loss.backward()?;
        for e in net.params().trainable() {
            let g = grads
                .get(e.var.as_tensor())
                .with_context(|| format!("{case}: no gradient for {}", e.name))?;
            let want = get(&f, &format!("{case}.grad.{}", e.name))?;
            let r = rel(g, want)?;
            assert!(r < 1e-4, "{case}: gradient of {} differs by {r}", e.name);
        }
        // The exported model holds exactly the weights the training forward pass used, and
        // gives the training network's eval-mode logits bit for bit.
        let q = export(&net, &cfg, &params)?;
        for l in q.layers() {
            let want = get(&f, &format!("{case}.q.{}.weight", l.name))?;
            let got = Tensor::from_vec(l.weight.dequantize(), want.shape(), &Device::Cpu)?;
            assert!(rel(&got, want)? < 1e-6, "{case}: quantized {} differs", l.name);
        }
        assert_eq!(q.layers().len(), 4);
        let d = (logits(&net, &x)? - logits(&q, &x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "{case}: export changes the logits by {d}");
    }
    Ok(())
}

#[test]
fn pruned_ternary_keeps_the_asked_sparsity_in_training_and_export() -> Result<()> {
    let f = fixture()?;
    let (net, cfg) = model(&f)?;
    let params = QatParams::parse("ptq:prune=0.7,per-tensor,first-last=8")?.check()?;
    QatHook::install(&net, &params)?;
    let q = export(&net, &cfg, &params)?;
    for l in q.layers() {
        let zeros = l.weight.codes().iter().filter(|c| **c == 0).count();
        let n = l.weight.len();
        if l.name == "conv1" || l.name == "fc2" {
            assert_eq!(
                l.weight.scheme(),
                temper_quant::WeightScheme::bits(8),
                "{}",
                l.name
            );
        } else {
            assert_eq!(zeros, (0.7 * n as f64) as usize, "{}: {zeros} of {n}", l.name);
        }
    }
    Ok(())
}

#[test]
fn batchnorm_models_export_to_what_training_computed() -> Result<()> {
    let mut cfg = ModelConfig::new(ModelKind::PreActResNet18, 10);
    cfg.width = 0.125;
    let cfg = cfg.check()?;
    let net = temper_models::build(&cfg, &Device::Cpu)?;
    let x = Tensor::rand(0f32, 1f32, (4, 3, 32, 32), &Device::Cpu)?;
    // A train-mode pass through the quantizer moves the running statistics, as training does.
    let params = QatParams::parse("3,per-channel,first-last=8")?.check()?;
    QatHook::install(&net, &params)?;
    net.forward_opts(
        &x,
        ForwardOpts {
            mode: Mode::Train,
            param_grads: true,
        },
    )?;
    let q = export(&net, &cfg, &params)?;
    assert!(q.quant_info().fold.folded.is_empty() && !q.quant_info().fold.kept.is_empty());
    let d = (logits(&net, &x)? - logits(&q, &x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(d, 0.0, "export changes the logits by {d}");
    // The packed file reloads to the same model.
    let back = temper_quant::export::load_bytes(
        &temper_quant::export::to_bytes(&q)?,
        "qat.safetensors".as_ref(),
        &Device::Cpu,
    )?;
    let d = (logits(&back, &x)? - logits(&q, &x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(d, 0.0);
    assert_eq!(back.info().name, "preact-resnet18");
    Ok(())
}
