//! PGD step and training step throughput (images per second) for small-cnn and
//! preact-resnet18, each with references measured in the same run:
//!
//! - the same step with the reference kernels (`CandleKernels`, candle's own convolution and
//!   its backward) instead of the default CPU kernels (`FastCpuKernels`), as a ratio
//!   fast / reference for the PGD step (input gradient only) and for a training step
//!   (train-mode forward and backward with parameter gradients);
//! - when a Python with torch is available (`TEMPER_PYTHON`, default `python3`), the same
//!   one-step PGD attack in PyTorch on the same architecture, batch and thread count: a
//!   random start, one gradient pass, and as many further forward passes as Temper's attack
//!   makes (it scores the iterate and the returned point), counted from Temper's own cost so
//!   both sides do the same work.
//!
//! `cargo run --release -p temper-attacks --example bench_pgd [-- --quick]`

use candle_core::{Device, Tensor};
use std::sync::Arc;
use std::time::Instant;
use temper_attacks::{Attack, Goal, PgdParams};
use temper_core::kernels::{CandleKernels, FastCpuKernels, Kernels};
use temper_core::{Classifier, Mode, Network};
use temper_models::{build, ModelConfig, ModelKind};

fn time<F: FnMut() -> anyhow::Result<()>>(reps: usize, mut f: F) -> anyhow::Result<f64> {
    f()?; // warm-up
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}

const PYTORCH: &str = r#"
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[3]))
class SmallCnn(nn.Module):
    def __init__(s):
        super().__init__(); s.c1=nn.Conv2d(1,16,4,2,1); s.c2=nn.Conv2d(16,32,4,2,1); s.f1=nn.Linear(1568,100); s.f2=nn.Linear(100,10)
    def forward(s,x): return s.f2(F.relu(s.f1(F.relu(s.c2(F.relu(s.c1(x)))).flatten(1))))
class Block(nn.Module):
    def __init__(s,i,o,st):
        super().__init__(); s.b1=nn.BatchNorm2d(i); s.c1=nn.Conv2d(i,o,3,st,1,bias=False); s.b2=nn.BatchNorm2d(o); s.c2=nn.Conv2d(o,o,3,1,1,bias=False)
        s.sc=nn.Conv2d(i,o,1,st,bias=False) if st!=1 or i!=o else None
    def forward(s,x):
        o=F.relu(s.b1(x)); sc=s.sc(o) if s.sc is not None else x
        return s.c2(F.relu(s.b2(s.c1(o))))+sc
class PreAct(nn.Module):
    def __init__(s):
        super().__init__(); s.c=nn.Conv2d(3,64,3,1,1,bias=False); L=[]; i=64
        for o,st in [(64,1),(64,1),(128,2),(128,1),(256,2),(256,1),(512,2),(512,1)]: L.append(Block(i,o,st)); i=o
        s.l=nn.Sequential(*L); s.b=nn.BatchNorm2d(512); s.f=nn.Linear(512,10)
    def forward(s,x): return s.f(F.adaptive_avg_pool2d(F.relu(s.b(s.l(s.c(x)))),1).flatten(1))
name, bs = sys.argv[1], int(sys.argv[2])
m = SmallCnn() if name=="small-cnn" else PreAct()
m.eval()
for p in m.parameters(): p.requires_grad_(False)
x = torch.rand(bs,1,28,28) if name=="small-cnn" else torch.rand(bs,3,32,32)
y = torch.randint(0,10,(bs,))
extra = int(sys.argv[5])
def step():
    a = (x + torch.empty_like(x).uniform_(-0.03,0.03)).clamp(0,1).requires_grad_(True)
    g, = torch.autograd.grad(F.cross_entropy(m(a),y,reduction="sum"), a)
    adv = (x + (a + 0.01*g.sign() - x).clamp(-0.03,0.03)).clamp(0,1)
    with torch.no_grad():
        for _ in range(extra): m(adv)
    return adv
step()
reps = int(sys.argv[4]); t=time.perf_counter()
for _ in range(reps): step()
print(bs*reps/(time.perf_counter()-t))
"#;

/// PyTorch's images per second for the one-step attack with `extra` forward passes after
/// the gradient pass.
fn pytorch(name: &str, bs: usize, reps: usize, extra: u64) -> Option<f64> {
    let py = std::env::var("TEMPER_PYTHON").unwrap_or_else(|_| "python3".into());
    let threads = candle_core::utils::get_num_threads().to_string();
    let (bs, reps, extra) = (bs.to_string(), reps.to_string(), extra.to_string());
    let out = std::process::Command::new(py)
        .args(["-c", PYTORCH, name, &bs, &threads, &reps, &extra])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Seconds per one-step PGD attack (the step plus the forward passes that score it: the
/// real cost), and the forward passes per image beyond the gradient pass.
fn pgd_step(model: &Network, x: &Tensor, y: &Tensor, reps: usize) -> anyhow::Result<(f64, u64)> {
    let pgd = PgdParams {
        steps: 1,
        ..PgdParams::default()
    }
    .check()?;
    let mut rng = temper_core::seed::rng("bench");
    let cost = pgd.perturb(model, x, y, Goal::Untargeted, &mut rng)?.cost;
    let images = x.dim(0)?.max(1) as u64;
    let extra = cost.forward.saturating_sub(cost.backward) / images;
    let seconds = time(reps, || {
        pgd.perturb(model, x, y, Goal::Untargeted, &mut rng)?;
        Ok(())
    })?;
    Ok((seconds, extra))
}

/// Seconds per training step: train-mode forward and backward with parameter gradients.
fn train_step(model: &Network, x: &Tensor, y: &Tensor, reps: usize) -> anyhow::Result<f64> {
    model.set_mode(Mode::Train);
    let t = time(reps, || {
        let loss = candle_nn::loss::cross_entropy(&model.forward(x)?, y)?;
        loss.backward()?;
        Ok(())
    });
    model.set_mode(Mode::Eval);
    t
}

fn main() -> anyhow::Result<()> {
    // The CPU runtime set-up of the `temper` binary (candle's pool sleeps instead of
    // spinning, large buffers are reused), so the numbers are what a user gets.
    temper_core::device::tune_cpu_runtime();
    let quick = std::env::args().any(|a| a == "--quick");
    let dev = Device::Cpu;
    println!(
        "PGD and training step throughput on {} CPU threads (images/s, higher is better)",
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:<16} {:>5} {:>9} {:>10} {:>6} {:>9} {:>10} {:>6} {:>9} {:>10}",
        "model",
        "batch",
        "PGD fast",
        "PGD candle",
        "ratio",
        "train fast",
        "train cand",
        "ratio",
        "PyTorch",
        "vs PyTorch"
    );
    let fast: Arc<dyn Kernels> = Arc::new(FastCpuKernels);
    let reference: Arc<dyn Kernels> = Arc::new(CandleKernels);
    let mut rows = Vec::new();
    for (kind, bs, reps) in [
        (ModelKind::SmallCnn, 128, if quick { 3 } else { 20 }),
        (ModelKind::PreActResNet18, 32, if quick { 1 } else { 3 }),
    ] {
        let model = build(&ModelConfig::new(kind, 10).check()?, &dev)?;
        let [c, h, w] = model.input_shape();
        let x = Tensor::rand(0f32, 1f32, (bs, c, h, w), &dev)?;
        let y = Tensor::zeros(bs, candle_core::DType::U32, &dev)?;
        let mut t = [[0f64; 2]; 2]; // [pgd, train] x [fast, reference]
        let mut extra = 0;
        for (k, kernels) in [&fast, &reference].into_iter().enumerate() {
            model.set_kernels(kernels.clone());
            (t[0][k], extra) = pgd_step(&model, &x, &y, reps)?;
            t[1][k] = train_step(&model, &x, &y, reps)?;
        }
        model.set_kernels(fast.clone());
        let ips = |s: f64| bs as f64 / s;
        let (pgd_fast, pgd_ref) = (ips(t[0][0]), ips(t[0][1]));
        let (train_fast, train_ref) = (ips(t[1][0]), ips(t[1][1]));
        let torch = pytorch(kind.name(), bs, reps.max(2), extra);
        println!(
            "{:<16} {:>5} {:>9.0} {:>10.0} {:>6.2} {:>9.0} {:>10.0} {:>6.2} {:>9} {:>10}",
            kind.name(),
            bs,
            pgd_fast,
            pgd_ref,
            pgd_fast / pgd_ref,
            train_fast,
            train_ref,
            train_fast / train_ref,
            torch.map_or("-".into(), |t| format!("{t:.0}")),
            torch.map_or("-".into(), |t| format!("{:.2}x", pgd_fast / t))
        );
        rows.push(serde_json::json!({"model": kind.name(), "batch": bs,
            "temper_pgd_img_s": pgd_fast, "candle_kernels_pgd_img_s": pgd_ref,
            "ratio_vs_candle": pgd_fast / pgd_ref,
            "temper_train_img_s": train_fast, "candle_kernels_train_img_s": train_ref,
            "train_ratio_vs_candle": train_fast / train_ref,
            "pytorch_pgd_img_s": torch, "forward_passes_after_gradient": extra}));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "pgd_step", "kernels": fast.name(),
        "reference": reference.name(), "rows": rows})
    );
    Ok(())
}
