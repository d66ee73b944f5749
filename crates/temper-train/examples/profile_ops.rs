//! Where a forward pass spends its time, operation by operation: wraps the model's kernels
//! in a timer that adds up the wall time of every kernel call per operation and shape, then
//! prints the table sorted by time. (Backward time per operation is not visible from here:
//! it runs inside candle's backward; use `perf record` on `bench_steps` for that, as
//! docs/performance.md describes.)
//!
//! `cargo run --release -p temper-train --example profile_ops -- [MODEL] [BATCH] [REPS]`

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use temper_core::kernels::{BatchStats, ConvCfg, Kernels, KernelsWrapper, PoolCfg, Precision, Wrapped};
use temper_core::{Classifier, ForwardOpts, Mode};
use temper_models::{build, ModelConfig, ModelKind};

#[derive(Debug)]
struct Timed {
    inner: Arc<dyn Kernels>,
    table: Mutex<BTreeMap<String, (f64, usize)>>,
}

impl Timed {
    fn time<T>(&self, key: String, f: impl FnOnce() -> temper_core::Result<T>) -> temper_core::Result<T> {
        let start = Instant::now();
        let out = f()?;
        let dt = start.elapsed().as_secs_f64();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let e = t.entry(key).or_insert((0.0, 0));
        e.0 += dt;
        e.1 += 1;
        Ok(out)
    }
}

impl KernelsWrapper for Timed {
    fn inner(&self) -> &dyn Kernels {
        self.inner.as_ref()
    }
    fn name(&self) -> &str {
        "timed"
    }
    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        cfg: ConvCfg,
        p: Precision,
    ) -> temper_core::Result<Tensor> {
        let key = format!(
            "conv {:?} w {:?} s{} g{}",
            x.dims(),
            w.dims(),
            cfg.stride,
            cfg.groups
        );
        self.time(key, || self.inner.conv2d(x, w, b, cfg, p))
    }
    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: Precision,
    ) -> temper_core::Result<Tensor> {
        self.time(format!("linear {:?} w {:?}", x.dims(), w.dims()), || {
            self.inner.linear(x, w, b, p)
        })
    }
    fn batch_norm_train(
        &self,
        x: &Tensor,
        g: &Tensor,
        b: &Tensor,
        eps: f64,
    ) -> temper_core::Result<(Tensor, BatchStats)> {
        self.time(format!("bn-train {:?}", x.dims()), || {
            self.inner.batch_norm_train(x, g, b, eps)
        })
    }
    fn batch_norm_eval(
        &self,
        x: &Tensor,
        m: &Tensor,
        v: &Tensor,
        g: &Tensor,
        b: &Tensor,
        eps: f64,
    ) -> temper_core::Result<Tensor> {
        self.time(format!("bn-eval {:?}", x.dims()), || {
            self.inner.batch_norm_eval(x, m, v, g, b, eps)
        })
    }
    fn relu(&self, x: &Tensor) -> temper_core::Result<Tensor> {
        self.time(format!("relu {:?}", x.dims()), || self.inner.relu(x))
    }
    fn relu6(&self, x: &Tensor) -> temper_core::Result<Tensor> {
        self.time(format!("relu6 {:?}", x.dims()), || self.inner.relu6(x))
    }
    fn max_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> temper_core::Result<Tensor> {
        self.time(format!("maxpool {:?}", x.dims()), || {
            self.inner.max_pool2d(x, cfg)
        })
    }
    fn avg_pool2d(&self, x: &Tensor, cfg: PoolCfg) -> temper_core::Result<Tensor> {
        self.time(format!("avgpool {:?}", x.dims()), || {
            self.inner.avg_pool2d(x, cfg)
        })
    }
    fn adaptive_avg_pool2d(&self, x: &Tensor, oh: usize, ow: usize) -> temper_core::Result<Tensor> {
        self.time(format!("avgpool {:?}", x.dims()), || {
            self.inner.adaptive_avg_pool2d(x, oh, ow)
        })
    }
}

fn main() -> Result<()> {
    temper_core::device::tune_cpu_runtime();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("preact-resnet18", String::as_str);
    let batch: usize = args.get(1).map_or(Ok(32), |s| s.parse())?;
    let reps: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let kind = ModelKind::parse(name)?;
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::new(kind, 10);
    if kind == ModelKind::MobileNetV2 {
        // The benchmark's setting: CIFAR-sized 32x32 inputs (the zoo's default is 224).
        cfg.input_size = (32, 32);
    }
    let model = build(&cfg.check()?, &dev)?;
    let timed = Arc::new(Wrapped(Timed {
        inner: model.kernels(),
        table: Mutex::new(BTreeMap::new()),
    }));
    model.set_kernels(timed.clone());
    let [c, h, w] = model.input_shape();
    let x = Tensor::rand(0f32, 1f32, (batch, c, h, w), &dev)?;
    for mode in [Mode::Eval, Mode::Train] {
        model.forward_opts(
            &x,
            ForwardOpts {
                mode,
                param_grads: false,
            },
        )?; // warm-up
        timed.0.table.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let start = Instant::now();
        for _ in 0..reps {
            model.forward_opts(
                &x,
                ForwardOpts {
                    mode,
                    param_grads: mode == Mode::Train,
                },
            )?;
        }
        let total = start.elapsed().as_secs_f64() / reps as f64;
        let table = timed.0.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = table.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let kern: f64 = rows.iter().map(|r| r.1 .0).sum::<f64>() / reps as f64;
        println!(
            "\n{name} batch {batch}, {mode:?} forward: {:.1} ms per pass, {:.1} ms in kernels",
            total * 1e3,
            kern * 1e3
        );
        for (k, (t, n)) in rows.iter().take(25) {
            println!("{:>9.2} ms {:>4}x  {k}", t / reps as f64 * 1e3, n / reps);
        }
    }
    Ok(())
}
