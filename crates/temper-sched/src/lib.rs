//! # temper-sched
//!
//! Learning-rate schedules and the optimizers they drive, for Temper's trainer; no
//! dependency on training code.
//!
//! - A [`Schedule`] is a pure function of progress: [`Schedule::lr`] takes the fractional
//!   epoch (`iteration / iters_per_epoch`), so per-iteration schedules are exact and a resumed
//!   run continues exactly. Schedules are parsed from spec strings (the grammar is below) into
//!   a [`ScheduleSpec`], validated once for a run length by [`ScheduleSpec::check`], and
//!   stored with serde as their spec string.
//! - [`Sgd`] (momentum, Nesterov, weight decay) and [`AdamW`] follow PyTorch step for step
//!   (checked against `torch.optim` fixtures), update a [`temper_core::ParamStore`] in place,
//!   leave biases and BatchNorm parameters out of weight decay by default, and export their
//!   state as named tensors for a checkpoint.
//!
//! ```
//! use candle_core::Device;
//! use temper_core::{Builder, Init, Role};
//! use temper_sched::{Optimizer, OptimizerConfig, Schedule, ScheduleSpec};
//!
//! # fn main() -> anyhow::Result<()> {
//! // A one-parameter "model" and a 2-epoch run of 4 iterations per epoch.
//! let b = Builder::zeroed(&Device::Cpu);
//! let w = b.param("w", &[3], Init::Const(1.0), Role::Weight)?;
//! let store = b.finish();
//! let sched: Schedule = "ssfd:peak=0.05,warmup=0.3,decay=exp,final=1e-4"
//!     .parse::<ScheduleSpec>()?
//!     .check(2.0)?;
//! let mut opt = "sgd:momentum=0.9,nesterov=true,weight_decay=5e-4"
//!     .parse::<OptimizerConfig>()?
//!     .build()?;
//!
//! for it in 0..8 {
//!     let loss = w.as_tensor().sqr()?.sum_all()?;
//!     let grads = loss.backward()?;
//!     opt.step(&store, &grads, sched.lr_at_iter(it, 4))?;
//! }
//! assert_eq!(opt.steps(), 8);
//! assert!(w.as_tensor().to_vec1::<f32>()?[0] < 1.0);
//!
//! // The state goes into a checkpoint as named tensors.
//! let state = opt.export_state()?;
//! assert!(state.iter().any(|(k, _)| k == "momentum_buffer.w"));
//! # Ok(()) }
//! ```
//!
//! ## Schedule specs
//!
//! A spec is `kind:key=value,key=value,...`. Numbers are written as Rust or Python write them
//! (`0.05`, `1e-4`). A point in the run `P` is a fraction of it (`0.3`) or a number of
//! epochs (`5ep`). Lists are separated by `/`. Defaults are resolved at parse time, and
//! `Display` writes every key, so a spec stored in a checkpoint keeps its meaning when a
//! default changes.
//!
//! | kind | keys (required in bold) | example |
//! |---|---|---|
//! | [`constant`](Constant) (`const`) | **`lr`** | `constant:lr=0.01` |
//! | [`step`](Step) (`multistep`) | **`lr`**, **`milestones=P/P/..`** or **`every=P`**, `gamma=0.1` | `step:lr=0.1,milestones=100ep/150ep` |
//! | [`exp`](Exponential) (`exponential`) | **`lr`**, **`gamma`** (per epoch) or **`final`** | `exp:lr=0.1,gamma=0.95` |
//! | [`cosine`](Cosine) | **`peak`**, `final=0`, `period=P`, `mult=1` (SGDR restarts) | `cosine:peak=0.1,period=10ep,mult=2` |
//! | [`warmup`](Warmup) | **`length=P`**, `start=0`, **`then=[SPEC]`** | `warmup:length=5ep,then=[cosine:peak=0.1]` |
//! | [`cyclic`](Cyclic) | **`peak`**, `at=0.4` | `cyclic:peak=0.2` |
//! | [`onecycle`](OneCycle) (`one-cycle`) | **`peak`**, `warmup=0.3`, `start=peak/25`, `final=start/1e4`, `anneal=cos` | `onecycle:peak=0.1` |
//! | [`piecewise`](Piecewise) | **`points=P:LR/P:LR/..`** | `piecewise:points=0:0/0.4:0.2/1:0` |
//! | [`ssfd`](Ssfd) | `peak=0.05`, `warmup=0.5`, `start=peak/100`, `final=peak/500`, `decay=linear` | `ssfd:peak=0.05,warmup=0.3,decay=exp,final=1e-4` |
//!
//! Shapes (`decay`, `anneal`) are `exp`, `linear` or `cos`. The SSFD defaults were chosen by
//! experiment (`cargo xtask ssfd-sweep`), explained on [`Ssfd`].
//!
//! ## Optimizer specs
//!
//! `sgd:momentum=0.9,dampening=0,nesterov=false,weight_decay=5e-4,decay_scope=weights` and
//! `adamw:beta1=0.9,beta2=0.999,eps=1e-8,weight_decay=0.01,decay_scope=weights`; every key is
//! optional (the values shown are the defaults). `decay_scope=all` decays biases and
//! BatchNorm parameters too.

mod error;
pub mod optim;
pub mod schedule;
mod spec;

pub use error::{Error, Result};
pub use optim::{
    Active, AdamW, AdamWConfig, DecayScope, Optimizer, OptimizerConfig, ParamGroup, ParamGroups, Sgd,
    SgdConfig, DEFAULT_GROUP,
};
pub use schedule::{
    Constant, Cosine, Cyclic, ExpRate, Exponential, Milestones, OneCycle, Piecewise, Restarts, Schedule,
    ScheduleSpec, Shape, Ssfd, Step, Warmup,
};
pub use spec::Progress;

// The README's examples are compiled and run as doctests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
