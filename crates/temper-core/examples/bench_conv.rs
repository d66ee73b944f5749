//! Convolution throughput per layer shape: `FastCpuKernels` against the candle reference in
//! the same run, for the forward pass, the input-gradient-only backward (attacks) and the
//! backward with both gradients (training).
//!
//! With `bf16`, the comparison is instead `FastCpuKernels` at `--precision bf16` against the
//! same kernels at f32.
//!
//! `cargo run --release -p temper-core --example bench_conv [-- [SHAPE_INDEX] [bf16]]`

use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use temper_core::kernels::{CandleKernels, ConvCfg, FastCpuKernels, Kernels, Precision};

/// The fastest of `reps` runs, in milliseconds: the minimum is the estimate least disturbed
/// by other work on the machine.
fn time<F: FnMut() -> temper_core::Result<()>>(reps: usize, mut f: F) -> temper_core::Result<f64> {
    f()?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// Milliseconds for forward, forward + input gradient, forward + both gradients.
fn measure(
    k: &dyn Kernels,
    x: &Tensor,
    w: &Tensor,
    cfg: ConvCfg,
    (reps, precision): (usize, Precision),
) -> temper_core::Result<[f64; 3]> {
    let xv = Var::from_tensor(x)?;
    let wv = Var::from_tensor(w)?;
    let fwd = time(reps, || {
        k.conv2d(x, w, None, cfg, precision)?;
        Ok(())
    })?;
    let input_grad = time(reps, || {
        k.conv2d(xv.as_tensor(), &w.detach(), None, cfg, precision)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    let both = time(reps, || {
        k.conv2d(xv.as_tensor(), wv.as_tensor(), None, cfg, precision)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    Ok([fwd, input_grad, both])
}

fn main() -> temper_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "{:<34} {:>24} {:>24} {:>24}",
        "shape (n c h -> o, k s p)", "fwd ms new/ref (x)", "fwd+dx new/ref (x)", "fwd+dx+dw new/ref (x)"
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only: Option<usize> = args.iter().find_map(|a| a.parse().ok());
    let bf16 = args.iter().any(|a| a == "bf16");
    println!(
        "{}",
        if bf16 {
            "new: fast-cpu at bf16, ref: fast-cpu at f32"
        } else {
            "new: fast-cpu, ref: candle"
        }
    );
    for (idx, (n, c, h, o, k, s, p, reps)) in [
        (128, 1, 28, 16, 4, 2, 1, 10),
        (128, 16, 14, 32, 4, 2, 1, 10),
        (32, 3, 32, 64, 3, 1, 1, 3),
        (32, 64, 32, 64, 3, 1, 1, 5),
        (32, 128, 16, 128, 3, 1, 1, 5),
        (32, 64, 32, 128, 1, 2, 0, 3),
        (32, 256, 8, 256, 3, 1, 1, 2),
        (32, 512, 4, 512, 3, 1, 1, 2),
    ]
    .into_iter()
    .enumerate()
    {
        if only.is_some_and(|i| i != idx) {
            continue;
        }
        let x = Tensor::rand(-1f32, 1f32, (n, c, h, h), &dev)?;
        let w = Tensor::rand(-0.1f32, 0.1f32, (o, c, k, k), &dev)?;
        let cfg = ConvCfg {
            stride: s,
            padding: p,
            dilation: 1,
            groups: 1,
        };
        let (f, r) = if bf16 {
            (
                measure(&FastCpuKernels, &x, &w, cfg, (reps, Precision::Bf16))?,
                measure(&FastCpuKernels, &x, &w, cfg, (reps, Precision::F32))?,
            )
        } else {
            (
                measure(&FastCpuKernels, &x, &w, cfg, (reps, Precision::F32))?,
                measure(&CandleKernels, &x, &w, cfg, (reps, Precision::F32))?,
            )
        };
        let cell = |i: usize| format!("{:.2}/{:.2} ({:.2})", f[i], r[i], r[i] / f[i]);
        println!(
            "{:<34} {:>24} {:>24} {:>24}",
            format!("{n} {c} {h} -> {o}, {k} {s} {p}"),
            cell(0),
            cell(1),
            cell(2)
        );
    }
    Ok(())
}
