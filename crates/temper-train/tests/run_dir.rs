//! Run directories under failure: divergence, kills during writes, failed starts, resuming a
//! finished run, and what the progress display is told.

mod common;

use anyhow::{ensure, Result};
use candle_core::Device;
use common::{all_finite, config, opts};
use std::sync::{Arc, Mutex};
use temper_train::render::{IterInfo, Renderer};
use temper_train::{files, resume, train, Error, Method, RunOptions, TrainReport};

fn diverging() -> temper_train::TrainConfig {
    let mut c = config(Method::Natural);
    c.lr_schedule = "constant:lr=1e6".into();
    c
}

#[test]
fn a_diverging_run_stops_before_the_step_and_saves_nothing_non_finite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // With a checkpoint after every iteration, something is kept from before the divergence.
    let d = dir.path().join("kept");
    let mut c = diverging();
    c.checkpoint_every = 1;
    let e = train(c.check()?, &d, &Device::Cpu, opts(None))
        .err()
        .ok_or_else(|| anyhow::anyhow!("a run at lr 1e6 did not fail"))?;
    ensure!(matches!(e, Error::Diverged { .. }), "{e}");
    let msg = e.to_string();
    ensure!(msg.contains("diverged") && msg.contains("learning rate"), "{msg}");
    for f in [files::CHECKPOINT, files::LAST, files::BEST] {
        let p = d.join(f);
        ensure!(!p.exists() || all_finite(&p)?, "{f} holds non-finite values");
    }
    ensure!(all_finite(&d.join(files::CHECKPOINT))?);
    let summary: TrainReport = serde_json::from_str(&std::fs::read_to_string(d.join(files::SUMMARY))?)?;
    ensure!(summary
        .stopped
        .as_deref()
        .unwrap_or_default()
        .contains("diverged"));
    for f in &summary.files {
        ensure!(d.join(f).is_file(), "summary names {f}, which does not exist");
    }
    ensure!(
        !d.join(files::LAST).exists(),
        "the diverged weights were saved as the last ones"
    );

    // Without a checkpoint nothing is kept, and the corrected command can reuse the folder.
    let d = dir.path().join("nothing");
    let mut c = diverging();
    c.checkpoint_every = 0;
    ensure!(matches!(
        train(c.check()?, &d, &Device::Cpu, opts(None)),
        Err(Error::Diverged { .. })
    ));
    ensure!(!d.join(files::CONFIG).exists() && !d.join(files::LAST).exists());
    let mut c = config(Method::Natural);
    c.epochs = 1;
    train(c.check()?, &d, &Device::Cpu, opts(None))?;
    Ok(())
}

#[test]
fn a_failed_start_leaves_no_config_behind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("run");
    let mut c = config(Method::Natural);
    c.batch_size = 1000; // larger than the 320 training digits
    let e = train(c.check()?, &d, &Device::Cpu, opts(None))
        .err()
        .map(|e| e.to_string());
    ensure!(e.unwrap_or_default().contains("batch-size"));
    ensure!(
        !d.join(files::CONFIG).exists(),
        "config.toml left by a run that never started"
    );
    let mut c = config(Method::Natural);
    c.epochs = 1;
    train(c.check()?, &d, &Device::Cpu, opts(None))?;
    Ok(())
}

#[test]
fn stale_temporary_files_are_removed_on_resume() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("run");
    train(config(Method::Natural).check()?, &d, &Device::Cpu, opts(Some(4)))?;
    // What a kill during an atomic write of the checkpoint leaves.
    let stale = d.join(".checkpoint.safetensors.tmp-4242");
    std::fs::write(&stale, b"half a checkpoint")?;
    let mine = d.join("notes.txt");
    std::fs::write(&mine, b"the user's file")?;
    let r = resume(&d, &Device::Cpu, opts(None))?;
    ensure!(r.complete);
    ensure!(!stale.exists(), "stale temporary file left in the run directory");
    ensure!(mine.exists(), "a file that is not the run's was removed");
    Ok(())
}

#[test]
fn resuming_a_finished_run_keeps_its_summary() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("run");
    let r = train(config(Method::Natural).check()?, &d, &Device::Cpu, opts(None))?;
    let before = std::fs::read(d.join(files::SUMMARY))?;
    let weights = std::fs::read(d.join(files::LAST))?;
    let again = resume(&d, &Device::Cpu, opts(None))?;
    ensure!(
        std::fs::read(d.join(files::SUMMARY))? == before,
        "summary.json rewritten"
    );
    ensure!(std::fs::read(d.join(files::LAST))? == weights);
    ensure!(again == r, "{again:?} != {r:?}");
    ensure!(again.val_clean.is_some() && again.val_robust.is_some());
    Ok(())
}

#[test]
fn validation_sizes_out_of_range_are_errors_naming_the_flag() {
    let err = |c: temper_train::TrainConfig| c.check().err().map(|e| e.to_string()).unwrap_or_default();
    let mut c = config(Method::Natural);
    c.val_split = 1.5;
    let e = err(c);
    ensure_contains(&e, "`val-split`");
    let mut c = config(Method::Natural);
    c.val_size = 0;
    ensure_contains(&err(c), "`val-size`");
    // Whole counts and fractions stay valid.
    for v in [0.0, 0.1, 800.0] {
        let mut c = config(Method::Natural);
        c.val_split = v;
        assert!(c.check().is_ok(), "{v}");
    }
}

fn ensure_contains(text: &str, part: &str) {
    assert!(text.contains(part), "'{text}' does not name {part}");
}

/// Records what the trainer tells its renderer.
#[derive(Clone, Default)]
struct Recorder {
    started: Arc<Mutex<Vec<(u64, u64)>>>,
    iters: Arc<Mutex<Vec<IterInfo>>>,
}

impl Renderer for Recorder {
    fn start(&mut self, total: u64, done: u64) {
        if let Ok(mut s) = self.started.lock() {
            s.push((total, done));
        }
    }
    fn iter(&mut self, info: &IterInfo) {
        if let Ok(mut s) = self.iters.lock() {
            s.push(*info);
        }
    }
    fn message(&mut self, _: &str) {}
    fn finish(&mut self) {}
}

#[test]
fn the_renderer_knows_the_total_and_agrees_with_the_log() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("run");
    let rec = Recorder::default();
    let mut o = RunOptions::new(Box::new(rec.clone()));
    o.stop_after = Some(4);
    train(config(Method::Natural).check()?, &d, &Device::Cpu, o)?;
    resume(&d, &Device::Cpu, RunOptions::new(Box::new(rec.clone())))?;
    // 5 iterations per epoch, 2 epochs; the resumed run starts at the checkpoint (3).
    let started = rec.started.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(started == vec![(10, 0), (10, 3)], "{started:?}");
    let log = std::fs::read_to_string(d.join(files::METRICS))?;
    let logged: Vec<(u64, f64)> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .filter_map(|v| Some((v["iter"].as_u64()?, v["epoch"].as_f64()?)))
        .collect();
    let shown = rec.iters.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(shown.len() >= 10);
    for i in &shown {
        ensure!(i.total == 10);
        let e = logged.iter().find(|(it, _)| *it == i.iter).map(|(_, e)| *e);
        ensure!(
            e == Some(i.epoch),
            "iteration {}: shown epoch {} but logged {e:?}",
            i.iter,
            i.epoch
        );
    }
    Ok(())
}
