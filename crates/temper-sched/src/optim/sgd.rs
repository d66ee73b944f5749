//! SGD with momentum, dampening, Nesterov momentum and weight decay, as `torch.optim.SGD`.

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

pub(super) const KEYS: &[&str] = &["momentum", "dampening", "nesterov", "weight_decay", "decay_scope"];

/// The hyper-parameters of [`Sgd`]. The defaults are those of adversarial training (Madry et
/// al., Rice et al.): momentum 0.9 and weight decay 5e-4 (PyTorch's own defaults are 0),
/// applied to weights only (see [`DecayScope`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum factor, in `[0, 1)`; 0 disables momentum (and its buffers).
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer, in `[0, 1]`.
    pub dampening: f64,
    /// Nesterov momentum; needs `momentum > 0` and `dampening = 0`, as in PyTorch.
    pub nesterov: bool,
    /// L2 penalty added to the gradient (coupled weight decay), `>= 0`.
    pub weight_decay: f64,
    /// Which parameters take weight decay.
    pub decay_scope: DecayScope,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 5e-4,
            decay_scope: DecayScope::Weights,
        }
    }
}

impl SgdConfig {
    /// Validates the hyper-parameters; errors name the offending one.
    pub fn check(&self) -> Result<()> {
        check_range("momentum", self.momentum, 0.0, 1.0, false)?;
        check_range("dampening", self.dampening, 0.0, 1.0, true)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::param(
                "weight_decay",
                format!("must be a finite number >= 0, got {}", self.weight_decay),
            ));
        }
        if self.nesterov && (self.momentum == 0.0 || self.dampening != 0.0) {
            return Err(Error::param("nesterov", "needs momentum > 0 and dampening = 0"));
        }
        Ok(())
    }

    pub(super) fn parse(p: &Params<'_>) -> Result<Self> {
        let d = SgdConfig::default();
        Ok(SgdConfig {
            momentum: p.f64("momentum")?.unwrap_or(d.momentum),
            dampening: p.f64("dampening")?.unwrap_or(d.dampening),
            nesterov: p.bool("nesterov")?.unwrap_or(d.nesterov),
            weight_decay: p.f64("weight_decay")?.unwrap_or(d.weight_decay),
            decay_scope: p.keyword("decay_scope")?.unwrap_or(d.decay_scope),
        })
    }

    pub(super) fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("momentum", self.momentum)?;
        w.num("dampening", self.dampening)?;
        w.kv("nesterov", self.nesterov)?;
        w.num("weight_decay", self.weight_decay)?;
        w.kv("decay_scope", self.decay_scope)
    }
}

/// `torch.optim.SGD`, step for step:
///
/// ```text
/// d_p = g + weight_decay * p                        (if p decays)
/// buf = d_p                                         (first step)
/// buf = momentum * buf + (1 - dampening) * d_p      (later steps)
/// d_p = d_p + momentum * buf   if nesterov,  else   d_p = buf
/// p   = p - lr * d_p
/// ```
///
/// State keys: `momentum_buffer.<param>` (PyTorch's name) and `step`.
#[derive(Debug, Clone)]
pub struct Sgd {
    config: SgdConfig,
    /// Momentum buffers by parameter name. Each step replaces a buffer with a new tensor
    /// rather than writing into it, so exported snapshots never change afterwards.
    buffers: BTreeMap<String, Tensor>,
    steps: u64,
}

impl Sgd {
    /// A fresh optimizer; fails if `config` does not pass [`SgdConfig::check`].
    pub fn new(config: SgdConfig) -> Result<Self> {
        config.check()?;
        Ok(Sgd {
            config,
            buffers: BTreeMap::new(),
            steps: 0,
        })
    }

    /// The momentum buffer of a parameter, once it has had a gradient.
    pub fn momentum_buffer(&self, name: &str) -> Option<&Tensor> {
        self.buffers.get(name)
    }
}

impl Optimizer for Sgd {
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
            // Detached, as `g` is, so that no result below records a backprop graph: a
            // momentum buffer built from tracked tensors would chain every past step together
            // in memory.
            let p = entry.var.as_tensor().detach();
            let mut d_p = if c.weight_decay != 0.0 && c.decay_scope.decays(entry.role) {
                (&g + (&p * c.weight_decay)?)?
            } else {
                g
            };
            if c.momentum != 0.0 {
                let buf = match self.buffers.get(&entry.name) {
                    // A copy, like PyTorch's `clone()`, so the buffer owns its storage.
                    None => d_p.copy()?,
                    Some(buf) if c.dampening == 0.0 => ((buf * c.momentum)? + &d_p)?,
                    Some(buf) => ((buf * c.momentum)? + (&d_p * (1.0 - c.dampening))?)?,
                };
                d_p = if c.nesterov {
                    (&d_p + (&buf * c.momentum)?)?
                } else {
                    buf.clone()
                };
                self.buffers.insert(entry.name.clone(), buf);
            }
            entry.var.set(&(&p - (&d_p * lr)?)?)?;
        }
        self.steps += 1;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn config(&self) -> OptimizerConfig {
        OptimizerConfig::Sgd(self.config.clone())
    }

    fn export_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), count_tensor(self.steps)?)];
        for (name, buf) in &self.buffers {
            out.push((format!("momentum_buffer.{name}"), buf.clone()));
        }
        Ok(out)
    }

    fn import_state(&mut self, store: &ParamStore, state: &[(String, Tensor)]) -> Result<()> {
        check_unique(state)?;
        let mut steps = None;
        let mut buffers = BTreeMap::new();
        for (key, t) in state {
            if key == "step" {
                steps = Some(read_count(key, t)?);
            } else if let Some(name) = key.strip_prefix("momentum_buffer.") {
                if self.config.momentum == 0.0 {
                    return Err(Error::state(key, "a momentum buffer, but momentum is 0"));
                }
                let entry = trainable_entry(store, name, key)?;
                buffers.insert(name.to_string(), state_tensor(entry, key, t)?);
            } else {
                return Err(Error::state(
                    key,
                    "unknown key (SGD state has `step` and `momentum_buffer.<param>`)",
                ));
            }
        }
        self.steps = steps.ok_or_else(|| Error::state("step", "missing"))?;
        self.buffers = buffers;
        Ok(())
    }
}
