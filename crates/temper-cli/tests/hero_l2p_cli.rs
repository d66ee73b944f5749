//! `temper train --method hero|l2p` end to end on tiny settings, and the evaluation of a
//! randomized (Learn2Perturb) model: single-pass attacks are refused, EOT attacks run.

use assert_cmd::cargo::CommandCargoExt;
use std::path::Path;
use std::process::{Command, Output};

fn temper(args: &[&str]) -> Output {
    Command::cargo_bin("temper")
        .unwrap_or_else(|e| panic!("binary not built: {e}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// preact-resnet18 at width 1/16 on the bundled 28x28 digits.
const MODEL: &[&str] = &[
    "--model",
    "preact-resnet18",
    "--width",
    "0.0625",
    "--in-channels",
    "1",
    "--input-size",
    "28",
];

/// One epoch on 320 training images with a 2-step inner attack.
const TINY: &[&str] = &[
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--val-split",
    "0.96",
    "--val-size",
    "20",
    "--steps",
    "2",
];

fn run_train(method: &str, extra: &[&str], out: &Path) -> Output {
    let out = out.to_string_lossy().into_owned();
    let mut args = vec!["train", "--method", method, "--out", out.as_str()];
    args.extend_from_slice(MODEL);
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    temper(&args)
}

#[test]
fn l2p_trains_and_is_evaluated_only_with_eot_attacks() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = dir.path().join("l2p");
    let o = run_train("l2p", &["--l2p-gamma", "1e-3"], &run);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("autoattack-rand"),
        "no note on evaluation: {}",
        text(&o)
    );
    let w = run.join("model.safetensors");
    assert!(w.is_file());
    let report = dir.path().join("report");
    let eval = |attacks: &str| {
        let mut args = vec!["eval", "-w", w.to_str().unwrap_or_default()];
        args.extend_from_slice(MODEL);
        args.extend([
            "--limit",
            "8",
            "--no-masking-checks",
            "--attacks",
            attacks,
            "--out",
            report.to_str().unwrap_or_default(),
        ]);
        temper(&args)
    };
    // A single-pass attack is refused, with the way out in the message.
    let o = eval("pgd-10");
    assert!(!o.status.success(), "pgd-10 evaluated a randomized model");
    let t = text(&o);
    assert!(
        t.contains("noise modules") && t.contains("autoattack-rand") && t.contains("pgd-10"),
        "{t}"
    );
    // One bad attack in a list is enough to refuse.
    assert!(!eval("apgd-ce-10-eot2,square-10").status.success());
    // Attacks with expectation over transformation run.
    let o = eval("apgd-ce-10-eot2");
    assert!(o.status.success(), "{}", text(&o));
    assert!(report.join("report.json").is_file());
    // Quantizing a randomized model is refused with a reason, not a failed internal check.
    let mut args = vec!["quant", "sweep", "-w", w.to_str().unwrap_or_default()];
    args.extend_from_slice(MODEL);
    args.extend([
        "--bits",
        "4",
        "--attacks",
        "apgd-ce-5-eot2",
        "--limit",
        "8",
        "--out",
    ]);
    args.push(report.to_str().unwrap_or_default());
    let o = temper(&args);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("quantizing a randomized model is not supported"),
        "{}",
        text(&o)
    );
}

#[test]
fn hero_trains_end_to_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = dir.path().join("hero");
    let o = run_train("hero", &["--hero-rho", "0.05", "--json"], &run);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(summary["complete"], true, "{summary}");
    assert!(run.join("model.safetensors").is_file());
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap_or_default();
    assert!(
        config.contains("method = \"hero\"") && config.contains("rho = 0.05"),
        "{config}"
    );
}

#[test]
fn method_flags_belong_to_their_method() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let o = run_train("pgd-at", &["--hero-rho", "0.1"], &dir.path().join("x"));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--hero-rho applies to --method hero"),
        "{}",
        text(&o)
    );
    let o = run_train("hero", &["--hero-fd-step", "2"], &dir.path().join("y"));
    assert!(!o.status.success());
    assert!(text(&o).contains("hero-fd-step"), "{}", text(&o));
    // Learn2Perturb's noise modules exist for preact-resnet18 only.
    let out = dir.path().join("z");
    let o = temper(&[
        "train",
        "--method",
        "l2p",
        "--model",
        "small-cnn",
        "--out",
        out.to_str().unwrap_or_default(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("preact-resnet18"), "{}", text(&o));
}
