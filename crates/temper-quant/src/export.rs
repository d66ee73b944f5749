//! Quantized models as safetensors files: packed integer weights, scales and zero points,
//! with metadata naming the scheme of every tensor.
//!
//! Layout of a file for a model whose layer `L` is quantized:
//!
//! | tensor | dtype | shape | holds |
//! |---|---|---|---|
//! | `L.weight` | `I8` (8-bit symmetric) or `U8` (packed) | `(out, bytes per row)` | codes, see [`crate::pack`] |
//! | `L.weight_scale` | `F32` | `(groups,)` | one step per tensor or output channel |
//! | `L.weight_zero_point` | `U8` | `(groups,)` | asymmetric grids only |
//! | `L.input_scale`, `L.input_zero_point` | `F32`, `I32` | `(1,)` | the input grid, when activations are quantized |
//! | every other entry | as in the model | as in the model | biases, BatchNorm parameters and buffers |
//!
//! The `__metadata__` map holds `format: pt`, `temper.quant.version`, the model
//! configuration (`temper.quant.model`, JSON), how it was quantized (`temper.quant.info`) and,
//! for every quantized tensor `T`, a key `temper.quant:T` whose JSON value names its scheme,
//! container (`int8`, `int4`, `ternary2`, ...), granularity and original shape.
//!
//! Weights are stored after BatchNorm folding; folded BatchNorms are stored as the pure bias
//! they became, so the file loads into the unmodified zoo architecture. [`load`] gives bit for
//! bit the logits of the model that [`save`] wrote.

use crate::act::ActQuant;
use crate::error::bad_file;
use crate::graph::LayerGraph;
use crate::model::{QuantInfo, QuantModel, QuantizedLayer};
use crate::pack::{pack, unpack, Container};
use crate::{Error, Granularity, QTensor, Result, WeightScheme};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use temper_core::Classifier;
use temper_models::ModelConfig;

/// The format version written to and required in `temper.quant.version`.
pub const VERSION: &str = "1";

const KEY_VERSION: &str = "temper.quant.version";
const KEY_MODEL: &str = "temper.quant.model";
const KEY_INFO: &str = "temper.quant.info";
const KEY_TENSOR: &str = "temper.quant:";

/// The metadata entry describing one quantized weight.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct WeightDesc {
    container: String,
    scheme: WeightScheme,
    granularity: Granularity,
    shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpfq_error: Option<f64>,
}

/// The metadata entry describing one quantized input.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct InputDesc {
    container: String,
    bits: u8,
}

/// A tensor as raw little-endian bytes, for the safetensors writer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw_f32(v: &[f32]) -> Raw {
    Raw {
        dtype: Dtype::F32,
        shape: vec![v.len()],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A model entry as raw bytes (f32, or i64 for counters).
fn raw_tensor(t: &Tensor) -> Result<Raw> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    let (dtype, data) = match t.dtype() {
        DType::I64 => (
            Dtype::I64,
            t.to_vec1::<i64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        _ => (
            Dtype::F32,
            t.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
    };
    Ok(Raw {
        dtype,
        shape: vec![],
        data,
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // Serialising these plain structs cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// The bytes of the file [`save`] writes.
pub fn to_bytes(model: &QuantModel) -> Result<Vec<u8>> {
    let by_weight: HashMap<String, &QuantizedLayer> = model
        .layers()
        .iter()
        .map(|l| (format!("{}.weight", l.name), l))
        .collect();
    let mut tensors: Vec<(String, Raw)> = Vec::new();
    let mut meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (KEY_VERSION.to_string(), VERSION.to_string()),
        (KEY_MODEL.to_string(), json(model.config().get())),
        (KEY_INFO.to_string(), json(model.quant_info())),
    ]);
    for e in model.params().entries() {
        let Some(layer) = by_weight.get(&e.name) else {
            let mut r = raw_tensor(e.var.as_tensor())?;
            r.shape = e.var.dims().to_vec();
            tensors.push((e.name.clone(), r));
            continue;
        };
        let q = &layer.weight;
        let c = Container::of(q.scheme());
        let rows = q.shape()[0];
        let bytes = pack(q.codes(), rows, q.scheme());
        let row_bytes = bytes.len() / rows;
        tensors.push((
            e.name.clone(),
            Raw {
                dtype: if c.signed_bytes { Dtype::I8 } else { Dtype::U8 },
                shape: vec![rows, row_bytes],
                data: bytes,
            },
        ));
        meta.insert(
            format!("{KEY_TENSOR}{}", e.name),
            json(&WeightDesc {
                container: c.name.to_string(),
                scheme: q.scheme(),
                granularity: q.granularity(),
                shape: q.shape().to_vec(),
                gpfq_error: layer.gpfq_error,
            }),
        );
        tensors.push((format!("{}_scale", e.name), raw_f32(q.scale())));
        if !q.zero_point().is_empty() {
            tensors.push((
                format!("{}_zero_point", e.name),
                Raw {
                    dtype: Dtype::U8,
                    shape: vec![q.zero_point().len()],
                    // Asymmetric zero points are codes in 0..=255.
                    data: q.zero_point().iter().map(|&z| z as u8).collect(),
                },
            ));
        }
        if let Some(a) = layer.input {
            let key = format!("{}.input_scale", layer.name);
            meta.insert(
                format!("{KEY_TENSOR}{key}"),
                json(&InputDesc {
                    container: format!("uint{}", a.bits),
                    bits: a.bits,
                }),
            );
            tensors.push((key, raw_f32(&[a.scale])));
            tensors.push((
                format!("{}.input_zero_point", layer.name),
                Raw {
                    dtype: Dtype::I32,
                    shape: vec![1],
                    data: i32::from(a.zero_point).to_le_bytes().to_vec(),
                },
            ));
        }
    }
    safetensors::serialize(tensors.iter().map(|(k, r)| (k.as_str(), r)), Some(meta)).map_err(|e| {
        Error::InvalidParam {
            name: "export".into(),
            reason: e.to_string(),
        }
    })
}

/// Sizes of a quantized file and of the float file it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SizeReport {
    /// Bytes of the quantized file.
    pub quantized_bytes: u64,
    /// Bytes of the same model saved as f32 safetensors.
    pub float_bytes: u64,
}

impl SizeReport {
    /// How many times smaller the quantized file is.
    pub fn ratio(&self) -> f64 {
        self.float_bytes as f64 / self.quantized_bytes.max(1) as f64
    }
}

/// Bytes of `model`'s parameters saved as f32 safetensors (what
/// `temper_core::weights::save` writes), without writing anything.
pub fn float_bytes(model: &dyn Classifier) -> Result<u64> {
    let mut tensors = Vec::new();
    for e in model.params().entries() {
        let mut r = raw_tensor(e.var.as_tensor())?;
        r.shape = e.var.dims().to_vec();
        tensors.push((e.name.clone(), r));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, r)| (k.as_str(), r)), Some(meta)).map_err(|e| {
            Error::InvalidParam {
                name: "export".into(),
                reason: e.to_string(),
            }
        })?;
    Ok(bytes.len() as u64)
}

/// The size of the file [`save`] would write and of the float equivalent.
pub fn sizes(model: &QuantModel) -> Result<SizeReport> {
    Ok(SizeReport {
        quantized_bytes: to_bytes(model)?.len() as u64,
        float_bytes: float_bytes(model)?,
    })
}

/// Writes `model` to `path` atomically and reports the file's size against the float one.
pub fn save(model: &QuantModel, path: impl AsRef<Path>) -> Result<SizeReport> {
    let bytes = to_bytes(model)?;
    temper_core::fsutil::write_atomic(path.as_ref(), &bytes)?;
    Ok(SizeReport {
        quantized_bytes: bytes.len() as u64,
        float_bytes: float_bytes(model)?,
    })
}

/// The largest safetensors header [`is_quantized`] reads (the format's own limit).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// True when `path` is a safetensors file written by [`save`], false for any other
/// safetensors file (a float state dict). Reads only the header; a file that cannot be read
/// or is no safetensors file is an error naming it.
pub fn is_quantized(path: impl AsRef<Path>) -> Result<bool> {
    use std::io::Read as _;
    let path = path.as_ref();
    let io = |e| Error::Io {
        op: "cannot read",
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad_file(path, "too short for a safetensors file"))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_err(io)?.len();
    if n > MAX_HEADER || n > size.saturating_sub(8) {
        return Err(bad_file(
            path,
            format!("not a safetensors file (header length {n} for a {size}-byte file)"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad_file(path, format!("not a safetensors file: header is no JSON ({e})")))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.get(KEY_VERSION))
        .is_some())
}

/// Loads a file written by [`save`] onto `device`.
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<QuantModel> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        op: "cannot read",
        path: path.to_path_buf(),
        source: e,
    })?;
    load_bytes(&bytes, path, device)
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Like [`load`], from bytes in memory; `path` is only used in messages.
pub fn load_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<QuantModel> {
    let bad = |r: String| bad_file(path, r);
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get(KEY_VERSION).map(String::as_str) {
        Some(VERSION) => {}
        Some(v) => return Err(bad(format!("format version {v}, this build reads {VERSION}"))),
        None => {
            return Err(bad(
                "no temper.quant.version metadata: not a quantized model".into()
            ))
        }
    }
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata '{k}' is missing")))
    };
    let config: ModelConfig =
        serde_json::from_str(get(KEY_MODEL)?).map_err(|e| bad(format!("{KEY_MODEL}: {e}")))?;
    let config = config.check()?;
    let info: QuantInfo =
        serde_json::from_str(get(KEY_INFO)?).map_err(|e| bad(format!("{KEY_INFO}: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let net = temper_models::build_zeroed(&config, device)?;
    let mut used: HashSet<String> = HashSet::new();
    let mut take = |name: &str| -> Result<safetensors::tensor::TensorView<'_>> {
        used.insert(name.to_string());
        st.tensor(name)
            .map_err(|_| bad(format!("tensor '{name}' is missing")))
    };
    let mut weights: HashMap<String, (QTensor, Option<f64>)> = HashMap::new();
    let mut inputs: HashMap<String, ActQuant> = HashMap::new();
    for e in net.params().entries() {
        let Some(desc) = meta.get(&format!("{KEY_TENSOR}{}", e.name)) else {
            let view = take(&e.name)?;
            if view.shape() != e.var.dims() {
                return Err(bad(format!(
                    "tensor '{}' has shape {:?}, the model expects {:?}",
                    e.name,
                    view.shape(),
                    e.var.dims()
                )));
            }
            let t = view
                .load(device)
                .map_err(|err| bad(format!("tensor '{}': {err}", e.name)))?;
            e.var.set(&t.to_dtype(e.var.dtype())?)?;
            continue;
        };
        let d: WeightDesc =
            serde_json::from_str(desc).map_err(|err| bad(format!("metadata of '{}': {err}", e.name)))?;
        if d.shape != e.var.dims() {
            return Err(bad(format!(
                "quantized '{}' has shape {:?}, the model expects {:?}",
                e.name,
                d.shape,
                e.var.dims()
            )));
        }
        let rows = d.shape[0];
        let row_len = d.shape.iter().product::<usize>() / rows.max(1);
        let codes = unpack(take(&e.name)?.data(), rows, row_len, d.scheme)
            .map_err(|err| bad(format!("'{}': {err}", e.name)))?;
        let scale = le_f32(take(&format!("{}_scale", e.name))?.data());
        let zero_point: Vec<i16> = if d.scheme.is_symmetric() {
            vec![]
        } else {
            take(&format!("{}_zero_point", e.name))?
                .data()
                .iter()
                .map(|&z| i16::from(z))
                .collect()
        };
        let q = QTensor::new(d.scheme, d.granularity, d.shape.clone(), codes, scale, zero_point)
            .map_err(|err| bad(format!("'{}': {err}", e.name)))?;
        e.var.set(&q.to_tensor(device)?)?;
        let layer = e.name.strip_suffix(".weight").unwrap_or(&e.name).to_string();
        let input_key = format!("{layer}.input_scale");
        if let Some(desc) = meta.get(&format!("{KEY_TENSOR}{input_key}")) {
            let d: InputDesc =
                serde_json::from_str(desc).map_err(|err| bad(format!("metadata of '{input_key}': {err}")))?;
            let scale = le_f32(take(&input_key)?.data());
            let zp = take(&format!("{layer}.input_zero_point"))?.data().to_vec();
            let (Some(&scale), Ok(zp)) = (scale.first(), <[u8; 4]>::try_from(zp.as_slice())) else {
                return Err(bad(format!("input grid of '{layer}' is malformed")));
            };
            let zp = i16::try_from(i32::from_le_bytes(zp))
                .map_err(|_| bad(format!("input zero point of '{layer}' is out of range")))?;
            if !(scale.is_finite() && scale > 0.0 && WeightScheme::BITS.contains(&d.bits)) {
                return Err(bad(format!(
                    "input grid of '{layer}' has scale {scale} and {} bits",
                    d.bits
                )));
            }
            inputs.insert(
                layer.clone(),
                ActQuant {
                    bits: d.bits,
                    scale,
                    zero_point: zp,
                },
            );
        }
        weights.insert(layer, (q, d.gpfq_error));
    }
    let mut extra: Vec<&str> = st.names().into_iter().filter(|n| !used.contains(*n)).collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(bad(format!("unexpected tensors: {}", extra.join(", "))));
    }
    let graph = LayerGraph::trace(&net)?;
    let layers: Vec<QuantizedLayer> = graph
        .layers()
        .iter()
        .filter_map(|l| {
            let (weight, gpfq_error) = weights.remove(&l.name)?;
            Some(QuantizedLayer {
                input: inputs.get(&l.name).copied(),
                name: l.name.clone(),
                weight,
                gpfq_error,
            })
        })
        .collect();
    if let Some(name) = weights.keys().next() {
        return Err(bad(format!(
            "quantized '{name}' is not a convolution or linear layer the model runs"
        )));
    }
    QuantModel::assemble(net, config, graph, layers, info)
}
