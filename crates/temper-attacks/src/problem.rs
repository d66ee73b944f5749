//! What every attack shares: input checks, the objective and its input gradient, and the
//! final bookkeeping.

use crate::loss::{objective, LossKind};
use crate::norm::{per_sample_l1, per_sample_l2, per_sample_linf};
use crate::{AttackOutput, Cost, Error, Goal, Result};
use candle_core::{DType, Tensor, Var, D};
use temper_core::{Classifier, ForwardOpts, Mode};

/// One attack run: the model, the clean batch, its true labels and the targets, if any.
pub(crate) struct Problem<'a> {
    pub model: &'a dyn Classifier,
    pub x: Tensor,
    /// The true labels.
    pub y: Tensor,
    /// The labels success is about: `y` (untargeted) or the targets.
    pub labels: Tensor,
    /// Success means reaching `labels` (targeted) rather than leaving `y`.
    pub targeted: bool,
    /// The target the objective is about, when it differs from success: APGD-T ascends a
    /// targeted loss but succeeds on any wrong class, as the reference does.
    pub objective_target: Option<Tensor>,
    pub cost: Cost,
    /// What the attack had to change and the user should know (a loss undefined for this
    /// model replaced by a defined one, ...), passed on in the output.
    pub notes: Vec<String>,
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
            x: x.clone(),
            y,
            objective_target: targeted.then(|| labels.clone()),
            labels,
            targeted,
            cost: Cost::default(),
            notes: Vec::new(),
        })
    }

    /// The same problem on rows `rows` only, with its own cost (add it back with
    /// [`Problem::absorb`]).
    pub fn subset(&self, rows: &[usize]) -> Result<Problem<'a>> {
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            self.x.device(),
        )?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 0)?) };
        Ok(Problem {
            model: self.model,
            x: pick(&self.x)?,
            y: pick(&self.y)?,
            labels: pick(&self.labels)?,
            targeted: self.targeted,
            objective_target: self.objective_target.as_ref().map(pick).transpose()?,
            cost: Cost::default(),
            notes: Vec::new(),
        })
    }

    /// Adds the work of a sub-problem to this one.
    pub fn absorb(&mut self, sub: &Problem<'_>) {
        self.cost += sub.cost;
        for n in &sub.notes {
            if !self.notes.contains(n) {
                self.notes.push(n.clone());
            }
        }
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
        self.grad_eot(x, loss, 1)
    }

    /// Expectation over transformation: the input gradient averaged over `passes` forward
    /// and backward passes, for models that randomize (Athalye et al. 2018). The objective
    /// and logits are those of the last pass, as in the AutoAttack reference.
    pub fn grad_eot(
        &mut self,
        x: &Tensor,
        loss: LossKind,
        passes: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let n = x.dim(0)? as u64;
        let passes = passes.max(1);
        let v = Var::from_tensor(&x.detach())?;
        let mut sum: Option<Tensor> = None;
        let mut last = None;
        for _ in 0..passes {
            self.cost.forward += n;
            self.cost.backward += n;
            let logits = self.model.forward_opts(v.as_tensor(), EVAL)?;
            let obj = objective(loss, &logits, &self.y, self.objective_target.as_ref())?;
            // Summed, not averaged: each sample's gradient is then independent of batch size.
            let grads = obj.sum_all()?.backward()?;
            let g = grads
                .get(v.as_tensor())
                .cloned()
                .map_or_else(|| x.zeros_like(), Ok)?;
            sum = Some(match sum {
                None => g,
                Some(s) => (s + g)?,
            });
            last = Some((obj.detach(), logits.detach()));
        }
        let (Some(g), Some((obj, logits))) = (sum, last) else {
            return Err(Error::BadInput("no gradient pass ran".into()));
        };
        let g = if passes > 1 { (g / passes as f64)? } else { g };
        Ok((obj, g, logits))
    }

    /// Per sample: has the attack reached its goal, given these logits?
    pub fn success(&self, logits: &Tensor) -> Result<Vec<bool>> {
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        self.success_of(&pred)
    }

    /// Per sample: has the attack reached its goal, given these predictions?
    pub fn success_of(&self, pred: &[u32]) -> Result<Vec<bool>> {
        let lab = self.labels.to_vec1::<u32>()?;
        Ok(pred
            .iter()
            .zip(&lab)
            .map(|(p, l)| if self.targeted { p == l } else { p != l })
            .collect())
    }

    pub fn objective(&self, logits: &Tensor, loss: LossKind) -> Result<Tensor> {
        objective(loss, logits, &self.y, self.objective_target.as_ref())
    }

    /// The output for adversarial points `adv`, evaluated once more.
    pub fn finish(mut self, adv: Tensor, loss: LossKind) -> Result<AttackOutput> {
        let logits = self.logits(&adv)?;
        let obj = self.objective(&logits, loss)?.to_vec1::<f32>()?;
        let success = self.success(&logits)?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let delta = (&adv - &self.x)?;
        Ok(AttackOutput {
            success,
            loss: obj,
            linf: per_sample_linf(&delta)?.to_vec1::<f32>()?,
            l2: per_sample_l2(&delta)?.to_vec1::<f32>()?,
            l1: per_sample_l1(&delta)?.to_vec1::<f32>()?,
            pred,
            adv,
            cost: self.cost,
            notes: self.notes,
        })
    }
}
