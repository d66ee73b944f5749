//! Checkpoints: when to write them (a strategy, not an `if` in the loop) and how (one
//! safetensors file, written atomically, holding everything a resumed run needs).

use crate::metrics::TrainCost;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use temper_core::ParamStore;

/// Decides when a resumable checkpoint is written.
pub trait CheckpointPolicy: Send {
    /// Called after every iteration; `epoch_end` is true after an epoch's last batch.
    fn should_save(&self, iter: u64, epoch_end: bool) -> bool;
}

/// At every epoch end, and every `every` iterations when `every > 0`.
#[derive(Debug, Clone, Copy)]
pub struct EveryIters {
    /// Iterations between checkpoints (0: epoch ends only).
    pub every: u64,
}

impl CheckpointPolicy for EveryIters {
    fn should_save(&self, iter: u64, epoch_end: bool) -> bool {
        epoch_end || (self.every > 0 && iter.is_multiple_of(self.every))
    }
}

/// Keeps the weights with the best value of a metric (higher is better).
#[derive(Debug, Clone, Default)]
pub struct BestByMetric {
    /// The best value so far.
    pub best: Option<f64>,
}

impl BestByMetric {
    /// True (and remembered) when `value` beats the best so far.
    pub fn improves(&mut self, value: f64) -> bool {
        if value.is_finite() && self.best.is_none_or(|b| value > b) {
            self.best = Some(value);
            true
        } else {
            false
        }
    }
}

/// Where a run stands: enough to continue it exactly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Epoch the next batch belongs to.
    pub epoch: u64,
    /// Index of the next batch within that epoch.
    pub batch: usize,
    /// Iterations done.
    pub iter: u64,
    /// Best validation robust accuracy so far.
    pub best_robust: Option<f64>,
    /// Cost so far.
    pub cost: TrainCost,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// The last validation clean accuracy, so a resumed finished run can still report it.
    #[serde(default)]
    pub val_clean: Option<f64>,
    /// The last validation robust accuracy.
    #[serde(default)]
    pub val_robust: Option<f64>,
}

const META_KEY: &str = "temper.position";

/// Writes model parameters and buffers (`model.<name>`), optimizer state (`optim.<name>`)
/// and the position (metadata) to one file, atomically.
pub fn save(path: &Path, store: &ParamStore, optim: &[(String, Tensor)], pos: &Position) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = store
        .state_dict()?
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    tensors.extend(optim.iter().map(|(k, t)| (format!("optim.{k}"), t.clone())));
    let meta = HashMap::from([(
        META_KEY.to_string(),
        serde_json::to_string(pos).map_err(|e| crate::error::param("checkpoint", e.to_string()))?,
    )]);
    temper_core::weights::save_tensors(&tensors, path, &meta)?;
    Ok(())
}

/// What [`load`] returns.
pub struct Loaded {
    /// Model tensors by state_dict name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state by name.
    pub optim: Vec<(String, Tensor)>,
    /// The run's position.
    pub position: Position,
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let bad = |reason: String| Error::RunDir {
        path: path.to_path_buf(),
        reason,
    };
    let meta = temper_core::weights::read_metadata(path)?;
    let pos = meta
        .get(META_KEY)
        .ok_or_else(|| bad("not a Temper checkpoint (no position metadata)".into()))?;
    let position: Position =
        serde_json::from_str(pos).map_err(|e| bad(format!("bad position metadata: {e}")))?;
    let all = candle_core::safetensors::load(path, device).map_err(|e| bad(e.to_string()))?;
    let mut model = Vec::new();
    let mut optim = Vec::new();
    for (k, t) in all {
        if let Some(n) = k.strip_prefix("model.") {
            model.push((n.to_string(), t));
        } else if let Some(n) = k.strip_prefix("optim.") {
            optim.push((n.to_string(), t));
        }
    }
    Ok(Loaded {
        model,
        optim,
        position,
    })
}

/// Writes `tensors` into the model's store; every name must exist with its shape.
pub fn restore_model(store: &ParamStore, tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let bad = |reason: String| Error::RunDir {
        path: path.to_path_buf(),
        reason,
    };
    for (k, t) in tensors {
        let e = store
            .get(k)
            .ok_or_else(|| bad(format!("checkpoint has unknown tensor '{k}'")))?;
        if e.var.dims() != t.dims() {
            return Err(bad(format!(
                "tensor '{k}' has shape {:?}, model expects {:?}",
                t.dims(),
                e.var.dims()
            )));
        }
    }
    if tensors.len() != store.len() {
        return Err(bad(format!(
            "checkpoint holds {} model tensors, the model has {}",
            tensors.len(),
            store.len()
        )));
    }
    for (k, t) in tensors {
        if let Some(e) = store.get(k) {
            e.var.set(&t.to_dtype(e.var.dtype())?)?;
        }
    }
    Ok(())
}
