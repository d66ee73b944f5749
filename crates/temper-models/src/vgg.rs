//! `vgg16-bn`: torchvision's VGG-16 with BatchNorm (`features.N`, `classifier.0/3/6`), with
//! its 7x7 adaptive average pool and 4096-wide classifier.

use crate::ValidModelConfig;
use candle_core::Tensor;
use temper_core::kernels::ConvCfg;
use temper_core::nn::{dropout, max_pool2d, relu, BatchNorm2d, Conv2d, Linear};
use temper_core::{Backbone, Builder, Ctx, Result};

/// torchvision's configuration "D": channel counts, 0 for a max pool.
const CFG_D: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

enum Feature {
    ConvBn(Conv2d, BatchNorm2d),
    Pool,
}

pub(crate) struct Vgg {
    features: Vec<Feature>,
    fc: [Linear; 3],
    dropout: f64,
}

pub(crate) fn build(b: &Builder, cfg: &ValidModelConfig) -> Result<Vgg> {
    let c = cfg.get();
    let mut features = Vec::new();
    let mut idx = 0;
    let mut ch = c.in_channels;
    let f = b.pp("features");
    for &v in &CFG_D {
        if v == 0 {
            features.push(Feature::Pool);
            idx += 1;
        } else {
            let o = cfg.scaled(v);
            let conv = Conv2d::new(
                &f.pp(idx),
                ch,
                o,
                3,
                ConvCfg {
                    padding: 1,
                    ..ConvCfg::default()
                },
                true,
            )?;
            let bn = BatchNorm2d::new(&f.pp(idx + 1), o)?;
            features.push(Feature::ConvBn(conv, bn));
            idx += 3;
            ch = o;
        }
    }
    let hidden = cfg.scaled(4096);
    let cl = b.pp("classifier");
    Ok(Vgg {
        features,
        fc: [
            Linear::new(&cl.pp(0), ch * 49, hidden, true)?,
            Linear::new(&cl.pp(3), hidden, hidden, true)?,
            Linear::new(&cl.pp(6), hidden, c.num_classes, true)?,
        ],
        dropout: c.dropout.unwrap_or(0.5),
    })
}

impl Backbone for Vgg {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let mut out = x.clone();
        for f in &self.features {
            out = match f {
                Feature::ConvBn(conv, bn) => relu(&bn.forward(&conv.forward(&out, ctx)?, ctx)?, ctx)?,
                Feature::Pool => max_pool2d(&out, 2, 2, 0, ctx)?,
            };
        }
        let out = ctx.kernels.adaptive_avg_pool2d(&out, 7, 7)?.flatten_from(1)?;
        let out = dropout(&relu(&self.fc[0].forward(&out, ctx)?, ctx)?, self.dropout, ctx)?;
        let out = dropout(&relu(&self.fc[1].forward(&out, ctx)?, ctx)?, self.dropout, ctx)?;
        self.fc[2].forward(&out, ctx)
    }
}
