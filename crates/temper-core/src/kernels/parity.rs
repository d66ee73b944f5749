//! Every kernel of a backend against the reference on the CPU: outputs and gradients of
//! convolutions (dense, strided, dilated, grouped, depthwise), linear layers, BatchNorm in
//! both modes, pooling and activations, on random and model-like shapes.
//!
//! This is how a backend on another device is checked where it runs (`temper gpu-check` runs
//! it on a GPU machine): each case draws its inputs on the CPU from a seeded stream, runs
//! the operation with the backend on its device and with reference kernels on the CPU
//! ([`CandleKernels`], or the CPU's default [`FastCpuKernels`](super::FastCpuKernels), which
//! its own tests check against direct loops and candle, and which is much faster on large
//! shapes), takes the gradient of `sum(output * r)` for a random `r` with respect to every
//! input that tracks gradients, and compares each tensor by its largest absolute difference
//! relative to the reference's largest magnitude.
//!
//! Products (convolutions, linear layers) are checked at every [`Precision`] asked for, the
//! reference computing the same precision on the CPU (bf16 by exact operand rounding; TF32
//! is f32 there), with the tolerance of [`tolerance`]; every other operation runs in f32 and
//! is checked once, at the f32 tolerance.

use super::{ConvCfg, Kernels, PoolCfg, Precision};
use crate::Result;
use candle_core::{Device, Tensor, Var};
use rand::Rng as _;

/// The largest relative difference accepted at a precision: 1e-4 for f32 (different
/// summation orders), 5e-3 for TF32 (10-bit mantissa operands), 2e-2 for bf16 (8-bit
/// mantissa operands; a device computing in bf16 also rounds its outputs and the output
/// gradient to bf16, which the CPU reference does not).
pub fn tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => 1e-4,
        Precision::Tf32 => 5e-3,
        Precision::Bf16 => 2e-2,
    }
}

/// How large the cases are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// A few small cases per operation: seconds on a CPU, for tests.
    Small,
    /// More random cases, and model-sized shapes (PreActResNet-18 and MobileNet-V2 layers at
    /// batch 32), for a GPU.
    Full,
}

/// One comparison: an operation on one shape at one precision.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParityRow {
    /// The operation (`conv2d`, `linear`, `batch_norm_train`, ...).
    pub op: String,
    /// The shapes and settings of the case.
    pub case: String,
    /// The precision of the products (f32 for operations without products).
    pub precision: Precision,
    /// Relative difference of each compared tensor: `output`, `grad_x`, `grad_weight`, ...
    pub errors: Vec<(String, f32)>,
    /// The largest of `errors`.
    pub max_error: f32,
    /// The largest difference accepted ([`tolerance`]).
    pub tolerance: f32,
    /// Whether the case ran and every error is within the tolerance.
    pub pass: bool,
    /// The error message, when the case failed to run on the device.
    pub error: Option<String>,
}

/// What a case computes from its inputs: the outputs, the first being differentiated.
type Run = Box<dyn Fn(&dyn Kernels, &[Tensor], Precision) -> Result<Vec<Tensor>>>;

/// One case: named inputs (drawn on the CPU) and whether each tracks gradients.
struct Case {
    op: &'static str,
    desc: String,
    /// Whether the case has products, so that it runs at every precision.
    products: bool,
    inputs: Vec<(&'static str, Tensor, bool)>,
    run: Run,
}

/// Uniform values in [-1, 1) of `shape`, on the CPU, from `rng`.
fn uniform(rng: &mut crate::seed::Rng, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1f32..1f32)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Uniform values in [lo, hi), as [`uniform`].
fn uniform_in(rng: &mut crate::seed::Rng, shape: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
    Ok(((uniform(rng, shape)? + 1.0)? * f64::from((hi - lo) / 2.0))?.affine(1.0, f64::from(lo))?)
}

/// A convolution case.
#[derive(Debug, Clone, Copy)]
struct Conv {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    k: usize,
    cfg: ConvCfg,
    bias: bool,
    /// Whether the weight tracks gradients (false: the attack path, input gradient only).
    weight_grad: bool,
}

impl Conv {
    /// Whether the kernel fits the padded input, and candle 0.11.1's own convolution backward
    /// (the reference's, and the fallback of other kernels for grouped convolutions) handles
    /// the geometry: it takes the transposed convolution's output padding from the height
    /// alone, so the input gradient has the wrong width when `(size + 2p - span) % stride`
    /// differs between the axes, and it underflows when the padding exceeds the covered
    /// span (see `tests/fast_kernels.rs`).
    fn fits(&self) -> bool {
        let (p, s) = (self.cfg.padding, self.cfg.stride);
        let span = self.cfg.dilation * (self.k - 1) + 1;
        let ok = |size: usize| {
            size + 2 * p >= span && {
                let out = (size + 2 * p - span) / s + 1;
                (out - 1) * s + span >= 2 * p
            }
        };
        let rem = |size: usize| (size + 2 * p - span) % s;
        ok(self.h) && ok(self.w) && rem(self.h) == rem(self.w)
    }

    fn case(self, rng: &mut crate::seed::Rng) -> Result<Case> {
        let g = self.cfg.groups;
        let mut inputs = vec![
            ("x", uniform(rng, &[self.n, self.c, self.h, self.w])?, true),
            (
                "weight",
                uniform(rng, &[self.o, self.c / g, self.k, self.k])?,
                self.weight_grad,
            ),
        ];
        if self.bias {
            inputs.push(("bias", uniform(rng, &[self.o])?, self.weight_grad));
        }
        let cfg = self.cfg;
        Ok(Case {
            op: "conv2d",
            desc: format!(
                "x {}x{}x{}x{}, weight {}x{}x{k}x{k}, stride {}, padding {}, dilation {}, groups {g}, bias {}, weight grad {}",
                self.n, self.c, self.h, self.w, self.o, self.c / g, cfg.stride, cfg.padding, cfg.dilation,
                self.bias, self.weight_grad, k = self.k
            ),
            products: true,
            inputs,
            run: Box::new(move |k, t, p| Ok(vec![k.conv2d(&t[0], &t[1], t.get(2), cfg, p)?])),
        })
    }
}

/// The cases of a scale, drawn from `rng`.
fn cases(scale: Scale, rng: &mut crate::seed::Rng) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    let (random, big) = match scale {
        Scale::Small => (3, 1usize),
        Scale::Full => (12, 4),
    };
    // Random dense, grouped and depthwise convolutions.
    let mut drawn = 0;
    while drawn < random {
        let groups = [1, 1, 2, 0][rng.random_range(0..4usize)];
        let (c, o, groups) = if groups == 0 {
            // Depthwise: one input channel per group, as MobileNet's.
            let c = rng.random_range(1..=8 * big);
            (c, c, c)
        } else {
            (
                groups * rng.random_range(1..=4 * big),
                groups * rng.random_range(1..=4 * big),
                groups,
            )
        };
        let conv = Conv {
            n: rng.random_range(1..=2 * big),
            c,
            o,
            h: rng.random_range(3..=6 + 3 * big),
            w: rng.random_range(3..=6 + 3 * big),
            k: rng.random_range(1..=4),
            cfg: ConvCfg {
                stride: rng.random_range(1..=3),
                padding: rng.random_range(0..=2),
                dilation: rng.random_range(1..=2),
                groups,
            },
            bias: rng.random_bool(0.5),
            weight_grad: drawn % 3 != 2,
        };
        if conv.fits() {
            out.push(conv.case(rng)?);
            drawn += 1;
        }
    }
    // Model-sized layers: PreActResNet-18's 3x3 convolutions and shortcut, MobileNet-V2's
    // depthwise and pointwise convolutions, at batch 8 (batch 2 and fewer channels when
    // small).
    let (n, wide) = match scale {
        Scale::Small => (2, 8),
        Scale::Full => (8, 64),
    };
    let cfg = |stride, padding, groups| ConvCfg {
        stride,
        padding,
        dilation: 1,
        groups,
    };
    for (c, o, hw, k, cfg, weight_grad) in [
        (3, wide, 32, 3, cfg(1, 1, 1), true),
        (wide, wide, 32, 3, cfg(1, 1, 1), true),
        (wide, wide, 32, 3, cfg(1, 1, 1), false),
        (wide, 2 * wide, 32, 3, cfg(2, 1, 1), true),
        (wide, 2 * wide, 32, 1, cfg(2, 0, 1), true),
        (2 * wide, 2 * wide, 16, 3, cfg(1, 1, 2 * wide), true),
        (2 * wide, 2 * wide, 16, 3, cfg(2, 1, 2 * wide), false),
        (2 * wide, wide, 8, 1, cfg(1, 0, 1), true),
    ] {
        let conv = Conv {
            n,
            c,
            o,
            h: hw,
            w: hw,
            k,
            cfg,
            bias: false,
            weight_grad,
        };
        debug_assert!(conv.fits());
        out.push(conv.case(rng)?);
    }
    // Linear layers; the second case detaches the weight, as an attack does.
    for case in 0..random.min(4) {
        let (n, i, o) = (
            rng.random_range(1..=8 * big),
            rng.random_range(1..=64 * big),
            rng.random_range(1..=16 * big),
        );
        let bias = rng.random_bool(0.5);
        let mut inputs = vec![
            ("x", uniform(rng, &[n, i])?, true),
            ("weight", uniform(rng, &[o, i])?, case != 1),
        ];
        if bias {
            inputs.push(("bias", uniform(rng, &[o])?, true));
        }
        out.push(Case {
            op: "linear",
            desc: format!("x {n}x{i}, weight {o}x{i}, bias {bias}"),
            products: true,
            inputs,
            run: Box::new(|k, t, p| Ok(vec![k.linear(&t[0], &t[1], t.get(2), p)?])),
        });
    }
    // BatchNorm, pooling and activations on random 4-D shapes.
    for i in 0..random.min(4) {
        let shape = [
            rng.random_range(1..=4 * big),
            rng.random_range(1..=8 * big),
            rng.random_range(2..=6 + 3 * big),
            rng.random_range(2..=6 + 3 * big),
        ];
        let c = shape[1];
        let desc = format!("x {}x{}x{}x{}", shape[0], shape[1], shape[2], shape[3]);
        // BatchNorm needs more than one value per channel for a batch variance.
        if shape[0] * shape[2] * shape[3] > 1 {
            // Alone and fused with the ReLU that follows it.
            for relu in [false, true] {
                out.push(Case {
                    op: if relu {
                        "batch_norm_train_relu"
                    } else {
                        "batch_norm_train"
                    },
                    desc: desc.clone(),
                    products: false,
                    inputs: vec![
                        ("x", uniform(rng, &shape)?, true),
                        ("gamma", uniform_in(rng, &[c], 0.5, 1.5)?, true),
                        ("beta", uniform(rng, &[c])?, true),
                    ],
                    run: Box::new(move |k, t, _| {
                        let (y, stats) = if relu {
                            k.batch_norm_train_relu(&t[0], &t[1], &t[2], 1e-5)?
                        } else {
                            k.batch_norm_train(&t[0], &t[1], &t[2], 1e-5)?
                        };
                        Ok(vec![y, stats.mean, stats.var])
                    }),
                });
            }
        }
        // BatchNorm in eval mode, alone and fused with the ReLU that follows it.
        for relu in [false, true] {
            out.push(Case {
                op: if relu {
                    "batch_norm_eval_relu"
                } else {
                    "batch_norm_eval"
                },
                desc: desc.clone(),
                products: false,
                inputs: vec![
                    ("x", uniform(rng, &shape)?, true),
                    ("mean", uniform(rng, &[c])?, false),
                    ("var", uniform_in(rng, &[c], 0.5, 2.0)?, false),
                    ("gamma", uniform_in(rng, &[c], 0.5, 1.5)?, true),
                    ("beta", uniform(rng, &[c])?, true),
                ],
                run: Box::new(move |k, t, _| {
                    let y = if relu {
                        k.batch_norm_eval_relu(&t[0], &t[1], &t[2], &t[3], &t[4], 1e-5)?
                    } else {
                        k.batch_norm_eval(&t[0], &t[1], &t[2], &t[3], &t[4], 1e-5)?
                    };
                    Ok(vec![y])
                }),
            });
        }
        let kernel = rng.random_range(1..=shape[2].min(shape[3]).min(3));
        let pool = PoolCfg {
            kernel,
            stride: rng.random_range(1..=kernel.max(2)),
            padding: rng.random_range(0..=kernel / 2),
        };
        let pdesc = format!(
            "{desc}, kernel {}, stride {}, padding {}",
            pool.kernel, pool.stride, pool.padding
        );
        out.push(Case {
            op: "max_pool2d",
            desc: pdesc.clone(),
            products: false,
            inputs: vec![("x", uniform(rng, &shape)?, true)],
            run: Box::new(move |k, t, _| Ok(vec![k.max_pool2d(&t[0], pool)?])),
        });
        out.push(Case {
            op: "avg_pool2d",
            desc: pdesc,
            products: false,
            inputs: vec![("x", uniform(rng, &shape)?, true)],
            run: Box::new(move |k, t, _| Ok(vec![k.avg_pool2d(&t[0], pool)?])),
        });
        let (oh, ow) = if i % 2 == 0 {
            (1, 1)
        } else {
            (shape[2].div_ceil(2), shape[3].div_ceil(2))
        };
        out.push(Case {
            op: "adaptive_avg_pool2d",
            desc: format!("{desc} to {oh}x{ow}"),
            products: false,
            inputs: vec![("x", uniform(rng, &shape)?, true)],
            run: Box::new(move |k, t, _| Ok(vec![k.adaptive_avg_pool2d(&t[0], oh, ow)?])),
        });
        out.push(Case {
            op: "relu",
            desc: desc.clone(),
            products: false,
            inputs: vec![("x", uniform(rng, &shape)?, true)],
            run: Box::new(|k, t, _| Ok(vec![k.relu(&t[0])?])),
        });
        out.push(Case {
            op: "relu6",
            desc,
            products: false,
            // Scaled so that both kinks (0 and 6) are crossed.
            inputs: vec![("x", (uniform(rng, &shape)? * 8.0)?, true)],
            run: Box::new(|k, t, _| Ok(vec![k.relu6(&t[0])?])),
        });
    }
    Ok(out)
}

/// Largest absolute difference relative to the reference's largest magnitude.
fn rel_error(got: &Tensor, want: &Tensor) -> Result<f32> {
    if got.dims() != want.dims() {
        return Err(crate::Error::param(
            "parity",
            format!(
                "shape {:?} differs from the reference's {:?}",
                got.dims(),
                want.dims()
            ),
        ));
    }
    let max_abs = |t: &Tensor| -> Result<f32> { Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?) };
    let scale = max_abs(want)?;
    let diff = max_abs(&(got - want)?)?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// Runs a case with `kernels` on `device`: the outputs and the gradients of
/// `sum(outputs[0] * r)`, all on the CPU, named. `r` is drawn on the first call (the
/// reference's) and reused.
fn evaluate(
    case: &Case,
    kernels: &dyn Kernels,
    device: &Device,
    precision: Precision,
    r: &mut Option<Tensor>,
    rng: &mut crate::seed::Rng,
) -> Result<Vec<(String, Tensor)>> {
    let mut vars = Vec::new();
    let mut tensors = Vec::new();
    for (_, t, track) in &case.inputs {
        let t = t.to_device(device)?;
        if *track {
            let v = Var::from_tensor(&t)?;
            tensors.push(v.as_tensor().clone());
            vars.push(Some(v));
        } else {
            tensors.push(t);
            vars.push(None);
        }
    }
    let outs = (case.run)(kernels, &tensors, precision)?;
    let mut named = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        let name = if i == 0 {
            "output".to_string()
        } else {
            format!("output{i}")
        };
        named.push((name, o.to_device(&Device::Cpu)?));
    }
    if vars.iter().any(Option::is_some) {
        let r = match r {
            Some(r) => r.clone(),
            None => r.insert(uniform(rng, outs[0].dims())?).clone(),
        };
        let grads = (&outs[0] * r.to_device(device)?)?.sum_all()?.backward()?;
        for ((name, _, _), v) in case.inputs.iter().zip(&vars) {
            if let Some(v) = v {
                let g = grads.get(v.as_tensor()).ok_or_else(|| {
                    crate::Error::param("parity", format!("{}: no gradient for {name}", case.op))
                })?;
                named.push((format!("grad_{name}"), g.to_device(&Device::Cpu)?));
            }
        }
    }
    Ok(named)
}

/// Compares one case at one precision.
fn compare(
    case: &Case,
    (kernels, device): (&dyn Kernels, &Device),
    reference: &dyn Kernels,
    precision: Precision,
    rng: &mut crate::seed::Rng,
) -> ParityRow {
    let tol = tolerance(if case.products { precision } else { Precision::F32 });
    let mut r = None;
    let result = evaluate(case, reference, &Device::Cpu, precision, &mut r, rng).and_then(|want| {
        let got = evaluate(case, kernels, device, precision, &mut r, rng)?;
        want.iter()
            .zip(&got)
            .map(|((name, w), (_, g))| Ok((name.clone(), rel_error(g, w)?)))
            .collect::<Result<Vec<_>>>()
    });
    let (errors, error) = match result {
        Ok(e) => (e, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let max_error = errors.iter().map(|e| e.1).fold(0f32, f32::max);
    ParityRow {
        op: case.op.to_string(),
        case: case.desc.clone(),
        precision: if case.products { precision } else { Precision::F32 },
        pass: error.is_none() && errors.iter().all(|e| e.1.is_finite() && e.1 <= tol),
        errors,
        max_error,
        tolerance: tol,
        error,
    }
}

/// Runs every case with `kernels` on `device` against `reference` on the CPU: products at
/// each of `precisions`, every other operation once in f32. Cases are drawn from `seed`.
/// A case that fails to run is a failed row with its error, not an error of the whole check.
pub fn check_kernels(
    kernels: &dyn Kernels,
    device: &Device,
    reference: &dyn Kernels,
    precisions: &[Precision],
    scale: Scale,
    seed: u64,
) -> Result<Vec<ParityRow>> {
    let mut rng = crate::seed::rng_with(seed, "kernel-parity");
    let mut rows = Vec::new();
    for case in cases(scale, &mut rng)? {
        let at: &[Precision] = if case.products {
            precisions
        } else {
            &[Precision::F32]
        };
        for &p in at {
            rows.push(compare(&case, (kernels, device), reference, p, &mut rng));
        }
    }
    Ok(rows)
}
