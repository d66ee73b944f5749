//! BatchNorm folding on every zoo family with BatchNorm, against the PyTorch fixtures (whose
//! BatchNorm statistics are randomised, so folding is not trivially the identity).

mod common;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use common::{fixtures, logits, rel_err};
use std::collections::HashMap;
use temper_core::Normalization;
use temper_models::{ModelConfig, ModelKind, Stem, ValidModelConfig};
use temper_quant::fold::fold_batchnorm;
use temper_quant::graph::LayerGraph;
use temper_quant::{quantize, Granularity, QuantParams, WeightScheme};

#[derive(serde::Deserialize)]
struct Case {
    case: String,
    kind: String,
    width: f64,
    num_classes: usize,
    in_channels: usize,
    input_size: [usize; 2],
    stem: String,
    normalization: String,
}

fn cases() -> Result<Vec<Case>> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        cases: Vec<Case>,
    }
    let text = std::fs::read_to_string(fixtures().join("models/manifest.json"))?;
    let m: Manifest = serde_json::from_str(&text)?;
    // small-cnn has no BatchNorm.
    Ok(m.cases.into_iter().filter(|c| c.kind != "small-cnn").collect())
}

fn load(c: &Case) -> Result<(temper_core::Network, ValidModelConfig, HashMap<String, Tensor>)> {
    let mut cfg = ModelConfig::new(ModelKind::parse(&c.kind)?, c.num_classes);
    cfg.width = c.width;
    cfg.in_channels = c.in_channels;
    cfg.input_size = (c.input_size[0], c.input_size[1]);
    cfg.stem = Stem::parse(&c.stem)?;
    cfg.normalization = Some(Normalization::parse(&c.normalization, c.in_channels)?);
    let cfg = cfg.check()?;
    let dir = fixtures().join("models");
    let (net, _) = temper_models::build_from_file(
        &cfg,
        dir.join(format!("{}.safetensors", c.case)),
        temper_core::weights::Strictness::Strict,
        &Device::Cpu,
    )?;
    let io = candle_core::safetensors::load(dir.join(format!("{}.io.safetensors", c.case)), &Device::Cpu)?;
    Ok((net, cfg, io))
}

#[test]
fn folding_keeps_the_logits_of_every_batchnorm_family() -> Result<()> {
    let cases = cases()?;
    assert!(cases.len() >= 8, "too few BatchNorm fixtures");
    for c in &cases {
        let (net, _, io) = load(c).with_context(|| c.case.clone())?;
        let x = &io["input"];
        let before = logits(&net, x)?;
        let graph = LayerGraph::trace(&net)?;
        let report = fold_batchnorm(&net, &graph, None)?;
        let after = logits(&net, x)?;
        let e = rel_err(&after, &before)?;
        assert!(e < 1e-5, "{}: folded logits differ by {e:e}", c.case);
        assert!(
            rel_err(&after, &io["logits_eval"])? < 1e-4,
            "{}: against PyTorch",
            c.case
        );
        assert_eq!(
            report.folded.len() + report.kept.len(),
            graph.batch_norms().len(),
            "{}",
            c.case
        );
        match c.case.as_str() {
            // Every block's bn2 folds into its conv1; the bn1s (after a residual sum, or
            // sharing the stem's output with an identity shortcut) and the final bn stay.
            "preact_resnet18" | "preact_resnet18_cifarnorm" => {
                assert_eq!(report.folded.len(), 8, "{}: {report:?}", c.case);
                assert!(report
                    .folded
                    .iter()
                    .all(|(conv, bn)| conv.ends_with("conv1") && bn.ends_with("bn2")));
                assert_eq!(report.kept.len(), 9, "{}", c.case);
            }
            // Post-activation families fold every BatchNorm.
            "resnet18_cifar" | "resnet18_imagenet" | "resnet50_cifar" | "vgg16_bn" | "mobilenet_v2" => {
                assert!(report.kept.is_empty(), "{}: kept {:?}", c.case, report.kept);
            }
            _ => assert!(!report.folded.is_empty(), "{}", c.case),
        }
    }
    Ok(())
}

#[test]
fn batchnorm_models_quantize_to_8_bits_closely() -> Result<()> {
    for c in cases()?.iter().filter(|c| {
        ["preact_resnet18", "resnet18_cifar", "mobilenet_v2", "wrn_28_1"].contains(&c.case.as_str())
    }) {
        let (net, cfg, io) = load(c)?;
        let x = &io["input"];
        let mut p = QuantParams::new(WeightScheme::bits(8));
        p.granularity = Granularity::PerChannel;
        let q = quantize(
            &net,
            &cfg,
            &Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu)?,
            &p.check()?,
        )?;
        assert!(!q.quant_info().fold.folded.is_empty(), "{}", c.case);
        let e = rel_err(&logits(&q, x)?, &logits(&net, x)?)?;
        assert!(e < 0.02, "{}: 8-bit logits differ by {e}", c.case);
    }
    Ok(())
}
