//! The binary releases of CIFAR-10 and CIFAR-100.
//!
//! A CIFAR file is a plain sequence of fixed-size records with no header: CIFAR-10 records
//! are one label byte then 3,072 pixel bytes (1,024 red, 1,024 green, 1,024 blue, each 32x32
//! row-major, which is already CHW order); CIFAR-100 records have two label bytes, coarse
//! then fine. With no magic number, a wrong file is caught by its length and its labels.
//!
//! ```
//! use std::path::Path;
//! let mut record = vec![3u8];
//! record.extend([0u8; 3072]);
//! let (pixels, labels) = temper_data::cifar::parse_cifar10(&record, Path::new("batch.bin"))?;
//! assert_eq!((pixels.len(), labels), (3072, vec![3]));
//! record.pop();
//! assert!(temper_data::cifar::parse_cifar10(&record, Path::new("batch.bin")).is_err());
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::{read, Dataset, Error, Result, Split};
use std::path::{Path, PathBuf};

/// Bytes of one 32x32 RGB image.
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Shape `[C, H, W]` of a CIFAR image.
pub const SHAPE: [usize; 3] = [3, 32, 32];

/// The records of a CIFAR-100 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cifar100Records {
    /// Pixels, `(N, 3, 32, 32)` `u8`.
    pub pixels: Vec<u8>,
    /// The 20 superclass labels.
    pub coarse: Vec<u32>,
    /// The 100 class labels.
    pub fine: Vec<u32>,
}

/// Which CIFAR-100 labels a data set carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar100Labels {
    /// The 20 superclasses.
    Coarse,
    /// The 100 classes (the usual benchmark).
    Fine,
}

/// Splits `bytes` into records of `label_bytes + IMAGE_BYTES`, checking every label byte
/// against its class count. Returns the pixels and one label vector per label byte.
fn parse_records(bytes: &[u8], path: &Path, num_classes: &[usize]) -> Result<(Vec<u8>, Vec<Vec<u32>>)> {
    let label_bytes = num_classes.len();
    let record = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            offset: 0,
            what: "the first record".into(),
            needed: record as u64,
            available: 0,
        });
    }
    let whole = bytes.len() / record;
    if !bytes.len().is_multiple_of(record) {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            offset: bytes.len() as u64,
            what: format!(
                "record {whole} (records are {record} bytes: {label_bytes} label byte(s) and a 32x32 RGB image)"
            ),
            needed: ((whole + 1) * record) as u64,
            available: bytes.len() as u64,
        });
    }
    let mut pixels = Vec::with_capacity(whole * IMAGE_BYTES);
    let mut labels = vec![Vec::with_capacity(whole); label_bytes];
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let (head, img) = rec.split_at(label_bytes);
        for (k, (&l, &n)) in head.iter().zip(num_classes).enumerate() {
            if usize::from(l) >= n {
                return Err(Error::LabelOutOfRange {
                    path: path.to_path_buf(),
                    offset: (i * record + k) as u64,
                    label: u32::from(l),
                    num_classes: n,
                });
            }
            labels[k].push(u32::from(l));
        }
        pixels.extend_from_slice(img);
    }
    Ok((pixels, labels))
}

/// Parses a CIFAR-10 binary file: returns the pixels `(N, 3, 32, 32)` and the labels.
pub fn parse_cifar10(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, Vec<u32>)> {
    let (pixels, mut labels) = parse_records(bytes, path, &[10])?;
    Ok((pixels, labels.pop().unwrap_or_default()))
}

/// Parses a CIFAR-100 binary file (coarse label, fine label, image per record).
pub fn parse_cifar100(bytes: &[u8], path: &Path) -> Result<Cifar100Records> {
    let (pixels, mut labels) = parse_records(bytes, path, &[20, 100])?;
    let fine = labels.pop().unwrap_or_default();
    let coarse = labels.pop().unwrap_or_default();
    Ok(Cifar100Records { pixels, coarse, fine })
}

/// `dir` itself, or its `sub` folder when the archive was extracted with its top folder.
fn data_root(dir: &Path, sub: &str) -> Result<PathBuf> {
    read::require_dir(dir)?;
    let nested = dir.join(sub);
    Ok(if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    })
}

/// Loads CIFAR-10 from its binary release: `data_batch_1.bin` .. `data_batch_5.bin` for
/// training and `test_batch.bin` for test, in `dir` or `dir/cifar-10-batches-bin`.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    let root = data_root(dir, "cifar-10-batches-bin")?;
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in &names {
        let path = read::find_file(&root, &[name])?;
        let bytes = read::read_maybe_gz(&path)?;
        let (p, l) = parse_cifar10(&bytes, &path)?;
        pixels.extend(p);
        labels.extend(l);
    }
    Dataset::new(
        format!("cifar10/{split}"),
        SHAPE,
        pixels,
        labels,
        cifar10_classes(),
    )
}

/// Loads CIFAR-100 from its binary release: `train.bin` and `test.bin` in `dir` or
/// `dir/cifar-100-binary`, with the chosen labels.
pub fn load_cifar100(dir: &Path, split: Split, which: Cifar100Labels) -> Result<Dataset> {
    let root = data_root(dir, "cifar-100-binary")?;
    let name = match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    };
    let path = read::find_file(&root, &[name])?;
    let bytes = read::read_maybe_gz(&path)?;
    let r = parse_cifar100(&bytes, &path)?;
    let (labels, classes, tag) = match which {
        Cifar100Labels::Fine => (r.fine, cifar100_fine_classes(), "cifar100"),
        Cifar100Labels::Coarse => (r.coarse, cifar100_coarse_classes(), "cifar100-coarse"),
    };
    Dataset::new(format!("{tag}/{split}"), SHAPE, r.pixels, labels, classes)
}

fn owned(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Class names of CIFAR-10, in label order.
pub fn cifar10_classes() -> Vec<String> {
    owned(&[
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ])
}

/// The 20 superclass names of CIFAR-100, in label order.
pub fn cifar100_coarse_classes() -> Vec<String> {
    owned(&[
        "aquatic_mammals",
        "fish",
        "flowers",
        "food_containers",
        "fruit_and_vegetables",
        "household_electrical_devices",
        "household_furniture",
        "insects",
        "large_carnivores",
        "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes",
        "large_omnivores_and_herbivores",
        "medium_mammals",
        "non-insect_invertebrates",
        "people",
        "reptiles",
        "small_mammals",
        "trees",
        "vehicles_1",
        "vehicles_2",
    ])
}

/// The 100 class names of CIFAR-100, in label order.
pub fn cifar100_fine_classes() -> Vec<String> {
    owned(&[
        "apple",
        "aquarium_fish",
        "baby",
        "bear",
        "beaver",
        "bed",
        "bee",
        "beetle",
        "bicycle",
        "bottle",
        "bowl",
        "boy",
        "bridge",
        "bus",
        "butterfly",
        "camel",
        "can",
        "castle",
        "caterpillar",
        "cattle",
        "chair",
        "chimpanzee",
        "clock",
        "cloud",
        "cockroach",
        "couch",
        "crab",
        "crocodile",
        "cup",
        "dinosaur",
        "dolphin",
        "elephant",
        "flatfish",
        "forest",
        "fox",
        "girl",
        "hamster",
        "house",
        "kangaroo",
        "keyboard",
        "lamp",
        "lawn_mower",
        "leopard",
        "lion",
        "lizard",
        "lobster",
        "man",
        "maple_tree",
        "motorcycle",
        "mountain",
        "mouse",
        "mushroom",
        "oak_tree",
        "orange",
        "orchid",
        "otter",
        "palm_tree",
        "pear",
        "pickup_truck",
        "pine_tree",
        "plain",
        "plate",
        "poppy",
        "porcupine",
        "possum",
        "rabbit",
        "raccoon",
        "ray",
        "road",
        "rocket",
        "rose",
        "sea",
        "seal",
        "shark",
        "shrew",
        "skunk",
        "skyscraper",
        "snail",
        "snake",
        "spider",
        "squirrel",
        "streetcar",
        "sunflower",
        "sweet_pepper",
        "table",
        "tank",
        "telephone",
        "television",
        "tiger",
        "tractor",
        "train",
        "trout",
        "tulip",
        "turtle",
        "wardrobe",
        "whale",
        "willow_tree",
        "wolf",
        "woman",
        "worm",
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_have_the_published_sizes() {
        assert_eq!(cifar10_classes().len(), 10);
        assert_eq!(cifar100_coarse_classes().len(), 20);
        assert_eq!(cifar100_fine_classes().len(), 100);
        let mut fine = cifar100_fine_classes();
        fine.sort();
        assert_eq!(fine, cifar100_fine_classes(), "fine names are alphabetical");
    }

    #[test]
    fn parses_cifar100_labels_in_order() -> Result<()> {
        let mut f = vec![19u8, 99];
        f.extend(vec![7u8; IMAGE_BYTES]);
        f.extend([0u8, 1]);
        f.extend(vec![8u8; IMAGE_BYTES]);
        let r = parse_cifar100(&f, Path::new("train.bin"))?;
        assert_eq!((r.coarse, r.fine), (vec![19, 0], vec![99, 1]));
        assert_eq!(r.pixels.len(), 2 * IMAGE_BYTES);
        assert_eq!(r.pixels[IMAGE_BYTES], 8);
        Ok(())
    }

    #[test]
    fn cifar100_fine_label_out_of_range_names_its_byte() {
        let mut f = vec![0u8, 5];
        f.extend(vec![0u8; IMAGE_BYTES]);
        f.extend([3u8, 100]);
        f.extend(vec![0u8; IMAGE_BYTES]);
        match parse_cifar100(&f, Path::new("train.bin")) {
            Err(Error::LabelOutOfRange {
                offset,
                label: 100,
                num_classes: 100,
                ..
            }) => assert_eq!(offset, (IMAGE_BYTES + 2 + 1) as u64),
            other => panic!("{other:?}"),
        }
    }
}
