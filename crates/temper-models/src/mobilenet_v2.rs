//! `mobilenet-v2`: torchvision's MobileNet-V2 (`features.N.conv.M`, `classifier.1`), with
//! its `width_mult` channel rounding.

use crate::ValidModelConfig;
use candle_core::Tensor;
use temper_core::kernels::ConvCfg;
use temper_core::nn::{dropout, global_avg_pool, relu6, BatchNorm2d, Conv2d, Linear};
use temper_core::{Backbone, Builder, Ctx, Result};

/// torchvision's `_make_divisible`: round to a multiple of `divisor`, never more than 10%
/// below `v`.
fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// Convolution, BatchNorm and optionally ReLU6 (torchvision's `Conv2dNormActivation`).
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
    act: bool,
}

impl ConvBn {
    fn new(b: &Builder, i: usize, o: usize, k: usize, stride: usize, groups: usize) -> Result<Self> {
        let cfg = ConvCfg {
            stride,
            padding: (k - 1) / 2,
            groups,
            ..ConvCfg::default()
        };
        Ok(ConvBn {
            conv: Conv2d::new(&b.pp(0), i, o, k, cfg, false)?,
            bn: BatchNorm2d::new(&b.pp(1), o)?,
            act: true,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let y = self.bn.forward(&self.conv.forward(x, ctx)?, ctx)?;
        if self.act {
            relu6(&y, ctx)
        } else {
            Ok(y)
        }
    }
}

struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedResidual {
    fn new(b: &Builder, i: usize, o: usize, stride: usize, t: usize) -> Result<Self> {
        let hidden = i * t;
        let c = b.pp("conv");
        let (expand, off) = if t != 1 {
            (Some(ConvBn::new(&c.pp(0), i, hidden, 1, 1, 1)?), 1)
        } else {
            (None, 0)
        };
        let depthwise = ConvBn::new(&c.pp(off), hidden, hidden, 3, stride, hidden)?;
        // The projection is a bare convolution and BatchNorm at two consecutive indices.
        let project = ConvBn {
            conv: Conv2d::new(&c.pp(off + 1), hidden, o, 1, ConvCfg::default(), false)?,
            bn: BatchNorm2d::new(&c.pp(off + 2), o)?,
            act: false,
        };
        Ok(InvertedResidual {
            expand,
            depthwise,
            project,
            residual: stride == 1 && i == o,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let mut y = x.clone();
        if let Some(e) = &self.expand {
            y = e.forward(&y, ctx)?;
        }
        let y = self.project.forward(&self.depthwise.forward(&y, ctx)?, ctx)?;
        if self.residual {
            Ok((x + y)?)
        } else {
            Ok(y)
        }
    }
}

pub(crate) struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    fc: Linear,
    dropout: f64,
}

pub(crate) fn build(b: &Builder, cfg: &ValidModelConfig) -> Result<MobileNetV2> {
    let c = cfg.get();
    let w = c.width;
    let setting: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let f = b.pp("features");
    let mut input = make_divisible(32.0 * w, 8);
    let last = make_divisible(1280.0 * w.max(1.0), 8);
    let stem = ConvBn::new(&f.pp(0), c.in_channels, input, 3, 2, 1)?;
    let mut blocks = Vec::new();
    let mut idx = 1;
    for (t, ch, n, s) in setting {
        let out = make_divisible(ch as f64 * w, 8);
        for i in 0..n {
            blocks.push(InvertedResidual::new(
                &f.pp(idx),
                input,
                out,
                if i == 0 { s } else { 1 },
                t,
            )?);
            input = out;
            idx += 1;
        }
    }
    let head = ConvBn::new(&f.pp(idx), input, last, 1, 1, 1)?;
    Ok(MobileNetV2 {
        stem,
        blocks,
        head,
        fc: Linear::new(&b.pp("classifier").pp(1), last, c.num_classes, true)?,
        dropout: c.dropout.unwrap_or(0.2),
    })
}

impl Backbone for MobileNetV2 {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let mut y = self.stem.forward(x, ctx)?;
        for blk in &self.blocks {
            y = blk.forward(&y, ctx)?;
        }
        let y = global_avg_pool(&self.head.forward(&y, ctx)?, ctx)?;
        self.fc.forward(&dropout(&y, self.dropout, ctx)?, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::make_divisible;

    #[test]
    fn divisible_matches_torchvision() {
        // Values computed with torchvision.models._utils._make_divisible.
        assert_eq!(make_divisible(32.0 * 0.25, 8), 8);
        assert_eq!(make_divisible(24.0 * 0.5, 8), 16);
        assert_eq!(make_divisible(1280.0, 8), 1280);
        assert_eq!(make_divisible(16.0 * 0.35, 8), 8);
        assert_eq!(make_divisible(96.0 * 0.75, 8), 72);
    }
}
