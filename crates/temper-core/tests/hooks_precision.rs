//! The kernel layer's two companions: layer hooks (observers and input transforms, by
//! parameter name, independent of the kernels) and the forward pass's precision setting.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::sync::{Arc, Mutex};
use temper_core::hooks::{LayerCall, LayerHook, LayerKind};
use temper_core::kernels::{select_kernels, CandleKernels, ConvCfg, FastCpuKernels, Kernels, Precision};
use temper_core::nn::{BatchNorm2d, Conv2d, Linear};
use temper_core::{Backbone, Builder, Classifier, Ctx, ForwardOpts, Mode, ModelInfo, Network, Normalization};

struct Net {
    conv: Conv2d,
    bn: BatchNorm2d,
    fc: Linear,
}

impl Backbone for Net {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> temper_core::Result<Tensor> {
        let h = temper_core::nn::relu(&self.bn.forward(&self.conv.forward(x, ctx)?, ctx)?, ctx)?;
        self.fc.forward(&temper_core::nn::global_avg_pool(&h, ctx)?, ctx)
    }
}

fn net() -> Result<Network> {
    let dev = Device::Cpu;
    let b = Builder::new(&dev, temper_core::seed::rng_with(3, "hooks"));
    let conv = Conv2d::new(
        &b.pp("features").pp("0"),
        3,
        6,
        3,
        ConvCfg {
            padding: 1,
            ..ConvCfg::default()
        },
        false,
    )?;
    let bn = BatchNorm2d::new(&b.pp("features").pp("1"), 6)?;
    let fc = Linear::new(&b.pp("head"), 6, 5, true)?;
    let info = ModelInfo {
        name: "net".into(),
        num_classes: 5,
        input_shape: [3, 8, 8],
    };
    Ok(Network::new(
        info,
        b.finish(),
        Box::new(Net { conv, bn, fc }),
        Normalization::identity(3),
        &dev,
    )?)
}

fn input(n: usize) -> Result<Tensor> {
    Ok(Tensor::rand(0f32, 1f32, (n, 3, 8, 8), &Device::Cpu)?)
}

const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

/// Records (name, kind, weight shape, input id, output id) of every call.
#[derive(Debug, Default)]
struct Log(Mutex<Vec<Seen>>);

/// (name, kind, weight shape, has bias) of one call.
type Seen = (String, LayerKind, Vec<usize>, bool);

impl LayerHook for Log {
    fn output(&self, call: &LayerCall<'_>, _x: &Tensor, _y: &Tensor) -> temper_core::Result<()> {
        self.0.lock().expect("log lock").push((
            call.name.to_string(),
            call.kind,
            call.weight_shape.to_vec(),
            call.has_bias,
        ));
        Ok(())
    }
}

/// Replaces the input of one named layer by zeros.
#[derive(Debug)]
struct ZeroInput(&'static str);

impl LayerHook for ZeroInput {
    fn input(&self, call: &LayerCall<'_>, x: &Tensor) -> temper_core::Result<Option<Tensor>> {
        Ok((call.name == self.0).then(|| x.zeros_like()).transpose()?)
    }
}

#[test]
fn hooks_see_every_layer_by_its_parameter_name_in_order() -> Result<()> {
    let n = net()?;
    let log = Arc::new(Log::default());
    let hook: Arc<dyn LayerHook> = log.clone();
    n.add_hook(hook.clone());
    n.forward_opts(&input(2)?, EVAL)?;
    let calls = log.0.lock().expect("log lock").clone();
    let names: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["features.0", "features.1", "head"]);
    assert_eq!(calls[0].2, [6, 3, 3, 3]);
    assert!(matches!(calls[0].1, LayerKind::Conv(c) if c.padding == 1));
    assert_eq!(calls[1].1, LayerKind::BatchNorm);
    assert_eq!(
        (calls[2].1, calls[2].2.as_slice(), calls[2].3),
        (LayerKind::Linear, &[5, 6][..], true)
    );
    // Every name is a parameter prefix in the store.
    for name in names {
        assert!(n.params().get(&format!("{name}.weight")).is_some(), "{name}");
    }
    // Removed hooks see nothing more.
    assert!(n.remove_hook(&hook));
    assert!(!n.remove_hook(&hook));
    n.forward_opts(&input(2)?, EVAL)?;
    assert_eq!(log.0.lock().expect("log lock").len(), 3);
    Ok(())
}

/// Scales one named layer's weight by a constant.
#[derive(Debug)]
struct ScaleWeight(&'static str, f64);

impl LayerHook for ScaleWeight {
    fn weight(&self, call: &LayerCall<'_>, w: &Tensor) -> temper_core::Result<Option<Tensor>> {
        Ok((call.name == self.0).then(|| w.affine(self.1, 0.0)).transpose()?)
    }
}

#[test]
fn a_weight_hook_changes_the_weight_the_layer_computes_with_and_its_gradient() -> Result<()> {
    let n = net()?;
    let x = input(2)?;
    let opts = ForwardOpts {
        mode: Mode::Eval,
        param_grads: true,
    };
    let base = n.forward_opts(&x, opts)?;
    let w = n
        .params()
        .get("head.weight")
        .expect("head.weight")
        .var
        .as_tensor()
        .clone();
    let g0 = base
        .sum_all()?
        .backward()?
        .get(&w)
        .expect("weight gradient")
        .clone();
    n.add_hook(Arc::new(ScaleWeight("head", 2.0)));
    let scaled = n.forward_opts(&x, opts)?;
    let bias = n
        .params()
        .get("head.bias")
        .expect("head.bias")
        .var
        .as_tensor()
        .unsqueeze(0)?;
    // (2W)x + b = 2(Wx + b) - b.
    let want = ((base.clone() * 2.0)?.broadcast_sub(&bias))?;
    assert!(scaled.sub(&want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
    // The gradient reaches the float weight through the transform (chain rule: 2x).
    let g1 = scaled
        .sum_all()?
        .backward()?
        .get(&w)
        .expect("weight gradient")
        .clone();
    let d = g1.sub(&(g0 * 2.0)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(d < 1e-5, "{d}");
    Ok(())
}

#[test]
fn hooks_survive_a_change_of_kernels() -> Result<()> {
    let x = input(3)?;
    let n = net()?;
    let clean = n.forward_opts(&x, EVAL)?;
    n.add_hook(Arc::new(ZeroInput("head")));
    let hooked = n.forward_opts(&x, EVAL)?;
    // A zero input to the head leaves only its bias.
    let bias = n
        .params()
        .get("head.bias")
        .expect("head.bias")
        .var
        .as_tensor()
        .unsqueeze(0)?;
    let diff = hooked
        .broadcast_sub(&bias)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-6, "{diff}");
    assert!(clean.sub(&hooked)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-4);
    for kernels in [
        Arc::new(CandleKernels) as Arc<dyn Kernels>,
        Arc::new(FastCpuKernels),
    ] {
        n.set_kernels(kernels);
        let again = n.forward_opts(&x, EVAL)?;
        let d = again.sub(&hooked)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{} kernels dropped the hook: {d}", n.kernels().name());
    }
    Ok(())
}

#[test]
fn precision_names_parse_and_reject_unknown_values() -> Result<()> {
    for p in Precision::ALL {
        assert_eq!(Precision::parse(p.name())?, p);
        assert_eq!(Precision::parse(&p.name().to_uppercase())?, p);
    }
    let err = Precision::parse("fp8")
        .expect_err("fp8 is not a precision")
        .to_string();
    assert!(err.contains("precision") && err.contains("fp8"), "{err}");
    assert_eq!(Precision::default(), Precision::F32);
    Ok(())
}

/// Rounds to bf16 (nearest even) by hand: the reference for the operand rounding.
fn bf16_round(v: f32) -> f32 {
    let bits = v.to_bits();
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7fff + lsb) & 0xffff_0000;
    f32::from_bits(rounded)
}

#[test]
fn bf16_operands_are_rounded_to_nearest_even() -> Result<()> {
    let v: Vec<f32> = (0..500)
        .map(|i| ((i as f32) * 0.731).sin() * 10f32.powi(i % 7 - 3))
        .collect();
    let t = Tensor::from_vec(v.clone(), v.len(), &Device::Cpu)?;
    let r = Precision::Bf16.operand(&t)?;
    assert_eq!(r.dtype(), DType::F32);
    for (a, b) in v.iter().zip(r.to_vec1::<f32>()?) {
        assert_eq!(bf16_round(*a), b, "{a}");
    }
    for p in [Precision::F32, Precision::Tf32] {
        assert_eq!(p.operand(&t)?.to_vec1::<f32>()?, v);
    }
    Ok(())
}

#[test]
fn bf16_convolutions_are_f32_products_of_rounded_operands_on_every_kernel() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1f32, (4, 5, 9, 9), &dev)?;
    let w = Tensor::randn(0f32, 0.3f32, (7, 5, 3, 3), &dev)?;
    let cfg = ConvCfg {
        padding: 1,
        stride: 2,
        ..ConvCfg::default()
    };
    let xr = Precision::Bf16.operand(&x)?;
    let wr = Precision::Bf16.operand(&w)?;
    let want = CandleKernels.conv2d(&xr, &wr, None, cfg, Precision::F32)?;
    let full = CandleKernels.conv2d(&x, &w, None, cfg, Precision::F32)?;
    for name in ["candle", "fast-cpu"] {
        let k = select_kernels(Some(name), &dev)?;
        let got = k.conv2d(&x, &w, None, cfg, Precision::Bf16)?;
        let d = got.sub(&want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-4, "{name}: {d}");
        // And bf16 really differs from f32 (the test could not pass with f32 products).
        let e = got.sub(&full)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(e > 1e-3, "{name}: bf16 equals f32 ({e})");
    }
    let xl = Tensor::randn(0f32, 1f32, (3, 40), &dev)?;
    let wl = Tensor::randn(0f32, 0.2f32, (6, 40), &dev)?;
    let want = xl
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?
        .matmul(&wl.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.t()?)?;
    let got = FastCpuKernels.linear(&xl, &wl, None, Precision::Bf16)?;
    assert!(got.sub(&want)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
    Ok(())
}

#[test]
fn network_precision_reaches_the_layers_and_keeps_input_gradients() -> Result<()> {
    let n = net()?;
    let x = input(4)?;
    assert_eq!(n.precision(), Precision::F32);
    let f32_logits = n.forward_opts(&x, EVAL)?;
    n.set_precision(Precision::Bf16);
    let xv = candle_core::Var::from_tensor(&x)?;
    let bf = n.forward_opts(xv.as_tensor(), EVAL)?;
    let d = bf.sub(&f32_logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(d > 0.0 && d < 0.05, "bf16 logits differ from f32 by {d}");
    let grads = bf.sum_all()?.backward()?;
    let g = grads
        .get(xv.as_tensor())
        .expect("input gradient through bf16 rounding");
    assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
    n.set_precision(Precision::F32);
    let back = n.forward_opts(&x, EVAL)?;
    assert_eq!(back.to_vec2::<f32>()?, f32_logits.to_vec2::<f32>()?);
    Ok(())
}
