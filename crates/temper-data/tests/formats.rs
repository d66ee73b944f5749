//! Each reader on small files written here, and the bundled set.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use temper_data::{cifar, FolderTransform, ImageFolderParams, Loader, LoaderParams, Source, Split};

type R = anyhow::Result<()>;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(p, bytes)?;
    Ok(())
}

fn gz(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

#[test]
fn bundled_mnist10k_has_8000_and_2000_digits_of_every_class() -> R {
    let train = temper_data::load("mnist10k", None, Split::Train)?;
    let test = temper_data::load("MNIST10K", None, Split::Test)?;
    assert_eq!((train.len(), test.len()), (8000, 2000));
    for ds in [&train, &test] {
        assert_eq!(ds.shape(), [1, 28, 28]);
        let counts = ds.class_counts();
        assert_eq!(counts.iter().sum::<usize>(), ds.len());
        assert!(counts.iter().all(|&c| c > ds.len() / 20), "{counts:?}");
        // Real digits: mostly black background with bright strokes.
        let s = ds.channel_stats()[0];
        assert!(
            (0.10..0.16).contains(&s.mean) && (0.28..0.34).contains(&s.std),
            "{s:?}"
        );
    }
    Ok(())
}

fn idx_file(magic_dims: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, magic_dims];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[test]
fn mnist_raw_gz_and_torchvision_layouts_agree() -> R {
    let pixels: Vec<u8> = (0..3 * 2 * 2).map(|i| i as u8 * 10).collect();
    let images = idx_file(3, &[3, 2, 2], &pixels);
    let labels = idx_file(1, &[3], &[4, 0, 9]);
    let raw = tempfile::tempdir()?;
    write(raw.path(), "t10k-images-idx3-ubyte", &images)?;
    write(raw.path(), "t10k-labels-idx1-ubyte", &labels)?;
    let zipped = tempfile::tempdir()?;
    write(
        zipped.path(),
        "MNIST/raw/t10k-images-idx3-ubyte.gz",
        &gz(&images)?,
    )?;
    write(
        zipped.path(),
        "MNIST/raw/t10k-labels-idx1-ubyte.gz",
        &gz(&labels)?,
    )?;
    let a = temper_data::load("mnist", Some(raw.path()), Split::Test)?;
    let b = temper_data::load("mnist", Some(zipped.path()), Split::Test)?;
    assert_eq!(a.pixels(), pixels.as_slice());
    assert_eq!(a.labels(), &[4, 0, 9]);
    assert_eq!((a.pixels(), a.labels()), (b.pixels(), b.labels()));
    assert_eq!(a.shape(), [1, 2, 2]);
    let f = temper_data::load("fashion-mnist", Some(raw.path()), Split::Test)?;
    assert_eq!(f.classes()[9], "ankle boot");
    Ok(())
}

/// A CIFAR record: label bytes, then an image whose red plane is `v`, green `v+1`, blue `v+2`.
fn record(labels: &[u8], v: u8) -> Vec<u8> {
    let mut r = labels.to_vec();
    for k in 0..3u8 {
        r.extend(std::iter::repeat_n(v.wrapping_add(k), 1024));
    }
    r
}

#[test]
fn cifar10_reads_five_batches_in_order() -> R {
    let dir = tempfile::tempdir()?;
    for b in 1..=5u8 {
        let mut f = record(&[b], b * 10);
        f.extend(record(&[b + 1], b * 10 + 5));
        write(
            dir.path(),
            &format!("cifar-10-batches-bin/data_batch_{b}.bin"),
            &f,
        )?;
    }
    write(
        dir.path(),
        "cifar-10-batches-bin/test_batch.bin",
        &record(&[9], 200),
    )?;
    let train = temper_data::load("cifar10", Some(dir.path()), Split::Train)?;
    assert_eq!(train.len(), 10);
    assert_eq!(train.labels(), &[1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
    let img = train.image(2).ok_or_else(|| anyhow::anyhow!("no image"))?;
    // Already CHW: red plane first.
    assert_eq!((img[0], img[1024], img[2048]), (20, 21, 22));
    let test = temper_data::load("cifar10", Some(dir.path()), Split::Test)?;
    assert_eq!((test.len(), test.classes()[9].as_str()), (1, "truck"));
    Ok(())
}

#[test]
fn cifar100_fine_and_coarse() -> R {
    let dir = tempfile::tempdir()?;
    let mut f = record(&[3, 42], 1);
    f.extend(record(&[19, 99], 2));
    write(dir.path(), "train.bin", &f)?;
    let fine = temper_data::load("cifar100", Some(dir.path()), Split::Train)?;
    let coarse = temper_data::load("cifar100-coarse", Some(dir.path()), Split::Train)?;
    assert_eq!((fine.labels(), fine.num_classes()), (&[42, 99][..], 100));
    assert_eq!((coarse.labels(), coarse.num_classes()), (&[3, 19][..], 20));
    assert_eq!(fine.pixels(), coarse.pixels());
    let _ = cifar::SHAPE;
    Ok(())
}

fn encode(img: &image::RgbImage, fmt: image::ImageFormat) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), fmt)?;
    Ok(out)
}

/// An image folder with classes `b_dog` and `a_cat` (so sorting matters), PNG and JPEG.
fn folder() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    // A red left half and a blue right half, to check channel order and orientation.
    let img = image::RgbImage::from_fn(8, 6, |x, _| {
        if x < 4 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    write(dir.path(), "b_dog/1.png", &encode(&img, image::ImageFormat::Png)?)?;
    write(
        dir.path(),
        "b_dog/sub/2.PNG",
        &encode(&img, image::ImageFormat::Png)?,
    )?;
    write(
        dir.path(),
        "a_cat/x.jpg",
        &encode(&img, image::ImageFormat::Jpeg)?,
    )?;
    write(dir.path(), "a_cat/readme.txt", b"ignored")?;
    Ok(dir)
}

#[test]
fn image_folder_sorts_classes_and_decodes_chw_rgb() -> R {
    let dir = folder()?;
    let ds = temper_data::load("image-folder", Some(dir.path()), Split::Train)?;
    assert_eq!(ds.classes(), &["a_cat".to_string(), "b_dog".to_string()]);
    assert_eq!(ds.labels(), &[0, 1, 1]);
    assert_eq!(ds.shape(), [3, 6, 8]);
    let png = ds.image(1).ok_or_else(|| anyhow::anyhow!("no image"))?;
    // Row 0: red then blue; planes R, G, B.
    assert_eq!(&png[..8], &[255, 255, 255, 255, 0, 0, 0, 0]);
    assert_eq!(&png[96..104], &[0, 0, 0, 0, 255, 255, 255, 255]);
    let jpg = ds.image(0).ok_or_else(|| anyhow::anyhow!("no image"))?;
    assert!(jpg[0] > 200 && jpg[96] < 60, "JPEG is lossy but not that lossy");
    assert!(temper_data::load("image-folder", Some(dir.path()), Split::Test).is_err());
    Ok(())
}

#[test]
fn image_folder_center_crop_and_split_layout() -> R {
    let root = tempfile::tempdir()?;
    let img = image::RgbImage::from_pixel(12, 8, image::Rgb([10, 20, 30]));
    for split in ["train", "val"] {
        for class in ["x", "y"] {
            write(
                root.path(),
                &format!("{split}/{class}/0.png"),
                &encode(&img, image::ImageFormat::Png)?,
            )?;
        }
    }
    let val = temper_data::image_folder_split(root.path(), Split::Test)?;
    assert!(val.ends_with("val"));
    let ds = ImageFolderParams::new(val)
        .transform(FolderTransform::CenterCrop { shorter: 6, crop: 4 })
        .progress(false)
        .check()?
        .decode_all()?;
    assert_eq!(ds.shape(), [3, 4, 4]);
    assert!(ds
        .pixels()
        .chunks(16)
        .zip([10u8, 20, 30].iter().cycle())
        .all(|(p, v)| p.iter().all(|x| x == v)));
    let grey = ImageFolderParams::new(root.path().join("train"))
        .channels(1)
        .progress(false)
        .check()?;
    assert_eq!(grey.shape(), [1, 8, 12]);
    Ok(())
}

#[test]
fn lazy_folder_draws_a_new_random_resized_crop_each_epoch() -> R {
    let dir = tempfile::tempdir()?;
    // A gradient, so different crops give different pixels.
    let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 0]));
    for i in 0..4 {
        write(
            dir.path(),
            &format!("c/{i}.png"),
            &encode(&img, image::ImageFormat::Png)?,
        )?;
    }
    let folder = ImageFolderParams::new(dir.path())
        .transform(FolderTransform::random_resized_crop(16))
        .progress(false)
        .check()?;
    assert_eq!(Source::shape(&folder), [3, 16, 16]);
    let loader = Loader::new(Arc::new(folder), LoaderParams::new(4).seed(3).check()?)?;
    let e0: Vec<_> = loader.host_epoch_from(0, 0).collect::<Result<_, _>>()?;
    let e0_again: Vec<_> = loader.host_epoch_from(0, 0).collect::<Result<_, _>>()?;
    let e1: Vec<_> = loader.host_epoch_from(1, 0).collect::<Result<_, _>>()?;
    assert_eq!(e0, e0_again);
    assert_ne!(e0[0].pixels, e1[0].pixels);
    Ok(())
}

/// Labels come from one class list: the train split's. A validation folder with a class the
/// train split lacks is an error naming it, and one with fewer classes keeps the train
/// split's numbering (its `cat` is label 0 of `[cat, dog]`, not label 0 of its own list).
#[test]
fn image_folder_splits_share_the_train_class_list() -> R {
    let root = tempfile::tempdir()?;
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]));
    let png = encode(&img, image::ImageFormat::Png)?;
    for path in [
        "train/cat/0.png",
        "train/dog/0.png",
        "val/bird/0.png",
        "val/cat/0.png",
    ] {
        write(root.path(), path, &png)?;
    }
    let train = temper_data::load("image-folder", Some(root.path()), Split::Train)?;
    assert_eq!(train.classes(), ["cat", "dog"]);
    match temper_data::load("image-folder", Some(root.path()), Split::Test) {
        Err(e @ temper_data::Error::ClassMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("bird") && msg.contains("train split"), "{msg}");
        }
        Err(other) => panic!("val/bird must be refused with ClassMismatch, got {other}"),
        Ok(_) => panic!("val/bird must be refused"),
    }
    std::fs::remove_dir_all(root.path().join("val/bird"))?;
    write(root.path(), "val/dog/0.png", &png)?;
    write(root.path(), "val/dog/1.png", &png)?;
    std::fs::remove_dir_all(root.path().join("val/cat"))?;
    let val = temper_data::load("image-folder", Some(root.path()), Split::Test)?;
    assert_eq!(val.classes(), ["cat", "dog"]);
    assert_eq!(
        val.labels(),
        [1, 1],
        "val's only class, dog, keeps the train label 1"
    );
    Ok(())
}
