//! `--state FILE` on `temper eval` and `temper attack`: an evaluation interrupted after its
//! first batches (simulated by running a prefix of the data, which leaves the file as an
//! interruption would) and continued from its state file gives the numbers of one
//! uninterrupted run; a bad or foreign state file is an error naming it. Also: `temper attack`
//! reports the cost in forward, backward passes and queries.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

/// The PGD-trained small-cnn of the AutoAttack fixtures.
fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/autoattack/small_cnn_pgd.safetensors")
}

fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// The value without wall-clock times, which differ between runs.
fn timeless(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("seconds");
            m.remove("images_per_second");
            m.values_mut().for_each(timeless);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(timeless),
        _ => {}
    }
}

/// Randomized attacks (random starts and squares): a continued run agrees only if every
/// attack's random stream continues where it stopped.
const ATTACKS: &str = "apgd-ce-10,apgd-t-5,square-50";

fn eval(limit: &str, state: Option<&Path>, dir: &Path) -> std::process::Output {
    let mut cmd = temper();
    cmd.args(["eval", "-m", "small-cnn", "-w"])
        .arg(fixture())
        .args(["--eps", "0.3", "--attacks", ATTACKS, "--limit", limit])
        .args([
            "--batch-size",
            "20",
            "--seed",
            "3",
            "--no-masking-checks",
            "--json",
        ])
        .arg("--out")
        .arg(dir);
    if let Some(s) = state {
        cmd.arg("--state").arg(s);
    }
    cmd.output().unwrap_or_else(|e| panic!("{e}"))
}

fn evaluation(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut v = json_of(&out.stdout)["evaluation"].clone();
    timeless(&mut v);
    v
}

#[test]
fn eval_continued_from_its_state_file_equals_one_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let whole = evaluation(&eval("60", None, &dir.path().join("whole")));
    let state = dir.path().join("aa-state.json");
    // The first two of three batches, as an interruption after them leaves the file.
    let first = eval("40", Some(&state), &dir.path().join("first"));
    assert!(String::from_utf8_lossy(&first.stderr).contains("recording progress in"));
    evaluation(&first);
    let rest = eval("60", Some(&state), &dir.path().join("rest"));
    assert!(String::from_utf8_lossy(&rest.stderr).contains("continuing from"));
    assert_eq!(evaluation(&rest), whole);
    assert!(whole["attacks"]
        .as_array()
        .is_some_and(|a| a.iter().any(|r| r["cascade"]["broken"].as_u64() > Some(0))));
}

#[test]
fn a_bad_state_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("wrong-state.json");
    std::fs::write(&state, "[1, 2").unwrap_or_else(|e| panic!("{e}"));
    let out = eval("20", Some(&state), &dir.path().join("r"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wrong-state.json") && err.contains("not an evaluation state file"),
        "{err}"
    );

    // A file of another evaluation (here: another eps) is refused, and says what differs.
    let other = dir.path().join("other.json");
    let run = |eps: &str| {
        temper()
            .args(["attack", "-m", "small-cnn", "-w"])
            .arg(fixture())
            .args(["--eps", eps, "--attacks", "pgd-2", "--limit", "10", "--state"])
            .arg(&other)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert!(run("0.1").status.success());
    let out = run("0.2");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other.json") && err.contains("threat: linf eps=0.1 -> linf eps=0.2"),
        "{err}"
    );
}

#[test]
fn attack_reports_passes_and_queries() {
    let run = |json: bool| {
        let mut cmd = temper();
        cmd.args(["attack", "-m", "small-cnn", "-w"])
            .arg(fixture())
            .args([
                "--eps",
                "0.3",
                "--attacks",
                "apgd-ce-5,square-20",
                "--limit",
                "12",
            ]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let v = json_of(&run(true));
    let square = v["attacks"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "square-20"))
        .unwrap_or_else(|| panic!("no square in {v}"));
    let queries = square["cost"]["queries"].as_u64().unwrap_or(0);
    assert!(queries > 0, "{square}");
    assert_eq!(
        square["cost"]["backward"].as_u64(),
        Some(0),
        "Square uses no gradient"
    );
    assert_eq!(v["cost"]["queries"].as_u64(), Some(queries));
    let text = String::from_utf8_lossy(&run(false)).to_string();
    assert!(
        text.contains(&format!("({queries} of them black-box queries)")),
        "{text}"
    );
    assert!(text.contains("total cost:"), "{text}");
}
