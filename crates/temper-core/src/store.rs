//! Named parameters and buffers, with PyTorch `state_dict` names.
//!
//! A [`ParamStore`] is the single owner of a model's tensors. Trainable parameters and
//! buffers (BatchNorm running statistics, `num_batches_tracked`) are kept apart: optimizers
//! only ever see [`ParamStore::trainable`], so running statistics can never be updated by a
//! gradient step by mistake (candle-nn's BatchNorm keeps them among the trainable variables;
//! Temper does not).

use crate::seed::Rng;
use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::Rng as _;
use rand_distr::{Distribution, Normal};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// What role a named tensor plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A trainable weight that takes weight decay (convolution and linear weights).
    Weight,
    /// A trainable parameter excluded from weight decay by default (biases, BatchNorm affine).
    NoDecay,
    /// A non-trainable buffer (BatchNorm running statistics and batch counter).
    Buffer,
}

impl Role {
    /// True for parameters an optimizer updates.
    pub fn is_trainable(self) -> bool {
        !matches!(self, Role::Buffer)
    }
}

/// One named tensor of a model.
#[derive(Debug, Clone)]
pub struct Entry {
    /// PyTorch-style name, e.g. `layer1.0.bn1.running_mean`.
    pub name: String,
    /// The storage. Updated in place with [`Var::set`], so every layer holding a clone sees it.
    pub var: Var,
    /// Parameter or buffer, and its weight-decay group.
    pub role: Role,
}

/// The ordered set of a model's named parameters and buffers.
#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    /// All entries in definition order (the order PyTorch's `state_dict` uses).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Looks an entry up by name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Trainable parameters (weights and no-decay parameters), in definition order.
    pub fn trainable(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.role.is_trainable())
    }

    /// Buffers, in definition order.
    pub fn buffers(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.role == Role::Buffer)
    }

    /// Entries with the given role.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.role == role)
    }

    /// Number of scalar values in trainable parameters, as PyTorch's
    /// `sum(p.numel() for p in model.parameters())` counts them.
    pub fn num_trainable(&self) -> usize {
        self.trainable().map(|e| e.var.elem_count()).sum()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A snapshot of every entry as a detached tensor copy, keyed by name.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        self.entries
            .iter()
            .map(|e| Ok((e.name.clone(), e.var.as_tensor().detach().copy()?)))
            .collect()
    }

    /// The device the entries live on, or `None` for an empty store.
    pub fn device(&self) -> Option<Device> {
        self.entries.first().map(|e| e.var.device().clone())
    }
}

/// How a tensor is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Every element equals the value.
    Const(f64),
    /// Uniform in `[-bound, bound]`.
    Uniform(f64),
    /// Normal with mean 0 and the given standard deviation.
    Normal(f64),
}

struct BuilderInner {
    store: ParamStore,
    /// `None` allocates zeros: used when weights will be loaded or only shapes are needed.
    rng: Option<Rng>,
    device: Device,
}

/// Creates named parameters under a prefix, in the style of candle's `VarBuilder` and
/// PyTorch's module hierarchy: `b.pp("layer1").pp("0").param("weight", ..)` creates
/// `layer1.0.weight`.
#[derive(Clone)]
pub struct Builder {
    inner: Rc<RefCell<BuilderInner>>,
    prefix: String,
}

impl Builder {
    /// A builder that allocates on `device` and draws initial values from `rng`.
    pub fn new(device: &Device, rng: Rng) -> Self {
        Builder {
            inner: Rc::new(RefCell::new(BuilderInner {
                store: ParamStore::default(),
                rng: Some(rng),
                device: device.clone(),
            })),
            prefix: String::new(),
        }
    }

    /// A builder that allocates zeros (constants keep their value): fast, for models whose
    /// weights are loaded next or whose shapes alone are wanted.
    pub fn zeroed(device: &Device) -> Self {
        Builder {
            inner: Rc::new(RefCell::new(BuilderInner {
                store: ParamStore::default(),
                rng: None,
                device: device.clone(),
            })),
            prefix: String::new(),
        }
    }

    /// A builder whose names are prefixed with `name.` (push prefix).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Builder {
            inner: self.inner.clone(),
            prefix: self.path(&name.to_string()),
        }
    }

    /// The full name `prefix.name`.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The current prefix (the module's own name).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The device tensors are allocated on.
    pub fn device(&self) -> Device {
        self.inner.borrow().device.clone()
    }

    /// Creates a trainable f32 parameter.
    pub fn param(&self, name: &str, shape: &[usize], init: Init, role: Role) -> Result<Var> {
        let t = self.init_tensor(shape, init)?;
        self.push(name, t, role)
    }

    /// Creates an f32 buffer (never trained).
    pub fn buffer(&self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let t = self.init_tensor(shape, init)?;
        self.push(name, t, Role::Buffer)
    }

    /// Creates an i64 scalar counter buffer, like PyTorch's `num_batches_tracked`.
    pub fn counter(&self, name: &str) -> Result<Var> {
        let dev = self.device();
        let t = Tensor::new(0i64, &dev)?;
        self.push(name, t, Role::Buffer)
    }

    fn init_tensor(&self, shape: &[usize], init: Init) -> Result<Tensor> {
        let mut inner = self.inner.borrow_mut();
        let n: usize = shape.iter().product();
        let device = inner.device.clone();
        let data: Vec<f32> = match (init, inner.rng.as_mut()) {
            (Init::Const(v), _) => vec![v as f32; n],
            (_, None) => return Ok(Tensor::zeros(shape, DType::F32, &device)?),
            (Init::Uniform(b), Some(rng)) => (0..n).map(|_| rng.random_range(-b..=b) as f32).collect(),
            (Init::Normal(std), Some(rng)) => {
                let d = Normal::new(0.0, std).map_err(|e| Error::param("init std", e.to_string()))?;
                (0..n).map(|_| d.sample(rng) as f32).collect()
            }
        };
        Ok(Tensor::from_vec(data, Shape::from(shape), &device)?)
    }

    fn push(&self, name: &str, t: Tensor, role: Role) -> Result<Var> {
        let full = self.path(name);
        let var = Var::from_tensor(&t)?;
        let mut inner = self.inner.borrow_mut();
        if inner.store.index.contains_key(&full) {
            return Err(Error::param(full, "defined twice in the model"));
        }
        let i = inner.store.entries.len();
        inner.store.index.insert(full.clone(), i);
        inner.store.entries.push(Entry {
            name: full,
            var: var.clone(),
            role,
        });
        Ok(var)
    }

    /// Finishes building and returns the store.
    pub fn finish(self) -> ParamStore {
        self.inner.borrow().store.clone()
    }
}

/// The dtype a stored entry must have: buffers created by [`Builder::counter`] are i64, all
/// else f32.
pub(crate) fn entry_dtype(e: &Entry) -> DType {
    e.var.dtype()
}
