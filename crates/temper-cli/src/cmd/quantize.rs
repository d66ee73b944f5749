//! `temper quantize`: post-training quantization of a model to a packed safetensors file.

use crate::args::{check_fit, check_quantizable, load_model, DataArgs, DeviceArgs, ModelArgs, WeightsArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_core::Classifier;
use temper_quant::mixed::{allocate, sensitivity, SizeBudget};
use temper_quant::{
    eval, export, quantize, ActCalibration, ActParams, AlphabetScale, GpfqParams, Granularity, Method,
    QuantModel, QuantParams, WeightScheme,
};

/// How to quantize, shared by `temper quantize` and `temper quant sweep`.
#[derive(Args, Debug, Clone)]
pub struct QuantOpts {
    /// Rounding: rtn (round to nearest) or gpfq (greedy path-following, uses calibration).
    #[arg(long, default_value = "rtn")]
    pub quantizer: String,
    /// One weight step per output channel instead of one per tensor.
    #[arg(long)]
    pub per_channel: bool,
    /// Asymmetric uniform grids (with zero points); rtn only.
    #[arg(long)]
    pub asymmetric: bool,
    /// Quantize the input of every quantized layer to this many bits (2-8), per tensor,
    /// calibrated on --calib images; weight-only when omitted.
    #[arg(long)]
    pub act_bits: Option<u8>,
    /// Activation range calibration: minmax, percentile[:P] (default 99.99) or mse.
    #[arg(long, default_value = "minmax")]
    pub act_calib: String,
    /// Calibration images, drawn (seeded) from the train split of the data set.
    #[arg(long, default_value_t = 512)]
    pub calib: usize,
    /// Bit width of the first and last layers (weights, and inputs with --act-bits); 0 treats
    /// them like the others.
    #[arg(long, default_value_t = 8)]
    pub first_last_bits: u8,
    /// Keep BatchNorm separate instead of folding it into the convolution before it.
    #[arg(long)]
    pub no_fold: bool,
    /// Shift biases by the mean output error on the calibration images.
    #[arg(long)]
    pub bias_correction: bool,
    /// GPFQ alphabet scale C: auto (searched per channel or layer) or a number.
    #[arg(long, default_value = "auto")]
    pub gpfq_c: String,
    /// GPFQ: most input rows (patches) per layer.
    #[arg(long, default_value_t = 32_768)]
    pub gpfq_rows: usize,
}

impl QuantOpts {
    /// The quantization settings for weight grid `scheme`.
    pub fn params(&self, scheme: WeightScheme, batch_size: usize) -> Result<QuantParams> {
        let gpfq = GpfqParams {
            c: AlphabetScale::parse(&self.gpfq_c)?,
            max_rows: self.gpfq_rows,
        };
        let mut p = QuantParams::new(scheme);
        p.method = Method::parse(&self.quantizer, gpfq)?;
        p.granularity = if self.per_channel {
            Granularity::PerChannel
        } else {
            Granularity::PerTensor
        };
        p.first_last_bits = (self.first_last_bits != 0).then_some(self.first_last_bits);
        p.act = match self.act_bits {
            Some(bits) => Some(ActParams {
                bits,
                calibration: ActCalibration::parse(&self.act_calib)?,
            }),
            None => None,
        };
        p.fold_batchnorm = !self.no_fold;
        p.bias_correction = self.bias_correction;
        p.batch_size = batch_size;
        Ok(p)
    }

    /// The calibration set: `--calib` images of the train split of `data`'s data set, or
    /// `None` for `--calib 0`.
    pub fn calibration(&self, data: &DataArgs) -> Result<Option<temper_data::Dataset>> {
        if self.calib == 0 {
            return Ok(None);
        }
        let train = temper_data::load(&data.dataset, data.data_dir.as_deref(), temper_data::Split::Train)
            .with_context(|| format!("calibration images come from the train split of {}", data.dataset))?;
        Ok(Some(eval::calibration_set(&train, self.calib, "calibration")?))
    }
}

/// The images of a calibration set on the model's device, `(0, C, H, W)` for none.
pub fn calibration_tensor(
    set: Option<&temper_data::Dataset>,
    model: &dyn Classifier,
) -> Result<candle_core::Tensor> {
    match set {
        Some(s) if !s.is_empty() => Ok(s.to_batch(model.device())?.images),
        _ => {
            let [c, h, w] = model.input_shape();
            Ok(candle_core::Tensor::zeros(
                (0, c, h, w),
                candle_core::DType::F32,
                model.device(),
            )?)
        }
    }
}

/// Arguments of `temper quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The float model (required).
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Weight grid: a width of 2 to 8 bits, ternary or binary.
    #[arg(long, short = 'b', default_value = "8")]
    bits: String,
    #[command(flatten)]
    quant: QuantOpts,
    /// Mixed precision: pick per-layer widths from --mixed-bits so the quantized weights fit
    /// this budget, e.g. 4.5bits (average per weight) or 40kb.
    #[arg(long)]
    size_budget: Option<String>,
    /// Candidate widths for --size-budget.
    #[arg(long, default_value = "8,6,4,3,2")]
    mixed_bits: String,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Folder to write quantized.safetensors into (packed integer weights, scales, metadata).
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    out: PathBuf,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

fn kib(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

/// The file name `temper quantize` writes into its `--out` folder.
pub const QUANTIZED_FILE: &str = "quantized.safetensors";

/// One line per quantized layer: weight grid, storage, input grid, GPFQ error.
pub fn layers_text(q: &QuantModel) -> String {
    let mut out = format!(
        "  {:<28} {:>18} {:>14} {:>10}  input grid\n",
        "layer", "shape", "weights", "bytes"
    );
    for l in q.layers() {
        let input = match l.input {
            Some(a) => {
                let (lo, hi) = a.range();
                format!("{} bits [{lo:.3}, {hi:.3}]", a.bits)
            }
            None => "float".into(),
        };
        let err = l
            .gpfq_error
            .map_or(String::new(), |e| format!("  (gpfq error {e:.4})"));
        out.push_str(&format!(
            "  {:<28} {:>18} {:>14} {:>10}  {input}{err}\n",
            l.name,
            format!("{:?}", l.weight.shape()),
            format!(
                "{} {}",
                l.weight.scheme(),
                if l.weight.scale().len() > 1 { "pc" } else { "pt" }
            ),
            l.weight.stored_bytes(),
        ));
    }
    out
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let device = a.device.init()?;
    let cfg = a.model.config()?;
    let weights = a.weights.required()?.to_path_buf();
    let model = load_model(&cfg, Some(&weights), a.weights.strictness(), &device)?;
    check_quantizable(&model)?;
    // The file's recorded normalisation, if any, is part of the configuration quantized.
    let (cfg, _) = temper_models::config_for_file(&cfg, &weights)?;
    let data = a.data.load()?;
    check_fit(&model, &data)?;
    if a.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    // Progress goes to stderr under --json (`say!`), so stdout is the JSON alone.
    let json = a.json;
    let scheme = WeightScheme::parse(&a.bits, !a.quant.asymmetric)?;
    let mut params = a.quant.params(scheme, a.batch_size)?;
    let calib_set = a.quant.calibration(&a.data)?;
    let calib = calibration_tensor(calib_set.as_ref(), &model)?;
    let n_calib = calib_set.as_ref().map_or(0, |s| s.len());
    say!(
        json,
        "model:    {} ({} parameters) from {}",
        model.info().name,
        model.params().num_trainable(),
        weights.display()
    );
    say!(
        json,
        "data:     {} ({} images); calibration: {n_calib} images of the train split",
        data.name(),
        data.len()
    );

    if let Some(budget) = &a.size_budget {
        let budget = SizeBudget::parse(budget)?;
        let candidates = WeightScheme::parse_list(&a.mixed_bits, !a.quant.asymmetric)?;
        let Some(held) = &calib_set else {
            anyhow::bail!(
                "--size-budget measures layer sensitivities on the calibration images: use --calib N"
            );
        };
        let sens = sensitivity(&model, &cfg, &calib, &calib, held.labels(), &candidates, &params)?;
        say!(
            json,
            "sensitivity (accuracy points lost with only that layer quantized, calibration images):"
        );
        for l in &sens.layers {
            let cells: Vec<String> = l
                .trials
                .iter()
                .map(|t| format!("{} {:5.2}", t.scheme, 100.0 * t.drop))
                .collect();
            say!(json, "  {:<28} {}", l.layer, cells.join("  "));
        }
        let mut pinned = std::collections::BTreeMap::new();
        if let Some(b) = params.first_last_bits {
            let edge = WeightScheme::Uniform {
                bits: b,
                symmetric: !a.quant.asymmetric,
            };
            if !candidates.contains(&edge) {
                anyhow::bail!("--first-last-bits {b} must be one of --mixed-bits (or 0)");
            }
            let (first, last) = (sens.layers.first(), sens.layers.last());
            for l in first.into_iter().chain(last) {
                pinned.insert(l.layer.clone(), edge);
            }
        }
        let alloc = allocate(&sens, budget, &pinned)?;
        say!(
            json,
            "mixed precision: {} of {} budget bytes",
            alloc.bytes,
            alloc.budget
        );
        params.layers = alloc.precisions();
    }

    let params = params.check()?;
    let start = std::time::Instant::now();
    let q = quantize(&model, &cfg, &calib, &params)?;
    let secs = start.elapsed().as_secs_f64();
    let info = q.quant_info();
    let fold = &info.fold;
    say!(
        json,
        "quantize: {}; BatchNorm folded {} (kept in float {}); {secs:.1} s",
        info.describe(),
        fold.folded.len(),
        fold.kept.len(),
    );
    say!(json, "{}", layers_text(&q));

    let before = eval::accuracy(&model, &data, a.batch_size)?;
    let after = eval::accuracy(&q, &data, a.batch_size)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create '{}'", a.out.display()))?;
    let out = a.out.join(QUANTIZED_FILE);
    let report = export::save(&q, &out).with_context(|| format!("cannot write '{}'", out.display()))?;
    let weights_file = std::fs::metadata(&weights)
        .map(|m| m.len())
        .unwrap_or(report.float_bytes);
    if json {
        let summary = serde_json::json!({
            "model": model.info().name,
            "weights": weights.display().to_string(),
            "quantization": info.describe(),
            "file": out.display().to_string(),
            "clean_float": before,
            "clean_quantized": after,
            "float_file_bytes": weights_file,
            "quantized_bytes": report.quantized_bytes,
            "ratio_f32": report.ratio(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!();
    println!(
        "clean accuracy: float {:.2}% -> quantized {:.2}% ({:+.2} points)",
        100.0 * before,
        100.0 * after,
        100.0 * (after - before)
    );
    println!("float file:     {} ({})", kib(weights_file), weights.display());
    println!(
        "quantized file: {} ({})",
        kib(report.quantized_bytes),
        out.display()
    );
    println!(
        "compression:    {:.2}x ({:.2}x against the same tensors saved as f32)",
        weights_file as f64 / report.quantized_bytes.max(1) as f64,
        report.ratio()
    );
    Ok(())
}
