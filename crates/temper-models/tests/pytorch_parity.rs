//! Cross-checks every zoo model against PyTorch, with fixtures written by
//! `tests/fixtures/models/make_fixtures.py` (no Python needed here).
//!
//! For each case: strict loading of the PyTorch state dict, eval-mode logits, train-mode
//! logits and the BatchNorm buffers after one train-mode pass, each within 1e-4 relative
//! error (‖a-b‖/‖b‖).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use temper_core::weights::{self, Strictness};
use temper_core::{Classifier, Mode, Normalization};
use temper_models::{build_zeroed, ModelConfig, ModelKind, Stem};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

#[derive(serde::Deserialize)]
struct Case {
    case: String,
    weights_dtype: String,
    kind: String,
    width: f64,
    num_classes: usize,
    in_channels: usize,
    input_size: [usize; 2],
    stem: String,
    dropout: Option<f64>,
    normalization: String,
}

#[derive(serde::Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let num = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let den = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(num / den.max(1e-30))
}

fn config(c: &Case) -> Result<ModelConfig> {
    let mut cfg = ModelConfig::new(ModelKind::parse(&c.kind)?, c.num_classes);
    cfg.width = c.width;
    cfg.in_channels = c.in_channels;
    cfg.input_size = (c.input_size[0], c.input_size[1]);
    cfg.stem = Stem::parse(&c.stem)?;
    cfg.dropout = c.dropout;
    cfg.normalization = Some(Normalization::parse(&c.normalization, c.in_channels)?);
    Ok(cfg)
}

fn manifest() -> Result<Manifest> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json"))?;
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn zoo_matches_pytorch_in_eval_and_train_mode() -> Result<()> {
    let dev = Device::Cpu;
    let m = manifest()?;
    assert!(m.cases.len() >= 10, "manifest lists too few cases");
    let mut kinds = std::collections::HashSet::new();
    for c in &m.cases {
        let ctx = || format!("case {}", c.case);
        let cfg = config(c).with_context(ctx)?.check()?;
        kinds.insert((cfg.get().kind, cfg.get().stem));
        let model = build_zeroed(&cfg, &dev)?;
        let report = weights::load(
            model.params(),
            fixtures().join(format!("{}.safetensors", c.case)),
            &c.kind,
            Strictness::Strict,
        )
        .with_context(ctx)?;
        assert_eq!(report.loaded, model.params().len(), "{}", c.case);
        let expected_dtype = match c.weights_dtype.as_str() {
            "float32" => DType::F32,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            other => anyhow::bail!("unknown dtype {other}"),
        };
        assert_eq!(report.file_dtype, Some(expected_dtype), "{}", c.case);

        let io: HashMap<String, Tensor> =
            candle_core::safetensors::load(fixtures().join(format!("{}.io.safetensors", c.case)), &dev)?;
        let x = &io["input"];

        model.set_mode(Mode::Eval);
        let e = rel_err(&model.forward(x)?, &io["logits_eval"])?;
        assert!(e < 1e-4, "{}: eval logits rel err {e:e}", c.case);

        model.set_mode(Mode::Train);
        let t = rel_err(&model.forward(x)?, &io["logits_train"])?;
        assert!(t < 1e-4, "{}: train logits rel err {t:e}", c.case);

        let mut checked = 0;
        for (k, want) in io.iter().filter(|(k, _)| k.starts_with("after.")) {
            let name = &k["after.".len()..];
            let got = model
                .params()
                .get(name)
                .with_context(|| format!("{}: no buffer {name}", c.case))?;
            let got = got.var.as_tensor();
            if want.dtype() == DType::I64 {
                assert_eq!(
                    got.to_scalar::<i64>()?,
                    want.to_scalar::<i64>()?,
                    "{}: {name}",
                    c.case
                );
            } else {
                let b = rel_err(got, want)?;
                assert!(b < 1e-4, "{}: buffer {name} rel err {b:e}", c.case);
            }
            checked += 1;
        }
        if model.params().buffers().count() > 0 {
            assert_eq!(
                checked,
                model.params().buffers().count(),
                "{}: buffers not all checked",
                c.case
            );
        }
        println!("{:<28} eval {e:.2e}  train {t:.2e}  buffers {checked}", c.case);
    }
    // Every model the issue names is covered, ResNet-18 with both stems.
    for (k, s) in [
        (ModelKind::SmallCnn, Stem::Cifar),
        (ModelKind::PreActResNet18, Stem::Cifar),
        (ModelKind::ResNet18, Stem::Cifar),
        (ModelKind::ResNet18, Stem::Imagenet),
        (ModelKind::Wrn28x10, Stem::Cifar),
        (ModelKind::Vgg16Bn, Stem::Cifar),
        (ModelKind::MobileNetV2, Stem::Cifar),
    ] {
        assert!(kinds.contains(&(k, s)), "no fixture for {k} with {s:?} stem");
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Layouts {
    param_counts_10_classes: HashMap<String, usize>,
    layouts: HashMap<String, Vec<(String, Vec<usize>)>>,
}

fn layouts() -> Result<Layouts> {
    let text = std::fs::read_to_string(fixtures().join("layouts.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn full(kind: ModelKind, classes: usize, stem: Stem) -> Result<temper_core::Network> {
    let mut cfg = ModelConfig::new(kind, classes);
    cfg.stem = stem;
    Ok(build_zeroed(&cfg.check()?, &Device::Cpu)?)
}

fn keys(model: &temper_core::Network) -> Vec<(String, Vec<usize>)> {
    model
        .params()
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.var.dims().to_vec()))
        .collect()
}

#[test]
fn full_width_layouts_equal_torchvision_timm_and_robustbench() -> Result<()> {
    let l = layouts()?;
    let checks = [
        ("torchvision.resnet18", ModelKind::ResNet18, false),
        ("torchvision.resnet34", ModelKind::ResNet34, false),
        ("torchvision.resnet50", ModelKind::ResNet50, false),
        ("timm.resnet18", ModelKind::ResNet18, false),
        ("timm.resnet50", ModelKind::ResNet50, false),
        ("torchvision.vgg16_bn", ModelKind::Vgg16Bn, false),
        ("torchvision.mobilenet_v2", ModelKind::MobileNetV2, false),
        ("robustbench.wrn-28-10", ModelKind::Wrn28x10, false),
        ("robustbench.wrn-34-10-sub_block1", ModelKind::Wrn34x10, true),
        ("preact-resnet18", ModelKind::PreActResNet18, false),
    ];
    for (name, kind, sub_block1) in checks {
        let want = &l.layouts[name];
        // The reference's own class count is read off its last layer.
        let classes = want.last().map(|(_, s)| s[0]).unwrap_or(10);
        let mut cfg = ModelConfig::new(kind, classes);
        cfg.wrn_sub_block1 = sub_block1;
        let model = build_zeroed(&cfg.check()?, &Device::Cpu)?;
        let got = keys(&model);
        let (mut gs, mut ws) = (got.clone(), want.clone());
        gs.sort();
        ws.sort();
        let only_got: Vec<_> = gs.iter().filter(|k| !ws.contains(k)).collect();
        let only_want: Vec<_> = ws.iter().filter(|k| !gs.contains(k)).collect();
        assert!(
            only_got.is_empty() && only_want.is_empty(),
            "{name}: only in Temper {only_got:?}; only in reference {only_want:?}"
        );
        // Same order as the reference's state_dict, too.
        assert_eq!(&got, want, "{name}: state_dict order differs");
    }
    Ok(())
}

#[test]
fn parameter_counts_equal_pytorch() -> Result<()> {
    let l = layouts()?;
    let counts = &l.param_counts_10_classes;
    let cases = [
        ("small-cnn", ModelKind::SmallCnn, Stem::Cifar),
        ("preact-resnet18", ModelKind::PreActResNet18, Stem::Cifar),
        ("resnet18/cifar", ModelKind::ResNet18, Stem::Cifar),
        ("resnet18/imagenet", ModelKind::ResNet18, Stem::Imagenet),
        ("resnet34/cifar", ModelKind::ResNet34, Stem::Cifar),
        ("resnet34/imagenet", ModelKind::ResNet34, Stem::Imagenet),
        ("resnet50/cifar", ModelKind::ResNet50, Stem::Cifar),
        ("resnet50/imagenet", ModelKind::ResNet50, Stem::Imagenet),
        ("wrn-28-10", ModelKind::Wrn28x10, Stem::Cifar),
        ("wrn-34-10", ModelKind::Wrn34x10, Stem::Cifar),
        ("vgg16-bn", ModelKind::Vgg16Bn, Stem::Cifar),
        ("mobilenet-v2", ModelKind::MobileNetV2, Stem::Cifar),
    ];
    for (name, kind, stem) in cases {
        let n = full(kind, 10, stem)?.params().num_trainable();
        assert_eq!(n, counts[name], "{name}");
    }
    // Every zoo model is counted.
    for k in ModelKind::ALL {
        assert!(cases.iter().any(|c| c.1 == k), "{k} has no parameter-count check");
    }
    assert_eq!(counts["preact-resnet18"], 11_172_170);
    Ok(())
}
