//! `temper eval`, `temper report` and `temper sched plot` through the real binary.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/attacks/small_cnn_mnist.safetensors")
}

fn png_size(p: &Path) -> (u32, u32) {
    let img = image_size(p);
    assert!(img.0 >= 600 && img.1 >= 400, "{}: {img:?}", p.display());
    img
}

/// Width and height from the PNG header (bytes 16..24 of the IHDR chunk).
fn image_size(p: &Path) -> (u32, u32) {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", p.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn eval_writes_a_report_of_the_trained_model() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("report");
    temper()
        .args(["eval", "--model", "small-cnn", "--weights"])
        .arg(fixture())
        .args([
            "--dataset",
            "mnist10k",
            "--limit",
            "200",
            "--attacks",
            "fgsm,pgd-5",
            "--eps",
            "0.1",
        ])
        .args([
            "--eps-sweep",
            "0:0.2:0.1",
            "--sweep-attack",
            "fgsm",
            "--masking-samples",
            "50",
            "--report",
        ])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("worst case"))
        .stdout(predicate::str::contains("clean"))
        .stdout(predicate::str::contains(
            "masking checks on 50 samples: no warning",
        ))
        .stdout(predicate::str::contains("robust_vs_eps.png"));
    let json = std::fs::read_to_string(out.join("report.json")).unwrap_or_else(|e| panic!("{e}"));
    let r = temper_eval::Report::from_json(&json, "report.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.dataset.samples, 200);
    assert_eq!(r.evaluation.attacks.len(), 2);
    let clean = r.evaluation.clean.accuracy.accuracy;
    assert!(clean > 0.95, "trained fixture: {clean}");
    let worst = r
        .evaluation
        .worst_case
        .as_ref()
        .map_or(1.0, |w| w.accuracy.accuracy);
    assert!(r
        .evaluation
        .attacks
        .iter()
        .all(|a| worst <= a.robust.accuracy && a.robust.accuracy <= clean));
    assert_eq!(r.sweeps.len(), 1);
    assert_eq!(r.sweeps[0].points.len(), 3);
    assert!(r.flags.is_empty(), "{:?}", r.flags);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap_or_else(|e| panic!("{e}"));
    assert!(md.contains("| fgsm |") && md.contains("worst case"));
    png_size(&out.join("robust_vs_eps.png"));
}

#[test]
fn eval_refuses_bad_options_naming_them() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    temper()
        .args([
            "eval",
            "--model",
            "small-cnn",
            "--limit",
            "10",
            "--attacks",
            "pgd-x",
            "--report",
        ])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("pgd-x"));
    temper()
        .args([
            "eval",
            "--model",
            "small-cnn",
            "--limit",
            "10",
            "--eps-sweep",
            "1:0:0.1",
            "--report",
        ])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("eps-sweep"));
}

#[test]
fn report_draws_training_curves_from_a_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut log = String::new();
    for it in 1..=40u32 {
        let e = f64::from(it) / 10.0;
        log.push_str(&format!(
            "{{\"kind\":\"train\",\"epoch\":{e},\"iter\":{it},\"loss\":{},\"acc\":0.9,\"lr\":0.01,\"extra\":1}}\n",
            1.0 / e
        ));
        if it % 10 == 0 {
            log.push_str(&format!(
                "{{\"kind\":\"val\",\"epoch\":{e},\"iter\":{it},\"clean_acc\":0.97,\"robust_acc\":null,\"loss\":0.2}}\n"
            ));
        }
    }
    log.push_str("{\"kind\":\"checkpoint\",\"path\":\"last.safetensors\"}\n");
    std::fs::write(dir.path().join("metrics.jsonl"), log).unwrap_or_else(|e| panic!("{e}"));
    temper()
        .arg("report")
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("40 training and 4 validation lines"))
        .stdout(predicate::str::contains("curves.png"));
    png_size(&dir.path().join("curves.png"));

    let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    temper()
        .arg("report")
        .arg(empty.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("metrics.jsonl"));
}

#[test]
fn sched_plot_draws_a_schedule() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("lr");
    temper()
        .args([
            "sched",
            "plot",
            "ssfd:peak=0.05,warmup=0.3,decay=exp",
            "--epochs",
            "20",
            "--out",
        ])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("highest sampled lr 0.0497"));
    png_size(&out.join("lr_schedule.png"));
    temper()
        .args(["sched", "plot", "cosine:peak=-1", "--epochs", "20", "--out"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains("peak"));
}
