//! What a quantized weight tensor is made of: the [`WeightScheme`] (uniform with a bit width,
//! ternary or binary) and the [`Granularity`] of its scales.

use crate::error::param;
use crate::Result;

/// The set of values a quantized weight may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WeightScheme {
    /// `bits`-bit uniform grid. Symmetric: integer codes in `[-(2^(b-1)-1), 2^(b-1)-1]`
    /// around an exact zero (restricted range, so `-x` is representable whenever `x` is);
    /// asymmetric: codes in `[0, 2^b - 1]` with a zero point.
    Uniform {
        /// Bit width, 2 to 8.
        bits: u8,
        /// Symmetric around zero (no zero point).
        symmetric: bool,
    },
    /// Ternary weights `{-a, 0, +a}` (Li and Liu's TWN: threshold `0.7 * mean|w|`, scale the
    /// mean magnitude of the weights above it). Stored in 2 bits.
    Ternary,
    /// Binary weights `{-a, +a}` (sign, scale `mean|w|`, as BinaryConnect/XNOR-Net). Stored
    /// in 1 bit.
    Binary,
}

impl WeightScheme {
    /// The narrowest and widest uniform widths.
    pub const BITS: std::ops::RangeInclusive<u8> = 2..=8;

    /// A symmetric uniform scheme of `bits` bits (unchecked).
    pub fn bits(bits: u8) -> Self {
        WeightScheme::Uniform {
            bits,
            symmetric: true,
        }
    }

    /// Parses `8`, `4bit`, `int4`, `ternary` or `binary`; `symmetric` applies to uniform
    /// widths. The result is checked.
    ///
    /// ```
    /// use temper_quant::WeightScheme;
    /// assert_eq!(WeightScheme::parse("4", true)?, WeightScheme::bits(4));
    /// assert_eq!(WeightScheme::parse("ternary", true)?, WeightScheme::Ternary);
    /// assert!(WeightScheme::parse("9", true).is_err());
    /// # Ok::<(), temper_quant::Error>(())
    /// ```
    pub fn parse(s: &str, symmetric: bool) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let scheme = match t.as_str() {
            "ternary" | "t" | "twn" => WeightScheme::Ternary,
            "binary" | "b" | "1" | "1bit" | "1-bit" => WeightScheme::Binary,
            other => {
                let digits = other
                    .trim_start_matches("int")
                    .trim_start_matches("uint")
                    .trim_end_matches("bits")
                    .trim_end_matches("bit")
                    .trim_end_matches('-')
                    .trim_end_matches('b');
                let bits: u8 = digits.parse().map_err(|_| {
                    param(
                        "bits",
                        format!("'{s}' is not a bit width (2-8), ternary or binary"),
                    )
                })?;
                WeightScheme::Uniform { bits, symmetric }
            }
        };
        scheme.check()
    }

    /// Parses a comma-separated list such as `8,6,4,3,2,ternary`.
    pub fn parse_list(s: &str, symmetric: bool) -> Result<Vec<Self>> {
        let v: Vec<Self> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| Self::parse(p, symmetric))
            .collect::<Result<_>>()?;
        if v.is_empty() {
            return Err(param("bits", format!("'{s}' names no bit width")));
        }
        Ok(v)
    }

    /// Validates: uniform widths are 2 to 8 bits.
    pub fn check(self) -> Result<Self> {
        match self {
            WeightScheme::Uniform { bits, .. } if !Self::BITS.contains(&bits) => Err(param(
                "bits",
                format!("{bits} is not between 2 and 8 (use ternary or binary below 2 bits)"),
            )),
            s => Ok(s),
        }
    }

    /// Bits each weight occupies in an exported file.
    pub fn storage_bits(self) -> u8 {
        match self {
            WeightScheme::Uniform { bits, .. } => bits,
            WeightScheme::Ternary => 2,
            WeightScheme::Binary => 1,
        }
    }

    /// Information content per weight in bits (`log2` of the number of levels), for tables:
    /// 8, 6, ..., 1.58 for ternary, 1 for binary.
    pub fn effective_bits(self) -> f64 {
        match self {
            WeightScheme::Uniform { bits, .. } => f64::from(bits),
            WeightScheme::Ternary => 3f64.log2(),
            WeightScheme::Binary => 1.0,
        }
    }

    /// True when the grid has no zero point.
    pub fn is_symmetric(self) -> bool {
        !matches!(self, WeightScheme::Uniform { symmetric: false, .. })
    }

    /// The smallest and largest integer code.
    pub fn code_range(self) -> (i16, i16) {
        match self {
            WeightScheme::Uniform {
                bits,
                symmetric: true,
            } => {
                let k = (1i16 << (bits - 1)) - 1;
                (-k, k)
            }
            WeightScheme::Uniform {
                bits,
                symmetric: false,
            } => (0, (1i16 << bits) - 1),
            WeightScheme::Ternary | WeightScheme::Binary => (-1, 1),
        }
    }

    /// A short human label: `8-bit`, `4-bit asym`, `ternary`, `binary`.
    pub fn label(self) -> String {
        match self {
            WeightScheme::Uniform {
                bits,
                symmetric: true,
            } => format!("{bits}-bit"),
            WeightScheme::Uniform {
                bits,
                symmetric: false,
            } => format!("{bits}-bit asym"),
            WeightScheme::Ternary => "ternary".into(),
            WeightScheme::Binary => "binary".into(),
        }
    }
}

impl std::fmt::Display for WeightScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// How many scales a weight tensor has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale (and zero point) for the whole tensor.
    #[default]
    PerTensor,
    /// One scale (and zero point) per output channel (the first dimension).
    PerChannel,
}

impl Granularity {
    /// Number of quantization groups and elements per group for a tensor of `shape`.
    pub fn groups(self, shape: &[usize]) -> (usize, usize) {
        let n: usize = shape.iter().product();
        match self {
            Granularity::PerTensor => (1, n),
            Granularity::PerChannel => {
                let out = shape.first().copied().unwrap_or(1).max(1);
                (out, n / out)
            }
        }
    }

    /// `per_tensor` or `per_channel`.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::PerTensor => "per_tensor",
            Granularity::PerChannel => "per_channel",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_parse_and_check() -> Result<()> {
        assert_eq!(WeightScheme::parse("int8", true)?, WeightScheme::bits(8));
        assert_eq!(WeightScheme::parse("3bit", true)?, WeightScheme::bits(3));
        assert_eq!(
            WeightScheme::parse("4", false)?,
            WeightScheme::Uniform {
                bits: 4,
                symmetric: false
            }
        );
        for bad in ["0", "1.5", "9", "16", "x", ""] {
            assert!(WeightScheme::parse(bad, true).is_err(), "{bad}");
        }
        assert_eq!(WeightScheme::parse_list("8,6,4,3,2,ternary", true)?.len(), 6);
        Ok(())
    }

    #[test]
    fn code_ranges_fit_the_storage() {
        for s in [
            WeightScheme::bits(2),
            WeightScheme::bits(4),
            WeightScheme::bits(8),
            WeightScheme::Uniform {
                bits: 3,
                symmetric: false,
            },
            WeightScheme::Ternary,
            WeightScheme::Binary,
        ] {
            let (lo, hi) = s.code_range();
            // The distinct codes (binary has no zero) must fit the storage width.
            let levels = if s == WeightScheme::Binary {
                2
            } else {
                i32::from(hi - lo) + 1
            };
            assert!(levels <= (1i32 << s.storage_bits()), "{s}");
        }
        assert_eq!(WeightScheme::bits(4).code_range(), (-7, 7));
        assert_eq!(WeightScheme::bits(2).code_range(), (-1, 1));
    }
}
