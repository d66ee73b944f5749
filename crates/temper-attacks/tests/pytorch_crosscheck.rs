//! Attacks against PyTorch references (tests/fixtures/attacks/make_fixtures.py): FGSM
//! examples, PGD L-inf and L2 trajectories, and Carlini-Wagner L2 distances, on a small CNN
//! trained on MNIST and on a BatchNorm network in eval mode.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use temper_attacks::{Attack, CwParams, FgsmParams, Goal, Norm, PgdParams};
use temper_core::weights::Strictness;
use temper_core::{Classifier, Mode, Normalization};
use temper_models::{build_from_file, ModelConfig, ModelKind};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixture() -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        dir().join("attacks/attacks.safetensors"),
        &Device::Cpu,
    )?)
}

fn settings() -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        dir().join("attacks/attacks.json"),
    )?)?)
}

fn mnist_model() -> Result<temper_core::Network> {
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let (m, _) = build_from_file(
        &cfg,
        dir().join("attacks/small_cnn_mnist.safetensors"),
        Strictness::Strict,
        &Device::Cpu,
    )?;
    Ok(m)
}

fn preact_model() -> Result<temper_core::Network> {
    let mut cfg = ModelConfig::new(ModelKind::PreActResNet18, 10);
    cfg.width = 1.0 / 16.0;
    cfg.normalization = Some(Normalization::identity(3));
    let (m, _) = build_from_file(
        &cfg.check()?,
        dir().join("models/preact_resnet18.safetensors"),
        Strictness::Strict,
        &Device::Cpu,
    )?;
    Ok(m)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
    let n = (a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(n / b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
}

/// FGSM outputs equal PyTorch's except where PyTorch's gradient is (numerically) zero and
/// the sign may flip.
fn check_fgsm(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    want: &Tensor,
    grad: Option<&Tensor>,
    eps: f64,
) -> Result<()> {
    let fgsm = FgsmParams {
        eps,
        ..FgsmParams::default()
    }
    .check()?;
    let out = fgsm.perturb(model, x, y, Goal::Untargeted, &mut temper_core::seed::rng("t"))?;
    let diff = (&out.adv - want)?.abs()?.flatten_all()?.to_vec1::<f32>()?;
    let bad: Vec<usize> = diff
        .iter()
        .enumerate()
        .filter(|(_, &d)| d >= 1e-5)
        .map(|(i, _)| i)
        .collect();
    if let Some(g) = grad {
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        let gmax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        for &i in &bad {
            assert!(
                g[i].abs() <= 1e-6 * gmax,
                "FGSM differs at {i} where PyTorch's gradient is {} (max {gmax})",
                g[i]
            );
        }
    }
    assert!(
        bad.len() * 1000 <= diff.len(),
        "FGSM differs from PyTorch at {} of {} pixels",
        bad.len(),
        diff.len()
    );
    Ok(())
}

#[test]
fn input_gradient_matches_pytorch() -> Result<()> {
    let fx = fixture()?;
    let model = mnist_model()?;
    let x = candle_core::Var::from_tensor(&fx["mnist.x"])?;
    let logits = model.forward_opts(
        x.as_tensor(),
        temper_core::ForwardOpts {
            mode: Mode::Eval,
            param_grads: false,
        },
    )?;
    let loss = candle_nn::loss::cross_entropy(&logits, &fx["mnist.y"].to_dtype(candle_core::DType::U32)?)?;
    let n = fx["mnist.x"].dim(0)? as f64;
    let g = (loss
        .backward()?
        .get(x.as_tensor())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no grad"))?
        * n)?;
    let e = rel(&g, &fx["mnist.grad"])?;
    assert!(e < 1e-5, "input gradient rel err {e}");
    Ok(())
}

#[test]
fn fgsm_equals_pytorch() -> Result<()> {
    let fx = fixture()?;
    let model = mnist_model()?;
    check_fgsm(
        &model,
        &fx["mnist.x"],
        &fx["mnist.y"],
        &fx["mnist.fgsm"],
        Some(&fx["mnist.grad"]),
        0.1,
    )?;
    let pre = preact_model()?;
    pre.set_mode(Mode::Train);
    check_fgsm(
        &pre,
        &fx["preact.x"],
        &fx["preact.y"],
        &fx["preact.fgsm"],
        None,
        8.0 / 255.0,
    )?;
    assert_eq!(
        pre.mode(),
        Mode::Train,
        "the attack must restore the model's mode"
    );
    Ok(())
}

/// Compares a whole PGD run with PyTorch's. L2 steps use the gradient itself and must
/// match within 1e-4 relative per sample (where f32 can resolve the gradient). L-inf steps use its sign, which flips between frameworks
/// where the gradient is zero up to rounding, and a flipped pixel then stays apart: there
/// at least 99% of pixels must agree within 1e-4 at every kept step (the exact per-step
/// check is `pgd_linf_single_steps_match_pytorch`).
fn check_trajectory(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    want: &Tensor,
    steps_kept: &[usize],
    params: PgdParams,
) -> Result<()> {
    let pgd = PgdParams {
        random_start: false,
        ..params
    }
    .check()?;
    let traj = pgd.trajectory(model, x, x, y, Goal::Untargeted)?;
    for (k, &s) in steps_kept.iter().enumerate() {
        let got = &traj[s - 1];
        let w = want.get(k)?;
        let e = rel(&(got - x)?, &(&w - x)?)?;
        let far = (got - &w)?
            .abs()?
            .ge(1e-4)?
            .to_dtype(candle_core::DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        println!(
            "{:?} step {s}: perturbation rel err {e:.2e}, pixels off by >1e-4: {far:.2e}",
            params.norm
        );
        match params.norm {
            Norm::L2 => {
                // The L2 step normalises each sample's gradient, so its accuracy is that of
                // the cross-entropy gradient, whose true-class term 1 - p_y is known in f32
                // only to ~6e-8 absolute. Samples whose softmax is not saturated must match
                // within 1e-4; saturated ones within what f32 can resolve.
                let (dg, dw) = ((got - x)?, (&w - x)?);
                let logits = model.forward(x)?;
                let p = candle_nn::ops::softmax(&logits, 1)?.to_vec2::<f32>()?;
                let labels = y.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
                let mut strict = 0;
                for i in 0..x.dim(0)? {
                    let q = (1.0 - p[i][labels[i] as usize]).max(1e-12);
                    let tol = if q > 1e-3 { 1e-4 } else { (3e-6 / q).max(1e-4) };
                    strict += usize::from(q > 1e-3);
                    let ei = rel(&dg.get(i)?, &dw.get(i)?)?;
                    assert!(
                        ei <= tol,
                        "L2 step {s}, sample {i}: rel err {ei:e} > {tol:e} (1 - p_y = {q:e})"
                    );
                }
                assert!(
                    strict * 2 >= x.dim(0)?,
                    "too few unsaturated samples for a meaningful check"
                );
            }
            Norm::L1 => unreachable!("the fixture has no L1 PGD"),
            Norm::Linf => assert!(
                far <= 1e-2,
                "L-inf step {s}: {far} of pixels differ (max abs {})",
                max_abs(got, &w)?
            ),
        }
    }
    Ok(())
}

fn kept_steps() -> Result<Vec<usize>> {
    let s = settings()?;
    Ok(s["trajectory_steps_kept"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as usize).collect())
        .unwrap_or_default())
}

#[test]
fn pgd_trajectories_match_pytorch() -> Result<()> {
    let fx = fixture()?;
    let kept = kept_steps()?;
    assert_eq!(kept, [1, 2, 5, 6, 9, 10]);
    let model = mnist_model()?;
    let (x, y) = (&fx["mnist.x"], &fx["mnist.y"]);
    let linf = PgdParams {
        norm: Norm::Linf,
        eps: 0.1,
        alpha: 0.01,
        steps: 10,
        ..PgdParams::default()
    };
    check_trajectory(&model, x, y, &fx["mnist.pgd_linf"], &kept, linf)?;
    let l2 = PgdParams {
        norm: Norm::L2,
        eps: 1.5,
        alpha: 0.25,
        steps: 10,
        ..PgdParams::default()
    };
    check_trajectory(&model, x, y, &fx["mnist.pgd_l2"], &kept, l2)?;
    let pre = preact_model()?;
    let p = PgdParams {
        eps: 8.0 / 255.0,
        alpha: 2.0 / 255.0,
        steps: 5,
        ..PgdParams::default()
    };
    check_trajectory(
        &pre,
        &fx["preact.x"],
        &fx["preact.y"],
        &fx["preact.pgd_linf"],
        &[1, 5],
        p,
    )?;
    Ok(())
}

/// One L-inf PGD step taken from PyTorch's own iterate (steps 0, 1, 5 and 9) lands on
/// PyTorch's next iterate, except where PyTorch's gradient there is zero up to rounding.
#[test]
fn pgd_linf_single_steps_match_pytorch() -> Result<()> {
    let fx = fixture()?;
    let model = mnist_model()?;
    let (x, y) = (&fx["mnist.x"], &fx["mnist.y"]);
    let traj = &fx["mnist.pgd_linf"]; // steps 1, 2, 5, 6, 9, 10
    let grads = &fx["mnist.pgd_linf_grads"]; // at steps 1, 5, 9
    let one = PgdParams {
        eps: 0.1,
        alpha: 0.01,
        steps: 1,
        random_start: false,
        ..PgdParams::default()
    }
    .check()?;
    let mut pairs = vec![(x.clone(), traj.get(0)?, fx["mnist.grad"].clone())];
    for (k, (from, to)) in [(0, 1), (2, 3), (4, 5)].into_iter().enumerate() {
        pairs.push((traj.get(from)?, traj.get(to)?, grads.get(k)?));
    }
    for (i, (from, to, g)) in pairs.iter().enumerate() {
        let got = one.trajectory(&model, x, from, y, Goal::Untargeted)?.remove(0);
        let diff = (&got - to)?.abs()?.flatten_all()?.to_vec1::<f32>()?;
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        let gmax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut flips = 0;
        for (j, d) in diff.iter().enumerate() {
            if *d >= 1e-5 {
                assert!(
                    g[j].abs() <= 1e-6 * gmax,
                    "pair {i}: pixel {j} off by {d} where PyTorch's gradient is {}",
                    g[j]
                );
                flips += 1;
            }
        }
        println!("pair {i}: {flips} sign flips at zero gradient of {}", diff.len());
    }
    Ok(())
}

#[test]
fn carlini_wagner_distances_match_pytorch_reference() -> Result<()> {
    let fx = fixture()?;
    let s = settings()?;
    let cw = &s["cw"];
    let f = |k: &str| cw[k].as_f64().unwrap_or(f64::NAN);
    let params = CwParams {
        c: f("c"),
        kappa: f("kappa"),
        steps: f("steps") as usize,
        binary_steps: f("binary_steps") as usize,
        lr: f("lr"),
        abort_early: true,
    };
    let model = mnist_model()?;
    let out = params.check()?.perturb(
        &model,
        &fx["mnist.x"],
        &fx["mnist.y"],
        Goal::Untargeted,
        &mut temper_core::seed::rng("cw"),
    )?;
    let ok: Vec<f32> = out
        .l2
        .iter()
        .zip(&out.success)
        .filter(|(_, &s)| s)
        .map(|(d, _)| *d)
        .collect();
    let rate = ok.len() as f64 / out.success.len() as f64;
    let mean = ok.iter().sum::<f32>() as f64 / ok.len().max(1) as f64;
    let (want_rate, want_mean) = (f("success_rate"), f("mean_l2"));
    println!("CW: success {rate:.3} (PyTorch {want_rate:.3}), mean L2 {mean:.4} (PyTorch {want_mean:.4})");
    assert!(
        (rate - want_rate).abs() <= 1.0 / 32.0 + 1e-9,
        "success rate {rate} vs {want_rate}"
    );
    assert!(
        (mean - want_mean).abs() / want_mean < 0.05,
        "mean L2 {mean} vs {want_mean}"
    );
    // A minimum-norm attack returns the clean point where it failed.
    for (i, s) in out.success.iter().enumerate() {
        if !s {
            assert_eq!(out.l2[i], 0.0);
        }
    }
    Ok(())
}
