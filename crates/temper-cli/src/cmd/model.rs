//! `temper model list` and `temper model summary`.

use crate::args::ModelArgs;
use crate::fmt::{si, thousands};
use anyhow::Result;
use clap::Subcommand;
use temper_core::Classifier;
use temper_models::ModelKind;

/// The `model` subcommands.
#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// List the models of the zoo.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's layer table, parameter count and multiply-accumulates per image.
    Summary {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelCmd) -> Result<()> {
    match cmd {
        ModelCmd::List { json: true } => {
            let v: Vec<serde_json::Value> = ModelKind::ALL
                .iter()
                .map(|k| {
                    serde_json::json!({
                        "name": k.name(), "input_shape": k.default_input(), "description": k.description(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        ModelCmd::List { json: false } => {
            println!("{:<16} {:<10} description", "name", "input");
            for k in ModelKind::ALL {
                let [c, h, w] = k.default_input();
                println!(
                    "{:<16} {:<10} {}",
                    k.name(),
                    format!("{c}x{h}x{w}"),
                    k.description()
                );
            }
            Ok(())
        }
        ModelCmd::Summary { model, json } => summary(&model, json),
    }
}

fn summary(args: &ModelArgs, json: bool) -> Result<()> {
    let cfg = args.config()?;
    // Zeroed parameters: the table needs shapes only, and VGG-16 has 138 M of them.
    let net = temper_models::build_zeroed(&cfg, &candle_core::Device::Cpu)?;
    let rows = temper_models::layer_table(&net)?;
    let params = net.params().num_trainable() as u64;
    let buffers: usize = net.params().buffers().map(|e| e.var.elem_count()).sum();
    let macs: u64 = rows.iter().map(|r| r.macs).sum();
    let info = net.info();
    if json {
        let v = serde_json::json!({
            "model": info.name, "num_classes": info.num_classes, "input_shape": info.input_shape,
            "parameters": params, "buffer_values": buffers, "macs_per_image": macs,
            "normalization": net.normalization(), "layers": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let [c, h, w] = info.input_shape;
    println!("{} ({} classes, input {c}x{h}x{w})", info.name, info.num_classes);
    println!();
    println!(
        "{:<36} {:<26} {:<16} {:>12} {:>14}",
        "layer", "type", "output", "params", "MACs"
    );
    for r in &rows {
        let out = r
            .output
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<36} {:<26} {:<16} {:>12} {:>14}",
            r.name,
            r.kind,
            out,
            thousands(r.params as u64),
            thousands(r.macs)
        );
    }
    println!();
    println!("Parameters:       {}", thousands(params));
    println!(
        "Buffers:          {} values (BatchNorm running statistics)",
        thousands(buffers as u64)
    );
    println!("MACs per image:   {} ({})", thousands(macs), si(macs as f64));
    println!(
        "f32 weight file:  {:.1} MB",
        (params as f64 + buffers as f64) * 4.0 / 1e6
    );
    Ok(())
}
