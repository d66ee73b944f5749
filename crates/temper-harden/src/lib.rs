//! # temper-harden
//!
//! The compositions of training and quantization, which neither temper-train nor
//! temper-quant may make alone (they do not depend on each other):
//!
//! - [`qat`]: quantization-aware training in the trainer. temper-quant's
//!   [`QatHook`](temper_quant::qat::QatHook) run every layer on its quantized weights
//!   with straight-through gradients; [`qat::Qat`] hands them to temper-train as its
//!   [`LayerTransform`](temper_train::hooks::LayerTransform), so any training method (adversarial
//!   fine-tuning included) trains through the quantizer, its inner attack and its validation
//!   see the quantized model, and the run's float weights export to the quantized file that
//!   computes what training saw.
//! - [`harden`]: one call from a pre-trained checkpoint to a robust, quantized model with its
//!   evidence: adversarial fine-tuning, quantization per bit width (post-training GPFQ, or
//!   quantization-aware adversarial fine-tuning), the robustness x bit-width matrix through
//!   each quantizer, a report ([`HardenReport`]: JSON, Markdown, heat map) and the packed
//!   model files.

mod error;
pub mod pipeline;
pub mod qat;
pub mod report;

pub use error::{Error, Result};
pub use pipeline::{attacks, harden, HardenParams, ValidHardenParams};
pub use report::{HardenReport, ModelFile};
