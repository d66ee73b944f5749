//! The cost of standard AutoAttack per image on this machine: each of its attacks (APGD-CE,
//! APGD-T, FAB-T, Square at the reference's strength) on a batch the model classifies
//! "correctly" (its own predictions are the labels, so every image is attacked), timed, with
//! its forward, backward and query passes per image.
//!
//! At `--eps 0` no attack can succeed, so every attack spends its whole budget on every image:
//! the cost of an image that survives AutoAttack, the most an image can cost. At a real eps,
//! the cost of each attack alone on these images (an evaluation's cascade spends less: each
//! attack only on the images the ones before it left).
//!
//! `cargo run --release -p temper-attacks --example bench_autoattack -- \
//!     [--model small-cnn|preact-resnet18] [--weights FILE] [--images N] [--eps E]`
//!
//! Without `--weights` the model keeps its seeded random initialisation. Images are uniform
//! noise of the model's input shape (seeded).

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use std::time::Instant;
use temper_attacks::{autoattack_components, AutoAttackVersion, Goal, Norm};
use temper_core::{Classifier, ForwardOpts, Mode};
use temper_models::{build, build_from_file, ModelConfig, ModelKind};

fn main() -> Result<()> {
    temper_core::device::tune_cpu_runtime();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let kind = ModelKind::parse(get("--model").unwrap_or("small-cnn"))?;
    let images: usize = get("--images").unwrap_or("20").parse().context("--images")?;
    let eps: f64 = get("--eps").unwrap_or("0").parse().context("--eps")?;
    if images == 0 {
        bail!("--images must be at least 1");
    }
    temper_core::seed::set_seed(0);
    let cfg = ModelConfig::new(kind, 10).check()?;
    let dev = Device::Cpu;
    let model = match get("--weights") {
        Some(w) => build_from_file(&cfg, w, temper_core::weights::Strictness::Strict, &dev)?.0,
        None => build(&cfg, &dev)?,
    };
    let [c, h, w] = model.input_shape();
    let x = {
        use rand::Rng as _;
        let mut rng = temper_core::seed::rng("bench/images");
        let v: Vec<f32> = (0..images * c * h * w).map(|_| rng.random::<f32>()).collect();
        Tensor::from_vec(v, (images, c, h, w), &dev)?
    };
    let opts = ForwardOpts {
        mode: Mode::Eval,
        param_grads: false,
    };
    let y = model.forward_opts(&x, opts)?.argmax(D::Minus1)?;
    println!(
        "{} ({} parameters{}), {images} images {c}x{h}x{w}, eps {eps}, linf",
        model.info().name,
        model.params().num_trainable(),
        if get("--weights").is_some() {
            ""
        } else {
            ", random initialisation"
        }
    );
    println!("attack    s/image  forward/image  backward/image  queries/image  broken");
    let mut total = 0.0;
    for (name, attack) in autoattack_components(AutoAttackVersion::Standard, Norm::Linf, eps)? {
        let mut rng = temper_core::seed::rng(&format!("bench/{name}"));
        let start = Instant::now();
        let out = attack.perturb(&model, &x, &y, Goal::Untargeted, &mut rng)?;
        let s = start.elapsed().as_secs_f64();
        total += s;
        let per = |v: u64| v as f64 / images as f64;
        println!(
            "{name:<9} {:7.3}  {:13.0}  {:14.0}  {:13.0}  {}/{images}",
            s / images as f64,
            per(out.cost.forward),
            per(out.cost.backward),
            per(out.cost.queries),
            out.success.iter().filter(|&&b| b).count()
        );
    }
    println!("all four  {:7.3} s/image", total / images as f64);
    Ok(())
}
