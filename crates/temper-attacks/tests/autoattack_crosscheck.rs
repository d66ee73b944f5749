//! APGD against the AutoAttack reference (fra31/auto-attack, recorded by
//! tests/fixtures/autoattack/make_fixtures.py): from the same start on the same 16 digits, the
//! step-size checks happen at the same iterations, every sample's step-size schedule is the
//! reference's, and the loss trace follows the reference's.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use temper_attacks::{checkpoints, ApgdParams, Goal, LossKind, Norm};
use temper_core::weights::Strictness;
use temper_models::{build_from_file, ModelConfig, ModelKind};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model() -> Result<temper_core::Network> {
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let (m, _) = build_from_file(
        &cfg,
        dir().join("attacks/small_cnn_mnist.safetensors"),
        Strictness::Strict,
        &Device::Cpu,
    )?;
    Ok(m)
}

fn fixture() -> Result<(HashMap<String, Tensor>, serde_json::Value)> {
    let t = candle_core::safetensors::load(dir().join("autoattack/autoattack.safetensors"), &Device::Cpu)?;
    let s = serde_json::from_str(&std::fs::read_to_string(
        dir().join("autoattack/autoattack.json"),
    )?)?;
    Ok((t, s))
}

/// Runs one configuration and compares it with the reference.
fn check(name: &str) -> Result<()> {
    let (fx, settings) = fixture()?;
    let cfg = &settings["configs"][name];
    let norm = Norm::parse(cfg["norm"].as_str().unwrap_or_default())?;
    let eps = cfg["eps"].as_f64().unwrap_or_default();
    let steps = settings["steps"].as_u64().unwrap_or_default() as usize;
    let loss = match cfg["loss"].as_str() {
        Some("ce") => LossKind::CrossEntropy,
        _ => LossKind::Dlr,
    };
    let want_checks: Vec<usize> = cfg["checkpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as usize).collect())
        .unwrap_or_default();
    let apgd = ApgdParams {
        norm,
        eps,
        steps,
        loss,
        random_start: false,
        ..ApgdParams::default()
    }
    .check()?;
    let (x, y) = (&fx["x"], fx["y"].to_dtype(DType::U32)?);
    let target = fx
        .get(&format!("{name}.target"))
        .map(|t| t.to_dtype(DType::U32))
        .transpose()?;
    let goal = target.as_ref().map_or(Goal::Untargeted, Goal::Targeted);
    let model = model()?;
    let (trace, best) = apgd.trace(&model, x, &fx[&format!("{name}.start")], &y, goal)?;

    assert_eq!(trace.checkpoints, want_checks, "{name}: checkpoint iterations");
    assert_eq!(checkpoints(steps), want_checks);

    let want_steps = fx[&format!("{name}.step_size")].to_vec2::<f32>()?;
    let want_loss = fx[&format!("{name}.loss")].to_vec2::<f32>()?;
    let want_best = fx[&format!("{name}.loss_best")].to_vec2::<f32>()?;
    let n = x.dim(0)?;
    // Where the DLR loss reaches 1 the true label sits exactly at the third-largest logit,
    // and the loss is `(z_π1 - z_π3) / (z_π1 - z_π3)`: constant, so its gradient is zero
    // and what either framework computes there is the sign of rounding noise. Each sample is
    // compared up to and including its first iteration on that plateau; the attack has
    // already succeeded there (the true label is not the largest).
    let horizon: Vec<usize> = (0..n)
        .map(|s| {
            (0..steps)
                .find(|&i| loss == LossKind::Dlr && (want_loss[i][s] - 1.0).abs() < 1e-6)
                .map_or(steps, |i| i + 1)
        })
        .collect();
    // A sample's schedule is its step size at every iteration; it equals the reference's
    // exactly (2 eps halved a whole number of times).
    let same_schedule = (0..n)
        .filter(|&s| (0..horizon[s]).all(|i| trace.step_size[i][s] == want_steps[i][s]))
        .count();
    // The loss trace: per sample, the largest relative difference.
    let mut worst = 0f32;
    for (s, &h) in horizon.iter().enumerate() {
        for (got, want) in trace.loss.iter().zip(&want_loss).take(h) {
            worst = worst.max((got[s] - want[s]).abs() / (1e-3 + want[s].abs()));
        }
    }
    let best_final = (0..n)
        .map(|s| {
            let (a, b) = (trace.loss_best[steps - 1][s], want_best[steps][s]);
            (a - b).abs() / (1e-3 + b.abs())
        })
        .fold(0f32, f32::max);
    let best_far = (&best - &fx[&format!("{name}.x_best")])?
        .abs()?
        .ge(1e-4)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    println!(
        "{name}: iterations compared per sample {horizon:?}; schedules equal {same_schedule}/{n}, \
         loss trace worst rel diff {worst:.2e}, final best loss worst rel {best_final:.2e}, \
         x_best pixels off by 1e-4 {best_far:.2e}"
    );
    assert_eq!(same_schedule, n, "{name}: step-size schedules differ");
    assert!(worst <= 1e-3, "{name}: loss traces differ by {worst:e}");
    assert!(best_far <= 1e-2, "{name}: x_best differs at {best_far} of pixels");
    assert!(
        best_final <= 1e-2,
        "{name}: final best loss differs by {best_final}"
    );
    Ok(())
}

#[test]
fn apgd_ce_linf_equals_the_reference() -> Result<()> {
    check("apgd_ce")
}

#[test]
fn apgd_dlr_linf_equals_the_reference() -> Result<()> {
    check("apgd_dlr")
}

#[test]
fn apgd_t_linf_equals_the_reference() -> Result<()> {
    check("apgd_t")
}

#[test]
fn apgd_ce_l2_equals_the_reference() -> Result<()> {
    check("apgd_ce_l2")
}

/// Standard AutoAttack at full strength (APGD-CE 100 iterations, APGD-T and FAB-T over 9
/// targets, Square with 5000 queries) at eps 0.3 on a PGD-trained small-cnn, against the
/// reference's standard version on the same 100 test digits: the per-point outcomes may
/// differ on at most 1% of the points (the random starts and Square's draws differ between
/// the two).
#[test]
fn standard_autoattack_agrees_with_the_reference_per_point() -> Result<()> {
    let fx =
        candle_core::safetensors::load(dir().join("autoattack/autoattack_pgd.safetensors"), &Device::Cpu)?;
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir().join("autoattack/autoattack_pgd.json"),
    )?)?;
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let (model, _) = build_from_file(
        &cfg,
        dir().join("autoattack/small_cnn_pgd.safetensors"),
        Strictness::Strict,
        &Device::Cpu,
    )?;
    let (x, y) = (&fx["x"], fx["y"].to_dtype(DType::U32)?);
    let n = x.dim(0)?;
    let eps = want["eps"].as_f64().unwrap_or_default();
    let aa = temper_attacks::AutoAttack::new(temper_attacks::AutoAttackVersion::Standard, Norm::Linf, eps)?;
    let start = std::time::Instant::now();
    let out = temper_attacks::Attack::perturb(
        &aa,
        &model,
        x,
        &y,
        Goal::Untargeted,
        &mut temper_core::seed::rng("aa-reference"),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let flags = |v: &serde_json::Value| -> Vec<bool> {
        v.as_array()
            .map(|a| a.iter().map(|b| b.as_bool().unwrap_or(false)).collect())
            .unwrap_or_default()
    };
    let reference = flags(&want["standard"]["robust"]);
    let clean = flags(&want["clean"]);
    let temper: Vec<bool> = out.success.iter().map(|s| !s).collect();
    assert_eq!(reference.len(), n);
    let differ = (0..n).filter(|&i| temper[i] != reference[i]).count();
    let count = |v: &[bool]| v.iter().filter(|b| **b).count();
    println!(
        "{n} points: clean {}, robust: Temper standard {}, reference standard {} ({:.0} s); \
         outcomes differ on {differ}; Temper cost per image: \
         {:.0} forward, {:.0} backward, {:.0} queries, {:.3} s",
        count(&clean),
        count(&temper),
        count(&reference),
        want["standard"]["seconds"].as_f64().unwrap_or_default(),
        out.cost.forward as f64 / n as f64,
        out.cost.backward as f64 / n as f64,
        out.cost.queries as f64 / n as f64,
        seconds / n as f64
    );
    assert!(out.linf.iter().all(|&d| f64::from(d) <= eps + 1e-6));
    assert!(
        differ * 100 <= n,
        "per-point outcomes differ on {differ} of {n} points"
    );
    Ok(())
}
