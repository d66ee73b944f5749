//! PNG charts drawn with plotters: line charts (robust accuracy against eps, training curves,
//! learning-rate schedules) and heat maps (a robustness matrix: models by attacks).
//!
//! A [`Figure`] is a grid of [`Panel`]s, each a set of named [`Series`]; every panel has a
//! title, axis labels and a legend, so a chart can be read without the code that made it.
//! Text is drawn with DejaVu Sans, bundled in this crate (`assets/DejaVuSans.ttf`, Bitstream
//! Vera licence in `assets/LICENSE-DejaVu.txt`), because plotters' default text needs system
//! fonts through fontconfig, which a CI machine or a container may not have.

use crate::jsonl::TrainingLog;
use crate::sweep::Sweep;
use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

/// DejaVu Sans 2.37, unchanged from Debian's `fonts-dejavu-core`.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family name charts ask for; plotters' own defaults ask for it too.
const FAMILY: &str = "sans-serif";

/// Registers the bundled font once per process; the outcome is kept so that every chart
/// reports a broken font the same way.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [FontStyle::Normal, FontStyle::Bold]
            .into_iter()
            .all(|style| plotters::style::register_font(FAMILY, style, FONT).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Chart {
            chart: "font".into(),
            reason: "the bundled DejaVu Sans could not be parsed".into(),
        })
    }
}

/// A line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite ones are left out.
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at every point (for sparse measurements such as a sweep).
    pub markers: bool,
}

/// Where a panel's legend goes: the corner the curves leave free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegendPosition {
    /// Top left.
    UpperLeft,
    /// Top right.
    UpperRight,
    /// Bottom left.
    LowerLeft,
    /// Bottom right.
    LowerRight,
    /// Right, half-way up: where accuracy curves (near the top for clean accuracy, anywhere
    /// for robust accuracy) are least likely to run.
    MiddleRight,
}

/// One set of axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Title above the axes.
    pub title: String,
    /// X-axis label, with its unit.
    pub x_label: String,
    /// Y-axis label, with its unit.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// Legend corner.
    pub legend: LegendPosition,
}

/// A grid of panels under an optional title, drawn to PNG.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Title above all panels (empty for none: a single panel carries its own).
    pub title: String,
    /// The panels, row by row.
    pub panels: Vec<Panel>,
    /// Panels per row.
    pub columns: usize,
    /// Pixel size of one panel.
    pub panel_size: (u32, u32),
}

/// Distinguishable colours (Tableau 10), in the order lines take them.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const TITLE_HEIGHT: u32 = 44;

impl Figure {
    /// Width and height of the whole image in pixels.
    pub fn size(&self) -> (u32, u32) {
        let cols = self.columns.clamp(1, self.panels.len().max(1));
        let rows = self.panels.len().div_ceil(cols).max(1);
        let title = if self.title.is_empty() { 0 } else { TITLE_HEIGHT };
        (
            self.panel_size.0 * cols as u32,
            self.panel_size.1 * rows as u32 + title,
        )
    }

    /// The figure as PNG bytes.
    pub fn render_png(&self) -> Result<Vec<u8>> {
        let name = if self.title.is_empty() {
            self.panels.first().map_or("chart", |p| p.title.as_str())
        } else {
            self.title.as_str()
        };
        render(name, self.size(), |root| {
            let body = if self.title.is_empty() {
                root.clone()
            } else {
                root.titled(&self.title, (FAMILY, 26).into_font().style(FontStyle::Bold))
                    .map_err(|e| e.to_string())?
            };
            let cols = self.columns.clamp(1, self.panels.len().max(1));
            let rows = self.panels.len().div_ceil(cols).max(1);
            // A panel without data borrows the others' x range, so the panels line up.
            let all_x = extent(
                self.panels
                    .iter()
                    .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|p| p.0))),
                0.0,
            );
            for (panel, area) in self.panels.iter().zip(body.split_evenly((rows, cols))) {
                draw_panel(panel, &area, all_x).map_err(|e| format!("panel '{}': {e}", panel.title))?;
            }
            Ok(())
        })
    }

    /// Renders the figure and writes it to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let png = self.render_png()?;
        temper_core::fsutil::write_atomic(path, &png)?;
        Ok(())
    }
}

/// Draws an image of `size` pixels on white with `draw` and encodes it as PNG; `name` names
/// the chart in errors.
fn render(
    name: &str,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> Result<Vec<u8>> {
    ensure_font()?;
    let fail = |reason: String| Error::Chart {
        chart: name.to_string(),
        reason,
    };
    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| fail(format!("PNG encoding: {e}")))?;
    Ok(png)
}

/// Finite extent of a set of values, widened when it is a single value so that the axis has
/// a length.
fn extent(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let p = (hi - lo) * pad;
    (lo - p, hi + p)
}

/// A tick label with as many decimals as the axis span needs, and no trailing zeros.
fn tick(v: f64, span: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if span < 1e-3 || v.abs() >= 1e5 {
        return format!("{v:.1e}");
    }
    let decimals = (-(span / 5.0).log10().floor()).clamp(0.0, 6.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn draw_panel(
    panel: &Panel,
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    fallback_x: (f64, f64),
) -> DrawResult<()> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter().copied());
    let has_x = points().any(|p| p.0.is_finite());
    let (x0, x1) = if has_x {
        extent(points().map(|p| p.0), 0.0)
    } else {
        fallback_x
    };
    let (y0, y1) = panel.y_range.unwrap_or_else(|| {
        let (lo, hi) = extent(points().map(|p| p.1), 0.05);
        // Quantities that cannot be negative (loss, learning rate) keep 0 as their floor.
        let nonneg = points().all(|p| !p.1.is_finite() || p.1 >= 0.0);
        (if nonneg { lo.max(0.0) } else { lo }, hi)
    });
    let mut builder = ChartBuilder::on(area);
    builder.margin(14).x_label_area_size(52).y_label_area_size(78);
    if !panel.title.is_empty() {
        builder.caption(&panel.title, (FAMILY, 22));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
    let (xs, ys) = (x1 - x0, y1 - y0);
    let (fx, fy) = (move |v: &f64| tick(*v, xs), move |v: &f64| tick(*v, ys));
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .x_labels(7)
        .y_labels(8)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    let mut any = false;
    for (i, s) in panel.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        any = true;
        let markers = s.markers;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                let line = PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2));
                let dot = Circle::new((x + 11, y), if markers { 4 } else { 0 }, color.filled());
                EmptyElement::at((0, 0)) + line + dot
            });
        if s.markers {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    if any {
        let pos = match panel.legend {
            LegendPosition::UpperLeft => SeriesLabelPosition::UpperLeft,
            LegendPosition::UpperRight => SeriesLabelPosition::UpperRight,
            LegendPosition::LowerLeft => SeriesLabelPosition::LowerLeft,
            LegendPosition::LowerRight => SeriesLabelPosition::LowerRight,
            LegendPosition::MiddleRight => SeriesLabelPosition::MiddleRight,
        };
        chart
            .configure_series_labels()
            .position(pos)
            .margin(10)
            .legend_area_size(30)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FAMILY, 15))
            .draw()?;
    } else {
        // An empty panel says so instead of looking like a drawing error.
        let style = (FAMILY, 18)
            .into_font()
            .color(&RGBColor(120, 120, 120))
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .plotting_area()
            .draw(&Text::new("no data", ((x0 + x1) / 2.0, (y0 + y1) / 2.0), style))?;
    }
    Ok(())
}

/// Robust accuracy (in percent) against eps, one line per sweep, with markers at the
/// measured budgets.
pub fn robust_vs_eps(sweeps: &[Sweep], model: &str) -> Figure {
    let norm = sweeps.first().map_or("linf", |s| s.norm.name());
    // Sweeps in different norms share the chart only with their norm in the legend.
    let mixed = sweeps.iter().any(|s| s.norm.name() != norm);
    let unit = match (mixed, norm) {
        (true, _) => "L-inf or L2",
        (false, "l2") => "L2",
        _ => "L-inf",
    };
    let series = sweeps
        .iter()
        .map(|s| Series {
            name: if mixed {
                format!("{} ({})", s.attack, s.norm.name())
            } else {
                s.attack.clone()
            },
            points: s.points.iter().map(|p| (p.eps, p.robust.percent())).collect(),
            markers: true,
        })
        .collect();
    let title = if model.is_empty() {
        format!("Robust accuracy vs eps ({unit})")
    } else {
        format!("Robust accuracy vs eps ({unit}), {model}")
    };
    Figure {
        title: String::new(),
        panels: vec![Panel {
            title,
            x_label: format!("eps ({unit} budget, pixel units in [0, 1])"),
            y_label: "robust accuracy (%)".into(),
            series,
            y_range: Some((0.0, 102.0)),
            legend: LegendPosition::UpperRight,
        }],
        columns: 1,
        panel_size: (900, 600),
    }
}

/// Training curves of a run: loss, accuracy (training, clean and robust validation) and
/// learning rate against epoch, side by side.
pub fn training_curves(log: &TrainingLog, run: &str) -> Figure {
    let line = |name: &str, points: Vec<(f64, f64)>, markers: bool| Series {
        name: name.into(),
        points,
        markers,
    };
    let train = |f: fn(&crate::jsonl::TrainPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        log.train
            .iter()
            .filter_map(|p| f(p).map(|v| (p.epoch, v)))
            .collect()
    };
    let val = |f: fn(&crate::jsonl::ValPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        log.val
            .iter()
            .filter_map(|p| f(p).map(|v| (p.epoch, v)))
            .collect()
    };
    // Validation is sparse (once per epoch or so): markers show where it was measured.
    let sparse = log.val.len() <= 60;
    let pct = |v: Vec<(f64, f64)>| v.into_iter().map(|(x, y)| (x, 100.0 * y)).collect::<Vec<_>>();
    let keep = |s: Vec<Series>| s.into_iter().filter(|s| !s.points.is_empty()).collect::<Vec<_>>();
    let loss = keep(vec![
        line("training loss (mean since epoch start)", train(|p| p.loss), false),
        line("validation loss", val(|p| p.loss), sparse),
    ]);
    let acc = keep(vec![
        line(
            "training accuracy (mean since epoch start)",
            pct(train(|p| p.acc)),
            false,
        ),
        line("validation clean accuracy", pct(val(|p| p.clean_acc)), sparse),
        line("validation robust accuracy", pct(val(|p| p.robust_acc)), sparse),
    ]);
    let lr = keep(vec![line("learning rate", train(|p| p.lr), false)]);
    Figure {
        title: format!("Training run {run}"),
        panels: vec![
            Panel {
                title: "Loss".into(),
                x_label: "epoch".into(),
                y_label: "cross-entropy loss".into(),
                series: loss,
                y_range: None,
                legend: LegendPosition::UpperRight,
            },
            Panel {
                title: "Accuracy".into(),
                x_label: "epoch".into(),
                y_label: "accuracy (%)".into(),
                series: acc,
                y_range: Some((0.0, 102.0)),
                legend: LegendPosition::MiddleRight,
            },
            Panel {
                title: "Learning rate".into(),
                x_label: "epoch".into(),
                y_label: "learning rate".into(),
                series: lr,
                y_range: None,
                legend: LegendPosition::UpperRight,
            },
        ],
        columns: 3,
        panel_size: (620, 480),
    }
}

/// A learning-rate schedule sampled as `(epoch, lr)` pairs, titled with its spec.
pub fn lr_schedule(points: &[(f64, f64)], spec: &str) -> Figure {
    let title = format!("Learning-rate schedule {spec}");
    // A long spec widens the chart rather than running off its edge (about 12 pixels per
    // character of the 22-pixel title font).
    let width = (900).max(12 * title.chars().count() as u32 + 80);
    Figure {
        title: String::new(),
        panels: vec![Panel {
            title,
            x_label: "epoch".into(),
            y_label: "learning rate".into(),
            series: vec![Series {
                name: "learning rate".into(),
                points: points.to_vec(),
                markers: false,
            }],
            y_range: None,
            legend: LegendPosition::UpperRight,
        }],
        columns: 1,
        panel_size: (width, 540),
    }
}

/// A table of percentages drawn as coloured cells with their values: one row per model (a
/// bit width), one column per measure (clean accuracy, each attack). Empty cells (`None`) are
/// grey and say so. The colours run from white at the scale's floor (the lowest value rounded
/// down to a multiple of 10, so nearby values stay distinguishable) to dark blue at 100%; the
/// image states the floor.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    /// Title above the table.
    pub title: String,
    /// A line under the title (settings), or empty.
    pub subtitle: String,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// Column labels, left to right.
    pub columns: Vec<String>,
    /// `values[row][column]`, in percent (0 to 100).
    pub values: Vec<Vec<Option<f64>>>,
}

/// The colour of a percentage: white at `floor`, through light blue, to dark blue at 100.
fn heat_colour(v: f64, floor: f64) -> RGBColor {
    let t = ((v - floor) / (100.0 - floor).max(1.0)).clamp(0.0, 1.0);
    let lerp = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(lerp(255, 8), lerp(255, 69), lerp(255, 148))
}

impl HeatMap {
    const LABEL_W: u32 = 230;
    const CELL_W: u32 = 150;
    const CELL_H: u32 = 46;
    const HEAD_H: u32 = 120;

    /// Width and height of the image in pixels: wide enough for the grid and for the title
    /// lines (about 13 and 8 pixels per character).
    pub fn size(&self) -> (u32, u32) {
        let text = (13 * self.title.chars().count()).max(8 * self.subtitle.chars().count()) as u32 + 28;
        (
            (Self::LABEL_W + Self::CELL_W * self.columns.len().max(1) as u32 + 20).max(text),
            Self::HEAD_H + Self::CELL_H * self.rows.len().max(1) as u32 + 20,
        )
    }

    /// The value that is white: the lowest value rounded down to a multiple of 10 (at most 90).
    pub fn floor(&self) -> f64 {
        let lo = self
            .values
            .iter()
            .flatten()
            .flatten()
            .fold(100f64, |a, v| a.min(*v));
        ((lo / 10.0).floor() * 10.0).clamp(0.0, 90.0)
    }

    /// The heat map as PNG bytes.
    pub fn render_png(&self) -> Result<Vec<u8>> {
        if self.values.len() != self.rows.len() || self.values.iter().any(|r| r.len() != self.columns.len()) {
            return Err(Error::Chart {
                chart: self.title.clone(),
                reason: format!(
                    "{} rows x {} columns of labels but values of another shape",
                    self.rows.len(),
                    self.columns.len()
                ),
            });
        }
        render(&self.title, self.size(), |root| {
            self.draw(root).map_err(|e| e.to_string())
        })
    }

    fn draw(&self, root: &DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult<()> {
        let text = |size: u32, bold: bool, colour: RGBColor, h: HPos| {
            let font = (FAMILY, size).into_font();
            let font = if bold { font.style(FontStyle::Bold) } else { font };
            font.color(&colour).pos(Pos::new(h, VPos::Center))
        };
        let black = RGBColor(20, 20, 20);
        let floor = self.floor();
        root.draw(&Text::new(
            self.title.clone(),
            (14, 24),
            text(24, true, black, HPos::Left),
        ))?;
        let scale = format!("colour: white {floor:.0}% to dark blue 100%");
        let grey = RGBColor(90, 90, 90);
        root.draw(&Text::new(scale, (14, 84), text(14, false, grey, HPos::Left)))?;
        if !self.subtitle.is_empty() {
            let grey = RGBColor(90, 90, 90);
            root.draw(&Text::new(
                self.subtitle.clone(),
                (14, 56),
                text(15, false, grey, HPos::Left),
            ))?;
        }
        let (lw, cw, ch, top) = (
            Self::LABEL_W as i32,
            Self::CELL_W as i32,
            Self::CELL_H as i32,
            Self::HEAD_H as i32,
        );
        for (j, c) in self.columns.iter().enumerate() {
            let x = lw + cw * j as i32 + cw / 2;
            root.draw(&Text::new(
                c.clone(),
                (x, top - 20),
                text(16, true, black, HPos::Center),
            ))?;
        }
        for (i, (label, row)) in self.rows.iter().zip(&self.values).enumerate() {
            let y0 = top + ch * i as i32;
            root.draw(&Text::new(
                label.clone(),
                (14, y0 + ch / 2),
                text(17, true, black, HPos::Left),
            ))?;
            for (j, v) in row.iter().enumerate() {
                let x0 = lw + cw * j as i32;
                let fill = v.map_or(RGBColor(225, 225, 225), |p| heat_colour(p, floor));
                root.draw(&Rectangle::new([(x0, y0), (x0 + cw, y0 + ch)], fill.filled()))?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    RGBColor(255, 255, 255).stroke_width(2),
                ))?;
                let (label, colour) = match v {
                    Some(p) => {
                        let dark = (p - floor) / (100.0 - floor).max(1.0) > 0.55;
                        (format!("{p:.1}%"), if dark { WHITE } else { black })
                    }
                    None => ("n/a".to_string(), RGBColor(110, 110, 110)),
                };
                root.draw(&Text::new(
                    label,
                    (x0 + cw / 2, y0 + ch / 2),
                    text(18, false, colour, HPos::Center),
                ))?;
            }
        }
        Ok(())
    }

    /// Renders the heat map and writes it to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let png = self.render_png()?;
        temper_core::fsutil::write_atomic(path, &png)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_have_the_decimals_the_span_needs() {
        assert_eq!(tick(0.0, 1.0), "0");
        assert_eq!(tick(0.5, 1.0), "0.5");
        assert_eq!(tick(50.0, 100.0), "50");
        assert_eq!(tick(0.0314, 0.03), "0.031");
        assert_eq!(tick(0.0001, 0.0005), "1.0e-4");
    }

    #[test]
    fn heat_maps_draw_and_refuse_ragged_values() -> Result<()> {
        let mut m = HeatMap {
            title: "Robustness by bit width".into(),
            subtitle: "small-cnn, mnist10k".into(),
            rows: vec!["float".into(), "4-bit".into()],
            columns: vec!["clean".into(), "pgd-20".into()],
            values: vec![vec![Some(98.0), Some(70.5)], vec![Some(97.0), None]],
        };
        let png = m.render_png()?;
        assert!(png.starts_with(b"\x89PNG"));
        let img = image::load_from_memory(&png).map_err(|e| Error::Chart {
            chart: "test".into(),
            reason: e.to_string(),
        })?;
        assert_eq!((img.width(), img.height()), m.size());
        assert_eq!(m.floor(), 70.0);
        assert_eq!(heat_colour(70.0, 70.0), RGBColor(255, 255, 255));
        assert_eq!(heat_colour(100.0, 70.0), RGBColor(8, 69, 148));
        m.values[1].pop();
        assert!(m.render_png().is_err());
        Ok(())
    }

    #[test]
    fn extents_never_collapse() {
        assert_eq!(extent([].into_iter(), 0.0), (0.0, 1.0));
        let (lo, hi) = extent([2.0, 2.0].into_iter(), 0.0);
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(extent([0.0, 1.0, f64::NAN].into_iter(), 0.0), (0.0, 1.0));
    }
}
