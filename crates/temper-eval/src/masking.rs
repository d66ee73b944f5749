//! Gradient-masking checks, after the ones AutoAttack and RobustBench run.
//!
//! A defence that hides its gradient (saturated softmax, non-differentiable input
//! processing, randomness) makes gradient attacks fail without making the model robust. Its
//! robust accuracy is then an illusion, and the symptoms are recognisable:
//!
//! - input gradients that are exactly zero, NaN or infinite;
//! - robust accuracy that rises when the attack gets more steps, or a larger eps;
//! - uniform noise in the eps ball doing better than the white-box attack;
//! - an attack with an eps large enough to reach any image (1 in L-inf) failing to break the
//!   model, or reporting no success at all although the model misclassifies clean points;
//!
//! and AutoAttack's own checks (`checks.py` of the reference):
//!
//! - a randomized model: two clean passes over the same inputs give different outputs, so
//!   its gradient attacks need expectation over transformation (`autoattack-rand`);
//! - outputs that are probabilities (rows in `[0, 1]` summing to 1) rather than logits, which
//!   saturate cross-entropy;
//! - the score-based Square attack beating the white-box attacks, which a model only allows
//!   when its gradients mislead;
//! - fewer than 4 classes, for which DLR (3rd and 4th largest logits) is undefined and the
//!   DLR-based attacks run with the defined variants.
//!
//! Each symptom found is a [`MaskingFlag`] with a message for people.

use crate::metrics::{Accuracy, CostSummary};
use crate::model_ops::{input_gradient, predict, select};
use crate::sweep::Sweep;
use crate::threat::{fmt_eps, Threat};
use crate::{Error, Result};
use candle_core::{DType, Device};
use std::time::Instant;
use temper_attacks::{Attack, Cost, Goal, LossKind, Norm, PgdParams};
use temper_core::Classifier;
use temper_data::Dataset;

/// Unchecked options of the masking checks; [`MaskingParams::check`] validates them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaskingParams {
    /// The checks run on the first `samples` samples of the data set.
    pub samples: usize,
    /// PGD steps of the baseline in the steps check (and of the large-eps attack).
    pub steps: usize,
    /// The steps check compares PGD-`steps` with PGD-`steps * steps_multiplier`.
    pub steps_multiplier: usize,
    /// Uniform-noise draws per sample; a sample counts as broken by noise if any draw flips it.
    pub noise_draws: usize,
    /// The eps of the "must always succeed" check; `None` picks one that reaches every image:
    /// 1 in L-inf, `sqrt(C*H*W)` in L2.
    pub large_eps: Option<f64>,
    /// Accuracy differences up to this (a fraction, 0.01 = one point) are sampling noise, not
    /// a symptom.
    pub tolerance: f64,
    /// The zero-gradient flag is raised when more than this fraction of samples has an
    /// all-zero input gradient. 0 (AutoAttack's choice) flags a single one.
    pub zero_gradient_fraction: f64,
}

impl Default for MaskingParams {
    /// 200 samples, PGD-10 against PGD-40, 4 noise draws, tolerance one point.
    fn default() -> Self {
        MaskingParams {
            samples: 200,
            steps: 10,
            steps_multiplier: 4,
            noise_draws: 4,
            large_eps: None,
            tolerance: 0.01,
            zero_gradient_fraction: 0.0,
        }
    }
}

impl MaskingParams {
    /// Validates: `samples >= 1`, `steps >= 1`, `steps_multiplier >= 2`, `noise_draws >= 1`,
    /// `large_eps > 0` when given, `0 <= tolerance < 1`, `0 <= zero_gradient_fraction < 1`.
    pub fn check(self) -> Result<ValidMaskingParams> {
        if self.samples == 0 {
            return Err(Error::param("masking-samples", "must be at least 1"));
        }
        if self.steps == 0 {
            return Err(Error::param("masking-steps", "must be at least 1"));
        }
        if self.steps_multiplier < 2 {
            return Err(Error::param(
                "steps-multiplier",
                format!(
                    "{} must be at least 2 to compare with more steps",
                    self.steps_multiplier
                ),
            ));
        }
        if self.noise_draws == 0 {
            return Err(Error::param("noise-draws", "must be at least 1"));
        }
        if let Some(e) = self.large_eps {
            if !(e.is_finite() && e > 0.0) {
                return Err(Error::param("large-eps", format!("{e} must be finite and > 0")));
            }
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return Err(Error::param(
                "tolerance",
                format!("{} must be in [0, 1)", self.tolerance),
            ));
        }
        if !(0.0..1.0).contains(&self.zero_gradient_fraction) {
            return Err(Error::param(
                "zero-gradient-fraction",
                format!("{} must be in [0, 1)", self.zero_gradient_fraction),
            ));
        }
        Ok(ValidMaskingParams(self))
    }
}

/// Validated masking options.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidMaskingParams(MaskingParams);

impl ValidMaskingParams {
    /// The options.
    pub fn get(&self) -> &MaskingParams {
        &self.0
    }

    /// Samples the checks use.
    pub fn samples(&self) -> usize {
        self.0.samples
    }

    /// The tolerance.
    pub fn tolerance(&self) -> f64 {
        self.0.tolerance
    }
}

/// Input gradients at the clean points.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradientCheck {
    /// Samples whose gradient was taken.
    pub samples: usize,
    /// Samples whose gradient is exactly zero everywhere.
    pub zero: usize,
    /// Samples whose gradient holds a NaN or an infinity.
    pub nonfinite: usize,
}

/// PGD with more steps against PGD with fewer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepsCheck {
    /// Steps of the baseline.
    pub steps: usize,
    /// Steps of the longer attack.
    pub more_steps: usize,
    /// Robust accuracy under the baseline.
    pub robust: Accuracy,
    /// Robust accuracy under the longer attack (should not be higher).
    pub robust_more_steps: Accuracy,
}

/// One attack's robust accuracy on the checks' samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SubsetAccuracy {
    /// The attack's name.
    pub attack: String,
    /// Its robust accuracy on the checks' samples.
    pub robust: Accuracy,
}

/// Uniform noise in the eps ball against the attacks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseCheck {
    /// Noise draws per sample.
    pub draws: usize,
    /// Accuracy under noise (correct on the clean point and under every draw).
    pub robust_noise: Accuracy,
    /// Each attack's robust accuracy on the same samples (should not be higher).
    pub attacks: Vec<SubsetAccuracy>,
}

/// PGD at an eps that reaches every image.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LargeEpsCheck {
    /// The norm.
    pub norm: Norm,
    /// The eps.
    pub eps: f64,
    /// Clean accuracy on the checks' samples.
    pub clean: Accuracy,
    /// Robust accuracy at this eps (should be about 0).
    pub robust: Accuracy,
    /// Samples on which the attack reports success (a wrong prediction), over all samples.
    pub successes: Accuracy,
}

/// AutoAttack's checks of the model's outputs, on the first batch of the checks' samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutputCheck {
    /// Samples checked.
    pub samples: usize,
    /// Samples whose outputs differ between two clean passes in eval mode.
    pub randomized: usize,
    /// Whether every output row lies in `[0, 1]` and sums to 1 (probabilities, not logits).
    pub probabilities: bool,
    /// The model's number of classes.
    pub classes: usize,
}

/// What the masking checks measured; [`MaskingChecks::flags`] turns it into flags.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaskingChecks {
    /// Samples the checks ran on (the first ones of the data set).
    pub samples: usize,
    /// The tolerance the flags use.
    pub tolerance: f64,
    /// The zero-gradient fraction above which the flag is raised.
    pub zero_gradient_fraction: f64,
    /// Input gradients.
    pub gradient: GradientCheck,
    /// More PGD steps.
    pub steps: StepsCheck,
    /// Uniform noise.
    pub noise: NoiseCheck,
    /// Large eps.
    pub large_eps: LargeEpsCheck,
    /// Randomness, probabilities and classes of the model's outputs.
    #[serde(default)]
    pub outputs: OutputCheck,
    /// Work and time the checks took.
    pub cost: CostSummary,
}

/// A symptom of gradient masking. Each carries the numbers behind it;
/// [`MaskingFlag::message`] explains it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaskingFlag {
    /// Some input gradients are exactly zero.
    ZeroGradient {
        /// Samples whose gradient is zero.
        count: usize,
        /// Samples checked.
        samples: usize,
    },
    /// Some input gradients hold NaN or infinity.
    NonFiniteGradient {
        /// Samples whose gradient is not finite.
        count: usize,
        /// Samples checked.
        samples: usize,
    },
    /// PGD with more steps leaves more samples robust.
    MoreStepsRaiseAccuracy {
        /// Steps of the baseline.
        steps: usize,
        /// Steps of the longer attack.
        more_steps: usize,
        /// Robust accuracy with `steps`.
        accuracy: f64,
        /// Robust accuracy with `more_steps`.
        accuracy_more_steps: f64,
    },
    /// An eps sweep in which robust accuracy rises with eps.
    LargerEpsRaisesAccuracy {
        /// The swept attack.
        attack: String,
        /// The smaller eps.
        eps: f64,
        /// Robust accuracy there.
        accuracy: f64,
        /// The larger eps.
        larger_eps: f64,
        /// Robust accuracy there (higher).
        accuracy_larger_eps: f64,
    },
    /// Uniform noise in the eps ball breaks more samples than the attack.
    NoiseBeatsAttack {
        /// The attack.
        attack: String,
        /// Robust accuracy under the attack.
        accuracy_attack: f64,
        /// Accuracy under noise (lower).
        accuracy_noise: f64,
    },
    /// An attack that can reach any image leaves samples robust.
    UnboundedAttackFails {
        /// The norm.
        norm: Norm,
        /// The eps.
        eps: f64,
        /// Robust accuracy left (should be about 0).
        robust_accuracy: f64,
    },
    /// An attack reports no success at all although the model misclassifies clean samples.
    NoSuccessDespiteErrors {
        /// The norm.
        norm: Norm,
        /// The eps.
        eps: f64,
        /// Clean accuracy (below 1).
        clean_accuracy: f64,
    },
    /// Two clean passes over the same inputs disagree.
    RandomizedModel {
        /// Samples whose outputs differed.
        count: usize,
        /// Samples checked.
        samples: usize,
    },
    /// The model outputs probabilities, not logits.
    SoftmaxOutputs,
    /// The score-based Square attack leaves fewer samples robust than a white-box attack.
    SquareBeatsWhiteBox {
        /// The Square attack's name.
        square: String,
        /// Its robust accuracy.
        accuracy_square: f64,
        /// The strongest white-box attack.
        attack: String,
        /// Its robust accuracy (higher).
        accuracy_attack: f64,
    },
    /// Fewer than 4 classes: DLR is undefined.
    FewClasses {
        /// The model's classes.
        classes: usize,
    },
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

impl MaskingFlag {
    /// A short stable name, e.g. `zero_gradient` (the `kind` of the JSON report).
    pub fn code(&self) -> &'static str {
        match self {
            MaskingFlag::ZeroGradient { .. } => "zero_gradient",
            MaskingFlag::NonFiniteGradient { .. } => "non_finite_gradient",
            MaskingFlag::MoreStepsRaiseAccuracy { .. } => "more_steps_raise_accuracy",
            MaskingFlag::LargerEpsRaisesAccuracy { .. } => "larger_eps_raises_accuracy",
            MaskingFlag::NoiseBeatsAttack { .. } => "noise_beats_attack",
            MaskingFlag::UnboundedAttackFails { .. } => "unbounded_attack_fails",
            MaskingFlag::NoSuccessDespiteErrors { .. } => "no_success_despite_errors",
            MaskingFlag::RandomizedModel { .. } => "randomized_model",
            MaskingFlag::SoftmaxOutputs => "softmax_outputs",
            MaskingFlag::SquareBeatsWhiteBox { .. } => "square_beats_white_box",
            MaskingFlag::FewClasses { .. } => "few_classes",
        }
    }

    /// What was seen and why it matters, in one or two sentences.
    pub fn message(&self) -> String {
        match self {
            MaskingFlag::ZeroGradient { count, samples } => format!(
                "{count} of {samples} samples ({}) have an input gradient that is exactly zero: \
                 gradient attacks cannot move them, so robust accuracy may be overestimated \
                 (non-differentiable input processing or a saturated softmax)",
                pct(*count as f64 / (*samples).max(1) as f64)
            ),
            MaskingFlag::NonFiniteGradient { count, samples } => format!(
                "{count} of {samples} samples ({}) have NaN or infinite input gradients: gradient \
                 attacks are unreliable on this model",
                pct(*count as f64 / (*samples).max(1) as f64)
            ),
            MaskingFlag::MoreStepsRaiseAccuracy {
                steps,
                more_steps,
                accuracy,
                accuracy_more_steps,
            } => format!(
                "robust accuracy rises from {} with PGD-{steps} to {} with PGD-{more_steps}: a \
                 stronger attack should never do worse",
                pct(*accuracy),
                pct(*accuracy_more_steps)
            ),
            MaskingFlag::LargerEpsRaisesAccuracy {
                attack,
                eps,
                accuracy,
                larger_eps,
                accuracy_larger_eps,
            } => format!(
                "{attack}: robust accuracy rises from {} at eps {} to {} at eps {}: a larger \
                 budget should never help the model",
                pct(*accuracy),
                fmt_eps(*eps),
                pct(*accuracy_larger_eps),
                fmt_eps(*larger_eps)
            ),
            MaskingFlag::NoiseBeatsAttack {
                attack,
                accuracy_attack,
                accuracy_noise,
            } => format!(
                "uniform noise in the eps ball leaves {} accuracy but {attack} leaves {}: random \
                 noise should not beat a white-box attack",
                pct(*accuracy_noise),
                pct(*accuracy_attack)
            ),
            MaskingFlag::UnboundedAttackFails {
                norm,
                eps,
                robust_accuracy,
            } => format!(
                "PGD at {} eps {} (which reaches any image) leaves {} robust accuracy; it should \
                 be 0%",
                norm.name(),
                fmt_eps(*eps),
                pct(*robust_accuracy)
            ),
            MaskingFlag::NoSuccessDespiteErrors {
                norm,
                eps,
                clean_accuracy,
            } => format!(
                "PGD at {} eps {} reports 0% success although clean accuracy is only {}: the \
                 attack does not even register the model's own mistakes (a stateful or random \
                 model?)",
                norm.name(),
                fmt_eps(*eps),
                pct(*clean_accuracy)
            ),
            MaskingFlag::RandomizedModel { count, samples } => format!(
                "{count} of {samples} samples get different outputs from two clean passes: the \
                 model is randomized, so gradient attacks need expectation over transformation \
                 (use autoattack-rand)"
            ),
            MaskingFlag::SoftmaxOutputs => "the model's outputs are probabilities (rows in [0, 1] \
                 summing to 1), not logits: cross-entropy attacks on them saturate; the DLR \
                 and margin losses of AutoAttack are the ones to trust"
                .to_string(),
            MaskingFlag::SquareBeatsWhiteBox {
                square,
                accuracy_square,
                attack,
                accuracy_attack,
            } => format!(
                "the black-box {square} leaves {} robust accuracy but the white-box {attack} \
                 leaves {}: gradients that mislead the attacks are a sign of masking",
                pct(*accuracy_square),
                pct(*accuracy_attack)
            ),
            MaskingFlag::FewClasses { classes } => format!(
                "the model has {classes} classes: the DLR loss needs 3 (untargeted) or 4 \
                 (targeted), so the DLR-based attacks (apgd-dlr, apgd-t) ran with the \
                 margin or targeted cross-entropy loss instead"
            ),
        }
    }
}

impl std::fmt::Display for MaskingFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl MaskingChecks {
    /// The flags these measurements raise.
    pub fn flags(&self) -> Vec<MaskingFlag> {
        let tol = self.tolerance;
        let mut flags = Vec::new();
        let g = &self.gradient;
        if g.zero > 0 && g.zero as f64 / g.samples.max(1) as f64 > self.zero_gradient_fraction {
            flags.push(MaskingFlag::ZeroGradient {
                count: g.zero,
                samples: g.samples,
            });
        }
        if g.nonfinite > 0 {
            flags.push(MaskingFlag::NonFiniteGradient {
                count: g.nonfinite,
                samples: g.samples,
            });
        }
        let s = &self.steps;
        if s.robust_more_steps.accuracy > s.robust.accuracy + tol {
            flags.push(MaskingFlag::MoreStepsRaiseAccuracy {
                steps: s.steps,
                more_steps: s.more_steps,
                accuracy: s.robust.accuracy,
                accuracy_more_steps: s.robust_more_steps.accuracy,
            });
        }
        for a in &self.noise.attacks {
            if self.noise.robust_noise.accuracy < a.robust.accuracy - tol {
                flags.push(MaskingFlag::NoiseBeatsAttack {
                    attack: a.attack.clone(),
                    accuracy_attack: a.robust.accuracy,
                    accuracy_noise: self.noise.robust_noise.accuracy,
                });
            }
        }
        let l = &self.large_eps;
        if l.robust.accuracy > tol {
            flags.push(MaskingFlag::UnboundedAttackFails {
                norm: l.norm,
                eps: l.eps,
                robust_accuracy: l.robust.accuracy,
            });
        }
        if l.successes.correct == 0 && l.clean.accuracy < 1.0 {
            flags.push(MaskingFlag::NoSuccessDespiteErrors {
                norm: l.norm,
                eps: l.eps,
                clean_accuracy: l.clean.accuracy,
            });
        }
        let o = &self.outputs;
        if o.randomized > 0 {
            flags.push(MaskingFlag::RandomizedModel {
                count: o.randomized,
                samples: o.samples,
            });
        }
        if o.probabilities {
            flags.push(MaskingFlag::SoftmaxOutputs);
        }
        if o.classes > 0 && o.classes < 4 {
            flags.push(MaskingFlag::FewClasses { classes: o.classes });
        }
        // Square against the strongest white-box attack, on the same samples.
        let (square, white): (Vec<&SubsetAccuracy>, Vec<&SubsetAccuracy>) =
            self.noise.attacks.iter().partition(|a| is_score_based(&a.attack));
        if let Some(wb) = white
            .iter()
            .min_by(|a, b| a.robust.accuracy.total_cmp(&b.robust.accuracy))
        {
            for sq in square {
                if sq.robust.accuracy < wb.robust.accuracy - tol {
                    flags.push(MaskingFlag::SquareBeatsWhiteBox {
                        square: sq.attack.clone(),
                        accuracy_square: sq.robust.accuracy,
                        attack: wb.attack.clone(),
                        accuracy_attack: wb.robust.accuracy,
                    });
                }
            }
        }
        flags
    }
}

/// Whether an attack, named as in the attack list, is score-based (needs no gradient).
fn is_score_based(name: &str) -> bool {
    name.trim().to_ascii_lowercase().starts_with("square")
}

/// AutoAttack's output checks on one batch: two clean passes (randomness), the range and row
/// sums of the outputs (probabilities), and the number of classes.
fn check_outputs(model: &dyn Classifier, x: &candle_core::Tensor, cost: &mut Cost) -> Result<OutputCheck> {
    let n = x.dim(0)?;
    let a = model.forward_opts(&x.detach(), crate::model_ops::EVAL)?;
    let b = model.forward_opts(&x.detach(), crate::model_ops::EVAL)?;
    cost.forward += 2 * n as u64;
    let differ = (&a - &b)?
        .abs()?
        .max(candle_core::D::Minus1)?
        .to_vec1::<f32>()?
        .iter()
        .filter(|d| **d > 1e-6)
        .count();
    let rows = a.to_vec2::<f32>()?;
    let probabilities = !rows.is_empty()
        && rows
            .iter()
            .all(|r| r.iter().all(|v| (0.0..=1.0).contains(v)) && (r.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    Ok(OutputCheck {
        samples: n,
        randomized: differ,
        probabilities,
        classes: model.num_classes(),
    })
}

/// Flags every point of an eps sweep whose robust accuracy exceeds, by more than `tolerance`,
/// the accuracy at some smaller eps (compared with the lowest accuracy so far, so a slow
/// creep upwards is caught too).
pub fn sweep_flags(sweep: &Sweep, tolerance: f64) -> Vec<MaskingFlag> {
    let mut flags = Vec::new();
    let mut lowest: Option<(f64, f64)> = None;
    for p in &sweep.points {
        if let Some((eps, acc)) = lowest {
            if p.robust.accuracy > acc + tolerance {
                flags.push(MaskingFlag::LargerEpsRaisesAccuracy {
                    attack: sweep.attack.clone(),
                    eps,
                    accuracy: acc,
                    larger_eps: p.eps,
                    accuracy_larger_eps: p.robust.accuracy,
                });
            }
        }
        match lowest {
            Some((_, acc)) if p.robust.accuracy >= acc => {}
            _ => lowest = Some((p.eps, p.robust.accuracy)),
        }
    }
    flags
}

/// A PGD attack on the threat model with `steps` steps and Madry's step size `2.5 eps / steps`.
fn pgd(norm: Norm, eps: f64, steps: usize) -> Result<temper_attacks::Pgd> {
    Ok(PgdParams {
        norm,
        eps,
        alpha: (2.5 * eps / steps as f64).max(1e-12),
        steps,
        restarts: 1,
        random_start: true,
        loss: LossKind::CrossEntropy,
        early_stop: false,
    }
    .check()?)
}

/// Runs every check on the first `params.samples()` samples of `data`. `attacks` holds each
/// attack's robust accuracy on those same samples, measured by the evaluation.
pub(crate) fn run_checks(
    model: &dyn Classifier,
    data: &Dataset,
    threat: Threat,
    attacks: &[(String, Accuracy)],
    params: &ValidMaskingParams,
    batch_size: usize,
    device: &Device,
) -> Result<MaskingChecks> {
    let p = params.get();
    let start = Instant::now();
    let m = p.samples.min(data.len());
    let mut rng = temper_core::seed::rng("eval/masking");
    let mut cost = Cost::default();
    let [c, h, w] = data.shape();
    let large_eps = p.large_eps.unwrap_or(match threat.norm {
        Norm::Linf => 1.0,
        Norm::L2 => ((c * h * w) as f64).sqrt(),
        Norm::L1 => (c * h * w) as f64,
    });
    let more = p.steps * p.steps_multiplier;
    let (few_pgd, more_pgd, large_pgd) = (
        pgd(threat.norm, threat.eps, p.steps)?,
        pgd(threat.norm, threat.eps, more)?,
        pgd(threat.norm, large_eps, p.steps)?,
    );
    let mut gradient = GradientCheck {
        samples: 0,
        zero: 0,
        nonfinite: 0,
    };
    let (mut clean, mut few, mut many, mut noise, mut large, mut large_succ) = (0, 0, 0, 0, 0, 0);
    let mut outputs = OutputCheck::default();

    let indices: Vec<usize> = (0..m).collect();
    for item in data.eval_batches(&indices, batch_size, device) {
        let (chunk, batch) = item?;
        let (x, y) = (&batch.images, batch.labels.to_dtype(DType::U32)?);
        let labels = y.to_vec1::<u32>()?;
        if outputs.samples == 0 {
            outputs = check_outputs(model, x, &mut cost)?;
        }
        let pred = predict(model, x, &mut cost)?;
        let ok: Vec<usize> = (0..chunk.len()).filter(|&i| pred[i] == labels[i]).collect();
        clean += ok.len();

        // Input gradients at every sample, misclassified ones included: a zero gradient is a
        // symptom wherever it occurs.
        let g = input_gradient(model, x, &y, &mut cost)?
            .flatten_from(1)?
            .to_vec2::<f32>()?;
        gradient.samples += g.len();
        gradient.zero += g.iter().filter(|row| row.iter().all(|v| *v == 0.0)).count();
        gradient.nonfinite += g.iter().filter(|row| row.iter().any(|v| !v.is_finite())).count();

        if !ok.is_empty() {
            let (xs, ys) = (select(x, &ok)?, select(&y, &ok)?);
            // Both step counts start from the same random point, so only the steps differ.
            let mut twin = rng.clone();
            let a = few_pgd
                .perturb(model, &xs, &ys, Goal::Untargeted, &mut rng)
                .map_err(Error::attack("masking PGD"))?;
            let b = more_pgd
                .perturb(model, &xs, &ys, Goal::Untargeted, &mut twin)
                .map_err(Error::attack("masking PGD"))?;
            cost += a.cost;
            cost += b.cost;
            few += a.success.iter().filter(|s| !**s).count();
            many += b.success.iter().filter(|s| !**s).count();

            let mut survived = vec![true; ok.len()];
            for _ in 0..p.noise_draws {
                let delta = threat.norm.random_start(&xs, threat.eps, &mut rng)?;
                let noisy = (&xs + delta)?.clamp(0f32, 1f32)?;
                let np = predict(model, &noisy, &mut cost)?;
                for (i, s) in survived.iter_mut().enumerate() {
                    *s &= np[i] == labels[ok[i]];
                }
            }
            noise += survived.iter().filter(|s| **s).count();
        }

        // Every sample, so that a clean mistake must show up as a success.
        let l = large_pgd
            .perturb(model, x, &y, Goal::Untargeted, &mut rng)
            .map_err(Error::attack("masking PGD (large eps)"))?;
        cost += l.cost;
        large_succ += l.success.iter().filter(|s| **s).count();
        large += ok.iter().filter(|&&i| !l.success[i]).count();
    }
    let sub = |k: usize| Accuracy::new(k, m);
    Ok(MaskingChecks {
        samples: m,
        tolerance: p.tolerance,
        zero_gradient_fraction: p.zero_gradient_fraction,
        gradient,
        steps: StepsCheck {
            steps: p.steps,
            more_steps: more,
            robust: sub(few),
            robust_more_steps: sub(many),
        },
        noise: NoiseCheck {
            draws: p.noise_draws,
            robust_noise: sub(noise),
            attacks: attacks
                .iter()
                .map(|(name, acc)| SubsetAccuracy {
                    attack: name.clone(),
                    robust: *acc,
                })
                .collect(),
        },
        large_eps: LargeEpsCheck {
            norm: threat.norm,
            eps: large_eps,
            clean: sub(clean),
            robust: sub(large),
            successes: sub(large_succ),
        },
        outputs,
        cost: CostSummary::new(cost, m, start.elapsed().as_secs_f64()),
    })
}
