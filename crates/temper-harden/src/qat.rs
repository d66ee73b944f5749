//! Quantization-aware training in the trainer: temper-quant's [`QatHook`] behind
//! temper-train's [`LayerTransform`] (the two crates do not know each other), so any training
//! method, adversarial fine-tuning included, trains through the quantizer; and the export of a
//! finished run's weights to the quantized file.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use temper_quant::qat::{QatHook, QatParams, ValidQatParams};
use temper_train::hooks::LayerTransform;
use temper_train::TrainConfig;

/// The file a quantization-aware run's directory gets beside `model.safetensors`.
pub const QUANTIZED_FILE: &str = "quantized.safetensors";

/// [`QatHook`] as the trainer takes them.
#[derive(Debug, Clone)]
pub struct Qat(pub ValidQatParams);

impl Qat {
    /// Parses and checks a quantizer spec (`4`, `ternary`, `ptq:prune=0.6,per-tensor`; see
    /// [`QatParams::parse`]).
    pub fn parse(spec: &str) -> Result<Self> {
        Ok(Qat(QatParams::parse(spec)?.check()?))
    }

    /// The run options' kernels for a configuration: `Some` exactly when it records a
    /// quantizer (`quantize`).
    pub fn for_config(cfg: &TrainConfig) -> Result<Option<Box<dyn LayerTransform>>> {
        Ok(match &cfg.quantize {
            Some(spec) => Some(Box::new(Qat::parse(spec)?)),
            None => None,
        })
    }
}

impl LayerTransform for Qat {
    fn spec(&self) -> String {
        self.0.get().to_string()
    }

    fn hook(
        &self,
        net: &temper_core::Network,
    ) -> temper_train::Result<Arc<dyn temper_core::hooks::LayerHook>> {
        let k =
            QatHook::new(net, &self.0).map_err(|e| temper_core::Error::param("quantize", e.to_string()))?;
        Ok(Arc::new(k))
    }
}

/// The quantized model of the float weights a quantization-aware run saved in `run_dir`
/// (configuration `cfg`), rounded exactly as training saw them; `None` for a run without a
/// quantizer.
pub fn export_run(
    run_dir: &Path,
    cfg: &TrainConfig,
    device: &candle_core::Device,
) -> Result<Option<temper_quant::QuantModel>> {
    let Some(spec) = &cfg.quantize else {
        return Ok(None);
    };
    let params = Qat::parse(spec)?.0;
    let model_cfg = cfg.model.clone().check()?;
    let weights = run_dir.join(temper_train::files::LAST);
    let (net, _) = temper_models::build_from_file(
        &model_cfg,
        &weights,
        temper_core::weights::Strictness::Strict,
        device,
    )?;
    Ok(Some(temper_quant::qat::export(&net, &model_cfg, &params)?))
}

/// [`export_run`], saved as `run_dir/quantized.safetensors` (packed); returns its path.
pub fn save_run_export(
    run_dir: &Path,
    cfg: &TrainConfig,
    device: &candle_core::Device,
) -> Result<Option<PathBuf>> {
    let Some(q) = export_run(run_dir, cfg, device)? else {
        return Ok(None);
    };
    let out = run_dir.join(QUANTIZED_FILE);
    temper_quant::export::save(&q, &out)?;
    Ok(Some(out))
}

/// The configuration a run directory records.
pub fn run_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = run_dir.join(temper_train::files::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
        op: "read",
        path: path.clone(),
        source: e,
    })?;
    Ok(TrainConfig::from_toml(&text, &path)?)
}
