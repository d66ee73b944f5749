//! `temper harden`: from a pre-trained checkpoint to a robust, quantized model with its
//! evidence (the pipeline is `temper_harden::harden`).

use crate::args::{DeviceArgs, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_quant::qat::QatParams;
use temper_train::{Method, TrainConfig};

/// Arguments of `temper harden`.
#[derive(Args, Debug)]
pub struct HardenArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The pre-trained (e.g. naturally trained) weights to harden.
    #[arg(long, short = 'w')]
    weights: PathBuf,
    /// Data set: mnist10k (bundled), mnist, fashion-mnist, cifar10, cifar100, image-folder.
    #[arg(long, short = 'd', default_value = "mnist10k")]
    dataset: String,
    /// Directory of the data set's files (not needed for mnist10k).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Weight grids, one matrix row each: widths of 2 to 8 bits, ternary (TWN), binary, ptq
    /// or ptq:prune=F (pruning ternary quantization).
    #[arg(long, short = 'b', default_value = "8,4,2,ternary")]
    bits: String,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// Width of the first and last layers; 0 quantizes them like the others.
    #[arg(long, default_value_t = 8)]
    first_last_bits: u8,
    /// L-inf budget of fine-tuning and of the evaluation, a decimal or a fraction. Default:
    /// 8/255, and 0.1 for 28x28 digits rather than the usual 0.3, as in `temper demo`: two
    /// epochs of fine-tuning at 0.3 collapse small-cnn to chance (measured: 13.5% validation
    /// clean accuracy).
    #[arg(long)]
    eps: Option<String>,
    /// Epochs of adversarial fine-tuning.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Fine-tuning learning-rate schedule (see `temper sched`).
    #[arg(long, default_value = "ssfd")]
    lr_schedule: String,
    /// PGD steps of the fine-tuning attack (step size 2.5 eps / steps).
    #[arg(long, default_value_t = 10)]
    attack_steps: usize,
    /// Fine-tuning batch size.
    #[arg(long, default_value_t = 64)]
    train_batch_size: usize,
    /// Train on only the first N digits of the training part (all when absent).
    #[arg(long)]
    train_size: Option<usize>,
    /// Validation images (clean and PGD-10) after each fine-tuning epoch.
    #[arg(long, default_value_t = 200)]
    val_size: usize,
    /// Epochs of quantization-aware adversarial fine-tuning per grid (through the quantizer,
    /// straight-through gradients); 0 quantizes after training with GPFQ.
    #[arg(long, default_value_t = 0)]
    qat_epochs: usize,
    /// Learning-rate schedule of quantization-aware fine-tuning.
    #[arg(long, default_value = "constant:lr=0.005")]
    qat_lr_schedule: String,
    /// GPFQ calibration images, drawn (seeded) from the train split.
    #[arg(long, default_value_t = 256)]
    calib: usize,
    /// Attacks of the matrix, each run through every quantized model; autoattack stands for
    /// its components and gets a worst-case column.
    #[arg(long, short = 'a', default_value = "pgd-20,autoattack")]
    attacks: String,
    /// Test images evaluated (the first N of the test split). AutoAttack runs every attack on
    /// each image through every quantized model: on 2 cores about 1 to 2 minutes per row per
    /// 100 robust small-cnn digits.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Output folder: finetune/ (the run), qat-*/ (quantization-aware runs), models/ (packed
    /// files), harden.json, harden.md, matrix.png, sweep.png. Runs already there with the same
    /// settings are reused.
    #[arg(long, short = 'o', value_name = "OUT_DIR")]
    out: PathBuf,
    /// Print harden.json's content on stdout; progress goes to stderr.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: HardenArgs) -> Result<()> {
    let device = a.device.init()?;
    let model = a.model.config()?;
    let (model, _) = temper_models::config_for_file(&model, &a.weights)?;
    let mut ft = TrainConfig::new(Method::Finetune, model.get().clone(), &a.dataset);
    ft.weights = Some(a.weights.clone());
    ft.data_dir = a.data_dir.clone();
    ft.seed = a.device.seed;
    ft.epochs = a.epochs;
    ft.lr_schedule = a.lr_schedule.clone();
    ft.batch_size = a.train_batch_size;
    ft.val_size = a.val_size;
    ft.train_size = a.train_size;
    let m = model.get();
    let digits = m.in_channels == 1 && m.input_size == (28, 28);
    ft.threat.eps = match &a.eps {
        Some(e) => temper_attacks::spec::parse_number(e, "eps")?,
        None if digits => 0.1,
        None => ft.threat.eps,
    };
    ft.threat.steps = a.attack_steps;
    ft.threat.alpha = 2.5 * ft.threat.eps / a.attack_steps.max(1) as f64;
    let grids = a
        .bits
        .split(',')
        .map(|g| {
            let mut p = QatParams::parse(g)?;
            if a.per_tensor {
                p.granularity = temper_quant::Granularity::PerTensor;
            }
            p.first_last_bits = (a.first_last_bits != 0).then_some(a.first_last_bits);
            Ok(p)
        })
        .collect::<Result<Vec<_>>>()?;
    let params = temper_harden::HardenParams {
        grids,
        qat_epochs: a.qat_epochs,
        qat_lr_schedule: a.qat_lr_schedule.clone(),
        calib: a.calib,
        limit: Some(a.limit),
        batch_size: a.batch_size,
        ..temper_harden::HardenParams::new(ft)
    }
    .check()?;
    let json = a.json;
    let mut say = |line: &str| say!(json, "{line}");
    let report = temper_harden::harden(&params, &a.attacks, &a.out, &device, &mut say)
        .with_context(|| format!("hardening '{}' into '{}'", a.weights.display(), a.out.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        let md = report.to_markdown();
        // The matrix and the files; the details are in harden.md.
        print!("{}", md.split("## Details").next().unwrap_or(&md));
    }
    for f in ["harden.json", "harden.md", "matrix.png", "sweep.png"] {
        say!(json, "wrote {}", a.out.join(f).display());
    }
    Ok(())
}
