//! What every attack shares: input checks, the objective and its input gradient, and the
//! final bookkeeping.

use crate::loss::{objective, LossKind};
use crate::norm::{per_sample_l2, per_sample_linf};
use crate::{AttackOutput, Cost, Error, Goal, Result};
use candle_core::{DType, Tensor, Var, D};
use temper_core::{Classifier, ForwardOpts, Mode};

/// One attack run: the model, the clean batch and whose label the objective uses.
pub(crate) struct Problem<'a> {
    pub model: &'a dyn Classifier,
    pub x: &'a Tensor,
    /// The labels the objective is about: `y` (untargeted) or the targets.
    pub labels: Tensor,
    pub targeted: bool,
    pub cost: Cost,
}

const EVAL: ForwardOpts = ForwardOpts {
    mode: Mode::Eval,
    param_grads: false,
};

fn check_labels(t: &Tensor, n: usize, k: usize, what: &str) -> Result<Tensor> {
    if t.dims() != [n] {
        return Err(Error::BadInput(format!(
            "{what} must have shape [{n}], got {:?}",
            t.dims()
        )));
    }
    let t = t
        .to_dtype(DType::U32)
        .map_err(|_| Error::BadInput(format!("{what} must be integers")))?;
    if n > 0 {
        let max = t.max(0)?.to_scalar::<u32>()? as usize;
        if max >= k {
            return Err(Error::BadInput(format!(
                "{what} contain class {max}, but the model has {k} classes"
            )));
        }
    }
    Ok(t)
}

impl<'a> Problem<'a> {
    pub fn new(model: &'a dyn Classifier, x: &'a Tensor, y: &Tensor, goal: Goal<'_>) -> Result<Self> {
        if x.rank() != 4 || x.dtype() != DType::F32 {
            return Err(Error::BadInput(format!(
                "inputs must be NCHW f32, got {:?} {:?}",
                x.dtype(),
                x.dims()
            )));
        }
        let n = x.dim(0)?;
        if n > 0 {
            let flat = x.flatten_all()?;
            let (lo, hi) = (flat.min(0)?.to_scalar::<f32>()?, flat.max(0)?.to_scalar::<f32>()?);
            if !(lo >= 0.0 && hi <= 1.0) {
                return Err(Error::BadInput(format!(
                    "inputs must be pixels in [0, 1], got values in [{lo}, {hi}] \
                     (normalisation belongs inside the model)"
                )));
            }
        }
        let k = model.num_classes();
        let y = check_labels(y, n, k, "labels")?;
        let (labels, targeted) = match goal {
            Goal::Untargeted => (y.clone(), false),
            Goal::Targeted(t) => (check_labels(t, n, k, "target labels")?, true),
        };
        Ok(Problem {
            model,
            x,
            labels,
            targeted,
            cost: Cost::default(),
        })
    }

    pub fn n(&self) -> usize {
        self.x.dim(0).unwrap_or(0)
    }

    /// Logits in eval mode without gradients.
    pub fn logits(&mut self, x: &Tensor) -> Result<Tensor> {
        self.cost.forward += x.dim(0)? as u64;
        Ok(self.model.forward_opts(&x.detach(), EVAL)?)
    }

    /// Per-sample objective, its input gradient, and the logits, at `x`.
    pub fn grad(&mut self, x: &Tensor, loss: LossKind) -> Result<(Tensor, Tensor, Tensor)> {
        let n = x.dim(0)? as u64;
        self.cost.forward += n;
        self.cost.backward += n;
        let v = Var::from_tensor(&x.detach())?;
        let logits = self.model.forward_opts(v.as_tensor(), EVAL)?;
        let obj = objective(loss, &logits, &self.labels, self.targeted)?;
        // Summed, not averaged: each sample's gradient is then independent of batch size.
        let grads = obj.sum_all()?.backward()?;
        let g = grads
            .get(v.as_tensor())
            .cloned()
            .map_or_else(|| x.zeros_like(), Ok)?;
        Ok((obj.detach(), g, logits.detach()))
    }

    /// Per sample: has the attack reached its goal, given these logits?
    pub fn success(&self, logits: &Tensor) -> Result<Vec<bool>> {
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let lab = self.labels.to_vec1::<u32>()?;
        Ok(pred
            .iter()
            .zip(&lab)
            .map(|(p, l)| if self.targeted { p == l } else { p != l })
            .collect())
    }

    pub fn objective(&self, logits: &Tensor, loss: LossKind) -> Result<Tensor> {
        objective(loss, logits, &self.labels, self.targeted)
    }

    /// The output for adversarial points `adv`, evaluated once more.
    pub fn finish(mut self, adv: Tensor, loss: LossKind) -> Result<AttackOutput> {
        let logits = self.logits(&adv)?;
        let obj = self.objective(&logits, loss)?.to_vec1::<f32>()?;
        let success = self.success(&logits)?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let delta = (&adv - self.x)?;
        Ok(AttackOutput {
            success,
            loss: obj,
            linf: per_sample_linf(&delta)?.to_vec1::<f32>()?,
            l2: per_sample_l2(&delta)?.to_vec1::<f32>()?,
            pred,
            adv,
            cost: self.cost,
        })
    }
}
