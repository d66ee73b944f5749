//! `temper quantize`, then `temper eval` and `temper attack` on the quantized file, through
//! the real binary.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

/// A small-cnn trained on MNIST (about 98% clean accuracy).
fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/attacks/small_cnn_mnist.safetensors")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

/// Quantizes the fixture into the file `out` with `extra` options (few calibration images, so
/// the test stays quick in a debug build). `--out` names a folder; the file it gets,
/// quantized.safetensors, is moved to `out`.
fn quantize(out: &Path, extra: &[&str]) {
    let folder = out.with_extension("d");
    temper()
        .args(["quantize", "--model", "small-cnn", "--weights"])
        .arg(fixture())
        .args(["--dataset", "mnist10k", "--limit", "100", "--calib", "64"])
        .args(extra)
        .arg("--out")
        .arg(&folder)
        .assert()
        .success()
        .stdout(predicate::str::contains("quantized file"));
    std::fs::rename(folder.join("quantized.safetensors"), out).unwrap_or_else(|e| panic!("{e}"));
}

fn report(dir: &Path) -> temper_eval::Report {
    let json = std::fs::read_to_string(dir.join("report.json")).unwrap_or_else(|e| panic!("{e}"));
    temper_eval::Report::from_json(&json, "report.json").unwrap_or_else(|e| panic!("{e}"))
}

/// Evaluates `weights` into `out`; `model` is left out for quantized files, which name their
/// own.
fn eval_model(model: Option<&str>, weights: &Path, out: &Path) -> assert_cmd::assert::Assert {
    temper()
        .arg("eval")
        .args(model.map(|m| ["--model", m]).into_iter().flatten())
        .arg("--weights")
        .arg(weights)
        .args([
            "--limit",
            "150",
            "--attacks",
            "pgd-5",
            "--eps",
            "0.1",
            "--no-masking-checks",
            "--report",
        ])
        .arg(out)
        .assert()
}

fn eval(weights: &Path, out: &Path) -> assert_cmd::assert::Assert {
    eval_model(None, weights, out)
}

#[test]
fn eval_attacks_a_quantized_file_through_its_quantizer() {
    let dir = tempdir();
    let q = dir.path().join("q4.safetensors");
    quantize(&q, &["--bits", "4", "--per-channel"]);
    eval(&q, &dir.path().join("report"))
        .success()
        .stdout(predicate::str::contains(
            "quantized: rtn 4-bit, per-channel, first/last 8-bit, weights only",
        ));
    let r = report(&dir.path().join("report"));
    let quant = r.model.quantization.as_deref().unwrap_or("");
    assert!(
        quant.contains("4-bit") && quant.contains("per-channel"),
        "{quant}"
    );
    assert_eq!(r.model.name, "small-cnn");
    let md = std::fs::read_to_string(dir.path().join("report/report.md")).unwrap_or_else(|e| panic!("{e}"));
    assert!(md.contains("Quantized: rtn 4-bit"), "{md}");
    let clean = r.evaluation.clean.accuracy.accuracy;
    assert!(clean > 0.9, "4-bit per-channel fixture: {clean}");
    // The attack goes through the quantizer: straight-through gradients reach the input, so
    // PGD breaks this naturally trained model.
    let robust = r.evaluation.attacks[0].robust.accuracy;
    assert!(
        robust < 0.5 * clean,
        "pgd-5 at 0.1: robust {robust}, clean {clean}"
    );

    // A float model's report has no quantization, in the JSON as in the text.
    let float_dir = dir.path().join("float");
    eval_model(Some("small-cnn"), &fixture(), &float_dir)
        .success()
        .stdout(predicate::str::contains("quantized").not());
    assert_eq!(report(&float_dir).model.quantization, None);
}

#[test]
fn eval_and_attack_take_a_gpfq_ternary_file() {
    let dir = tempdir();
    let q = dir.path().join("t.safetensors");
    quantize(
        &q,
        &["--bits", "ternary", "--quantizer", "gpfq", "--gpfq-rows", "2000"],
    );
    eval(&q, &dir.path().join("report"))
        .success()
        .stdout(predicate::str::contains("quantized: gpfq ternary, per-tensor"));
    assert!(report(&dir.path().join("report"))
        .model
        .quantization
        .is_some_and(|s| s.starts_with("gpfq ternary")));
    let adv = dir.path().join("adv");
    temper()
        .args(["attack", "--model", "small-cnn", "--weights"])
        .arg(&q)
        .args(["--limit", "50", "--attack", "fgsm", "--eps", "0.1", "--out"])
        .arg(&adv)
        .assert()
        .success()
        .stdout(predicate::str::contains("quantized: gpfq ternary"))
        .stdout(predicate::str::contains("through the quantizer"))
        .stdout(predicate::str::contains("robust accuracy"));
    assert!(adv.join("adversarial.safetensors").exists());
}

#[test]
fn bad_files_are_named_in_the_error() {
    let dir = tempdir();
    let out = dir.path().join("report");
    let short = dir.path().join("short.safetensors");
    std::fs::write(&short, b"abc").unwrap_or_else(|e| panic!("{e}"));
    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, "this is no safetensors file at all, just text").unwrap_or_else(|e| panic!("{e}"));
    let missing = dir.path().join("missing.safetensors");
    for (file, why) in [
        (&short, "too short"),
        (&text, "not a safetensors file"),
        (&missing, "cannot read"),
    ] {
        eval(file, &out)
            .failure()
            .stderr(predicate::str::contains(file.display().to_string()))
            .stderr(predicate::str::contains(why));
        temper()
            .args(["attack", "--weights"])
            .arg(file)
            .assert()
            .failure()
            .stderr(predicate::str::contains(file.display().to_string()));
    }

    // A quantized file cut short: the header is intact, the tensors are not.
    let q = dir.path().join("q8.safetensors");
    quantize(&q, &["--bits", "8"]);
    let bytes = std::fs::read(&q).unwrap_or_else(|e| panic!("{e}"));
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap_or_else(|e| panic!("{e}"));
    eval(&cut, &out)
        .failure()
        .stderr(predicate::str::contains(cut.display().to_string()));

    // A quantized file with another --model: the file decides, and the error says so.
    temper()
        .args(["eval", "--model", "preact-resnet18", "--weights"])
        .arg(&q)
        .arg("--report")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains(q.display().to_string()))
        .stderr(predicate::str::contains("leave out --model"));
    assert!(!out.exists());
}
