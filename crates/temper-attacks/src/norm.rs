//! Threat models: the norm that bounds a perturbation.
//!
//! Each norm knows how to draw a random start inside its ball, how to turn a gradient into
//! a steepest-ascent step, how to project back onto the ball, and how to measure a
//! perturbation.

use crate::Result;
use candle_core::{DType, Tensor};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use temper_core::seed::Rng;

/// The norm of the threat model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// `‖δ‖∞ <= eps`: every pixel moves by at most eps.
    Linf,
    /// `‖δ‖₂ <= eps`, per sample.
    L2,
    /// `‖δ‖₁ <= eps`, per sample: sparse perturbations.
    L1,
}

impl Norm {
    /// Parses `linf`, `l2` or `l1`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "linf" | "l-inf" | "inf" => Ok(Norm::Linf),
            "l2" => Ok(Norm::L2),
            "l1" => Ok(Norm::L1),
            _ => Err(crate::error::param(
                "norm",
                format!("'{s}' is not one of linf, l2, l1"),
            )),
        }
    }

    /// The name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
            Norm::L1 => "l1",
        }
    }

    /// A perturbation drawn uniformly from the eps ball, with the shape of `x`.
    ///
    /// For L2 the direction is Gaussian and the radius `eps * u^(1/d)`, which is uniform in
    /// the ball's volume (scaling by `u` alone would crowd the centre). For L1, `d` signed
    /// exponential draws divided by their sum plus one more exponential draw, which is uniform
    /// in the L1 ball.
    pub fn random_start(self, x: &Tensor, eps: f64, rng: &mut Rng) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let n = dims[0];
        let d: usize = dims[1..].iter().product();
        let data: Vec<f32> = match self {
            Norm::Linf => (0..n * d).map(|_| rng.random_range(-eps..=eps) as f32).collect(),
            Norm::L2 => {
                let mut out = Vec::with_capacity(n * d);
                for _ in 0..n {
                    let g: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
                    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                    let u: f64 = rng.random();
                    let r = eps * u.powf(1.0 / d as f64);
                    out.extend(g.iter().map(|v| (v / norm * r) as f32));
                }
                out
            }
            Norm::L1 => {
                let mut out = Vec::with_capacity(n * d);
                let exp = |rng: &mut Rng| -> f64 { -(1.0 - rng.random::<f64>()).ln() };
                for _ in 0..n {
                    let e: Vec<f64> = (0..d).map(|_| exp(rng)).collect();
                    let total = e.iter().sum::<f64>() + exp(rng);
                    for v in e {
                        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                        out.push((sign * eps * v / total) as f32);
                    }
                }
                out
            }
        };
        Ok(Tensor::from_vec(data, dims, x.device())?)
    }

    /// The steepest-ascent direction for a gradient, of norm 1: its sign for L-inf, the
    /// gradient divided by its per-sample L2 norm for L2, and for L1 the signed unit vector of
    /// the largest gradient coordinate (shared among ties).
    pub fn ascent_direction(self, grad: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Linf => Ok(grad.sign()?),
            Norm::L2 => {
                let norms = (per_sample_l2(grad)? + 1e-10)?;
                Ok(grad.broadcast_div(&expand(&norms, grad.rank())?)?)
            }
            Norm::L1 => {
                let flat = grad.flatten_from(1)?;
                let mag = flat.abs()?;
                let top = mag.broadcast_ge(&mag.max_keepdim(1)?)?.to_dtype(DType::F32)?;
                let top = (top.broadcast_div(&top.sum_keepdim(1)?)? * flat.sign()?)?;
                Ok(top.reshape(grad.shape())?)
            }
        }
    }

    /// Projects `delta` onto the eps ball.
    pub fn project(self, delta: &Tensor, eps: f64) -> Result<Tensor> {
        if eps == 0.0 {
            return Ok(delta.zeros_like()?);
        }
        match self {
            Norm::Linf => Ok(delta.clamp(-eps as f32, eps as f32)?),
            Norm::L2 => {
                let norms = per_sample_l2(delta)?;
                // factor = min(1, eps / ‖δ‖); a zero δ gives an infinite ratio, clamped to 1.
                let factor = (norms.recip()? * eps)?.clamp(0f32, 1f32)?;
                Ok(delta.broadcast_mul(&expand(&factor, delta.rank())?)?)
            }
            Norm::L1 => {
                let flat = delta.flatten_from(1)?;
                let open = flat.ones_like()?.affine(f64::from(f32::MAX), 0.0)?;
                Ok(project_l1_box(&flat, eps, &open.neg()?, &open)?.reshape(delta.shape())?)
            }
        }
    }

    /// The per-sample size of `delta` in this norm.
    pub fn measure(self, delta: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Linf => per_sample_linf(delta),
            Norm::L2 => per_sample_l2(delta),
            Norm::L1 => per_sample_l1(delta),
        }
    }
}

/// The Euclidean projection of `v` (`(N, D)`) onto the intersection of the L1 ball of radius
/// `eps` with the box `lo <= z <= hi` (`lo <= 0 <= hi`, same shape): per coordinate
/// `sign(v) clip(|v| - λ, 0, cap)`, where `cap` is the box's room in the direction of `v` and
/// `λ >= 0` the smallest threshold within the budget, found by bisection in tensor operations
/// (the reference's `L1_projection` computes the same unique point by sorting).
pub(crate) fn project_l1_box(v: &Tensor, eps: f64, lo: &Tensor, hi: &Tensor) -> Result<Tensor> {
    let mag = v.abs()?;
    let positive = v.ge(0f32)?;
    let cap = positive.where_cond(hi, &lo.neg()?)?.relu()?;
    let sign = v.sign()?;
    let shrink =
        |lambda: &Tensor| -> Result<Tensor> { Ok(mag.broadcast_sub(lambda)?.relu()?.minimum(&cap)?) };
    // The threshold lies in [0, max |v|]: at max |v| nothing is left.
    let mut low = Tensor::zeros((v.dim(0)?, 1), DType::F32, v.device())?;
    let mut high = mag.max_keepdim(1)?;
    for _ in 0..40 {
        let mid = ((&low + &high)? / 2.0)?;
        let over = shrink(&mid)?.sum_keepdim(1)?.gt(eps)?;
        low = over.where_cond(&mid, &low)?;
        high = over.where_cond(&high, &mid)?;
    }
    // `high` keeps every sample inside the budget; samples already inside use λ = 0.
    let inside = shrink(&low.zeros_like()?)?.sum_keepdim(1)?.le(eps)?;
    let lambda = inside.where_cond(&low.zeros_like()?, &high)?;
    Ok((shrink(&lambda)? * sign)?)
}

/// Per-sample L1 norm, shape `(N,)`.
pub fn per_sample_l1(t: &Tensor) -> Result<Tensor> {
    Ok(t.flatten_from(1)?.abs()?.sum(1)?)
}

/// Per-sample L2 norm, shape `(N,)`.
pub fn per_sample_l2(t: &Tensor) -> Result<Tensor> {
    Ok(t.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?)
}

/// Per-sample L-inf norm, shape `(N,)`.
pub fn per_sample_linf(t: &Tensor) -> Result<Tensor> {
    Ok(t.flatten_from(1)?.abs()?.max(1)?)
}

/// `(N,)` to `(N, 1, 1, ...)` of the given rank, for broadcasting.
pub(crate) fn expand(v: &Tensor, rank: usize) -> Result<Tensor> {
    let mut shape = vec![v.dim(0)?];
    shape.extend(std::iter::repeat_n(1, rank - 1));
    Ok(v.reshape(shape)?)
}
