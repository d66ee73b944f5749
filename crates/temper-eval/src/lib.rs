//! # temper-eval
//!
//! Honest robustness evaluation of any [`temper_core::Classifier`]: the numbers a reader of
//! a robustness claim needs, the warnings that tell when they are not to be trusted, and
//! reports people can read.
//!
//! - [`evaluate`]: clean accuracy; robust accuracy under each attack of a list; the
//!   per-sample worst case over the list, computed AutoAttack-style (each attack runs only on
//!   the samples the attacks before it left correct); per-class accuracy and confusion
//!   matrices (clean and worst case); mean and max perturbation norms; cost in image passes,
//!   seconds and images per second. Robust accuracy always refers to a [`Threat`] (norm and
//!   eps): an adversarial example counts only inside it.
//! - [`sweep`]: robust accuracy against eps for any attack spec.
//! - [`interpolation`]: clean and robust accuracy of the models on the line between two
//!   checkpoints, with the Pareto front of the trade-off.
//! - [`masking`]: gradient-masking checks after AutoAttack and RobustBench (zero or
//!   non-finite input gradients, accuracy rising with more steps or larger eps, noise beating
//!   the attack, an unbounded attack failing), each a typed [`MaskingFlag`] with a message.
//! - [`Report`]: JSON with schema [`report::SCHEMA`] (`temper.eval.v1`; every field is
//!   documented in `docs/eval-report.md`), a Markdown summary and a terminal table.
//! - [`chart`]: PNG charts (robust accuracy vs eps, training curves from a run's
//!   `metrics.jsonl` read by [`TrainingLog`], learning-rate schedules), with a bundled font so
//!   text renders on any machine.
//!
//! Randomness (attack starts, noise) comes from named [`temper_core::seed`] streams (one per
//! attack, `eval/<name>`, and `eval/masking`), so a report is reproduced exactly by the same
//! seed, and an attack's number does not depend on the other attacks of the list.
//! This crate depends on no training code.
//!
//! ```
//! use candle_core::Device;
//! use temper_attacks::spec::{AttackSettings, AttackSpec};
//! use temper_attacks::Norm;
//! use temper_data::Split;
//! use temper_eval::{evaluate, sweep, DatasetSection, EvalParams, MaskingParams, ModelSection,
//!                   Report, RunSection, SweepParams};
//! use temper_models::{build, ModelConfig, ModelKind};
//!
//! # fn main() -> anyhow::Result<()> {
//! let dev = Device::Cpu;
//! let mut cfg = ModelConfig::new(ModelKind::SmallCnn, 10);
//! cfg.width = 0.5;
//! let model = build(&cfg.check()?, &dev)?;
//! let test = temper_data::load("mnist10k", None, Split::Test)?;
//! let data = test.subset(&(0..16).collect::<Vec<_>>())?;
//!
//! // The attacks, as a user types them, completed with one budget.
//! let settings = AttackSettings { eps: 0.1, steps: 5, ..AttackSettings::default() };
//! let attacks = AttackSpec::parse_list("fgsm,pgd-5")?
//!     .iter()
//!     .map(|s| Ok((s.text.clone(), s.build(&settings)?)))
//!     .collect::<anyhow::Result<Vec<_>>>()?;
//!
//! let params = EvalParams {
//!     batch_size: 16,
//!     masking: Some(MaskingParams { samples: 8, steps: 2, ..MaskingParams::default() }),
//!     ..EvalParams::new(Norm::Linf, 0.1)
//! }
//! .check()?;
//! let eval = evaluate(&model, &data, &attacks, &params, &dev)?;
//! let worst = eval.worst_case.as_ref().map_or(1.0, |w| w.accuracy.accuracy);
//! assert!(eval.attacks.iter().all(|a| worst <= a.robust.accuracy));
//! assert!(eval.attacks.iter().all(|a| a.robust.accuracy <= eval.clean.accuracy.accuracy));
//!
//! // Robust accuracy against eps for FGSM.
//! let sp = SweepParams { eps: vec![0.0, 0.05, 0.1], batch_size: 16 }.check()?;
//! let fgsm = sweep(&model, &data, &AttackSpec::parse("fgsm")?, &settings, &sp, &dev)?;
//! assert_eq!(fgsm.points.len(), 3);
//!
//! let report = Report::new(
//!     ModelSection::of(&model, None),
//!     DatasetSection::of(&data),
//!     RunSection::new("cpu", None),
//!     eval,
//!     vec![fgsm],
//! );
//! let json = report.to_json()?;
//! assert!(json.contains("\"schema\": \"temper.eval.v1\""));
//! assert_eq!(Report::from_json(&json, "report")?, report);
//! assert!(report.to_markdown().contains("## Accuracy"));
//! # Ok(()) }
//! ```

pub mod chart;
mod error;
mod evaluate;
pub mod interpolation;
pub mod jsonl;
pub mod masking;
pub mod metrics;
mod model_ops;
pub mod report;
mod resume;
mod sweep;
mod threat;

pub use error::{Error, Result};
pub use evaluate::{
    evaluate, evaluate_with, AdversarialBatch, AdversarialSink, AttackResult, CascadeStep, CleanResult,
    EvalParams, Evaluation, NamedAttack, ValidEvalParams, WorstCase,
};
pub use jsonl::TrainingLog;
pub use masking::{MaskingChecks, MaskingFlag, MaskingParams, ValidMaskingParams};
pub use metrics::{Accuracy, ConfusionMatrix, CostSummary, NormStats};
pub use report::{DatasetSection, FlagEntry, ModelSection, Report, ReportFiles, RunSection};
pub use resume::STATE_SCHEMA;
pub use sweep::{sweep, Sweep, SweepParams, SweepPoint, ValidSweepParams};
pub use threat::{fmt_eps, Threat};

// The README's examples are compiled and run as doctests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
