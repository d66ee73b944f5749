//! Models and data shared by the integration tests.
#![allow(dead_code)]

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_core::{Classifier, ForwardOpts, Mode, ModelInfo, Network, ParamStore};
use temper_data::{Dataset, Split};
use temper_eval::NamedAttack;
use temper_models::{build, build_from_file, ModelConfig, ModelKind};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The small CNN trained on MNIST that tests/fixtures/attacks/make_fixtures.py saved (96% clean
/// accuracy on the 2,000 mnist10k test images; not adversarially trained).
pub fn trained_mnist() -> Result<Network> {
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let (m, _) = build_from_file(
        &cfg,
        fixtures().join("attacks/small_cnn_mnist.safetensors"),
        temper_core::weights::Strictness::Strict,
        &Device::Cpu,
    )?;
    Ok(m)
}

/// The first `n` bundled mnist10k test images.
pub fn mnist_test(n: usize) -> Result<Dataset> {
    let ds = temper_data::load("mnist10k", None, Split::Test)?;
    Ok(ds.subset(&(0..n).collect::<Vec<_>>())?)
}

/// A random half-width small CNN on 12x12 grey images: fast, for report plumbing.
pub fn tiny_model() -> Result<Network> {
    let mut cfg = ModelConfig::new(ModelKind::SmallCnn, 10);
    cfg.width = 0.5;
    cfg.input_size = (12, 12);
    Ok(build(&cfg.check()?, &Device::Cpu)?)
}

/// `n` random 12x12 grey images with labels cycling through 10 classes.
pub fn tiny_data(n: usize) -> Result<Dataset> {
    // A multiplicative hash: varied pixels without a generator.
    let pixels: Vec<u8> = (0..n * 144)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let classes = (0..10).map(|i| format!("c{i}")).collect();
    Ok(Dataset::new("tiny", [1, 12, 12], pixels, labels, classes)?)
}

/// Attacks from a spec list at `eps` (L-inf).
pub fn attacks(list: &str, eps: f64) -> Result<Vec<NamedAttack>> {
    let settings = AttackSettings {
        eps,
        ..AttackSettings::default()
    };
    AttackSpec::parse_list(list)?
        .iter()
        .map(|s| Ok((s.text.clone(), s.build(&settings)?)))
        .collect()
}

/// A classifier that hard-thresholds its input before the real model: `x >= 0.5` as 0/1.
/// The comparison has no gradient, so the input gradient is exactly zero everywhere: the
/// textbook masked gradient (a "binarisation defence").
pub struct Thresholded(pub Network);

impl Classifier for Thresholded {
    fn info(&self) -> &ModelInfo {
        self.0.info()
    }

    fn forward_opts(&self, x: &Tensor, opts: ForwardOpts) -> temper_core::Result<Tensor> {
        let binary = x.ge(0.5)?.to_dtype(DType::F32)?;
        self.0.forward_opts(&binary, opts)
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
