//! Optimizers with PyTorch semantics over a [`ParamStore`]: [`Sgd`] (momentum, Nesterov,
//! weight decay) and [`AdamW`], with optional [`ParamGroups`] (per-group learning-rate
//! multipliers, frozen groups, and steps that update only some groups).
//!
//! They update parameters in place with [`Var::set`](candle_core::Var::set), so every layer
//! holding a clone of a parameter sees the new value and the model is never re-allocated.
//! Only [`ParamStore::trainable`] entries are touched, never buffers; a parameter without a
//! gradient is skipped, as PyTorch skips a `None` gradient. The learning rate is an argument
//! of [`Optimizer::step`], since it comes from a [`Schedule`](crate::Schedule).
//!
//! Weight decay applies to [`Role::Weight`] entries (convolution and linear weights) and not
//! to [`Role::NoDecay`] ones (biases, BatchNorm affine parameters) by default: they are few,
//! do not drive overfitting, and shrinking a BatchNorm scale only fights the normalisation
//! (the "no bias decay" of Goyal et al. 2017, and timm's default). Reference adversarial
//! training code often decays everything (`SGD(model.parameters(), weight_decay=5e-4)` in
//! Rice et al.'s); [`DecayScope::All`] reproduces that.
//!
//! State (momentum buffers, Adam moments, step counts) is exported to and imported from named
//! tensors, so a trainer can put it in a safetensors checkpoint and a resumed run continues
//! bit for bit.

mod adamw;
mod groups;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use groups::{Active, ParamGroup, ParamGroups, DEFAULT_GROUP};
pub use sgd::{Sgd, SgdConfig};

use crate::spec::{split_kind, Keyword, Params, SpecWriter};
use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use std::fmt;
use std::str::FromStr;
use temper_core::{Entry, ParamStore, Role};

/// An optimizer that updates a [`ParamStore`] in place.
pub trait Optimizer {
    /// Applies one update with learning rate `lr` (finite, `>= 0`) to every trainable entry
    /// of `store` that has a gradient in `grads`.
    fn step(&mut self, store: &ParamStore, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_groups(store, grads, lr, &ParamGroups::default(), Active::All)
    }

    /// Applies one update to the trainable entries of `store` that have a gradient and that
    /// `groups` and `active` let this step update, each at `lr` times its group's
    /// `lr_scale`. Entries left alone keep their values and their optimizer state.
    fn step_groups(
        &mut self,
        store: &ParamStore,
        grads: &GradStore,
        lr: f64,
        groups: &ParamGroups,
        active: Active<'_>,
    ) -> Result<()>;

    /// How many times [`Optimizer::step`] has run (restored by [`Optimizer::import_state`]).
    fn steps(&self) -> u64;

    /// The configuration, for a run's config file or a checkpoint.
    fn config(&self) -> OptimizerConfig;

    /// The state as named tensors, e.g. `momentum_buffer.fc.weight` and `step`, ready for a
    /// safetensors file. Tensors are snapshots: later steps do not change them.
    fn export_state(&self) -> Result<Vec<(String, Tensor)>>;

    /// Replaces the state with one from [`Optimizer::export_state`], checking every key
    /// against `store` (unknown keys, unknown parameters, shapes and dtypes are errors that
    /// name the key). Nothing changes when an error is returned.
    fn import_state(&mut self, store: &ParamStore, state: &[(String, Tensor)]) -> Result<()>;
}

/// Which trainable parameters take weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayScope {
    /// Only [`Role::Weight`] entries; biases and BatchNorm affine parameters are excluded.
    #[default]
    Weights,
    /// Every trainable entry, as a single PyTorch parameter group does.
    All,
}

impl DecayScope {
    /// True when parameters of `role` take weight decay.
    pub fn decays(self, role: Role) -> bool {
        match self {
            DecayScope::Weights => role == Role::Weight,
            DecayScope::All => role.is_trainable(),
        }
    }
}

impl Keyword for DecayScope {
    const ALL: &'static [Self] = &[DecayScope::Weights, DecayScope::All];

    fn name(self) -> &'static str {
        match self {
            DecayScope::Weights => "weights",
            DecayScope::All => "all",
        }
    }
}

impl fmt::Display for DecayScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The configuration of any optimizer, parseable from a spec string like schedules are.
///
/// Spec: `sgd:momentum=0.9,dampening=0,nesterov=false,weight_decay=5e-4,decay_scope=weights`
/// or `adamw:beta1=0.9,beta2=0.999,eps=1e-8,weight_decay=0.01,decay_scope=weights`; every key
/// is optional and defaults to the values shown. [`Display`](fmt::Display) writes every key,
/// and serde stores the spec string.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerConfig {
    /// SGD with momentum.
    Sgd(SgdConfig),
    /// AdamW.
    AdamW(AdamWConfig),
}

impl OptimizerConfig {
    /// Validates the configuration and builds a fresh optimizer (no state, step 0).
    pub fn build(&self) -> Result<Box<dyn Optimizer>> {
        Ok(match self {
            OptimizerConfig::Sgd(c) => Box::new(Sgd::new(c.clone())?),
            OptimizerConfig::AdamW(c) => Box::new(AdamW::new(c.clone())?),
        })
    }
}

impl Default for OptimizerConfig {
    /// SGD with momentum 0.9 and weight decay 5e-4, the optimizer of adversarial training.
    fn default() -> Self {
        OptimizerConfig::Sgd(SgdConfig::default())
    }
}

impl FromStr for OptimizerConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, body) = split_kind(s.trim());
        match kind {
            "sgd" => {
                let p = Params::new("optimizer", "sgd", sgd::KEYS, body)?;
                Ok(OptimizerConfig::Sgd(SgdConfig::parse(&p)?))
            }
            "adamw" => {
                let p = Params::new("optimizer", "adamw", adamw::KEYS, body)?;
                Ok(OptimizerConfig::AdamW(AdamWConfig::parse(&p)?))
            }
            _ => Err(Error::UnknownKind {
                what: "optimizer",
                kind: kind.to_string(),
                expected: "sgd, adamw".to_string(),
            }),
        }
    }
}

impl fmt::Display for OptimizerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimizerConfig::Sgd(c) => c.write(&mut SpecWriter::new(f, "sgd")?),
            OptimizerConfig::AdamW(c) => c.write(&mut SpecWriter::new(f, "adamw")?),
        }
    }
}

impl serde::Serialize for OptimizerConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OptimizerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What one optimizer step updates: every trainable entry of `store` whose group is active
/// and that has a non-empty gradient, with its learning rate and its gradient, in store
/// order. Checks `base_lr` and `active` first. The gradient is detached, so nothing an
/// optimizer computes from it records a backprop graph that would chain its steps together.
fn updates<'s>(
    store: &'s ParamStore,
    grads: &GradStore,
    base_lr: f64,
    groups: &ParamGroups,
    active: Active<'_>,
) -> Result<Vec<(&'s Entry, f64, Tensor)>> {
    check_step_lr(base_lr)?;
    groups.check_active(active)?;
    let mut out = Vec::new();
    for entry in store.trainable() {
        let Some(lr) = groups.lr_for(&entry.name, base_lr, active) else {
            continue;
        };
        let Some(g) = grads.get(entry.var.as_tensor()) else {
            continue;
        };
        if g.elem_count() == 0 {
            // Nothing to update, and candle's arithmetic hands an empty operand back
            // unchanged, which `Var::set` would refuse as derived from the variable.
            continue;
        }
        out.push((entry, lr, g.detach()));
    }
    Ok(out)
}

/// Rejects a learning rate that would corrupt the weights.
fn check_step_lr(lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::param(
            "lr",
            format!("must be a finite number >= 0, got {lr}"),
        ))
    }
}

/// Checks that `v` is in `[lo, hi)` (or `[lo, hi]` when `hi_inclusive`).
fn check_range(name: &str, v: f64, lo: f64, hi: f64, hi_inclusive: bool) -> Result<()> {
    let ok = v >= lo && (v < hi || (hi_inclusive && v == hi));
    if ok {
        Ok(())
    } else {
        let close = if hi_inclusive { ']' } else { ')' };
        Err(Error::param(
            name,
            format!("must be in [{lo}, {hi}{close}, got {v}"),
        ))
    }
}

/// The trainable entry a state key refers to.
fn trainable_entry<'a>(store: &'a ParamStore, name: &str, key: &str) -> Result<&'a Entry> {
    match store.get(name) {
        Some(e) if e.role.is_trainable() => Ok(e),
        Some(_) => Err(Error::state(
            key,
            format!("`{name}` is a buffer, not a parameter"),
        )),
        None => Err(Error::state(key, format!("the model has no parameter `{name}`"))),
    }
}

/// A state tensor checked against its parameter and copied onto the parameter's device; the
/// copy keeps the optimizer's state independent of the caller's tensors.
fn state_tensor(entry: &Entry, key: &str, t: &Tensor) -> Result<Tensor> {
    if t.dims() != entry.var.dims() {
        return Err(Error::state(
            key,
            format!(
                "shape {:?} does not match parameter shape {:?}",
                t.dims(),
                entry.var.dims()
            ),
        ));
    }
    if t.dtype() != entry.var.dtype() {
        // Converting would silently change the numbers and break bit-identical resuming.
        return Err(Error::state(
            key,
            format!(
                "dtype {:?} does not match parameter dtype {:?}",
                t.dtype(),
                entry.var.dtype()
            ),
        ));
    }
    Ok(t.detach().to_device(entry.var.device())?.copy()?)
}

/// A step count as a scalar i64 tensor (exact up to 2^63, unlike PyTorch's f32 `step`).
fn count_tensor(n: u64) -> Result<Tensor> {
    let n = i64::try_from(n).map_err(|_| Error::state("step", "step count overflows i64"))?;
    Ok(Tensor::new(n, &Device::Cpu)?)
}

/// Reads a step count written by [`count_tensor`], or PyTorch's float `step`.
fn read_count(key: &str, t: &Tensor) -> Result<u64> {
    if t.elem_count() != 1 {
        return Err(Error::state(
            key,
            format!("expected one value, got shape {:?}", t.dims()),
        ));
    }
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
    if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(63) {
        Ok(v as u64)
    } else {
        Err(Error::state(key, format!("expected a count, got {v}")))
    }
}

/// Rejects a key given twice in imported state.
fn check_unique(state: &[(String, Tensor)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (k, _) in state {
        if !seen.insert(k.as_str()) {
            return Err(Error::state(k, "given twice"));
        }
    }
    Ok(())
}
