//! Clean and robust accuracy along the straight line between two models of the same
//! architecture: the trade-off curve a user picks a model from at no training cost.
//!
//! Each point is the model `(1 - alpha) * A + alpha * B`
//! ([`temper_core::interpolate::interpolate`]: every parameter and buffer, BatchNorm running
//! statistics included) evaluated by [`evaluate`], so its numbers are what `temper eval`
//! reports for that model. The robust accuracy of a point is the per-sample worst case over
//! the attack list; a point is on the Pareto front when no other point is at least as good in
//! both clean and robust accuracy and better in one.

use crate::chart::{Figure, LegendPosition, Panel, Series};
use crate::evaluate::{evaluate, NamedAttack, ValidEvalParams};
use crate::threat::Threat;
use crate::{Error, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use temper_core::Classifier;
use temper_data::Dataset;

/// The `schema` of interpolation.json.
pub const SCHEMA: &str = "temper.interpolation.v1";

/// Unchecked settings of an interpolation path.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpolationParams {
    /// The points of the line, `0` being model A and `1` model B (values outside `[0, 1]`
    /// extrapolate). The CLI parses them with `temper_attacks::spec::parse_sweep`
    /// (`0:1:0.1` or `0,0.5,1`).
    pub alphas: Vec<f64>,
}

impl InterpolationParams {
    /// Validates: at least one alpha, every alpha finite.
    pub fn check(self) -> Result<ValidInterpolationParams> {
        if self.alphas.is_empty() {
            return Err(Error::param("alphas", "needs at least one point"));
        }
        if let Some(a) = self.alphas.iter().find(|a| !a.is_finite()) {
            return Err(Error::param("alphas", format!("{a} is not a finite number")));
        }
        Ok(ValidInterpolationParams(self))
    }
}

/// [`InterpolationParams`] that passed [`InterpolationParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidInterpolationParams(InterpolationParams);

impl ValidInterpolationParams {
    /// The checked settings.
    pub fn get(&self) -> &InterpolationParams {
        &self.0
    }
}

/// One attack's robust accuracy at one point.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttackAccuracy {
    /// The attack's name in the list, e.g. `pgd-20`.
    pub name: String,
    /// Robust accuracy under it alone.
    pub robust: f64,
}

/// One model on the line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InterpolationPoint {
    /// Its place on the line: 0 is model A, 1 model B.
    pub alpha: f64,
    /// Clean accuracy.
    pub clean: f64,
    /// Robust accuracy under each attack, in the order given.
    pub attacks: Vec<AttackAccuracy>,
    /// The per-sample worst case over the attacks (the robust accuracy of the curve); equal to
    /// `clean` when the list is empty.
    pub robust: f64,
    /// True when no other point is at least as good in clean and robust accuracy and better in
    /// one.
    pub pareto: bool,
    /// Seconds the evaluation of this point took.
    pub seconds: f64,
}

/// The outcome of an interpolation path; the content of interpolation.json.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InterpolationReport {
    /// [`SCHEMA`].
    pub schema: String,
    /// The architecture's name.
    pub model: String,
    /// Model A (alpha 0), usually its file.
    pub a: String,
    /// Model B (alpha 1).
    pub b: String,
    /// The data set's name.
    pub dataset: String,
    /// Images evaluated at every point.
    pub images: usize,
    /// The attacks, as `name: description`.
    pub attacks: Vec<String>,
    /// The threat model of every robust accuracy.
    pub threat: Threat,
    /// The points in the order of the alphas given.
    pub points: Vec<InterpolationPoint>,
}

/// Marks the points no other point dominates.
fn mark_pareto(points: &mut [InterpolationPoint]) {
    let coords: Vec<(f64, f64)> = points.iter().map(|p| (p.clean, p.robust)).collect();
    for (i, p) in points.iter_mut().enumerate() {
        let (c, r) = coords[i];
        p.pareto = !coords
            .iter()
            .enumerate()
            .any(|(j, &(c2, r2))| j != i && c2 >= c && r2 >= r && (c2 > c || r2 > r));
    }
}

/// Evaluates the models on the line between `a` and `b` at every alpha of `params`.
///
/// `blend` is a third model of the same architecture whose parameters are overwritten with
/// each point's (its own values are not used); `names` name `a` and `b` in errors and the
/// report. Every point is evaluated by [`evaluate`] with `eval` on `data` under `attacks`;
/// `progress` receives each point when it is done (its `pareto` flag is set only in the
/// report, once every point is known). Fails, before evaluating anything, when the three
/// models do not share keys, shapes and dtypes.
#[allow(clippy::too_many_arguments)] // Two models, a scratch model, and the evaluate arguments.
pub fn interpolation_path(
    a: &dyn Classifier,
    b: &dyn Classifier,
    blend: &dyn Classifier,
    names: (&str, &str),
    params: &ValidInterpolationParams,
    data: &Dataset,
    attacks: &[NamedAttack],
    eval: &ValidEvalParams,
    device: &Device,
    progress: &mut dyn FnMut(&InterpolationPoint),
) -> Result<InterpolationReport> {
    // Checked once up front, so a mismatch fails before the first (slow) evaluation.
    temper_core::interpolate::interpolate(a.params(), b.params(), 0.0, blend.params(), names)?;
    let mut points = Vec::new();
    for &alpha in &params.get().alphas {
        let start = std::time::Instant::now();
        temper_core::interpolate::interpolate(a.params(), b.params(), alpha, blend.params(), names)?;
        let e = evaluate(blend, data, attacks, eval, device)?;
        let clean = e.clean.accuracy.accuracy;
        let point = InterpolationPoint {
            alpha,
            clean,
            attacks: e
                .attacks
                .iter()
                .map(|r| AttackAccuracy {
                    name: r.name.clone(),
                    robust: r.robust.accuracy,
                })
                .collect(),
            robust: e.worst_case.as_ref().map_or(clean, |w| w.accuracy.accuracy),
            pareto: false,
            seconds: start.elapsed().as_secs_f64(),
        };
        progress(&point);
        points.push(point);
    }
    mark_pareto(&mut points);
    Ok(InterpolationReport {
        schema: SCHEMA.to_string(),
        model: a.info().name.clone(),
        a: names.0.to_string(),
        b: names.1.to_string(),
        dataset: data.name().to_string(),
        images: data.len(),
        attacks: attacks
            .iter()
            .map(|(n, at)| format!("{n}: {}", at.name()))
            .collect(),
        threat: eval.threat(),
        points,
    })
}

impl InterpolationReport {
    /// The table as Markdown.
    pub fn to_markdown(&self) -> String {
        let names: Vec<String> = self
            .points
            .first()
            .map(|p| p.attacks.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default();
        let pct = |v: f64| format!("{:.2}%", 100.0 * v);
        let mut s = format!(
            "# Weight interpolation: {} on {} ({} images)\n\n\
             alpha 0 is `{}`, alpha 1 is `{}`; each row is the model `(1 - alpha) * A + alpha * B` \
             (every parameter and buffer, BatchNorm running statistics included).\n\n\
             Attacks: {}; threat model {}. Robust accuracy counts images classified correctly both \
             clean and attacked; *robust* is the worst case over the attacks. Rows marked * are on \
             the Pareto front (no other row is as good in both columns and better in one).\n\n",
            self.model,
            self.dataset,
            self.images,
            self.a,
            self.b,
            if self.attacks.is_empty() {
                "none".to_string()
            } else {
                self.attacks.join("; ")
            },
            self.threat.describe()
        );
        s.push_str("| alpha | clean |");
        for n in &names {
            s.push_str(&format!(" {n} |"));
        }
        s.push_str(" robust (worst case) | Pareto |\n|---:|---:|");
        for _ in &names {
            s.push_str("---:|");
        }
        s.push_str("---:|:---:|\n");
        for p in &self.points {
            s.push_str(&format!("| {} | {} |", fmt_alpha(p.alpha), pct(p.clean)));
            for a in &p.attacks {
                s.push_str(&format!(" {} |", pct(a.robust)));
            }
            s.push_str(&format!(
                " {} | {} |\n",
                pct(p.robust),
                if p.pareto { "*" } else { "" }
            ));
        }
        s
    }

    /// Two panels: robust against clean accuracy (the trade-off curve, Pareto front marked)
    /// and every accuracy against alpha.
    pub fn figure(&self) -> Figure {
        let pct = |v: f64| 100.0 * v;
        let path = Series {
            name: "interpolated models".into(),
            points: self
                .points
                .iter()
                .map(|p| (pct(p.clean), pct(p.robust)))
                .collect(),
            markers: true,
        };
        let mut front: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(|p| p.pareto)
            .map(|p| (pct(p.clean), pct(p.robust)))
            .collect();
        front.sort_by(|x, y| x.0.total_cmp(&y.0));
        let trade_off = Panel {
            title: "Robust vs clean accuracy (path from alpha first to last)".into(),
            x_label: "clean accuracy (%)".into(),
            y_label: "robust accuracy, worst case (%)".into(),
            series: vec![
                path,
                Series {
                    name: "Pareto front".into(),
                    points: front,
                    markers: true,
                },
            ],
            y_range: None,
            legend: LegendPosition::LowerLeft,
        };
        let mut series = vec![Series {
            name: "clean".into(),
            points: self.points.iter().map(|p| (p.alpha, pct(p.clean))).collect(),
            markers: true,
        }];
        let names: Vec<String> = self
            .points
            .first()
            .map(|p| p.attacks.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default();
        for (i, n) in names.iter().enumerate() {
            series.push(Series {
                name: n.clone(),
                points: self
                    .points
                    .iter()
                    .filter_map(|p| p.attacks.get(i).map(|a| (p.alpha, pct(a.robust))))
                    .collect(),
                markers: true,
            });
        }
        if names.len() > 1 {
            series.push(Series {
                name: "worst case".into(),
                points: self.points.iter().map(|p| (p.alpha, pct(p.robust))).collect(),
                markers: true,
            });
        }
        let along = Panel {
            title: "Accuracy along the line".into(),
            x_label: "alpha (0 = A, 1 = B)".into(),
            y_label: "accuracy (%)".into(),
            series,
            y_range: Some((0.0, 102.0)),
            legend: LegendPosition::MiddleRight,
        };
        Figure {
            title: format!("Weight interpolation: {} on {}", self.model, self.dataset),
            panels: vec![trade_off, along],
            columns: 2,
            panel_size: (760, 560),
        }
    }

    /// Writes `interpolation.json`, `interpolation.md` and `interpolation.png` into `dir`
    /// (created if needed), each atomically, and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::param("report", e.to_string()))?;
        let paths = [
            dir.join("interpolation.json"),
            dir.join("interpolation.md"),
            dir.join("interpolation.png"),
        ];
        temper_core::fsutil::write_atomic(&paths[0], &json)?;
        temper_core::fsutil::write_atomic(&paths[1], self.to_markdown().as_bytes())?;
        self.figure().save(&paths[2])?;
        Ok(paths.to_vec())
    }
}

/// An alpha with as few decimals as it needs.
pub fn fmt_alpha(a: f64) -> String {
    let s = format!("{a:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(alpha: f64, clean: f64, robust: f64) -> InterpolationPoint {
        InterpolationPoint {
            alpha,
            clean,
            attacks: vec![AttackAccuracy {
                name: "pgd-10".into(),
                robust,
            }],
            robust,
            pareto: false,
            seconds: 0.0,
        }
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let mut p = vec![
            point(0.0, 0.99, 0.00),
            point(0.5, 0.97, 0.40),
            point(0.6, 0.96, 0.38), // dominated by 0.5
            point(0.8, 0.95, 0.60),
            point(1.0, 0.95, 0.55), // dominated by 0.8 (equal clean, lower robust)
        ];
        mark_pareto(&mut p);
        let front: Vec<f64> = p.iter().filter(|x| x.pareto).map(|x| x.alpha).collect();
        assert_eq!(front, vec![0.0, 0.5, 0.8]);
    }

    #[test]
    fn alphas_are_checked_and_printed_short() {
        assert!(InterpolationParams { alphas: vec![] }.check().is_err());
        assert!(InterpolationParams {
            alphas: vec![0.0, f64::NAN]
        }
        .check()
        .is_err());
        assert!(InterpolationParams {
            alphas: vec![-0.5, 1.5]
        }
        .check()
        .is_ok());
        assert_eq!(fmt_alpha(0.1 * 3.0), "0.3");
        assert_eq!(fmt_alpha(1.0), "1");
        assert_eq!(fmt_alpha(-1e-12), "0");
    }
}
