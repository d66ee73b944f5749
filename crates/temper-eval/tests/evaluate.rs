//! Evaluation on a real trained model (the MNIST small CNN fixture) and on a model with a
//! masked gradient.

mod common;

use anyhow::Result;
use candle_core::Device;
use common::{attacks, mnist_test, tiny_data, tiny_model, trained_mnist, Thresholded};
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_attacks::Norm;
use temper_eval::masking::sweep_flags;
use temper_eval::{evaluate, sweep, EvalParams, Evaluation, MaskingFlag, MaskingParams, SweepParams};

fn params(masking: Option<MaskingParams>, eps: f64) -> Result<temper_eval::ValidEvalParams> {
    Ok(EvalParams {
        batch_size: 100,
        masking,
        ..EvalParams::new(Norm::Linf, eps)
    }
    .check()?)
}

fn small_checks(samples: usize) -> MaskingParams {
    MaskingParams {
        samples,
        steps: 5,
        noise_draws: 2,
        ..MaskingParams::default()
    }
}

/// The invariants every evaluation satisfies, whatever the model.
fn check_consistency(e: &Evaluation) {
    let n = e.samples;
    let clean = e.clean.accuracy;
    assert_eq!(clean.total, n);
    let per_class_total: usize = e.clean.per_class.iter().map(|a| a.total).sum();
    assert_eq!(per_class_total, n);
    let cm_total: u64 = e.clean.confusion.counts.iter().flatten().sum();
    assert_eq!(cm_total as usize, n);
    let worst = e.worst_case.as_ref().map(|w| w.accuracy.correct);
    for a in &e.attacks {
        assert_eq!(a.robust.total, n);
        assert!(
            a.robust.correct <= clean.correct,
            "{}: robust above clean",
            a.name
        );
        if let Some(w) = worst {
            assert!(
                w <= a.robust.correct,
                "worst case {w} above {} ({})",
                a.name,
                a.robust.correct
            );
        }
        // Every clean-correct sample is attacked once, misclassified ones never.
        assert_eq!(a.perturbation.count, clean.correct, "{}", a.name);
        assert_eq!(
            a.robust.correct + (a.success_rate * clean.correct as f64).round() as usize,
            clean.correct
        );
        let per_class: usize = a.per_class.iter().map(|c| c.correct).sum();
        assert_eq!(per_class, a.robust.correct);
        if let Some(eps) = a.eps {
            assert!(
                a.perturbation.linf_max <= eps + 1e-5,
                "{}: ‖δ‖∞ {} > eps",
                a.name,
                a.perturbation.linf_max
            );
        }
        assert!(a.cascade.attacked <= clean.correct && a.cascade.broken <= a.cascade.attacked);
        assert!(a.cost.forward >= a.cascade.forward && a.cost.backward >= a.cascade.backward);
    }
    if let Some(w) = &e.worst_case {
        let broken: usize = e.attacks.iter().map(|a| a.cascade.broken).sum();
        assert_eq!(
            w.accuracy.correct + broken,
            clean.correct,
            "the cascade accounts for every break"
        );
        // The cascade attacks fewer samples than running every attack on everything.
        let full: u64 = e.attacks.iter().map(|a| a.cost.forward).sum();
        assert!(w.forward <= full);
    }
    assert!(e.cost.forward > 0 && e.cost.seconds > 0.0);
}

#[test]
fn worst_case_is_below_every_attack_which_is_below_clean() -> Result<()> {
    let model = trained_mnist()?;
    let data = mnist_test(200)?;
    let list = attacks("fgsm,pgd-10", 0.1)?;
    let e = evaluate(
        &model,
        &data,
        &list,
        &params(Some(small_checks(50)), 0.1)?,
        &Device::Cpu,
    )?;
    check_consistency(&e);
    let clean = e.clean.accuracy.accuracy;
    let (fgsm, pgd) = (&e.attacks[0], &e.attacks[1]);
    let worst = e.worst_case.as_ref().map_or(1.0, |w| w.accuracy.accuracy);
    eprintln!(
        "clean {clean:.3} fgsm {:.3} pgd-10 {:.3} worst {worst:.3}",
        fgsm.robust.accuracy, pgd.robust.accuracy
    );
    assert!(clean > 0.95, "the fixture is a trained model: {clean}");
    // Not adversarially trained: PGD at eps 0.1 breaks it far more than FGSM does.
    assert!(pgd.robust.accuracy < fgsm.robust.accuracy && pgd.robust.accuracy < clean - 0.2);
    // PGD uses its whole budget.
    assert!((pgd.perturbation.linf_max - 0.1).abs() < 1e-5);
    // A normal model shows no symptom of gradient masking.
    let m = e
        .masking
        .as_ref()
        .map(|m| (m.gradient.zero, m.gradient.nonfinite));
    assert_eq!(m, Some((0, 0)));
    assert_eq!(e.flags(), vec![], "{:#?}", e.masking);
    Ok(())
}

#[test]
fn masked_gradient_raises_the_zero_gradient_flag() -> Result<()> {
    let model = Thresholded(trained_mnist()?);
    let data = mnist_test(60)?;
    let list = attacks("fgsm,pgd-5", 0.1)?;
    let e = evaluate(
        &model,
        &data,
        &list,
        &params(Some(small_checks(60)), 0.1)?,
        &Device::Cpu,
    )?;
    check_consistency(&e);
    let flags = e.flags();
    let zero = flags.iter().find_map(|f| match f {
        MaskingFlag::ZeroGradient { count, samples } => Some((*count, *samples)),
        _ => None,
    });
    assert_eq!(zero, Some((60, 60)), "{flags:#?}");
    assert!(flags[0].message().contains("60 of 60 samples"));
    // Binarised MNIST still classifies well, and gradient attacks barely move it: exactly the
    // illusion the flag warns about.
    eprintln!(
        "masked model: clean {:.3}, pgd-5 {:.3}",
        e.clean.accuracy.accuracy, e.attacks[1].robust.accuracy
    );
    Ok(())
}

#[test]
fn sweeps_are_monotone_on_a_trained_model() -> Result<()> {
    let model = trained_mnist()?;
    let data = mnist_test(100)?;
    let settings = AttackSettings {
        steps: 5,
        ..AttackSettings::default()
    };
    let sp = SweepParams {
        eps: vec![0.3, 0.0, 0.1, 0.2],
        batch_size: 100,
    }
    .check()?;
    assert_eq!(sp.eps(), &[0.0, 0.1, 0.2, 0.3]);
    let s = sweep(
        &model,
        &data,
        &AttackSpec::parse("pgd")?,
        &settings,
        &sp,
        &Device::Cpu,
    )?;
    let acc: Vec<f64> = s.points.iter().map(|p| p.robust.accuracy).collect();
    eprintln!("pgd-5 sweep: {acc:?}");
    assert_eq!(s.points[0].robust, s.clean, "eps 0 is clean accuracy");
    assert!(acc.windows(2).all(|w| w[1] <= w[0]), "not monotone: {acc:?}");
    assert!(acc[3] < 0.05, "eps 0.3 breaks an undefended MNIST model: {acc:?}");
    assert!(sweep_flags(&s, 0.01).is_empty());

    // A minimum-norm attack runs once and is counted at every eps its examples fit in.
    let cw = sweep(
        &model,
        &mnist_test(10)?,
        &AttackSpec::parse("cw-10")?,
        &settings,
        &sp,
        &Device::Cpu,
    )?;
    let acc: Vec<f64> = cw.points.iter().map(|p| p.robust.accuracy).collect();
    assert!(acc.windows(2).all(|w| w[1] <= w[0]), "{acc:?}");
    assert_eq!(cw.norm, Norm::Linf);
    Ok(())
}

#[test]
fn a_rising_sweep_is_flagged() -> Result<()> {
    let mut s = temper_eval::Sweep {
        attack: "pgd-20".into(),
        description: String::new(),
        norm: Norm::Linf,
        clean: temper_eval::Accuracy::new(90, 100),
        points: [(0.0, 90), (0.1, 40), (0.2, 45), (0.3, 10)]
            .into_iter()
            .map(|(eps, k)| temper_eval::SweepPoint {
                eps,
                robust: temper_eval::Accuracy::new(k, 100),
            })
            .collect(),
        cost: temper_eval::CostSummary::default(),
    };
    let flags = sweep_flags(&s, 0.01);
    assert_eq!(flags.len(), 1);
    assert!(
        matches!(flags[0], MaskingFlag::LargerEpsRaisesAccuracy { eps, larger_eps, .. } if eps == 0.1 && larger_eps == 0.2)
    );
    // Within tolerance is sampling noise, not a symptom.
    s.points[2].robust = temper_eval::Accuracy::new(41, 100);
    assert!(sweep_flags(&s, 0.01).is_empty());
    Ok(())
}

#[test]
fn evaluations_are_reproducible_and_checked() -> Result<()> {
    let model = tiny_model()?;
    let data = tiny_data(40)?;
    let list = attacks("pgd-3,fgsm-rs", 0.05)?;
    let p = params(Some(small_checks(20)), 0.05)?;
    let a = evaluate(&model, &data, &list, &p, &Device::Cpu)?;
    let b = evaluate(&model, &data, &list, &p, &Device::Cpu)?;
    check_consistency(&a);
    let strip = |e: &Evaluation| {
        serde_json::to_value(
            e.attacks
                .iter()
                .map(|a| (a.robust, a.perturbation))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(strip(&a)?, strip(&b)?);
    assert_eq!(
        a.worst_case.map(|w| w.confusion),
        b.worst_case.map(|w| w.confusion)
    );

    // Options are validated once, with the parameter named.
    let err = EvalParams {
        batch_size: 0,
        ..EvalParams::new(Norm::Linf, 0.1)
    }
    .check()
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("batch-size"), "{err}");
    let err = MaskingParams {
        steps_multiplier: 1,
        ..MaskingParams::default()
    }
    .check()
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("steps-multiplier"), "{err}");
    assert!(SweepParams {
        eps: vec![],
        batch_size: 1
    }
    .check()
    .is_err());
    assert!(SweepParams {
        eps: vec![-0.1],
        batch_size: 1
    }
    .check()
    .is_err());

    // A data set that does not fit the model is refused before any work.
    let rgb = temper_data::Dataset::new("rgb", [3, 12, 12], vec![0; 3 * 144], vec![0], vec!["a".into()])?;
    let err = evaluate(&model, &rgb, &list, &p, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("'rgb'") && err.contains("channels"), "{err}");
    Ok(())
}

#[test]
fn an_empty_attack_list_reports_clean_accuracy_only() -> Result<()> {
    let e = evaluate(
        &tiny_model()?,
        &tiny_data(30)?,
        &[],
        &params(None, 0.1)?,
        &Device::Cpu,
    )?;
    assert!(e.worst_case.is_none() && e.attacks.is_empty() && e.masking.is_none());
    assert_eq!(e.clean.accuracy.total, 30);
    Ok(())
}

/// One definition: an attack's robust accuracy is the same alone, after other attacks in the
/// list, and as the matching point of an eps sweep; and the adversarial examples handed out
/// lie inside the threat model and reproduce the count.
#[test]
fn an_attack_gives_one_number_wherever_it_is_run() -> Result<()> {
    let model = trained_mnist()?;
    let data = mnist_test(120)?;
    let p = params(None, 0.1)?;
    let alone = evaluate(&model, &data, &attacks("pgd-5", 0.1)?, &p, &Device::Cpu)?;
    let after = evaluate(&model, &data, &attacks("fgsm,pgd-5", 0.1)?, &p, &Device::Cpu)?;
    let pgd = alone.attacks[0].robust;
    assert_eq!(after.attack("pgd-5").map(|a| a.robust), Some(pgd));
    assert!(pgd.correct < alone.clean.accuracy.correct, "pgd breaks something");

    let settings = AttackSettings {
        eps: 0.1,
        ..AttackSettings::default()
    };
    let sp = SweepParams {
        eps: vec![0.05, 0.1],
        batch_size: 100,
    }
    .check()?;
    let s = sweep(
        &model,
        &data,
        &AttackSpec::parse("pgd-5")?,
        &settings,
        &sp,
        &Device::Cpu,
    )?;
    assert_eq!(
        s.points[1].robust, pgd,
        "the sweep's point at 0.1 is evaluate's number"
    );

    // The examples handed to the sink: inside the ball, and the model gets wrong exactly the
    // broken ones (plus the ones it already got wrong).
    let mut wrong = 0usize;
    let mut sink = |b: temper_eval::AdversarialBatch<'_>| -> temper_eval::Result<()> {
        let x = data.batch(b.indices, &Device::Cpu)?.images;
        let d = (&b.images - &x)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d <= 0.1 + 1e-5, "an example outside the ball: {d}");
        let opts = temper_core::ForwardOpts {
            mode: temper_core::Mode::Eval,
            param_grads: false,
        };
        let pred = temper_core::Classifier::forward_opts(&model, &b.images, opts)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        wrong += pred.iter().zip(b.labels).filter(|(p, l)| p != l).count();
        Ok(())
    };
    let e = temper_eval::evaluate_with(
        &model,
        &data,
        &attacks("pgd-5", 0.1)?,
        &p,
        &Device::Cpu,
        &mut sink,
    )?;
    assert_eq!(e.attacks[0].robust, pgd, "the sink changes nothing");
    assert_eq!(wrong, data.len() - pgd.correct);
    Ok(())
}

/// AutoAttack's cascade: each attack only on what the attacks before it left, each entry the
/// robust accuracy after it; the last entry is the worst case, and each attack attacks
/// exactly the samples still robust before it.
#[test]
fn the_cascade_attacks_only_the_survivors_and_reports_the_accuracy_after_each_attack() -> Result<()> {
    let model = trained_mnist()?;
    let data = mnist_test(120)?;
    let list = attacks("fgsm,pgd-10,pgd-20", 0.1)?;
    let p = |cascade: bool| -> Result<temper_eval::ValidEvalParams> {
        Ok(EvalParams {
            batch_size: 50,
            masking: None,
            cascade,
            ..EvalParams::new(Norm::Linf, 0.1)
        }
        .check()?)
    };
    let all = evaluate(&model, &data, &list, &p(false)?, &Device::Cpu)?;
    let cas = evaluate(&model, &data, &list, &p(true)?, &Device::Cpu)?;
    assert!(!all.cascade && cas.cascade);
    let clean = cas.clean.accuracy.correct;
    let mut before = clean;
    for a in &cas.attacks {
        assert!(a.robust.correct <= before, "{}: accuracy after it rose", a.name);
        // It ran on exactly the samples still robust before it, and broke the difference.
        assert_eq!(a.perturbation.count, before, "{}", a.name);
        assert_eq!(a.cascade.attacked, before, "{}", a.name);
        assert_eq!(before - a.robust.correct, a.cascade.broken, "{}", a.name);
        let per_class: usize = a.per_class.iter().map(|c| c.correct).sum();
        assert_eq!(per_class, a.robust.correct);
        before = a.robust.correct;
    }
    let worst = cas.worst_case.as_ref().map(|w| w.accuracy.correct);
    assert_eq!(worst, Some(before), "the last entry is the worst case");
    // FGSM runs on the same rows with the same stream either way.
    assert_eq!(cas.attacks[0].robust, all.attacks[0].robust);
    // Later attacks see fewer samples: less work than every attack on every sample.
    let passes = |e: &Evaluation| e.attacks.iter().map(|a| a.cost.forward).sum::<u64>();
    assert!(
        passes(&cas) < passes(&all),
        "{} vs {}",
        passes(&cas),
        passes(&all)
    );
    let w_all = all.worst_case.as_ref().map_or(0, |w| w.accuracy.correct) as i64;
    assert!(
        (before as i64 - w_all).abs() <= 3,
        "the worst cases differ only by the attacks' random starts: {before} vs {w_all}"
    );
    Ok(())
}
