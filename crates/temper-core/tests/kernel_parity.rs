//! `kernels::parity`, the check `temper gpu-check` runs on a GPU, run here on the CPU: the
//! fast CPU kernels pass it against the candle reference at every precision, and a backend
//! with a wrong kernel fails it.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::BTreeSet;
use temper_core::kernels::parity::{check_kernels, tolerance, Scale};
use temper_core::kernels::{CandleKernels, ConvCfg, FastCpuKernels, Kernels, Precision};

#[test]
fn fast_cpu_kernels_pass_the_parity_check_at_every_precision() -> Result<()> {
    let rows = check_kernels(
        &FastCpuKernels,
        &Device::Cpu,
        &CandleKernels,
        &Precision::ALL,
        Scale::Small,
        0,
    )?;
    let failed: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let ops: BTreeSet<&str> = rows.iter().map(|r| r.op.as_str()).collect();
    for op in [
        "conv2d",
        "linear",
        "batch_norm_train",
        "batch_norm_train_relu",
        "batch_norm_eval",
        "batch_norm_eval_relu",
        "max_pool2d",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "relu",
        "relu6",
    ] {
        assert!(ops.contains(op), "no {op} case in {ops:?}");
    }
    // Products run at each precision; both gradients of a convolution are compared.
    for p in Precision::ALL {
        assert!(rows.iter().any(|r| r.op == "conv2d" && r.precision == p));
    }
    assert!(rows.iter().any(|r| r.op == "conv2d"
        && r.errors.iter().any(|e| e.0 == "grad_x")
        && r.errors.iter().any(|e| e.0 == "grad_weight")));
    // The bias gradient of both layers with a bias.
    for op in ["conv2d", "linear"] {
        assert!(rows
            .iter()
            .any(|r| r.op == op && r.errors.iter().any(|e| e.0 == "grad_bias")));
    }
    // A linear layer with a detached weight: only the input's gradient.
    assert!(rows.iter().any(|r| r.op == "linear"
        && r.errors.iter().any(|e| e.0 == "grad_x")
        && !r.errors.iter().any(|e| e.0 == "grad_weight")));
    // The attack path: a detached weight gets no gradient and only the input's is compared.
    assert!(rows.iter().any(|r| r.op == "conv2d"
        && r.errors.iter().any(|e| e.0 == "grad_x")
        && !r.errors.iter().any(|e| e.0 == "grad_weight")));
    // Grouped and depthwise convolutions are among the cases.
    assert!(rows
        .iter()
        .any(|r| r.op == "conv2d" && !r.case.contains("groups 1,")));
    Ok(())
}

/// The reference, except that the convolution's output is off by a relative 1e-3: inside the
/// bf16 tolerance, outside the f32 one.
#[derive(Debug)]
struct Skewed;

impl Kernels for Skewed {
    fn name(&self) -> &str {
        "skewed"
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        cfg: ConvCfg,
        precision: Precision,
    ) -> temper_core::Result<Tensor> {
        Ok((CandleKernels.conv2d(x, weight, bias, cfg, precision)? * 1.001)?)
    }
}

#[test]
fn a_wrong_kernel_fails_the_check_at_the_precisions_it_is_wrong_for() -> Result<()> {
    let rows = check_kernels(
        &Skewed,
        &Device::Cpu,
        &FastCpuKernels,
        &[Precision::F32, Precision::Bf16],
        Scale::Small,
        1,
    )?;
    for r in &rows {
        match (r.op.as_str(), r.precision) {
            ("conv2d", Precision::F32) => {
                assert!(!r.pass && r.max_error > tolerance(Precision::F32), "{r:?}")
            }
            _ => assert!(r.pass, "{r:?}"),
        }
    }
    Ok(())
}
