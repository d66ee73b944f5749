//! A resumable evaluation: interrupted, then continued from its state file, it ends with the
//! numbers and adversarial images of an uninterrupted run; a file of another evaluation is
//! refused with an error naming it.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{attacks, mnist_test, trained_mnist};
use std::path::Path;
use temper_attacks::Norm;
use temper_data::Dataset;
use temper_eval::{evaluate, evaluate_with, AdversarialBatch, EvalParams, Evaluation};

/// Randomized attacks (random starts, random squares), so that a resumed run must continue
/// every attack's random stream to agree.
const LIST: &str = "pgd-3,apgd-ce-8,square-40";

fn params(eps: f64, state: Option<&Path>) -> Result<temper_eval::ValidEvalParams> {
    params_cascade(eps, state, false)
}

fn params_cascade(eps: f64, state: Option<&Path>, cascade: bool) -> Result<temper_eval::ValidEvalParams> {
    Ok(EvalParams {
        batch_size: 20,
        masking: None,
        state: state.map(Path::to_path_buf),
        cascade,
        ..EvalParams::new(Norm::Linf, eps)
    }
    .check()?)
}

/// The evaluation without its wall-clock times, which differ between runs.
fn timeless(mut e: Evaluation) -> Evaluation {
    e.cost.seconds = 0.0;
    e.cost.images_per_second = 0.0;
    for a in &mut e.attacks {
        a.cost.seconds = 0.0;
        a.cost.images_per_second = 0.0;
    }
    e
}

/// Evaluates, collecting every attack's images; `stop_after` makes the sink fail after that
/// many batches (an interruption).
fn run(
    data: &Dataset,
    state: Option<&Path>,
    stop_after: Option<usize>,
) -> Result<(temper_eval::Result<Evaluation>, Vec<Vec<Tensor>>)> {
    run_cascade(data, state, stop_after, false)
}

fn run_cascade(
    data: &Dataset,
    state: Option<&Path>,
    stop_after: Option<usize>,
    cascade: bool,
) -> Result<(temper_eval::Result<Evaluation>, Vec<Vec<Tensor>>)> {
    let model = trained_mnist()?;
    let list = attacks(LIST, 0.15)?;
    let mut images: Vec<Vec<Tensor>> = list.iter().map(|_| Vec::new()).collect();
    let mut calls = 0;
    let mut sink = |b: AdversarialBatch<'_>| -> temper_eval::Result<()> {
        if stop_after == Some(calls) {
            return Err(temper_eval::Error::Chart {
                chart: "interruption".into(),
                reason: "simulated".into(),
            });
        }
        calls += 1;
        images[b.attack].push(b.images);
        Ok(())
    };
    let e = evaluate_with(
        &model,
        data,
        &list,
        &params_cascade(0.15, state, cascade)?,
        &Device::Cpu,
        &mut sink,
    );
    Ok((e, images))
}

fn same_images(a: &[Vec<Tensor>], b: &[Vec<Tensor>]) -> Result<()> {
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (Tensor::cat(x, 0)?, Tensor::cat(y, 0)?);
        let diff = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "the replayed images differ");
    }
    Ok(())
}

#[test]
fn an_interrupted_evaluation_continues_to_the_uninterrupted_result() -> Result<()> {
    temper_core::seed::set_seed(5);
    let data = mnist_test(60)?;
    let (whole, whole_images) = run(&data, None, None)?;
    let whole = timeless(whole?);
    assert!(whole.attacks.iter().any(|a| a.cascade.broken > 0));

    let dir = tempfile::tempdir()?;
    let state = dir.path().join("eval-state.json");
    // Interrupted in the middle of the second batch (after its first attack).
    let (cut, _) = run(&data, Some(&state), Some(4))?;
    assert!(cut.is_err(), "the simulated interruption must stop the run");
    let text = std::fs::read_to_string(&state)?;
    assert!(text.contains("temper.eval-state.v1"));
    let (resumed, resumed_images) = run(&data, Some(&state), None)?;
    assert_eq!(timeless(resumed?), whole);
    same_images(&whole_images, &resumed_images)?;

    // A finished file replays everything: nothing runs, same numbers.
    let (again, _) = run(&data, Some(&state), None)?;
    assert_eq!(timeless(again?), whole);
    Ok(())
}

#[test]
fn a_shorter_run_is_continued_by_a_longer_one() -> Result<()> {
    temper_core::seed::set_seed(5);
    let model = trained_mnist()?;
    let list = attacks(LIST, 0.15)?;
    let whole = timeless(evaluate(
        &model,
        &mnist_test(60)?,
        &list,
        &params(0.15, None)?,
        &Device::Cpu,
    )?);
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("s.json");
    let p = params(0.15, Some(&state))?;
    evaluate(&model, &mnist_test(40)?, &list, &p, &Device::Cpu)?;
    let longer = timeless(evaluate(&model, &mnist_test(60)?, &list, &p, &Device::Cpu)?);
    assert_eq!(longer, whole);
    Ok(())
}

#[test]
fn a_state_file_of_another_evaluation_is_refused_by_name() -> Result<()> {
    // Every test of this binary sets the same global seed: the file records it.
    temper_core::seed::set_seed(5);
    let model = trained_mnist()?;
    let data = mnist_test(20)?;
    let list = attacks("pgd-2", 0.1)?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("my-state.json");
    evaluate(&model, &data, &list, &params(0.1, Some(&state))?, &Device::Cpu)?;

    let refused = |e: temper_eval::Result<Evaluation>, what: &str| {
        let msg = match e {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{what}: accepted"),
        };
        assert!(msg.contains("my-state.json"), "{what}: {msg}");
        msg
    };
    let msg = refused(
        evaluate(&model, &data, &list, &params(0.2, Some(&state))?, &Device::Cpu),
        "other eps",
    );
    assert!(msg.contains("threat"), "{msg}");
    let msg = refused(
        evaluate(
            &model,
            &data,
            &attacks("pgd-3", 0.1)?,
            &params(0.1, Some(&state))?,
            &Device::Cpu,
        ),
        "other attacks",
    );
    assert!(msg.contains("attacks"), "{msg}");
    let msg = refused(
        evaluate(
            &model,
            &mnist_test(40)?.subset(&(20..40).collect::<Vec<_>>())?,
            &list,
            &params(0.1, Some(&state))?,
            &Device::Cpu,
        ),
        "other data",
    );
    assert!(msg.contains("other images"), "{msg}");

    let untrained = temper_models::build(
        &temper_models::ModelConfig::new(temper_models::ModelKind::SmallCnn, 10).check()?,
        &Device::Cpu,
    )?;
    let msg = refused(
        evaluate(
            &untrained,
            &data,
            &list,
            &params(0.1, Some(&state))?,
            &Device::Cpu,
        ),
        "other weights",
    );
    assert!(msg.contains("other weights"), "{msg}");

    std::fs::write(&state, "{ not json")?;
    let msg = refused(
        evaluate(&model, &data, &list, &params(0.1, Some(&state))?, &Device::Cpu),
        "garbage",
    );
    assert!(msg.contains("not an evaluation state file"), "{msg}");
    Ok(())
}

#[test]
fn an_interrupted_cascade_continues_to_the_uninterrupted_result_and_is_not_mixed_with_a_full_run(
) -> Result<()> {
    temper_core::seed::set_seed(5);
    let data = mnist_test(60)?;
    let (whole, whole_images) = run_cascade(&data, None, None, true)?;
    let whole = timeless(whole?);
    assert!(whole.cascade);
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("cascade.json");
    let (cut, _) = run_cascade(&data, Some(&state), Some(4), true)?;
    assert!(cut.is_err(), "the simulated interruption must stop the run");
    let (resumed, resumed_images) = run_cascade(&data, Some(&state), None, true)?;
    assert_eq!(timeless(resumed?), whole);
    same_images(&whole_images, &resumed_images)?;
    // The same file for an evaluation that runs every attack on every sample: refused.
    let (mixed, _) = run_cascade(&data, Some(&state), None, false)?;
    let err = mixed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("cascade") && err.contains("cascade.json"), "{err}");
    Ok(())
}
