//! `temper train` through the real binary: a run killed with SIGKILL in the middle and resumed
//! ends with weights bit-identical to an uninterrupted run.

use assert_cmd::cargo::CommandCargoExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

const ARGS: &[&str] = &[
    "train",
    "--model",
    "small-cnn",
    "--width",
    "0.5",
    "--dataset",
    "mnist10k",
    "--method",
    "pgd-at",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--val-size",
    "64",
    "--attack-steps",
    "2",
    "--eps",
    "0.1",
    "--checkpoint-every",
    "2",
    "--log-every",
    "1",
];

fn tensors_bits(p: &Path) -> Vec<(String, Vec<u32>)> {
    let t = candle_core::safetensors::load(p, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut v: Vec<(String, Vec<u32>)> = t
        .into_iter()
        .map(|(k, x)| {
            let bits = x
                .to_dtype(candle_core::DType::F32)
                .and_then(|x| x.flatten_all())
                .and_then(|x| x.to_vec1::<f32>())
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|f| f.to_bits())
                .collect();
            (k, bits)
        })
        .collect();
    v.sort();
    v
}

/// The highest iteration in a metrics.jsonl.
fn last_logged_iter(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["iter"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn sigkill_then_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // A small training set keeps the test short: 800 images, 25 iterations per epoch, 50 in all.
    let total = 50;
    let small = ["--val-split", "0.9"];
    let st = temper()
        .args(ARGS)
        .args(small)
        .arg("--out")
        .arg(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        st.map(|s| s.success()).unwrap_or(false),
        "uninterrupted run failed"
    );
    assert_eq!(last_logged_iter(&a.join("metrics.jsonl")), total);

    let mut child = temper()
        .args(ARGS)
        .args(small)
        .arg("--out")
        .arg(&b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Kill as soon as a mid-run checkpoint exists.
    let ckpt = b.join("checkpoint.safetensors");
    let start = Instant::now();
    while !ckpt.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
    assert!(ckpt.exists(), "no checkpoint was written before the kill");
    // The kill landed mid-run: no summary, and neither the log nor the checkpoint reached the end.
    assert!(
        !b.join("summary.json").exists(),
        "the run finished before the kill"
    );
    let logged = last_logged_iter(&b.join("metrics.jsonl"));
    assert!(logged < total, "killed after iteration {logged} of {total}");
    let at = temper_train::checkpoint::load(&ckpt, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"))
        .position
        .iter;
    assert!(at > 0 && at < total, "checkpoint at iteration {at} of {total}");

    let st = temper()
        .args(["train", "--resume"])
        .arg(&b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(st.map(|s| s.success()).unwrap_or(false), "resumed run failed");
    assert_eq!(last_logged_iter(&b.join("metrics.jsonl")), total);
    // Every tensor, bit for bit: the last weights, and the best ones chosen by validation.
    for f in ["model.safetensors", "best.safetensors"] {
        assert_eq!(
            tensors_bits(&a.join(f)),
            tensors_bits(&b.join(f)),
            "{f} differs after kill -9 at iteration {logged} and resume"
        );
    }
}
