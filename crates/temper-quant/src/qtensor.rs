//! [`QTensor`]: a quantized weight tensor as integers, scales and zero points.

use crate::error::param;
use crate::{Granularity, Result, WeightScheme};
use candle_core::{Device, Tensor};

/// A quantized weight tensor: one integer code per weight, plus a scale (and, for asymmetric
/// grids, a zero point) per quantization group.
///
/// The value of weight `i` of group `g` is `(codes[i] - zero_point[g]) * scale[g]`, computed
/// in f32 by [`QTensor::dequantize`]. Every path that turns codes into weights (the in-memory
/// model, the file loader) goes through that one function, so a model loaded from an exported
/// file computes bit for bit the same logits as the model that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    scheme: WeightScheme,
    granularity: Granularity,
    shape: Vec<usize>,
    codes: Vec<i16>,
    scale: Vec<f32>,
    zero_point: Vec<i16>,
}

impl QTensor {
    /// Assembles a quantized tensor, checking that the lengths agree with `shape` and
    /// `granularity`, that every code lies in the scheme's range and that scales are finite and
    /// positive. `zero_point` must be empty for symmetric schemes.
    pub fn new(
        scheme: WeightScheme,
        granularity: Granularity,
        shape: Vec<usize>,
        codes: Vec<i16>,
        scale: Vec<f32>,
        zero_point: Vec<i16>,
    ) -> Result<Self> {
        let scheme = scheme.check()?;
        let n: usize = shape.iter().product();
        if shape.len() < 2 || n == 0 {
            return Err(param(
                "shape",
                format!("{shape:?}: only non-empty weights of rank >= 2 are quantized"),
            ));
        }
        if codes.len() != n {
            return Err(param(
                "codes",
                format!("{} codes for shape {shape:?} ({n} weights)", codes.len()),
            ));
        }
        let (groups, _) = granularity.groups(&shape);
        if scale.len() != groups {
            return Err(param(
                "scale",
                format!(
                    "{} scales for {groups} {} groups",
                    scale.len(),
                    granularity.name()
                ),
            ));
        }
        if let Some(s) = scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(param("scale", format!("{s} is not a finite positive scale")));
        }
        let want_zp = if scheme.is_symmetric() { 0 } else { groups };
        if zero_point.len() != want_zp {
            return Err(param(
                "zero_point",
                format!(
                    "{} zero points, expected {want_zp} for {scheme}",
                    zero_point.len()
                ),
            ));
        }
        let (lo, hi) = scheme.code_range();
        if let Some(c) = codes.iter().chain(&zero_point).find(|c| **c < lo || **c > hi) {
            return Err(param(
                "codes",
                format!("code {c} is outside [{lo}, {hi}] of {scheme}"),
            ));
        }
        if scheme == WeightScheme::Binary {
            if let Some(c) = codes.iter().find(|c| **c == 0) {
                return Err(param("codes", format!("code {c} is not ±1 in a binary tensor")));
            }
        }
        Ok(QTensor {
            scheme,
            granularity,
            shape,
            codes,
            scale,
            zero_point,
        })
    }

    /// The value grid.
    pub fn scheme(&self) -> WeightScheme {
        self.scheme
    }

    /// One scale per tensor or per output channel.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The weight's shape, e.g. `(out, in, kh, kw)`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The integer codes, row-major.
    pub fn codes(&self) -> &[i16] {
        &self.codes
    }

    /// One scale per group.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// One zero point per group (empty for symmetric schemes).
    pub fn zero_point(&self) -> &[i16] {
        &self.zero_point
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// True for an empty tensor (never, for a checked one).
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The weights the codes stand for, row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let (_, per) = self.granularity.groups(&self.shape);
        self.codes
            .chunks(per)
            .enumerate()
            .flat_map(|(g, chunk)| {
                let s = self.scale[g];
                let z = self.zero_point.get(g).copied().unwrap_or(0);
                chunk.iter().map(move |&c| f32::from(c - z) * s)
            })
            .collect()
    }

    /// [`QTensor::dequantize`] as a tensor of the weight's shape on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.dequantize(),
            self.shape.as_slice(),
            device,
        )?)
    }

    /// Bytes of the packed codes plus scales and zero points, as [`crate::export`] stores
    /// them.
    pub fn stored_bytes(&self) -> usize {
        let rows = self.shape[0];
        let row_len = self.len() / rows;
        let per_row = crate::pack::packed_len(row_len, self.scheme.storage_bits());
        rows * per_row + 4 * self.scale.len() + self.zero_point.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_inconsistent_parts() {
        let s = WeightScheme::bits(4);
        let g = Granularity::PerChannel;
        assert!(QTensor::new(s, g, vec![2, 2], vec![0; 4], vec![1.0; 2], vec![]).is_ok());
        assert!(QTensor::new(s, g, vec![2, 2], vec![0; 3], vec![1.0; 2], vec![]).is_err());
        assert!(QTensor::new(s, g, vec![2, 2], vec![0; 4], vec![1.0; 1], vec![]).is_err());
        assert!(QTensor::new(s, g, vec![2, 2], vec![8, 0, 0, 0], vec![1.0; 2], vec![]).is_err());
        assert!(QTensor::new(s, g, vec![2, 2], vec![0; 4], vec![0.0, 1.0], vec![]).is_err());
        assert!(QTensor::new(s, g, vec![2, 2], vec![0; 4], vec![1.0; 2], vec![0, 0]).is_err());
        let b = WeightScheme::Binary;
        assert!(QTensor::new(b, g, vec![2, 2], vec![1, -1, 0, 1], vec![1.0; 2], vec![]).is_err());
    }

    #[test]
    fn dequantizes_with_zero_points() -> Result<()> {
        let s = WeightScheme::Uniform {
            bits: 2,
            symmetric: false,
        };
        let q = QTensor::new(
            s,
            Granularity::PerChannel,
            vec![2, 2],
            vec![0, 3, 1, 2],
            vec![0.5, 2.0],
            vec![1, 0],
        )?;
        assert_eq!(q.dequantize(), vec![-0.5, 1.0, 2.0, 4.0]);
        Ok(())
    }
}
