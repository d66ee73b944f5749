//! `small-cnn`: the MNIST network of Wong, Rice and Kolter (2020), "Fast is better than free".
//!
//! conv1 (4x4, stride 2, pad 1, 16) - ReLU - conv2 (4x4, stride 2, pad 1, 32) - ReLU -
//! flatten - fc1 (100) - ReLU - fc2. About 0.6 M multiply-accumulates per 28x28 image, which
//! keeps adversarial training on a laptop CPU to minutes.

use crate::ValidModelConfig;
use candle_core::Tensor;
use temper_core::kernels::ConvCfg;
use temper_core::nn::{relu, Conv2d, Linear};
use temper_core::{Backbone, Builder, Ctx, Result};

pub(crate) struct SmallCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

/// Output size of a 4x4, stride 2, pad 1 convolution.
fn down(n: usize) -> usize {
    (n + 2 - 4) / 2 + 1
}

pub(crate) fn build(b: &Builder, cfg: &ValidModelConfig) -> Result<SmallCnn> {
    let c = cfg.get();
    let (c1, c2, hidden) = (cfg.scaled(16), cfg.scaled(32), cfg.scaled(100));
    let s = ConvCfg {
        stride: 2,
        padding: 1,
        ..ConvCfg::default()
    };
    let (h, w) = (down(down(c.input_size.0)), down(down(c.input_size.1)));
    Ok(SmallCnn {
        conv1: Conv2d::new(&b.pp("conv1"), c.in_channels, c1, 4, s, true)?,
        conv2: Conv2d::new(&b.pp("conv2"), c1, c2, 4, s, true)?,
        fc1: Linear::new(&b.pp("fc1"), c2 * h * w, hidden, true)?,
        fc2: Linear::new(&b.pp("fc2"), hidden, c.num_classes, true)?,
    })
}

impl Backbone for SmallCnn {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let x = relu(&self.conv1.forward(x, ctx)?, ctx)?;
        let x = relu(&self.conv2.forward(&x, ctx)?, ctx)?;
        let x = relu(&self.fc1.forward(&x.flatten_from(1)?, ctx)?, ctx)?;
        self.fc2.forward(&x, ctx)
    }
}
