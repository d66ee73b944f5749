//! Property tests: parsers never panic on arbitrary bytes, augmentation keeps shapes, splits
//! partition the data. The fuzz targets in `fuzz/` push the parsers much further.

use proptest::prelude::*;
use std::path::Path;
use temper_data::augment::{AugmentParams, PadMode};
use temper_data::split::{SplitParams, ValSize};

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn idx_parsers_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..256), valid_magic: bool) {
        if valid_magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&[0, 0, 8, 3]);
        }
        let p = Path::new("p");
        if let Ok(a) = temper_data::idx::parse_images(&bytes, p) {
            prop_assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
        }
        let _ = temper_data::idx::parse_labels(&bytes, p, 10);
    }

    #[test]
    fn cifar_parsers_never_panic(len in 0usize..8000, fill: u8) {
        let bytes = vec![fill; len];
        let p = Path::new("p");
        let ok10 = temper_data::cifar::parse_cifar10(&bytes, p).is_ok();
        prop_assert_eq!(ok10, len > 0 && len % 3073 == 0 && fill < 10);
        let _ = temper_data::cifar::parse_cifar100(&bytes, p);
    }

    #[test]
    fn augmentation_keeps_the_declared_shape(
        h in 2usize..12, w in 2usize..12, pad in 0usize..2, reflect: bool, seed: u64,
    ) {
        let size = h.min(w);
        let mode = if reflect { PadMode::Reflect } else { PadMode::Zero };
        let aug = AugmentParams::new().random_crop(size, pad, mode).hflip(0.5).random_resized_crop(3)
            .check([2, h, w]);
        let aug = aug.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let img: Vec<u8> = (0..2 * h * w).map(|i| i as u8).collect();
        let out = aug.apply(&img, &mut temper_core::seed::rng_with(seed, "prop"));
        prop_assert_eq!(out.len(), 2 * 3 * 3);
    }

    #[test]
    fn split_partitions_every_sample(labels in proptest::collection::vec(0u32..5, 2..200), frac in 0.05f64..0.95, seed: u64) {
        let s = SplitParams { val: ValSize::Fraction(frac), seed }.check(labels.len())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parts = s.apply(&labels, 5);
        prop_assert_eq!(parts.val.len(), s.val_count());
        let mut all: Vec<usize> = parts.train.iter().chain(&parts.val).copied().collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
    }
}
