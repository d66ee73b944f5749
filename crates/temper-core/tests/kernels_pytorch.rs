//! Pooling outputs and input gradients against PyTorch, including the cases where candle's
//! own pooling backward is wrong (input not a multiple of the kernel) or fails
//! (kernel != stride), and with many ties.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use temper_core::kernels::{CandleKernels, Kernels, PoolCfg};

fn fixture() -> Result<HashMap<String, Tensor>> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/kernels/pool.safetensors");
    Ok(candle_core::safetensors::load(p, &Device::Cpu)?)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Output and input gradient of `f` for upstream gradient `g`.
fn run(
    x: &Tensor,
    g: &Tensor,
    f: impl Fn(&Tensor) -> temper_core::Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let v = Var::from_tensor(x)?;
    let y = f(v.as_tensor())?;
    let grads = (&y * g)?.sum_all()?.backward()?;
    let dx = grads.get(v.as_tensor()).cloned().unwrap_or(x.zeros_like()?);
    Ok((y, dx))
}

#[test]
fn pooling_matches_pytorch_values_and_gradients() -> Result<()> {
    let fx = fixture()?;
    let k = CandleKernels;
    let cases = [
        ("k2s2p0_7x7", 2, 2, 0),
        ("k2s2p0_8x6", 2, 2, 0),
        ("k3s2p1_9x9", 3, 2, 1),
        ("k3s2p1_8x8", 3, 2, 1),
        ("k3s1p1_5x6", 3, 1, 1),
        ("k2s1p0_6x5", 2, 1, 0),
        ("k3s3p0_10x10", 3, 3, 0),
    ];
    for (name, kernel, stride, padding) in cases {
        let cfg = PoolCfg {
            kernel,
            stride,
            padding,
        };
        let x = &fx[&format!("{name}.x")];
        let g = &fx[&format!("{name}.g")];
        let (y, dx) = run(x, g, |t| k.max_pool2d(t, cfg))?;
        assert_eq!(
            max_abs(&y, &fx[&format!("{name}.max_y")])?,
            0.0,
            "{name}: max pool values"
        );
        let e = max_abs(&dx, &fx[&format!("{name}.max_dx")])?;
        assert!(e < 1e-6, "{name}: max pool gradient off by {e}");
        let (y, dx) = run(x, g, |t| k.avg_pool2d(t, cfg))?;
        let e = max_abs(&y, &fx[&format!("{name}.avg_y")])?;
        assert!(e < 1e-6, "{name}: avg pool values off by {e}");
        let e = max_abs(&dx, &fx[&format!("{name}.avg_dx")])?;
        assert!(e < 1e-6, "{name}: avg pool gradient off by {e}");
    }
    for (name, o) in [("a3to7", 7), ("a5to3", 3), ("a9to7", 7)] {
        let (y, dx) = run(&fx[&format!("{name}.x")], &fx[&format!("{name}.g")], |t| {
            k.adaptive_avg_pool2d(t, o, o)
        })?;
        let e = max_abs(&y, &fx[&format!("{name}.y")])?;
        assert!(e < 1e-6, "{name}: adaptive pool values off by {e}");
        let e = max_abs(&dx, &fx[&format!("{name}.dx")])?;
        assert!(e < 1e-5, "{name}: adaptive pool gradient off by {e}");
    }
    Ok(())
}

#[test]
fn oversized_pool_window_is_an_error_not_a_panic() {
    let x =
        Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let r = CandleKernels.max_pool2d(
        &x,
        PoolCfg {
            kernel: 5,
            stride: 1,
            padding: 0,
        },
    );
    assert!(r.is_err());
}
