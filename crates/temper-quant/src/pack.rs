//! Bit packing of integer codes for export.
//!
//! Every output channel (row) of a weight is packed on its own, least significant bits first,
//! and padded to a whole byte, so rows can be read independently:
//!
//! | scheme | stored as | per byte |
//! |---|---|---|
//! | symmetric 8-bit | `I8`, the code itself (`int8`) | 1 |
//! | asymmetric 8-bit | `U8`, the code itself (`uint8`) | 1 |
//! | b-bit, b < 8 | `U8` bit stream of `code + offset` (`int4`: two per byte) | 8 / b |
//! | ternary | `U8` bit stream of `code + 1` in 2 bits | 4 |
//! | binary | `U8` bit stream of `(code + 1) / 2` in 1 bit | 8 |
//!
//! The offset makes a symmetric code unsigned: `2^(b-1)` for a b-bit symmetric grid, 0 for
//! an asymmetric one, 1 for ternary.

use crate::error::param;
use crate::{Result, WeightScheme};

/// Bytes one row of `n` codes of `bits` bits takes.
pub fn packed_len(n: usize, bits: u8) -> usize {
    (n * usize::from(bits)).div_ceil(8)
}

/// How codes of a scheme are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Container {
    /// Bits per code in the stream.
    pub bits: u8,
    /// Added to a code to make it unsigned (binary halves after adding).
    pub offset: i16,
    /// True when the bytes are signed codes (`I8`), not an unsigned bit stream.
    pub signed_bytes: bool,
    /// The name written to the file's metadata: `int8`, `uint8`, `int4`, `uint3`, `ternary2`,
    /// `binary1`.
    pub name: &'static str,
}

impl Container {
    /// The container of `scheme`.
    pub fn of(scheme: WeightScheme) -> Self {
        const SIGNED: [&str; 9] = ["", "", "int2", "int3", "int4", "int5", "int6", "int7", "int8"];
        const UNSIGNED: [&str; 9] = [
            "", "", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "uint8",
        ];
        match scheme {
            WeightScheme::Uniform {
                bits,
                symmetric: true,
            } => Container {
                bits,
                offset: if bits == 8 { 0 } else { 1 << (bits - 1) },
                signed_bytes: bits == 8,
                name: SIGNED[usize::from(bits.min(8))],
            },
            WeightScheme::Uniform {
                bits,
                symmetric: false,
            } => Container {
                bits,
                offset: 0,
                signed_bytes: false,
                name: UNSIGNED[usize::from(bits.min(8))],
            },
            WeightScheme::Ternary => Container {
                bits: 2,
                offset: 1,
                signed_bytes: false,
                name: "ternary2",
            },
            WeightScheme::Binary => Container {
                bits: 1,
                offset: 1,
                signed_bytes: false,
                name: "binary1",
            },
        }
    }

    fn encode(&self, code: i16, binary: bool) -> u8 {
        let v = code + self.offset;
        // Codes were range-checked when the QTensor was built, so the casts are lossless.
        if binary {
            (v / 2) as u8
        } else {
            v as u8
        }
    }

    fn decode(&self, v: u8, binary: bool) -> i16 {
        if binary {
            i16::from(v) * 2 - self.offset
        } else {
            i16::from(v) - self.offset
        }
    }
}

/// Packs `codes` (row-major, `rows` rows) of `scheme`; returns the bytes, `rows * row_bytes`
/// long.
pub fn pack(codes: &[i16], rows: usize, scheme: WeightScheme) -> Vec<u8> {
    let c = Container::of(scheme);
    let binary = scheme == WeightScheme::Binary;
    let row_len = codes.len() / rows.max(1);
    if c.signed_bytes {
        return codes.iter().map(|&v| (v as i8) as u8).collect();
    }
    let per_row = packed_len(row_len, c.bits);
    let mut out = vec![0u8; rows * per_row];
    for (r, row) in codes.chunks(row_len.max(1)).enumerate() {
        let dst = &mut out[r * per_row..(r + 1) * per_row];
        let mut bit = 0usize;
        for &code in row {
            let v = u32::from(c.encode(code, binary));
            // A code may straddle two bytes when the width does not divide 8.
            let (byte, shift) = (bit / 8, bit % 8);
            let wide = v << shift;
            dst[byte] |= (wide & 0xff) as u8;
            if shift + usize::from(c.bits) > 8 {
                dst[byte + 1] |= (wide >> 8) as u8;
            }
            bit += usize::from(c.bits);
        }
    }
    out
}

/// Unpacks `rows` rows of `row_len` codes of `scheme` from `bytes`, the inverse of [`pack`].
pub fn unpack(bytes: &[u8], rows: usize, row_len: usize, scheme: WeightScheme) -> Result<Vec<i16>> {
    let c = Container::of(scheme);
    let binary = scheme == WeightScheme::Binary;
    if c.signed_bytes {
        if bytes.len() != rows * row_len {
            return Err(param(
                "packed weights",
                format!("{} bytes for {rows}x{row_len} int8 codes", bytes.len()),
            ));
        }
        return Ok(bytes.iter().map(|&b| i16::from(b as i8)).collect());
    }
    let per_row = packed_len(row_len, c.bits);
    if bytes.len() != rows * per_row {
        return Err(param(
            "packed weights",
            format!(
                "{} bytes for {rows} rows of {row_len} {}-bit codes ({per_row} bytes each)",
                bytes.len(),
                c.bits
            ),
        ));
    }
    let mask = (1u32 << c.bits) - 1;
    let mut out = Vec::with_capacity(rows * row_len);
    for r in 0..rows {
        let src = &bytes[r * per_row..(r + 1) * per_row];
        let mut bit = 0usize;
        for _ in 0..row_len {
            let (byte, shift) = (bit / 8, bit % 8);
            let mut wide = u32::from(src[byte]);
            if byte + 1 < src.len() {
                wide |= u32::from(src[byte + 1]) << 8;
            }
            let v = ((wide >> shift) & mask) as u8;
            out.push(c.decode(v, binary));
            bit += usize::from(c.bits);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schemes() -> Vec<WeightScheme> {
        let mut v: Vec<WeightScheme> = (2..=8)
            .flat_map(|b| {
                [
                    WeightScheme::bits(b),
                    WeightScheme::Uniform {
                        bits: b,
                        symmetric: false,
                    },
                ]
            })
            .collect();
        v.push(WeightScheme::Ternary);
        v.push(WeightScheme::Binary);
        v
    }

    #[test]
    fn int4_is_two_per_byte_low_nibble_first() {
        let s = WeightScheme::bits(4);
        // Codes -7 and 7 become 1 and 15 after the offset of 8.
        assert_eq!(pack(&[-7, 7], 1, s), vec![0xf1]);
        assert_eq!(pack(&[-1, 0, 1, 1], 1, WeightScheme::Ternary), vec![0b1010_0100]);
        assert_eq!(packed_len(9, 4), 5);
    }

    proptest! {
        #[test]
        fn pack_round_trips(seed in 0usize..1000, rows in 1usize..5, row_len in 1usize..40) {
            for s in schemes() {
                let (lo, hi) = s.code_range();
                let codes: Vec<i16> = (0..rows * row_len)
                    .map(|i| {
                        let span = (hi - lo + 1) as usize;
                        let c = lo + ((i * 7919 + seed * 31) % span) as i16;
                        if s == WeightScheme::Binary && c == 0 { 1 } else { c }
                    })
                    .collect();
                let bytes = pack(&codes, rows, s);
                let c = Container::of(s);
                let expect = if c.signed_bytes { rows * row_len } else { rows * packed_len(row_len, c.bits) };
                prop_assert_eq!(bytes.len(), expect);
                prop_assert_eq!(unpack(&bytes, rows, row_len, s).ok(), Some(codes));
            }
        }
    }

    #[test]
    fn unpack_rejects_wrong_lengths() {
        assert!(unpack(&[0u8; 3], 2, 3, WeightScheme::bits(4)).is_err());
        assert!(unpack(&[0u8; 5], 2, 3, WeightScheme::bits(8)).is_err());
    }
}
