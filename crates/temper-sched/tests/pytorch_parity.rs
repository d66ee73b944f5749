//! Cross-checks [`Sgd`](temper_sched::Sgd) and [`AdamW`](temper_sched::AdamW) against
//! `torch.optim`, with fixtures written by `tests/fixtures/optim/make_fixtures.py` (no Python
//! needed here): parameters after every step and the final optimizer state must agree within
//! 1e-6 relative (normwise, see [`rel_err`]).

use anyhow::{ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use temper_core::{Builder, Init, ParamStore, Role};
use temper_sched::OptimizerConfig;

const RTOL: f64 = 1e-6;

#[derive(serde::Deserialize)]
struct Manifest {
    steps: usize,
    params: Vec<ParamSpec>,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct ParamSpec {
    name: String,
    role: Role,
    shape: Vec<usize>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    spec: String,
    decay_scope: String,
    lrs: Vec<f64>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/optim")
}

fn load() -> Result<(Manifest, HashMap<String, Tensor>)> {
    let text = std::fs::read_to_string(fixtures().join("optim.json"))?;
    let manifest: Manifest = serde_json::from_str(&text)?;
    let tensors = candle_core::safetensors::load(fixtures().join("optim.safetensors"), &Device::Cpu)?;
    Ok((manifest, tensors))
}

fn get<'a>(t: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    t.get(key).with_context(|| format!("fixture has no `{key}`"))
}

/// The relative error `max |ours - torch| / max |torch|` of a tensor.
///
/// Normwise rather than elementwise, because an element that is the difference of two close
/// numbers (0.7689 - 0.7696 = -6.7e-4 happens here) carries the rounding error of its
/// operands, a few 1e-8 in absolute terms: PyTorch fuses multiply-adds on CPU and candle
/// does not, so the last bit of the operands differs and the small difference has a large
/// elementwise relative error though both libraries are exact to an ulp of the operands.
fn rel_err(ours: &Tensor, torch: &Tensor) -> Result<f64> {
    ensure!(
        ours.dims() == torch.dims(),
        "shape {:?} vs {:?}",
        ours.dims(),
        torch.dims()
    );
    let a = ours.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = torch.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    Ok(if diff == 0.0 { 0.0 } else { diff / scale })
}

/// The fixture's parameters, plus a BatchNorm buffer that no optimizer may touch.
fn store(m: &Manifest, t: &HashMap<String, Tensor>) -> Result<ParamStore> {
    let b = Builder::zeroed(&Device::Cpu);
    for p in &m.params {
        let var = b.param(&p.name, &p.shape, Init::Const(0.0), p.role)?;
        var.set(get(t, &format!("init.{}", p.name))?)?;
    }
    b.buffer("bn.running_mean", &[4], Init::Const(0.5))?;
    Ok(b.finish())
}

#[test]
fn optimizers_match_torch_optim() -> Result<()> {
    let (m, t) = load()?;
    ensure!(m.cases.len() == 5, "expected 5 cases, found {}", m.cases.len());
    for case in &m.cases {
        let config: OptimizerConfig = case.spec.parse()?;
        ensure!(config
            .to_string()
            .contains(&format!("decay_scope={}", case.decay_scope)));
        let mut opt = config.build()?;
        let store = store(&m, &t)?;
        let mut worst = 0f64;
        for k in 1..=m.steps {
            let mut grads = GradStore::default();
            for p in &m.params {
                if let Some(g) = t.get(&format!("grad.{k}.{}", p.name)) {
                    let var = &store.get(&p.name).context("param")?.var;
                    grads.insert(var.as_tensor(), g.clone());
                }
            }
            opt.step(&store, &grads, case.lrs[k - 1])?;
            for p in &m.params {
                let ours = store.get(&p.name).context("param")?.var.as_tensor();
                let err = rel_err(ours, get(&t, &format!("{}.{k}.{}", case.name, p.name))?)?;
                ensure!(
                    err <= RTOL,
                    "{} step {k} `{}`: relative error {err:e}",
                    case.name,
                    p.name
                );
                worst = worst.max(err);
            }
        }

        // The final state, key for key, under PyTorch's state names.
        let state = opt.export_state()?;
        let prefix = format!("{}.state.", case.name);
        let expected = t.keys().filter(|k| k.starts_with(&prefix)).count();
        ensure!(
            state.len() == expected + 1,
            "{}: {} state keys, torch has {expected} (+ step)",
            case.name,
            state.len()
        );
        let mut worst_state = 0f64;
        for (key, ours) in &state {
            if key == "step" {
                ensure!(ours.to_scalar::<i64>()? == m.steps as i64, "global step");
                continue;
            }
            let torch = get(&t, &format!("{prefix}{key}"))?;
            let err = rel_err(&ours.to_dtype(DType::F32)?, torch)?;
            ensure!(err <= RTOL, "{} state `{key}`: relative error {err:e}", case.name);
            worst_state = worst_state.max(err);
        }

        let rm = store.get("bn.running_mean").context("buffer")?.var.as_tensor();
        ensure!(rm.to_vec1::<f32>()? == vec![0.5f32; 4], "a buffer was updated");
        println!(
            "{:<18} max relative error vs PyTorch: params {worst:.2e}, state {worst_state:.2e}",
            case.name
        );
    }
    Ok(())
}
