//! `temper attack`: clean and robust accuracy of a model under one attack.

use crate::args::{check_fit, load_any, AttackOpts, DataArgs, DeviceArgs, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use temper_attacks::spec::AttackSpec;
use temper_attacks::Goal;

/// Arguments of `temper attack`.
#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights: safetensors with PyTorch state_dict names (random initialisation if omitted),
    /// or a file written by `temper quantize`, attacked through its quantizer.
    #[arg(long, short = 'w')]
    weights: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Attack: fgsm, fgsm-rs, pgd, pgd-N, pgd-l2-N, pgd-cw-N (PGD on the CW margin loss), cw, cw-N.
    #[arg(long, short = 'a', default_value = "pgd")]
    attack: String,
    #[command(flatten)]
    opts: AttackOpts,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Write the adversarial images and labels to this safetensors file.
    #[arg(long)]
    save_adv: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: AttackArgs) -> Result<()> {
    let device = a.device.init()?;
    let loaded = load_any(&a.model, a.weights.as_deref(), &device)?;
    let model = loaded.classifier();
    let data = a.data.load()?;
    check_fit(model, &data)?;
    let spec = AttackSpec::parse(&a.attack)?;
    let settings = a.opts.settings()?;
    let attack = spec.build(&settings)?;
    if a.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    println!(
        "model:   {} ({} parameters)",
        model.info().name,
        model.params().num_trainable()
    );
    if let Some(q) = loaded.quantization() {
        println!("         quantized: {q}; attacked through the quantizer (straight-through gradients)");
    }
    println!(
        "data:    {} {} ({} images)",
        data.name(),
        a.data.split,
        data.len()
    );
    println!("attack:  {}", attack.name());
    let start = std::time::Instant::now();
    let mut rng = temper_core::seed::rng("attack");
    let (mut clean, mut robust, mut n) = (0usize, 0usize, 0usize);
    let (mut sum_linf, mut sum_l2, mut max_linf) = (0f64, 0f64, 0f32);
    let mut cost = temper_attacks::Cost::default();
    let mut advs = Vec::new();
    let mut labels = Vec::new();
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(a.batch_size) {
        let b = data.batch(chunk, &device)?;
        let logits = model.forward_opts(
            &b.images,
            temper_core::ForwardOpts {
                mode: temper_core::Mode::Eval,
                param_grads: false,
            },
        )?;
        let pred = logits.argmax(1)?.to_vec1::<u32>()?;
        let y = b.labels.to_dtype(candle_core::DType::U32)?;
        let yv = y.to_vec1::<u32>()?;
        let out = attack.perturb(model, &b.images, &y, Goal::Untargeted, &mut rng)?;
        cost += out.cost;
        for i in 0..chunk.len() {
            let ok = pred[i] == yv[i];
            clean += usize::from(ok);
            // Robust: correct on the clean point and on the adversarial one.
            robust += usize::from(ok && !out.success[i]);
            sum_linf += f64::from(out.linf[i]);
            sum_l2 += f64::from(out.l2[i]);
            max_linf = max_linf.max(out.linf[i]);
        }
        n += chunk.len();
        if a.save_adv.is_some() {
            advs.push(out.adv.to_device(&candle_core::Device::Cpu)?);
            labels.push(y.to_device(&candle_core::Device::Cpu)?);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
    println!();
    println!("clean accuracy:   {:6.2}%  ({clean}/{n})", pct(clean));
    println!("robust accuracy:  {:6.2}%  ({robust}/{n})", pct(robust));
    println!(
        "mean ‖δ‖∞:        {:.5}   (max {:.5})",
        sum_linf / n.max(1) as f64,
        max_linf
    );
    println!("mean ‖δ‖₂:        {:.5}", sum_l2 / n.max(1) as f64);
    println!(
        "cost:             {} forward + {} backward image passes, {secs:.1} s ({:.0} images/s)",
        cost.forward,
        cost.backward,
        n as f64 / secs.max(1e-9)
    );
    if let Some(path) = &a.save_adv {
        let adv = candle_core::Tensor::cat(&advs, 0)?;
        let lab = candle_core::Tensor::cat(&labels, 0)?;
        let mut meta = std::collections::HashMap::from([
            ("attack".to_string(), attack.name()),
            ("model".to_string(), model.info().name.clone()),
            ("dataset".to_string(), data.name().to_string()),
        ]);
        if let Some(q) = loaded.quantization() {
            meta.insert("quantization".to_string(), q);
        }
        temper_core::weights::save_tensors(&[("adv".into(), adv), ("labels".into(), lab)], path, &meta)
            .with_context(|| format!("cannot save adversarial examples to '{}'", path.display()))?;
        println!("adversarial examples written to {}", path.display());
    }
    Ok(())
}
