//! Project automation: `cargo xtask <task>`. Few dependencies, quick to compile.
//!
//! Tasks:
//! - `ci`: what `.ci/run` does (fmt check, clippy -D warnings, dependency invariants, tests).
//! - `invariants`: check the dependency boundaries of docs/ARCHITECTURE.md.
//! - `bench`: the speed benchmarks, each a ratio against a reference measured in the same run.
//! - `fixtures`: regenerate the PyTorch fixtures (needs python3 with torch, torchvision, timm).
//! - `cuda-build`: build the `cuda` feature as described in ../shared/cuda.md.
//! - `evidence`: the mnist10k experiments of issue 5 (natural, PGD-AT, fine-tuning with
//!   three schedules), evaluated with PGD-20; writes a Markdown table.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Library crates and the crates they must never depend on (docs/ARCHITECTURE.md).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "temper-core",
        &[
            "temper-models",
            "temper-data",
            "temper-attacks",
            "temper-sched",
            "temper-train",
            "temper-eval",
            "temper-quant",
            "temper-cli",
        ],
    ),
    (
        "temper-models",
        &[
            "temper-data",
            "temper-attacks",
            "temper-sched",
            "temper-train",
            "temper-eval",
            "temper-quant",
            "temper-cli",
        ],
    ),
    (
        "temper-data",
        &[
            "temper-models",
            "temper-attacks",
            "temper-sched",
            "temper-train",
            "temper-eval",
            "temper-quant",
            "temper-cli",
        ],
    ),
    (
        "temper-attacks",
        &[
            "temper-models",
            "temper-data",
            "temper-sched",
            "temper-train",
            "temper-eval",
            "temper-quant",
            "temper-cli",
        ],
    ),
    (
        "temper-sched",
        &[
            "temper-models",
            "temper-data",
            "temper-attacks",
            "temper-train",
            "temper-eval",
            "temper-quant",
            "temper-cli",
        ],
    ),
    (
        "temper-eval",
        &["temper-train", "temper-sched", "temper-quant", "temper-cli"],
    ),
    ("temper-quant", &["temper-train", "temper-sched", "temper-cli"]),
    ("temper-train", &["temper-eval", "temper-quant", "temper-cli"]),
];

fn invariants() -> Result<()> {
    let meta = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root())
        .output()?;
    let text = String::from_utf8_lossy(&meta.stdout);
    let mut failures = Vec::new();
    for (krate, banned) in FORBIDDEN {
        if !text.contains(&format!("\"name\":\"{krate}\"")) {
            continue; // Not created yet.
        }
        let out = cargo()
            .args(["tree", "-p", krate, "-e", "normal", "--prefix", "none"])
            .current_dir(root())
            .output()?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        for b in *banned {
            if tree.lines().any(|l| l.split_whitespace().next() == Some(b)) {
                failures.push(format!("Invariant broken: {krate} depends on {b}"));
            }
        }
        eprintln!("ok: {krate} depends on none of {}", banned.join(", "));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    invariants()?;
    // The README's test command.
    run(cargo().args(["test", "--workspace"]))
}

fn bench(args: &[String]) -> Result<()> {
    // Each benchmark is an example binary of the crate it measures; it prints its own table
    // and one JSON line with the ratio against the reference it ran beside.
    let all: &[(&str, &str, &[&str])] = &[
        ("data", "temper-data", &["bench_loader"]),
        ("attacks", "temper-attacks", &["bench_pgd"]),
    ];
    let meta = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root())
        .output()?;
    let text = String::from_utf8_lossy(&meta.stdout);
    for (name, krate, examples) in all {
        if !args.is_empty() && !args.iter().any(|a| a == name) {
            continue;
        }
        for ex in *examples {
            if !text.contains(&format!("examples/{ex}.rs")) {
                eprintln!("skip: {krate} has no example {ex} yet");
                continue;
            }
            let mut cmd = cargo();
            cmd.args(["run", "--release", "-p", krate, "--example", ex, "--"]);
            if *ex == "bench_loader" {
                // The CIFAR-10 JPEG folder, extracted from ../shared/data/cifar10 (skipped when absent).
                cmd.arg(std::env::var("TEMPER_CIFAR10_DIR").unwrap_or_else(|_| "../cifar10/train".into()));
            }
            run(&mut cmd)?;
        }
    }
    Ok(())
}

fn fixtures() -> Result<()> {
    let py = std::env::var("TEMPER_PYTHON").unwrap_or_else(|_| "python3".into());
    for script in [
        "tests/fixtures/models/make_fixtures.py",
        "tests/fixtures/kernels/make_fixtures.py",
    ] {
        run(Command::new(&py).arg(script))?;
    }
    Ok(())
}

/// One row of the evidence table.
struct Row {
    name: &'static str,
    run: PathBuf,
}

fn temper_bin() -> PathBuf {
    root().join("target/release/temper")
}

fn temper(args: &[&str]) -> Result<String> {
    eprintln!("$ temper {}", args.join(" "));
    let out = Command::new(temper_bin())
        .args(args)
        .current_dir(root())
        .output()?;
    if !out.status.success() {
        bail!(
            "temper {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads "robust accuracy:  NN.NN%" and "clean accuracy: NN.NN%" from `temper attack`.
fn accuracies(text: &str) -> (String, String) {
    let find = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().find(|w| w.ends_with('%')))
            .unwrap_or("?")
            .to_string()
    };
    (find("clean accuracy:"), find("robust accuracy:"))
}

/// Issue 5's first evidence on mnist10k with small-cnn: natural training, PGD-AT from
/// scratch, and adversarial fine-tuning of the natural model with SSFD, a step schedule and
/// a constant LR at equal epochs; PGD-20 robust test accuracy at eps 0.1 and 0.3 and cost.
fn evidence(args: &[String]) -> Result<()> {
    let out = root().join(args.first().map(String::as_str).unwrap_or("runs/evidence"));
    // Test images per evaluation: all 2,000 by default, fewer on a busy machine.
    let limit = args.get(1).cloned().unwrap_or_else(|| "2000".into());
    run(cargo().args(["build", "--release", "-p", "temper-cli"]))?;
    let o = |n: &str| out.join(n);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let threat = ["--eps", "0.1", "--alpha", "0.025", "--attack-steps", "10"];
    let common = [
        "--model",
        "small-cnn",
        "--dataset",
        "mnist10k",
        "--val-size",
        "500",
    ];
    let train = |name: &str, extra: &[&str]| -> Result<PathBuf> {
        let dir = o(name);
        if !dir.join("summary.json").exists() {
            let mut a: Vec<String> = extra.iter().map(|x| x.to_string()).collect();
            a.extend(common.iter().map(|x| x.to_string()));
            a.extend(["--out".to_string(), s(&dir)]);
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            print!("{}", temper(&refs)?);
        }
        Ok(dir)
    };
    let natural = train(
        "natural",
        &[
            "train",
            "--method",
            "natural",
            "--epochs",
            "5",
            "--lr-schedule",
            "step:lr=0.05,milestones=0.6/0.85",
        ],
    )?;
    let w = s(&natural.join("model.safetensors"));
    let mut pgd = vec![
        "train",
        "--method",
        "pgd-at",
        "--epochs",
        "8",
        "--lr-schedule",
        "step:lr=0.05,milestones=0.5/0.75",
    ];
    pgd.extend(threat);
    let pgd_at = train("pgd-at", &pgd)?;
    let mut rows = vec![
        Row {
            name: "natural (5 ep)",
            run: natural,
        },
        Row {
            name: "PGD-AT from scratch (8 ep)",
            run: pgd_at,
        },
    ];
    for (name, sched) in [
        ("ssfd", "ssfd:peak=0.05"),
        ("step", "step:lr=0.05,milestones=0.5/0.75"),
        ("constant", "constant:lr=0.05"),
    ] {
        let mut a = vec![
            "finetune",
            "--weights",
            w.as_str(),
            "--epochs",
            "2",
            "--lr-schedule",
            sched,
        ];
        a.extend(threat);
        let dir = train(&format!("finetune-{name}"), &a)?;
        rows.push(Row {
            name: match name {
                "ssfd" => "finetune, SSFD (2 ep)",
                "step" => "finetune, step (2 ep)",
                _ => "finetune, constant (2 ep)",
            },
            run: dir,
        });
    }
    let mut table = String::from("| run | clean | PGD-20 eps 0.1 | PGD-20 eps 0.3 | training passes (fwd+bwd) | wall s |\n|---|---|---|---|---|---|\n");
    for r in &rows {
        let weights = s(&r.run.join("model.safetensors"));
        let mut cells = Vec::new();
        for (eps, alpha) in [("0.1", "0.01"), ("0.3", "0.03")] {
            let text = temper(&[
                "attack",
                "--model",
                "small-cnn",
                "--weights",
                &weights,
                "--dataset",
                "mnist10k",
                "--attack",
                "pgd-20",
                "--eps",
                eps,
                "--alpha",
                alpha,
                "--batch-size",
                "500",
                "--limit",
                &limit,
            ])?;
            cells.push(accuracies(&text));
        }
        let summary: String = std::fs::read_to_string(r.run.join("summary.json"))?;
        let field = |k: &str| {
            summary
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("\"{k}\"")))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().trim_end_matches(',').to_string())
                .unwrap_or_default()
        };
        let passes =
            field("forward").parse::<u64>().unwrap_or(0) + field("backward").parse::<u64>().unwrap_or(0);
        let wall = field("wall_seconds").parse::<f64>().unwrap_or(0.0);
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} |\n",
            r.name, cells[0].0, cells[0].1, cells[1].1, passes, wall
        ));
    }
    std::fs::write(out.join("evidence.md"), &table)?;
    println!("{table}");
    Ok(())
}

fn cuda_build() -> Result<()> {
    let home = std::env::var("HOME").context("HOME is not set")?;
    let c = format!("{home}/.local/cuda13/nvidia/cu13");
    if !Path::new(&c).join("bin/nvcc").exists() {
        bail!("no CUDA 13 toolkit at {c}; install it as ../shared/cuda.md section 1 describes");
    }
    let features = std::env::args().any(|a| a == "--cudnn");
    let path = format!("{c}/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "temper-cli",
            "--features",
            if features { "cudnn" } else { "cuda" },
        ])
        .args(["--target-dir", "target/cuda"])
        .env("CUDA_PATH", &c)
        .env("CUDA_ROOT", &c)
        .env("PATH", path)
        .env("LIBRARY_PATH", format!("{c}/lib"))
        .env("CUDA_COMPUTE_CAP", "90"))?;
    run(Command::new("strip").args(["-o", "target/cuda/temper-cuda", "target/cuda/release/temper"]))?;
    run(Command::new("xz").args(["-9", "-f", "target/cuda/temper-cuda"]))?;
    eprintln!("built target/cuda/temper-cuda.xz; see ../shared/cuda.md section 3 to run it");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("invariants") => invariants(),
        Some("bench") => bench(&args[1..]),
        Some("fixtures") => fixtures(),
        Some("cuda-build") => cuda_build(),
        Some("evidence") => evidence(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|invariants|bench [data|attacks ...]|fixtures|cuda-build [--cudnn]>"
            );
            std::process::exit(2)
        }
    }
}
