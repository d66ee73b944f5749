//! `wrn-28-10`, `wrn-34-10`: the WideResNet of RobustBench (after TRADES), with its key names
//! (`block1.layer.0.bn1`, `convShortcut`, `bn1`, `fc`).

use crate::ValidModelConfig;
use candle_core::Tensor;
use temper_core::kernels::ConvCfg;
use temper_core::nn::{global_avg_pool, BatchNorm2d, Conv2d, Linear};
use temper_core::{Backbone, Builder, Ctx, Result};

struct WideBlock {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn new(b: &Builder, i: usize, o: usize, stride: usize) -> Result<Self> {
        let c3 = |s| ConvCfg {
            stride: s,
            padding: 1,
            ..ConvCfg::default()
        };
        // Created in RobustBench's registration order (shortcut last) so the store lists
        // keys in the order of PyTorch's state_dict.
        Ok(WideBlock {
            bn1: BatchNorm2d::new(&b.pp("bn1"), i)?,
            conv1: Conv2d::new(&b.pp("conv1"), i, o, 3, c3(stride), false)?,
            bn2: BatchNorm2d::new(&b.pp("bn2"), o)?,
            conv2: Conv2d::new(&b.pp("conv2"), o, o, 3, c3(1), false)?,
            shortcut: if i != o {
                Some(Conv2d::new(
                    &b.pp("convShortcut"),
                    i,
                    o,
                    1,
                    ConvCfg {
                        stride,
                        ..ConvCfg::default()
                    },
                    false,
                )?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let act = self.bn1.forward_relu(x, ctx)?;
        let out = self.conv1.forward(&act, ctx)?;
        let out = self.conv2.forward(&self.bn2.forward_relu(&out, ctx)?, ctx)?;
        // RobustBench's block: a projection shortcut takes the activated input, the identity
        // shortcut the raw one.
        let short = match &self.shortcut {
            Some(s) => s.forward(&act, ctx)?,
            None => x.clone(),
        };
        Ok((short + out)?)
    }
}

fn group(b: &Builder, n: usize, i: usize, o: usize, stride: usize) -> Result<Vec<WideBlock>> {
    (0..n)
        .map(|k| {
            let (ii, s) = if k == 0 { (i, stride) } else { (o, 1) };
            WideBlock::new(&b.pp("layer").pp(k), ii, o, s)
        })
        .collect()
}

pub(crate) struct WideResNet {
    conv1: Conv2d,
    blocks: Vec<WideBlock>,
    bn1: BatchNorm2d,
    fc: Linear,
}

pub(crate) fn build(b: &Builder, cfg: &ValidModelConfig, depth: usize) -> Result<WideResNet> {
    let c = cfg.get();
    let k = ((10.0 * c.width).round() as usize).max(1);
    let ch = [16, 16 * k, 32 * k, 64 * k];
    let n = (depth - 4) / 6;
    let conv1 = Conv2d::new(
        &b.pp("conv1"),
        c.in_channels,
        ch[0],
        3,
        ConvCfg {
            padding: 1,
            ..ConvCfg::default()
        },
        false,
    )?;
    let mut blocks = group(&b.pp("block1"), n, ch[0], ch[1], 1)?;
    if c.wrn_sub_block1 {
        // Defined, and present in some checkpoints, but never used by the forward pass.
        group(&b.pp("sub_block1"), n, ch[0], ch[1], 1)?;
    }
    blocks.extend(group(&b.pp("block2"), n, ch[1], ch[2], 2)?);
    blocks.extend(group(&b.pp("block3"), n, ch[2], ch[3], 2)?);
    Ok(WideResNet {
        conv1,
        blocks,
        bn1: BatchNorm2d::new(&b.pp("bn1"), ch[3])?,
        fc: Linear::new(&b.pp("fc"), ch[3], c.num_classes, true)?,
    })
}

impl Backbone for WideResNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let mut out = self.conv1.forward(x, ctx)?;
        for blk in &self.blocks {
            out = blk.forward(&out, ctx)?;
        }
        let out = self.bn1.forward_relu(&out, ctx)?;
        // avg_pool2d(out, 8) on the 8x8 map of a 32x32 input: a global average.
        self.fc.forward(&global_avg_pool(&out, ctx)?, ctx)
    }
}
