//! Robust accuracy against eps, for any attack spec.

use crate::evaluate::{evaluate, evaluate_with, AdversarialBatch, EvalParams};
use crate::metrics::{Accuracy, CostSummary};
use crate::model_ops::check_fit;
use crate::threat::Threat;
use crate::{Error, Result};
use candle_core::Device;
use std::time::Instant;
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_attacks::{Attack, Cost, Norm};
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
/// Every point is [`crate::evaluate`]'s robust accuracy at that eps (the same batches, the
/// same `eval/<name>` random stream, misclassified samples not attacked), so a point equals
/// what `temper eval` or `temper attack` reports at that budget. A bounded attack (FGSM, PGD)
/// is run once per eps on every clean-correct sample. A minimum-norm attack (Carlini-Wagner)
/// is run once, and its adversarial examples are counted at each eps they fit in, measured in
/// `settings.norm`.
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
    let eval_params = |eps: f64| {
        EvalParams {
            batch_size: params.batch_size,
            masking: None,
            ..EvalParams::new(norm, eps)
        }
        .check()
    };

    let mut cost = Cost::default();
    let mut clean = Accuracy::new(0, n);
    let mut robust = vec![0usize; params.eps.len()];
    if min_norm {
        // One run; each sample's example is then counted at every eps it fits in.
        let largest = params.eps[params.eps.len() - 1];
        let mut sizes: Vec<Option<(f32, f32, f32)>> = vec![None; n];
        let attack = spec.build(settings)?;
        let named = [(spec.text.clone(), attack)];
        let mut sink = |b: AdversarialBatch<'_>| -> Result<()> {
            for (r, &i) in b.indices.iter().enumerate() {
                if b.success[r] {
                    sizes[i] = Some((b.linf[r], b.l2[r], b.l1[r]));
                }
            }
            Ok(())
        };
        let e = evaluate_with(model, data, &named, &eval_params(largest)?, device, &mut sink)?;
        clean = e.clean.accuracy;
        cost += e.cost.passes();
        for (t, &eps) in params.eps.iter().enumerate() {
            let threat = Threat { norm, eps };
            let broken = sizes
                .iter()
                .filter(|s| s.is_some_and(|(linf, l2, l1)| threat.contains(linf, l2, l1)))
                .count();
            robust[t] = clean.correct - broken;
        }
    } else {
        for (t, attack) in attacks.into_iter().enumerate() {
            let named = [(spec.text.clone(), attack)];
            let e = evaluate(model, data, &named, &eval_params(params.eps[t])?, device)?;
            clean = e.clean.accuracy;
            cost += e.cost.passes();
            robust[t] = e.attacks[0].robust.correct;
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
