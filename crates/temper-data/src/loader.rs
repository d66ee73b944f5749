//! The loader: seeded per-epoch shuffling, batching, augmentation and background prefetch.
//!
//! Reproducibility is the design constraint. The order of an epoch is a pure function of
//! `(seed, epoch)`, and each sample's random augmentation is a pure function of
//! `(seed, epoch, position in the epoch)`, so:
//! - the same seed gives the same batches on every run and machine, whatever the number of
//!   threads;
//! - a run resumed at epoch `e`, batch `b` ([`Loader::epoch_from`]) sees exactly the batches
//!   the uninterrupted run would have seen.
//!
//! A background thread builds the next batches (reading, decoding, augmenting, in parallel
//! with rayon) while the caller computes on the current one; a bounded channel keeps at most
//! `prefetch` batches waiting.
//!
//! ```
//! use std::sync::Arc;
//! use temper_data::{Loader, LoaderParams, augment::{AugmentParams, PadMode}};
//! let train = temper_data::bundled::mnist10k(temper_data::Split::Train)?;
//! let aug = AugmentParams::new().random_crop(28, 2, PadMode::Zero).check(train.shape())?;
//! let loader = Loader::new(Arc::new(train), LoaderParams::new(256).seed(7).check()?)?
//!     .with_augment(aug)?;
//! let dev = candle_core::Device::Cpu;
//! for batch in loader.epoch(0, &dev).take(2) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims(), &[256, 1, 28, 28]);
//! }
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::augment::Augment;
use crate::dataset::{Batch, HostBatch, Source};
use crate::random::{item_rng, shuffle};
use crate::{Error, Result};
use candle_core::Device;
use rayon::prelude::*;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use temper_core::seed::rng_with;

/// Unchecked loader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderParams {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle the samples every epoch (off for evaluation).
    pub shuffle: bool,
    /// Drop the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the shuffles and augmentations.
    pub seed: u64,
    /// Batches prepared ahead by the background thread; 0 prepares each batch on the
    /// caller's thread when it is asked for.
    pub prefetch: usize,
}

impl LoaderParams {
    /// Training defaults: shuffled, last batch kept, seed 0, two batches prefetched.
    pub fn new(batch_size: usize) -> Self {
        LoaderParams {
            batch_size,
            shuffle: true,
            drop_last: false,
            seed: 0,
            prefetch: 2,
        }
    }

    /// Evaluation defaults: in order, last batch kept, two batches prefetched.
    pub fn eval(batch_size: usize) -> Self {
        LoaderParams {
            shuffle: false,
            ..Self::new(batch_size)
        }
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Turns shuffling on or off.
    pub fn shuffle(mut self, on: bool) -> Self {
        self.shuffle = on;
        self
    }

    /// Sets `drop_last`.
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }

    /// Sets the number of batches prepared ahead (0: no background thread).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Validates the settings.
    pub fn check(self) -> Result<ValidLoaderParams> {
        if self.batch_size == 0 {
            return Err(Error::param("batch-size", "must be at least 1"));
        }
        if self.prefetch > 1024 {
            return Err(Error::param(
                "prefetch",
                format!(
                    "{} batches ahead would hold too much memory (at most 1024)",
                    self.prefetch
                ),
            ));
        }
        Ok(ValidLoaderParams(self))
    }
}

/// Loader settings that passed [`LoaderParams::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidLoaderParams(LoaderParams);

impl ValidLoaderParams {
    /// The checked settings.
    pub fn get(&self) -> &LoaderParams {
        &self.0
    }
}

/// Serves a [`Source`] as batches, epoch after epoch.
#[derive(Clone)]
pub struct Loader {
    source: Arc<dyn Source>,
    params: LoaderParams,
    augment: Option<Arc<Augment>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.source.len())
            .field("shape", &self.source.shape())
            .field("params", &self.params)
            .field("augment", &self.augment)
            .finish()
    }
}

impl Loader {
    /// A loader over `source` with checked settings and no augmentation.
    pub fn new(source: Arc<dyn Source>, params: ValidLoaderParams) -> Result<Self> {
        if source.shape().contains(&0) {
            return Err(Error::param(
                "source",
                format!("sample shape {:?} has a zero dimension", source.shape()),
            ));
        }
        Ok(Loader {
            source,
            params: params.0,
            augment: None,
        })
    }

    /// Adds an augmentation pipeline, which must accept the source's sample shape.
    pub fn with_augment(mut self, augment: Augment) -> Result<Self> {
        if augment.input_shape() != self.source.shape() {
            return Err(Error::param(
                "augment",
                format!(
                    "built for {:?} images but the source yields {:?}",
                    augment.input_shape(),
                    self.source.shape()
                ),
            ));
        }
        self.augment = Some(Arc::new(augment));
        Ok(self)
    }

    /// The settings.
    pub fn params(&self) -> &LoaderParams {
        &self.params
    }

    /// The source served.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// Number of samples in the source.
    pub fn num_samples(&self) -> usize {
        self.source.len()
    }

    /// Shape `[C, H, W]` of the samples in the batches (after augmentation).
    pub fn sample_shape(&self) -> [usize; 3] {
        match &self.augment {
            Some(a) => a.output_shape(),
            None => self.source.shape(),
        }
    }

    /// Number of batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.source.len();
        let b = self.params.batch_size;
        if self.params.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// True when an epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sample order of `epoch`: a pure function of the seed and the epoch.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.source.len()).collect();
        if self.params.shuffle {
            let mut rng = rng_with(self.params.seed, &format!("temper-data/order/{epoch}"));
            shuffle(&mut rng, &mut order);
        }
        order
    }

    /// The batches of `epoch` on `device`.
    pub fn epoch(&self, epoch: u64, device: &Device) -> Epoch {
        self.epoch_from(epoch, 0, device)
    }

    /// The batches of `epoch` from batch `first` on, as a resumed run needs them.
    ///
    /// For the CPU the prefetch thread also builds the f32 tensors, so the caller's thread
    /// only computes; for an accelerator the upload happens on the caller's thread, where the
    /// device context lives.
    pub fn epoch_from(&self, epoch: u64, first: usize, device: &Device) -> Epoch {
        let inner = if device.is_cpu() {
            let dev = device.clone();
            EpochInner::Ready(self.stream(epoch, first, move |hb| hb.to_device(&dev)))
        } else {
            EpochInner::Upload(self.stream(epoch, first, Ok), device.clone())
        };
        Epoch { inner }
    }

    /// The batches of `epoch` from batch `first` on, left on the host as `u8`.
    pub fn host_epoch_from(&self, epoch: u64, first: usize) -> HostEpoch {
        HostEpoch(self.stream(epoch, first, Ok))
    }

    /// Starts producing the batches of `epoch` from `first` on, each passed through `finish`
    /// by the producer.
    fn stream<T: Send + 'static>(
        &self,
        epoch: u64,
        first: usize,
        finish: impl Fn(HostBatch) -> Result<T> + Send + Sync + 'static,
    ) -> Stream<T> {
        let job = Arc::new(Job {
            source: Arc::clone(&self.source),
            augment: self.augment.clone(),
            order: self.order(epoch),
            batch_size: self.params.batch_size,
            seed: self.params.seed,
            epoch,
            shape: self.sample_shape(),
        });
        let total = self.len();
        let first = first.min(total);
        let finish: Finish<T> = Arc::new(finish);
        let mut stream = Stream {
            job,
            finish,
            next: first,
            total,
            rx: None,
            handle: None,
            failed: false,
        };
        if self.params.prefetch > 0 && first < total {
            let (tx, rx) = std::sync::mpsc::sync_channel(self.params.prefetch);
            let job = Arc::clone(&stream.job);
            let finish = Arc::clone(&stream.finish);
            let spawned = std::thread::Builder::new()
                .name("temper-data-prefetch".into())
                .spawn(move || produce(&job, &*finish, first, total, &tx));
            // Without a thread the epoch still works, one batch at a time on the caller's.
            if let Ok(handle) = spawned {
                stream.rx = Some(rx);
                stream.handle = Some(handle);
            }
        }
        stream
    }
}

/// Everything needed to build the batches of one epoch, shared with the prefetch thread.
struct Job {
    source: Arc<dyn Source>,
    augment: Option<Arc<Augment>>,
    order: Vec<usize>,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    shape: [usize; 3],
}

impl Job {
    /// Builds batch `b` of the epoch.
    fn batch(&self, b: usize) -> Result<HostBatch> {
        let start = b * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        let indices = self.order.get(start..end).unwrap_or_default();
        let per: usize = self.shape.iter().product();
        let in_per: usize = self.source.shape().iter().product();
        let mut pixels = vec![0u8; per * indices.len()];
        pixels
            .par_chunks_mut(per)
            .zip(indices.par_iter())
            .enumerate()
            .try_for_each(|(k, (out, &i))| -> Result<()> {
                let mut rng = item_rng(self.seed, self.epoch, start + k);
                match &self.augment {
                    None => self.source.read_into(i, &mut rng, out),
                    Some(aug) => {
                        let mut raw = vec![0u8; in_per];
                        self.source.read_into(i, &mut rng, &mut raw)?;
                        out.copy_from_slice(&aug.apply(&raw, &mut rng));
                        Ok(())
                    }
                }
            })?;
        let [c, h, w] = self.shape;
        Ok(HostBatch {
            pixels,
            labels: indices.iter().map(|&i| self.source.label(i)).collect(),
            shape: [indices.len(), c, h, w],
            indices: indices.to_vec(),
            epoch: self.epoch,
            index: b,
        })
    }
}

/// What the producer does to each host batch before handing it over.
type Finish<T> = Arc<dyn Fn(HostBatch) -> Result<T> + Send + Sync>;

/// The prefetch thread's loop: build batches in order and hand them over, stopping at the
/// first error or as soon as the consumer has gone.
fn produce<T>(
    job: &Job,
    finish: &(dyn Fn(HostBatch) -> Result<T> + Send + Sync),
    first: usize,
    total: usize,
    tx: &SyncSender<Result<T>>,
) {
    for b in first..total {
        let item = job.batch(b).and_then(finish);
        let failed = item.is_err();
        if tx.send(item).is_err() || failed {
            return;
        }
    }
}

/// The batches of one epoch from `next` to `total`, from the prefetch thread or, without
/// one, built on demand.
struct Stream<T> {
    job: Arc<Job>,
    finish: Finish<T>,
    next: usize,
    total: usize,
    rx: Option<Receiver<Result<T>>>,
    handle: Option<JoinHandle<()>>,
    failed: bool,
}

impl<T> Iterator for Stream<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.total {
            return None;
        }
        let item = match &self.rx {
            None => self.job.batch(self.next).and_then(|hb| (self.finish)(hb)),
            Some(rx) => rx.recv().unwrap_or_else(|_| {
                Err(Error::Worker {
                    reason: format!("it stopped before batch {} of {}", self.next, self.total),
                })
            }),
        };
        self.failed = item.is_err();
        self.next += 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed { 0 } else { self.total - self.next };
        (left, Some(left))
    }
}

impl<T> Drop for Stream<T> {
    fn drop(&mut self) {
        // Closing the channel first unblocks a producer waiting to send, so the join below
        // cannot hang.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The batches of one epoch on the host; an iterator of `Result<HostBatch>`.
///
/// Dropping it early stops the prefetch thread.
pub struct HostEpoch(Stream<HostBatch>);

impl Iterator for HostEpoch {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

/// The batches of one epoch on a device; an iterator of `Result<Batch>`.
///
/// Dropping it early stops the prefetch thread.
pub struct Epoch {
    inner: EpochInner,
}

/// Where the conversion to tensors happens.
enum EpochInner {
    /// In the producer (CPU tensors).
    Ready(Stream<Batch>),
    /// On the caller's thread, which owns the accelerator context.
    Upload(Stream<HostBatch>, Device),
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            EpochInner::Ready(s) => s.next(),
            EpochInner::Upload(s, dev) => s.next().map(|r| r.and_then(|hb| hb.to_device(dev))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            EpochInner::Ready(s) => s.size_hint(),
            EpochInner::Upload(s, _) => s.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::{AugmentParams, PadMode};
    use crate::Dataset;

    fn counting(n: usize) -> Arc<Dataset> {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i / 4) as u8).collect();
        let labels = (0..n as u32).map(|i| i % 3).collect();
        let classes = vec!["a".into(), "b".into(), "c".into()];
        Arc::new(Dataset::new("count", [1, 2, 2], pixels, labels, classes).unwrap_or_else(|e| panic!("{e}")))
    }

    fn collect(l: &Loader, epoch: u64) -> Result<Vec<HostBatch>> {
        l.host_epoch_from(epoch, 0).collect()
    }

    #[test]
    fn covers_every_sample_once_with_partial_last_batch() -> Result<()> {
        let l = Loader::new(counting(10), LoaderParams::new(4).seed(1).check()?)?;
        assert_eq!(l.len(), 3);
        let batches = collect(&l, 0)?;
        assert_eq!(
            batches.iter().map(|b| b.labels.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(seen, l.order(0));
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        for b in &batches {
            // Each image's pixels are its index, so the pixels prove the right image came.
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(&b.pixels[k * 4..k * 4 + 4], &[i as u8; 4]);
                assert_eq!(b.labels[k], (i % 3) as u32);
            }
        }
        Ok(())
    }

    #[test]
    fn drop_last_drops_the_partial_batch() -> Result<()> {
        let l = Loader::new(counting(10), LoaderParams::new(4).drop_last(true).check()?)?;
        assert_eq!(l.len(), 2);
        assert_eq!(collect(&l, 0)?.len(), 2);
        Ok(())
    }

    #[test]
    fn order_depends_only_on_seed_and_epoch() -> Result<()> {
        let a = Loader::new(counting(50), LoaderParams::new(8).seed(5).check()?)?;
        let b = Loader::new(counting(50), LoaderParams::new(8).seed(5).prefetch(0).check()?)?;
        assert_eq!(collect(&a, 3)?, collect(&b, 3)?);
        assert_ne!(a.order(3), a.order(4));
        let c = Loader::new(counting(50), LoaderParams::new(8).seed(6).check()?)?;
        assert_ne!(a.order(3), c.order(3));
        let eval = Loader::new(counting(50), LoaderParams::eval(8).check()?)?;
        assert_eq!(eval.order(9), (0..50).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn resumed_epoch_matches_uninterrupted_one_with_augmentation() -> Result<()> {
        let aug = || {
            AugmentParams::new()
                .random_crop(2, 1, PadMode::Zero)
                .hflip(0.5)
                .check([1, 2, 2])
        };
        let l = Loader::new(counting(40), LoaderParams::new(6).seed(2).check()?)?.with_augment(aug()?)?;
        let full = collect(&l, 1)?;
        let resumed: Vec<HostBatch> = l.host_epoch_from(1, 4).collect::<Result<_>>()?;
        assert_eq!(&full[4..], resumed.as_slice());
        // A fresh loader with the same settings repeats the augmentation exactly.
        let again = Loader::new(counting(40), LoaderParams::new(6).seed(2).prefetch(0).check()?)?
            .with_augment(aug()?)?;
        assert_eq!(collect(&again, 1)?, full);
        Ok(())
    }

    #[test]
    fn dropping_an_epoch_early_stops_the_thread() -> Result<()> {
        let l = Loader::new(counting(100), LoaderParams::new(1).prefetch(1).check()?)?;
        let mut e = l.host_epoch_from(0, 0);
        assert!(e.next().is_some());
        drop(e);
        Ok(())
    }

    #[test]
    fn rejects_bad_settings() -> Result<()> {
        assert!(LoaderParams::new(0).check().is_err());
        assert!(LoaderParams::new(1).prefetch(5000).check().is_err());
        let aug = AugmentParams::new().hflip(0.5).check([3, 2, 2])?;
        let l = Loader::new(counting(4), LoaderParams::new(1).check()?)?;
        assert!(l.with_augment(aug).is_err());
        Ok(())
    }

    #[test]
    fn device_batches_are_unit_floats() -> Result<()> {
        let l = Loader::new(counting(5), LoaderParams::eval(5).check()?)?;
        let b = l
            .epoch(0, &Device::Cpu)
            .next()
            .ok_or_else(|| Error::param("t", "no batch"))??;
        assert_eq!(b.images.dims(), &[5, 1, 2, 2]);
        let v: Vec<f32> = b.images.flatten_all()?.to_vec1()?;
        assert_eq!(v[4 * 4], 4.0 / 255.0);
        Ok(())
    }
}
