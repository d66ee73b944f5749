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

/// FNV-1a: a stable hash (unlike `std`'s, which may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
