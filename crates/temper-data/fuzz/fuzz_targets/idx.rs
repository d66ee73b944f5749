//! Arbitrary bytes through the IDX parsers: they must return `Ok` or a typed error, never
//! panic, and on success their results must agree with the header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.idx");
    if let Ok(a) = temper_data::idx::parse_images(data, path) {
        assert_eq!(a.dims.len(), 3);
        assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
    }
    if let Ok(labels) = temper_data::idx::parse_labels(data, path, 10) {
        assert!(labels.iter().all(|&l| l < 10));
    }
    for ndims in 0..=4 {
        let _ = temper_data::idx::parse(data, path, ndims);
    }
    // The same bytes as a gzip stream of an image file and a label file.
    let _ = temper_data::idx::dataset_from_bytes(
        "fuzz",
        data,
        path,
        data,
        path,
        temper_data::idx::mnist_classes(),
    );
});
