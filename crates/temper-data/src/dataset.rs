//! The in-memory data set and the batches made from it.
//!
//! Images are kept as `u8` in `(N, C, H, W)` order: four times smaller than f32, so CIFAR-10
//! fits in 150 MB, and exactly what the file formats store. Conversion to f32 in `[0, 1]`
//! happens per batch, on the target device.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use temper_core::seed::Rng;

/// Anything the [`Loader`](crate::Loader) can draw samples from: an in-memory [`Dataset`] or
/// an [`ImageFolder`](crate::ImageFolder) decoded on the fly.
///
/// Every sample has the same shape, so batches are plain `(N, C, H, W)` arrays.
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape `[C, H, W]` of every sample.
    fn shape(&self) -> [usize; 3];

    /// Class names; label `i` is `classes()[i]`.
    fn classes(&self) -> &[String];

    /// Label of sample `index` (`index < len()`).
    fn label(&self, index: usize) -> u32;

    /// Writes sample `index` (`C*H*W` bytes, CHW order) into `out`. `rng` is the sample's own
    /// generator, for sources that draw a random crop while decoding.
    fn read_into(&self, index: usize, rng: &mut Rng, out: &mut [u8]) -> Result<()>;
}

/// Mean and standard deviation of one channel, in `[0, 1]` pixel units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelStats {
    /// Mean pixel value.
    pub mean: f64,
    /// Population standard deviation of the pixel values.
    pub std: f64,
}

/// A labelled image data set held in memory as `u8` `(N, C, H, W)`.
///
/// ```
/// use temper_data::Dataset;
/// let ds = Dataset::new("toy", [1, 2, 2], vec![0, 255, 0, 255, 10, 10, 10, 10], vec![1, 0],
///     vec!["a".into(), "b".into()])?;
/// assert_eq!(ds.len(), 2);
/// assert_eq!(ds.class_counts(), vec![1, 1]);
/// let b = ds.batch(&[0, 1], &candle_core::Device::Cpu)?;
/// assert_eq!(b.images.dims(), &[2, 1, 2, 2]);
/// # Ok::<(), temper_data::Error>(())
/// ```
#[derive(Clone)]
pub struct Dataset {
    name: String,
    shape: [usize; 3],
    pixels: Vec<u8>,
    labels: Vec<u32>,
    classes: Vec<String>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pixel buffer is left out: printing megabytes of numbers helps nobody.
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("shape", &self.shape)
            .field("classes", &self.classes)
            .finish()
    }
}

impl Dataset {
    /// Builds a data set, checking that `pixels` holds `labels.len()` images of `shape` and
    /// that every label names one of `classes`.
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        pixels: Vec<u8>,
        labels: Vec<u32>,
        classes: Vec<String>,
    ) -> Result<Self> {
        let per = shape.iter().product::<usize>();
        if per == 0 {
            return Err(Error::param("shape", format!("{shape:?} has a zero dimension")));
        }
        if classes.is_empty() {
            return Err(Error::param("classes", "a data set needs at least one class"));
        }
        if Some(pixels.len()) != labels.len().checked_mul(per) {
            return Err(Error::param(
                "pixels",
                format!(
                    "{} bytes do not hold {} images of {shape:?} ({per} bytes each)",
                    pixels.len(),
                    labels.len()
                ),
            ));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes.len())
        {
            return Err(Error::param(
                "labels",
                format!("label {l} of sample {i} is not below {} classes", classes.len()),
            ));
        }
        Ok(Dataset {
            name: name.into(),
            shape,
            pixels,
            labels,
            classes,
        })
    }

    /// The data set's name, e.g. `mnist10k/train`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the data set (the name appears in messages and grids only).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape `[C, H, W]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Class names; label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every label, in sample order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The whole pixel buffer, `(N, C, H, W)` `u8`.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixels of sample `index` in CHW order, or `None` past the end.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let per = self.sample_bytes();
        self.pixels
            .get(index.checked_mul(per)?..(index + 1).checked_mul(per)?)
    }

    /// Bytes per image, `C*H*W`.
    pub fn sample_bytes(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of samples of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Per-channel mean and standard deviation over every pixel, in `[0, 1]` units (the
    /// numbers a `Normalization` layer wants).
    pub fn channel_stats(&self) -> Vec<ChannelStats> {
        let [c, h, w] = self.shape;
        let plane = h * w;
        // Histograms keep the sums exact and the loop free of floating point.
        let mut hist = vec![[0u64; 256]; c];
        for img in self.pixels.chunks_exact(c * plane) {
            for (ch, hist) in hist.iter_mut().enumerate() {
                for &v in &img[ch * plane..(ch + 1) * plane] {
                    hist[v as usize] += 1;
                }
            }
        }
        hist.iter()
            .map(|h| {
                let n: u64 = h.iter().sum();
                if n == 0 {
                    return ChannelStats { mean: 0.0, std: 0.0 };
                }
                let (s, s2) = h.iter().enumerate().fold((0f64, 0f64), |(s, s2), (v, &k)| {
                    let x = v as f64 / 255.0;
                    (s + x * k as f64, s2 + x * x * k as f64)
                });
                let mean = s / n as f64;
                let var = (s2 / n as f64 - mean * mean).max(0.0);
                ChannelStats {
                    mean,
                    std: var.sqrt(),
                }
            })
            .collect()
    }

    /// A new data set holding the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let hb = self.host_batch(indices)?;
        Ok(Dataset {
            name: self.name.clone(),
            shape: self.shape,
            pixels: hb.pixels,
            labels: hb.labels,
            classes: self.classes.clone(),
        })
    }

    /// Copies the samples at `indices` into a host batch.
    pub fn host_batch(&self, indices: &[usize]) -> Result<HostBatch> {
        let per = self.sample_bytes();
        let mut pixels = Vec::with_capacity(indices.len() * per);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let img = self.image(i).ok_or_else(|| {
                Error::param(
                    "indices",
                    format!(
                        "index {i} is past the end of '{}' ({} samples)",
                        self.name,
                        self.len()
                    ),
                )
            })?;
            pixels.extend_from_slice(img);
            labels.push(self.labels[i]);
        }
        let [c, h, w] = self.shape;
        Ok(HostBatch {
            pixels,
            labels,
            shape: [indices.len(), c, h, w],
            indices: indices.to_vec(),
            epoch: 0,
            index: 0,
        })
    }

    /// The samples at `indices` as f32 `[0, 1]` images and u32 labels on `device`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        self.host_batch(indices)?.to_device(device)
    }

    /// The samples at `indices`, in that order, in batches of at most `batch_size` on
    /// `device`: the one batching path of every evaluation loop (clean accuracy, attacks,
    /// sweeps, masking checks, validation), so that every command cuts the same data into the
    /// same batches and seeded attacks draw the same numbers. Each item is the indices of the
    /// batch and the batch. Callers validate `batch_size`; 0 is read as 1 rather than panic.
    pub fn eval_batches<'a>(
        &'a self,
        indices: &'a [usize],
        batch_size: usize,
        device: &'a Device,
    ) -> impl Iterator<Item = Result<(&'a [usize], Batch)>> + 'a {
        indices
            .chunks(batch_size.max(1))
            .map(move |chunk| Ok((chunk, self.batch(chunk, device)?)))
    }

    /// Every sample, in order, as [`Dataset::eval_batches`] gives them.
    pub fn all_indices(&self) -> Vec<usize> {
        (0..self.len()).collect()
    }

    /// The whole data set as one batch on `device` (for evaluating small sets in one go).
    pub fn to_batch(&self, device: &Device) -> Result<Batch> {
        HostBatch {
            pixels: self.pixels.clone(),
            labels: self.labels.clone(),
            shape: [self.len(), self.shape[0], self.shape[1], self.shape[2]],
            indices: (0..self.len()).collect(),
            epoch: 0,
            index: 0,
        }
        .to_device(device)
    }
}

impl Source for Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> u32 {
        self.labels.get(index).copied().unwrap_or(0)
    }

    fn read_into(&self, index: usize, _rng: &mut Rng, out: &mut [u8]) -> Result<()> {
        let img = self
            .image(index)
            .ok_or_else(|| Error::param("index", format!("{index} is past the end of '{}'", self.name)))?;
        if out.len() != img.len() {
            return Err(Error::param(
                "out",
                format!("buffer of {} bytes for an image of {}", out.len(), img.len()),
            ));
        }
        out.copy_from_slice(img);
        Ok(())
    }
}

/// A batch still on the host: `u8` pixels, ready to be moved to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBatch {
    /// Pixels, `(N, C, H, W)` `u8`.
    pub pixels: Vec<u8>,
    /// Labels, one per image.
    pub labels: Vec<u32>,
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
    /// Index in the source of each sample.
    pub indices: Vec<usize>,
    /// Epoch this batch belongs to (0 outside a loader).
    pub epoch: u64,
    /// Position of this batch within its epoch (0 outside a loader).
    pub index: usize,
}

impl HostBatch {
    /// Moves the batch to `device`: images as f32 in `[0, 1]`, labels as u32.
    ///
    /// Values are `x / 255` computed in f32, bit for bit what torchvision's `ToTensor` gives.
    /// On the CPU that is one pass through a lookup table; on an accelerator the bytes travel
    /// as `u8` (a quarter of the traffic) and are divided there.
    pub fn to_device(self, device: &Device) -> Result<Batch> {
        let n = self.labels.len();
        let images = if device.is_cpu() {
            let lut: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
            let data: Vec<f32> = self.pixels.iter().map(|&v| lut[usize::from(v)]).collect();
            Tensor::from_vec(data, self.shape.to_vec(), device)?
        } else {
            Tensor::from_vec(self.pixels, self.shape.to_vec(), device)?
                .to_dtype(DType::F32)?
                .broadcast_div(&Tensor::new(255f32, device)?)?
        };
        let labels = Tensor::from_vec(self.labels, n, device)?;
        Ok(Batch {
            images,
            labels,
            indices: self.indices,
            epoch: self.epoch,
            index: self.index,
        })
    }
}

/// A batch on a device: what a training or evaluation step consumes.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images, f32 `(N, C, H, W)` in `[0, 1]`.
    pub images: Tensor,
    /// Labels, u32 `(N,)`.
    pub labels: Tensor,
    /// Index in the source of each sample.
    pub indices: Vec<usize>,
    /// Epoch this batch belongs to.
    pub epoch: u64,
    /// Position of this batch within its epoch.
    pub index: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Dataset {
        Dataset::new(
            "toy",
            [1, 1, 2],
            vec![0, 255, 51, 102, 7, 8],
            vec![0, 1, 1],
            vec!["a".into(), "b".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn new_rejects_inconsistent_parts() {
        let c = || vec!["a".to_string()];
        assert!(Dataset::new("x", [1, 1, 2], vec![0; 3], vec![0], c()).is_err());
        assert!(Dataset::new("x", [1, 1, 2], vec![0; 2], vec![1], c()).is_err());
        assert!(Dataset::new("x", [0, 1, 2], vec![], vec![], c()).is_err());
        assert!(Dataset::new("x", [1, 1, 2], vec![0; 2], vec![0], c()).is_ok());
    }

    #[test]
    fn batch_is_scaled_to_unit_interval() -> Result<()> {
        let b = toy().batch(&[1, 0], &Device::Cpu)?;
        assert_eq!(b.images.dims(), &[2, 1, 1, 2]);
        let v: Vec<f32> = b.images.flatten_all()?.to_vec1()?;
        assert_eq!(v, vec![51.0 / 255.0, 102.0 / 255.0, 0.0, 1.0]);
        assert_eq!(b.labels.to_vec1::<u32>()?, vec![1, 0]);
        assert_eq!(b.indices, vec![1, 0]);
        Ok(())
    }

    #[test]
    fn stats_counts_and_subset() -> Result<()> {
        let ds = toy();
        assert_eq!(ds.class_counts(), vec![1, 2]);
        let s = ds.channel_stats();
        let px = [0.0, 1.0, 0.2, 0.4, 7.0 / 255.0, 8.0 / 255.0];
        let mean = px.iter().sum::<f64>() / 6.0;
        let std = (px.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 6.0).sqrt();
        assert!((s[0].mean - mean).abs() < 1e-12 && (s[0].std - std).abs() < 1e-12);
        let sub = ds.subset(&[2])?;
        assert_eq!(sub.pixels(), &[7, 8]);
        assert!(ds.subset(&[3]).is_err());
        Ok(())
    }
}
