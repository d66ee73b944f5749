//! A resumable evaluation: what [`crate::evaluate`] has finished, written to a state file after
//! every attack on every batch, so that a long evaluation (AutoAttack on thousands of images)
//! survives an interruption, and a rerun with the same file continues where it stopped and
//! ends with the result an uninterrupted run gives.
//!
//! The file records the evaluation's setup (model, attacks with their hyper-parameters, threat
//! model, batch size, global seed) and, per batch in data order, a fingerprint of its pixels
//! and labels, the model's clean predictions, and per finished attack its outcome on every
//! attacked row, its cost, time and notes, and where its random stream stood afterwards. A
//! rerun replays the recorded (batch, attack) pairs instead of running them, and refuses a file
//! whose setup, data or clean predictions differ. The data may grow: a file written with
//! `--limit 500` continues an evaluation of 1,000 images, as the first batches are the same.

use crate::threat::Threat;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use temper_attacks::Cost;
use temper_core::seed::RngState;

/// The schema name written into every state file.
pub const STATE_SCHEMA: &str = "temper.eval-state.v1";

/// What must be equal for a state file to continue an evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Setup {
    /// The model's name and parameter count.
    pub model: String,
    /// Each attack's name in the list and its description with hyper-parameters.
    pub attacks: Vec<(String, String)>,
    pub threat: Threat,
    pub batch_size: usize,
    /// The global seed every attack's stream derives from.
    pub seed: u64,
    /// Whether the adversarial images are recorded (an evaluation that hands them out needs
    /// them to replay a batch).
    pub images: bool,
    /// AutoAttack's cascade (each attack only on what the ones before it left).
    #[serde(default)]
    pub cascade: bool,
}

/// One attack's outcome on one attacked row.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Outcome {
    pub broken: bool,
    pub outside: bool,
    pub inside: bool,
    pub pred: u32,
    pub linf: f32,
    pub l2: f32,
    #[serde(default)]
    pub l1: f32,
}

/// One attack's finished work on one batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AttackRecord {
    /// Per attacked row (the batch's clean-correct rows, in order).
    pub outcomes: Vec<Outcome>,
    pub cost: Cost,
    pub seconds: f64,
    pub notes: Vec<String>,
    /// The attack's random stream after this batch.
    pub rng: RngState,
    /// Per attacked row, the adversarial pixels, when the setup records images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<Vec<f32>>>,
}

/// One batch: which data it was, what the model predicted, the attacks finished on it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct BatchRecord {
    fingerprint: String,
    clean: Vec<u32>,
    attacks: Vec<AttackRecord>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct StateFile {
    schema: String,
    setup: Setup,
    batches: Vec<BatchRecord>,
}

/// An open state file.
pub(crate) struct Resume {
    path: PathBuf,
    file: StateFile,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::BadState {
        path: path.to_path_buf(),
        reason: why.to_string(),
    }
}

/// The fields of two setups that differ, as `name: recorded -> now`.
fn differences(was: &Setup, now: &Setup) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    cmp("model", was.model.clone(), now.model.clone());
    let list = |s: &Setup| {
        s.attacks
            .iter()
            .map(|(n, d)| format!("{n} = {d}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    cmp("attacks", list(was), list(now));
    cmp("threat", was.threat.describe(), now.threat.describe());
    cmp(
        "batch size",
        was.batch_size.to_string(),
        now.batch_size.to_string(),
    );
    cmp("seed", was.seed.to_string(), now.seed.to_string());
    cmp(
        "adversarial images recorded",
        was.images.to_string(),
        now.images.to_string(),
    );
    cmp("cascade", was.cascade.to_string(), now.cascade.to_string());
    out
}

impl Resume {
    /// Opens `path`, or creates it (written at once, so an unwritable path fails before any
    /// work). An existing file must have been written for `setup`.
    pub fn open(path: &Path, setup: Setup) -> Result<Self> {
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
            let file: StateFile = serde_json::from_str(&text)
                .map_err(|e| bad(path, format!("not an evaluation state file ({e})")))?;
            if file.schema != STATE_SCHEMA {
                return Err(bad(
                    path,
                    format!("schema '{}', expected '{STATE_SCHEMA}'", file.schema),
                ));
            }
            let diff = differences(&file.setup, &setup);
            if !diff.is_empty() {
                return Err(bad(
                    path,
                    format!(
                        "it records another evaluation ({}); use another file to start afresh",
                        diff.join(", ")
                    ),
                ));
            }
            Ok(Resume {
                path: path.to_path_buf(),
                file,
            })
        } else {
            let r = Resume {
                path: path.to_path_buf(),
                file: StateFile {
                    schema: STATE_SCHEMA.into(),
                    setup,
                    batches: Vec::new(),
                },
            };
            r.save()?;
            Ok(r)
        }
    }

    /// Starts or checks batch `b`: a recorded batch must hold the same data and clean
    /// predictions; a new one is appended (batches come in order).
    pub fn enter(&mut self, b: usize, fingerprint: &str, clean: &[u32]) -> Result<()> {
        match self.file.batches.get(b) {
            Some(rec) if rec.fingerprint != fingerprint => Err(bad(
                &self.path,
                format!("batch {b} holds other images or labels than the recorded one: another data set, split or order"),
            )),
            Some(rec) if rec.clean != clean => Err(bad(
                &self.path,
                format!("the model's clean predictions on batch {b} differ from the recorded ones: other weights"),
            )),
            Some(_) => Ok(()),
            None if b == self.file.batches.len() => {
                self.file.batches.push(BatchRecord {
                    fingerprint: fingerprint.to_string(),
                    clean: clean.to_vec(),
                    attacks: Vec::new(),
                });
                Ok(())
            }
            None => Err(bad(&self.path, format!("batch {b} comes before batch {}", self.file.batches.len()))),
        }
    }

    /// Attack `a`'s record on batch `b`, if finished.
    pub fn recorded(&self, b: usize, a: usize) -> Option<&AttackRecord> {
        self.file.batches.get(b).and_then(|r| r.attacks.get(a))
    }

    /// Records attack `a` on batch `b` (the next unfinished one) and writes the file.
    pub fn record(&mut self, b: usize, a: usize, rec: AttackRecord) -> Result<()> {
        let batch = self
            .file
            .batches
            .get_mut(b)
            .ok_or_else(|| bad(&self.path, format!("batch {b} was not entered")))?;
        if batch.attacks.len() != a {
            return Err(bad(
                &self.path,
                format!("attack {a} of batch {b} recorded out of order"),
            ));
        }
        batch.attacks.push(rec);
        self.save()
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_string(&self.file).map_err(|e| bad(&self.path, e))?;
        temper_core::fsutil::write_atomic(&self.path, text.as_bytes())
            .map_err(|e| bad(&self.path, format!("cannot write it: {e}")))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
