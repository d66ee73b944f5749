//! # temper-core
//!
//! The foundation of Temper: the [`Classifier`] trait that attacks, evaluation, quantization
//! and training all take; [`Network`], its standard implementation; the [`ParamStore`] of
//! named parameters and buffers with PyTorch `state_dict` names; layers with PyTorch
//! semantics over replaceable [`kernels`]; safetensors [`weights`]; [`device`] selection and
//! global [`seed`]ing.
//!
//! Conventions, shared with torchattacks and RobustBench: inputs are pixels in `[0, 1]`,
//! NCHW f32; normalisation lives inside the model; weight names are PyTorch's.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use temper_core::nn::{Conv2d, Linear};
//! use temper_core::kernels::ConvCfg;
//! use temper_core::{Backbone, Builder, Classifier, Ctx, ModelInfo, Network, Normalization};
//!
//! // A two-layer model defined with Temper's layers.
//! struct Tiny { conv: Conv2d, fc: Linear }
//! impl Backbone for Tiny {
//!     fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> temper_core::Result<Tensor> {
//!         let h = temper_core::nn::relu(&self.conv.forward(x, ctx)?, ctx)?;
//!         self.fc.forward(&h.flatten_from(1)?, ctx)
//!     }
//! }
//!
//! # fn main() -> temper_core::Result<()> {
//! let dev = Device::Cpu;
//! let b = Builder::new(&dev, temper_core::seed::rng("init"));
//! let conv = Conv2d::new(&b.pp("conv"), 1, 4, 3, ConvCfg::default(), true)?;
//! let fc = Linear::new(&b.pp("fc"), 4 * 6 * 6, 10, true)?;
//! let info = ModelInfo { name: "tiny".into(), num_classes: 10, input_shape: [1, 8, 8] };
//! let net = Network::new(info, b.finish(), Box::new(Tiny { conv, fc }), Normalization::identity(1), &dev)?;
//! let logits = net.forward(&Tensor::zeros((2, 1, 8, 8), candle_core::DType::F32, &dev)?)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//! assert!(net.params().get("conv.weight").is_some());
//! # Ok(()) }
//! ```

pub mod device;
mod error;
pub mod fsutil;
pub mod hooks;
pub mod interpolate;
pub mod kernels;
pub mod loss;
mod model;
pub mod nn;
pub mod noise;
pub mod pytorch;
pub mod seed;
mod store;
pub mod summary;
pub mod weights;

pub use error::{Error, Result, ShapeMismatch, WeightMismatch};
pub use model::{Backbone, Classifier, Ctx, ForwardOpts, Mode, ModeGuard, ModelInfo, Network, Normalization};
pub use store::{Builder, Entry, Init, ParamStore, Role};

/// Re-export of candle, so downstream crates use the same version.
pub use candle_core;
