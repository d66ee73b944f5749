//! `resnet18`, `resnet34`, `resnet50`: torchvision's ResNet (v1.5: the stride of a bottleneck
//! sits on its 3x3 convolution), with torchvision's key names (`conv1`, `bn1`,
//! `layerN.M.downsample.0/1`, `fc`).
//!
//! The `imagenet` stem is torchvision's (7x7 stride-2 convolution, 3x3 stride-2 max pool);
//! the `cifar` stem is the usual 32x32 variant (3x3 stride-1 convolution, no pool) with the
//! same key names.

use crate::{Stem, ValidModelConfig};
use candle_core::Tensor;
use temper_core::kernels::ConvCfg;
use temper_core::nn::{global_avg_pool, max_pool2d, relu, BatchNorm2d, Conv2d, Linear};
use temper_core::{Backbone, Builder, Ctx, Result};

fn conv(b: &Builder, i: usize, o: usize, k: usize, stride: usize) -> Result<Conv2d> {
    let cfg = ConvCfg {
        stride,
        padding: k / 2,
        ..ConvCfg::default()
    };
    Conv2d::new(b, i, o, k, cfg, false)
}

struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

enum Block {
    Basic {
        conv1: Conv2d,
        bn1: BatchNorm2d,
        conv2: Conv2d,
        bn2: BatchNorm2d,
        down: Option<Downsample>,
    },
    Bottleneck {
        conv1: Conv2d,
        bn1: BatchNorm2d,
        conv2: Conv2d,
        bn2: BatchNorm2d,
        conv3: Conv2d,
        bn3: BatchNorm2d,
        down: Option<Downsample>,
    },
}

fn downsample(b: &Builder, i: usize, o: usize, stride: usize) -> Result<Option<Downsample>> {
    if stride == 1 && i == o {
        return Ok(None);
    }
    let d = b.pp("downsample");
    Ok(Some(Downsample {
        conv: conv(&d.pp(0), i, o, 1, stride)?,
        bn: BatchNorm2d::new(&d.pp(1), o)?,
    }))
}

impl Block {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let (out, down) = match self {
            Block::Basic {
                conv1,
                bn1,
                conv2,
                bn2,
                down,
            } => {
                let o = relu(&bn1.forward(&conv1.forward(x, ctx)?, ctx)?, ctx)?;
                (bn2.forward(&conv2.forward(&o, ctx)?, ctx)?, down)
            }
            Block::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
                down,
            } => {
                let o = relu(&bn1.forward(&conv1.forward(x, ctx)?, ctx)?, ctx)?;
                let o = relu(&bn2.forward(&conv2.forward(&o, ctx)?, ctx)?, ctx)?;
                (bn3.forward(&conv3.forward(&o, ctx)?, ctx)?, down)
            }
        };
        let identity = match down {
            Some(d) => d.bn.forward(&d.conv.forward(x, ctx)?, ctx)?,
            None => x.clone(),
        };
        relu(&(out + identity)?, ctx)
    }
}

pub(crate) struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stem: Stem,
    blocks: Vec<Block>,
    fc: Linear,
}

pub(crate) fn build(
    b: &Builder,
    cfg: &ValidModelConfig,
    depths: [usize; 4],
    bottleneck: bool,
) -> Result<ResNet> {
    let c = cfg.get();
    let base = cfg.scaled(64);
    let conv1 = match c.stem {
        Stem::Imagenet => conv(&b.pp("conv1"), c.in_channels, base, 7, 2)?,
        Stem::Cifar => conv(&b.pp("conv1"), c.in_channels, base, 3, 1)?,
    };
    let bn1 = BatchNorm2d::new(&b.pp("bn1"), base)?;
    let expansion = if bottleneck { 4 } else { 1 };
    let mut inplanes = base;
    let mut blocks = Vec::new();
    for (li, &n) in depths.iter().enumerate() {
        let planes = cfg.scaled(64 << li);
        for bi in 0..n {
            let stride = if li > 0 && bi == 0 { 2 } else { 1 };
            let bb = b.pp(format!("layer{}", li + 1)).pp(bi);
            let out = planes * expansion;
            // Fields are created in torchvision's registration order, so the store lists keys
            // in the order of PyTorch's state_dict (downsample last).
            blocks.push(if bottleneck {
                Block::Bottleneck {
                    conv1: conv(&bb.pp("conv1"), inplanes, planes, 1, 1)?,
                    bn1: BatchNorm2d::new(&bb.pp("bn1"), planes)?,
                    conv2: conv(&bb.pp("conv2"), planes, planes, 3, stride)?,
                    bn2: BatchNorm2d::new(&bb.pp("bn2"), planes)?,
                    conv3: conv(&bb.pp("conv3"), planes, out, 1, 1)?,
                    bn3: BatchNorm2d::new(&bb.pp("bn3"), out)?,
                    down: downsample(&bb, inplanes, out, stride)?,
                }
            } else {
                Block::Basic {
                    conv1: conv(&bb.pp("conv1"), inplanes, planes, 3, stride)?,
                    bn1: BatchNorm2d::new(&bb.pp("bn1"), planes)?,
                    conv2: conv(&bb.pp("conv2"), planes, planes, 3, 1)?,
                    bn2: BatchNorm2d::new(&bb.pp("bn2"), planes)?,
                    down: downsample(&bb, inplanes, out, stride)?,
                }
            });
            inplanes = out;
        }
    }
    Ok(ResNet {
        conv1,
        bn1,
        stem: c.stem,
        blocks,
        fc: Linear::new(&b.pp("fc"), inplanes, c.num_classes, true)?,
    })
}

impl Backbone for ResNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let mut out = self.bn1.forward_relu(&self.conv1.forward(x, ctx)?, ctx)?;
        if self.stem == Stem::Imagenet {
            out = max_pool2d(&out, 3, 2, 1, ctx)?;
        }
        for blk in &self.blocks {
            out = blk.forward(&out, ctx)?;
        }
        self.fc.forward(&global_avg_pool(&out, ctx)?, ctx)
    }
}
