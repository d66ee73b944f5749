//! A run interrupted mid-epoch and resumed from its checkpoint ends with weights
//! bit-identical to an uninterrupted run; and the run directory holds what it promises.

use anyhow::Result;
use candle_core::Device;
use std::path::Path;
use temper_models::{ModelConfig, ModelKind};
use temper_train::{files, render::Silent, resume, train, Method, RunOptions, TrainConfig};

fn config(method: Method) -> TrainConfig {
    let mut m = ModelConfig::new(ModelKind::SmallCnn, 10);
    m.width = 0.5;
    let mut c = TrainConfig::new(method, m, "mnist10k");
    c.epochs = 2;
    c.train_size = Some(320);
    c.batch_size = 64; // 5 iterations per epoch
    c.val_size = 100;
    c.threat.steps = 2;
    c.checkpoint_every = 3;
    c.log_every = 1;
    c.lr_schedule = "ssfd:peak=0.05,warmup=0.3".into();
    c
}

fn opts(stop_after: Option<u64>) -> RunOptions {
    RunOptions {
        stop_after,
        ..RunOptions::new(Box::new(Silent))
    }
}

fn bytes(p: &Path) -> Result<Vec<u8>> {
    Ok(std::fs::read(p)?)
}

/// Largest absolute difference between two weight files, for a readable failure.
fn max_diff(a: &Path, b: &Path) -> Result<f32> {
    let ta = candle_core::safetensors::load(a, &Device::Cpu)?;
    let tb = candle_core::safetensors::load(b, &Device::Cpu)?;
    let mut m = 0f32;
    for (k, x) in &ta {
        let d = (x.to_dtype(candle_core::DType::F32)? - tb[k].to_dtype(candle_core::DType::F32)?)?;
        m = m.max(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?);
    }
    Ok(m)
}

/// Bit-identical tensors under identical names (file bytes may differ: the JSON header's
/// metadata order is not fixed).
fn same_weights(a: &Path, b: &Path) -> Result<bool> {
    let ta = candle_core::safetensors::load(a, &Device::Cpu)?;
    let tb = candle_core::safetensors::load(b, &Device::Cpu)?;
    let bits = |t: &candle_core::Tensor| -> Result<Vec<u32>> {
        Ok(t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    };
    let mut keys: Vec<_> = ta.keys().collect();
    keys.sort();
    let mut kb: Vec<_> = tb.keys().collect();
    kb.sort();
    if keys != kb {
        return Ok(false);
    }
    for k in keys {
        if bits(&ta[k])? != bits(&tb[k])? {
            eprintln!("{k} differs; weights differ by up to {}", max_diff(a, b)?);
            return Ok(false);
        }
    }
    Ok(true)
}

#[test]
fn identical_runs_give_identical_weights() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut c = config(Method::PgdAt);
    c.epochs = 1;
    train(c.clone().check()?, &a, &Device::Cpu, opts(None))?;
    train(c.check()?, &b, &Device::Cpu, opts(None))?;
    assert!(same_weights(&a.join(files::LAST), &b.join(files::LAST))?);
    // Metadata keys are written in sorted order, so identical runs give identical files.
    assert_eq!(bytes(&a.join(files::LAST))?, bytes(&b.join(files::LAST))?);
    // The file records the model's configuration, normalisation included, so it loads back
    // into the same model without flags.
    let meta = temper_core::weights::read_metadata(a.join(files::LAST))?;
    let recorded = meta
        .get(temper_models::META_CONFIG)
        .ok_or_else(|| anyhow::anyhow!("no {} in {meta:?}", temper_models::META_CONFIG))?;
    let cfg: ModelConfig = serde_json::from_str(recorded)?;
    assert_eq!(cfg.kind, ModelKind::SmallCnn);
    assert_eq!(cfg.width, 0.5);
    assert!(
        cfg.normalization.is_some(),
        "normalisation not recorded: {recorded}"
    );
    Ok(())
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() -> Result<()> {
    for method in [Method::PgdAt, Method::Trades] {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let ra = train(config(method).check()?, &a, &Device::Cpu, opts(None))?;
        assert!(ra.complete && ra.iters == 10);
        // Stop after 7 iterations: the last checkpoint is at iteration 6, so the resumed run
        // redoes iteration 7 from the checkpoint.
        let rb = train(config(method).check()?, &b, &Device::Cpu, opts(Some(7)))?;
        assert!(!rb.complete);
        let rb = resume(&b, &Device::Cpu, opts(None))?;
        assert!(rb.complete);
        assert!(
            same_weights(&a.join(files::LAST), &b.join(files::LAST))?,
            "{method:?}: weights differ after resume"
        );
        assert_eq!(
            ra.cost.forward, rb.cost.forward,
            "{method:?}: cost counters differ"
        );
        // The log holds each iteration once.
        let log = std::fs::read_to_string(b.join(files::METRICS))?;
        let iters: Vec<u64> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "train")
            .filter_map(|v| v["iter"].as_u64())
            .collect();
        assert_eq!(iters, (1..=10).collect::<Vec<_>>(), "{method:?}");
    }
    Ok(())
}

#[test]
fn run_directory_contents_and_refusals() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("run");
    let r = train(config(Method::Natural).check()?, &d, &Device::Cpu, opts(None))?;
    for f in [
        files::CONFIG,
        files::METRICS,
        files::CHECKPOINT,
        files::LAST,
        files::BEST,
        files::SUMMARY,
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    assert!(r.val_clean.is_some() && r.val_robust.is_some());
    assert!(
        r.cost.forward == r.cost.images && r.cost.images == 640,
        "{:?}",
        r.cost
    );
    // The weights load into a fresh model with PyTorch names, strictly.
    let cfg = ModelConfig {
        width: 0.5,
        ..ModelConfig::new(ModelKind::SmallCnn, 10)
    }
    .check()?;
    temper_models::build_from_file(
        &cfg,
        d.join(files::LAST),
        temper_core::weights::Strictness::Strict,
        &Device::Cpu,
    )?;
    // The config round-trips through TOML.
    let text = std::fs::read_to_string(d.join(files::CONFIG))?;
    assert_eq!(TrainConfig::from_toml(&text, &d)?, config(Method::Natural));
    // A second run into the same directory is refused, and nothing is lost.
    let before = bytes(&d.join(files::LAST))?;
    let e = train(config(Method::Natural).check()?, &d, &Device::Cpu, opts(None))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("already holds a run"), "{e}");
    assert_eq!(before, bytes(&d.join(files::LAST))?);
    Ok(())
}

#[test]
fn bad_configs_name_the_parameter() {
    let mut c = config(Method::Finetune);
    c.weights = None;
    let e = c.check().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("`weights`"), "{e}");
    let mut c = config(Method::Natural);
    c.lr_schedule = "ssfd:peak=-1".into();
    assert!(c.check().is_err());
    let mut c = config(Method::PgdAt);
    c.epochs = 0;
    assert!(c
        .check()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("`epochs`"));
}
