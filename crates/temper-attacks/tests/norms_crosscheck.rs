//! FAB (untargeted L-inf, untargeted L2, targeted L2), APGD L1 and Square L2 against the
//! AutoAttack reference (fra31/auto-attack), recorded by
//! tests/fixtures/autoattack/make_norms.py.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_attacks::{ApgdParams, Attack, FabParams, Goal, LossKind, Norm};
use temper_core::weights::Strictness;
use temper_models::{build_from_file, ModelConfig, ModelKind};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model(file: &str) -> Result<temper_core::Network> {
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    Ok(build_from_file(&cfg, dir().join(file), Strictness::Strict, &Device::Cpu)?.0)
}

fn fixture() -> Result<(HashMap<String, Tensor>, serde_json::Value)> {
    let t = candle_core::safetensors::load(dir().join("autoattack/norms.safetensors"), &Device::Cpu)?;
    let s = serde_json::from_str(&std::fs::read_to_string(dir().join("autoattack/norms.json"))?)?;
    Ok((t, s))
}

/// One FAB run from the clean point (FAB-T towards the runner-up): per point the distance of
/// its closest adversarial example, next to the reference's.
fn fab(name: &str, norm: Norm, targeted: bool) -> Result<()> {
    let (fx, _) = fixture()?;
    let (x, y) = (&fx["x"], fx["y"].to_dtype(DType::U32)?);
    let want = fx[&format!("{name}.distance")].to_vec1::<f32>()?;
    let m = model("attacks/small_cnn_mnist.safetensors")?;
    // A budget no example exceeds, so that every example found counts and its size shows.
    let fab = FabParams {
        norm,
        eps: 1e3,
        steps: 100,
        targeted,
        targets: 1,
        restarts: 1,
        ..FabParams::default()
    }
    .check()?;
    let out = fab.perturb(&m, x, &y, Goal::Untargeted, &mut temper_core::seed::rng("fab"))?;
    let got = match norm {
        Norm::L2 => &out.l2,
        _ => &out.linf,
    };
    let mut close = 0;
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g > 0.0, w > 0.0, "{name} point {i}: found {g}, the reference {w}");
        let rel = (g - w).abs() / w.max(1e-6);
        worst = worst.max(rel);
        close += usize::from(rel <= 1e-2);
    }
    let n = want.len();
    println!(
        "{name}: {close}/{n} distances within 1% of the reference's, worst relative difference {worst:.2e}"
    );
    println!("  temper    {got:?}\n  reference {want:?}");
    assert!(
        close * 10 >= n * 9,
        "{name}: only {close}/{n} distances within 1%"
    );
    // The minimum-norm result as a robust accuracy: at the reference's median distance, the
    // two agree on all but at most one point.
    let mut sorted = want.clone();
    sorted.sort_by(f32::total_cmp);
    let eps = sorted[n / 2];
    let disagree = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| (**g <= eps) != (**w <= eps))
        .count();
    assert!(
        disagree <= 1,
        "{name}: {disagree} points on different sides of {eps}"
    );
    Ok(())
}

#[test]
fn fab_linf_equals_the_reference() -> Result<()> {
    fab("fab_linf", Norm::Linf, false)
}

#[test]
fn fab_l2_equals_the_reference() -> Result<()> {
    fab("fab_l2", Norm::L2, false)
}

#[test]
fn fab_t_l2_equals_the_reference() -> Result<()> {
    fab("fab_t_l2", Norm::L2, true)
}

/// APGD-CE L1 from the reference's start: the step sizes of its sparsity control and its loss
/// trace follow the reference's.
#[test]
fn apgd_ce_l1_follows_the_reference() -> Result<()> {
    let (fx, settings) = fixture()?;
    let (x, y) = (&fx["x"], fx["y"].to_dtype(DType::U32)?);
    let eps = settings["apgd_l1"]["eps"].as_f64().unwrap_or_default();
    let steps = settings["steps"].as_u64().unwrap_or_default() as usize;
    let apgd = ApgdParams {
        norm: Norm::L1,
        eps,
        steps,
        loss: LossKind::CrossEntropy,
        random_start: false,
        ..ApgdParams::default()
    }
    .check()?;
    let m = model("attacks/small_cnn_mnist.safetensors")?;
    let (trace, best) = apgd.trace(&m, x, &fx["apgd_l1.start"], &y, Goal::Untargeted)?;
    let want_steps = fx["apgd_l1.step_size"].to_vec2::<f32>()?;
    let want_loss = fx["apgd_l1.loss"].to_vec2::<f32>()?;
    let want_best = fx["apgd_l1.loss_best"].to_vec2::<f32>()?;
    let n = x.dim(0)?;
    // The sparse step picks coordinates by sorting gradient magnitudes: a rounding difference
    // at the threshold moves another coordinate and sends a sample down a nearby path, so the
    // comparison is per sample: how long its step sizes and its loss trace (within 1e-3)
    // stay the reference's, and how close its final best loss lands.
    let same_until = |got: &[Vec<f32>], want: &[Vec<f32>], s: usize, tol: f32| {
        (0..steps)
            .find(|&i| (got[i][s] - want[i][s]).abs() > tol * want[i][s].abs().max(1e-3))
            .unwrap_or(steps)
    };
    let schedule: Vec<usize> = (0..n)
        .map(|s| same_until(&trace.step_size, &want_steps, s, 1e-5))
        .collect();
    let losses: Vec<usize> = (0..n)
        .map(|s| same_until(&trace.loss, &want_loss, s, 1e-3))
        .collect();
    let final_rel: Vec<f32> = trace.loss_best[steps - 1]
        .iter()
        .zip(&want_best[steps])
        .map(|(g, w)| (g - w).abs() / w.abs().max(1e-3))
        .collect();
    println!(
        "apgd-ce-l1 per sample: step sizes equal for {schedule:?} iterations, losses within 1e-3 \
         for {losses:?}, final best loss rel diff {final_rel:?}"
    );
    let whole = |v: &[usize]| v.iter().filter(|&&i| i == steps).count();
    assert!(whole(&schedule) * 4 >= n * 3, "step sizes: {schedule:?}");
    assert!(whole(&losses) * 4 >= n * 3, "loss traces: {losses:?}");
    assert!(
        losses.iter().all(|&i| i >= 3),
        "a trace parts at once: {losses:?}"
    );
    let close = final_rel.iter().filter(|&&r| r <= 0.01).count();
    assert!(close * 8 >= n * 7, "final best losses: {final_rel:?}");
    // Every iterate stays in the L1 ball and the box.
    let l1 = temper_attacks::per_sample_l1(&(&best - x)?)?.to_vec1::<f32>()?;
    assert!(l1.iter().all(|&v| f64::from(v) <= eps * (1.0 + 1e-5)), "{l1:?}");
    Ok(())
}

/// Square L2 at eps 2 with 1000 queries on the PGD-trained small-cnn: Square is random, so the
/// comparison is the robust accuracy on 100 points, which must agree within a few points.
#[test]
fn square_l2_robust_accuracy_agrees_with_the_reference() -> Result<()> {
    let (_, settings) = fixture()?;
    let want = settings["square_l2"]["robust"].as_u64().unwrap_or_default() as usize;
    let points = settings["square_l2"]["points"].as_u64().unwrap_or_default() as usize;
    // The first 100 test digits, as make_fixtures.py saved them.
    let pts =
        candle_core::safetensors::load(dir().join("autoattack/autoattack_pgd.safetensors"), &Device::Cpu)?;
    let (x, y) = (&pts["x"], pts["y"].to_dtype(DType::U32)?);
    assert_eq!(x.dim(0)?, points);
    let m = model("autoattack/small_cnn_pgd.safetensors")?;
    let settings = AttackSettings {
        eps: 2.0,
        norm: Norm::L2,
        ..AttackSettings::default()
    };
    let square = AttackSpec::parse("square-l2-1000")?.build(&settings)?;
    let out = square.perturb(
        &m,
        x,
        &y,
        Goal::Untargeted,
        &mut temper_core::seed::rng_with(0, "square-l2"),
    )?;
    let robust = out.success.iter().filter(|&&s| !s).count();
    assert!(out.l2.iter().all(|&d| d <= 2.0 + 1e-4), "{:?}", out.l2);
    println!("square-l2: robust {robust} of {points}, the reference {want}");
    assert!(
        robust.abs_diff(want) <= 6,
        "robust {robust}, the reference {want}"
    );
    Ok(())
}
