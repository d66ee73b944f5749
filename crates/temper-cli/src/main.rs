//! `temper`: make image classifiers robust and small.
//!
//! Each subcommand lives in its own module under `cmd/`.

/// Human-readable output: `println!`, or `eprintln!` when `--json` (the first argument) keeps
/// stdout for the JSON alone. Defined before the modules so every command can use it.
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

/// The attack names every `--attacks` takes, for their help texts (a literal, so `concat!`
/// can join it to each command's own words).
macro_rules! attack_names {
    () => {
        "fgsm, fgsm-rs, pgd, pgd-N, pgd-l2-N, pgd-cw-N (PGD on the CW margin loss), cw, cw-N; \
         AutoAttack's attacks apgd-ce, apgd-dlr, apgd-t (APGD, 100 iterations; suffixes -l2 or \
         -l1, -N iterations, -rN restarts, -eotN gradients averaged per step, e.g. \
         apgd-ce-eot20), fab (untargeted) and fab-t (on the 9 most likely other classes; -l2, \
         -N, -rN), square, square-N (N queries, default 5000; -l2); autoattack (apgd-ce, \
         apgd-t, fab-t, square), autoattack-plus (apgd-ce-r5, apgd-dlr-r5, fab-r5, square, \
         apgd-t, fab-t) and autoattack-rand (apgd-ce and apgd-dlr with eot20), each standing \
         for its attacks"
    };
}

mod args;
mod cmd;
mod fmt;

use clap::{Parser, Subcommand};

/// Temper: adversarial fine-tuning, attacks, evaluation and quantization for image
/// classifiers, in Rust on candle.
///
/// Inputs are pixels in [0,1]; normalisation lives inside the model; eps is in pixel units
/// (8/255); weight files are safetensors with PyTorch state_dict names.
#[derive(Parser, Debug)]
#[command(name = "temper", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job on the bundled data: train, attack, adversarially fine-tune, report.
    Demo(cmd::demo::DemoArgs),
    /// Version, compiled features and the devices this machine offers.
    Info(cmd::info::InfoArgs),
    /// The model zoo: list models, print a model's layers, parameters and cost.
    #[command(subcommand)]
    Model(cmd::model::ModelCmd),
    /// Attack a model on a data set and report clean and robust accuracy.
    Attack(Box<cmd::attack::AttackArgs>),
    /// Train a model: natural, PGD-AT, Fast-AT (fgsm-rs) or TRADES.
    Train(Box<cmd::train::TrainArgs>),
    /// Adversarially fine-tune pre-trained weights (PGD, slow-start-fast-decay schedule).
    Finetune(Box<cmd::train::FinetuneArgs>),
    /// Data sets: inspect counts, class balance, channel statistics and sample images.
    #[command(subcommand)]
    Data(cmd::data::DataCmd),
    /// Evaluate robustness: clean, per-attack and worst-case accuracy, eps sweeps,
    /// gradient-masking checks; writes report.json, report.md and charts.
    Eval(Box<cmd::eval::EvalArgs>),
    /// Redraw the training-curve charts of a run from RUN_DIR/metrics.jsonl.
    Report(cmd::report::ReportArgs),
    /// Learning-rate schedules: draw one.
    #[command(subcommand)]
    Sched(cmd::sched::SchedCmd),
    /// Quantize a model after training (uniform 2-8 bit, ternary, binary; round to nearest or
    /// GPFQ) to a packed safetensors file; prints accuracy before and after and the file sizes.
    Quantize(Box<cmd::quantize::QuantizeArgs>),
    /// Quantized models: robustness across bit widths (through the quantizer and transfer),
    /// inspect a quantized file.
    #[command(subcommand)]
    Quant(cmd::quant::QuantCmd),
    /// Evaluate the models on the line between two checkpoints of one architecture (clean and
    /// robust accuracy per alpha); writes interpolation.json, .md and the trade-off chart.
    Interpolate(Box<cmd::interpolate::InterpolateArgs>),
    /// From a pre-trained checkpoint to a robust, quantized model with its evidence:
    /// adversarial fine-tuning, quantization per bit width (GPFQ or quantization-aware),
    /// the robustness x bit-width matrix through each quantizer, report and packed files.
    Harden(Box<cmd::harden::HardenArgs>),
    /// Check a device backend where it runs: every kernel and whole models against the CPU,
    /// and a benchmark beside PyTorch; one JSON document (used by `cargo xtask gpu-check`).
    #[command(hide = true)]
    GpuCheck(Box<cmd::gpu_check::GpuCheckArgs>),
}

fn main() -> std::process::ExitCode {
    // Before any tensor operation: candle reads this once, when its CPU pool starts.
    temper_core::device::tune_cpu_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEMPER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Model(c) => cmd::model::run(c),
        Command::Attack(a) => cmd::attack::run(*a),
        Command::Train(a) => cmd::train::run_train(*a),
        Command::Finetune(a) => cmd::train::run_finetune(*a),
        Command::Data(c) => cmd::data::run(c),
        Command::Eval(a) => cmd::eval::run(*a),
        Command::Report(a) => cmd::report::run(a),
        Command::Sched(c) => cmd::sched::run(c),
        Command::Quantize(a) => cmd::quantize::run(*a),
        Command::Quant(c) => cmd::quant::run(c),
        Command::Interpolate(a) => cmd::interpolate::run(*a),
        Command::Harden(a) => cmd::harden::run(*a),
        Command::GpuCheck(a) => cmd::gpu_check::run(*a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
