//! Every kind of bad input gives a typed error that names the file (and the byte offset where
//! it applies), never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use temper_data::{cifar, idx, Error, ImageFolderParams, Split};

fn idx_images(n: u32, r: u32, c: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, r, c] {
        v.extend(d.to_be_bytes());
    }
    v.extend(std::iter::repeat_n(7u8, (n * r * c) as usize));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend((labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
    p
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
    enc.finish().unwrap_or_else(|e| panic!("{e}"))
}

/// Writes a valid MNIST train pair into `dir`, with the given label file bytes.
fn mnist_dir(images: &[u8], labels: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "train-images-idx3-ubyte", images);
    write(dir.path(), "train-labels-idx1-ubyte", labels);
    dir
}

fn load_mnist(dir: &Path) -> temper_data::Result<temper_data::Dataset> {
    temper_data::load("mnist", Some(dir), Split::Train)
}

#[test]
fn bad_magic_names_file_and_offset() {
    let mut images = idx_images(2, 4, 4);
    images[2] = 0x0d; // float data instead of unsigned bytes
    let dir = mnist_dir(&images, &idx_labels(&[1, 2]));
    let e = load_mnist(dir.path()).expect_err("bad magic must fail");
    match &e {
        Error::BadMagic {
            path, offset, found, ..
        } => {
            assert!(path.ends_with("train-images-idx3-ubyte"));
            assert_eq!(*offset, 0);
            assert_eq!(found, "0x00000d03");
        }
        other => panic!("wrong error: {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("byte 0"),
        "{msg}"
    );
}

#[test]
fn truncated_idx_reports_where_it_ends() {
    let mut images = idx_images(3, 4, 4);
    images.truncate(16 + 40);
    let dir = mnist_dir(&images, &idx_labels(&[1, 2, 3]));
    match load_mnist(dir.path()) {
        Err(Error::Truncated {
            path,
            offset,
            needed,
            available,
            ..
        }) => {
            assert!(path.ends_with("train-images-idx3-ubyte"));
            assert_eq!((offset, needed, available), (56, 16 + 48, 56));
        }
        other => panic!("wrong result: {other:?}"),
    }
    // A file cut inside its header is truncated too.
    let e = idx::parse_images(&[0, 0, 8, 3, 0, 0], Path::new("short"));
    assert!(matches!(e, Err(Error::Truncated { offset: 6, .. })), "{e:?}");
    let e = idx::parse_images(&[0, 0], Path::new("tiny"));
    assert!(matches!(e, Err(Error::Truncated { offset: 2, .. })), "{e:?}");
}

#[test]
fn truncated_gzip_is_an_error() {
    let mut images = gz(&idx_images(2, 4, 4));
    images.truncate(images.len() - 12);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "train-images-idx3-ubyte.gz", &images);
    write(
        dir.path(),
        "train-labels-idx1-ubyte.gz",
        &gz(&idx_labels(&[0, 1])),
    );
    match load_mnist(dir.path()) {
        Err(Error::Gzip { path, .. }) => assert!(path.ends_with("train-images-idx3-ubyte.gz")),
        other => panic!("wrong result: {other:?}"),
    }
}

#[test]
fn header_size_mismatch_trailing_bytes_and_count_disagreement() {
    let mut images = idx_images(2, 4, 4);
    images.extend([1, 2, 3]);
    let dir = mnist_dir(&images, &idx_labels(&[1, 2]));
    match load_mnist(dir.path()) {
        Err(Error::SizeMismatch { path, offset, .. }) => {
            assert!(path.ends_with("train-images-idx3-ubyte"));
            assert_eq!(offset, 16 + 32);
        }
        other => panic!("wrong result: {other:?}"),
    }
    // Images and labels that disagree on the count: the label file is blamed.
    let dir = mnist_dir(&idx_images(2, 4, 4), &idx_labels(&[1, 2, 3]));
    match load_mnist(dir.path()) {
        Err(e @ Error::SizeMismatch { .. }) => {
            assert!(e.path().is_some_and(|p| p.ends_with("train-labels-idx1-ubyte")));
            assert!(e.to_string().contains("3 labels") && e.to_string().contains("2 images"));
        }
        other => panic!("wrong result: {other:?}"),
    }
    // CIFAR: a file whose length is not a whole number of records.
    let e = cifar::parse_cifar10(&vec![0u8; 3073 * 2 + 100], Path::new("data_batch_1.bin"));
    match e {
        Err(Error::Truncated { offset, needed, .. }) => {
            assert_eq!((offset, needed), (3073 * 2 + 100, 3073 * 3));
        }
        other => panic!("wrong result: {other:?}"),
    }
    assert!(matches!(
        cifar::parse_cifar100(&[], Path::new("train.bin")),
        Err(Error::Truncated { offset: 0, .. })
    ));
}

#[test]
fn label_out_of_range_names_its_byte() {
    let dir = mnist_dir(&idx_images(3, 4, 4), &idx_labels(&[1, 10, 3]));
    match load_mnist(dir.path()) {
        Err(Error::LabelOutOfRange {
            path,
            offset,
            label,
            num_classes,
        }) => {
            assert!(path.ends_with("train-labels-idx1-ubyte"));
            assert_eq!((offset, label, num_classes), (9, 10, 10));
        }
        other => panic!("wrong result: {other:?}"),
    }
    let mut rec = vec![0u8; 3073 * 3];
    rec[3073 * 2] = 11;
    match cifar::parse_cifar10(&rec, Path::new("test_batch.bin")) {
        Err(Error::LabelOutOfRange { offset, label, .. }) => assert_eq!((offset, label), (3073 * 2, 11)),
        other => panic!("wrong result: {other:?}"),
    }
}

/// A tiny valid PNG of `w`x`h` in one colour.
fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

#[test]
fn undecodable_image_names_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "cat/0.png", &png(4, 4, [1, 2, 3]));
    let bad = write(
        dir.path(),
        "dog/1.jpg",
        b"\xff\xd8\xff\xe0 this is not really a jpeg",
    );
    let folder = ImageFolderParams::new(dir.path())
        .progress(false)
        .check()
        .unwrap_or_else(|e| panic!("{e}"));
    match folder.decode_all() {
        Err(Error::Undecodable { path, .. }) => assert_eq!(path, bad),
        other => panic!("wrong result: {other:?}"),
    }
    // A PNG cut in half is undecodable too.
    let mut half = png(8, 8, [9, 9, 9]);
    half.truncate(half.len() / 2);
    let e = temper_data::image_folder::decode_bytes(&half, Path::new("half.png"));
    assert!(matches!(e, Err(Error::Undecodable { .. })), "{e:?}");
}

#[test]
fn images_of_different_sizes_need_a_resize() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "a/0.png", &png(4, 4, [1, 2, 3]));
    let odd = write(dir.path(), "a/1.png", &png(5, 4, [1, 2, 3]));
    match temper_data::load("image-folder", Some(dir.path()), Split::Train) {
        Err(Error::ImageSize { path, found_w: 5, .. }) => assert_eq!(path, odd),
        other => panic!("wrong result: {other:?}"),
    }
}

#[test]
fn empty_class_folder_and_folder_without_classes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "cat/0.png", &png(4, 4, [1, 2, 3]));
    write(dir.path(), "dog/notes.txt", b"no images here");
    match ImageFolderParams::new(dir.path()).check() {
        Err(Error::EmptyClass { path }) => assert!(path.ends_with("dog")),
        other => panic!("wrong result: {other:?}"),
    }
    let flat = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(flat.path(), "0.png", &png(4, 4, [1, 2, 3]));
    assert!(matches!(
        ImageFolderParams::new(flat.path()).check(),
        Err(Error::NoClasses { .. })
    ));
}

#[test]
fn missing_directory_and_missing_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let gone = dir.path().join("nowhere");
    for name in ["mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder"] {
        match temper_data::load(name, Some(&gone), Split::Train) {
            Err(Error::MissingDir { path, .. }) => assert_eq!(path, gone, "{name}"),
            other => panic!("{name}: wrong result: {other:?}"),
        }
    }
    assert!(matches!(
        ImageFolderParams::new(&gone).check(),
        Err(Error::MissingDir { .. })
    ));
    // An existing directory without the files: the first expected name is reported.
    match temper_data::load("cifar10", Some(dir.path()), Split::Test) {
        Err(e @ Error::MissingFile { .. }) => {
            assert!(e.to_string().contains("test_batch.bin"), "{e}");
        }
        other => panic!("wrong result: {other:?}"),
    }
    assert!(matches!(
        temper_data::load("mnist", None, Split::Train),
        Err(Error::NeedsDataDir { .. })
    ));
    assert!(matches!(
        temper_data::load("imagenet-21k", None, Split::Train),
        Err(Error::UnknownDataset { .. })
    ));
}
