//! One module per subcommand.

pub mod attack;
pub mod data;
pub mod demo;
pub mod eval;
pub mod gpu_check;
pub mod harden;
pub mod info;
pub mod interpolate;
pub mod model;
pub mod quant;
pub mod quantize;
pub mod report;
pub mod sched;
pub mod train;

/// Prints a report a command has written: its JSON on stdout under `--json`, else its
/// Markdown; then the files written (on stderr under `--json`, so stdout is the JSON alone).
pub fn print_written(
    json: bool,
    report: &impl serde::Serialize,
    markdown: &str,
    files: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!();
        print!("{markdown}");
    }
    say!(json, "");
    for f in files {
        say!(json, "wrote {}", f.display());
    }
    Ok(())
}
