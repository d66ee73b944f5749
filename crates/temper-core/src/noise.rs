//! Learned noise injection: the noise modules of Learn2Perturb (Jeddi et al., CVPR 2020;
//! reference code `ArmenJeddi/Learn2Perturb`).
//!
//! A [`NoiseInjection`] adds `theta ⊙ e` to a feature map, where `theta` is a learnable scale
//! per feature (one per channel and position, the reference's `sigma_map` of shape
//! `(C, H, W)`, initialised to 0.25) and `e` is standard Gaussian noise drawn anew on every
//! forward pass, in training *and* evaluation: the model is randomized, and only attacks that
//! average their gradients over the noise (expectation over transformation,
//! `autoattack-rand`) evaluate it honestly. As in the reference, one draw of `e` per pass is
//! shared by every image of the batch. The draws come from the forward context's seeded
//! generator (the one dropout uses), so a pass is reproducible.
//!
//! [`without_noise`] switches every module off on the current thread for the duration of a
//! closure (Learn2Perturb trains its first epochs without noise).

use crate::store::{Builder, Init, Role};
use crate::summary::{self, LayerRecord};
use crate::{Ctx, Error, Result};
use candle_core::{Tensor, Var};
use rand_distr::{Distribution, StandardNormal};
use std::cell::Cell;

/// The name of a noise module's scale parameter under its owner's prefix, the reference's:
/// `layer1.0.sigma_map`; the stem's is [`STEM_SCALE`].
pub const SCALE: &str = "sigma_map";

/// The name of the stem's noise scale in the reference (a top-level parameter).
pub const STEM_SCALE: &str = "cn1_sigma_map";

/// The reference's initial scale.
pub const INIT_SCALE: f64 = 0.25;

/// True when `name` is the state-dict name of a noise scale.
pub fn is_scale(name: &str) -> bool {
    name == STEM_SCALE || name.ends_with(&format!(".{SCALE}")) || name == SCALE
}

/// True when `store` holds a noise scale: the model is randomized.
pub fn is_randomized(store: &crate::ParamStore) -> bool {
    store.entries().iter().any(|e| is_scale(&e.name))
}

thread_local! {
    static SUPPRESSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every noise module on this thread switched off (the identity).
pub fn without_noise<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SUPPRESSED.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SUPPRESSED.with(|s| s.replace(true)));
    f()
}

/// True while [`without_noise`] is running on this thread.
pub fn is_suppressed() -> bool {
    SUPPRESSED.with(Cell::get)
}

/// A noise module: `x + theta ⊙ e`, `e ~ N(0, 1)` of the feature map's shape `(C, H, W)`,
/// broadcast over the batch.
#[derive(Debug, Clone)]
pub struct NoiseInjection {
    name: String,
    scale: Var,
    shape: [usize; 3],
}

impl NoiseInjection {
    /// Creates the scale `name` (see [`SCALE`], [`STEM_SCALE`]) under `b`'s prefix for
    /// feature maps of shape `(C, H, W)`, every element [`INIT_SCALE`]. It is trainable and
    /// takes no weight decay (the reference's optimizer of the scales has none).
    pub fn new(b: &Builder, name: &str, shape: [usize; 3]) -> Result<Self> {
        let scale = b.param(name, &shape, Init::Const(INIT_SCALE), Role::NoDecay)?;
        Ok(NoiseInjection {
            name: b.path(name),
            scale,
            shape,
        })
    }

    /// The scale parameter.
    pub fn scale(&self) -> &Var {
        &self.scale
    }

    /// Adds one draw of the noise to `x` (`(N, C, H, W)`), unless [`without_noise`] is on.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx<'_>) -> Result<Tensor> {
        if is_suppressed() {
            return Ok(x.clone());
        }
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != self.shape {
            return Err(Error::BadInput {
                model: self.name.clone(),
                reason: format!(
                    "the noise scale is {:?} but the features are {dims:?}; the model was built for \
                     another input size",
                    self.shape
                ),
            });
        }
        let n = self.shape.iter().product::<usize>();
        let draws: Vec<f32> = {
            let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..n).map(|_| StandardNormal.sample(&mut *rng)).collect()
        };
        let e = Tensor::from_vec(draws, self.shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
        let theta = if ctx.param_grads {
            self.scale.as_tensor().clone()
        } else {
            self.scale.as_tensor().detach()
        };
        let y = x.broadcast_add(&(e * theta)?.unsqueeze(0)?)?;
        if summary::is_tracing() {
            summary::record(LayerRecord {
                name: self.name.clone(),
                kind: format!("Noise {}x{}x{}", self.shape[0], self.shape[1], self.shape[2]),
                output: self.shape.to_vec(),
                params: n,
                macs: 0,
            });
        }
        Ok(y)
    }
}
