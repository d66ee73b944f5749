//! End-to-end checks of `temper info` and `temper model` through the real binary.

use assert_cmd::Command;

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

#[test]
fn info_prints_version_features_and_devices() {
    let out = temper()
        .arg("info")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let s = String::from_utf8_lossy(&out);
    assert!(
        s.contains(env!("CARGO_PKG_VERSION")) && s.contains("devices:") && s.contains("cpu"),
        "{s}"
    );
}

#[test]
fn model_list_names_the_whole_zoo() {
    let out = temper()
        .args(["model", "list"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let s = String::from_utf8_lossy(&out);
    for m in [
        "small-cnn",
        "preact-resnet18",
        "resnet18",
        "resnet34",
        "resnet50",
        "wrn-28-10",
        "wrn-34-10",
        "vgg16-bn",
        "mobilenet-v2",
    ] {
        assert!(s.contains(m), "{m} missing from:\n{s}");
    }
}

#[test]
fn summary_parameter_counts_equal_pytorch() {
    // PyTorch's counts, from tests/fixtures/models/layouts.json (10 classes).
    let cases: &[(&[&str], u64)] = &[
        (&["--model", "small-cnn"], 166_406),
        (&["--model", "preact-resnet18"], 11_172_170),
        (&["--model", "resnet18", "--stem", "cifar"], 11_173_962),
        (&["--model", "resnet18", "--stem", "imagenet"], 11_181_642),
        (&["--model", "resnet34", "--stem", "imagenet"], 21_289_802),
        (&["--model", "resnet50", "--stem", "cifar"], 23_520_842),
        (
            &[
                "--model",
                "resnet50",
                "--stem",
                "imagenet",
                "--num-classes",
                "1000",
            ],
            25_557_032,
        ),
        (&["--model", "wrn-28-10"], 36_479_194),
        (&["--model", "wrn-34-10"], 46_160_474),
        (&["--model", "vgg16-bn"], 134_309_962),
        (&["--model", "mobilenet-v2"], 2_236_682),
    ];
    for (args, want) in cases {
        let out = temper()
            .args(["model", "summary", "--json"])
            .args(*args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let v: serde_json::Value =
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON: {e}"));
        assert_eq!(v["parameters"].as_u64(), Some(*want), "{args:?}");
        assert!(v["macs_per_image"].as_u64().unwrap_or(0) > 0, "{args:?}");
    }
    // The text form prints the count with separators, as the acceptance reads it.
    let out = temper()
        .args(["model", "summary", "--model", "preact-resnet18"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8_lossy(&out).contains("11,172,170"));
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = temper()
        .args(["model", "summary", "--model", "resnet9000"])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let s = String::from_utf8_lossy(&out);
    assert!(
        s.contains("unknown model 'resnet9000'") && s.contains("preact-resnet18"),
        "{s}"
    );
    let out = temper()
        .args(["model", "summary", "--model", "small-cnn", "--stem", "cifar"])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8_lossy(&out).contains("--stem applies to resnet"));
    let out = temper()
        .args(["model", "summary", "--model", "small-cnn", "--width", "-1"])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8_lossy(&out).contains("width"));
    temper()
        .args(["model", "summary", "--model", "small-cnn", "--num-classes", "0"])
        .assert()
        .failure();
}
