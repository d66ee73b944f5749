//! safetensors weights with PyTorch `state_dict` key names.
//!
//! A file written by `safetensors.torch.save_file(model.state_dict(), path)` loads with no
//! renaming: keys are exactly PyTorch's (`layer1.0.conv1.weight`, `bn1.running_mean`,
//! `bn1.num_batches_tracked`, ...). f32, f64, f16 and bf16 tensors load; integer buffers
//! load as i64. Loading is all or nothing: every key is checked before any tensor is
//! written, so a failed load leaves the model untouched.

use crate::error::{ShapeMismatch, WeightMismatch};
use crate::store::{entry_dtype, ParamStore};
use crate::{Error, Result};
use candle_core::safetensors::Load;
use candle_core::{DType, Tensor};
use safetensors::SafeTensors;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// How strictly a weight file must match the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Every model key present with the right shape, and no extra keys (the default, as
    /// PyTorch's `load_state_dict(strict=True)`).
    Strict,
    /// Load the keys that match; report the rest. Shape mismatches are still errors.
    Lenient,
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Number of tensors written into the model.
    pub loaded: usize,
    /// Disagreements tolerated under [`Strictness::Lenient`].
    pub mismatch: WeightMismatch,
    /// The dtype of the floating tensors in the file (first one seen).
    pub file_dtype: Option<DType>,
}

/// True for keys that may be absent from a file without harm: PyTorch itself fills in
/// `num_batches_tracked` for checkpoints that predate it.
fn optional_key(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

fn bad_file(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadWeightFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Loads a safetensors file, or a PyTorch checkpoint (`.pt`, `.pth`; see
/// [`crate::pytorch`]), into `store`.
///
/// ```no_run
/// # fn f(model: &temper_core::Network) -> temper_core::Result<()> {
/// use temper_core::{weights, Classifier};
/// weights::load(model.params(), "resnet18.safetensors", "resnet18", weights::Strictness::Strict)?;
/// # Ok(()) }
/// ```
pub fn load(
    store: &ParamStore,
    path: impl AsRef<Path>,
    model_name: &str,
    strictness: Strictness,
) -> Result<LoadReport> {
    let path = path.as_ref();
    let bytes = if crate::pytorch::is_pytorch(path) {
        crate::pytorch::to_safetensors_bytes(path)?
    } else {
        std::fs::read(path).map_err(|e| Error::io("cannot read weights", path, e))?
    };
    load_bytes(store, &bytes, path, model_name, strictness)
}

/// Like [`load`], from bytes already in memory; `path` is only used in messages.
pub fn load_bytes(
    store: &ParamStore,
    bytes: &[u8],
    path: &Path,
    model_name: &str,
    strictness: Strictness,
) -> Result<LoadReport> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad_file(path, e.to_string()))?;
    let file_keys: HashSet<String> = st.names().into_iter().map(str::to_string).collect();
    let mut mismatch = WeightMismatch::default();
    for e in store.entries() {
        match st.tensor(&e.name) {
            Ok(view) => {
                if view.shape() != e.var.dims() {
                    mismatch.shape.push(ShapeMismatch {
                        key: e.name.clone(),
                        expected: e.var.dims().to_vec(),
                        found: view.shape().to_vec(),
                    });
                }
            }
            Err(_) if optional_key(&e.name) => {}
            Err(_) => mismatch.missing.push(e.name.clone()),
        }
    }
    let mut unexpected: Vec<String> = file_keys
        .iter()
        .filter(|k| store.get(k).is_none())
        .cloned()
        .collect();
    unexpected.sort();
    mismatch.unexpected = unexpected;
    let fatal = match strictness {
        Strictness::Strict => !mismatch.is_empty(),
        Strictness::Lenient => !mismatch.shape.is_empty(),
    };
    if fatal {
        return Err(Error::WeightMismatch {
            path: path.to_path_buf(),
            model: model_name.to_string(),
            mismatch: Box::new(mismatch),
        });
    }

    // Convert everything first, then write: a bad dtype in the last tensor must not leave
    // the model half loaded.
    let device = store.device();
    let mut staged: Vec<(usize, Tensor)> = Vec::new();
    let mut file_dtype = None;
    for (i, e) in store.entries().iter().enumerate() {
        let Ok(view) = st.tensor(&e.name) else { continue };
        let dev = device.clone().unwrap_or(candle_core::Device::Cpu);
        let t = view
            .load(&dev)
            .map_err(|err| bad_file(path, format!("tensor '{}': {err}", e.name)))?;
        let want = entry_dtype(e);
        let ok = matches!(
            (t.dtype(), want),
            (DType::F32 | DType::F16 | DType::BF16 | DType::F64, DType::F32)
                | (DType::I64 | DType::U32 | DType::U8, DType::I64)
        );
        if !ok {
            return Err(bad_file(
                path,
                format!(
                    "tensor '{}' has dtype {:?}, expected {:?}",
                    e.name,
                    t.dtype(),
                    want
                ),
            ));
        }
        if want == DType::F32 && file_dtype.is_none() {
            file_dtype = Some(t.dtype());
        }
        staged.push((i, t.to_dtype(want)?));
    }
    let loaded = staged.len();
    for (i, t) in staged {
        store.entries()[i].var.set(&t)?;
    }
    Ok(LoadReport {
        loaded,
        mismatch,
        file_dtype,
    })
}

/// Saves every entry of `store` (parameters and buffers) to a safetensors file, atomically,
/// with PyTorch names and `{"format": "pt"}` metadata as `safetensors.torch.save_file` writes.
/// `dtype` converts floating tensors (f32, f16 or bf16); integer buffers keep their type.
pub fn save(
    store: &ParamStore,
    path: impl AsRef<Path>,
    dtype: DType,
    extra_metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let tensors = to_dtype(store.state_dict()?, dtype)?;
    save_tensors(&tensors, path, extra_metadata)
}

fn to_dtype(tensors: Vec<(String, Tensor)>, dtype: DType) -> Result<Vec<(String, Tensor)>> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::param("dtype", format!("cannot save weights as {dtype:?}")));
    }
    tensors
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                t
            };
            Ok((k, t))
        })
        .collect()
}

/// Saves named tensors to a safetensors file atomically.
pub fn save_tensors(
    tensors: &[(String, Tensor)],
    path: &Path,
    extra_metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut meta = extra_metadata.clone();
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&candle_core::Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .map_err(|e| bad_file(path, e.to_string()))?;
    let bytes = sort_metadata(bytes).map_err(|reason| bad_file(path, reason))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Rewrites a serialized safetensors file's header with its `__metadata__` keys sorted.
///
/// safetensors keeps metadata in a `HashMap`, whose order changes from run to run, so the
/// same tensors and metadata would give different bytes each time; sorted, identical runs
/// give identical files. Tensor entries keep their order (that of their data), and the data
/// is untouched: its offsets are relative to the end of the header.
fn sort_metadata(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
        .ok_or("no header")?;
    let header = bytes.get(8..8 + n).ok_or("header past the end")?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let obj = value.as_object().ok_or("header is not a JSON object")?;
    let mut out = String::from("{");
    if let Some(meta) = obj.get("__metadata__") {
        let sorted: std::collections::BTreeMap<&String, &serde_json::Value> = meta
            .as_object()
            .ok_or("__metadata__ is not an object")?
            .iter()
            .collect();
        out.push_str("\"__metadata__\":");
        out.push_str(&serde_json::to_string(&sorted).map_err(|e| e.to_string())?);
    }
    let mut entries: Vec<(&String, &serde_json::Value)> =
        obj.iter().filter(|(k, _)| k.as_str() != "__metadata__").collect();
    let start = |v: &serde_json::Value| v["data_offsets"][0].as_u64().unwrap_or(0);
    entries.sort_by(|a, b| start(a.1).cmp(&start(b.1)).then(a.0.cmp(b.0)));
    for (k, v) in entries {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).map_err(|e| e.to_string())?);
        out.push(':');
        // Each tensor entry's own keys sorted too (dtype, shape, data_offsets).
        let sorted: std::collections::BTreeMap<&String, &serde_json::Value> = v
            .as_object()
            .ok_or("tensor entry is not an object")?
            .iter()
            .collect();
        out.push_str(&serde_json::to_string(&sorted).map_err(|e| e.to_string())?);
    }
    out.push('}');
    // safetensors pads the header with spaces to a multiple of 8 bytes.
    while out.len() % 8 != 0 {
        out.push(' ');
    }
    let mut result = Vec::with_capacity(8 + out.len() + bytes.len() - 8 - n);
    result.extend_from_slice(&(out.len() as u64).to_le_bytes());
    result.extend_from_slice(out.as_bytes());
    result.extend_from_slice(&bytes[8 + n..]);
    Ok(result)
}

/// Reads the metadata of a safetensors file without loading its tensors; a PyTorch
/// checkpoint (`.pt`, `.pth`) has none.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    if crate::pytorch::is_pytorch(path) {
        if !path.is_file() {
            return Err(Error::io(
                "cannot read weights",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        return Ok(HashMap::new());
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read weights", path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad_file(path, e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
