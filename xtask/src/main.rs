//! Project automation: `cargo xtask <task>`. Few dependencies, quick to compile.
//!
//! Tasks:
//! - `ci`: what `.ci/run` does (fmt check, clippy -D warnings, dependency invariants, tests).
//! - `invariants`: check the dependency boundaries of docs/ARCHITECTURE.md.
//! - `bench`: the speed benchmarks, each a ratio against a reference measured in the same run.
//! - `fixtures`: regenerate the PyTorch fixtures (needs python3 with torch, torchvision, timm).
//! - `cuda-build`: the stripped, xz-compressed CUDA binary (`cudnn` feature), installing the
//!   CUDA 13 toolkit and cuDNN 9 from PyPI where missing (../shared/cuda.md).
//! - `gpu-check`: a folder to copy to a GPU machine and run there as one command (binary,
//!   PyTorch reference, run script): kernel and model parity, benchmark, demo.
//! - `evidence`: the mnist10k experiments of issue 5 (natural, PGD-AT, fine-tuning with
//!   three schedules over several seeds), evaluated with PGD-20; writes a Markdown table.
//! - `ssfd-sweep`: the grid over the SSFD constants, judged on the validation split, that
//!   chose the defaults.
//! - `hero-l2p-evidence`: issue 15's mnist10k experiments: HERO against SGD after post-training
//!   quantization, Learn2Perturb against PGD-AT under `autoattack-rand`.
//! - `qat-evidence`: issue 15's mnist10k experiment (quantization-aware robust fine-tuning
//!   against post-training quantization of the robust model at 4, 3, 2 bits and ternary).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod cuda;
mod evidence;
mod hero_l2p;
mod qat_evidence;
mod reproduce;

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
            "temper-harden",
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
            "temper-harden",
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
            "temper-harden",
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
            "temper-harden",
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
            "temper-harden",
            "temper-cli",
        ],
    ),
    (
        "temper-eval",
        &[
            "temper-train",
            "temper-sched",
            "temper-quant",
            "temper-harden",
            "temper-cli",
        ],
    ),
    (
        "temper-quant",
        &["temper-train", "temper-sched", "temper-harden", "temper-cli"],
    ),
    ("temper-train", &["temper-quant", "temper-harden", "temper-cli"]),
    ("temper-harden", &["temper-cli"]),
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
        ("steps", "temper-train", &["bench_steps"]),
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
            if *ex == "bench_steps" {
                // Forward, PGD step, training step and PGD-10 AT iteration beside PyTorch;
                // the table goes to stdout, the JSON to target/bench/steps.json.
                cmd.args(["--out", "target/bench"]);
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
        "tests/fixtures/optim/make_fixtures.py",
        "tests/fixtures/attacks/make_fixtures.py",
        // After attacks/: these read attacks/small_cnn_mnist.safetensors.
        "tests/fixtures/pytorch/make_fixtures.py",
        "tests/fixtures/trades/make_fixtures.py",
        // Imports the zoo's reference modules from models/make_fixtures.py.
        "tests/fixtures/hero/make_fixtures.py",
        "tests/fixtures/l2p/make_fixtures.py",
        "tests/fixtures/qat/make_fixtures.py",
        // Needs the AutoAttack reference: AUTOATTACK_SRC=<checkout of fra31/auto-attack>.
        "tests/fixtures/autoattack/make_fixtures.py",
        "tests/fixtures/autoattack/make_norms.py",
    ] {
        run(Command::new(&py).arg(script))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("invariants") => invariants(),
        Some("bench") => bench(&args[1..]),
        Some("fixtures") => fixtures(),
        Some("cuda-build") => cuda::build(&args[1..]).map(|_| ()),
        Some("gpu-check") => cuda::gpu_check(&args[1..]),
        Some("evidence") => evidence::evidence(&args[1..]),
        Some("ssfd-sweep") => evidence::ssfd_sweep(&args[1..]),
        Some("reproduce") => reproduce::reproduce(&args[1..]),
        Some("hero-l2p-evidence") => hero_l2p::evidence(&args[1..]),
        Some("qat-evidence") => qat_evidence::qat_evidence(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|invariants|bench [data|attacks|steps ...]|fixtures|cuda-build [--no-cudnn]|gpu-check [--no-build]|evidence|ssfd-sweep|hero-l2p-evidence|qat-evidence|reproduce cifar10 [--scale smoke|cpu|gpu]>"
            );
            std::process::exit(2)
        }
    }
}
