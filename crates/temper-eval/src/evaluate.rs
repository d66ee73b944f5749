//! Clean accuracy, robust accuracy per attack and the per-sample worst case over a list of
//! attacks.

use crate::masking::{self, MaskingChecks, MaskingParams, ValidMaskingParams};
use crate::metrics::{Accuracy, ConfusionMatrix, CostSummary, NormAcc, NormStats};
use crate::model_ops::{check_fit, class_names, predict, select};
use crate::resume::{AttackRecord, Outcome, Resume, Setup};
use crate::threat::Threat;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;
use temper_attacks::{Attack, Cost, Goal, Norm};
use temper_core::seed::RngState;
use temper_core::Classifier;
use temper_data::Dataset;

/// An attack under the name the report shows for it (usually its spec, `pgd-20`).
pub type NamedAttack = (String, Box<dyn Attack>);

/// Unchecked evaluation options; [`EvalParams::check`] makes the [`ValidEvalParams`] that
/// [`evaluate`] takes.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalParams {
    /// Images per batch.
    pub batch_size: usize,
    /// The threat model: an attack's success counts only inside this ball.
    pub threat: Threat,
    /// Gradient-masking checks to run, or `None` to skip them.
    pub masking: Option<MaskingParams>,
    /// A state file recording every finished attack on every batch, written atomically after
    /// each; an evaluation given a file that exists continues from it (see [`evaluate`]).
    pub state: Option<PathBuf>,
    /// AutoAttack's cascade: each attack runs only on the samples the attacks before it left
    /// robust, and an attack's robust accuracy is the accuracy after the cascade through it
    /// (the reference's "robust accuracy after X"). Otherwise (the default) each attack runs
    /// on every clean-correct sample and reports its own robust accuracy; the worst case is
    /// the same either way, the cascade costs less.
    pub cascade: bool,
}

impl EvalParams {
    /// Batches of 250, the given threat model, the default masking checks, no state file.
    pub fn new(norm: Norm, eps: f64) -> Self {
        EvalParams {
            batch_size: 250,
            threat: Threat { norm, eps },
            masking: Some(MaskingParams::default()),
            state: None,
            cascade: false,
        }
    }

    /// Validates: `batch_size >= 1`, `eps` finite and `>= 0`, and the masking options.
    pub fn check(self) -> Result<ValidEvalParams> {
        if self.batch_size == 0 {
            return Err(Error::param("batch-size", "must be at least 1"));
        }
        let threat = Threat::new(self.threat.norm, self.threat.eps)?;
        let masking = self.masking.map(MaskingParams::check).transpose()?;
        Ok(ValidEvalParams {
            batch_size: self.batch_size,
            threat,
            masking,
            state: self.state,
            cascade: self.cascade,
        })
    }
}

/// Validated evaluation options.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvalParams {
    batch_size: usize,
    threat: Threat,
    masking: Option<ValidMaskingParams>,
    state: Option<PathBuf>,
    cascade: bool,
}

impl ValidEvalParams {
    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The threat model.
    pub fn threat(&self) -> Threat {
        self.threat
    }

    /// The masking checks, if any.
    pub fn masking(&self) -> Option<&ValidMaskingParams> {
        self.masking.as_ref()
    }

    /// The state file, if any.
    pub fn state(&self) -> Option<&Path> {
        self.state.as_deref()
    }

    /// Whether the attacks run as AutoAttack's cascade (see [`EvalParams::cascade`]).
    pub fn cascade(&self) -> bool {
        self.cascade
    }
}

/// Accuracy on clean inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CleanResult {
    /// Over every sample.
    pub accuracy: Accuracy,
    /// Per true class, indexed by label.
    pub per_class: Vec<Accuracy>,
    /// `confusion.counts[true][predicted]`.
    pub confusion: ConfusionMatrix,
}

/// What the AutoAttack-style cascade did with one attack.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CascadeStep {
    /// Samples this attack was run on: those still classified correctly after the attacks
    /// before it.
    pub attacked: usize,
    /// Of those, the samples it broke.
    pub broken: usize,
    /// Passes spent on them.
    pub forward: u64,
    /// Backward passes spent on them.
    pub backward: u64,
    /// Of the forward passes, black-box score queries (Square).
    #[serde(default)]
    pub queries: u64,
}

/// One attack's results.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttackResult {
    /// The name given in the attack list, e.g. `pgd-20`.
    pub name: String,
    /// The attack's own description with its hyper-parameters.
    pub description: String,
    /// The attack's norm.
    pub norm: Norm,
    /// The attack's budget, `None` for minimum-norm attacks (Carlini-Wagner).
    pub eps: Option<f64>,
    /// Robust accuracy under this attack alone: correct on the clean point and not broken
    /// inside the threat model, over every sample.
    pub robust: Accuracy,
    /// Per true class.
    pub per_class: Vec<Accuracy>,
    /// Samples broken over samples attacked (the clean-correct ones).
    pub success_rate: f64,
    /// Successes thrown away because the adversarial example lay outside the threat model.
    pub outside_threat: usize,
    /// Perturbation sizes over every attacked sample.
    pub perturbation: NormStats,
    /// Perturbation sizes over the adversarial examples that count (broken samples).
    pub perturbation_adversarial: NormStats,
    /// Work and time for this attack on every clean-correct sample.
    pub cost: CostSummary,
    /// This attack's step of the worst-case cascade.
    pub cascade: CascadeStep,
    /// What the attack changed on its own, e.g. a DLR loss undefined for this model
    /// replaced by a defined one.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The per-sample worst case over the attack list.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorstCase {
    /// Correct on the clean point and not broken by any attack.
    pub accuracy: Accuracy,
    /// Per true class.
    pub per_class: Vec<Accuracy>,
    /// Predictions under the worst case: the adversarial prediction of the attack that broke
    /// a sample, the clean prediction otherwise.
    pub confusion: ConfusionMatrix,
    /// Passes the cascade needed (each attack on the survivors of the ones before it only).
    pub forward: u64,
    /// Backward passes the cascade needed.
    pub backward: u64,
    /// Of the forward passes, black-box score queries.
    #[serde(default)]
    pub queries: u64,
}

/// Everything [`evaluate`] measures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Samples evaluated.
    pub samples: usize,
    /// The threat model of every robust accuracy.
    pub threat: Threat,
    /// Class names, indexed by label (the model's extra outputs, if any, by number).
    pub classes: Vec<String>,
    /// Clean accuracy.
    pub clean: CleanResult,
    /// One entry per attack, in the order given.
    pub attacks: Vec<AttackResult>,
    /// The attacks ran as AutoAttack's cascade: each only on the samples the ones before it
    /// left robust, each entry's robust accuracy being the accuracy after it.
    #[serde(default)]
    pub cascade: bool,
    /// The worst case over all attacks, `None` when the list is empty.
    pub worst_case: Option<WorstCase>,
    /// Gradient-masking checks, `None` when they were not asked for.
    pub masking: Option<MaskingChecks>,
    /// Everything together: clean pass, attacks and checks.
    pub cost: CostSummary,
}

/// Per-attack running totals.
#[derive(Default)]
struct AttackAcc {
    cost: Cost,
    seconds: f64,
    attacked: usize,
    broken: usize,
    outside: usize,
    norms: NormAcc,
    norms_adv: NormAcc,
    cascade: CascadeStep,
    notes: Vec<String>,
}

/// One attack's adversarial examples on one batch, as [`evaluate_with`] counts them.
pub struct AdversarialBatch<'a> {
    /// The attack's position in the list.
    pub attack: usize,
    /// The attack's name in the list.
    pub name: &'a str,
    /// The data set indices of the batch's rows.
    pub indices: &'a [usize],
    /// The true labels of the rows.
    pub labels: &'a [u32],
    /// Per row: the attack broke the sample inside the threat model.
    pub broken: &'a [bool],
    /// Per row: the attack reached its goal, inside the threat model or not (false where
    /// the sample was not attacked).
    pub success: &'a [bool],
    /// Per row: `‖adv - x‖∞` of the attack's example (0 where not attacked).
    pub linf: &'a [f32],
    /// Per row: `‖adv - x‖₂` of the attack's example (0 where not attacked).
    pub l2: &'a [f32],
    /// Per row: `‖adv - x‖₁` of the attack's example (0 where not attacked).
    pub l1: &'a [f32],
    /// The images that count, `(rows, C, H, W)`: the attack's adversarial example where it lies
    /// inside the threat model, the clean image where it does not and where the model was
    /// already wrong (misclassified samples are not attacked). Replaying these on another
    /// model is a transfer attack within the same threat model.
    pub images: Tensor,
}

/// What [`evaluate_with`] hands each batch's adversarial examples to.
pub type AdversarialSink<'s> = dyn FnMut(AdversarialBatch<'_>) -> Result<()> + 's;

/// One attack's work on the attacked rows of one batch.
struct Ran {
    outcomes: Vec<Outcome>,
    cost: Cost,
    seconds: f64,
    notes: Vec<String>,
    /// The attacked rows' adversarial examples.
    adv: Tensor,
}

/// Runs `attack` on rows `rows` of the batch.
fn run_on(
    model: &dyn Classifier,
    name: &str,
    attack: &dyn Attack,
    (x, y): (&Tensor, &Tensor),
    rows: &[usize],
    threat: &Threat,
    rng: &mut temper_core::seed::Rng,
) -> Result<Ran> {
    let start = Instant::now();
    let (xs, ys) = (select(x, rows)?, select(y, rows)?);
    let out = attack
        .perturb(model, &xs, &ys, Goal::Untargeted, rng)
        .map_err(Error::attack(name))?;
    let outcomes = (0..rows.len())
        .map(|i| {
            let inside = threat.contains(out.linf[i], out.l2[i], out.l1[i]);
            Outcome {
                broken: out.success[i] && inside,
                outside: out.success[i] && !inside,
                inside,
                pred: out.pred[i],
                linf: out.linf[i],
                l2: out.l2[i],
                l1: out.l1[i],
            }
        })
        .collect();
    Ok(Ran {
        outcomes,
        cost: out.cost,
        seconds: start.elapsed().as_secs_f64(),
        notes: out.notes,
        adv: out.adv,
    })
}

/// A recorded run, as [`run_on`] would have returned it; `x` gives the shape and device of
/// the adversarial rows (the clean rows when the record holds no images).
fn replay(rec: &AttackRecord, x: &Tensor, rows: &[usize], path: &Path) -> Result<Ran> {
    if rec.outcomes.len() != rows.len() {
        return Err(Error::BadState {
            path: path.to_path_buf(),
            reason: format!(
                "a recorded attack covers {} rows where the batch has {} to attack",
                rec.outcomes.len(),
                rows.len()
            ),
        });
    }
    // No row attacked: the adversarial rows are never read (see `scatter_rows`).
    let xs = if rows.is_empty() {
        x.clone()
    } else {
        select(x, rows)?
    };
    let adv = match &rec.images {
        Some(img) if !rows.is_empty() => {
            let flat: Vec<f32> = img.iter().flatten().copied().collect();
            if img.len() != rows.len() || flat.len() != xs.elem_count() {
                return Err(Error::BadState {
                    path: path.to_path_buf(),
                    reason: "a recorded batch's adversarial images do not fit it".into(),
                });
            }
            Tensor::from_vec(flat, xs.shape(), x.device())?
        }
        _ => xs,
    };
    Ok(Ran {
        outcomes: rec.outcomes.clone(),
        cost: rec.cost,
        seconds: rec.seconds,
        notes: rec.notes.clone(),
        adv,
    })
}

/// The batch `x` with rows `rows` replaced by `adv`'s where `keep` says so.
fn scatter_rows(x: &Tensor, rows: &[usize], adv: &Tensor, keep: &[bool]) -> Result<Tensor> {
    if rows.is_empty() {
        return Ok(x.clone());
    }
    let xs = select(x, rows)?;
    let mask: Vec<f32> = keep.iter().map(|&k| f32::from(u8::from(k))).collect();
    let mask = Tensor::from_vec(mask, rows.len(), x.device())?.reshape((rows.len(), 1, 1, 1))?;
    let delta = (adv - &xs)?.broadcast_mul(&mask)?;
    let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let idx = Tensor::from_vec(idx, rows.len(), x.device())?;
    Ok(x.index_add(&idx, &delta, 0)?)
}

/// Evaluates `model` on `data` under `attacks` within `params.threat()`.
///
/// This is Temper's one definition of robust accuracy, shared by `temper attack`,
/// `temper eval`, `temper quant sweep` and the trainer's validation:
/// - a sample counts as robust when the model classifies it correctly and the attack finds no
///   adversarial example *inside the threat model* (an example outside the ball, as a
///   minimum-norm attack such as Carlini-Wagner may return, does not count);
/// - misclassified samples count as non-robust and are never attacked;
/// - each attack draws its random numbers from its own stream, `eval/<name>` of
///   [`temper_core::seed`], over the clean-correct rows of each batch of `params.batch_size()`
///   in data order; so an attack's result does not depend on which other attacks are in the
///   list, and every command that uses this function gives the same number for the same
///   model, data, attack, threat, batch size and seed.
///
/// Each attack runs on every clean-correct sample (unless `params.cascade()`: then only on
/// those the attacks before it left robust, AutoAttack's way). The worst case counts a sample as robust
/// when no attack broke it, which is what the AutoAttack-style cascade (each attack only on
/// the samples the attacks before it left correct) computes; the cascade's steps and cost are
/// reported from the same runs (an attack's cost on a batch is attributed to the cascade in
/// proportion to the samples still alive before it, exact for attacks with a fixed number of
/// steps). The worst case is at most every single attack's robust accuracy by construction.
///
/// With a state file (`params.state`), every finished attack on every batch is recorded, and
/// an evaluation given an existing file replays what it records instead of running it again,
/// restoring each attack's random stream, so an interrupted evaluation continued from its file
/// gives the same numbers as an uninterrupted one (the seconds are those measured when each
/// part ran). A file written for another model, attack list, threat, batch size, seed or data
/// is refused with an error that names it.
pub fn evaluate(
    model: &dyn Classifier,
    data: &Dataset,
    attacks: &[NamedAttack],
    params: &ValidEvalParams,
    device: &Device,
) -> Result<Evaluation> {
    evaluate_inner(model, data, attacks, params, device, None)
}

/// [`evaluate`], also handing every batch's adversarial examples to `sink` (to save them, or
/// to replay them on another model as a transfer attack).
pub fn evaluate_with(
    model: &dyn Classifier,
    data: &Dataset,
    attacks: &[NamedAttack],
    params: &ValidEvalParams,
    device: &Device,
    sink: &mut AdversarialSink<'_>,
) -> Result<Evaluation> {
    evaluate_inner(model, data, attacks, params, device, Some(sink))
}

fn evaluate_inner(
    model: &dyn Classifier,
    data: &Dataset,
    attacks: &[NamedAttack],
    params: &ValidEvalParams,
    device: &Device,
    mut sink: Option<&mut AdversarialSink<'_>>,
) -> Result<Evaluation> {
    check_fit(model, data)?;
    let start = Instant::now();
    let threat = params.threat;
    let k = model.num_classes();
    let n = data.len();
    let mut rngs: Vec<temper_core::seed::Rng> = attacks
        .iter()
        .map(|(name, _)| temper_core::seed::rng(&format!("eval/{name}")))
        .collect();
    let mut clean_cost = Cost::default();
    let mut clean_cm = ConfusionMatrix::new(k);
    let mut worst_cm = ConfusionMatrix::new(k);
    let mut per_attack_cm: Vec<ConfusionMatrix> = attacks.iter().map(|_| ConfusionMatrix::new(k)).collect();
    let mut accs: Vec<AttackAcc> = attacks.iter().map(|_| AttackAcc::default()).collect();
    // Per sample, kept for the masking checks that compare on a subset.
    let mut correct_all = Vec::with_capacity(n);
    let mut broken_all: Vec<Vec<bool>> = attacks.iter().map(|_| Vec::with_capacity(n)).collect();

    let mut resume = match params.state() {
        Some(path) => Some(Resume::open(
            path,
            Setup {
                model: format!(
                    "{} ({} parameters)",
                    model.info().name,
                    model.params().num_trainable()
                ),
                attacks: attacks.iter().map(|(n, a)| (n.clone(), a.name())).collect(),
                threat,
                batch_size: params.batch_size,
                seed: temper_core::seed::seed(),
                images: sink.is_some(),
                cascade: params.cascade,
            },
        )?),
        None => None,
    };

    let indices = data.all_indices();
    for (b, item) in data.eval_batches(&indices, params.batch_size, device).enumerate() {
        let (chunk, batch) = item?;
        let y = batch.labels.to_dtype(DType::U32)?;
        let labels = y.to_vec1::<u32>()?;
        let pred = predict(model, &batch.images, &mut clean_cost)?;
        if let Some(r) = resume.as_mut() {
            r.enter(b, &temper_attacks::fingerprint(&batch.images, &y)?, &pred)?;
        }
        let correct: Vec<bool> = pred.iter().zip(&labels).map(|(p, l)| p == l).collect();
        let rows: Vec<usize> = (0..chunk.len()).filter(|&i| correct[i]).collect();
        let mut outcomes: Vec<Vec<Option<Outcome>>> =
            attacks.iter().map(|_| vec![None; chunk.len()]).collect();
        let mut alive = vec![true; chunk.len()];
        let mut worst_pred = pred.clone();
        for (a, (name, attack)) in attacks.iter().enumerate() {
            // The rows this attack runs on: every clean-correct one, or in the cascade those
            // the attacks before it left.
            let rows: Vec<usize> = if params.cascade {
                rows.iter().copied().filter(|&r| alive[r]).collect()
            } else {
                rows.clone()
            };
            let ran = match resume.as_ref().and_then(|r| r.recorded(b, a).map(|rec| (r, rec))) {
                Some((r, rec)) => {
                    rngs[a] = rec.rng.restore().ok_or_else(|| Error::BadState {
                        path: r.path().to_path_buf(),
                        reason: format!("the random stream recorded for {name} is malformed"),
                    })?;
                    replay(rec, &batch.images, &rows, r.path())?
                }
                None => {
                    let ran = if rows.is_empty() {
                        Ran {
                            outcomes: Vec::new(),
                            cost: Cost::default(),
                            seconds: 0.0,
                            notes: Vec::new(),
                            // Never read: no row to scatter (see `scatter_rows`).
                            adv: batch.images.clone(),
                        }
                    } else {
                        run_on(
                            model,
                            name,
                            attack.as_ref(),
                            (&batch.images, &y),
                            &rows,
                            &threat,
                            &mut rngs[a],
                        )?
                    };
                    if let Some(r) = resume.as_mut() {
                        let images = if sink.is_none() {
                            None
                        } else if rows.is_empty() {
                            Some(Vec::new())
                        } else {
                            Some(ran.adv.flatten_from(1)?.to_vec2::<f32>()?)
                        };
                        r.record(
                            b,
                            a,
                            AttackRecord {
                                outcomes: ran.outcomes.clone(),
                                cost: ran.cost,
                                seconds: ran.seconds,
                                notes: ran.notes.clone(),
                                rng: RngState::of(&rngs[a]),
                                images,
                            },
                        )?;
                    }
                    ran
                }
            };
            let acc = &mut accs[a];
            acc.seconds += ran.seconds;
            acc.cost += ran.cost;
            for note in &ran.notes {
                if !acc.notes.contains(note) {
                    acc.notes.push(note.clone());
                }
            }
            let (outs, cost) = (&ran.outcomes, ran.cost);
            // The cascade: this attack's share of the samples the attacks before it left.
            let step = &mut acc.cascade;
            let still = rows.iter().filter(|&&r| alive[r]).count();
            // (In the cascade every row it ran on was still alive: the whole cost is its share.)
            step.attacked += still;
            if !rows.is_empty() {
                let share = |c: u64| c * still as u64 / rows.len() as u64;
                step.forward += share(cost.forward);
                step.backward += share(cost.backward);
                step.queries += share(cost.queries);
            }
            for (&row, o) in rows.iter().zip(outs) {
                outcomes[a][row] = Some(*o);
                if o.broken && alive[row] {
                    step.broken += 1;
                    alive[row] = false;
                    worst_pred[row] = o.pred;
                }
            }
            if let Some(sink) = sink.as_mut() {
                let keep: Vec<bool> = outs.iter().map(|o| o.inside).collect();
                let images = scatter_rows(&batch.images, &rows, &ran.adv, &keep)?;
                let row = |f: &dyn Fn(&Outcome) -> bool| -> Vec<bool> {
                    outcomes[a].iter().map(|o| o.as_ref().is_some_and(f)).collect()
                };
                let size = |f: &dyn Fn(&Outcome) -> f32| -> Vec<f32> {
                    outcomes[a].iter().map(|o| o.as_ref().map_or(0.0, f)).collect()
                };
                sink(AdversarialBatch {
                    attack: a,
                    name,
                    indices: chunk,
                    labels: &labels,
                    broken: &row(&|o| o.broken),
                    success: &row(&|o| o.broken || o.outside),
                    linf: &size(&|o| o.linf),
                    l2: &size(&|o| o.l2),
                    l1: &size(&|o| o.l1),
                    images,
                })?;
            }
        }
        for i in 0..chunk.len() {
            clean_cm.add(labels[i], pred[i]);
            worst_cm.add(labels[i], worst_pred[i]);
            correct_all.push(correct[i]);
        }
        for (a, acc) in accs.iter_mut().enumerate() {
            for i in 0..chunk.len() {
                let o = outcomes[a][i];
                // In the cascade an attack's entry is the state after it: broken by it or by
                // an attack before it (which it then never ran on).
                let by = if params.cascade {
                    (0..=a).find_map(|e| outcomes[e][i].filter(|o| o.broken))
                } else {
                    o.filter(|o| o.broken)
                };
                broken_all[a].push(by.is_some());
                per_attack_cm[a].add(labels[i], by.map_or(pred[i], |o| o.pred));
                if let Some(o) = o {
                    acc.attacked += 1;
                    acc.norms.add(o.linf, o.l2, o.l1);
                    acc.outside += usize::from(o.outside);
                    if o.broken {
                        acc.broken += 1;
                        acc.norms_adv.add(o.linf, o.l2, o.l1);
                    }
                }
            }
        }
    }

    let results: Vec<AttackResult> = attacks
        .iter()
        .zip(&accs)
        .zip(&per_attack_cm)
        .map(|(((name, attack), acc), cm)| {
            let robust = cm.counts.iter().enumerate().map(|(t, row)| row[t] as usize).sum();
            AttackResult {
                name: name.clone(),
                description: attack.name(),
                norm: attack.norm(),
                eps: attack.eps(),
                robust: Accuracy::new(robust, n),
                per_class: cm.per_class(),
                success_rate: Accuracy::new(acc.broken, acc.attacked).accuracy,
                outside_threat: acc.outside,
                perturbation: acc.norms.stats(),
                perturbation_adversarial: acc.norms_adv.stats(),
                cost: CostSummary::new(acc.cost, acc.attacked, acc.seconds),
                cascade: acc.cascade,
                notes: acc.notes.clone(),
            }
        })
        .collect();
    let worst_case = (!attacks.is_empty()).then(|| WorstCase {
        accuracy: worst_cm.accuracy(),
        per_class: worst_cm.per_class(),
        confusion: worst_cm.clone(),
        forward: accs.iter().map(|a| a.cascade.forward).sum(),
        backward: accs.iter().map(|a| a.cascade.backward).sum(),
        queries: accs.iter().map(|a| a.cascade.queries).sum(),
    });

    let masking = match &params.masking {
        Some(mp) => {
            let m = mp.samples().min(n);
            let subset = |flags: &[bool]| {
                let robust = (0..m).filter(|&i| correct_all[i] && !flags[i]).count();
                Accuracy::new(robust, m)
            };
            let on_subset: Vec<(String, Accuracy)> = attacks
                .iter()
                .zip(&broken_all)
                .map(|((name, _), b)| (name.clone(), subset(b)))
                .collect();
            Some(masking::run_checks(
                model,
                data,
                threat,
                &on_subset,
                mp,
                params.batch_size,
                device,
            )?)
        }
        None => None,
    };

    let mut total = clean_cost;
    for a in &accs {
        total += a.cost;
    }
    if let Some(m) = &masking {
        total += m.cost.passes();
    }
    Ok(Evaluation {
        cascade: params.cascade,
        samples: n,
        threat,
        classes: class_names(data, k),
        clean: CleanResult {
            accuracy: clean_cm.accuracy(),
            per_class: clean_cm.per_class(),
            confusion: clean_cm,
        },
        attacks: results,
        worst_case,
        masking,
        cost: CostSummary::new(total, n, start.elapsed().as_secs_f64()),
    })
}

impl Evaluation {
    /// The gradient-masking flags raised by the checks (none when no check ran).
    pub fn flags(&self) -> Vec<crate::MaskingFlag> {
        self.masking
            .as_ref()
            .map(MaskingChecks::flags)
            .unwrap_or_default()
    }

    /// The result of the attack named `name`.
    pub fn attack(&self, name: &str) -> Option<&AttackResult> {
        self.attacks.iter().find(|a| a.name == name)
    }
}
