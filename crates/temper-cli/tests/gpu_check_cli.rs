//! `temper gpu-check` on the CPU, with small shapes: the command a GPU machine runs (through
//! `cargo xtask gpu-check`'s run.sh), exercised here so its code runs in CI.

use assert_cmd::Command;
use std::path::PathBuf;

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

#[test]
fn gpu_check_on_the_cpu_writes_every_part() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("check");
    // A Python that does not exist: the PyTorch side is reported as absent, not as an error.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../temper-train/examples/bench_steps.py");
    let res = temper()
        .args(["gpu-check", "--device", "cpu", "--small", "--models", "small-cnn"])
        .args([
            "--precisions",
            "f32,bf16",
            "--batches",
            "4",
            "--reps",
            "1",
            "--parity-batch",
            "4",
        ])
        // The device under test is the CPU with its fast kernels: compare with candle's.
        .args(["--reference-kernels", "candle"])
        .arg("--torch-script")
        .arg(&script)
        .args(["--python", "/nonexistent/python3", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    let printed: serde_json::Value =
        serde_json::from_slice(&res.stdout).unwrap_or_else(|e| panic!("stdout is not JSON: {e}"));
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("gpu-check.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", out.display())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(printed, written);
    let v = printed;
    assert_eq!(v["check"], "temper.gpu-check.v1");
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["kernels"], "fast-cpu");
    assert_eq!(v["reference_kernels"], "candle-reference");
    assert_eq!(v["failed"].as_array().map(Vec::len), Some(0), "{v}");

    // (a) Every kernel against the CPU reference.
    let kp = &v["kernel_parity"];
    assert_eq!(kp["failed"], 0, "{kp}");
    let rows = kp["rows"].as_array().unwrap_or_else(|| panic!("{kp}"));
    assert!(rows.len() > 20, "{} kernel rows", rows.len());
    assert!(rows.iter().all(|r| r["pass"] == true));
    assert!(rows
        .iter()
        .any(|r| r["op"] == "conv2d" && r["precision"] == "bf16"));

    // (b) The model in eval and train mode at each precision.
    let mp = v["model_parity"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(mp.len(), 4, "{mp:?}");
    for r in mp {
        assert_eq!(r["model"], "small-cnn");
        assert_eq!(r["pass"], true, "{r}");
        let tol = r["tolerance"].as_f64().unwrap_or(0.0);
        assert!(r["logits"].as_f64().is_some_and(|e| e <= tol), "{r}");
        assert!(r["input_grad"].as_f64().is_some_and(|e| e <= tol), "{r}");
    }
    assert!(mp
        .iter()
        .any(|r| r["mode"] == "train" && r["weight_grad"].is_number()));

    // (c) The four workloads at each precision; no PyTorch here.
    let b = &v["bench"];
    assert_eq!(b["pytorch"], true);
    let rows = b["rows"].as_array().unwrap_or_else(|| panic!("{b}"));
    assert_eq!(rows.len(), 8, "{rows:?}");
    for r in rows {
        assert!(r["temper_img_s"].as_f64().is_some_and(|s| s > 0.0), "{r}");
        assert!(r["pytorch_img_s"].is_null() && r["ratio"].is_null(), "{r}");
    }
    assert!(stderr.contains("PyTorch skipped"), "{stderr}");
}

#[test]
fn gpu_check_rejects_unknown_parts_and_precisions() {
    for (flag, value) in [
        ("--parts", "kernels,speed"),
        ("--precisions", "fp8"),
        ("--batches", "0"),
        ("--reference-kernels", "gpu"),
    ] {
        let res = temper()
            .args(["gpu-check", "--device", "cpu", flag, value])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!res.status.success());
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains(flag), "{flag}: {err}");
    }
}
