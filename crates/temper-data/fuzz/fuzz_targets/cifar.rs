//! Arbitrary bytes through the CIFAR-10 and CIFAR-100 parsers: they must return `Ok` or a
//! typed error, never panic, and on success every label must be in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.bin");
    if let Ok((pixels, labels)) = temper_data::cifar::parse_cifar10(data, path) {
        assert_eq!(pixels.len(), labels.len() * temper_data::cifar::IMAGE_BYTES);
        assert!(labels.iter().all(|&l| l < 10));
    }
    if let Ok(r) = temper_data::cifar::parse_cifar100(data, path) {
        assert_eq!(r.pixels.len(), r.fine.len() * temper_data::cifar::IMAGE_BYTES);
        assert!(r.coarse.iter().all(|&l| l < 20) && r.fine.iter().all(|&l| l < 100));
    }
});
