//! Layer kernels (`RunOptions::layer_kernels`): every forward pass of a run goes through them
//! (the step, its inner attack, validation), the configuration records their spec, and a run
//! or a resume given no kernels, or other ones, is refused before anything is written.

mod common;

use anyhow::Result;
use candle_core::Tensor;
use common::{config, opts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use temper_core::kernels::{ConvCfg, Kernels};
use temper_core::Network;
use temper_train::hooks::LayerKernels;
use temper_train::{train, Method};

/// Kernels that count the images each convolution sees, then delegate.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Kernels>,
    images: Arc<AtomicU64>,
}

impl Kernels for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    fn fallback(&self) -> &dyn Kernels {
        self.inner.as_ref()
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        cfg: ConvCfg,
    ) -> temper_core::Result<Tensor> {
        // small-cnn has two convolutions: count the first one's inputs only.
        if w.dim(1)? == 1 {
            self.images.fetch_add(x.dim(0)? as u64, Ordering::Relaxed);
        }
        self.inner.conv2d(x, w, b, cfg)
    }
}

struct CountingLayers {
    spec: String,
    images: Arc<AtomicU64>,
}

impl LayerKernels for CountingLayers {
    fn spec(&self) -> String {
        self.spec.clone()
    }

    fn wrap(&self, net: &Network) -> temper_train::Result<Arc<dyn Kernels>> {
        Ok(Arc::new(Counting {
            inner: net.kernels(),
            images: self.images.clone(),
        }))
    }
}

fn counting(spec: &str) -> (Box<dyn LayerKernels>, Arc<AtomicU64>) {
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
    o.layer_kernels = Some(k);
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
        o.layer_kernels = given.map(|s| counting(s).0);
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
    o.layer_kernels = Some(counting("4,per-channel,first-last=8").0);
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
