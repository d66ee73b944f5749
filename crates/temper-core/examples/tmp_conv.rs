use candle_core::{Device, Tensor, Var};
use temper_core::kernels::{ConvCfg, FastCpuKernels, Kernels, Precision};
fn main() -> temper_core::Result<()> {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (n, c, h, o, k, s, p, reps, mode) = (a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    temper_core::device::tune_cpu_runtime();
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::rand(-1f32, 1f32, (n, c, h, h), &dev)?)?;
    let w = Var::from_tensor(&Tensor::rand(-0.1f32, 0.1f32, (o, c, k, k), &dev)?)?;
    let cfg = ConvCfg { stride: s, padding: p, dilation: 1, groups: 1 };
    let wd = w.as_tensor().detach();
    let t = std::time::Instant::now();
    for _ in 0..reps {
        let ww = if mode == 0 { &wd } else { w.as_tensor() };
        let xx = if mode == 2 { x.as_tensor().detach() } else { x.as_tensor().clone() };
        FastCpuKernels.conv2d(&xx, ww, None, cfg, Precision::F32)?.sum_all()?.backward()?;
    }
    eprintln!("{:.3} ms", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
    Ok(())
}
