//! Snapshots of every command's `--help`, so a changed flag, default or description is a
//! visible diff in review. The expected text lives beside this file in `help/<command>.txt`;
//! after an intended change, regenerate with
//! `UPDATE_SNAPSHOTS=1 cargo test -p temper-cli --test help_snapshots`.

use assert_cmd::Command;
use std::path::PathBuf;

/// Every command path of the binary (the empty one is `temper --help`).
const COMMANDS: &[&[&str]] = &[
    &[],
    &["demo"],
    &["info"],
    &["model"],
    &["model", "list"],
    &["model", "summary"],
    &["attack"],
    &["train"],
    &["finetune"],
    &["data"],
    &["data", "inspect"],
    &["eval"],
    &["report"],
    &["sched"],
    &["sched", "plot"],
    &["quantize"],
    &["quant"],
    &["quant", "sweep"],
    &["quant", "inspect"],
    &["interpolate"],
    &["harden"],
    // Hidden from `temper --help`; run by `cargo xtask gpu-check`'s run.sh.
    &["gpu-check"],
];

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/help")
}

fn help(args: &[&str]) -> String {
    let out = Command::cargo_bin("temper")
        .unwrap_or_else(|e| panic!("binary not built: {e}"))
        .args(args)
        .arg("--help")
        // A fixed width, whatever the terminal of whoever runs the tests.
        .env("COLUMNS", "100")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "temper {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_help_matches_its_snapshot() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    let dir = snapshot_dir();
    let mut stale = Vec::new();
    for args in COMMANDS {
        let name = if args.is_empty() {
            "temper".to_string()
        } else {
            args.join("-")
        };
        let path = dir.join(format!("{name}.txt"));
        let got = help(args);
        if update {
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&path, &got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != got {
            stale.push(format!(
                "--- {} (expected)\n{want}\n+++ temper {} --help (got)\n{got}",
                path.display(),
                args.join(" ")
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{} help texts changed; if intended, run UPDATE_SNAPSHOTS=1 cargo test -p temper-cli --test help_snapshots\n\n{}",
        stale.len(),
        stale.join("\n")
    );
}

/// Every snapshot file belongs to a command, so a removed command leaves no stale file.
#[test]
fn no_snapshot_without_a_command() {
    let names: Vec<String> = COMMANDS
        .iter()
        .map(|a| {
            if a.is_empty() {
                "temper".into()
            } else {
                a.join("-")
            }
        })
        .collect();
    for entry in std::fs::read_dir(snapshot_dir()).unwrap_or_else(|e| panic!("{e}")) {
        let file = entry.unwrap_or_else(|e| panic!("{e}")).file_name();
        let file = file.to_string_lossy();
        let stem = file.trim_end_matches(".txt");
        assert!(
            names.iter().any(|n| n == stem),
            "tests/help/{file} has no command"
        );
    }
}
