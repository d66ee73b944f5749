//! Reports: the JSON schema (round trip, and every field documented in docs/eval-report.md),
//! the Markdown summary, and the PNG charts.

mod common;

use anyhow::{Context, Result};
use candle_core::Device;
use common::{attacks, tiny_data, tiny_model};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use temper_attacks::spec::{AttackSettings, AttackSpec};
use temper_attacks::Norm;
use temper_eval::chart::{self, Figure};
use temper_eval::{
    evaluate, sweep, DatasetSection, EvalParams, FlagEntry, MaskingFlag, MaskingParams, ModelSection, Report,
    RunSection, SweepParams, TrainingLog,
};

/// Charts are kept here after the run, so that a person can look at them.
fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("temper-eval-report");
    let _ = std::fs::create_dir_all(&d);
    d
}

/// One of every flag, so that every key a report can hold appears.
fn every_flag() -> Vec<MaskingFlag> {
    vec![
        MaskingFlag::ZeroGradient {
            count: 3,
            samples: 20,
        },
        MaskingFlag::NonFiniteGradient {
            count: 1,
            samples: 20,
        },
        MaskingFlag::MoreStepsRaiseAccuracy {
            steps: 10,
            more_steps: 40,
            accuracy: 0.4,
            accuracy_more_steps: 0.5,
        },
        MaskingFlag::LargerEpsRaisesAccuracy {
            attack: "pgd-20".into(),
            eps: 0.1,
            accuracy: 0.3,
            larger_eps: 0.2,
            accuracy_larger_eps: 0.35,
        },
        MaskingFlag::NoiseBeatsAttack {
            attack: "fgsm".into(),
            accuracy_attack: 0.6,
            accuracy_noise: 0.5,
        },
        MaskingFlag::UnboundedAttackFails {
            norm: Norm::Linf,
            eps: 1.0,
            robust_accuracy: 0.2,
        },
        MaskingFlag::NoSuccessDespiteErrors {
            norm: Norm::Linf,
            eps: 1.0,
            clean_accuracy: 0.9,
        },
        MaskingFlag::RandomizedModel {
            count: 20,
            samples: 20,
        },
        MaskingFlag::SoftmaxOutputs,
        MaskingFlag::SquareBeatsWhiteBox {
            square: "square".into(),
            accuracy_square: 0.2,
            attack: "apgd-ce".into(),
            accuracy_attack: 0.4,
        },
        MaskingFlag::FewClasses { classes: 3 },
    ]
}

/// A report with every optional part present: masking checks, a sweep, a minimum-norm
/// attack, weights and a command line.
fn full_report() -> Result<Report> {
    let model = tiny_model()?;
    let data = tiny_data(40)?;
    let list = attacks("fgsm,pgd-3,cw-5", 0.1)?;
    let params = EvalParams {
        batch_size: 16,
        masking: Some(MaskingParams {
            samples: 16,
            steps: 2,
            noise_draws: 1,
            ..MaskingParams::default()
        }),
        ..EvalParams::new(Norm::Linf, 0.1)
    }
    .check()?;
    let e = evaluate(&model, &data, &list, &params, &Device::Cpu)?;
    let settings = AttackSettings {
        eps: 0.1,
        steps: 3,
        ..AttackSettings::default()
    };
    let sp = SweepParams {
        eps: vec![0.0, 0.05, 0.1],
        batch_size: 40,
    }
    .check()?;
    let s = sweep(
        &model,
        &data,
        &AttackSpec::parse("pgd")?,
        &settings,
        &sp,
        &Device::Cpu,
    )?;
    Ok(Report::new(
        ModelSection::of(&model, Some(Path::new("weights.safetensors"))),
        DatasetSection::of(&data),
        RunSection::new("cpu", Some("temper eval ...".into())),
        e,
        vec![s],
    ))
}

#[test]
fn json_round_trips_and_refuses_other_schemas() -> Result<()> {
    let mut r = full_report()?;
    r.flags = every_flag().into_iter().map(FlagEntry::from).collect();
    let json = r.to_json()?;
    let back = Report::from_json(&json, "test")?;
    assert_eq!(back, r);
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(v["schema"], "temper.eval.v1");
    assert_eq!(v["flags"][0]["kind"], "zero_gradient");
    assert!(v["flags"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("3 of 20")));
    assert!(
        v["evaluation"]["attacks"][2]["eps"].is_null(),
        "cw is minimum-norm"
    );

    let other = json.replace("temper.eval.v1", "temper.eval.v0");
    let err = Report::from_json(&other, "old.json")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("old.json") && err.contains("temper.eval.v0"),
        "{err}"
    );
    assert!(Report::from_json("{}", "empty.json").is_err());

    let dir = tempfile::tempdir()?;
    let files = r.write(dir.path())?;
    assert_eq!(Report::read(&files.json)?, r);
    let md = std::fs::read_to_string(&files.markdown)?;
    for part in [
        "# Robustness evaluation",
        "## Warnings",
        "## Per-class accuracy",
        "## Confusion matrix, worst case",
        "## Robust accuracy vs eps",
        "## Gradient-masking checks",
        "zero_gradient",
    ] {
        assert!(md.contains(part), "report.md lacks '{part}'");
    }
    let png = files.chart.context("a sweep draws a chart")?;
    assert!(image::open(&png)?.width() >= 600);
    let text = r.to_text();
    assert!(text.contains("worst case") && text.contains("WARNING"));
    Ok(())
}

/// Leaf paths of a JSON value: `a.b`, arrays of objects as `a[].b`; arrays of scalars and
/// nulls are leaves.
fn leaf_paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                leaf_paths(v, &join(k), out);
            }
        }
        serde_json::Value::Array(a) if a.iter().any(|e| e.is_object()) => {
            for e in a {
                leaf_paths(e, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// The paths docs/eval-report.md documents. Tables under a `### `Type`` heading define a
/// type; a root row whose type cell names one expands to its fields (`array of` adds `[]`).
fn documented_paths(doc: &str) -> BTreeSet<String> {
    let rows = |f: &mut dyn FnMut(Option<&str>, &str, &str)| {
        // `None`: outside the tables that describe fields; `Some("")`: the root table.
        let mut section: Option<String> = None;
        for line in doc.lines() {
            if let Some(h) = line.strip_prefix("### ") {
                section = h.split('`').nth(1).map(str::to_string);
            } else if let Some(h) = line.strip_prefix("## ") {
                section = (h.trim() == "Fields").then(String::new);
            } else if let (Some(sec), Some(rest)) = (&section, line.strip_prefix("| `")) {
                let mut cells = rest.split('|');
                let path = cells.next().unwrap_or("").trim().trim_end_matches('`');
                let ty = cells.next().unwrap_or("").trim();
                // Rows for containers (`object or null`, `array`) introduce their fields.
                if !(ty.starts_with("object") || ty == "array") {
                    f(Some(sec.as_str()).filter(|s| !s.is_empty()), path, ty);
                }
            }
        }
    };
    let mut types: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    rows(&mut |sec, path, _| {
        if let Some(t) = sec {
            types.entry(t.to_string()).or_default().push(path.to_string());
        }
    });
    let mut out = BTreeSet::new();
    rows(&mut |sec, path, ty| {
        if sec.is_some() {
            return;
        }
        match types.iter().find(|(t, _)| ty.contains(&format!("[`{t}`]"))) {
            Some((_, fields)) => {
                let base = if ty.starts_with("array of") {
                    format!("{path}[]")
                } else {
                    path.to_string()
                };
                out.extend(fields.iter().map(|f| format!("{base}.{f}")));
            }
            None => {
                out.insert(path.to_string());
            }
        }
    });
    out
}

#[test]
fn every_field_is_documented_and_every_documented_field_exists() -> Result<()> {
    let mut r = full_report()?;
    r.flags = every_flag().into_iter().map(FlagEntry::from).collect();
    let v: serde_json::Value = serde_json::from_str(&r.to_json()?)?;
    let mut actual = BTreeSet::new();
    leaf_paths(&v, "", &mut actual);
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/eval-report.md");
    let doc = std::fs::read_to_string(&doc_path).with_context(|| format!("{}", doc_path.display()))?;
    let documented = documented_paths(&doc);
    let undocumented: Vec<_> = actual.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&actual).collect();
    assert!(
        undocumented.is_empty(),
        "fields missing from docs/eval-report.md: {undocumented:#?}"
    );
    assert!(
        stale.is_empty(),
        "docs/eval-report.md documents fields reports lack: {stale:#?}"
    );
    Ok(())
}

/// Decodes a PNG and checks its size and that it has ink: dark pixels (text, axes) in the
/// top band, where titles are, and coloured pixels (the lines).
fn check_png(path: &Path, min: (u32, u32)) -> Result<()> {
    let bytes = std::fs::read(path)?;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let img = image::load_from_memory(&bytes)?.to_rgb8();
    let (w, h) = img.dimensions();
    assert!(
        w >= min.0 && h >= min.1 && w <= 4000 && h <= 4000,
        "{}: {w}x{h}",
        path.display()
    );
    let dark_in_title = (0..w)
        .flat_map(|x| (0..h / 12).map(move |y| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark_in_title > 100,
        "{}: no title text drawn ({dark_in_title} dark pixels)",
        path.display()
    );
    let coloured = img
        .pixels()
        .filter(|p| p.0.iter().max().unwrap_or(&0) - p.0.iter().min().unwrap_or(&0) > 80)
        .count();
    assert!(
        coloured > 200,
        "{}: no coloured line ({coloured} pixels)",
        path.display()
    );
    Ok(())
}

#[test]
fn charts_are_readable_pngs() -> Result<()> {
    let dir = out_dir();
    let r = full_report()?;
    let p = dir.join("robust_vs_eps.png");
    chart::robust_vs_eps(&r.sweeps, "small-cnn").save(&p)?;
    check_png(&p, (800, 500))?;

    // A training log as temper-train writes it: loss falls, accuracies rise, one-cycle LR.
    let mut text = String::new();
    for it in 0..=200u32 {
        let e = f64::from(it) / 20.0;
        let lr = if e < 3.0 {
            0.05 * e / 3.0
        } else {
            0.05 * (10.0 - e) / 7.0
        };
        text.push_str(&format!(
            "{{\"kind\":\"train\",\"epoch\":{e},\"iter\":{it},\"loss\":{},\"acc\":{},\"lr\":{lr}}}\n",
            2.3 * (-e / 2.0).exp() + 0.3,
            0.95 - 0.85 * (-e).exp()
        ));
        if it % 20 == 0 && it > 0 {
            let robust = if e < 2.0 {
                "null".to_string()
            } else {
                format!("{}", 0.7 - 0.6 * (-e / 3.0).exp())
            };
            text.push_str(&format!(
                "{{\"kind\":\"val\",\"epoch\":{e},\"iter\":{it},\"clean_acc\":{},\"robust_acc\":{robust},\"loss\":{}}}\n",
                0.97 - 0.5 * (-e).exp(),
                1.5 * (-e / 2.0).exp() + 0.25
            ));
        }
    }
    let log = TrainingLog::parse(&text, Path::new("metrics.jsonl"))?;
    let p = dir.join("curves.png");
    let fig = chart::training_curves(&log, "runs/demo");
    assert_eq!(fig.panels.len(), 3);
    assert!(fig
        .panels
        .iter()
        .all(|p| !p.title.is_empty() && !p.x_label.is_empty() && !p.y_label.is_empty()));
    fig.save(&p)?;
    check_png(&p, (1500, 450))?;

    let points: Vec<(f64, f64)> = (0..400)
        .map(|i| {
            let e = 30.0 * f64::from(i) / 399.0;
            (e, 0.1 * 0.5 * (1.0 + (std::f64::consts::PI * e / 30.0).cos()))
        })
        .collect();
    let p = dir.join("lr.png");
    chart::lr_schedule(&points, "cosine:peak=0.1").save(&p)?;
    check_png(&p, (800, 500))?;

    // An empty log still draws, saying there is no data, rather than failing.
    let empty = Figure {
        ..chart::training_curves(&TrainingLog::default(), "empty")
    };
    check_png_bytes(&empty.render_png()?)?;
    eprintln!("charts in {}", dir.display());
    Ok(())
}

fn check_png_bytes(bytes: &[u8]) -> Result<()> {
    let img = image::load_from_memory(bytes)?;
    assert!(img.width() > 100 && img.height() > 100);
    Ok(())
}
