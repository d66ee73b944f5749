//! The IDX format of MNIST and Fashion-MNIST.
//!
//! An IDX file is a 4-byte magic number (`0x00 0x00`, a type code, the number of dimensions),
//! one big-endian `u32` per dimension, then the values in row-major order. Images are
//! `u8` with 3 dimensions (count, rows, columns); labels are `u8` with 1 dimension.
//!
//! The parsers take byte slices so that they can be fuzzed, and check every size against the
//! header before touching the data: a bad file yields a typed error naming the byte offset,
//! never a panic.
//!
//! ```
//! use std::path::Path;
//! let mut file = vec![0, 0, 8, 1, 0, 0, 0, 2];
//! file.extend([3, 9]);
//! let labels = temper_data::idx::parse_labels(&file, Path::new("labels"), 10)?;
//! assert_eq!(labels, vec![3, 9]);
//! file[9] = 10;
//! assert!(temper_data::idx::parse_labels(&file, Path::new("labels"), 10).is_err());
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::{read, Dataset, Error, Result};
use std::path::Path;

/// IDX type code of unsigned bytes, the only type MNIST-style files use.
const TYPE_U8: u8 = 0x08;

/// A parsed IDX array of `u8`, borrowing its values from the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray<'a> {
    /// Size of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major; `data.len()` is the product of `dims`.
    pub data: &'a [u8],
}

/// Parses an IDX file of `u8` values with exactly `ndims` dimensions.
pub fn parse<'a>(bytes: &'a [u8], path: &Path, ndims: u8) -> Result<IdxArray<'a>> {
    let truncated = |what: &str, needed: usize| Error::Truncated {
        path: path.to_path_buf(),
        offset: bytes.len() as u64,
        what: what.to_string(),
        needed: needed as u64,
        available: bytes.len() as u64,
    };
    let magic = bytes
        .get(..4)
        .ok_or_else(|| truncated("the IDX magic number", 4))?;
    if magic != [0, 0, TYPE_U8, ndims] {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            offset: 0,
            expected: format!("0x000008{ndims:02x} (IDX, unsigned bytes, {ndims} dimensions)"),
            found: format!(
                "0x{:02x}{:02x}{:02x}{:02x}",
                magic[0], magic[1], magic[2], magic[3]
            ),
        });
    }
    let header_len = 4 + 4 * usize::from(ndims);
    let header = bytes
        .get(4..header_len)
        .ok_or_else(|| truncated("the IDX header (dimension sizes)", header_len))?;
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let described = || dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(header_len))
        .ok_or_else(|| Error::SizeMismatch {
            path: path.to_path_buf(),
            offset: 4,
            reason: format!("dimensions {} overflow the address space", described()),
        })?;
    if bytes.len() < count {
        return Err(truncated(
            &format!("the {} values the header declares", described()),
            count,
        ));
    }
    if bytes.len() > count {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            offset: count as u64,
            reason: format!(
                "the header declares {} values ending at byte {count}, but {} more bytes follow",
                described(),
                bytes.len() - count
            ),
        });
    }
    Ok(IdxArray {
        dims,
        data: &bytes[header_len..],
    })
}

/// Parses an IDX image file: 3 dimensions (count, rows, columns) of `u8` pixels.
pub fn parse_images<'a>(bytes: &'a [u8], path: &Path) -> Result<IdxArray<'a>> {
    let a = parse(bytes, path, 3)?;
    if a.dims[1] == 0 || a.dims[2] == 0 {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            offset: 8,
            reason: format!("images of {}x{} pixels hold nothing", a.dims[1], a.dims[2]),
        });
    }
    Ok(a)
}

/// Parses an IDX label file (1 dimension of `u8`), checking every label is below
/// `num_classes`.
pub fn parse_labels(bytes: &[u8], path: &Path, num_classes: usize) -> Result<Vec<u32>> {
    let a = parse(bytes, path, 1)?;
    let header_len = 8u64;
    a.data
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if usize::from(l) < num_classes {
                Ok(u32::from(l))
            } else {
                Err(Error::LabelOutOfRange {
                    path: path.to_path_buf(),
                    offset: header_len + i as u64,
                    label: u32::from(l),
                    num_classes,
                })
            }
        })
        .collect()
}

/// Builds a data set from the bytes of an image file and a label file (each raw or gzip).
///
/// The paths are used in error messages only.
pub fn dataset_from_bytes(
    name: &str,
    images: &[u8],
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
    classes: Vec<String>,
) -> Result<Dataset> {
    let images = read::maybe_gunzip(images.to_vec(), images_path)?;
    let labels = read::maybe_gunzip(labels.to_vec(), labels_path)?;
    let img = parse_images(&images, images_path)?;
    let lab = parse_labels(&labels, labels_path, classes.len())?;
    if img.dims[0] != lab.len() {
        return Err(Error::SizeMismatch {
            path: labels_path.to_path_buf(),
            offset: 4,
            reason: format!(
                "the header declares {} labels but '{}' holds {} images",
                lab.len(),
                images_path.display(),
                img.dims[0]
            ),
        });
    }
    let shape = [1, img.dims[1], img.dims[2]];
    let pixels = img.data.to_vec();
    Dataset::new(name, shape, pixels, lab, classes)
}

/// Reads an image file and a label file (each raw or gzip) into a data set.
pub fn load_files(
    name: &str,
    images_path: &Path,
    labels_path: &Path,
    classes: Vec<String>,
) -> Result<Dataset> {
    let images = std::fs::read(images_path).map_err(|e| Error::io("cannot read", images_path, e))?;
    let labels = std::fs::read(labels_path).map_err(|e| Error::io("cannot read", labels_path, e))?;
    dataset_from_bytes(name, &images, images_path, &labels, labels_path, classes)
}

/// Class names of MNIST: the digits.
pub fn mnist_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// Class names of Fashion-MNIST.
pub fn fashion_mnist_classes() -> Vec<String> {
    [
        "t-shirt/top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: u32, r: u32, c: u32) -> Vec<u8> {
        let mut v = vec![0, 0, 8, 3];
        for d in [n, r, c] {
            v.extend(d.to_be_bytes());
        }
        v.extend((0..n * r * c).map(|i| i as u8));
        v
    }

    #[test]
    fn parses_images() -> Result<()> {
        let f = images(2, 3, 4);
        let a = parse_images(&f, Path::new("x"))?;
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data.len(), 24);
        assert_eq!(a.data[23], 23);
        Ok(())
    }

    #[test]
    fn rejects_labels_file_given_as_images() {
        let f = [0, 0, 8, 1, 0, 0, 0, 1, 5];
        let e = parse_images(&f, Path::new("x"));
        assert!(matches!(e, Err(Error::BadMagic { offset: 0, .. })), "{e:?}");
    }

    #[test]
    fn header_overflow_is_an_error() {
        let mut f = vec![0, 0, 8, 3];
        f.extend([0xff; 12]);
        assert!(matches!(
            parse_images(&f, Path::new("x")),
            Err(Error::SizeMismatch { .. }) | Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn zero_sized_images_are_an_error() {
        let f = images(2, 0, 4);
        assert!(matches!(
            parse_images(&f, Path::new("x")),
            Err(Error::SizeMismatch { offset: 8, .. })
        ));
    }
}
