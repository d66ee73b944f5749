//! Portable random draws on top of Temper's ChaCha8 streams.
//!
//! The shuffles and augmentations of a run must be identical on every machine and stay
//! identical when `rand` is upgraded, so the few primitives used here are built directly on
//! the raw 64-bit words of the ChaCha8 stream rather than on `rand`'s distribution code,
//! whose algorithms may change between releases.

use rand::RngCore;
use temper_core::seed::{rng_with, Rng};

/// A uniform integer in `0..n` (Lemire's multiply-and-reject method, unbiased).
/// Returns 0 when `n` is 0 so callers never divide by zero.
pub(crate) fn below(rng: &mut Rng, n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        // The low half decides rejection; the high half is the uniformly distributed result.
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// A uniform integer in `lo..=hi`; `hi < lo` yields `lo`.
pub(crate) fn range_inclusive(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    if hi <= lo {
        return lo;
    }
    lo + below(rng, (hi - lo) as u64 + 1) as usize
}

/// A uniform float in `[0, 1)` with 53 random bits.
pub(crate) fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Fisher-Yates shuffle in place.
pub(crate) fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// The generator for one sample of one epoch. Deriving it from the sample's position alone
/// (never from which worker thread handles it) makes augmentation independent of scheduling.
pub(crate) fn item_rng(seed: u64, epoch: u64, position: usize) -> Rng {
    rng_with(seed, &format!("temper-data/item/{epoch}/{position}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = rng_with(1, "t");
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = below(&mut r, 7) as usize;
            assert!(v < 7);
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(below(&mut r, 0), 0);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut r = rng_with(2, "t");
        let mut v: Vec<usize> = (0..100).collect();
        shuffle(&mut r, &mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn unit_is_in_half_open_interval() {
        let mut r = rng_with(3, "t");
        for _ in 0..1000 {
            let u = unit(&mut r);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
