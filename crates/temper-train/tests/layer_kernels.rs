//! Layer kernels (`RunOptions::layer_transform`): every forward pass of a run goes through them
//! (the step, its inner attack, validation), the configuration records their spec, and a run
//! or a resume given no kernels, or other ones, is refused before anything is written.

mod common;

use anyhow::Result;
use candle_core::Tensor;
use common::{config, opts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use temper_core::hooks::{LayerCall, LayerHook, LayerKind};
use temper_core::Network;
use temper_train::hooks::LayerTransform;
use temper_train::{train, Method};

/// A hook that counts the images the first convolution sees.
#[derive(Debug)]
struct Counting {
    images: Arc<AtomicU64>,
}

impl LayerHook for Counting {
    fn input(&self, call: &LayerCall<'_>, x: &Tensor) -> temper_core::Result<Option<Tensor>> {
        // small-cnn has two convolutions: count the first one's inputs only.
        if matches!(call.kind, LayerKind::Conv(_)) && call.weight_shape[1] == 1 {
            self.images.fetch_add(x.dim(0)? as u64, Ordering::Relaxed);
        }
        Ok(None)
    }
}

struct CountingLayers {
    spec: String,
    images: Arc<AtomicU64>,
}

impl LayerTransform for CountingLayers {
    fn spec(&self) -> String {
        self.spec.clone()
    }

    fn hook(&self, _net: &Network) -> temper_train::Result<Arc<dyn LayerHook>> {
        Ok(Arc::new(Counting {
            images: self.images.clone(),
        }))
    }
}

fn counting(spec: &str) -> (Box<dyn LayerTransform>, Arc<AtomicU64>) {
    let images = Arc::new(AtomicU64::new(0));
    let k = CountingLayers {
        spec: spec.to_string(),
        images: images.clone(),
    };
    (Box::new(k), images)
}

#[test]
fn every_forward_pass_of_the_run_goes_through_the_kernels() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(Method::PgdAt);
    cfg.epochs = 1;
    cfg.quantize = Some("counting".into());
    let (k, images) = counting("counting");
    let mut o = opts(None);
    o.layer_transform = Some(k);
    let report = train(
        cfg.check()?,
        &dir.path().join("run"),
        &candle_core::Device::Cpu,
        o,
    )?;
    // Training (attack passes included) and validation forward passes, image by image.
    let seen = images.load(Ordering::Relaxed);
    let c = report.cost;
    assert_eq!(seen, c.forward + c.val_forward, "{seen} images seen, cost {c:?}");
    let config = std::fs::read_to_string(dir.path().join("run/config.toml"))?;
    assert!(config.contains("quantize = \"counting\""), "{config}");
    let meta = temper_core::weights::read_metadata(dir.path().join("run/model.safetensors"))?;
    assert_eq!(meta.get("temper.quantize").map(String::as_str), Some("counting"));
    Ok(())
}

#[test]
fn runs_without_the_recorded_kernels_are_refused_before_anything_is_written() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(Method::Natural);
    cfg.epochs = 1;
    cfg.quantize = Some("4,per-channel,first-last=8".into());
    for (given, says) in [
        (None, "no quantizer kernels were given"),
        (
            Some("ternary,per-channel,first-last=8"),
            "kernels given are 'ternary",
        ),
    ] {
        let run = dir.path().join("run");
        let mut o = opts(None);
        o.layer_transform = given.map(|s| counting(s).0);
        let e = train(cfg.clone().check()?, &run, &candle_core::Device::Cpu, o)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(says) && e.contains("quantize"), "{e}");
        assert!(!run.exists(), "a refused run left its directory");
    }
    // Kernels the configuration does not record would make files that hide how they were
    // trained.
    let mut plain = cfg.clone();
    plain.quantize = None;
    let mut o = opts(None);
    o.layer_transform = Some(counting("4,per-channel,first-last=8").0);
    let e = train(
        plain.check()?,
        &dir.path().join("run"),
        &candle_core::Device::Cpu,
        o,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("records no quantizer"), "{e}");
    Ok(())
}
