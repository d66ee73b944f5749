//! `temper quant`: robustness of quantized models across bit widths, and quantized files.

use crate::args::{
    check_fit, check_quantizable, check_randomized, load_model, AttackOpts, DataArgs, DeviceArgs, ModelArgs,
    WeightsArgs,
};
use crate::cmd::quantize::{calibration_tensor, layers_text, QuantOpts};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use temper_core::Classifier;
use temper_quant::sweep::{sweep, SweepParams, SweepRow};
use temper_quant::{eval, export, WeightScheme};

/// Quantized models: sweep bit widths under attack, inspect a quantized file.
#[derive(Subcommand, Debug)]
pub enum QuantCmd {
    /// Quantize to each bit width and report clean accuracy, robust accuracy through the
    /// quantizer (white-box, straight-through gradients) and under transfer attacks crafted on
    /// the float model, with file sizes; writes sweep.json, sweep.md and sweep.png.
    Sweep(Box<SweepArgs>),
    /// Print a quantized file's layers, schemes and sizes; with --dataset, its clean accuracy.
    Inspect(InspectArgs),
}

/// Arguments of `temper quant sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The float model (required).
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Weight grids to try: widths of 2 to 8 bits, ternary, binary.
    #[arg(long, short = 'b', default_value = "8,6,4,3,2,ternary")]
    bits: String,
    #[command(flatten)]
    quant: QuantOpts,
    #[arg(
        long,
        short = 'a',
        visible_alias = "attack",
        default_value = "pgd-20",
        help = concat!("Attacks, comma-separated: ", attack_names!())
    )]
    attacks: String,
    /// Attack settings; `--norm` and `--eps` also define the threat model.
    #[command(flatten)]
    attack: AttackOpts,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Folder for sweep.json, sweep.md and sweep.png (`--report` is the same flag).
    #[arg(long, short = 'o', visible_alias = "report", value_name = "OUT_DIR")]
    out: PathBuf,
    /// Print the sweep as JSON (sweep.json's content) instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Arguments of `temper quant inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A file written by `temper quantize`.
    file: PathBuf,
    /// Also measure clean accuracy on this data set (test split).
    #[arg(long, short = 'd')]
    dataset: Option<String>,
    /// Directory holding the data set's files (not needed for mnist10k).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(c: QuantCmd) -> Result<()> {
    match c {
        QuantCmd::Sweep(a) => run_sweep(*a),
        QuantCmd::Inspect(a) => run_inspect(a),
    }
}

fn pct(v: f64) -> String {
    format!("{:6.2}%", 100.0 * v)
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let device = a.device.init()?;
    let cfg = a.model.config()?;
    let weights = a.weights.required()?.to_path_buf();
    let model = load_model(&cfg, Some(&weights), a.weights.strictness(), &device)?;
    check_quantizable(&model)?;
    let (cfg, _) = temper_models::config_for_file(&cfg, &weights)?;
    let data = a.data.load()?;
    check_fit(&model, &data)?;
    let schemes = WeightScheme::parse_list(&a.bits, !a.quant.asymmetric)?;
    let (settings, specs, attacks) = a.attack.build_list(&a.attacks, data.shape())?;
    check_randomized(&model, &specs)?;
    let params = SweepParams {
        schemes,
        quant: a.quant.params(WeightScheme::bits(8), a.batch_size)?,
        batch_size: a.batch_size,
        threat: temper_eval::Threat::new(settings.norm, settings.eps)?,
        groups: Vec::new(),
    }
    .check()?;
    let calib_set = a.quant.calibration(&a.data)?;
    let calib = calibration_tensor(calib_set.as_ref(), &model)?;
    let n_calib = calib_set.as_ref().map_or(0, |s| s.len());
    // Progress goes to stderr under --json (`say!`), so stdout is the JSON alone.
    let json = a.json;
    say!(json, "model:   {} from {}", model.info().name, weights.display());
    say!(
        json,
        "data:    {} ({} images); calibration: {n_calib} images of the train split",
        data.name(),
        data.len()
    );
    for (n, at) in &attacks {
        say!(json, "attack:  {n} = {}", at.name());
    }
    say!(
        json,
        "threat:  {} eps {}",
        settings.norm.name(),
        temper_eval::fmt_eps(settings.eps)
    );
    let names: Vec<String> = attacks.iter().map(|(n, _)| n.clone()).collect();
    let start = std::time::Instant::now();
    let mut print_row = |r: &SweepRow| {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                let t = if r.scheme.is_none() {
                    "(source)".to_string()
                } else {
                    pct(r.transfer[n])
                };
                format!("{n} through {}  transfer {t}", pct(r.robust[n]))
            })
            .collect();
        say!(
            json,
            "{:>10}  clean {}  {}  file {:>9.1} KiB ({:5.2}x)  [{:.0} s]",
            r.label,
            pct(r.clean),
            cells.join("  "),
            r.file_bytes as f64 / 1024.0,
            r.ratio,
            start.elapsed().as_secs_f64()
        );
    };
    let report = sweep(&model, &cfg, &calib, &data, &attacks, &params, &mut print_row)?;
    let files = report
        .write(&a.out)
        .with_context(|| format!("cannot write the report to '{}'", a.out.display()))?;
    crate::cmd::print_written(json, &report, &report.to_markdown(), &files)
}

fn run_inspect(a: InspectArgs) -> Result<()> {
    let device = a.device.init()?;
    if !export::is_quantized(&a.file)? {
        anyhow::bail!(
            "'{}' is not a file written by `temper quantize`",
            a.file.display()
        );
    }
    let q = export::load(&a.file, &device)?;
    let size = std::fs::metadata(&a.file)
        .with_context(|| format!("cannot read '{}'", a.file.display()))?
        .len();
    let info = q.quant_info();
    let clean = match &a.dataset {
        Some(name) => {
            let data = DataArgs {
                dataset: name.clone(),
                data_dir: a.data_dir.clone(),
                split: "test".into(),
                limit: None,
            }
            .load()?;
            check_fit(&q, &data)?;
            Some((data.name().to_string(), eval::accuracy(&q, &data, 250)?))
        }
        None => None,
    };
    let float = export::float_bytes(&q)?;
    if a.json {
        let layers: Vec<serde_json::Value> = q
            .layers()
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name,
                    "shape": l.weight.shape(),
                    "scheme": l.weight.scheme().to_string(),
                    "bytes": l.weight.stored_bytes(),
                    "input_bits": l.input.map(|i| i.bits),
                })
            })
            .collect();
        let v = serde_json::json!({
            "file": a.file.display().to_string(),
            "file_bytes": size,
            "model": q.info().name,
            "num_classes": q.num_classes(),
            "input_shape": q.input_shape(),
            "quantization": info.describe(),
            "calib_images": info.calib_images,
            "folded": info.fold.folded,
            "kept_in_float": info.fold.kept,
            "quantized_weight_bytes": q.quantized_weight_bytes(),
            "ratio_f32": float as f64 / size.max(1) as f64,
            "layers": layers,
            "clean": clean.as_ref().map(|(d, acc)| serde_json::json!({"dataset": d, "accuracy": acc})),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("file:     {} ({:.1} KiB)", a.file.display(), size as f64 / 1024.0);
    println!(
        "model:    {} ({} classes, input {:?})",
        q.info().name,
        q.num_classes(),
        q.input_shape()
    );
    println!(
        "scheme:   {}, {} calibration images",
        info.describe(),
        info.calib_images
    );
    let kept = if info.fold.kept.is_empty() {
        "none".to_string()
    } else {
        info.fold.kept.join(", ")
    };
    println!(
        "folded:   {} BatchNorms; kept in float: {kept}",
        info.fold.folded.len()
    );
    print!("{}", layers_text(&q));
    println!(
        "size:     {:.1} KiB quantized weights; {:.2}x smaller than f32",
        q.quantized_weight_bytes() as f64 / 1024.0,
        float as f64 / size.max(1) as f64
    );
    if let Some((name, acc)) = clean {
        println!("clean accuracy on {name}: {:.2}%", 100.0 * acc);
    }
    Ok(())
}
