//! Activation quantization: the input of every quantized layer is rounded onto a per-tensor
//! uniform grid, with a straight-through gradient.
//!
//! [`ActHook`] is a layer hook that quantizes the input of each convolution and linear layer
//! it knows, by the layer's name; it stays in place whatever kernels run under the layers.
//! The grids come from calibration ([`crate::calib`]).

use crate::uniform::asymmetric_grid;
use crate::Result;
use candle_core::Tensor;
use std::collections::HashMap;
use temper_core::hooks::{LayerCall, LayerHook, LayerKind};

/// A per-tensor asymmetric uniform grid for activations: codes `0..2^bits - 1`, value
/// `(code - zero_point) * scale`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActQuant {
    /// Bit width, 2 to 8.
    pub bits: u8,
    /// The grid step.
    pub scale: f32,
    /// The code of 0.0.
    pub zero_point: i16,
}

impl ActQuant {
    /// The grid over `[lo, hi]` (widened to contain 0, so ReLU zeros stay exact).
    pub fn from_range(lo: f32, hi: f32, bits: u8) -> Self {
        let (scale, zero_point) = asymmetric_grid(lo, hi, Self::qmax(bits));
        ActQuant {
            bits,
            scale,
            zero_point,
        }
    }

    fn qmax(bits: u8) -> i16 {
        (1i16 << bits) - 1
    }

    /// The represented range `[lo, hi]`.
    pub fn range(&self) -> (f32, f32) {
        let lo = f32::from(-self.zero_point) * self.scale;
        let hi = f32::from(Self::qmax(self.bits) - self.zero_point) * self.scale;
        (lo, hi)
    }

    /// Rounds one value onto the grid (the host twin of [`ActQuant::fake_quant`]).
    pub fn round(&self, v: f32) -> f32 {
        let c = (v * (1.0 / self.scale) + f32::from(self.zero_point))
            .round()
            .clamp(0.0, f32::from(Self::qmax(self.bits)));
        (c - f32::from(self.zero_point)) * self.scale
    }

    /// Rounds `x` onto the grid; no gradient flows through the result.
    pub fn fake_quant(&self, x: &Tensor) -> Result<Tensor> {
        let z = f64::from(self.zero_point);
        let c = x
            .detach()
            .affine(f64::from(1.0 / self.scale), z)?
            .round()?
            .clamp(0f32, f32::from(Self::qmax(self.bits)))?;
        // (code - zero point) is an exact small integer, so the value is exactly
        // integer * scale, as an integer pipeline computes it.
        Ok(c.affine(1.0, -z)?.affine(f64::from(self.scale), 0.0)?)
    }

    /// Rounds `x` onto the grid forward and passes the gradient straight through.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        crate::ste::straight_through(x, &self.fake_quant(x)?)
    }
}

/// Quantizes the input of each named convolution or linear layer onto its grid, with a
/// straight-through gradient.
#[derive(Debug, Clone, Default)]
pub struct ActHook {
    by_layer: HashMap<String, ActQuant>,
}

impl ActHook {
    /// A hook for `layers`: (layer name, grid) pairs.
    pub fn new(layers: &[(String, ActQuant)]) -> Self {
        ActHook {
            by_layer: layers.iter().cloned().collect(),
        }
    }

    /// Whether no layer is quantized.
    pub fn is_empty(&self) -> bool {
        self.by_layer.is_empty()
    }
}

impl LayerHook for ActHook {
    fn input(&self, call: &LayerCall<'_>, x: &Tensor) -> temper_core::Result<Option<Tensor>> {
        if matches!(call.kind, LayerKind::BatchNorm) {
            return Ok(None);
        }
        match self.by_layer.get(call.name) {
            Some(q) => q
                .apply(x)
                .map(Some)
                .map_err(|e| temper_core::Error::param("activation quantization", e.to_string())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn device_and_host_rounding_agree() -> Result<()> {
        let q = ActQuant::from_range(-0.5, 3.0, 4);
        let v: Vec<f32> = (0..200).map(|i| -1.0 + i as f32 * 0.0237).collect();
        let t = Tensor::from_vec(v.clone(), v.len(), &Device::Cpu)?;
        let d = q.fake_quant(&t)?.to_vec1::<f32>()?;
        for (a, b) in v.iter().zip(&d) {
            assert_eq!(q.round(*a), *b);
        }
        let (lo, hi) = q.range();
        // Rounding the zero point moves the range by at most half a step.
        let half = 0.5 * q.scale + 1e-6;
        assert!(lo <= -0.5 + half && hi >= 3.0 - half, "{lo} {hi}");
        assert!(d.contains(&0.0));
        Ok(())
    }
}
