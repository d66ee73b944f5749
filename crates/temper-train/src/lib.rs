//! # temper-train
//!
//! A thin trainer over Temper's pieces: a [`TrainConfig`] names the model, data, method,
//! schedule, optimizer and threat model; [`train`] runs it into a run directory and
//! [`resume`] continues an interrupted run exactly.
//!
//! Methods: natural training, PGD-AT (Madry et al. 2018), Fast-AT (FGSM with random start,
//! Wong et al. 2020, stopped on catastrophic overfitting), TRADES (Zhang et al. 2019), and
//! adversarial fine-tuning of given weights with a slow-start-fast-decay schedule (after
//! Jeddi, Shafiee and Wong 2020).
//!
//! A run directory holds `config.toml`, `metrics.jsonl` (one JSON object per line),
//! `checkpoint.safetensors` (model, optimizer and position, written atomically),
//! `model.safetensors` and `best.safetensors` (plain PyTorch-style state dicts: last weights
//! and best validation robust accuracy) and `summary.json` (final numbers and the cost
//! counter in forward/backward image passes).
//!
//! All randomness is a pure function of `(seed, iteration)` or `(seed, epoch)`, so a run
//! resumed from a checkpoint ends with weights bit-identical to an uninterrupted one (CPU).
//!
//! ```no_run
//! use temper_train::{train, Method, RunOptions, TrainConfig};
//! use temper_models::{ModelConfig, ModelKind};
//!
//! # fn main() -> temper_train::Result<()> {
//! let mut cfg = TrainConfig::new(Method::PgdAt, ModelConfig::new(ModelKind::SmallCnn, 10), "mnist10k");
//! cfg.epochs = 2;
//! let opts = RunOptions { renderer: Box::new(temper_train::render::Silent), stop_after: None };
//! let report = train(cfg.check()?, "runs/pgd".as_ref(), &candle_core::Device::Cpu, opts)?;
//! println!("robust {:?} after {} passes", report.val_robust, report.cost.passes());
//! # Ok(()) }
//! ```

pub mod checkpoint;
mod config;
mod error;
pub mod metrics;
pub mod render;
pub mod trades;
mod trainer;

pub use config::{Method, ThreatConfig, TrainConfig, ValidTrainConfig};
pub use error::{Error, Result};
pub use trainer::{files, resume, train, RunOptions, TrainReport};
