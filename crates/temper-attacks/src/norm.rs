//! Threat models: the norm that bounds a perturbation.
//!
//! Each norm knows how to draw a random start inside its ball, how to turn a gradient into
//! a steepest-ascent step, how to project back onto the ball, and how to measure a
//! perturbation. Adding L1 means adding a variant and these four functions.

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
}

impl Norm {
    /// Parses `linf` or `l2`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "linf" | "l-inf" | "inf" => Ok(Norm::Linf),
            "l2" => Ok(Norm::L2),
            _ => Err(crate::error::param(
                "norm",
                format!("'{s}' is not one of linf, l2"),
            )),
        }
    }

    /// The name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
    }

    /// A perturbation drawn uniformly from the eps ball, with the shape of `x`.
    ///
    /// For L2 the direction is Gaussian and the radius `eps * u^(1/d)`, which is uniform in
    /// the ball's volume (scaling by `u` alone would crowd the centre).
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
        };
        Ok(Tensor::from_vec(data, dims, x.device())?)
    }

    /// The steepest-ascent direction for a gradient: its sign for L-inf, the gradient
    /// divided by its per-sample L2 norm for L2.
    pub fn ascent_direction(self, grad: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Linf => Ok(grad.sign()?),
            Norm::L2 => {
                let norms = (per_sample_l2(grad)? + 1e-10)?;
                Ok(grad.broadcast_div(&expand(&norms, grad.rank())?)?)
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
        }
    }

    /// The per-sample size of `delta` in this norm.
    pub fn measure(self, delta: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Linf => per_sample_linf(delta),
            Norm::L2 => per_sample_l2(delta),
        }
    }
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

/// A per-sample boolean mask as an f32 tensor of 0 and 1 with the shape of `x`, for exact
/// per-sample selection `a * m + b * (1 - m)`.
pub(crate) fn mask_like(mask: &[bool], x: &Tensor) -> Result<Tensor> {
    let v: Vec<f32> = mask.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
    let m = Tensor::from_vec(v, mask.len(), x.device())?.to_dtype(DType::F32)?;
    Ok(expand(&m, x.rank())?.broadcast_as(x.shape())?.contiguous()?)
}
