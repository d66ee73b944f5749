//! GPFQ, the greedy path-following quantizer (Lybrand and Saab 2021; Zhang, Zhou and Saab
//! 2023, "Post-training quantization for neural networks with provable guarantees").
//!
//! A neuron `w` of a layer whose input, over the calibration set, is `X` in the float network
//! and `X~` in the network whose earlier layers are already quantized, is quantized one
//! weight at a time. With `u` the running error `sum_{s<t} (w_s X_s - q_s X~_s)`:
//!
//! ```text
//! q_t = Q( <X~_t, u + w_t X_t> / |X~_t|^2 ),    u <- u + w_t X_t - q_t X~_t
//! ```
//!
//! where `Q` rounds to the nearest element of the alphabet `delta * {-K, ..., K}`. Each choice
//! thus absorbs the error of the choices before it, and the quantized layer tracks the float
//! layer's *output* rather than its weights, correcting the drift that earlier quantized
//! layers introduced. Convolutions are unfolded into patches (im2col) and grouped
//! convolutions handled group by group.
//!
//! The step is `delta = C * max|w| / K` for `b`-bit grids (`K = 2^(b-1) - 1`, so the codes
//! fit `b` bits), `C` times the TWN scale for ternary and `C * mean|w|` for binary (alphabet
//! `{-delta, +delta}`); the maximum is over the tensor or each output channel, following the
//! granularity. `C = 1` keeps round-to-nearest's grid; by default `C` is searched per output
//! channel (or per layer, for per-tensor steps) among a few values, keeping the one whose
//! quantized output is closest to the float output on the calibration rows.

use crate::error::param;
use crate::im2col::ColMatrix;
use crate::uniform::{round_code, symmetric_step};
use crate::{ternary, Granularity, QTensor, Result, WeightScheme};
use rayon::prelude::*;

/// The alphabet scale `C`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlphabetScale {
    /// This `C` for every layer.
    Fixed {
        /// The scale, positive.
        c: f64,
    },
    /// For each output channel (per-channel steps) or layer (per-tensor step), the `C` of
    /// [`AlphabetScale::candidates`] whose quantized output is closest to the float output on
    /// the calibration rows, which is what GPFQ minimises.
    Search,
}

impl AlphabetScale {
    /// Parses `auto` (search) or a positive number.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" | "search" => Ok(AlphabetScale::Search),
            t => {
                let c: f64 = t
                    .parse()
                    .map_err(|_| param("gpfq-c", format!("'{s}' is neither auto nor a number")))?;
                Ok(AlphabetScale::Fixed { c })
            }
        }
    }

    /// The values tried for `scheme`: for uniform grids from 0.4 to 1.2 times the largest
    /// magnitude (at 2 and 3 bits the step that serves most weights clips the largest ones:
    /// for Gaussian weights the error-minimising range is about half the maximum, and GPFQ
    /// carries a clipped weight's error on to the weights after it); wider for ternary and
    /// binary, whose base step (the TWN scale, the mean magnitude) is no maximum.
    pub fn candidates(self, scheme: WeightScheme) -> Vec<f64> {
        match (self, scheme) {
            (AlphabetScale::Fixed { c }, _) => vec![c],
            (AlphabetScale::Search, WeightScheme::Uniform { .. }) => {
                vec![0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
            }
            (AlphabetScale::Search, _) => vec![0.6, 0.8, 1.0, 1.25, 1.5, 1.75, 2.0],
        }
    }
}

/// GPFQ hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpfqParams {
    /// The alphabet scale `C` (see the module documentation).
    pub c: AlphabetScale,
    /// Most input rows (patches) used per layer; more are subsampled, seeded.
    pub max_rows: usize,
}

impl Default for GpfqParams {
    /// `C` searched per channel or layer, at most 32,768 rows per layer.
    fn default() -> Self {
        GpfqParams {
            c: AlphabetScale::Search,
            max_rows: 32_768,
        }
    }
}

impl GpfqParams {
    /// Validates `c > 0` and `max_rows >= 1`.
    pub fn check(self) -> Result<Self> {
        if let AlphabetScale::Fixed { c } = self.c {
            if !(c.is_finite() && c > 0.0) {
                return Err(param("gpfq-c", format!("{c} must be finite and > 0")));
            }
        }
        if self.max_rows == 0 {
            return Err(param("gpfq-rows", "must be at least 1"));
        }
        Ok(self)
    }
}

/// The alphabet step for a group of weights.
pub(crate) fn step(w: &[f32], scheme: WeightScheme, c: f64) -> f32 {
    let base = match scheme {
        WeightScheme::Uniform { .. } => {
            let (_, k) = scheme.code_range();
            symmetric_step(w.iter().fold(0f32, |a, v| a.max(v.abs())), k)
        }
        WeightScheme::Ternary => ternary::threshold_and_scale(w).1,
        WeightScheme::Binary => {
            let m = w.iter().map(|v| v.abs()).sum::<f32>() / w.len().max(1) as f32;
            if m > 0.0 {
                m
            } else {
                1.0
            }
        }
    };
    let s = (f64::from(base) * c) as f32;
    if s.is_finite() && s > 0.0 {
        s
    } else {
        1.0
    }
}

/// The nearest alphabet code of `v` for a step `delta`.
fn code(v: f32, delta: f32, scheme: WeightScheme) -> i16 {
    match scheme {
        WeightScheme::Binary => {
            if v >= 0.0 {
                1
            } else {
                -1
            }
        }
        _ => {
            let (lo, hi) = scheme.code_range();
            round_code(v, delta, lo, hi)
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Per-column statistics shared by every neuron of a group: `|X~_t|^2` and `<X~_t, X_t>`.
struct Columns<'a> {
    x: &'a ColMatrix,
    xt: &'a ColMatrix,
    norms: Vec<f32>,
    cross: Vec<f32>,
}

impl<'a> Columns<'a> {
    fn new(x: &'a ColMatrix, xt: &'a ColMatrix) -> Self {
        let norms = (0..xt.cols).map(|t| dot(xt.col(t), xt.col(t))).collect();
        let cross = (0..xt.cols).map(|t| dot(xt.col(t), x.col(t))).collect();
        Columns { x, xt, norms, cross }
    }
}

/// Runs the greedy path for one neuron; returns its codes and `|Xw - X~q|^2`.
///
/// Each pass over the rows both applies step `t`'s update to `u` and accumulates
/// `<X~_{t+1}, u>` for the next step, so the rows are read once per weight.
fn neuron(w: &[f32], cols: &Columns<'_>, delta: f32, scheme: WeightScheme) -> (Vec<i16>, f64) {
    let m = cols.x.rows;
    let mut u = vec![0f32; m];
    let mut codes = Vec::with_capacity(w.len());
    // <X~_t, u> for the current t; u starts at zero.
    let mut proj = 0f32;
    for (t, &wt) in w.iter().enumerate() {
        let arg = if cols.norms[t] > 0.0 {
            (proj + wt * cols.cross[t]) / cols.norms[t]
        } else {
            // The quantized network never feeds this weight: its value cannot matter for the
            // output, so round it as round-to-nearest would.
            wt
        };
        let q = code(arg, delta, scheme);
        let qv = f32::from(q) * delta;
        let (xc, xtc) = (cols.x.col(t), cols.xt.col(t));
        proj = match cols.xt.data.get((t + 1) * m..(t + 2) * m) {
            Some(next) => update_and_project(&mut u, xc, xtc, next, wt, qv),
            None => {
                for ((ui, &a), &b) in u.iter_mut().zip(xc).zip(xtc) {
                    *ui += wt * a - qv * b;
                }
                0.0
            }
        };
        codes.push(q);
    }
    (codes, u.iter().map(|v| f64::from(*v).powi(2)).sum())
}

/// `u += wt * x - qv * xt`, returning `<next, u>` of the updated `u`.
///
/// Eight independent lanes keep the multiply-adds pipelined (and vectorisable) even when the
/// crate is built without optimisation, as in the test profile.
fn update_and_project(u: &mut [f32], x: &[f32], xt: &[f32], next: &[f32], wt: f32, qv: f32) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let n = u.len() / L * L;
    let (uh, ut) = u.split_at_mut(n);
    for (((uc, xc), tc), nc) in uh
        .chunks_exact_mut(L)
        .zip(x.chunks_exact(L))
        .zip(xt.chunks_exact(L))
        .zip(next.chunks_exact(L))
    {
        for i in 0..L {
            uc[i] += wt * xc[i] - qv * tc[i];
            acc[i] += nc[i] * uc[i];
        }
    }
    let mut total: f32 = acc.iter().sum();
    for (((ui, &a), &b), &c) in ut.iter_mut().zip(&x[n..]).zip(&xt[n..]).zip(&next[n..]) {
        *ui += wt * a - qv * b;
        total += c * *ui;
    }
    total
}

/// `|Xw|^2`: the energy of a neuron's float output on the calibration rows.
fn output_energy(w: &[f32], x: &ColMatrix) -> f64 {
    let mut y = vec![0f32; x.rows];
    for (t, &wt) in w.iter().enumerate() {
        for (yi, &a) in y.iter_mut().zip(x.col(t)) {
            *yi += wt * a;
        }
    }
    y.iter().map(|v| f64::from(*v).powi(2)).sum()
}

/// One pass over a layer with one candidate `C`.
struct Run {
    /// The step of every quantization group.
    steps: Vec<f32>,
    /// Every neuron's codes and squared output error.
    neurons: Vec<(Vec<i16>, f64)>,
}

/// What GPFQ made of one layer.
#[derive(Debug, Clone)]
pub(crate) struct GpfqLayer {
    pub weight: QTensor,
    /// `|XW - X~Q|_F / |XW|_F` over the calibration rows.
    pub relative_error: f64,
}

/// Quantizes a layer's weight (`shape`, row-major `w`; `(out, in / groups, ...)`) with GPFQ,
/// given the float and quantized inputs of each of its `groups` convolution groups.
pub(crate) fn quantize_layer(
    w: &[f32],
    shape: &[usize],
    float_inputs: &[ColMatrix],
    quant_inputs: &[ColMatrix],
    scheme: WeightScheme,
    granularity: Granularity,
    params: &GpfqParams,
) -> Result<GpfqLayer> {
    if !scheme.is_symmetric() {
        return Err(param(
            "method",
            "GPFQ uses symmetric alphabets; drop --asymmetric",
        ));
    }
    let out = shape[0];
    let per = w.len() / out;
    let groups = float_inputs.len();
    if groups == 0 || !out.is_multiple_of(groups) || quant_inputs.len() != groups {
        return Err(param(
            "gpfq",
            format!("{groups} input groups for {out} output channels"),
        ));
    }
    if float_inputs.iter().chain(quant_inputs).any(|m| m.cols != per) {
        return Err(param(
            "gpfq",
            format!("layer inputs do not have {per} columns per neuron"),
        ));
    }
    let (groups_q, group_len) = granularity.groups(shape);
    let cols: Vec<Columns<'_>> = float_inputs
        .iter()
        .zip(quant_inputs)
        .map(|(x, xt)| Columns::new(x, xt))
        .collect();
    let per_group = out / groups;
    // One full pass per candidate C: every neuron's codes, error and reference energy.
    let runs: Vec<Run> = params
        .c
        .candidates(scheme)
        .into_iter()
        .map(|c| {
            let steps: Vec<f32> = w.chunks(group_len).map(|g| step(g, scheme, c)).collect();
            let neurons = (0..out)
                .into_par_iter()
                .map(|o| {
                    let delta = steps[(o * per) / group_len];
                    neuron(&w[o * per..(o + 1) * per], &cols[o / per_group], delta, scheme)
                })
                .collect();
            Run { steps, neurons }
        })
        .collect();
    let energies: Vec<f64> = (0..out)
        .into_par_iter()
        .map(|o| output_energy(&w[o * per..(o + 1) * per], cols[o / per_group].x))
        .collect();
    // Pick, per quantization group, the run with the smallest output error.
    let neurons_per_group = out / groups_q;
    let mut codes = Vec::with_capacity(w.len());
    let mut steps = Vec::with_capacity(groups_q);
    let (mut err, mut reference) = (0f64, 0f64);
    for g in 0..groups_q {
        let span = g * neurons_per_group..(g + 1) * neurons_per_group;
        let group_err = |r: &Run| -> f64 { r.neurons[span.clone()].iter().map(|n| n.1).sum() };
        let best = runs
            .iter()
            .min_by(|a, b| group_err(a).total_cmp(&group_err(b)))
            .ok_or_else(|| param("gpfq-c", "no candidate scale"))?;
        steps.push(best.steps[g]);
        for (o, (c, e)) in span.clone().zip(&best.neurons[span.clone()]) {
            codes.extend_from_slice(c);
            err += e;
            reference += energies[o];
        }
    }
    let weight = QTensor::new(scheme, granularity, shape.to_vec(), codes, steps, vec![])?;
    Ok(GpfqLayer {
        weight,
        relative_error: (err / reference.max(1e-30)).sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    fn random(rows: usize, cols: usize, seed: &str) -> ColMatrix {
        let mut rng = temper_core::seed::rng_with(1, seed);
        ColMatrix {
            rows,
            cols,
            // ReLU-like inputs: non-negative with many zeros, as layer inputs are.
            data: (0..rows * cols)
                .map(|_| rng.random::<f32>().max(0.3) - 0.3)
                .collect(),
        }
    }

    fn output_error(w: &[f32], q: &[f32], x: &ColMatrix) -> f64 {
        let (out, per) = (w.len() / x.cols, x.cols);
        let mut e = 0f64;
        for o in 0..out {
            for r in 0..x.rows {
                let d: f32 = (0..per)
                    .map(|j| x.col(j)[r] * (w[o * per + j] - q[o * per + j]))
                    .sum();
                e += f64::from(d).powi(2);
            }
        }
        e
    }

    #[test]
    fn beats_round_to_nearest_on_the_layer_output() -> Result<()> {
        let x = random(400, 64, "x");
        let mut rng = temper_core::seed::rng_with(1, "w");
        let w: Vec<f32> = (0..8 * 64).map(|_| rng.random::<f32>() - 0.5).collect();
        for scheme in [
            WeightScheme::bits(3),
            WeightScheme::bits(4),
            WeightScheme::Ternary,
            WeightScheme::Binary,
        ] {
            for g in [Granularity::PerTensor, Granularity::PerChannel] {
                let p = GpfqParams::default();
                let layer = quantize_layer(
                    &w,
                    &[8, 64],
                    std::slice::from_ref(&x),
                    std::slice::from_ref(&x),
                    scheme,
                    g,
                    &p,
                )?;
                let rtn = crate::rtn::quantize(&w, &[8, 64], scheme, g)?;
                let (eg, er) = (
                    output_error(&w, &layer.weight.dequantize(), &x),
                    output_error(&w, &rtn.dequantize(), &x),
                );
                // Measured ratios range from 0.49 (3 bits) to 0.81 (ternary per tensor).
                assert!(eg < 0.85 * er, "{scheme} {g:?}: gpfq {eg} vs rtn {er}");
            }
        }
        Ok(())
    }

    #[test]
    fn tracks_the_float_output_from_drifted_inputs() -> Result<()> {
        // The quantized network's input differs from the float one: GPFQ aims at X w, so it
        // must beat quantizing for the drifted input alone.
        let x = random(300, 32, "x2");
        let mut xt = x.clone();
        for (i, v) in xt.data.iter_mut().enumerate() {
            *v *= 1.0 + 0.2 * ((i % 7) as f32 - 3.0) / 3.0;
        }
        let mut rng = temper_core::seed::rng_with(1, "w2");
        let w: Vec<f32> = (0..4 * 32).map(|_| rng.random::<f32>() - 0.5).collect();
        let s = WeightScheme::bits(4);
        let p = GpfqParams::default();
        let g = quantize_layer(
            &w,
            &[4, 32],
            std::slice::from_ref(&x),
            std::slice::from_ref(&xt),
            s,
            Granularity::PerChannel,
            &p,
        )?;
        assert!(g.relative_error < 0.2, "{}", g.relative_error);
        Ok(())
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(GpfqParams {
            c: AlphabetScale::Fixed { c: 0.0 },
            ..GpfqParams::default()
        }
        .check()
        .is_err());
        assert!(AlphabetScale::parse("x").is_err());
        assert!(matches!(AlphabetScale::parse("auto"), Ok(AlphabetScale::Search)));
        assert!(GpfqParams {
            max_rows: 0,
            ..GpfqParams::default()
        }
        .check()
        .is_err());
        let x = random(10, 4, "x3");
        let asym = WeightScheme::Uniform {
            bits: 4,
            symmetric: false,
        };
        let p = GpfqParams::default();
        assert!(quantize_layer(
            &[0.1; 8],
            &[2, 4],
            std::slice::from_ref(&x),
            std::slice::from_ref(&x),
            asym,
            Granularity::PerTensor,
            &p
        )
        .is_err());
    }
}
