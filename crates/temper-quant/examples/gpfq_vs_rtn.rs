//! GPFQ against round to nearest on one model: clean accuracy, the logits' relative error and
//! every quantized layer's output error, per bit width and granularity, as a Markdown table.
//!
//! ```text
//! cargo run --release -p temper-quant --example gpfq_vs_rtn -- WEIGHTS [BITS] [CALIB] [ROWS] [C]
//! ```
//!
//! `WEIGHTS`: a small-cnn state dict; `BITS`: e.g. `4,3,2` (default); `CALIB`: calibration
//! images from the mnist10k *train* split (512); `ROWS`: GPFQ rows per layer (32768); `C`:
//! GPFQ's alphabet scale, `auto` (searched on the calibration rows) or a number. Accuracy and
//! errors are measured on the 2000 test images, which nothing here is tuned on. The first and
//! last layers keep 8 bits, as `temper quantize` does by default.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use temper_core::Classifier;
use temper_models::{ModelConfig, ModelKind};
use temper_quant::{
    eval, quantize, AlphabetScale, GpfqParams, Granularity, Method, QuantParams, WeightScheme,
};

fn logits(model: &dyn Classifier, x: &Tensor) -> Result<Tensor> {
    let opts = temper_core::ForwardOpts {
        mode: temper_core::Mode::Eval,
        param_grads: false,
    };
    Ok(model.forward_opts(x, opts)?)
}

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let num = f64::from((a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
    let den = f64::from(b.sqr()?.sum_all()?.to_scalar::<f32>()?);
    Ok((num / den.max(1e-30)).sqrt())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let weights = args
        .first()
        .context("usage: gpfq_vs_rtn WEIGHTS [BITS] [CALIB] [ROWS] [C]")?;
    let bits = args.get(1).map_or("4,3,2", String::as_str);
    let n_calib: usize = args.get(2).map_or(Ok(512), |s| s.parse())?;
    let rows: usize = args.get(3).map_or(Ok(32_768), |s| s.parse())?;
    let c = AlphabetScale::parse(args.get(4).map_or("auto", String::as_str))?;
    let dev = Device::Cpu;
    let cfg = ModelConfig::new(ModelKind::SmallCnn, 10).check()?;
    let (float, _) =
        temper_models::build_from_file(&cfg, weights, temper_core::weights::Strictness::Strict, &dev)?;
    let test = temper_data::load("mnist10k", None, temper_data::Split::Test)?;
    let train = temper_data::load("mnist10k", None, temper_data::Split::Train)?;
    let calib = eval::calibration_images(&train, n_calib, "calibration", &dev)?;
    let x = test.to_batch(&dev)?.images;
    let z = logits(&float, &x)?;
    let acc =
        |zq: &Tensor| -> Result<f64> { Ok(eval::agreement(&zq.argmax(1)?.to_vec1::<u32>()?, test.labels())) };
    println!(
        "{weights}: float clean {:.2}% on {} test images; {n_calib} calibration images (train split), GPFQ {rows} rows per layer, C {c:?}\n",
        100.0 * acc(&z)?,
        test.len()
    );
    println!("| bits | scales | method | clean | logit error | layer output errors | seconds |");
    println!("|---|---|---|---:|---:|---|---:|");
    for scheme in WeightScheme::parse_list(bits, true)? {
        for g in [Granularity::PerTensor, Granularity::PerChannel] {
            for gpfq in [false, true] {
                let mut p = QuantParams::new(scheme);
                p.granularity = g;
                if gpfq {
                    p.method = Method::Gpfq(GpfqParams { c, max_rows: rows });
                }
                let start = std::time::Instant::now();
                let q = quantize(&float, &cfg, &calib, &p.check()?)?;
                let secs = start.elapsed().as_secs_f64();
                let zq = logits(&q, &x)?;
                let layers = eval::layer_output_errors(&float, &q, &x, 500)?
                    .into_iter()
                    .map(|(n, e)| format!("{n} {e:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                println!(
                    "| {scheme} | {} | {} | {:.2}% | {:.4} | {layers} | {secs:.1} |",
                    g.name().replace('_', "-"),
                    if gpfq { "gpfq" } else { "rtn" },
                    100.0 * acc(&zq)?,
                    rel_err(&zq, &z)?,
                );
            }
        }
    }
    Ok(())
}
