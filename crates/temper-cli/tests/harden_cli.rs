//! Quantization-aware fine-tuning (`temper finetune --quantize`) and `temper harden` through
//! the real binary, with tiny settings (a few hundred digits, short attacks).

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

/// A small-cnn trained naturally on MNIST.
fn natural() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/attacks/small_cnn_mnist.safetensors")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// 320 training digits (--val-split 0.96), batches of 64, PGD-2 at eps 0.1.
const SHORT_FT: &[&str] = &[
    "finetune",
    "--model",
    "small-cnn",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--val-split",
    "0.96",
    "--val-size",
    "40",
    "--eps",
    "0.1",
    "--steps",
    "2",
];

#[test]
fn finetune_through_the_quantizer_writes_a_file_that_evaluates_as_trained() {
    let dir = tempdir();
    let run = dir.path().join("run");
    temper()
        .args(SHORT_FT)
        .arg("--weights")
        .arg(natural())
        .args(["--quantize", "ptq:prune=0.6", "--out"])
        .arg(&run)
        .assert()
        .success()
        .stderr(predicate::str::contains("ptq:prune=0.6,per-channel,first-last=8"))
        .stdout(predicate::str::contains("quantized.safetensors"));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap_or_default();
    assert!(
        config.contains("quantize = \"ptq:prune=0.6,per-channel,first-last=8\""),
        "{config}"
    );
    // The quantized file: pruned ternary middle layers, 8-bit first and last.
    let out = temper()
        .args(["quant", "inspect", "--json"])
        .arg(run.join("quantized.safetensors"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        v["quantization"]
            .as_str()
            .unwrap_or("")
            .starts_with("ptq ternary"),
        "{v}"
    );
    let schemes: Vec<&str> = v["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["scheme"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(schemes, ["8-bit", "ternary", "ternary", "8-bit"]);
    // It is what `temper eval` attacks through the quantizer.
    temper()
        .args([
            "eval",
            "--no-masking-checks",
            "--limit",
            "40",
            "--attacks",
            "pgd-3",
            "--eps",
            "0.1",
        ])
        .arg("--weights")
        .arg(run.join("quantized.safetensors"))
        .arg("--out")
        .arg(dir.path().join("report"))
        .assert()
        .success()
        .stdout(predicate::str::contains("quantized: ptq ternary"));
    // A finished run resumes with the quantizer its configuration records.
    temper()
        .args(["finetune", "--resume"])
        .arg(&run)
        .assert()
        .success();
    // --quantize with --resume would be ignored: refused.
    temper()
        .args(["finetune", "--quantize", "4", "--resume"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--quantize"));
    temper()
        .args(SHORT_FT)
        .arg("--weights")
        .arg(natural())
        .args(["--quantize", "9", "--out"])
        .arg(dir.path().join("bad"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("9 is not between 2 and 8"));
}

/// Tiny harden settings: 128 training digits, one epoch, 40 test images, short attacks.
fn harden(out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    temper()
        .args(["harden", "--model", "small-cnn", "--weights"])
        .arg(natural())
        .args([
            "--eps",
            "0.1",
            "--epochs",
            "1",
            "--train-size",
            "128",
            "--val-size",
            "20",
            "--attack-steps",
            "2",
            "--calib",
            "32",
            "--limit",
            "40",
            "--attacks",
            "pgd-3,apgd-ce-5",
        ])
        .args(extra)
        .arg("--out")
        .arg(out)
        .assert()
}

#[test]
fn harden_writes_the_matrix_the_report_and_the_models() {
    let dir = tempdir();
    let out = dir.path().join("h");
    harden(&out, &["--bits", "8,2,ptq"])
        .success()
        .stdout(predicate::str::contains(
            "| model | bits | clean | apgd-ce-5 | pgd-3 | worst case |",
        ));
    for f in [
        "harden.json",
        "harden.md",
        "matrix.png",
        "sweep.png",
        "finetune/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let r = read_json(&out.join("harden.json"));
    assert_eq!(r["schema"], "temper.harden.v1");
    let rows = r["matrix"]["rows"].as_array().cloned().unwrap_or_default();
    let labels: Vec<&str> = rows.iter().filter_map(|x| x["label"].as_str()).collect();
    assert_eq!(labels, ["float", "8-bit", "2-bit", "ptq"]);
    for row in &rows {
        let clean = row["clean"].as_f64().unwrap_or(f64::NAN);
        let worst = row["worst_case"].as_f64().unwrap_or(f64::NAN);
        assert!(worst <= clean, "{row}");
    }
    // Each quantized model is a packed file that `temper eval` reads back.
    let models = r["models"].as_array().cloned().unwrap_or_default();
    assert_eq!(models.len(), 4);
    let ptq = out.join("models/ptq.safetensors");
    temper()
        .args(["quant", "inspect"])
        .arg(&ptq)
        .assert()
        .success()
        .stdout(predicate::str::contains("ptq ternary"));
    let png = std::fs::read(out.join("matrix.png")).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG"));

    // The same command again reuses the fine-tuning run; other settings are refused.
    harden(&out, &["--bits", "8"])
        .success()
        .stdout(predicate::str::contains("reusing the run"));
    harden(&out, &["--bits", "8", "--lr-schedule", "constant:lr=0.01"])
        .failure()
        .stderr(predicate::str::contains("holds a run with other settings"));
}

#[test]
fn harden_with_quantization_aware_fine_tuning() {
    let dir = tempdir();
    let out = dir.path().join("h");
    harden(&out, &["--bits", "4", "--qat-epochs", "1"])
        .success()
        .stdout(predicate::str::contains("quantization-aware"));
    let r = read_json(&out.join("harden.json"));
    assert_eq!(r["qat"].as_array().map(Vec::len), Some(1));
    let config = std::fs::read_to_string(out.join("qat-4-bit/config.toml")).unwrap_or_default();
    assert!(
        config.contains("quantize = \"4,per-channel,first-last=8\""),
        "{config}"
    );
    assert!(out.join("models/4-bit.safetensors").is_file());
}
