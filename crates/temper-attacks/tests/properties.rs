//! Properties every attack must have, over random small models and inputs.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use temper_attacks::{
    ApgdParams, Attack, CwParams, FabParams, FgsmParams, Goal, LossKind, Norm, PgdParams, SquareParams,
};
use temper_core::{Classifier, Mode};
use temper_models::{build, ModelConfig, ModelKind};

fn model(seed: u64) -> temper_core::Network {
    temper_core::seed::set_seed(seed);
    let mut cfg = ModelConfig::new(ModelKind::SmallCnn, 5);
    cfg.input_size = (12, 12);
    cfg.width = 0.5;
    build(&cfg.check().unwrap_or_else(|e| panic!("{e}")), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn batch(n: usize, seed: u64) -> (Tensor, Tensor) {
    use rand::Rng as _;
    let mut rng = temper_core::seed::rng_with(seed, "batch");
    let x: Vec<f32> = (0..n * 144).map(|_| rng.random::<f32>()).collect();
    let y: Vec<u32> = (0..n).map(|_| rng.random_range(0..5)).collect();
    let dev = Device::Cpu;
    (
        Tensor::from_vec(x, (n, 1, 12, 12), &dev).unwrap_or_else(|e| panic!("{e}")),
        Tensor::from_vec(y, n, &dev).unwrap_or_else(|e| panic!("{e}")),
    )
}

fn check_valid(x: &Tensor, out: &temper_attacks::AttackOutput, norm: Norm, eps: f64) {
    let adv = out
        .adv
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        adv.iter().all(|v| (0.0..=1.0).contains(v)),
        "adversarial pixels outside [0, 1]"
    );
    let delta = (&out.adv - x).unwrap_or_else(|e| panic!("{e}"));
    let sizes = norm
        .measure(&delta)
        .and_then(|t| Ok(t.to_vec1::<f32>()?))
        .unwrap_or_else(|e| panic!("{e}"));
    for s in sizes {
        assert!(
            f64::from(s) <= eps * (1.0 + 1e-6) + 1e-6,
            "{norm:?} perturbation {s} exceeds eps {eps}"
        );
    }
}

/// A sample the model already gets wrong counts as broken: no attack reports it robust.
fn never_better_than_clean(
    name: &str,
    m: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    out: &temper_attacks::AttackOutput,
) {
    let opts = temper_core::ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    let pred = m
        .forward_opts(x, opts)
        .and_then(|l| Ok(l.argmax(1)?.to_vec1::<u32>()?))
        .unwrap_or_else(|e| panic!("{e}"));
    let y = y.to_vec1::<u32>().unwrap_or_else(|e| panic!("{e}"));
    for i in 0..y.len() {
        assert!(
            pred[i] == y[i] || out.success[i],
            "{name}: sample {i} is wrong clean (predicted {}, label {}) but reported robust",
            pred[i],
            y[i]
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn outputs_stay_in_the_box_and_the_ball(
        seed in 0u64..1000, n in 1usize..4, eps in 0.0f64..0.4, steps in 1usize..4,
        l2 in any::<bool>(), restarts in 1usize..3, early in any::<bool>(), margin in any::<bool>(),
    ) {
        let m = model(seed);
        let (x, y) = batch(n, seed);
        let norm = if l2 { Norm::L2 } else { Norm::Linf };
        let eps = if l2 { eps * 5.0 } else { eps };
        let loss = if margin { LossKind::CwMargin } else { LossKind::CrossEntropy };
        let pgd = PgdParams { norm, eps, alpha: eps / 3.0 + 1e-3, steps, restarts, early_stop: early, loss, ..PgdParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        let mut rng = temper_core::seed::rng_with(seed, "a");
        check_valid(&x, &pgd.perturb(&m, &x, &y, Goal::Untargeted, &mut rng).unwrap_or_else(|e| panic!("{e}")), norm, eps);
        for rs in [None, Some(1.25 * eps + 1e-3)] {
            let f = FgsmParams { eps: eps.min(0.4), random_start: rs, loss }.check().unwrap_or_else(|e| panic!("{e}"));
            check_valid(&x, &f.perturb(&m, &x, &y, Goal::Untargeted, &mut rng).unwrap_or_else(|e| panic!("{e}")), Norm::Linf, eps.min(0.4));
        }
    }

    #[test]
    fn apgd_and_square_stay_in_the_box_and_the_ball(
        seed in 0u64..1000, n in 1usize..4, eps in 0.0f64..0.4, steps in 1usize..6,
        l2 in any::<bool>(), dlr in any::<bool>(), targets in 0usize..3, eot in 1usize..3,
    ) {
        let m = model(seed);
        let (x, y) = batch(n, seed);
        let norm = if l2 { Norm::L2 } else { Norm::Linf };
        let eps_n = if l2 { eps * 5.0 } else { eps };
        let loss = if dlr { LossKind::Dlr } else { LossKind::CrossEntropy };
        let apgd = ApgdParams { norm, eps: eps_n, steps, loss, targets: (targets > 0).then_some(targets), eot, ..ApgdParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        let mut rng = temper_core::seed::rng_with(seed, "a");
        let out = apgd.perturb(&m, &x, &y, Goal::Untargeted, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        check_valid(&x, &out, norm, eps_n);
        prop_assert_eq!(out.cost.queries, 0);
        let sq = SquareParams { eps, queries: steps * 3, ..SquareParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        let out = sq.perturb(&m, &x, &y, Goal::Untargeted, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        check_valid(&x, &out, Norm::Linf, eps);
        prop_assert_eq!(out.cost.backward, 0);
        prop_assert!(out.cost.queries <= (n * (steps * 3 + 1)) as u64);
    }

    #[test]
    fn l1_l2_and_untargeted_attacks_stay_in_the_box_and_the_ball(
        seed in 0u64..1000, n in 1usize..4, eps in 0.0f64..1.0, steps in 1usize..6,
        which in 0usize..3, staged in any::<bool>(), targeted in any::<bool>(), restarts in 1usize..3,
    ) {
        let m = model(seed);
        let (x, y) = batch(n, seed);
        let mut rng = temper_core::seed::rng_with(seed, "n");
        // APGD, Square and FAB start from the clean point, as their references do, so a
        // sample the model gets wrong is broken; PGD follows torchattacks and does not
        // (an evaluation never attacks such a sample).
        let run = |a: &dyn Attack, rng: &mut temper_core::seed::Rng| {
            let out = a.perturb(&m, &x, &y, Goal::Untargeted, rng).unwrap_or_else(|e| panic!("{}: {e}", a.name()));
            if !a.name().starts_with("pgd") {
                never_better_than_clean(&a.name(), &m, &x, &y, &out);
            }
            out
        };
        // L1: APGD (one stage or AutoAttack's three) and PGD, at budgets up to a fifth of
        // the 144 pixels.
        let l1 = eps * 30.0;
        let apgd = ApgdParams { norm: Norm::L1, eps: l1, steps, large_eps: staged, ..ApgdParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        check_valid(&x, &run(&apgd, &mut rng), Norm::L1, l1);
        let pgd = PgdParams { norm: Norm::L1, eps: l1, alpha: l1 / 3.0 + 1e-3, steps, ..PgdParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        check_valid(&x, &run(&pgd, &mut rng), Norm::L1, l1);
        // L2 Square.
        let l2 = eps * 4.0;
        let sq = SquareParams { norm: Norm::L2, eps: l2, queries: steps * 3, ..SquareParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        let out = run(&sq, &mut rng);
        check_valid(&x, &out, Norm::L2, l2);
        prop_assert_eq!(out.cost.backward, 0);
        // FAB and FAB-T, L-inf and L2: a success only inside the ball.
        let (norm, fab_eps) = if which == 1 { (Norm::Linf, eps * 0.3) } else { (Norm::L2, l2) };
        let fab = FabParams { norm, eps: fab_eps, steps, targeted, targets: 2, restarts, ..FabParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        let out = run(&fab, &mut rng);
        check_valid(&x, &out, norm, fab_eps);
        // Untargeted FAB takes one backward pass per class.
        if !targeted {
            prop_assert!(out.cost.backward % 5 == 0, "{:?}", out.cost);
        }
    }

    #[test]
    fn pgd_is_never_weaker_than_fgsm_from_the_clean_point(seed in 0u64..1000, n in 1usize..5, eps in 0.01f64..0.3, steps in 1usize..5) {
        let m = model(seed);
        let (x, y) = batch(n, seed + 1);
        let mut rng = temper_core::seed::rng_with(seed, "a");
        let f = FgsmParams { eps, ..FgsmParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        let p = PgdParams { eps, alpha: eps, steps, random_start: false, ..PgdParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        // PGD keeps each sample's strongest iterate: a success beats a failure, then the
        // higher loss. Its first step is FGSM's, so it is never weaker in that order (a
        // success may have a lower loss than FGSM's failed point).
        let of = f.perturb(&m, &x, &y, Goal::Untargeted, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let op = p.perturb(&m, &x, &y, Goal::Untargeted, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..n {
            let (sp, lp, sf, lf) = (op.success[i], op.loss[i], of.success[i], of.loss[i]);
            prop_assert!(
                (sp && !sf) || (sp == sf && lp >= lf - 1e-5),
                "sample {i}: PGD (success {sp}, loss {lp}) is weaker than FGSM (success {sf}, loss {lf})"
            );
        }
    }

    #[test]
    fn attacks_are_deterministic_under_a_seed(seed in 0u64..1000, l2 in any::<bool>()) {
        let m = model(seed);
        let (x, y) = batch(3, seed);
        let norm = if l2 { Norm::L2 } else { Norm::Linf };
        let pgd = PgdParams { norm, eps: 0.3, alpha: 0.05, steps: 3, restarts: 2, ..PgdParams::default() }.check().unwrap_or_else(|e| panic!("{e}"));
        let run = || pgd.perturb(&m, &x, &y, Goal::Untargeted, &mut temper_core::seed::rng_with(seed, "d")).and_then(|o| Ok(o.adv.flatten_all()?.to_vec1::<f32>()?)).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(run(), run());
    }
}

#[test]
fn targeted_success_means_the_target_class() -> anyhow::Result<()> {
    let m = model(3);
    let (x, y) = batch(4, 3);
    let t = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu)?;
    let pgd = PgdParams {
        eps: 1.0,
        alpha: 0.1,
        steps: 20,
        ..PgdParams::default()
    }
    .check()?;
    let out = pgd.perturb(&m, &x, &y, Goal::Targeted(&t), &mut temper_core::seed::rng("t"))?;
    for (i, s) in out.success.iter().enumerate() {
        assert_eq!(*s, out.pred[i] == [1, 2, 3, 4][i]);
    }
    assert!(
        out.success.iter().any(|&s| s),
        "an unbounded targeted attack should reach some target"
    );
    Ok(())
}

#[test]
fn cw_stays_in_the_box_and_reports_minimal_successes() -> anyhow::Result<()> {
    let m = model(4);
    let (x, y) = batch(3, 4);
    let cw = CwParams {
        steps: 30,
        binary_steps: 3,
        ..CwParams::default()
    }
    .check()?;
    let out = cw.perturb(&m, &x, &y, Goal::Untargeted, &mut temper_core::seed::rng("c"))?;
    check_valid(&x, &out, Norm::L2, f64::INFINITY);
    for i in 0..3 {
        if !out.success[i] {
            assert_eq!(out.l2[i], 0.0, "a failed sample must come back clean");
        }
    }
    Ok(())
}

#[test]
fn the_model_mode_is_restored_and_bad_input_rejected() -> anyhow::Result<()> {
    let m = model(5);
    let (x, y) = batch(2, 5);
    m.set_mode(Mode::Train);
    let pgd = PgdParams::default().check()?;
    pgd.perturb(&m, &x, &y, Goal::Untargeted, &mut temper_core::seed::rng("m"))?;
    assert_eq!(m.mode(), Mode::Train);
    let e = pgd
        .perturb(
            &m,
            &(&x * 255.0)?,
            &y,
            Goal::Untargeted,
            &mut temper_core::seed::rng("m"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("[0, 1]"), "{e}");
    let bad_y = Tensor::new(&[0u32, 7], &Device::Cpu)?;
    let e = pgd
        .perturb(&m, &x, &bad_y, Goal::Untargeted, &mut temper_core::seed::rng("m"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("class 7"), "{e}");
    for (bad, name) in [
        (
            PgdParams {
                eps: -0.1,
                ..PgdParams::default()
            },
            "eps",
        ),
        (
            PgdParams {
                alpha: 0.0,
                ..PgdParams::default()
            },
            "alpha",
        ),
        (
            PgdParams {
                steps: 0,
                ..PgdParams::default()
            },
            "steps",
        ),
        (
            PgdParams {
                restarts: 0,
                ..PgdParams::default()
            },
            "restarts",
        ),
    ] {
        let e = bad.check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(&format!("`{name}`")), "{e}");
    }
    Ok(())
}

#[test]
fn zero_eps_returns_the_clean_batch() -> anyhow::Result<()> {
    let m = model(6);
    let (x, y) = batch(2, 6);
    for norm in [Norm::Linf, Norm::L2] {
        let pgd = PgdParams {
            norm,
            eps: 0.0,
            ..PgdParams::default()
        }
        .check()?;
        let out = pgd.perturb(&m, &x, &y, Goal::Untargeted, &mut temper_core::seed::rng("z"))?;
        assert!(out.linf.iter().all(|&d| d == 0.0));
    }
    Ok(())
}
