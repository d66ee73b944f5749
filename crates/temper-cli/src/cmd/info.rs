//! `temper info`.

use anyhow::Result;
use clap::Args;

/// Arguments of `temper info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let features = temper_core::device::compiled_features();
    let devices = temper_core::device::available();
    // What a model on the CPU runs with (TEMPER_KERNELS may override it), and what a model
    // on a CUDA device runs with in this build (cuDNN convolutions with `--features cudnn`).
    let cpu_kernels = temper_core::kernels::default_kernels(&candle_core::Device::Cpu)?;
    let gpu_kernels = temper_core::kernels::cuda_default_name();
    if args.json {
        let v = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "features": features,
            "devices": devices,
            "kernels": cpu_kernels.name(),
            "gpu_kernels": gpu_kernels,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("temper {}", env!("CARGO_PKG_VERSION"));
    println!(
        "features: {}",
        if features.is_empty() {
            "cpu only (build with --features cuda, cudnn or metal for GPUs)".to_string()
        } else {
            features.join(", ")
        }
    );
    println!("devices:  {}", devices.join(", "));
    println!(
        "kernels:  {} on cpu, {gpu_kernels} on gpu (TEMPER_KERNELS=candle forces the reference)",
        cpu_kernels.name()
    );
    println!(
        "threads:  {} (set RAYON_NUM_THREADS to change)",
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
