//! Attacks through the quantizer: the straight-through estimator keeps input gradients
//! alive, so a white-box attack on a non-robust quantized model succeeds (no false robustness
//! from gradient masking), and the sweep reports clean, through-quantizer and transfer
//! robust accuracy.

mod common;

use anyhow::Result;
use candle_core::{Tensor, Var};
use common::{calib, mnist_cnn, test_set};
use std::sync::Arc;
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_attacks::Goal;
use temper_core::hooks::{LayerCall, LayerHook, LayerKind};
use temper_core::{Classifier, ForwardOpts, Mode};
use temper_quant::sweep::{sweep, SweepParams};
use temper_quant::{
    eval, quantize, ActCalibration, ActParams, ActQuant, QuantModel, QuantParams, WeightScheme,
};

const ATTACK: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

/// 4-bit weights and 4-bit activations on every layer.
fn w4a4() -> Result<QuantModel> {
    let (float, cfg) = mnist_cnn()?;
    let mut p = QuantParams::new(WeightScheme::bits(4));
    p.first_last_bits = None;
    p.act = Some(ActParams {
        bits: 4,
        calibration: ActCalibration::MinMax,
    });
    Ok(quantize(&float, &cfg, &calib(64)?, &p.check()?)?)
}

/// Gradient of the true-class logits with respect to the input.
fn input_gradient(model: &dyn Classifier, x: &Tensor, y: &Tensor) -> Result<Option<Tensor>> {
    let v = Var::from_tensor(x)?;
    let z = model.forward_opts(v.as_tensor(), ATTACK)?;
    let own = z.gather(&y.unsqueeze(1)?, 1)?.sum_all()?;
    Ok(own.backward()?.get(v.as_tensor()).cloned())
}

/// What a naive implementation does: round the inputs of every convolution and linear layer
/// with the rounding differentiated as it is (zero almost everywhere).
#[derive(Debug)]
struct NaiveRounding(ActQuant);

impl NaiveRounding {
    fn q(&self, x: &Tensor) -> temper_core::Result<Tensor> {
        Ok((x * f64::from(1.0 / self.0.scale))?
            .round()?
            .affine(f64::from(self.0.scale), 0.0)?)
    }
}

impl LayerHook for NaiveRounding {
    fn input(&self, call: &LayerCall<'_>, x: &Tensor) -> temper_core::Result<Option<Tensor>> {
        match call.kind {
            LayerKind::BatchNorm => Ok(None),
            _ => Ok(Some(self.q(x)?)),
        }
    }
}

#[test]
fn straight_through_gradients_reach_the_input() -> Result<()> {
    let q = w4a4()?;
    let b = test_set(Some(16))?.to_batch(q.device())?;
    let g = input_gradient(&q, &b.images, &b.labels)?.expect("the input must receive a gradient");
    let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
    assert!(norm > 1e-6, "straight-through input gradient norm {norm}");
    // Every image gets its own non-zero gradient.
    let per = g.flatten_from(1)?.abs()?.sum(1)?.to_vec1::<f32>()?;
    assert!(per.iter().all(|v| *v > 0.0), "{per:?}");

    // Without the estimator the same rounding masks the gradient completely.
    let (float, _) = mnist_cnn()?;
    float.add_hook(Arc::new(NaiveRounding(ActQuant::from_range(0.0, 8.0, 4))));
    let masked = input_gradient(&float, &b.images, &b.labels)?;
    let masked_norm = match masked {
        Some(m) => m.sqr()?.sum_all()?.to_scalar::<f32>()?,
        None => 0.0,
    };
    assert_eq!(masked_norm, 0.0);
    Ok(())
}

#[test]
fn pgd_through_the_quantizer_breaks_a_non_robust_model() -> Result<()> {
    let q = w4a4()?;
    let data = test_set(Some(100))?;
    let b = data.to_batch(q.device())?;
    let clean = eval::accuracy(&q, &data, 100)?;
    // At eps 0.2 PGD leaves the float model about 1% robust accuracy.
    let settings = AttackSettings {
        eps: 0.2,
        ..AttackSettings::default()
    };
    let pgd = AttackSpec::parse("pgd-10")?.build(&settings)?;
    let mut rng = temper_core::seed::rng("test-pgd");
    let out = pgd.perturb(&q, &b.images, &b.labels, Goal::Untargeted, &mut rng)?;
    let pred = eval::predict(&q, &b.images, 100)?;
    let robust = pred
        .iter()
        .zip(data.labels())
        .zip(&out.success)
        .filter(|((p, l), s)| p == l && !**s)
        .count() as f64
        / data.len() as f64;
    assert!(clean > 0.9, "clean accuracy {clean}");
    assert!(
        robust < 0.1,
        "robust {robust} vs clean {clean}: the attack failed through the quantizer"
    );
    assert!(out.linf.iter().all(|d| *d <= 0.2 + 1e-6));
    Ok(())
}

#[test]
fn sweep_reports_clean_robust_and_transfer_accuracy() -> Result<()> {
    let (float, cfg) = mnist_cnn()?;
    let data = test_set(Some(100))?;
    let settings = AttackSettings {
        eps: 0.2,
        ..AttackSettings::default()
    };
    let attacks = vec![
        ("pgd-5".to_string(), AttackSpec::parse("pgd-5")?.build(&settings)?),
        ("fgsm".to_string(), AttackSpec::parse("fgsm")?.build(&settings)?),
    ];
    let params = SweepParams {
        schemes: WeightScheme::parse_list("8,ternary", true)?,
        quant: QuantParams::new(WeightScheme::bits(8)),
        batch_size: 100,
        threat: temper_eval::Threat::new(temper_attacks::Norm::Linf, 0.2)?,
        groups: vec![
            temper_quant::sweep::AttackGroup {
                name: "both".into(),
                members: vec!["pgd-5".into(), "fgsm".into()],
            },
            temper_quant::sweep::AttackGroup {
                name: "pgd alone".into(),
                members: vec!["pgd-5".into()],
            },
        ],
    }
    .check()?;
    let mut seen = 0;
    let report = sweep(&float, &cfg, &calib(32)?, &data, &attacks, &params, &mut |_| {
        seen += 1
    })?;
    assert_eq!(seen, 3);
    assert_eq!(report.rows.len(), 3);
    let (f, r8, rt) = (&report.rows[0], &report.rows[1], &report.rows[2]);
    assert!(f.scheme.is_none() && f.ratio == 1.0);
    for r in &report.rows {
        assert!(
            r.robust["pgd-5"] <= r.clean && r.transfer["pgd-5"] <= r.clean,
            "{r:?}"
        );
        // A group of one attack is that attack; a group of every attack is the evaluator's
        // worst case, at most each member.
        assert_eq!(r.groups["pgd alone"], r.robust["pgd-5"], "{r:?}");
        assert_eq!(Some(r.groups["both"]), r.worst_case, "{r:?}");
        assert!(r.groups["both"] <= r.robust["fgsm"].min(r.robust["pgd-5"]));
    }
    // The float model is not robust, and neither are its quantized versions, seen through
    // the quantizer.
    assert!(
        f.robust["pgd-5"] < 0.5 * f.clean && r8.robust["pgd-5"] < 0.5 * r8.clean,
        "{report:?}"
    );
    assert!(rt.file_bytes < r8.file_bytes && r8.file_bytes < f.file_bytes);
    assert!(r8.ratio > 3.5 && rt.ratio > 10.0, "{r8:?} {rt:?}");

    let dir = tempfile::tempdir()?;
    let files = report.write(dir.path())?;
    assert_eq!(files.len(), 3);
    let md = std::fs::read_to_string(&files[1])?;
    assert!(
        md.contains("| ternary |") && md.contains("pgd-5 transfer"),
        "{md}"
    );
    let png = std::fs::read(&files[2])?;
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    let json: temper_quant::sweep::SweepReport = serde_json::from_slice(&std::fs::read(&files[0])?)?;
    assert_eq!(json, report);
    Ok(())
}
