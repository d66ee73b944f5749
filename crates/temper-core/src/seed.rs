//! Global seeding.
//!
//! candle's CPU random generator cannot be seeded, so Temper draws every random number it
//! needs (initialisation, dropout masks, attack starts, shuffling) on the host from ChaCha
//! streams derived from one global seed. A stream is named, so adding a new consumer of
//! randomness does not shift the numbers that existing consumers see.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicU64, Ordering};

/// The random generator used everywhere in Temper: portable and reproducible across machines.
pub type Rng = ChaCha8Rng;

static GLOBAL_SEED: AtomicU64 = AtomicU64::new(0);

/// Sets the global seed from which every named stream is derived.
pub fn set_seed(seed: u64) {
    GLOBAL_SEED.store(seed, Ordering::SeqCst);
}

/// The current global seed (0 unless [`set_seed`] was called).
pub fn seed() -> u64 {
    GLOBAL_SEED.load(Ordering::SeqCst)
}

/// A generator for the named stream, derived from the global seed.
///
/// ```
/// use rand::Rng as _;
/// temper_core::seed::set_seed(7);
/// let a: u32 = temper_core::seed::rng("init").random();
/// let b: u32 = temper_core::seed::rng("init").random();
/// assert_eq!(a, b);
/// ```
pub fn rng(stream: &str) -> Rng {
    rng_with(seed(), stream)
}

/// A generator for the named stream under an explicit seed, ignoring the global one.
pub fn rng_with(seed: u64, stream: &str) -> Rng {
    ChaCha8Rng::seed_from_u64(seed ^ fnv1a(stream.as_bytes()))
}

/// Where a generator stands in its stream, to write into a file and continue from later
/// (a resumed evaluation draws exactly the numbers an uninterrupted one would).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The 32-byte key, in hex.
    key: String,
    /// The ChaCha stream number.
    stream: u64,
    /// The position in the stream, in 32-bit words (a decimal string: JSON numbers are not
    /// 128-bit).
    word_pos: String,
}

impl RngState {
    /// The state of `rng`.
    pub fn of(rng: &Rng) -> Self {
        RngState {
            key: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// The generator at this state, or `None` when the state is malformed.
    pub fn restore(&self) -> Option<Rng> {
        if self.key.len() != 64 || !self.key.is_ascii() {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&self.key[2 * i..2 * i + 2], 16).ok()?;
        }
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

/// FNV-1a: a stable hash (unlike `std`'s, which may change between Rust releases), also used
/// to fingerprint data.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn a_restored_generator_continues_the_stream() {
        let mut a = rng_with(3, "eval/pgd");
        let _: Vec<u32> = (0..37).map(|_| a.random()).collect();
        let state = RngState::of(&a);
        let text = serde_json::to_string(&state).unwrap_or_default();
        let back: RngState = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let mut b = back.restore().unwrap_or_else(|| panic!("{text}"));
        let next_a: Vec<u64> = (0..10).map(|_| a.random()).collect();
        let next_b: Vec<u64> = (0..10).map(|_| b.random()).collect();
        assert_eq!(next_a, next_b);
        let bad = RngState {
            key: "zz".into(),
            ..state
        };
        assert!(bad.restore().is_none());
    }
}
