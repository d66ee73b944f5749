//! HERO against the reference (`Xiaoxuan-Yang/HERO`) in PyTorch
//! (tests/fixtures/hero/make_fixtures.py): one step of a narrow preact-resnet18 in train mode.
//!
//! The reference differentiates its backward pass for the Hessian-vector product; Temper
//! takes a central finite difference with the ReLU masks frozen. The fixture records the
//! exact product (float32 double backward; float64 moves it by under 1e-7), so these tests
//! compare the finite difference with the exact form, not with itself.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use temper_core::{Classifier, Mode, Network, Normalization};
use temper_models::{ModelConfig, ModelKind};
use temper_train::attack_bn::AttackView;
use temper_train::metrics::TrainCost;
use temper_train::step::{StepBatch, StepCtx, StepOutput, TrainStep};
use temper_train::steps::HeroParams;
use temper_train::AttackBn;

struct Fixture {
    t: HashMap<String, Tensor>,
    s: serde_json::Value,
}

impl Fixture {
    fn load() -> Result<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hero");
        Ok(Fixture {
            t: candle_core::safetensors::load(dir.join("hero.safetensors"), &Device::Cpu)?,
            s: serde_json::from_str(&std::fs::read_to_string(dir.join("hero.json"))?)?,
        })
    }

    fn get(&self, k: &str) -> Result<Tensor> {
        self.t
            .get(k)
            .cloned()
            .with_context(|| format!("fixture has no {k}"))
    }

    fn num(&self, k: &str) -> Result<f64> {
        self.s[k]
            .as_f64()
            .with_context(|| format!("hero.json has no {k}"))
    }

    /// The fixture's network, with its weights, in train mode.
    fn model(&self) -> Result<Network> {
        let cfg = ModelConfig {
            width: self.num("width")?,
            normalization: Some(Normalization::identity(3)),
            ..ModelConfig::new(ModelKind::PreActResNet18, 10)
        }
        .check()?;
        let net = temper_models::build_zeroed(&cfg, &Device::Cpu)?;
        for e in net.params().entries() {
            e.var.set(&self.get(&format!("weights.{}", e.name))?)?;
        }
        net.set_mode(Mode::Train);
        Ok(net)
    }
}

/// One HERO step of the fixture's model with `params`.
fn hero_step(f: &Fixture, net: &Network, params: HeroParams) -> Result<StepOutput> {
    let mut hero = params.check()?;
    let k = hero
        .wrap_kernels(net.kernels())
        .context("hero wraps the kernels")?;
    net.set_kernels(k);
    let (x, y) = (f.get("x")?, f.get("y")?.to_dtype(DType::U32)?);
    let view = AttackView::new(net, AttackBn::Train);
    let mut rng = temper_core::seed::rng("test");
    let mut cost = TrainCost::default();
    let out = hero.step(
        StepBatch { x: &x, y: &y },
        StepCtx {
            model: net,
            attack_model: &view,
            rng: &mut rng,
            cost: &mut cost,
        },
    )?;
    // g0, g1 and the two finite-difference passes (none without a regularizer).
    let passes = if params.lambda > 0.0 { 4 * 16 } else { 2 * 16 };
    ensure!(cost.forward == passes && cost.backward == passes, "{cost:?}");
    Ok(out)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn fixture_params(f: &Fixture) -> Result<HeroParams> {
    Ok(HeroParams {
        rho: f.num("rho")?,
        lambda: f.num("lambda")?,
        fd_step: f.num("fd_step")?,
    })
}

#[test]
fn one_hero_update_equals_the_reference() -> Result<()> {
    let f = Fixture::load()?;
    let net = f.model()?;
    let out = hero_step(&f, &net, fixture_params(&f)?)?;
    ensure!(
        (out.loss - f.num("loss")?).abs() < 1e-5,
        "loss {} vs {}",
        out.loss,
        f.num("loss")?
    );
    let lr = f.num("lr")?;
    let (mut worst_d, mut worst_w) = (0f32, 0f32);
    for e in net.params().trainable() {
        // The step leaves the weights at W, bit for bit.
        let w = f.get(&format!("weights.{}", e.name))?;
        ensure!(max_abs(e.var.as_tensor(), &w)? == 0.0, "{} not restored", e.name);
        let d = out.grads.get(e.var.as_tensor()).context("no gradient")?;
        let dd = max_abs(d, &f.get(&format!("d.{}", e.name))?)?;
        // The update of plain SGD, W - lr d, against the reference's with the exact product.
        let w_new = (&w - (d * lr)?)?;
        let dw = max_abs(&w_new, &f.get(&format!("w_new.{}", e.name))?)?;
        worst_d = worst_d.max(dd);
        worst_w = worst_w.max(dw);
        ensure!(dw <= 1e-5, "{}: the update is off by {dw}", e.name);
    }
    // The finite-difference product against the exact one: the fixture's largest entry of
    // H v is 0.015, and PyTorch's own float32 finite difference is 1.5e-5 from it.
    ensure!(
        worst_d <= 5e-5,
        "the HERO gradient is {worst_d} from the exact reference (H v up to {})",
        f.num("hv_max")?
    );
    // The two finite-difference passes leave the running statistics where the passes at W
    // and W' put them.
    for e in net.params().buffers() {
        let want = f.get(&format!("after.{}", e.name))?;
        let d = max_abs(
            &e.var.as_tensor().to_dtype(DType::F32)?,
            &want.to_dtype(DType::F32)?,
        )?;
        ensure!(d <= 1e-5, "buffer {} off by {d}", e.name);
    }
    eprintln!("HERO gradient vs exact: max {worst_d:.2e}; update vs reference: max {worst_w:.2e}");
    Ok(())
}

#[test]
fn without_the_regularizer_hero_is_the_gradient_at_the_perturbed_weights() -> Result<()> {
    let f = Fixture::load()?;
    let net = f.model()?;
    let params = HeroParams {
        lambda: 0.0,
        ..fixture_params(&f)?
    };
    let out = hero_step(&f, &net, params)?;
    let mut regularizer_shows = false;
    for e in net.params().trainable() {
        let d = out.grads.get(e.var.as_tensor()).context("no gradient")?;
        let g1 = f.get(&format!("g1.{}", e.name))?;
        let dd = max_abs(d, &g1)?;
        ensure!(dd <= 1e-5, "{}: g1 off by {dd}", e.name);
        regularizer_shows |= max_abs(&g1, &f.get(&format!("d.{}", e.name))?)? > 1e-3;
    }
    // The regularizer's term is large enough that the first test sees it.
    ensure!(
        regularizer_shows,
        "the fixture's regularizer term is too small to test"
    );
    Ok(())
}

#[test]
fn hero_params_are_validated() {
    let ok = HeroParams::default();
    assert!(ok.check().is_ok());
    for bad in [
        HeroParams { rho: -0.1, ..ok },
        HeroParams {
            lambda: f64::NAN,
            ..ok
        },
        HeroParams { fd_step: 0.0, ..ok },
        HeroParams { fd_step: 1.0, ..ok },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

#[test]
fn a_step_without_wrapped_kernels_is_an_error() -> Result<()> {
    let f = Fixture::load()?;
    let net = f.model()?;
    let mut hero = HeroParams::default().check()?;
    let (x, y) = (f.get("x")?, f.get("y")?.to_dtype(DType::U32)?);
    let view = AttackView::new(&net, AttackBn::Train);
    let mut rng = temper_core::seed::rng("test");
    let mut cost = TrainCost::default();
    let r = hero.step(
        StepBatch { x: &x, y: &y },
        StepCtx {
            model: &net,
            attack_model: &view,
            rng: &mut rng,
            cost: &mut cost,
        },
    );
    ensure!(r.is_err());
    Ok(())
}
