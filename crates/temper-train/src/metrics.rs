//! Running metrics, the JSONL log and the cost counter.

use crate::error::io;
use crate::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A metric accumulated over batches: `update` per batch, `compute` for the value so far,
/// `clear` to start again. The trainer holds a list of them and never hard-codes one.
pub trait Metric: Send {
    /// The metric's key in logs.
    fn name(&self) -> &'static str;
    /// Adds one batch: its predictions, labels and mean loss.
    fn update(&mut self, pred: &[u32], labels: &[u32], loss: f64);
    /// The value so far (NaN before any update).
    fn compute(&self) -> f64;
    /// Forgets everything.
    fn clear(&mut self);
}

/// Fraction of correct predictions.
#[derive(Debug, Default, Clone)]
pub struct Accuracy {
    correct: u64,
    total: u64,
}

impl Metric for Accuracy {
    fn name(&self) -> &'static str {
        "acc"
    }
    fn update(&mut self, pred: &[u32], labels: &[u32], _loss: f64) {
        self.correct += pred.iter().zip(labels).filter(|(p, l)| p == l).count() as u64;
        self.total += pred.len() as u64;
    }
    fn compute(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.total as f64
        }
    }
    fn clear(&mut self) {
        *self = Accuracy::default();
    }
}

/// Mean of per-batch losses, weighted by batch size.
#[derive(Debug, Default, Clone)]
pub struct MeanLoss {
    sum: f64,
    n: u64,
}

impl Metric for MeanLoss {
    fn name(&self) -> &'static str {
        "loss"
    }
    fn update(&mut self, pred: &[u32], _labels: &[u32], loss: f64) {
        self.sum += loss * pred.len() as f64;
        self.n += pred.len() as u64;
    }
    fn compute(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }
    fn clear(&mut self) {
        *self = MeanLoss::default();
    }
}

/// Work done by a run, in hardware-independent units, so "8-10x cheaper" can be checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainCost {
    /// Images passed forward through the model for training (inner attack included).
    pub forward: u64,
    /// Images passed backward through the model for training (inner attack included).
    pub backward: u64,
    /// Training images processed (one per sample per iteration).
    pub images: u64,
    /// Forward passes spent on validation (not part of the training cost).
    pub val_forward: u64,
    /// Backward passes spent on validation.
    pub val_backward: u64,
    /// Wall time of the run so far, seconds (validation included).
    pub wall_seconds: f64,
}

impl TrainCost {
    /// Forward plus backward passes of training: the cost figure to compare methods by.
    pub fn passes(&self) -> u64 {
        self.forward + self.backward
    }
}

/// The metrics log: one JSON object per line in `RUN_DIR/metrics.jsonl`.
///
/// Training lines: `{"kind":"train","epoch":1.5,"iter":120,"loss":..,"acc":..,"lr":..}`;
/// validation lines: `{"kind":"val","epoch":2.0,"iter":160,"clean_acc":..,"robust_acc":..,"loss":..}`.
pub struct JsonlLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlLog {
    /// Opens the log for appending. With `keep_until = Some(iter)` (a resumed run), lines
    /// written after that iteration by the interrupted run are dropped first, so the log
    /// matches the state the run continues from.
    pub fn open(path: &Path, keep_until: Option<u64>) -> Result<Self> {
        if let Some(limit) = keep_until {
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(|e| io("cannot read", path, e))?;
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v["iter"].as_u64())
                            .is_some_and(|i| i <= limit)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                temper_core::fsutil::write_atomic(path, kept.as_bytes())?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io("cannot open", path, e))?;
        Ok(JsonlLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record.
    pub fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|e| io("cannot write", &self.path, e))
    }
}
