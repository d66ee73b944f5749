//! # temper-quant
//!
//! Post-training quantization for any zoo model, down to ternary and binary weights, and a
//! quantized model that stays a [`temper_core::Classifier`], so the attacks of
//! temper-attacks run *through* the quantizer.
//!
//! - **Grids**: [`uniform`] symmetric or asymmetric, 2 to 8 bits, per tensor or per output
//!   channel ([`Granularity`]); [`ternary`] (TWN); [`binary`] (sign and mean magnitude).
//! - **Before**: BatchNorm folded into the convolution before it ([`fold`]). **After**: bias
//!   correction on calibration data ([`QuantParams::bias_correction`]).
//! - **Methods**: round to nearest ([`rtn`]) or [`gpfq`], the greedy path-following
//!   quantizer, which tracks the float network's layer outputs; for ternary weights also
//!   pruning ternary quantization ([`pruned_ternary`]).
//! - **Quantization-aware training** ([`qat`]): kernels that run every layer on its quantized
//!   weights with straight-through gradients to the float ones, for a trainer to install; the
//!   export is the same rounding of the trained weights, so the file computes what training
//!   saw.
//! - **Activations**: per-tensor grids calibrated by min-max, percentile or MSE ([`calib`]),
//!   applied by kernels wrapped around the model's own ([`act`]), with a straight-through
//!   gradient ([`ste`]).
//! - **Mixed precision**: per-layer sensitivity and a greedy bit allocation under a size
//!   budget ([`mixed`]).
//! - **Export**: packed int8/int4/int2/ternary/binary codes with scales in safetensors
//!   ([`export`]); loading gives the same logits.
//! - **Robustness**: clean, white-box (through the quantizer) and transfer robust accuracy
//!   across bit widths ([`sweep`]).
//!
//! The first and last layers keep 8 bits by default ([`QuantParams::first_last_bits`]).
//!
//! ```
//! use candle_core::Device;
//! use temper_core::Classifier;
//! use temper_models::{build, ModelConfig, ModelKind};
//! use temper_quant::{quantize, QuantParams, WeightScheme, Method, GpfqParams};
//!
//! # fn main() -> anyhow::Result<()> {
//! let dev = Device::Cpu;
//! let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
//! let float = build(&cfg, &dev)?;
//! let calib = candle_core::Tensor::rand(0f32, 1f32, (16, 1, 28, 28), &dev)?;
//!
//! // 4-bit GPFQ with per-channel steps; first and last layer at 8 bits.
//! let mut p = QuantParams::new(WeightScheme::bits(4));
//! p.method = Method::Gpfq(GpfqParams::default());
//! let q = quantize(&float, &cfg, &calib, &p.check()?)?;
//!
//! // The quantized model is a Classifier: attacks and evaluation take it as it is.
//! assert_eq!(q.forward(&calib)?.dims(), &[16, 10]);
//! assert_eq!(q.layers()[1].weight.scheme(), WeightScheme::bits(4));
//!
//! // Packed export: the file loads back to the same logits.
//! let bytes = temper_quant::export::to_bytes(&q)?;
//! let back = temper_quant::export::load_bytes(&bytes, "q.safetensors".as_ref(), &dev)?;
//! let d = (q.forward(&calib)? - back.forward(&calib)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert_eq!(d, 0.0);
//! # Ok(()) }
//! ```

pub mod act;
mod bias;
pub mod binary;
pub mod calib;
mod error;
pub mod eval;
pub mod export;
pub mod fold;
pub mod gpfq;
pub mod graph;
mod im2col;
pub mod mixed;
mod model;
pub mod pack;
mod params;
pub mod pruned_ternary;
pub mod qat;
mod qtensor;
mod quantize;
mod record;
pub mod rtn;
mod scheme;
pub mod ste;
pub mod sweep;
mod tensors;
pub mod ternary;
pub mod uniform;

pub use act::ActQuant;
pub use calib::ActCalibration;
pub use error::{Error, Result};
pub use gpfq::{AlphabetScale, GpfqParams};
pub use model::{QuantInfo, QuantModel, QuantizedLayer};
pub use params::{ActParams, Method, Precision, QuantParams, ValidQuantParams};
pub use qtensor::QTensor;
pub use quantize::quantize;
pub use scheme::{Granularity, WeightScheme};
