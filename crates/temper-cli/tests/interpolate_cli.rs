//! `temper interpolate` through the real binary: the line between a naturally trained and a
//! PGD-trained small-cnn, whose ends must be exactly what `temper eval` says of each model.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

fn natural() -> PathBuf {
    fixture("attacks/small_cnn_mnist.safetensors")
}

fn robust() -> PathBuf {
    fixture("autoattack/small_cnn_pgd.safetensors")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

const SETTINGS: &[&str] = &["--limit", "100", "--attacks", "pgd-5", "--eps", "0.2"];

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// `temper eval`'s clean and PGD robust accuracy of one model with the same settings.
fn eval_alone(weights: &Path, out: &Path) -> (f64, f64) {
    temper()
        .args(["eval", "--model", "small-cnn", "--no-masking-checks", "--weights"])
        .arg(weights)
        .args(SETTINGS)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
    let r = read_json(&out.join("report.json"));
    let e = &r["evaluation"];
    (
        e["clean"]["accuracy"]["accuracy"].as_f64().unwrap_or(f64::NAN),
        e["attacks"][0]["robust"]["accuracy"].as_f64().unwrap_or(f64::NAN),
    )
}

#[test]
fn the_line_from_natural_to_robust_ends_at_each_model_and_trades_clean_for_robust() {
    let dir = tempdir();
    let out = dir.path().join("interp");
    temper()
        .args(["interpolate", "--model", "small-cnn"])
        .arg(natural())
        .arg(robust())
        .args(["--alphas", "0:1:0.5"])
        .args(SETTINGS)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("| alpha | clean | pgd-5 |"));
    for f in ["interpolation.json", "interpolation.md", "interpolation.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(out.join("interpolation.png")).unwrap_or_else(|e| panic!("{e}"));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    let r = read_json(&out.join("interpolation.json"));
    assert_eq!(r["schema"], "temper.interpolation.v1");
    let points = r["points"].as_array().cloned().unwrap_or_default();
    assert_eq!(points.len(), 3);
    let get = |i: usize, k: &str| points[i][k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(get(1, "alpha"), 0.5);

    // The ends are the two models themselves, evaluated by the one evaluator.
    let (nat_clean, nat_robust) = eval_alone(&natural(), &dir.path().join("nat"));
    let (rob_clean, rob_robust) = eval_alone(&robust(), &dir.path().join("rob"));
    assert_eq!((get(0, "clean"), get(0, "robust")), (nat_clean, nat_robust));
    assert_eq!((get(2, "clean"), get(2, "robust")), (rob_clean, rob_robust));
    // The natural model falls to PGD at eps 0.2; the PGD-trained one does not.
    assert!(nat_robust < 0.2 && rob_robust > 0.6, "{nat_robust} {rob_robust}");
    // The robust end is on the Pareto front.
    assert_eq!(points[2]["pareto"], true);
}

#[test]
fn checkpoints_of_different_architectures_are_refused_by_key() {
    let dir = tempdir();
    // A width-0.5 small-cnn has the same keys with other shapes.
    let half = dir.path().join("half.safetensors");
    let mut cfg = temper_models::ModelConfig::new(temper_models::ModelKind::SmallCnn, 10);
    cfg.width = 0.5;
    let cfg = cfg.check().unwrap_or_else(|e| panic!("{e}"));
    let net = temper_models::build(&cfg, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    temper_models::save(&net, &cfg, &half, candle_core::DType::F32, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    temper()
        .args(["interpolate", "--model", "small-cnn"])
        .arg(natural())
        .arg(&half)
        .args(SETTINGS)
        .arg("--out")
        .arg(dir.path().join("x"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("conv1.weight").and(predicate::str::contains("half.safetensors")));
    assert!(!dir.path().join("x/interpolation.json").exists());
}
