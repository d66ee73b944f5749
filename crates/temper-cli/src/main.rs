//! `temper`: make image classifiers robust and small.
//!
//! Each subcommand lives in its own module under `cmd/`.

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
    /// Version, compiled features and the devices this machine offers.
    Info(cmd::info::InfoArgs),
    /// The model zoo: list models, print a model's layers, parameters and cost.
    #[command(subcommand)]
    Model(cmd::model::ModelCmd),
    /// Data sets: inspect counts, class balance, channel statistics and sample images.
    #[command(subcommand)]
    Data(cmd::data::DataCmd),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEMPER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => cmd::info::run(a),
        Command::Model(c) => cmd::model::run(c),
        Command::Data(c) => cmd::data::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
