//! # temper-train
//!
//! A thin trainer over Temper's pieces: a [`TrainConfig`] names the model, data, method,
//! schedule, optimizer and threat model; [`train`] runs it into a run directory and
//! [`resume`] continues an interrupted run exactly.
//!
//! A training method is a [`TrainStep`] (in [`steps`]): natural training, PGD-AT (Madry et al.
//! 2018), Fast-AT (FGSM with random start, Wong et al. 2020, stopped on catastrophic
//! overfitting), TRADES (Zhang et al. 2019), adversarial fine-tuning of given weights
//! with a slow-start-fast-decay schedule (after Jeddi, Shafiee and Wong 2020), HERO (Yang et
//! al., a Hessian regularizer for weights that quantize well) and Learn2Perturb (Jeddi et al.
//! 2020, learned noise modules trained by alternating updates). One loop owns
//! data, schedule, optimizer (with [`temper_sched::ParamGroups`]), checkpoints, metrics,
//! validation (through `temper_eval::evaluate`) and rendering; [`hooks::GradHook`]s run
//! between each backward pass and the optimizer step. The inner attack's BatchNorm mode is
//! a setting ([`AttackBn`]) that defaults to each method's reference implementation.
//!
//! A run directory holds `config.toml`, `metrics.jsonl` (one JSON object per line),
//! `checkpoint.safetensors` (model, optimizer and position, written atomically),
//! `model.safetensors` and `best.safetensors` (plain PyTorch-style state dicts: last weights
//! and best validation robust accuracy) and `summary.json` (final numbers, the weight files
//! present and the cost counter in forward/backward image passes). A run whose loss or
//! gradients stop being finite stops before applying them, saves nothing non-finite and
//! returns [`Error::Diverged`].
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
//! let opts = RunOptions::new(Box::new(temper_train::render::Silent));
//! let report = train(cfg.check()?, "runs/pgd".as_ref(), &candle_core::Device::Cpu, opts)?;
//! println!("robust {:?} after {} passes", report.val_robust, report.cost.passes());
//! # Ok(()) }
//! ```

pub mod attack_bn;
pub mod bench;
pub mod checkpoint;
mod config;
mod data;
mod error;
pub mod hooks;
pub mod metrics;
pub mod render;
pub mod step;
pub mod steps;
mod trainer;

pub use attack_bn::AttackBn;
pub use config::{Method, ThreatConfig, TrainConfig, ValidTrainConfig};
pub use error::{Error, Result};
pub use step::TrainStep;
pub use steps::trades;
pub use trainer::{files, resume, train, validation_attack, RunOptions, TrainReport};
