//! A labelled grid of sample images, for a person to check that a data set is what it claims.
//!
//! One row per class: the class id and name, then the first samples of that class. Text is
//! drawn with the public-domain 8x8 bitmap font of the `font8x8` crate at twice its size, so
//! it stays legible without shipping a font file.
//!
//! ```
//! let ds = temper_data::bundled::mnist10k(temper_data::Split::Test)?;
//! let img = temper_data::grid::render(&ds, &temper_data::grid::GridParams::default());
//! assert!(img.width() > 0 && img.height() > 0);
//! # Ok::<(), temper_data::Error>(())
//! ```

use crate::{Dataset, Error, Result};
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};
use std::path::Path;

/// Background colour.
const BG: Rgb<u8> = Rgb([72, 72, 84]);
/// Text colour.
const FG: Rgb<u8> = Rgb([240, 240, 240]);
/// Pixels between cells and around the grid.
const GAP: u32 = 6;
/// Text magnification of the 8x8 font.
const TEXT_SCALE: u32 = 2;
/// Longest label drawn; longer class names are cut with a trailing '~'.
const MAX_LABEL: usize = 22;

/// What the grid shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridParams {
    /// Samples shown per class.
    pub per_class: usize,
    /// Classes shown (the first ones, by label).
    pub max_classes: usize,
    /// Side, in pixels, that each image is scaled to (nearest neighbour, so pixels stay
    /// visible).
    pub cell: u32,
}

impl Default for GridParams {
    fn default() -> Self {
        GridParams {
            per_class: 10,
            max_classes: 20,
            cell: 64,
        }
    }
}

/// Draws `text` with its top-left corner at `(x, y)`.
fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str) {
    for (k, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x + k as u32 * 8 * TEXT_SCALE;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                // font8x8 stores the leftmost pixel in the lowest bit.
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..TEXT_SCALE {
                    for dx in 0..TEXT_SCALE {
                        let px = gx + col * TEXT_SCALE + dx;
                        let py = y + row as u32 * TEXT_SCALE + dy;
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, FG);
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `text` as [`draw_text`] draws it.
fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * 8 * TEXT_SCALE
}

/// `50000` -> `50,000`.
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Cuts `s` to `MAX_LABEL` characters.
fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_LABEL - 1).collect();
    out.push('~');
    out
}

/// Renders the grid of `ds`.
pub fn render(ds: &Dataset, params: &GridParams) -> RgbImage {
    let [c, h, w] = ds.shape();
    let shown = ds.num_classes().min(params.max_classes.max(1));
    let per_class = params.per_class.max(1);
    let cell = params.cell.max(8);
    // Integer magnification keeps the image's own pixels square and crisp; larger images are
    // sampled down to the cell instead.
    let (cw, ch) = {
        let s = (cell as f64 / h.max(w) as f64).max(f64::MIN_POSITIVE);
        (
            ((w as f64 * s).round() as u32).max(1),
            ((h as f64 * s).round() as u32).max(1),
        )
    };
    let labels: Vec<String> = (0..shown)
        .map(|k| {
            let name = &ds.classes()[k];
            // A class named by its own id (MNIST's digits) is not written twice.
            if *name == k.to_string() {
                clip(name)
            } else {
                clip(&format!("{k} {name}"))
            }
        })
        .collect();
    let label_w = labels.iter().map(|l| text_width(l)).max().unwrap_or(0);
    let title = format!(
        "{}: {} images, {} classes{}",
        ds.name(),
        grouped(ds.len()),
        ds.num_classes(),
        if shown < ds.num_classes() {
            format!(" (first {shown} shown)")
        } else {
            String::new()
        }
    );
    let text_h = 8 * TEXT_SCALE;
    let row_h = ch.max(text_h);
    let grid_w = label_w + GAP + per_class as u32 * (cw + GAP);
    let width = (2 * GAP + grid_w).max(2 * GAP + text_width(&title));
    let height = GAP + text_h + GAP + shown as u32 * (row_h + GAP) + GAP;
    let mut img = RgbImage::from_pixel(width, height, BG);
    draw_text(&mut img, GAP, GAP, &title);

    let mut picked: Vec<Vec<usize>> = vec![Vec::new(); shown];
    for (i, &l) in ds.labels().iter().enumerate() {
        if let Some(p) = picked.get_mut(l as usize) {
            if p.len() < per_class {
                p.push(i);
            }
        }
    }
    for (k, (label, samples)) in labels.iter().zip(&picked).enumerate() {
        let y0 = GAP + text_h + GAP + k as u32 * (row_h + GAP);
        draw_text(&mut img, GAP, y0 + (row_h - text_h) / 2, label);
        for (j, &i) in samples.iter().enumerate() {
            let Some(px) = ds.image(i) else { continue };
            let x0 = GAP + label_w + GAP + j as u32 * (cw + GAP);
            for y in 0..ch {
                let sy = ((y as usize * h) / ch as usize).min(h - 1);
                for x in 0..cw {
                    let sx = ((x as usize * w) / cw as usize).min(w - 1);
                    let at = |ch_: usize| px[ch_ * h * w + sy * w + sx];
                    let rgb = if c >= 3 { [at(0), at(1), at(2)] } else { [at(0); 3] };
                    img.put_pixel(x0 + x, y0 + (row_h - ch) / 2 + y, Rgb(rgb));
                }
            }
        }
    }
    img
}

/// Writes `img` as a PNG file, atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Io {
            op: "cannot encode PNG for",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    temper_core::fsutil::write_atomic(path, &bytes).map_err(|e| Error::Io {
        op: "cannot write",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_in_the_foreground_colour() {
        let mut img = RgbImage::from_pixel(40, 20, BG);
        draw_text(&mut img, 0, 0, "1");
        assert!(img.pixels().any(|p| *p == FG));
        assert_eq!(text_width("ab"), 32);
        assert_eq!(grouped(50_000), "50,000");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn long_labels_are_clipped() {
        assert_eq!(clip("short"), "short");
        let c = clip("large_omnivores_and_herbivores");
        assert_eq!(c.chars().count(), MAX_LABEL);
        assert!(c.ends_with('~'));
    }
}
