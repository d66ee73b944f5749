//! Robust accuracy against eps, for any attack spec.

use crate::metrics::{Accuracy, CostSummary};
use crate::model_ops::{check_fit, predict};
use crate::threat::Threat;
use crate::{Error, Result};
use candle_core::{DType, Device};
use std::time::Instant;
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_attacks::{Attack, Cost, Goal, Norm};
use temper_core::Classifier;
use temper_data::Dataset;

/// Unchecked sweep options; [`SweepParams::check`] validates them.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepParams {
    /// The budgets to evaluate, e.g. from
    /// `temper_attacks::spec::parse_sweep("0:8/255:1/255", "eps-sweep")`.
    pub eps: Vec<f64>,
    /// Images per batch.
    pub batch_size: usize,
}

impl SweepParams {
    /// Validates: at least one eps, each finite and `>= 0`, and `batch_size >= 1`. The
    /// budgets are sorted and duplicates dropped, so the chart reads left to right.
    pub fn check(self) -> Result<ValidSweepParams> {
        if self.eps.is_empty() {
            return Err(Error::param("eps-sweep", "needs at least one eps"));
        }
        if let Some(bad) = self.eps.iter().find(|e| !(e.is_finite() && **e >= 0.0)) {
            return Err(Error::param(
                "eps-sweep",
                format!("eps {bad} must be finite and >= 0"),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::param("batch-size", "must be at least 1"));
        }
        let mut eps = self.eps;
        eps.sort_by(f64::total_cmp);
        eps.dedup();
        Ok(ValidSweepParams {
            eps,
            batch_size: self.batch_size,
        })
    }
}

/// Validated sweep options.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSweepParams {
    eps: Vec<f64>,
    batch_size: usize,
}

impl ValidSweepParams {
    /// The budgets, ascending.
    pub fn eps(&self) -> &[f64] {
        &self.eps
    }
}

/// Robust accuracy at one eps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepPoint {
    /// The budget.
    pub eps: f64,
    /// Robust accuracy within it.
    pub robust: Accuracy,
}

/// Robust accuracy of one attack against eps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sweep {
    /// The attack spec, e.g. `pgd-20`.
    pub attack: String,
    /// The attack's description at the largest eps.
    pub description: String,
    /// The norm eps is measured in.
    pub norm: Norm,
    /// Clean accuracy (the curve's value at eps 0).
    pub clean: Accuracy,
    /// One point per eps, ascending. Each eps is attacked independently on every
    /// clean-correct sample, so a curve that rises is a real observation (see
    /// [`crate::masking::sweep_flags`]), not an artefact of reusing earlier results.
    pub points: Vec<SweepPoint>,
    /// Work and time for the whole sweep.
    pub cost: CostSummary,
}

/// Sweeps `spec`, completed with `settings` at each eps of `params`, over `data`.
///
/// A bounded attack (FGSM, PGD) is run once per eps on every clean-correct sample. A
/// minimum-norm attack (Carlini-Wagner) is run once, and its adversarial examples are
/// counted at each eps they fit in, measured in `settings.norm`.
pub fn sweep(
    model: &dyn Classifier,
    data: &Dataset,
    spec: &AttackSpec,
    settings: &AttackSettings,
    params: &ValidSweepParams,
    device: &Device,
) -> Result<Sweep> {
    check_fit(model, data)?;
    let start = Instant::now();
    let n = data.len();
    let mut rng = temper_core::seed::rng("eval/sweep");
    let mut cost = Cost::default();
    let attacks: Vec<Box<dyn Attack>> = params
        .eps
        .iter()
        .map(|&eps| {
            spec.build(&AttackSettings { eps, ..*settings })
                .map_err(Error::from)
        })
        .collect::<Result<_>>()?;
    let last = attacks
        .last()
        .ok_or_else(|| Error::param("eps-sweep", "needs at least one eps"))?;
    let description = last.name();
    let min_norm = last.eps().is_none();
    let norm = if min_norm { settings.norm } else { last.norm() };

    // The clean pass decides which samples are worth attacking.
    let mut correct = Vec::with_capacity(n);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(params.batch_size) {
        let b = data.batch(chunk, device)?;
        let pred = predict(model, &b.images, &mut cost)?;
        correct.extend(
            chunk
                .iter()
                .zip(pred)
                .filter(|(&i, p)| *p == data.labels()[i])
                .map(|(&i, _)| i),
        );
    }
    let clean = Accuracy::new(correct.len(), n);

    let mut robust = vec![0usize; params.eps.len()];
    let runs: Vec<&Box<dyn Attack>> = if min_norm {
        vec![last]
    } else {
        attacks.iter().collect()
    };
    for (r, attack) in runs.into_iter().enumerate() {
        for chunk in correct.chunks(params.batch_size) {
            let b = data.batch(chunk, device)?;
            let y = b.labels.to_dtype(DType::U32)?;
            let out = attack
                .perturb(model, &b.images, &y, Goal::Untargeted, &mut rng)
                .map_err(Error::attack(&spec.text))?;
            cost += out.cost;
            let targets: Vec<usize> = if min_norm {
                (0..params.eps.len()).collect()
            } else {
                vec![r]
            };
            for t in targets {
                let threat = Threat {
                    norm,
                    eps: params.eps[t],
                };
                robust[t] += (0..chunk.len())
                    .filter(|&i| !(out.success[i] && threat.contains(out.linf[i], out.l2[i])))
                    .count();
            }
        }
    }
    let points = params
        .eps
        .iter()
        .zip(robust)
        .map(|(&eps, r)| SweepPoint {
            eps,
            robust: Accuracy::new(r, n),
        })
        .collect();
    Ok(Sweep {
        attack: spec.text.clone(),
        description,
        norm,
        clean,
        points,
        cost: CostSummary::new(cost, n, start.elapsed().as_secs_f64()),
    })
}
