//! The trainer validates with the one evaluator: its numbers equal `temper_eval::evaluate`'s
//! for the same model, data, attack and seed.

mod common;

use anyhow::{ensure, Result};
use candle_core::Device;
use common::{config, opts, val_set};
use temper_attacks::{Norm, PgdParams};
use temper_eval::{EvalParams, Threat};
use temper_train::{files, train, Method};

#[test]
fn validation_equals_the_evaluator() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("run");
    let mut cfg = config(Method::PgdAt);
    cfg.epochs = 1;
    cfg.val_size = 300;
    cfg.seed = 11;
    let r = train(cfg.clone().check()?, &d, &Device::Cpu, opts(None))?;
    // The last weights are the ones validated at the end of the last epoch.
    let model = temper_models::build_from_file(
        &cfg.model.clone().check()?,
        d.join(files::LAST),
        temper_core::weights::Strictness::Strict,
        &Device::Cpu,
    )?
    .0;
    let eps = cfg.threat.eps;
    let pgd = PgdParams {
        eps,
        alpha: 2.5 * eps / 10.0,
        steps: 10,
        ..PgdParams::default()
    }
    .check()?;
    let params = EvalParams {
        batch_size: 500,
        threat: Threat {
            norm: Norm::Linf,
            eps,
        },
        masking: None,
        state: None,
        cascade: false,
    }
    .check()?;
    temper_core::seed::set_seed(cfg.seed);
    let e = temper_eval::evaluate(
        &model,
        &val_set(&cfg)?,
        &[("pgd-10".into(), Box::new(pgd))],
        &params,
        &Device::Cpu,
    )?;
    ensure!(e.samples == 300);
    ensure!(
        r.val_clean == Some(e.clean.accuracy.accuracy),
        "{:?} vs {:?}",
        r.val_clean,
        e.clean.accuracy
    );
    ensure!(
        r.val_robust == Some(e.attacks[0].robust.accuracy),
        "{:?} vs {:?}",
        r.val_robust,
        e.attacks[0].robust
    );
    ensure!(
        e.attacks[0].robust.accuracy < e.clean.accuracy.accuracy,
        "the attack did nothing"
    );
    Ok(())
}
