//! `temper train` as a new user meets it: a diverging run, flags that `--resume` would
//! ignore, out-of-range validation sizes, and the attack's BatchNorm mode.

use assert_cmd::cargo::CommandCargoExt;
use std::path::Path;
use std::process::{Command, Output};

fn temper(args: &[&str], out: Option<&Path>) -> Output {
    let mut c = Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"));
    c.args(args);
    if let Some(o) = out {
        c.arg("--out").arg(o);
    }
    c.output().unwrap_or_else(|e| panic!("{e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A short run: 320 training digits (--val-split 0.96 of 8,000 leaves 320) in batches of 64.
const SHORT: &[&str] = &[
    "train",
    "--model",
    "small-cnn",
    "--width",
    "0.5",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--val-split",
    "0.96",
    "--val-size",
    "50",
];

#[test]
fn a_diverging_run_exits_non_zero_and_saves_no_weights() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path().join("d");
    // The command of the bug report, without validation (so "best" would be the last weights).
    let o = temper(
        &[
            "train",
            "--model",
            "small-cnn",
            "--epochs",
            "2",
            "--lr-schedule",
            "constant:lr=1000",
            "--val-split",
            "0",
        ],
        Some(&d),
    );
    assert!(!o.status.success(), "a diverged run exited 0");
    let e = stderr(&o);
    assert!(e.contains("diverged") && e.contains("learning rate"), "{e}");
    for f in ["model.safetensors", "best.safetensors", "config.toml"] {
        assert!(
            !d.join(f).exists(),
            "{f} left behind by a run that diverged before its first checkpoint"
        );
    }
    // The corrected command can use the same directory.
    let o = temper(SHORT, Some(&d));
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("model.safetensors (last)"), "{stdout}");
}

#[test]
fn resume_refuses_flags_it_would_ignore_and_keeps_a_finished_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path().join("run");
    let o = temper(SHORT, Some(&d));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = std::fs::read(d.join("summary.json")).unwrap_or_default();
    let dir_s = d.to_string_lossy().into_owned();
    let o = temper(
        &["train", "--resume", &dir_s, "--epochs", "5", "--eps", "0.2"],
        None,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--epochs") && e.contains("--eps") && e.contains("ignored"),
        "{e}"
    );
    let o = temper(&["train", "--resume", &dir_s, "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(d.join("summary.json")).unwrap_or_default(),
        summary,
        "summary.json rewritten"
    );
    // --json prints the summary itself on stdout, and nothing else.
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)));
    let saved: serde_json::Value = serde_json::from_slice(&summary).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(printed, saved);
}

#[test]
fn out_of_range_validation_sizes_name_the_flag() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (flag, value) in [("--val-split", "1.5"), ("--val-size", "0")] {
        let o = temper(
            &["train", "--model", "small-cnn", flag, value],
            Some(&dir.path().join("x")),
        );
        assert!(!o.status.success(), "{flag} {value} accepted");
        let e = stderr(&o);
        assert!(e.contains(&flag[2..]), "{flag} {value}: {e}");
    }
}

#[test]
fn attack_bn_is_a_setting_of_the_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = temper(
        &["train", "--model", "small-cnn", "--attack-bn", "sometimes"],
        Some(&dir.path().join("x")),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("attack-bn"), "{}", stderr(&o));
    let d = dir.path().join("run");
    let mut args = SHORT.to_vec();
    args.extend(["--method", "pgd-at", "--attack-steps", "1", "--attack-bn", "eval"]);
    let o = temper(&args, Some(&d));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(d.join("config.toml")).unwrap_or_default();
    assert!(cfg.contains("attack_bn = \"eval\""), "{cfg}");
}
