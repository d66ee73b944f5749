//! AutoAttack (Croce and Hein 2020): a fixed ensemble of parameter-free attacks, each run only
//! on the points the ones before it left unbroken; a point counts as robust only if every
//! attack fails on it (the per-point worst case).
//!
//! Versions, as in the reference's `set_version`:
//! - `standard`: APGD-CE (1 run), APGD-T (9 target classes), FAB-T (9 target classes),
//!   Square (5000 queries).
//! - `plus`: APGD-CE and APGD-DLR with 5 restarts each, untargeted FAB with 5 restarts, Square,
//!   APGD-T, FAB-T.
//! - `rand`: APGD-CE and APGD-DLR with expectation over transformation (20 gradient passes
//!   per step), for randomized defenses.
//! - a custom list of attacks.
//!
//! A long evaluation can be resumed: with a state file, every finished attack on a batch is
//! recorded (which points it broke, and their adversarial pixels), and a rerun skips it.

use crate::apgd::Assembly;
use crate::error::param;
use crate::problem::Problem;
use crate::spec::{AttackSettings, AttackSpec};
use crate::{Attack, AttackOutput, Cost, Error, Goal, LossKind, Norm, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use temper_core::seed::Rng;
use temper_core::{Classifier, Mode, ModeGuard};

/// Which ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoAttackVersion {
    /// APGD-CE, APGD-T, FAB-T, Square.
    Standard,
    /// APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts, Square, APGD-T, FAB-T.
    Plus,
    /// APGD-CE and APGD-DLR with EOT over 20 passes.
    Rand,
}

impl AutoAttackVersion {
    /// The name as users type it after `autoattack-`.
    pub fn name(self) -> &'static str {
        match self {
            AutoAttackVersion::Standard => "standard",
            AutoAttackVersion::Plus => "plus",
            AutoAttackVersion::Rand => "rand",
        }
    }

    /// The component attacks, as specs `AttackSpec::parse` reads.
    pub fn components(self) -> &'static [&'static str] {
        match self {
            AutoAttackVersion::Standard => &["apgd-ce", "apgd-t", "fab-t", "square"],
            AutoAttackVersion::Plus => &["apgd-ce-r5", "apgd-dlr-r5", "fab-r5", "square", "apgd-t", "fab-t"],
            AutoAttackVersion::Rand => &["apgd-ce-eot20", "apgd-dlr-eot20"],
        }
    }
}

/// The component attacks of a version at this norm and budget, built from
/// [`AutoAttackVersion::components`]: APGD with the reference's 100 iterations and random
/// start, Square with 5000 queries.
pub fn components(
    version: AutoAttackVersion,
    norm: Norm,
    eps: f64,
) -> Result<Vec<(String, Box<dyn Attack>)>> {
    let settings = AttackSettings {
        eps,
        norm,
        restarts: 1,
        loss: LossKind::CrossEntropy,
        random_start: true,
        ..AttackSettings::default()
    };
    version
        .components()
        .iter()
        .map(|c| Ok((c.to_string(), AttackSpec::parse(c)?.build(&settings)?)))
        .collect()
}

/// An AutoAttack ensemble behind the [`Attack`] trait.
pub struct AutoAttack {
    norm: Norm,
    eps: f64,
    label: String,
    attacks: Vec<(String, Box<dyn Attack>)>,
    state: Option<PathBuf>,
}

impl std::fmt::Debug for AutoAttack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoAttack")
            .field("label", &self.label)
            .field(
                "attacks",
                &self.attacks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("state", &self.state)
            .finish()
    }
}

impl AutoAttack {
    /// A standard version of the ensemble.
    pub fn new(version: AutoAttackVersion, norm: Norm, eps: f64) -> Result<Self> {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(param("eps", format!("{eps} must be finite and >= 0")));
        }
        Ok(AutoAttack {
            norm,
            eps,
            label: version.name().into(),
            attacks: components(version, norm, eps)?,
            state: None,
        })
    }

    /// A custom list, run in this order. Every attack must share the norm and budget.
    pub fn custom(attacks: Vec<(String, Box<dyn Attack>)>) -> Result<Self> {
        let Some((_, first)) = attacks.first() else {
            return Err(param("attacks", "a custom AutoAttack needs at least one attack"));
        };
        let (norm, eps) = (first.norm(), first.eps());
        let Some(eps) = eps else {
            return Err(param("attacks", "AutoAttack needs attacks with a budget"));
        };
        if attacks
            .iter()
            .any(|(_, a)| a.norm() != norm || a.eps() != Some(eps))
        {
            return Err(param(
                "attacks",
                "every attack of an AutoAttack must share the norm and eps",
            ));
        }
        Ok(AutoAttack {
            norm,
            eps,
            label: "custom".into(),
            attacks,
            state: None,
        })
    }

    /// Records progress in `path` (JSON, written atomically after every attack) and resumes
    /// from it.
    pub fn with_state(mut self, path: impl Into<PathBuf>) -> Self {
        self.state = Some(path.into());
        self
    }

    /// The component attacks' names, in order.
    pub fn attack_names(&self) -> Vec<String> {
        self.attacks.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// What the state file holds for one batch.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct BatchState {
    /// Attacks finished on this batch.
    done: Vec<String>,
    /// Per sample: broken by some attack (or misclassified clean).
    broken: Vec<bool>,
    /// The adversarial pixels of broken samples, by row.
    adv: BTreeMap<usize, Vec<f32>>,
    cost: Cost,
}

/// The state file: the ensemble it belongs to and every batch, by fingerprint.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct State {
    attacks: Vec<String>,
    norm: Option<Norm>,
    eps: f64,
    batches: BTreeMap<String, BatchState>,
}

fn state_error(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("AutoAttack state file {}: {why}", path.display()))
}

impl State {
    fn load(path: &Path, aa: &AutoAttack) -> Result<State> {
        if !path.exists() {
            return Ok(State {
                attacks: aa.attack_names(),
                norm: Some(aa.norm),
                eps: aa.eps,
                batches: BTreeMap::new(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| state_error(path, e))?;
        let s: State = serde_json::from_str(&text).map_err(|e| state_error(path, e))?;
        if s.attacks != aa.attack_names() || s.norm != Some(aa.norm) || s.eps != aa.eps {
            return Err(state_error(
                path,
                format!(
                    "it was written for attacks {:?} at {:?} eps {}, not {:?} at {:?} eps {}",
                    s.attacks,
                    s.norm,
                    s.eps,
                    aa.attack_names(),
                    aa.norm,
                    aa.eps
                ),
            ));
        }
        Ok(s)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| state_error(path, e))?;
        temper_core::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| state_error(path, e))
    }
}

/// A fingerprint of a batch: FNV-1a over the pixels' and labels' bits, and the batch size.
/// A resumed run finds its batches by it (whatever order they come in) and knows when a batch
/// is not the one recorded.
pub fn fingerprint(x: &Tensor, y: &Tensor) -> Result<String> {
    let mut bytes: Vec<u8> = Vec::with_capacity(4 * (x.elem_count() + y.elem_count()));
    for v in x.flatten_all()?.to_vec1::<f32>()? {
        bytes.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    for v in y.to_dtype(DType::U32)?.to_vec1::<u32>()? {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Ok(format!("{:016x}-{}", temper_core::seed::fnv1a(&bytes), x.dim(0)?))
}

impl Attack for AutoAttack {
    fn name(&self) -> String {
        format!(
            "autoattack-{}({}, eps={:.4}: {})",
            self.label,
            self.norm.name(),
            self.eps,
            self.attack_names().join(", ")
        )
    }

    fn norm(&self) -> Norm {
        self.norm
    }

    fn eps(&self) -> Option<f64> {
        Some(self.eps)
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        goal: Goal<'_>,
        rng: &mut Rng,
    ) -> Result<AttackOutput> {
        let _eval = ModeGuard::new(model, Mode::Eval);
        let mut p = Problem::new(model, x, y, goal)?;
        let n = p.n();
        let mut state = self.state.as_deref().map(|s| State::load(s, self)).transpose()?;
        let key = fingerprint(x, y)?;
        let mut batch = state
            .as_ref()
            .and_then(|s| s.batches.get(&key).cloned())
            .unwrap_or_default();
        let clean = p.logits(x)?;
        let mut asm = Assembly::new(x, p.success(&clean)?)?;
        if batch.broken.len() == n {
            // Resumed: put back the points an earlier run broke.
            let rows: Vec<usize> = batch.adv.keys().copied().collect();
            if !rows.is_empty() {
                let dims = x.dims()[1..].to_vec();
                let pixels: Vec<f32> = batch.adv.values().flatten().copied().collect();
                let mut shape = vec![rows.len()];
                shape.extend(dims);
                let adv = Tensor::from_vec(pixels, shape, x.device())?;
                asm.take(&rows, adv, &vec![true; rows.len()], &vec![0.0; rows.len()])?;
            }
            p.cost += batch.cost;
        }
        let goal_rows = |rows: &[usize]| -> Result<Option<Tensor>> {
            match goal {
                Goal::Untargeted => Ok(None),
                Goal::Targeted(t) => {
                    let idx = Tensor::from_vec(
                        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                        rows.len(),
                        x.device(),
                    )?;
                    Ok(Some(t.index_select(&idx, 0)?))
                }
            }
        };
        for (name, attack) in &self.attacks {
            if batch.done.contains(name) {
                continue;
            }
            let rows = asm.alive();
            if !rows.is_empty() {
                let sub = p.subset(&rows)?;
                let t = goal_rows(&rows)?;
                let g = t.as_ref().map_or(Goal::Untargeted, Goal::Targeted);
                let out = attack.perturb(model, &sub.x, &sub.y, g, rng)?;
                p.cost += out.cost;
                for note in out.notes {
                    let note = format!("{name}: {note}");
                    if !p.notes.contains(&note) {
                        p.notes.push(note);
                    }
                }
                // A success counts only inside the ball (every component projects onto it;
                // this guards the worst case against a component that would not).
                let inside: Vec<bool> = (0..rows.len())
                    .map(|i| match self.norm {
                        Norm::Linf => f64::from(out.linf[i]) <= self.eps + 1e-6,
                        Norm::L2 => f64::from(out.l2[i]) <= self.eps + 1e-5,
                        Norm::L1 => f64::from(out.l1[i]) <= self.eps * (1.0 + 1e-5) + 1e-5,
                    })
                    .collect();
                let success: Vec<bool> = (0..rows.len()).map(|i| out.success[i] && inside[i]).collect();
                if state.is_some() {
                    let flat = out.adv.flatten_from(1)?.to_vec2::<f32>()?;
                    for (i, &r) in rows.iter().enumerate() {
                        if success[i] {
                            batch.adv.insert(r, flat[i].clone());
                        }
                    }
                }
                asm.take(&rows, out.adv, &success, &out.loss)?;
            }
            batch.done.push(name.clone());
            if let (Some(s), Some(path)) = (state.as_mut(), self.state.as_deref()) {
                batch.broken = asm.success.clone();
                batch.cost = p.cost;
                s.batches.insert(key.clone(), batch.clone());
                s.save(path)?;
            }
        }
        let adv = asm.finish()?;
        p.finish(adv, LossKind::CwMargin)
    }
}
