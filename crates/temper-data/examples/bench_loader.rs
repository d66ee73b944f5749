//! Throughput of the image-folder pipeline on the CIFAR-10 JPEG folder: decode + augment +
//! batch through the [`Loader`], against plain JPEG decoding of the same files in the same
//! run, so the ratio shows what the pipeline costs on top of the decoder.
//!
//! ```text
//! cargo run --release -p temper-data --example bench_loader -- /work/cifar10/train \
//!     [--limit N] [--batch 256] [--repeat 2]
//! ```
//!
//! Prints one line per measurement, then one JSON line. Exits 0 with a "skipped" message when
//! the folder is absent, so it can run unconditionally in a benchmark suite.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use rayon::prelude::*;
use temper_data::augment::{AugmentParams, PadMode};
use temper_data::{ImageFolderParams, Loader, LoaderParams, Source};

struct Args {
    root: Option<PathBuf>,
    limit: Option<usize>,
    batch: usize,
    repeat: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        root: None,
        limit: None,
        batch: 256,
        repeat: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            let v = it.next().ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?;
            Ok(v.parse()?)
        };
        match a.as_str() {
            "--limit" => args.limit = Some(value("--limit")?),
            "--batch" => args.batch = value("--batch")?,
            "--repeat" => args.repeat = value("--repeat")?.max(1),
            _ if a.starts_with("--") => anyhow::bail!("unknown option {a}"),
            _ => args.root = Some(PathBuf::from(a)),
        }
    }
    Ok(args)
}

/// Runs `f` `repeat` times and returns the best images per second.
fn best_of(repeat: usize, n: usize, mut f: impl FnMut() -> anyhow::Result<usize>) -> anyhow::Result<f64> {
    let mut best = 0f64;
    for _ in 0..repeat {
        let t = Instant::now();
        let done = f()?;
        anyhow::ensure!(done == n, "processed {done} images, expected {n}");
        best = best.max(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/work/cifar10/train"));
    if !root.is_dir() {
        println!(
            "bench_loader: skipped: '{}' is not a directory (extract cifar10-jpeg-train.tar.gz and pass its train/ folder)",
            root.display()
        );
        println!(
            "{}",
            serde_json::json!({"bench": "loader", "skipped": true, "root": root})
        );
        return Ok(());
    }

    let folder = ImageFolderParams::new(&root).progress(false).check()?;
    let folder = match args.limit {
        // Evenly spaced samples, so a limited run still covers every class.
        Some(l) if l < folder.len() => {
            let step = folder.len() as f64 / l as f64;
            let idx: Vec<usize> = (0..l).map(|i| (i as f64 * step) as usize).collect();
            folder.subset(&idx)
        }
        _ => folder,
    };
    let n = folder.len();
    let threads = rayon::current_num_threads();
    println!(
        "{} images in {} classes from {}, {threads} threads, batch {}, best of {}",
        n,
        folder.classes().len(),
        root.display(),
        args.batch,
        args.repeat
    );

    // Read every file once so that both measurements below time decoding, not the disk.
    let bytes: u64 = folder
        .files()
        .par_iter()
        .map(|(p, _)| std::fs::read(p).map(|b| b.len() as u64))
        .sum::<std::io::Result<u64>>()?;
    println!("page cache warmed: {:.1} MB of JPEG", bytes as f64 / 1e6);

    // Reference: plain JPEG decoding to RGB, in parallel, nothing else.
    let decode_ips = best_of(args.repeat, n, || {
        let ok = folder
            .files()
            .par_iter()
            .map(|(p, _)| -> anyhow::Result<usize> {
                let b = std::fs::read(p)?;
                let img = image::load_from_memory(&b)?.into_rgb8();
                Ok(usize::from(img.width() > 0))
            })
            .sum::<anyhow::Result<usize>>()?;
        Ok(ok)
    })?;
    println!("plain JPEG decode:                      {decode_ips:>9.0} images/s");

    // The full streaming pipeline: decode + random crop (reflect pad 4) + flip + batch, in
    // the loader's prefetch thread, each batch handed over as an f32 tensor.
    let aug = || {
        AugmentParams::new()
            .random_crop(32, 4, PadMode::Reflect)
            .hflip(0.5)
            .check(folder.shape())
    };
    let device = Device::Cpu;
    let source: Arc<dyn Source> = Arc::new(folder.clone());
    let loader = Loader::new(
        Arc::clone(&source),
        LoaderParams::new(args.batch).seed(0).check()?,
    )?
    .with_augment(aug()?)?;
    let mut epoch = 0;
    let pipeline_ips = best_of(args.repeat, n, || {
        let mut seen = 0;
        for b in loader.epoch(epoch, &device) {
            seen += b?.images.dims()[0];
        }
        epoch += 1;
        Ok(seen)
    })?;
    println!("decode + augment + batch (streaming):   {pipeline_ips:>9.0} images/s");

    // The usual way for CIFAR: decode once into memory, then augment + batch every epoch.
    let t = Instant::now();
    let ds = folder.decode_all()?;
    let decode_all_ips = n as f64 / t.elapsed().as_secs_f64();
    println!("decode into memory (once):              {decode_all_ips:>9.0} images/s");
    let mem =
        Loader::new(Arc::new(ds), LoaderParams::new(args.batch).seed(0).check()?)?.with_augment(aug()?)?;
    let mut epoch = 0;
    let memory_ips = best_of(args.repeat, n, || {
        let mut seen = 0;
        for b in mem.epoch(epoch, &device) {
            seen += b?.images.dims()[0];
        }
        epoch += 1;
        Ok(seen)
    })?;
    println!("augment + batch from memory (per epoch): {memory_ips:>8.0} images/s");

    let ratio = pipeline_ips / decode_ips;
    println!("ratio streaming pipeline / plain decode: {ratio:.3}");
    println!(
        "{}",
        serde_json::json!({
            "bench": "loader",
            "skipped": false,
            "root": root,
            "images": n,
            "threads": threads,
            "batch": args.batch,
            "decode_only_images_per_s": decode_ips.round(),
            "pipeline_images_per_s": pipeline_ips.round(),
            "pipeline_over_decode": (ratio * 1000.0).round() / 1000.0,
            "decode_into_memory_images_per_s": decode_all_ips.round(),
            "in_memory_augment_batch_images_per_s": memory_ips.round(),
        })
    );
    Ok(())
}
