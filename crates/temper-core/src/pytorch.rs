//! PyTorch checkpoints (`.pt`, `.pth`) as they come: `torch.save(model.state_dict())`, or a
//! dictionary wrapping it under `state_dict` or `model` (with epochs, optimizer states and
//! other entries beside), from a model that may have been wrapped in `DataParallel` (every
//! key prefixed `module.`).
//!
//! candle reads PyTorch's zip/pickle format ([`candle_core::pickle`]); this module finds the
//! state dict inside and normalises its key names, so the result loads with the same strict
//! key matching as a safetensors file.

use crate::{Error, Result};
use candle_core::Tensor;
use std::path::Path;

/// True for a path whose extension names a PyTorch checkpoint (`.pt`, `.pth`).
pub fn is_pytorch(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pt") || e.eq_ignore_ascii_case("pth"))
}

/// The dictionary keys under which training scripts commonly store the state dict.
const WRAPPERS: [&str; 2] = ["state_dict", "model"];

/// Reads the state dict of a PyTorch checkpoint: the tensors at the top level, or under
/// `state_dict` or `model` when the top level holds none, with a `module.` prefix (as
/// `DataParallel` and `DistributedDataParallel` write) stripped from every key that has it.
/// Sorted by key, so the result is the same on every run.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| Error::BadWeightFile {
        path: path.to_path_buf(),
        reason,
    };
    // The wrappers first: reading a wrapping dictionary as a state dict would make candle
    // report every non-tensor entry (epochs, optimizer states) on stderr.
    let mut tensors = Vec::new();
    for key in WRAPPERS {
        // A missing key is no error: the next wrapper, or the top level, may hold the tensors.
        if let Ok(t) = candle_core::pickle::read_all_with_key(path, Some(key)) {
            if !t.is_empty() {
                tensors = t;
                break;
            }
        }
    }
    if tensors.is_empty() {
        tensors = candle_core::pickle::read_all_with_key(path, None)
            .map_err(|e| bad(format!("not a PyTorch checkpoint candle can read: {e}")))?;
    }
    if tensors.is_empty() {
        return Err(bad(format!(
            "holds no tensors, neither at the top level nor under {}",
            WRAPPERS.map(|w| format!("'{w}'")).join(" or ")
        )));
    }
    let mut out: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), t))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(bad(format!(
            "holds '{0}' both with and without the 'module.' prefix",
            w[0].0
        )));
    }
    Ok(out)
}

/// The state dict of a PyTorch checkpoint as safetensors bytes, so it loads through
/// [`crate::weights::load_bytes`] with the same checks as a safetensors file.
pub fn to_safetensors_bytes(path: &Path) -> Result<Vec<u8>> {
    let tensors = read_state_dict(path)?;
    let cpu: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&candle_core::Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), None).map_err(|e| Error::BadWeightFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
