//! One definition of robust accuracy: `temper attack`, `temper eval` and `temper quant sweep`
//! report the same number for the same model, attack, eps, data and seed, because all three
//! call `temper_eval::evaluate`; and the bugs of the old separate loops stay fixed
//! (CW counted inside the eps ball, empty attack lists refused, eps defaults by data set).

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

fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// The model, data, threat and seed every command below shares; odd batch size and seed so
/// that agreement cannot come from defaults alone.
const COMMON: [&str; 12] = [
    "--limit",
    "120",
    "--eps",
    "0.1",
    "--steps",
    "5",
    "--seed",
    "7",
    "--batch-size",
    "50",
    "--norm",
    "linf",
];

/// Robust images (a count) under `name` from `temper attack --json`.
fn attack(list: &str, extra: &[&str]) -> (usize, serde_json::Value) {
    let out = temper()
        .args(["attack", "--model", "small-cnn", "--weights"])
        .arg(fixture())
        .args(["--attacks", list, "--json"])
        .args(COMMON)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json_of(&out.stdout);
    (
        v["clean"]["accuracy"]["correct"].as_u64().unwrap_or(0) as usize,
        v,
    )
}

fn robust_of(evaluation: &serde_json::Value, name: &str) -> u64 {
    evaluation["attacks"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .and_then(|r| r["robust"]["correct"].as_u64())
        .unwrap_or_else(|| panic!("no attack {name} in {evaluation}"))
}

fn eval(list: &str, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let out = temper()
        .args(["eval", "--model", "small-cnn", "--weights"])
        .arg(fixture())
        .args(["--attacks", list, "--no-masking-checks", "--json", "--out"])
        .arg(dir)
        .args(COMMON)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json_of(&out.stdout)["evaluation"].clone()
}

#[test]
fn attack_eval_and_quant_sweep_report_the_same_robust_accuracy() {
    let dir = tempdir();
    let (clean, alone) = attack("pgd-5", &[]);
    let robust = robust_of(&alone, "pgd-5");
    assert!(
        clean > 100,
        "the trained fixture classifies most images: {clean}/120"
    );
    assert!(
        robust < clean as u64,
        "pgd at 0.1 breaks some images: {robust}/{clean}"
    );

    // eval, alone and with another attack before it in the list: the same number.
    let e = eval("pgd-5", &dir.path().join("e1"), &[]);
    assert_eq!(robust_of(&e, "pgd-5"), robust, "attack vs eval");
    assert_eq!(e["clean"]["accuracy"]["correct"].as_u64(), Some(clean as u64));
    let e = eval("fgsm,pgd-5", &dir.path().join("e2"), &[]);
    assert_eq!(
        robust_of(&e, "pgd-5"),
        robust,
        "an attack's number depends on no other attack"
    );
    // `-a`/`--attack` is the same flag on `attack`.
    let out = temper()
        .args(["attack", "--model", "small-cnn", "--weights"])
        .arg(fixture())
        .args(["-a", "pgd-5", "--json"])
        .args(COMMON)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(robust_of(&json_of(&out.stdout), "pgd-5"), robust, "-a alias");

    // quant sweep: its float row is the same evaluation.
    let out = temper()
        .args(["quant", "sweep", "--model", "small-cnn", "--weights"])
        .arg(fixture())
        .args([
            "--bits",
            "8",
            "--calib",
            "16",
            "--attacks",
            "pgd-5",
            "--json",
            "--out",
        ])
        .arg(dir.path().join("sweep"))
        .args(COMMON)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json_of(&out.stdout);
    let float = &s["rows"][0];
    assert_eq!(float["label"], "float");
    let r = float["robust"]["pgd-5"].as_f64().unwrap_or(-1.0);
    assert!(
        (r - robust as f64 / 120.0).abs() < 1e-12,
        "quant sweep {r} vs attack {robust}/120"
    );
    assert!((float["clean"].as_f64().unwrap_or(-1.0) - clean as f64 / 120.0).abs() < 1e-12);
    assert_eq!(s["threat"]["eps"].as_f64(), Some(0.1));
}

/// Carlini-Wagner minimises the perturbation and ignores eps; its examples count only inside
/// the threat model, so its robust accuracy grows with eps from (near) zero to clean accuracy.
#[test]
fn cw_counts_only_examples_inside_the_eps_ball() {
    let robust_at = |eps: &str| {
        let out = temper()
            .args(["attack", "--model", "small-cnn", "--weights"])
            .arg(fixture())
            .args([
                "--attacks",
                "cw-20",
                "--norm",
                "L2",
                "--limit",
                "40",
                "--json",
                "--eps",
                eps,
            ])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v = json_of(&out.stdout);
        (
            v["clean"]["accuracy"]["correct"].as_u64().unwrap_or(0),
            robust_of(&v, "cw-20"),
            v["attacks"][0]["outside_threat"].as_u64().unwrap_or(0),
        )
    };
    let (clean, tiny, outside) = robust_at("0.01");
    assert_eq!(tiny, clean, "no CW example fits in an L2 ball of 0.01");
    assert!(outside > 0, "CW found examples, all outside the ball");
    let (_, huge, _) = robust_at("100");
    assert!(
        huge < clean,
        "in a huge ball every CW example counts: {huge}/{clean}"
    );
}

#[test]
fn empty_attack_lists_are_refused() {
    let dir = tempdir();
    for list in ["", "fgsm,", ",pgd"] {
        temper()
            .args([
                "eval",
                "--model",
                "small-cnn",
                "--limit",
                "10",
                "--attacks",
                list,
                "--out",
            ])
            .arg(dir.path())
            .assert()
            .failure()
            .stderr(predicate::str::contains("empty attack name"));
    }
    temper()
        .args(["attack", "--model", "small-cnn", "--limit", "10", "--attacks", ""])
        .assert()
        .failure()
        .stderr(predicate::str::contains("empty attack name"));
}

/// `--eps` defaults by data set, the same on every command: 0.3 for 28x28 grey digits.
#[test]
fn eps_defaults_by_data_set_and_takes_fractions() {
    let (_, v) = attack("fgsm", &[]);
    assert_eq!(v["threat"]["eps"].as_f64(), Some(0.1), "explicit --eps wins");
    let out = temper()
        .args([
            "attack",
            "--model",
            "small-cnn",
            "--limit",
            "5",
            "--attacks",
            "fgsm",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(&out.stdout)["threat"]["eps"].as_f64(), Some(0.3));
    let out = temper()
        .args([
            "attack",
            "--model",
            "small-cnn",
            "--limit",
            "5",
            "--attacks",
            "pgd",
            "--norm",
            "l2",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let v = json_of(&out.stdout);
    assert_eq!(v["threat"]["eps"].as_f64(), Some(2.0), "{v}");
    assert_eq!(v["threat"]["norm"], "l2");
    let out = temper()
        .args([
            "attack",
            "--model",
            "small-cnn",
            "--limit",
            "5",
            "--attacks",
            "pgd",
            "--json",
        ])
        .args(["--eps", "8/255", "--alpha", "eps/4"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let v = json_of(&out.stdout);
    assert_eq!(v["threat"]["eps"].as_f64(), Some(8.0 / 255.0));
    let desc = v["attacks"][0]["description"].as_str().unwrap_or("");
    assert!(desc.contains("alpha=0.0078"), "torchattacks' 2/255 step: {desc}");
}

/// A PyTorch checkpoint (DataParallel state dict wrapped in {"state_dict": ...}) evaluates
/// exactly like the safetensors file it was made from.
#[test]
fn a_pytorch_checkpoint_evaluates_like_its_safetensors() {
    let pt =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pytorch/small_cnn_mnist_dp.pt");
    let run = |w: &Path| {
        let out = temper()
            .args(["attack", "--model", "small-cnn", "--weights"])
            .arg(w)
            .args(["--attacks", "fgsm", "--limit", "60", "--json"])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v = json_of(&out.stdout);
        (v["clean"]["accuracy"]["correct"].as_u64(), robust_of(&v, "fgsm"))
    };
    let (a, b) = (run(&pt), run(&fixture()));
    assert_eq!(a, b);
    assert!(a.0.is_some_and(|c| c > 55), "{a:?}");
}
