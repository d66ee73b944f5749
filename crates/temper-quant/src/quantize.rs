//! The post-training quantization pipeline: fold, quantize weights layer by layer (round to
//! nearest or GPFQ), calibrate activation grids, correct biases.

use crate::act::{ActHook, ActQuant};
use crate::calib::RangeStats;
use crate::error::param;
use crate::fold::{fold_batchnorm, FoldReport};
use crate::graph::{Layer, LayerGraph, LayerKind};
use crate::im2col::{columns, conv_out, select_rows, unfold, ColMatrix};
use crate::model::{QuantInfo, QuantModel, QuantizedLayer};
use crate::params::{Method, Precision, ValidQuantParams};
use crate::record::{record, Capture};
use crate::{bias, gpfq, tensors, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::Arc;
use temper_core::hooks::LayerHook;
use temper_core::{Classifier, Network};
use temper_models::ValidModelConfig;

/// Splits `images` into batches of at most `batch` along the first dimension.
pub(crate) fn batches(images: &Tensor, batch: usize) -> Result<Vec<Tensor>> {
    let n = images.dim(0)?;
    (0..n)
        .step_by(batch.max(1))
        .map(|s| Ok(images.narrow(0, s, batch.min(n - s))?))
        .collect()
}

/// A fresh copy of `source`'s parameters in a newly built `config` network on `source`'s
/// device.
pub(crate) fn rebuild(source: &dyn Classifier, config: &ValidModelConfig) -> Result<Network> {
    let net = temper_models::build_zeroed(config, source.device())?;
    tensors::copy_all(source.params(), net.params())?;
    Ok(net)
}

/// The inputs of `layer` over `calib`, gathered in batches, as host data with their shape.
fn layer_input(net: &Network, layer: &str, calib: &Tensor, batch: usize) -> Result<(Vec<f32>, Vec<usize>)> {
    let mut data = Vec::new();
    let mut dims: Vec<usize> = Vec::new();
    for b in batches(calib, batch)? {
        let (_, calls) = record(net, &b, Capture::one(layer), Capture::Nothing)?;
        let x = calls
            .into_iter()
            .find_map(|c| c.x)
            .ok_or_else(|| param(layer, "did not run in the forward pass"))?;
        if dims.is_empty() {
            dims = x.dims().to_vec();
        } else {
            dims[0] += x.dim(0)?;
        }
        data.extend(x.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok((data, dims))
}

/// The float and partly quantized inputs of `layer` as one matrix per convolution group.
fn gpfq_inputs(
    reference: &Network,
    qnet: &Network,
    layer: &Layer,
    calib: &Tensor,
    batch: usize,
    max_rows: usize,
) -> Result<(Vec<ColMatrix>, Vec<ColMatrix>)> {
    let (xf, dims) = layer_input(reference, &layer.name, calib, batch)?;
    let (xq, dims_q) = layer_input(qnet, &layer.name, calib, batch)?;
    if dims != dims_q {
        return Err(param(
            &layer.name,
            format!("float input {dims:?} but quantized input {dims_q:?}"),
        ));
    }
    let stream = format!("temper-quant/gpfq/{}", layer.name);
    match layer.kind {
        LayerKind::Linear => {
            let d = *dims.last().unwrap_or(&1);
            let rows = select_rows(xf.len() / d.max(1), max_rows, &stream);
            Ok((vec![columns(&xf, d, &rows)], vec![columns(&xq, d, &rows)]))
        }
        LayerKind::Conv(cfg) => {
            let [n, c, h, w]: [usize; 4] = dims
                .as_slice()
                .try_into()
                .map_err(|_| param(&layer.name, format!("convolution input {dims:?} is not NCHW")))?;
            let (kh, kw) = (layer.weight_shape[2], layer.weight_shape[3]);
            let total = n * conv_out(h, kh, cfg) * conv_out(w, kw, cfg);
            let rows = select_rows(total, max_rows, &stream);
            let cin_g = c / cfg.groups;
            let (mut f, mut q) = (Vec::new(), Vec::new());
            for g in 0..cfg.groups {
                f.push(unfold(&xf, [n, c, h, w], cfg, (kh, kw), g, cin_g, &rows));
                q.push(unfold(&xq, [n, c, h, w], cfg, (kh, kw), g, cin_g, &rows));
            }
            Ok((f, q))
        }
    }
}

/// Calibrates the input grid of every quantized layer on `calib`, in one pass.
fn calibrate(
    qnet: &Network,
    graph: &LayerGraph,
    params: &ValidQuantParams,
    quantized: &[QuantizedLayer],
    calib: &Tensor,
) -> Result<HashMap<String, ActQuant>> {
    let Some(act) = params.get().act else {
        return Ok(HashMap::new());
    };
    let names: std::collections::HashSet<String> = quantized.iter().map(|l| l.name.clone()).collect();
    let mut stats: HashMap<String, RangeStats> = HashMap::new();
    for b in batches(calib, params.get().batch_size)? {
        let (_, calls) = record(qnet, &b, Capture::Only(names.clone()), Capture::Nothing)?;
        for c in calls {
            if let Some(x) = c.x {
                stats.entry(c.layer).or_default().observe(&x)?;
            }
        }
    }
    let mut grids = HashMap::new();
    for (name, mut s) in stats {
        if let Some(bits) = params.act_bits(graph, &name) {
            grids.insert(name, s.grid(act.calibration, bits));
        }
    }
    Ok(grids)
}

/// Quantizes `float` (a model of architecture `config`, e.g. a zoo [`Network`]) after
/// training, calibrating on `calib` (pixels in `[0, 1]`, NCHW; may be empty for data-free
/// round to nearest without activation quantization or bias correction).
///
/// Steps: copy the weights into two fresh networks (a float reference and the one to
/// quantize), fold BatchNorms into both, then quantize layer by layer in execution order
/// (GPFQ sees the reference's inputs and the partly quantized network's), calibrate
/// activation grids on the weight-quantized network, and finally correct biases with
/// activation quantization in place. `float` itself is only read.
pub fn quantize(
    float: &dyn Classifier,
    config: &ValidModelConfig,
    calib: &Tensor,
    params: &ValidQuantParams,
) -> Result<QuantModel> {
    let p = params.get();
    let channels = float.input_shape()[0];
    if calib.elem_count() > 0 && (calib.rank() != 4 || calib.dim(1)? != channels) {
        return Err(param(
            "calib",
            format!(
                "images {:?} are not NCHW with the model's {channels} channels",
                calib.dims()
            ),
        ));
    }
    let n_calib = if calib.elem_count() > 0 { calib.dim(0)? } else { 0 };
    if params.needs_calibration() && n_calib == 0 {
        return Err(param(
            "calib",
            "GPFQ, activation quantization and bias correction need calibration images",
        ));
    }
    let reference = rebuild(float, config)?;
    let qnet = rebuild(float, config)?;
    let graph = LayerGraph::trace(&qnet)?;
    let fold = if p.fold_batchnorm {
        let decided = fold_batchnorm(&reference, &graph, None)?;
        fold_batchnorm(&qnet, &graph, Some(&decided))?
    } else {
        FoldReport {
            folded: vec![],
            kept: graph.batch_norms().to_vec(),
        }
    };

    let mut layers = Vec::new();
    for layer in graph.layers() {
        let Precision::Quantized(scheme) = params.precision(&graph, &layer.name) else {
            continue;
        };
        let w = tensors::read(qnet.params(), &layer.weight_key())?;
        let (weight, gpfq_error) = match &p.method {
            Method::Rtn | Method::PrunedTernary { .. } => {
                let rounded = p.method.data_free(&w, &layer.weight_shape, scheme, p.granularity);
                (
                    rounded.ok_or_else(|| param("method", "needs calibration data"))??,
                    None,
                )
            }
            Method::Gpfq(gp) => {
                let (xf, xq) = gpfq_inputs(&reference, &qnet, layer, calib, p.batch_size, gp.max_rows)?;
                let g = gpfq::quantize_layer(&w, &layer.weight_shape, &xf, &xq, scheme, p.granularity, gp)?;
                (g.weight, Some(g.relative_error))
            }
        };
        tensors::write(qnet.params(), &layer.weight_key(), weight.dequantize())?;
        layers.push(QuantizedLayer {
            name: layer.name.clone(),
            weight,
            input: None,
            gpfq_error,
        });
    }

    let grids = calibrate(&qnet, &graph, params, &layers, calib)?;
    for l in &mut layers {
        l.input = grids.get(&l.name).copied();
    }
    if p.bias_correction {
        // Correct with the activation grids in place, so the shift covers their error too.
        let act: Vec<(String, ActQuant)> = layers
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.input?)))
            .collect();
        let hook: Arc<dyn LayerHook> = Arc::new(ActHook::new(&act));
        qnet.add_hook(hook.clone());
        let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
        let corrected = bias::correct(&reference, &qnet, &graph, &fold, &names, calib, p.batch_size);
        qnet.remove_hook(&hook);
        corrected?;
    }
    let info = QuantInfo {
        scheme: p.scheme,
        granularity: p.granularity,
        method: p.method,
        first_last_bits: p.first_last_bits,
        act: p.act,
        fold,
        bias_correction: p.bias_correction,
        calib_images: if params.needs_calibration() { n_calib } else { 0 },
    };
    QuantModel::assemble(qnet, config.clone(), graph, layers, info)
}
