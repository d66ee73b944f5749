//! Stratified, seeded train/validation splits.
//!
//! Each class gives the validation set its share of the requested size (largest remainders
//! decide the rounding, so the total is exact), picked at random from a stream of its own:
//! the validation set has the class balance of the whole and is the same for the same seed.
//!
//! ```
//! use temper_data::split::{SplitParams, ValSize};
//! let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
//! let split = SplitParams { val: "0.2".parse::<ValSize>()?, seed: 1 }.check(labels.len())?;
//! let s = split.apply(&labels, 4);
//! assert_eq!((s.train.len(), s.val.len()), (80, 20));
//! assert!(s.val.iter().filter(|&&i| labels[i] == 3).count() == 5);
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::random::shuffle;
use crate::{Dataset, Error, Result};
use temper_core::seed::rng_with;

/// How large the validation set is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValSize {
    /// An exact number of samples, e.g. 5000.
    Count(usize),
    /// A fraction of the data set in `(0, 1)`, e.g. 0.1.
    Fraction(f64),
}

impl std::str::FromStr for ValSize {
    type Err = Error;

    /// `5000` is a count; `0.1` or `10%` is a fraction.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = || {
            Error::param(
                "val-split",
                format!("'{s}' is neither a count (5000) nor a fraction (0.1 or 10%)"),
            )
        };
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            return Ok(ValSize::Fraction(v / 100.0));
        }
        if let Ok(n) = t.parse::<usize>() {
            return Ok(ValSize::Count(n));
        }
        t.parse::<f64>().map(ValSize::Fraction).map_err(|_| bad())
    }
}

/// An unchecked split request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitParams {
    /// Size of the validation set.
    pub val: ValSize,
    /// Seed of the random choice.
    pub seed: u64,
}

impl SplitParams {
    /// Validates the request for a data set of `n` samples: a count must leave at least one
    /// training sample, a fraction must lie in `(0, 1)`.
    pub fn check(self, n: usize) -> Result<ValidSplit> {
        let val_count = match self.val {
            ValSize::Count(c) => {
                if c >= n {
                    return Err(Error::param(
                        "val-split",
                        format!("{c} validation samples leave none of {n} for training"),
                    ));
                }
                c
            }
            ValSize::Fraction(f) => {
                if !(f > 0.0 && f < 1.0) {
                    return Err(Error::param(
                        "val-split",
                        format!("fraction {f} is not in (0, 1)"),
                    ));
                }
                ((n as f64 * f).round() as usize).min(n.saturating_sub(1))
            }
        };
        Ok(ValidSplit {
            val_count,
            n,
            seed: self.seed,
        })
    }
}

/// A validated split for a data set of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidSplit {
    val_count: usize,
    n: usize,
    seed: u64,
}

/// The result of a split: sorted sample indices of each part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitIndices {
    /// Indices of the training part, ascending.
    pub train: Vec<usize>,
    /// Indices of the validation part, ascending.
    pub val: Vec<usize>,
}

impl ValidSplit {
    /// Number of validation samples.
    pub fn val_count(&self) -> usize {
        self.val_count
    }

    /// Splits `labels` (one per sample; labels at or above `num_classes` count as one more
    /// class so nothing is lost).
    pub fn apply(&self, labels: &[u32], num_classes: usize) -> SplitIndices {
        let k = labels
            .iter()
            .map(|&l| l as usize + 1)
            .max()
            .unwrap_or(0)
            .max(num_classes);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        let n = labels.len();
        // The requested size scales with the actual number of labels in case the caller
        // checked against a different count.
        let want = if n == self.n {
            self.val_count
        } else {
            (self.val_count as f64 * n as f64 / self.n.max(1) as f64).round() as usize
        };
        let quotas = largest_remainder(&by_class.iter().map(Vec::len).collect::<Vec<_>>(), want);
        let mut train = Vec::with_capacity(n - want.min(n));
        let mut val = Vec::with_capacity(want);
        for (class, (mut idx, q)) in by_class.into_iter().zip(quotas).enumerate() {
            let mut rng = rng_with(self.seed, &format!("temper-data/split/{class}"));
            shuffle(&mut rng, &mut idx);
            val.extend_from_slice(&idx[..q]);
            train.extend_from_slice(&idx[q..]);
        }
        train.sort_unstable();
        val.sort_unstable();
        SplitIndices { train, val }
    }

    /// Splits a data set into (train, validation) copies.
    pub fn split_dataset(&self, ds: &Dataset) -> Result<(Dataset, Dataset)> {
        let s = self.apply(ds.labels(), ds.num_classes());
        let mut train = ds.subset(&s.train)?;
        let mut val = ds.subset(&s.val)?;
        train.set_name(format!("{}[train part]", ds.name()));
        val.set_name(format!("{}[val part]", ds.name()));
        Ok((train, val))
    }
}

/// Shares `total` among groups of the given sizes in proportion, rounding by largest
/// remainder (ties to the lower index), never giving a group more than its size.
fn largest_remainder(sizes: &[usize], total: usize) -> Vec<usize> {
    let n: usize = sizes.iter().sum();
    if n == 0 {
        return vec![0; sizes.len()];
    }
    let total = total.min(n);
    let exact: Vec<(usize, u128)> = sizes
        .iter()
        .map(|&s| {
            let num = s as u128 * total as u128;
            ((num / n as u128) as usize, num % n as u128)
        })
        .collect();
    let mut quotas: Vec<usize> = exact.iter().map(|e| e.0).collect();
    let given: usize = quotas.iter().sum();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for &i in order.iter().take(total - given) {
        quotas[i] += 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_fractions() -> Result<()> {
        assert_eq!("5000".parse::<ValSize>()?, ValSize::Count(5000));
        assert_eq!("0.1".parse::<ValSize>()?, ValSize::Fraction(0.1));
        assert_eq!("10%".parse::<ValSize>()?, ValSize::Fraction(0.1));
        assert!("ten".parse::<ValSize>().is_err());
        Ok(())
    }

    #[test]
    fn check_rejects_impossible_sizes() {
        let p = |val| SplitParams { val, seed: 0 };
        assert!(p(ValSize::Count(10)).check(10).is_err());
        assert!(p(ValSize::Fraction(1.0)).check(10).is_err());
        assert!(p(ValSize::Fraction(0.0)).check(10).is_err());
        assert!(p(ValSize::Fraction(f64::NAN)).check(10).is_err());
        assert!(p(ValSize::Count(9)).check(10).is_ok());
    }

    #[test]
    fn split_is_stratified_exact_disjoint_and_seeded() -> Result<()> {
        // Unbalanced classes: 50, 30, 20 samples.
        let labels: Vec<u32> = (0..100u32)
            .map(|i| {
                if i < 50 {
                    0
                } else if i < 80 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let split = SplitParams {
            val: ValSize::Count(15),
            seed: 3,
        }
        .check(100)?;
        let s = split.apply(&labels, 3);
        assert_eq!(s.val.len(), 15);
        let per: Vec<usize> = (0..3)
            .map(|c| s.val.iter().filter(|&&i| labels[i] == c).count())
            .collect();
        // 7.5, 4.5, 3.0: the tie in remainders goes to the lower class.
        assert_eq!(per, vec![8, 4, 3]);
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split.apply(&labels, 3), s);
        let other = SplitParams {
            val: ValSize::Count(15),
            seed: 4,
        }
        .check(100)?;
        assert_ne!(other.apply(&labels, 3).val, s.val);
        Ok(())
    }

    #[test]
    fn largest_remainder_sums_exactly() {
        for total in 0..=10 {
            let q = largest_remainder(&[3, 3, 4], total);
            assert_eq!(q.iter().sum::<usize>(), total);
            assert!(q.iter().zip([3, 3, 4]).all(|(a, b)| *a <= b));
        }
    }
}
