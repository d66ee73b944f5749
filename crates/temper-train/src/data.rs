//! The run's data: the training loader and the validation hold-out.

use crate::error::param;
use crate::{Result, TrainConfig};
use std::sync::Arc;
use temper_data::augment::{AugmentParams, PadMode};
use temper_data::split::{SplitParams, ValSize};
use temper_data::{Dataset, Loader, LoaderParams, Split};

/// The training loader and the validation set (none when `val_split` is 0).
pub(crate) struct Data {
    pub loader: Loader,
    pub val: Option<Dataset>,
}

/// Loads the data set, checks it against the model, and splits off the validation part
/// (stratified, seeded) and its first `val_size` images.
pub(crate) fn load(cfg: &TrainConfig) -> Result<Data> {
    let full = temper_data::load(&cfg.dataset, cfg.data_dir.as_deref(), Split::Train)?;
    let [c, h, w] = full.shape();
    let m = &cfg.model;
    if [c, h, w] != [m.in_channels, m.input_size.0, m.input_size.1] {
        return Err(param(
            "model",
            format!(
                "data set '{}' has {c}x{h}x{w} images but the model takes {}x{}x{} (set --in-channels / --input-size)",
                full.name(),
                m.in_channels,
                m.input_size.0,
                m.input_size.1
            ),
        ));
    }
    if full.num_classes() > m.num_classes {
        return Err(param(
            "num-classes",
            format!(
                "data set has {} classes, model {}",
                full.num_classes(),
                m.num_classes
            ),
        ));
    }
    let (train, val) = if cfg.val_split > 0.0 {
        // `TrainConfig::check` admits only whole counts at or above 1.
        let size = if cfg.val_split >= 1.0 {
            ValSize::Count(cfg.val_split as usize)
        } else {
            ValSize::Fraction(cfg.val_split)
        };
        let split = SplitParams {
            val: size,
            seed: cfg.seed,
        }
        .check(full.len())?;
        let (t, v) = split.split_dataset(&full)?;
        // Evenly spaced through the hold-out, not its first rows: the hold-out is stratified
        // and in data order, so for a class-sorted image folder the first rows are the first
        // classes only.
        let v = if cfg.val_size < v.len() {
            v.subset(&evenly_spaced(v.len(), cfg.val_size))?
        } else {
            v
        };
        (t, Some(v))
    } else {
        (full, None)
    };
    let train = match cfg.train_size {
        // Evenly spaced, not the first k: image folders are sorted by class, and every class
        // must stay. The same images for every seed, so runs compare on equal data.
        Some(k) if k < train.len() => train.subset(&evenly_spaced(train.len(), k))?,
        _ => train,
    };
    let mut loader = Loader::new(
        Arc::new(train),
        LoaderParams::new(cfg.batch_size)
            .seed(cfg.seed)
            .drop_last(true)
            .check()?,
    )?;
    if cfg.augment {
        let pad = if h >= 32 { 4 } else { 2 };
        let mut a = AugmentParams::new().random_crop(h.min(w), pad, PadMode::Zero);
        if c == 3 {
            a = a.hflip(0.5);
        }
        loader = loader.with_augment(a.check([c, h, w])?)?;
    }
    if loader.is_empty() {
        return Err(param(
            "batch-size",
            format!("{} is larger than the training set", cfg.batch_size),
        ));
    }
    Ok(Data { loader, val })
}

/// `k` indices of `0..n` spread evenly through it (every class of a class-sorted data set
/// keeps its share).
pub(crate) fn evenly_spaced(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| i * n / k.max(1)).collect()
}

#[cfg(test)]
mod tests {
    /// A stratified hold-out of a class-sorted folder is class-sorted too: the rows taken
    /// from it must cover every class in proportion, not the first classes.
    #[test]
    fn evenly_spaced_rows_keep_every_class_of_a_sorted_set() {
        let mut per_class = [0usize; 10];
        for i in super::evenly_spaced(1000, 50) {
            per_class[i / 100] += 1;
        }
        assert_eq!(per_class, [5; 10]);
        let all = super::evenly_spaced(7, 7);
        assert_eq!(all, (0..7).collect::<Vec<_>>());
    }
}
