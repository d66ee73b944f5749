//! HERO, Hessian-enhanced robust optimization (Yang et al.; reference code
//! `Xiaoxuan-Yang/HERO`, `cifar_hero.py` with SAM's `adaptive=True` first step): training
//! that penalises how much the gradient changes under a weight perturbation, so the minimum
//! found is flat along the directions quantization moves the weights in.
//!
//! Per batch, as the reference computes it:
//!
//! 1. `g0`, the gradient of the cross-entropy at the weights `W` (every parameter);
//! 2. `W' = W + rho W² g0 / (‖ |W| g0 ‖ + 1e-12)`, every parameter moved, the norm over all of
//!    them together;
//! 3. `g1`, the gradient at `W'`;
//! 4. the regularizer `R = lambda Σ mean((g1 - g0)²)` over the weights only (convolution and
//!    linear weights, [`Role::Weight`]: the reference skips names with `bias` or `bn`), a
//!    mean per tensor, as the reference's `MSELoss`;
//! 5. the update at `W` (restored) with `g1 + ∇R`, where `∇R = H(W') v` with
//!    `v = 2 lambda / numel (g1 - g0)` on each weight tensor and 0 elsewhere.
//!
//! The reference obtains `H(W') v` by differentiating its backward pass (`create_graph`).
//! Temper's kernels cannot differentiate their backward, so `H v` is the central finite
//! difference `(∇L(W' + ε v) - ∇L(W' - ε v)) / 2ε`, with `ε ‖v‖ = fd_step max(‖W'‖, 1)`. Both extra
//! passes replay the ReLU masks of the pass at `W'` ([`FrozenActivations`]): the double
//! backward gives ReLU no curvature, and without frozen masks every unit that changes sign
//! between the two passes adds a jump of order one to a difference divided by `2ε`, which
//! swamps the Hessian at any `ε` that float32 resolves. With them the difference converges
//! to the double backward's product (`tests/hero_parity.rs` checks it against PyTorch on
//! `tests/fixtures/hero`). Max pooling's choice of maximum is not frozen. The two extra
//! passes leave BatchNorm's running statistics as they were, so they move twice per batch,
//! as in the reference.
//!
//! The reference skips the regularizer (and so every update but weight decay) during its
//! first epoch; Temper applies it from the first batch.

use crate::error::param;
use crate::step::{StepBatch, StepCtx, StepOutput, TrainStep};
use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use std::sync::{Arc, Mutex, MutexGuard};
use temper_core::kernels::{Kernels, KernelsWrapper, Wrapped};
use temper_core::{Classifier, Entry, ParamStore, Role};

/// Unchecked HERO hyper-parameters; [`HeroParams::check`] validates them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeroParams {
    /// Size of the weight perturbation (the reference's `--step_size`, SAM's `rho`).
    pub rho: f64,
    /// Strength of the gradient-difference regularizer (the reference's `--lambda_hero`).
    pub lambda: f64,
    /// The finite-difference step for the Hessian-vector product, relative to the weights'
    /// norm: `ε ‖v‖ = fd_step max(‖W'‖, 1)`.
    pub fd_step: f64,
}

impl Default for HeroParams {
    /// The reference's defaults (`rho` 0.01, `lambda` 1) and a finite-difference step of
    /// 1e-4, the most accurate in float32 of those tried on the fixture (1e-2 down to 3e-5):
    /// larger steps leave BatchNorm's curvature in the difference, smaller ones float32's
    /// rounding. There Temper's product is within 6.4e-6 of the exact one, whose largest
    /// entry is 0.015.
    fn default() -> Self {
        HeroParams {
            rho: 0.01,
            lambda: 1.0,
            fd_step: 1e-4,
        }
    }
}

impl HeroParams {
    /// Validates: `rho >= 0`, `lambda >= 0`, `0 < fd_step < 1`, all finite.
    pub fn check(self) -> Result<Hero> {
        if !(self.rho.is_finite() && self.rho >= 0.0) {
            return Err(param(
                "hero-rho",
                format!("{} must be a finite number >= 0", self.rho),
            ));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(param(
                "hero-lambda",
                format!("{} must be a finite number >= 0", self.lambda),
            ));
        }
        if !(self.fd_step.is_finite() && self.fd_step > 0.0 && self.fd_step < 1.0) {
            return Err(param(
                "hero-fd-step",
                format!("{} is not in (0, 1)", self.fd_step),
            ));
        }
        Ok(Hero {
            params: self,
            frozen: None,
        })
    }
}

/// The HERO step, built by [`HeroParams::check`]. The model's kernels must be wrapped by
/// [`TrainStep::wrap_kernels`] before the first step (the trainer does it).
#[derive(Debug)]
pub struct Hero {
    params: HeroParams,
    frozen: Option<Arc<Wrapped<FrozenActivations>>>,
}

impl Hero {
    /// The hyper-parameters.
    pub fn params(&self) -> HeroParams {
        self.params
    }
}

/// One activation's record: what its replay multiplies by (and, for ReLU6, adds).
#[derive(Debug, Clone)]
enum Mask {
    Relu(Tensor),
    Relu6 { inside: Tensor, above: Tensor },
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Phase {
    /// Compute exactly what the wrapped kernels compute.
    #[default]
    Pass,
    /// Compute as `Pass`, and record every activation's mask.
    Record,
    /// Apply the recorded masks, the `n`-th activation of the pass with the `n`-th mask.
    Replay(usize),
}

#[derive(Debug, Default)]
struct MaskState {
    phase: Phase,
    masks: Vec<Mask>,
}

/// Kernels that can record the ReLU and ReLU6 masks of one forward pass and replay them in
/// later passes, which makes those passes the smooth function whose Hessian a double
/// backward computes. Outside a recording or a replay they are the kernels they wrap.
#[derive(Debug)]
pub struct FrozenActivations {
    inner: Arc<dyn Kernels>,
    state: Mutex<MaskState>,
}

/// Returns the kernels to `Pass` when dropped, so an error in the middle of a step never
/// leaves the model recording or replaying.
struct PhaseGuard<'a>(&'a FrozenActivations);

impl Drop for PhaseGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().phase = Phase::Pass;
    }
}

fn replay_error(reason: String) -> temper_core::Error {
    temper_core::Error::BadInput {
        model: "hero (frozen activations)".into(),
        reason,
    }
}

impl FrozenActivations {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Kernels>) -> Self {
        FrozenActivations {
            inner,
            state: Mutex::new(MaskState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MaskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, phase: Phase) -> PhaseGuard<'_> {
        let mut s = self.lock();
        if phase == Phase::Record {
            s.masks.clear();
        }
        s.phase = phase;
        PhaseGuard(self)
    }

    /// How many masks the last recording holds.
    fn recorded(&self) -> usize {
        self.lock().masks.len()
    }

    fn clear(&self) {
        self.lock().masks.clear();
    }

    /// The current phase; in a replay, also the mask for this activation (of `x`'s shape),
    /// and the replay moves on to the next one.
    fn advance(&self, x: &Tensor) -> temper_core::Result<(Phase, Option<Mask>)> {
        let mut s = self.lock();
        let phase = s.phase;
        let Phase::Replay(i) = phase else {
            return Ok((phase, None));
        };
        s.phase = Phase::Replay(i + 1);
        let m = s.masks.get(i).cloned().ok_or_else(|| {
            replay_error(format!(
                "the replayed pass has more activations than the {} recorded",
                s.masks.len()
            ))
        })?;
        let (Mask::Relu(t) | Mask::Relu6 { inside: t, .. }) = &m;
        if t.dims() != x.dims() {
            return Err(replay_error(format!(
                "activation {i} of the replayed pass has shape {:?}, the recorded one {:?}",
                x.dims(),
                t.dims()
            )));
        }
        Ok((phase, Some(m)))
    }

    fn push(&self, m: Mask) {
        self.lock().masks.push(m);
    }
}

impl KernelsWrapper for FrozenActivations {
    fn inner(&self) -> &dyn Kernels {
        self.inner.as_ref()
    }

    fn relu(&self, x: &Tensor) -> temper_core::Result<Tensor> {
        match self.advance(x)? {
            (_, Some(Mask::Relu(m))) => Ok((x * m)?),
            (_, Some(_)) => Err(replay_error("a ReLU meets a ReLU6's mask".into())),
            (Phase::Record, None) => {
                let y = self.inner.relu(x)?;
                self.push(Mask::Relu(x.gt(0f64)?.to_dtype(x.dtype())?));
                Ok(y)
            }
            _ => self.inner.relu(x),
        }
    }

    fn relu6(&self, x: &Tensor) -> temper_core::Result<Tensor> {
        match self.advance(x)? {
            (_, Some(Mask::Relu6 { inside, above })) => Ok(((x * inside)? + (above * 6.0)?)?),
            (_, Some(_)) => Err(replay_error("a ReLU6 meets a ReLU's mask".into())),
            (Phase::Record, None) => {
                let y = self.inner.relu6(x)?;
                let above = x.ge(6f64)?.to_dtype(x.dtype())?;
                let inside = (x.gt(0f64)?.to_dtype(x.dtype())? - &above)?;
                self.push(Mask::Relu6 { inside, above });
                Ok(y)
            }
            _ => self.inner.relu6(x),
        }
    }
}

/// The gradient of every trainable parameter in `grads`, zeros where it has none.
fn grads_of(entries: &[&Entry], grads: &GradStore) -> Result<Vec<Tensor>> {
    entries
        .iter()
        .map(|e| {
            let t = e.var.as_tensor();
            Ok(match grads.get(t) {
                Some(g) => g.detach(),
                None => t.zeros_like()?,
            })
        })
        .collect()
}

/// The L2 norm of a list of tensors taken together, in f64.
fn norm(ts: &[Tensor]) -> Result<f64> {
    let mut s = 0.0;
    for t in ts {
        s += t.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(s.sqrt())
}

fn set_all(entries: &[&Entry], values: &[Tensor]) -> Result<()> {
    for (e, v) in entries.iter().zip(values) {
        e.var.set(v)?;
    }
    Ok(())
}

/// Copies of the model's buffers (BatchNorm running statistics), to put back with
/// [`restore_buffers`].
fn save_buffers(params: &ParamStore) -> Result<Vec<Tensor>> {
    Ok(params
        .buffers()
        .map(|e| e.var.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

fn restore_buffers(params: &ParamStore, saved: &[Tensor]) -> Result<()> {
    for (e, t) in params.buffers().zip(saved) {
        e.var.set(t)?;
    }
    Ok(())
}

/// Mean cross-entropy of `model` on the batch and its gradients, one forward and one
/// backward pass counted per image.
fn gradient(
    model: &dyn Classifier,
    batch: StepBatch<'_>,
    entries: &[&Entry],
    cost: &mut crate::metrics::TrainCost,
) -> Result<(Tensor, Tensor, GradStore, Vec<Tensor>)> {
    let (loss, logits) = crate::step::cross_entropy(model, batch.x, batch.y, cost)?;
    let store = loss.backward()?;
    let g = grads_of(entries, &store)?;
    Ok((loss, logits, store, g))
}

impl TrainStep for Hero {
    fn name(&self) -> &'static str {
        "hero"
    }

    fn wrap_kernels(&mut self, inner: Arc<dyn Kernels>) -> Option<Arc<dyn Kernels>> {
        let k = Arc::new(Wrapped(FrozenActivations::new(inner)));
        self.frozen = Some(k.clone());
        Some(k)
    }

    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput> {
        let frozen = self.frozen.clone().ok_or_else(|| {
            param(
                "hero",
                "the model's kernels were not wrapped (TrainStep::wrap_kernels) before the first step",
            )
        })?;
        let HeroParams { rho, lambda, fd_step } = self.params;
        let store = ctx.model.params();
        let entries: Vec<&Entry> = store.trainable().collect();
        let w: Vec<Tensor> = entries
            .iter()
            .map(|e| e.var.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;

        // 1. The gradient at W.
        let (loss, logits, _, g0) = gradient(ctx.model, batch, &entries, ctx.cost)?;
        let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;

        // 2. The adaptive perturbation: W' = W + rho W^2 g0 / (|| |W| g0 || + 1e-12).
        let scaled: Vec<Tensor> = w
            .iter()
            .zip(&g0)
            .map(|(w, g)| w.abs()? * g)
            .collect::<candle_core::Result<_>>()?;
        let scale = rho / (norm(&scaled)? + 1e-12);
        let w_pert: Vec<Tensor> = w
            .iter()
            .zip(&g0)
            .map(|(w, g)| w + ((w.sqr()? * g)? * scale)?)
            .collect::<candle_core::Result<_>>()?;
        let result = (|| -> Result<GradStore> {
            set_all(&entries, &w_pert)?;

            // 3. The gradient at W', recording the activation masks.
            let (_, _, mut grads, g1) = {
                let _record = frozen.enter(Phase::Record);
                gradient(ctx.model, batch, &entries, ctx.cost)?
            };
            if frozen.recorded() == 0 {
                return Err(param(
                    "hero",
                    "no activation ran through the kernels TrainStep::wrap_kernels returned; \
                     the model must use them",
                ));
            }

            // 4-5. v on the weights, and H(W') v by central differences along it.
            let v: Vec<Tensor> = entries
                .iter()
                .zip(g1.iter().zip(&g0))
                .map(|(e, (a, b))| {
                    if e.role == Role::Weight {
                        (a - b)? * (2.0 * lambda / a.elem_count() as f64)
                    } else {
                        a.zeros_like()
                    }
                })
                .collect::<candle_core::Result<_>>()?;
            let v_norm = norm(&v)?;
            let hv: Option<Vec<Tensor>> = if v_norm > 0.0 {
                let eps = fd_step * norm(&w_pert)?.max(1.0) / v_norm;
                let buffers = save_buffers(store)?;
                let mut at = |sign: f64| -> Result<Vec<Tensor>> {
                    let moved: Vec<Tensor> = w_pert
                        .iter()
                        .zip(&v)
                        .map(|(w, v)| w + (v * (sign * eps))?)
                        .collect::<candle_core::Result<_>>()?;
                    set_all(&entries, &moved)?;
                    let _replay = frozen.enter(Phase::Replay(0));
                    Ok(gradient(ctx.model, batch, &entries, ctx.cost)?.3)
                };
                let plus = at(1.0)?;
                let minus = at(-1.0)?;
                restore_buffers(store, &buffers)?;
                Some(
                    plus.iter()
                        .zip(&minus)
                        .map(|(p, m)| (p - m)? / (2.0 * eps))
                        .collect::<candle_core::Result<_>>()?,
                )
            } else {
                None
            };
            for (i, e) in entries.iter().enumerate() {
                let d = match &hv {
                    Some(hv) => (&g1[i] + &hv[i])?,
                    None => g1[i].clone(),
                };
                grads.insert(e.var.as_tensor(), d);
            }
            Ok(grads)
        })();
        frozen.clear();
        // The update is applied at W, whatever happened above.
        set_all(&entries, &w)?;
        Ok(StepOutput {
            loss,
            grads: result?,
            logits,
            active: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use temper_core::kernels::CandleKernels;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().and_then(|t| t.to_vec1()).unwrap_or_default()
    }

    #[test]
    fn frozen_activations_pass_record_and_replay() -> Result<()> {
        let k = Wrapped(FrozenActivations::new(Arc::new(CandleKernels)));
        let x = Tensor::new(&[-1.0f32, -0.0, 0.5, 3.0, 7.0], &Device::Cpu)?;
        // Outside a recording the wrapper is the kernels it wraps.
        assert_eq!(values(&k.relu(&x)?), values(&CandleKernels.relu(&x)?));
        assert_eq!(values(&k.relu6(&x)?), values(&CandleKernels.relu6(&x)?));
        {
            let _r = k.enter(Phase::Record);
            k.relu(&x)?;
            k.relu6(&x)?;
        }
        assert_eq!(k.recorded(), 2);
        // Replayed at other inputs, the masks of the recording decide, and the gradient is
        // the mask: the units that were off stay off.
        let moved = Var::new(&[0.5f32, 2.0, -0.5, 3.0, 5.0], &Device::Cpu)?;
        let _p = k.enter(Phase::Replay(0));
        let y = k.relu(moved.as_tensor())?;
        assert_eq!(values(&y), [0.0, 0.0, -0.5, 3.0, 5.0]);
        let g = y.sum_all()?.backward()?;
        let gm = g.get(moved.as_tensor()).map(values).unwrap_or_default();
        assert_eq!(gm, [0.0, 0.0, 1.0, 1.0, 1.0]);
        // ReLU6: inside (0, 6) the input, at or above 6 the constant 6.
        assert_eq!(values(&k.relu6(moved.as_tensor())?), [0.0, 0.0, -0.5, 3.0, 6.0]);
        // A pass with more activations than were recorded is an error, not a panic.
        assert!(k.relu(&x).is_err());
        drop(_p);
        // Back to passing through.
        assert_eq!(values(&k.relu(&x)?), values(&CandleKernels.relu(&x)?));
        Ok(())
    }
}
