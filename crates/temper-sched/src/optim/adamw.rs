//! AdamW (Loshchilov & Hutter 2019), as `torch.optim.AdamW`.

use super::{
    check_range, check_unique, count_tensor, read_count, state_tensor, trainable_entry, updates, Active,
    DecayScope, Optimizer, OptimizerConfig, ParamGroups,
};
use crate::spec::{Params, SpecWriter};
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::fmt;
use temper_core::ParamStore;

pub(super) const KEYS: &[&str] = &["beta1", "beta2", "eps", "weight_decay", "decay_scope"];

/// The hyper-parameters of [`AdamW`]; the defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay of the first moment, in `[0, 1)`.
    pub beta1: f64,
    /// Decay of the second moment, in `[0, 1)`.
    pub beta2: f64,
    /// Added to the denominator after the square root, `> 0`.
    pub eps: f64,
    /// Decoupled weight decay, `>= 0`: `p *= 1 - lr * weight_decay` before the Adam update.
    pub weight_decay: f64,
    /// Which parameters take weight decay.
    pub decay_scope: DecayScope,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decay_scope: DecayScope::Weights,
        }
    }
}

impl AdamWConfig {
    /// Validates the hyper-parameters; errors name the offending one.
    pub fn check(&self) -> Result<()> {
        check_range("beta1", self.beta1, 0.0, 1.0, false)?;
        check_range("beta2", self.beta2, 0.0, 1.0, false)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::param(
                "eps",
                format!("must be a finite number > 0, got {}", self.eps),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::param(
                "weight_decay",
                format!("must be a finite number >= 0, got {}", self.weight_decay),
            ));
        }
        Ok(())
    }

    pub(super) fn parse(p: &Params<'_>) -> Result<Self> {
        let d = AdamWConfig::default();
        Ok(AdamWConfig {
            beta1: p.f64("beta1")?.unwrap_or(d.beta1),
            beta2: p.f64("beta2")?.unwrap_or(d.beta2),
            eps: p.f64("eps")?.unwrap_or(d.eps),
            weight_decay: p.f64("weight_decay")?.unwrap_or(d.weight_decay),
            decay_scope: p.keyword("decay_scope")?.unwrap_or(d.decay_scope),
        })
    }

    pub(super) fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("beta1", self.beta1)?;
        w.num("beta2", self.beta2)?;
        w.num("eps", self.eps)?;
        w.num("weight_decay", self.weight_decay)?;
        w.kv("decay_scope", self.decay_scope)
    }
}

/// The moments of one parameter. PyTorch counts steps per parameter, so a parameter that
/// missed a gradient gets its own bias correction; so does this.
#[derive(Debug, Clone)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// `torch.optim.AdamW`, step for step (its single-tensor CPU path, operation for operation,
/// so results agree to rounding):
///
/// ```text
/// p  = p * (1 - lr * weight_decay)                  (if p decays)
/// m  = lerp(m, g, 1 - beta1)
/// v  = beta2 * v + (1 - beta2) * g * g
/// p  = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// ```
///
/// State keys: `exp_avg.<param>`, `exp_avg_sq.<param>`, `step.<param>` (PyTorch's names)
/// and `step`.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    moments: BTreeMap<String, Moments>,
    steps: u64,
}

impl AdamW {
    /// A fresh optimizer; fails if `config` does not pass [`AdamWConfig::check`].
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.check()?;
        Ok(AdamW {
            config,
            moments: BTreeMap::new(),
            steps: 0,
        })
    }
}

impl Optimizer for AdamW {
    fn step_groups(
        &mut self,
        store: &ParamStore,
        grads: &GradStore,
        base_lr: f64,
        groups: &ParamGroups,
        active: Active<'_>,
    ) -> Result<()> {
        let c = &self.config;
        for (entry, lr, g) in updates(store, grads, base_lr, groups, active)? {
            // Detached, as `g` is, so that the moments record no backprop graph linking the
            // steps.
            let p = entry.var.as_tensor().detach();
            let (m, v, t) = match self.moments.get(&entry.name) {
                Some(s) => (s.exp_avg.clone(), s.exp_avg_sq.clone(), s.step + 1),
                None => (p.zeros_like()?, p.zeros_like()?, 1),
            };
            let p = if c.weight_decay != 0.0 && c.decay_scope.decays(entry.role) {
                (&p * (1.0 - lr * c.weight_decay))?
            } else {
                p
            };
            let m = lerp(&m, &g, 1.0 - c.beta1)?;
            let v = ((&v * c.beta2)? + ((&g * (1.0 - c.beta2))? * &g)?)?;
            // Scalars in f64, from a float step count, as PyTorch computes them in Python.
            let bias_correction1 = 1.0 - c.beta1.powf(t as f64);
            let bias_correction2 = 1.0 - c.beta2.powf(t as f64);
            let step_size = lr / bias_correction1;
            // A true division, as PyTorch's; candle's `tensor / f64` multiplies by the
            // reciprocal, which can differ in the last bit.
            let bc2_sqrt = Tensor::new(bias_correction2.sqrt(), p.device())?.to_dtype(p.dtype())?;
            let denom = (v.sqrt()?.broadcast_div(&bc2_sqrt)? + c.eps)?;
            entry.var.set(&(&p - ((&m * step_size)? / &denom)?)?)?;
            self.moments.insert(
                entry.name.clone(),
                Moments {
                    exp_avg: m,
                    exp_avg_sq: v,
                    step: t,
                },
            );
        }
        self.steps += 1;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn config(&self) -> OptimizerConfig {
        OptimizerConfig::AdamW(self.config.clone())
    }

    fn export_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), count_tensor(self.steps)?)];
        for (name, s) in &self.moments {
            out.push((format!("exp_avg.{name}"), s.exp_avg.clone()));
            out.push((format!("exp_avg_sq.{name}"), s.exp_avg_sq.clone()));
            out.push((format!("step.{name}"), count_tensor(s.step)?));
        }
        Ok(out)
    }

    fn import_state(&mut self, store: &ParamStore, state: &[(String, Tensor)]) -> Result<()> {
        check_unique(state)?;
        type Parts = (Option<Tensor>, Option<Tensor>, Option<u64>);
        let mut steps = None;
        let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
        for (key, t) in state {
            if key == "step" {
                steps = Some(read_count(key, t)?);
                continue;
            }
            let (field, name) = key.split_once('.').unwrap_or((key.as_str(), ""));
            if !matches!(field, "exp_avg" | "exp_avg_sq" | "step") || name.is_empty() {
                return Err(Error::state(
                    key,
                    "unknown key (AdamW state has `step`, `exp_avg.<param>`, \
                     `exp_avg_sq.<param>` and `step.<param>`)",
                ));
            }
            let entry = trainable_entry(store, name, key)?;
            let slot = parts.entry(name.to_string()).or_default();
            match field {
                "exp_avg" => slot.0 = Some(state_tensor(entry, key, t)?),
                "exp_avg_sq" => slot.1 = Some(state_tensor(entry, key, t)?),
                _ => slot.2 = Some(read_count(key, t)?),
            }
        }
        let mut moments = BTreeMap::new();
        for (name, (m, v, t)) in parts {
            let missing = |field: &str| Error::state(format!("{field}.{name}"), "missing");
            let m = m.ok_or_else(|| missing("exp_avg"))?;
            let v = v.ok_or_else(|| missing("exp_avg_sq"))?;
            let step = t.ok_or_else(|| missing("step"))?;
            moments.insert(
                name,
                Moments {
                    exp_avg: m,
                    exp_avg_sq: v,
                    step,
                },
            );
        }
        self.steps = steps.ok_or_else(|| Error::state("step", "missing"))?;
        self.moments = moments;
        Ok(())
    }
}

/// `torch.lerp(a, b, w)` with PyTorch's formula, which switches ends at `w = 0.5` for
/// accuracy.
fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    let diff = (b - a)?;
    Ok(if w.abs() < 0.5 {
        (a + (&diff * w)?)?
    } else {
        (b - (&diff * (1.0 - w))?)?
    })
}
