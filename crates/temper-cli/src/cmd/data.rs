//! `temper data inspect`: what a data set holds, in numbers and in pictures.

use crate::fmt::thousands;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use temper_data::{Dataset, DatasetName, FolderTransform, ImageFolderParams, Split};

/// The `data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Print samples per split and per class and per-channel mean/std; with --grid, write a
    /// labelled grid of sample images.
    Inspect(InspectArgs),
}

/// Arguments of `temper data inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// mnist10k (bundled), mnist, fashion-mnist, cifar10, cifar100, cifar100-coarse or
    /// image-folder.
    #[arg(long, short = 'd')]
    pub dataset: String,
    /// Directory holding the data set's files (not needed for mnist10k).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Only this split: train or test (default: every split present).
    #[arg(long)]
    pub split: Option<String>,
    /// Write a PNG grid of labelled sample images (of --split, or the first split present).
    #[arg(long, value_name = "OUT.png")]
    pub grid: Option<PathBuf>,
    /// Image folders only: resize the shorter side to size/0.875 and cut the central
    /// size x size square (as for ImageNet evaluation) instead of requiring equal sizes.
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Inspect(a) => inspect(&a),
    }
}

/// Loads one split, honouring --image-size for image folders.
fn load(args: &InspectArgs, split: Split) -> temper_data::Result<Dataset> {
    let name = DatasetName::parse(&args.dataset)?;
    match (name, args.image_size, args.data_dir.as_deref()) {
        (DatasetName::ImageFolder, Some(size), Some(dir)) => {
            let root = temper_data::image_folder_split(dir, split)?;
            let shorter = (f64::from(size) / 0.875).round() as u32;
            let mut params =
                ImageFolderParams::new(root).transform(FolderTransform::CenterCrop { shorter, crop: size });
            if let Some(classes) = temper_data::image_folder_classes(dir, split)? {
                params = params.class_list(classes);
            }
            let mut ds = params.check()?.decode_all()?;
            ds.set_name(format!("image-folder/{split}"));
            Ok(ds)
        }
        _ => temper_data::load(&args.dataset, args.data_dir.as_deref(), split),
    }
}

fn inspect(args: &InspectArgs) -> Result<()> {
    let name = DatasetName::parse(&args.dataset)?;
    if args.image_size.is_some() && name != DatasetName::ImageFolder {
        anyhow::bail!("--image-size applies to --dataset image-folder only");
    }
    let wanted: Vec<Split> = match &args.split {
        Some(s) => vec![s.parse()?],
        None => Split::ALL.to_vec(),
    };
    let mut sets: Vec<(Split, Dataset)> = Vec::new();
    let mut absent: Vec<String> = Vec::new();
    for split in wanted {
        match load(args, split) {
            Ok(ds) => sets.push((split, ds)),
            // Without --split, a data set that simply has no such split is reported, not an
            // error: a single image folder is a train split only.
            Err(e @ temper_data::Error::NoSplit { .. }) if args.split.is_none() => {
                absent.push(format!("{split}: {e}"));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot load {name} ({split} split)"));
            }
        }
    }
    let Some((_, first)) = sets.first() else {
        anyhow::bail!("{name}: no split could be loaded");
    };
    let classes = first.classes().to_vec();

    if args.json {
        print_json(name, &sets, &absent)?;
    } else {
        print_tables(name, &sets, &absent, &classes);
    }

    if let Some(path) = &args.grid {
        let ds = &sets[0].1;
        let img = temper_data::grid::render(ds, &temper_data::grid::GridParams::default());
        temper_data::grid::save_png(&img, path)?;
        if !args.json {
            println!();
            println!(
                "grid of {} samples ({}x{} px) written to {}",
                ds.name(),
                img.width(),
                img.height(),
                path.display()
            );
        }
    }
    Ok(())
}

fn print_tables(name: DatasetName, sets: &[(Split, Dataset)], absent: &[String], classes: &[String]) {
    let where_ = if name.needs_data_dir() {
        String::new()
    } else {
        " (bundled)".to_string()
    };
    println!("dataset {name}{where_}");
    println!();
    println!("{:<8} {:>10}  {:<10} classes", "split", "samples", "shape");
    let mut total = 0;
    for (split, ds) in sets {
        let [c, h, w] = ds.shape();
        println!(
            "{:<8} {:>10}  {:<10} {}",
            split.name(),
            thousands(ds.len() as u64),
            format!("{c}x{h}x{w}"),
            ds.num_classes()
        );
        total += ds.len();
    }
    if sets.len() > 1 {
        println!("{:<8} {:>10}", "total", thousands(total as u64));
    }
    for note in absent {
        println!("(no {note})");
    }

    println!();
    let width = classes.iter().map(|c| c.len()).max().unwrap_or(0).clamp(5, 32) + 5;
    print!("{:<width$}", "class");
    for (split, _) in sets {
        print!(" {:>10}", split.name());
    }
    println!();
    let counts: Vec<Vec<usize>> = sets.iter().map(|(_, ds)| ds.class_counts()).collect();
    for (k, class) in classes.iter().enumerate() {
        print!("{:<width$}", format!("{k:>3} {class}"));
        for c in &counts {
            print!(" {:>10}", thousands(c.get(k).copied().unwrap_or(0) as u64));
        }
        println!();
    }
    print!("{:<width$}", "sum");
    for c in &counts {
        print!(" {:>10}", thousands(c.iter().sum::<usize>() as u64));
    }
    println!();

    println!();
    println!("per-channel statistics of pixels in [0, 1]:");
    println!("{:<8} {:<8} {:>8} {:>8}", "split", "channel", "mean", "std");
    for (split, ds) in sets {
        let stats = ds.channel_stats();
        let names: &[&str] = if stats.len() == 3 {
            &["R", "G", "B"]
        } else {
            &["grey"]
        };
        for (s, ch) in stats.iter().zip(names) {
            println!("{:<8} {:<8} {:>8.4} {:>8.4}", split.name(), ch, s.mean, s.std);
        }
    }
}

fn print_json(name: DatasetName, sets: &[(Split, Dataset)], absent: &[String]) -> Result<()> {
    let splits: Vec<serde_json::Value> = sets
        .iter()
        .map(|(split, ds)| {
            let stats = ds.channel_stats();
            serde_json::json!({
                "split": split.name(),
                "samples": ds.len(),
                "shape": ds.shape(),
                "classes": ds.classes(),
                "class_counts": ds.class_counts(),
                "mean": stats.iter().map(|s| s.mean).collect::<Vec<_>>(),
                "std": stats.iter().map(|s| s.std).collect::<Vec<_>>(),
            })
        })
        .collect();
    let v = serde_json::json!({ "dataset": name.name(), "splits": splits, "absent": absent });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dataset: &str) -> InspectArgs {
        InspectArgs {
            dataset: dataset.into(),
            data_dir: None,
            split: None,
            grid: None,
            image_size: None,
            json: false,
        }
    }

    #[test]
    fn inspects_the_bundled_set_and_writes_a_png_grid() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let grid = dir.path().join("grid.png");
        inspect(&InspectArgs {
            grid: Some(grid.clone()),
            ..args("mnist10k")
        })?;
        let bytes = std::fs::read(&grid)?;
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        inspect(&InspectArgs {
            split: Some("test".into()),
            json: true,
            ..args("mnist10k")
        })?;
        Ok(())
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(inspect(&args("no-such-set")).is_err());
        assert!(inspect(&InspectArgs {
            split: Some("validation".into()),
            ..args("mnist10k")
        })
        .is_err());
        assert!(inspect(&InspectArgs {
            image_size: Some(224),
            ..args("mnist10k")
        })
        .is_err());
        assert!(inspect(&args("cifar10")).is_err(), "cifar10 needs --data-dir");
    }
}
