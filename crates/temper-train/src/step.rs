//! One training iteration as a value: a [`TrainStep`] turns a batch into a loss and its
//! gradients; the loop in `trainer.rs` owns everything else (data, schedule, the optimizer
//! step, checkpoints, metrics, rendering).
//!
//! A new training method is a new `TrainStep`, never a branch in the loop. A step owns its
//! backward pass, so a method that needs several gradients per iteration (HERO's weight
//! perturbation) or updates only some parameter groups (through [`StepOutput::active`]) fits
//! without touching the loop. A few hooks with no-op defaults cover the rest: an update
//! before the batch's ([`TrainStep::pre_update`], Learn2Perturb's step of its noise scales on
//! their regularizer), a projection after it ([`TrainStep::after_update`]), the epoch
//! ([`TrainStep::start_epoch`], for schedules of the method itself) and a wrapper around the
//! model's kernels for the run ([`TrainStep::wrap_kernels`], HERO's frozen activation masks).
//! Between the step and the optimizer the loop checks that loss and gradients are finite and
//! runs the [`GradHook`](crate::hooks::GradHook)s.

use crate::metrics::TrainCost;
use crate::Result;
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use std::sync::Arc;
use temper_attacks::{Attack, Goal};
use temper_core::kernels::Kernels;
use temper_core::seed::Rng;
use temper_core::{Classifier, ParamStore};

/// One batch, as a step sees it.
#[derive(Debug, Clone, Copy)]
pub struct StepBatch<'a> {
    /// Images, f32 `(N, C, H, W)` in `[0, 1]`.
    pub x: &'a Tensor,
    /// Labels, u32 `(N,)`.
    pub y: &'a Tensor,
}

/// What a step may use besides its batch.
pub struct StepCtx<'a> {
    /// The model being trained, in train mode: its forward passes track parameter gradients.
    pub model: &'a dyn Classifier,
    /// The same model as an inner attack must see it: BatchNorm in the mode the run's
    /// `attack_bn` setting names (see [`crate::attack_bn`]).
    pub attack_model: &'a dyn Classifier,
    /// This iteration's random stream (a pure function of seed and iteration).
    pub rng: &'a mut Rng,
    /// The run's work counter; a step adds the passes it makes.
    pub cost: &'a mut TrainCost,
}

/// What a step hands to the loop.
pub struct StepOutput {
    /// The mean training loss of the batch.
    pub loss: f64,
    /// The gradients the optimizer applies.
    pub grads: GradStore,
    /// The logits of the inputs trained on, for the running accuracy.
    pub logits: Tensor,
    /// The parameter groups the optimizer updates this iteration; `None` for all of them.
    pub active: Option<Vec<String>>,
}

/// An update that needs no batch, applied before the batch's own (see
/// [`TrainStep::pre_update`]).
pub struct PreUpdate {
    /// The gradients the optimizer applies.
    pub grads: GradStore,
    /// The parameter groups it updates; `None` for all of them.
    pub active: Option<Vec<String>>,
}

/// A validation result, as [`TrainStep::after_validation`] sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    /// The epoch just finished (1-based).
    pub epoch: u64,
    /// Clean accuracy.
    pub clean: f64,
    /// Robust accuracy under the validation attack.
    pub robust: f64,
    /// The best robust accuracy of earlier epochs.
    pub best_before: Option<f64>,
}

/// One training method: how a batch becomes a loss and gradients.
pub trait TrainStep: Send {
    /// The method's name, as the CLI spells it.
    fn name(&self) -> &'static str;

    /// Runs the method on one batch: inner attack (if any), forward, loss, backward.
    fn step(&mut self, batch: StepBatch<'_>, ctx: StepCtx<'_>) -> Result<StepOutput>;

    /// Called before the first batch of every epoch (0-based), also when a run resumes in the
    /// middle of one, so a method's own schedule is a function of the epoch.
    fn start_epoch(&mut self, _epoch: u64) {}

    /// An update of this iteration that needs no batch (a regularizer of some parameters
    /// alone). The loop applies it, at the iteration's learning rate, before calling
    /// [`TrainStep::step`], which then sees the parameters it produced. Grad hooks do not see
    /// it: it is the same on every data-parallel worker.
    fn pre_update(&mut self, _model: &dyn Classifier) -> Result<Option<PreUpdate>> {
        Ok(None)
    }

    /// Called after the optimizer applied the iteration's update: a method may project its
    /// parameters back onto their domain here.
    fn after_update(&mut self, _params: &ParamStore) -> Result<()> {
        Ok(())
    }

    /// Called once before the first iteration with the model's kernels: a method that needs
    /// to observe or steer the layers' compute returns a wrapper, which the model then uses
    /// for the whole run (validation included), so it must compute exactly what `inner`
    /// computes except while the method's own step asks otherwise.
    fn wrap_kernels(&mut self, _inner: Arc<dyn Kernels>) -> Option<Arc<dyn Kernels>> {
        None
    }

    /// Called after each epoch's validation; `Some(reason)` stops the run (for example on
    /// catastrophic overfitting). The weights are kept: stopping is not a failure.
    fn after_validation(&mut self, _v: &Validation) -> Option<String> {
        None
    }
}

/// Mean cross-entropy of the model (in its current mode) on `x`, with its logits, counting
/// one forward and one backward pass per image.
pub fn cross_entropy(
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    cost: &mut TrainCost,
) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)? as u64;
    let logits = model.forward(x)?;
    let loss = temper_core::loss::cross_entropy_mean(&logits, y)?;
    cost.forward += n;
    cost.backward += n;
    Ok((loss, logits))
}

/// The backward pass of `loss`, packaged for the loop.
pub fn finish(loss: &Tensor, logits: Tensor) -> Result<StepOutput> {
    let grads = loss.backward()?;
    Ok(StepOutput {
        loss: loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?,
        grads,
        logits,
        active: None,
    })
}

/// The step shared by PGD-AT, Fast-AT and fine-tuning: perturb the batch with `attack`
/// against the model as `ctx.attack_model` shows it, then minimise the cross-entropy on the
/// perturbed batch.
pub fn adversarial_cross_entropy(
    attack: &dyn Attack,
    batch: StepBatch<'_>,
    ctx: StepCtx<'_>,
) -> Result<StepOutput> {
    let out = attack.perturb(ctx.attack_model, batch.x, batch.y, Goal::Untargeted, ctx.rng)?;
    ctx.cost.forward += out.cost.forward;
    ctx.cost.backward += out.cost.backward;
    let (loss, logits) = cross_entropy(ctx.model, &out.adv, batch.y, ctx.cost)?;
    finish(&loss, logits)
}
