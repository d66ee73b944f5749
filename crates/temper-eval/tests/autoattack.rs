//! AutoAttack in the evaluation: one report entry per component attack with the worst case
//! over them, and AutoAttack's model checks as masking flags.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{attacks, mnist_test, trained_mnist, Thresholded};
use temper_attacks::Norm;
use temper_core::{Classifier, ForwardOpts, Mode, ModelInfo, Network, ParamStore};
use temper_eval::{evaluate, EvalParams, MaskingFlag, MaskingParams};

fn params(eps: f64, samples: usize) -> Result<temper_eval::ValidEvalParams> {
    Ok(EvalParams {
        batch_size: 100,
        masking: Some(MaskingParams {
            samples,
            steps: 5,
            noise_draws: 2,
            ..MaskingParams::default()
        }),
        ..EvalParams::new(Norm::Linf, eps)
    }
    .check()?)
}

/// The trained model with its outputs passed through a function.
struct Mapped<F: Fn(Tensor) -> temper_core::Result<Tensor> + Send + Sync>(Network, F);

impl<F: Fn(Tensor) -> temper_core::Result<Tensor> + Send + Sync> Classifier for Mapped<F> {
    fn info(&self) -> &ModelInfo {
        self.0.info()
    }
    fn forward_opts(&self, x: &Tensor, opts: ForwardOpts) -> temper_core::Result<Tensor> {
        (self.1)(self.0.forward_opts(x, opts)?)
    }
    fn mode(&self) -> Mode {
        self.0.mode()
    }
    fn set_mode(&self, mode: Mode) {
        self.0.set_mode(mode)
    }
    fn params(&self) -> &ParamStore {
        self.0.params()
    }
    fn device(&self) -> &Device {
        self.0.device()
    }
}

#[test]
fn autoattack_reports_each_component_and_their_worst_case() -> Result<()> {
    let model = trained_mnist()?;
    let data = mnist_test(24)?;
    let list = attacks("autoattack", 0.1)?;
    let e = evaluate(&model, &data, &list, &params(0.1, 24)?, &Device::Cpu)?;
    let names: Vec<&str> = e.attacks.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["apgd-ce", "apgd-t", "fab-t", "square"]);
    let worst = e
        .worst_case
        .as_ref()
        .map(|w| w.accuracy.correct)
        .unwrap_or(usize::MAX);
    for a in &e.attacks {
        assert!(worst <= a.robust.correct, "{}", a.name);
        assert!(a.perturbation.linf_max <= 0.1 + 1e-5);
    }
    let square = &e.attacks[3];
    assert!(
        square.cost.queries > 0 && square.cost.backward == 0,
        "{:?}",
        square.cost
    );
    eprintln!(
        "clean {} apgd-ce {} apgd-t {} fab-t {} square {} worst {worst}; flags {:?}",
        e.clean.accuracy.correct,
        e.attacks[0].robust.correct,
        e.attacks[1].robust.correct,
        e.attacks[2].robust.correct,
        square.robust.correct,
        e.flags()
    );
    assert!(
        !e.flags().iter().any(|f| matches!(
            f,
            MaskingFlag::SquareBeatsWhiteBox { .. } | MaskingFlag::SoftmaxOutputs
        )),
        "{:?}",
        e.flags()
    );
    Ok(())
}

#[test]
fn softmax_and_randomized_models_are_flagged() -> Result<()> {
    let data = mnist_test(20)?;
    let list = attacks("fgsm", 0.1)?;
    let soft = Mapped(trained_mnist()?, |z: Tensor| {
        Ok(temper_core::loss::log_softmax(&z)?.exp()?)
    });
    let e = evaluate(&soft, &data, &list, &params(0.1, 20)?, &Device::Cpu)?;
    assert!(
        e.flags().contains(&MaskingFlag::SoftmaxOutputs),
        "{:?}",
        e.flags()
    );
    // Noise on the logits from candle's own generator: every pass differs.
    let noisy = Mapped(trained_mnist()?, |z: Tensor| Ok((&z + z.randn_like(0.0, 1.0)?)?));
    let e = evaluate(&noisy, &data, &list, &params(0.1, 20)?, &Device::Cpu)?;
    assert!(
        e.flags().iter().any(|f| matches!(
            f,
            MaskingFlag::RandomizedModel {
                count: 20,
                samples: 20
            }
        )),
        "{:?}",
        e.flags()
    );
    Ok(())
}

#[test]
fn saturated_logits_mask_ce_pgd_but_are_flagged() -> Result<()> {
    let data = mnist_test(40)?;
    let list = attacks("pgd-ce-10,apgd-dlr-20", 0.1)?;
    let plain = evaluate(&trained_mnist()?, &data, &list, &params(0.1, 40)?, &Device::Cpu)?;
    let scaled = Mapped(trained_mnist()?, |z: Tensor| Ok((z * 1e4)?));
    let e = evaluate(&scaled, &data, &list, &params(0.1, 40)?, &Device::Cpu)?;
    let r = |ev: &temper_eval::Evaluation, i: usize| ev.attacks[i].robust.correct;
    eprintln!(
        "pgd-ce {} -> {}, apgd-dlr {} -> {}; flags {:?}",
        r(&plain, 0),
        r(&e, 0),
        r(&plain, 1),
        r(&e, 1),
        e.flags()
    );
    assert!(r(&e, 0) > r(&plain, 0), "scaling must mask cross-entropy PGD");
    assert!(
        r(&e, 1).abs_diff(r(&plain, 1)) <= 1,
        "APGD-DLR is scale-invariant"
    );
    assert!(plain.flags().is_empty(), "{:?}", plain.flags());
    assert!(
        !e.flags().is_empty(),
        "the masked CE evaluation must raise a flag"
    );
    Ok(())
}

#[test]
fn square_beating_white_box_attacks_is_flagged() -> Result<()> {
    let model = Thresholded(trained_mnist()?);
    let data = mnist_test(40)?;
    let list = attacks("pgd-5,square-300", 0.3)?;
    let e = evaluate(&model, &data, &list, &params(0.3, 40)?, &Device::Cpu)?;
    eprintln!(
        "pgd-5 {} square {}; flags {:?}",
        e.attacks[0].robust.correct,
        e.attacks[1].robust.correct,
        e.flags()
    );
    assert!(
        e.flags()
            .iter()
            .any(|f| matches!(f, MaskingFlag::SquareBeatsWhiteBox { .. })),
        "{:?}",
        e.flags()
    );
    Ok(())
}
