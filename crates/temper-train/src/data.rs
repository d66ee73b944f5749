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
        let v = if cfg.val_size < v.len() {
            v.subset(&(0..cfg.val_size).collect::<Vec<_>>())?
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
        Some(k) if k < train.len() => {
            let n = train.len();
            train.subset(&(0..k).map(|i| i * n / k).collect::<Vec<_>>())?
        }
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
