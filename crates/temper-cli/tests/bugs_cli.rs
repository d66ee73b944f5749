//! Bugs a review found, each reproduced through the real binary: absurd sizes were an abort
//! (exit 134) instead of an error, `--augment` refused the on/off its help promised, and an
//! image folder's validation split was labelled by its own class list.

use assert_cmd::Command;
use predicates::prelude::*;

fn temper() -> Command {
    Command::cargo_bin("temper").unwrap_or_else(|e| panic!("binary not built: {e}"))
}

#[test]
fn huge_sizes_are_errors_not_aborts() {
    for (flag, value, names) in [
        ("--input-size", "65536", "input-size"),
        ("--num-classes", "100000000", "num-classes"),
        ("--input-size", "4096", "parameters"),
    ] {
        let out = temper()
            .args(["model", "summary", "--model", "small-cnn", flag, value])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{flag} {value}: {err}");
    }
}

#[test]
fn augment_takes_on_and_off() {
    // With a valid switch the command gets as far as asking for --out.
    for v in ["on", "off", "true", "false", "ON"] {
        temper()
            .args(["train", "--model", "small-cnn", "--augment", v])
            .assert()
            .failure()
            .stderr(predicate::str::contains("--out RUN_DIR is required"));
    }
    temper()
        .args(["train", "--model", "small-cnn", "--augment", "maybe"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("not on or off"));
}

#[test]
fn image_folder_validation_labels_come_from_the_train_classes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([100, 50, 25]));
    for p in [
        "train/cat/0.png",
        "train/dog/0.png",
        "val/bird/0.png",
        "val/cat/0.png",
    ] {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap_or(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        img.save(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    temper()
        .args([
            "data",
            "inspect",
            "--dataset",
            "image-folder",
            "--split",
            "test",
            "--data-dir",
        ])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("bird"))
        .stderr(predicate::str::contains("train split"));
}

/// A checkpoint that records no normalisation, loaded into preact-resnet18 (whose default is
/// CIFAR-10's) without --normalize, says which normalisation it assumed; one written with
/// Temper's metadata, or loaded with --normalize, says nothing.
#[test]
fn an_assumed_normalization_is_announced() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut c = temper_models::ModelConfig::new(temper_models::ModelKind::PreActResNet18, 10);
    c.width = 0.125;
    c.normalization = Some(temper_core::Normalization::identity(3));
    let cfg = c.check().unwrap_or_else(|e| panic!("{e}"));
    let model = temper_models::build(&cfg, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let bare = dir.path().join("bare.safetensors");
    let recorded = dir.path().join("recorded.safetensors");
    let none = Default::default();
    temper_core::weights::save(
        temper_core::Classifier::params(&model),
        &bare,
        candle_core::DType::F32,
        &none,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    temper_models::save(&model, &cfg, &recorded, candle_core::DType::F32, &none)
        .unwrap_or_else(|e| panic!("{e}"));
    let attack = |file: &std::path::Path, extra: &[&str]| {
        let out = temper()
            .args([
                "attack",
                "--model",
                "preact-resnet18",
                "--width",
                "0.125",
                "--limit",
                "1",
                "--weights",
            ])
            .arg(file)
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = attack(&bare, &[]);
    assert!(
        err.contains("warning:") && err.contains("CIFAR-10") && err.contains("--normalize none"),
        "{err}"
    );
    assert!(!attack(&bare, &["--normalize", "cifar10"]).contains("warning:"));
    assert!(!attack(&recorded, &[]).contains("warning:"));
}

/// An absurd --image-size for an image folder is an error, not an abort.
#[test]
fn a_huge_image_size_is_an_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("train/cat/0.png");
    std::fs::create_dir_all(path.parent().unwrap_or(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = temper()
        .args([
            "data",
            "inspect",
            "--dataset",
            "image-folder",
            "--split",
            "train",
            "--image-size",
            "65536",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than 4096"));
}

/// `--alpha` takes a multiple of eps on train as on attack; a step that is no positive number
/// is refused naming the flag.
#[test]
fn alpha_takes_a_multiple_of_eps() {
    temper()
        .args([
            "train",
            "--model",
            "small-cnn",
            "--eps",
            "8/255",
            "--alpha",
            "eps/4",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--out RUN_DIR is required"));
    temper()
        .args(["train", "--model", "small-cnn", "--alpha", "eps/0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--alpha 'eps/0'"));
}
