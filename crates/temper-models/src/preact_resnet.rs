//! `preact-resnet18`: the pre-activation ResNet-18 for 32x32 inputs used by Wong et al.
//! (2020) and Rice et al. (2020), with their key names (`layer1.0.bn1`, `shortcut.0`,
//! `bn`, `linear`).
//!
//! With [`noise_injection`](crate::ModelConfig::noise_injection), Learn2Perturb's noise
//! modules follow the stem (`cn1_sigma_map`) and every residual block (`layer1.0.sigma_map`,
//! after the addition), named and placed as in the reference's `resnet_v2.py` (whose blocks
//! add the noise after the residual addition; a pre-activation block has no activation after
//! it, so the noise goes where the block ends).

use crate::ValidModelConfig;
use candle_core::Tensor;
use temper_core::kernels::ConvCfg;
use temper_core::nn::{global_avg_pool, BatchNorm2d, Conv2d, Linear};
use temper_core::noise::{NoiseInjection, SCALE, STEM_SCALE};
use temper_core::{Backbone, Builder, Ctx, Result};

struct PreActBlock {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    noise: Option<NoiseInjection>,
}

/// The spatial size after a convolution with kernel `k`, stride `s` and padding `p`.
fn conv_out(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p).saturating_sub(k) / s + 1
}

impl PreActBlock {
    /// `noise`: the block's output size `(H, W)` when it carries a noise module.
    fn new(
        b: &Builder,
        in_planes: usize,
        planes: usize,
        stride: usize,
        noise: Option<(usize, usize)>,
    ) -> Result<Self> {
        let c3 = |s| ConvCfg {
            stride: s,
            padding: 1,
            ..ConvCfg::default()
        };
        // Created in the reference's registration order (shortcut last) so the store lists
        // keys in the order of PyTorch's state_dict.
        Ok(PreActBlock {
            bn1: BatchNorm2d::new(&b.pp("bn1"), in_planes)?,
            conv1: Conv2d::new(&b.pp("conv1"), in_planes, planes, 3, c3(stride), false)?,
            bn2: BatchNorm2d::new(&b.pp("bn2"), planes)?,
            conv2: Conv2d::new(&b.pp("conv2"), planes, planes, 3, c3(1), false)?,
            shortcut: if stride != 1 || in_planes != planes {
                let cfg = ConvCfg {
                    stride,
                    ..ConvCfg::default()
                };
                Some(Conv2d::new(
                    &b.pp("shortcut").pp(0),
                    in_planes,
                    planes,
                    1,
                    cfg,
                    false,
                )?)
            } else {
                None
            },
            noise: noise
                .map(|(h, w)| NoiseInjection::new(b, SCALE, [planes, h, w]))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let out = self.bn1.forward_relu(x, ctx)?;
        // The projection shortcut takes the pre-activated input, the identity the raw one.
        let short = match &self.shortcut {
            Some(s) => s.forward(&out, ctx)?,
            None => x.clone(),
        };
        let out = self.conv1.forward(&out, ctx)?;
        let out = self.conv2.forward(&self.bn2.forward_relu(&out, ctx)?, ctx)?;
        let out = (out + short)?;
        match &self.noise {
            Some(n) => n.forward(&out, ctx),
            None => Ok(out),
        }
    }
}

pub(crate) struct PreActResNet {
    noise: Option<NoiseInjection>,
    conv1: Conv2d,
    layers: Vec<PreActBlock>,
    bn: BatchNorm2d,
    linear: Linear,
}

pub(crate) fn build(b: &Builder, cfg: &ValidModelConfig) -> Result<PreActResNet> {
    let c = cfg.get();
    let widths = [cfg.scaled(64), cfg.scaled(128), cfg.scaled(256), cfg.scaled(512)];
    let (mut h, mut w) = c.input_size;
    // The reference registers the stem's scale first, so it leads the state dict.
    let noise = if c.noise_injection {
        Some(NoiseInjection::new(b, STEM_SCALE, [widths[0], h, w])?)
    } else {
        None
    };
    let conv1 = Conv2d::new(
        &b.pp("conv1"),
        c.in_channels,
        widths[0],
        3,
        ConvCfg {
            padding: 1,
            ..ConvCfg::default()
        },
        false,
    )?;
    let mut layers = Vec::new();
    let mut in_planes = widths[0];
    for (li, &planes) in widths.iter().enumerate() {
        let stride = if li == 0 { 1 } else { 2 };
        for bi in 0..2 {
            let s = if bi == 0 { stride } else { 1 };
            (h, w) = (conv_out(h, 3, s, 1), conv_out(w, 3, s, 1));
            layers.push(PreActBlock::new(
                &b.pp(format!("layer{}", li + 1)).pp(bi),
                in_planes,
                planes,
                s,
                c.noise_injection.then_some((h, w)),
            )?);
            in_planes = planes;
        }
    }
    Ok(PreActResNet {
        noise,
        conv1,
        layers,
        bn: BatchNorm2d::new(&b.pp("bn"), in_planes)?,
        linear: Linear::new(&b.pp("linear"), in_planes, c.num_classes, true)?,
    })
}

impl Backbone for PreActResNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        let mut out = self.conv1.forward(x, ctx)?;
        if let Some(n) = &self.noise {
            out = n.forward(&out, ctx)?;
        }
        for l in &self.layers {
            out = l.forward(&out, ctx)?;
        }
        let out = self.bn.forward_relu(&out, ctx)?;
        // The reference uses avg_pool2d(out, 4) on the 4x4 map of a 32x32 input: a global
        // average there, and a global average here for any input size.
        self.linear.forward(&global_avg_pool(&out, ctx)?, ctx)
    }
}
