//! How much robustness survives quantization: clean accuracy, robust accuracy under attacks
//! run *through* the quantizer, and robust accuracy under attacks crafted on the float model
//! (transfer), for a list of bit widths, with file sizes.
//!
//! Robust accuracy counts an image when the model classifies both it and its adversarial
//! version correctly. White-box attacks differentiate the quantized model itself, with
//! straight-through gradients for rounded activations ([`crate::ste`]); without them the
//! robust accuracy of a quantized model looks better than it is. Transfer attacks are crafted
//! once on the float model and replayed on every quantized one.

use crate::error::param;
use crate::export::{float_bytes, to_bytes};
use crate::params::{ActParams, Method, QuantParams};
use crate::{eval, quantize, Granularity, QuantModel, Result, WeightScheme};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use temper_attacks::Attack;
use temper_core::Classifier;
use temper_data::Dataset;
use temper_eval::chart::{Figure, LegendPosition, Panel, Series};
use temper_eval::{evaluate_with, AdversarialBatch, EvalParams, Threat};
use temper_models::ValidModelConfig;

/// Unchecked sweep settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepParams {
    /// The weight grids to try, e.g. 8, 6, 4, 3, 2 bits and ternary.
    pub schemes: Vec<WeightScheme>,
    /// Everything else about quantization; its `scheme` is replaced by each of `schemes`.
    pub quant: QuantParams,
    /// Images per attack batch.
    pub batch_size: usize,
    /// The threat model robust accuracy refers to: an attack's example counts only inside
    /// this ball (as in `temper eval` and `temper attack`).
    pub threat: Threat,
    /// Named groups of the attacks, each reported as the per-sample worst case over its
    /// members (an image counts when no member broke it), e.g. `autoattack` for its
    /// component attacks. Members are attack names of the list; empty for none.
    pub groups: Vec<AttackGroup>,
}

/// A named group of attacks of a sweep's list.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttackGroup {
    /// The group's name, e.g. `autoattack`.
    pub name: String,
    /// The names of its attacks in the list, e.g. `apgd-ce`, `apgd-t`, `fab-t`, `square`.
    pub members: Vec<String>,
}

impl SweepParams {
    /// Validates: at least one scheme, every row's quantization settings valid, a batch size
    /// of at least 1.
    pub fn check(self) -> Result<ValidSweepParams> {
        if self.schemes.is_empty() {
            return Err(param("bits", "the sweep needs at least one bit width"));
        }
        for s in &self.schemes {
            QuantParams {
                scheme: *s,
                ..self.quant.clone()
            }
            .check()?;
        }
        if self.batch_size == 0 {
            return Err(param("batch-size", "must be at least 1"));
        }
        if let Some(g) = self.groups.iter().find(|g| g.members.is_empty()) {
            return Err(param(
                "attacks",
                format!("the attack group '{}' has no attacks", g.name),
            ));
        }
        Threat::new(self.threat.norm, self.threat.eps)?;
        Ok(ValidSweepParams(self))
    }
}

/// [`SweepParams`] that passed [`SweepParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSweepParams(SweepParams);

impl ValidSweepParams {
    /// The checked settings.
    pub fn get(&self) -> &SweepParams {
        &self.0
    }
}

/// One row of the table: a model at one width.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepRow {
    /// `float`, `8-bit`, ..., `ternary`.
    pub label: String,
    /// The weight grid (`None` for the float model).
    pub scheme: Option<WeightScheme>,
    /// Bits per weight for charts: 32 for float, 1.58 for ternary.
    pub bits: f64,
    /// Clean accuracy in `[0, 1]`.
    pub clean: f64,
    /// Robust accuracy under each attack run on this model, by attack name.
    pub robust: BTreeMap<String, f64>,
    /// Robust accuracy under each attack crafted on the float model, by attack name.
    pub transfer: BTreeMap<String, f64>,
    /// Robust accuracy under each attack group (the per-sample worst case over its members,
    /// run on this model), by group name.
    #[serde(default)]
    pub groups: BTreeMap<String, f64>,
    /// The per-sample worst case over every attack run on this model.
    #[serde(default)]
    pub worst_case: Option<f64>,
    /// How this row's model was quantized (`None` for the float model).
    #[serde(default)]
    pub quantization: Option<String>,
    /// Size of the model file in bytes (f32 safetensors for float, packed for the others).
    pub file_bytes: u64,
    /// Float file size over this file's size.
    pub ratio: f64,
}

/// The outcome of a sweep.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepReport {
    /// The model's name.
    pub model: String,
    /// The data set's name.
    pub dataset: String,
    /// Images evaluated.
    pub images: usize,
    /// Calibration images used.
    pub calib_images: usize,
    /// `rtn` or `gpfq`.
    pub method: String,
    /// Weight step granularity.
    pub granularity: Granularity,
    /// The first and last layers' width, if separate.
    pub first_last_bits: Option<u8>,
    /// Activation quantization, if any.
    pub act: Option<ActParams>,
    /// The attacks, in the order given, as their full descriptions.
    pub attacks: Vec<String>,
    /// The threat model of every robust accuracy.
    pub threat: Threat,
    /// The attack groups whose worst cases the rows report.
    #[serde(default)]
    pub groups: Vec<AttackGroup>,
    /// The float model first, then one row per width.
    pub rows: Vec<SweepRow>,
}

/// Per image: correct on the clean input and on the adversarial one.
fn robust_fraction(clean_ok: &[bool], adv_ok: &[bool]) -> f64 {
    let n = clean_ok.iter().zip(adv_ok).filter(|(c, a)| **c && **a).count();
    n as f64 / clean_ok.len().max(1) as f64
}

/// Per image: does `model` classify the stored adversarial images correctly?
fn replay(model: &dyn Classifier, advs: &[Tensor], labels: &[u32], batch: usize) -> Result<Vec<bool>> {
    let mut pred = Vec::with_capacity(labels.len());
    for a in advs {
        pred.extend(eval::predict(model, &a.to_device(model.device())?, batch)?);
    }
    Ok(pred.iter().zip(labels).map(|(p, l)| p == l).collect())
}

/// Runs the sweep: the float model, then `float` quantized to each width of `params`,
/// calibrated on `calib`, each evaluated on every image of `data` (clean, under every attack
/// of `attacks` through the quantizer, and under the same attacks crafted on the float
/// model). `progress` receives a line per finished row.
///
/// Clean and through-the-quantizer robust accuracy are [`temper_eval::evaluate`]'s, so they
/// equal what `temper eval` and `temper attack` report for the same model, attack, threat,
/// data, batch size and seed. Transfer robust accuracy replays, on each quantized model, the
/// float model's adversarial examples as `evaluate` counts them (inside the threat model; the
/// clean image where the float model was already wrong), and counts an image when the
/// quantized model classifies both it and its replayed example correctly.
pub fn sweep(
    float: &dyn Classifier,
    config: &ValidModelConfig,
    calib: &Tensor,
    data: &Dataset,
    attacks: &[(String, Box<dyn Attack>)],
    params: &ValidSweepParams,
    progress: &mut dyn FnMut(&SweepRow),
) -> Result<SweepReport> {
    let p = params.get();
    let mut quantized = |i: usize| -> Result<QuantModel> {
        let qp = QuantParams {
            scheme: p.schemes[i],
            ..p.quant.clone()
        }
        .check()?;
        quantize(float, config, calib, &qp)
    };
    let mut report = |row: &SweepRow, _: Option<&QuantModel>| -> Result<()> {
        progress(row);
        Ok(())
    };
    let calib_images = if calib.elem_count() > 0 { calib.dim(0)? } else { 0 };
    sweep_models(
        float,
        data,
        attacks,
        params,
        calib_images,
        &mut quantized,
        &mut report,
    )
}

/// Which images each attack group broke, gathered from [`evaluate_with`]'s batches.
struct GroupTally<'g> {
    groups: &'g [AttackGroup],
    /// `broken[group][image]`.
    broken: Vec<Vec<bool>>,
}

impl<'g> GroupTally<'g> {
    fn new(groups: &'g [AttackGroup], n: usize) -> Self {
        GroupTally {
            groups,
            broken: vec![vec![false; n]; groups.len()],
        }
    }

    fn observe(&mut self, b: &AdversarialBatch<'_>) {
        for (g, group) in self.groups.iter().enumerate() {
            if group.members.iter().any(|m| m == b.name) {
                for (row, &i) in b.indices.iter().enumerate() {
                    self.broken[g][i] |= b.broken[row];
                }
            }
        }
    }

    /// Robust accuracy per group: correct on the clean image, broken by no member.
    fn accuracies(&self, clean_ok: &[bool]) -> BTreeMap<String, f64> {
        self.groups
            .iter()
            .zip(&self.broken)
            .map(|(g, broken)| {
                let ok: Vec<bool> = broken.iter().map(|b| !b).collect();
                (g.name.clone(), robust_fraction(clean_ok, &ok))
            })
            .collect()
    }
}

/// [`sweep`] with the quantized models made by the caller: `quantized(i)` returns the model
/// of row `i + 1`, at width `params.schemes[i]` (round to nearest, GPFQ, or weights trained
/// through the quantizer); its label is the width's, or `ptq` for pruning ternary
/// quantization. `progress` receives each finished row with its quantized model (to save
/// it, for example); `calib_images` is only recorded.
pub fn sweep_models(
    float: &dyn Classifier,
    data: &Dataset,
    attacks: &[(String, Box<dyn Attack>)],
    params: &ValidSweepParams,
    calib_images: usize,
    quantized: &mut dyn FnMut(usize) -> Result<QuantModel>,
    progress: &mut dyn FnMut(&SweepRow, Option<&QuantModel>) -> Result<()>,
) -> Result<SweepReport> {
    let p = params.get();
    for g in &p.groups {
        if let Some(m) = g.members.iter().find(|m| !attacks.iter().any(|(n, _)| n == *m)) {
            return Err(param(
                "attacks",
                format!("group '{}' names '{m}', which is not in the attack list", g.name),
            ));
        }
    }
    let batch = p.batch_size;
    let labels = data.labels();
    let float_size = float_bytes(float)?;
    let eval_params = EvalParams {
        batch_size: batch,
        masking: None,
        ..EvalParams::new(p.threat.norm, p.threat.eps)
    }
    .check()?;
    let correct = |model: &dyn Classifier| -> Result<Vec<bool>> {
        let pred = eval::predict_dataset(model, data, batch)?;
        Ok(pred.iter().zip(labels).map(|(a, b)| a == b).collect())
    };

    // The float model's adversarial examples, per attack, batch by batch on the host.
    let mut sources: Vec<Vec<Tensor>> = attacks.iter().map(|_| Vec::new()).collect();
    let mut tally = GroupTally::new(&p.groups, data.len());
    let mut keep = |b: AdversarialBatch<'_>| -> temper_eval::Result<()> {
        tally.observe(&b);
        sources[b.attack].push(b.images.to_device(&Device::Cpu)?);
        Ok(())
    };
    let e = evaluate_with(float, data, attacks, &eval_params, float.device(), &mut keep)?;
    let mut float_row = SweepRow {
        label: "float".into(),
        scheme: None,
        bits: 32.0,
        clean: e.clean.accuracy.accuracy,
        robust: BTreeMap::new(),
        transfer: BTreeMap::new(),
        groups: tally.accuracies(&correct(float)?),
        worst_case: e.worst_case.as_ref().map(|w| w.accuracy.accuracy),
        quantization: None,
        file_bytes: float_size,
        ratio: 1.0,
    };
    for r in &e.attacks {
        float_row.robust.insert(r.name.clone(), r.robust.accuracy);
        // The float model is the transfer source: its transfer accuracy is its own.
        float_row.transfer.insert(r.name.clone(), r.robust.accuracy);
    }
    progress(&float_row, None)?;
    let mut rows = vec![float_row];

    for (i, &scheme) in p.schemes.iter().enumerate() {
        let q = quantized(i)?;
        let mut tally = GroupTally::new(&p.groups, data.len());
        let mut sink = |b: AdversarialBatch<'_>| -> temper_eval::Result<()> {
            tally.observe(&b);
            Ok(())
        };
        let e = evaluate_with(&q, data, attacks, &eval_params, q.device(), &mut sink)?;
        let q_ok = correct(&q)?;
        let bytes = to_bytes(&q)?.len() as u64;
        let info = q.quant_info();
        let label = match info.method {
            Method::PrunedTernary { .. } => "ptq".to_string(),
            _ => scheme.label(),
        };
        let mut row = SweepRow {
            label,
            scheme: Some(scheme),
            bits: scheme.effective_bits(),
            clean: e.clean.accuracy.accuracy,
            robust: BTreeMap::new(),
            transfer: BTreeMap::new(),
            groups: tally.accuracies(&q_ok),
            worst_case: e.worst_case.as_ref().map(|w| w.accuracy.accuracy),
            quantization: Some(info.describe()),
            file_bytes: bytes,
            ratio: float_size as f64 / bytes.max(1) as f64,
        };
        for (r, advs) in e.attacks.iter().zip(&sources) {
            row.robust.insert(r.name.clone(), r.robust.accuracy);
            let t = replay(&q, advs, labels, batch)?;
            row.transfer.insert(r.name.clone(), robust_fraction(&q_ok, &t));
        }
        progress(&row, Some(&q))?;
        rows.push(row);
    }
    Ok(SweepReport {
        model: float.info().name.clone(),
        dataset: data.name().to_string(),
        images: data.len(),
        calib_images,
        method: p.quant.method.name().to_string(),
        granularity: p.quant.granularity,
        first_last_bits: p.quant.first_last_bits,
        act: p.quant.act,
        attacks: attacks
            .iter()
            .map(|(n, a)| format!("{n}: {}", a.name()))
            .collect(),
        threat: p.threat,
        groups: p.groups.clone(),
        rows,
    })
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / f64::from(1u32 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

impl SweepReport {
    fn attack_names(&self) -> Vec<String> {
        self.rows
            .first()
            .map(|r| r.robust.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn group_names(&self) -> Vec<String> {
        self.rows
            .first()
            .map(|r| r.groups.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn settings(&self) -> String {
        let method = match self.method.as_str() {
            "gpfq" => "GPFQ",
            _ => "round to nearest",
        };
        let edges = match self.first_last_bits {
            Some(b) => format!("first and last layer at {b} bits"),
            None => "all layers at the row's width".into(),
        };
        let act = match &self.act {
            Some(a) => format!("activations {} bits ({:?})", a.bits, a.calibration),
            None => "float activations".into(),
        };
        format!(
            "{method}, {} steps, {edges}, {act}, {} calibration images",
            self.granularity.name().replace('_', "-"),
            self.calib_images
        )
    }

    /// The table as Markdown.
    pub fn to_markdown(&self) -> String {
        let names = self.attack_names();
        let mut s = format!(
            "# Quantization sweep: {} on {} ({} images)\n\n{}.\n\nAttacks: {}; threat model {}.\n\n",
            self.model,
            self.dataset,
            self.images,
            self.settings(),
            self.attacks.join("; "),
            self.threat.describe()
        );
        s.push_str(
            "Robust accuracy counts images classified correctly both clean and attacked, an \
             adversarial example counting only inside the threat model; misclassified images \
             are not attacked. *Through* runs the attack on the quantized model itself (straight-through \
             gradients for rounded activations); *transfer* replays the adversarial images \
             crafted on the float model.\n\n",
        );
        let groups = self.group_names();
        s.push_str("| weights | bits | clean |");
        for n in &names {
            s.push_str(&format!(" {n} through | {n} transfer |"));
        }
        for g in &groups {
            s.push_str(&format!(" {g} (worst case) through |"));
        }
        s.push_str(" file | ratio |\n|---|---:|---:|");
        for _ in &names {
            s.push_str("---:|---:|");
        }
        for _ in &groups {
            s.push_str("---:|");
        }
        s.push_str("---:|---:|\n");
        let pct = |v: f64| format!("{:.2}%", 100.0 * v);
        for r in &self.rows {
            s.push_str(&format!("| {} | {:.2} | {} |", r.label, r.bits, pct(r.clean)));
            for n in &names {
                let t = if r.scheme.is_none() {
                    "(source)".to_string()
                } else {
                    r.transfer.get(n).map_or("-".into(), |v| pct(*v))
                };
                s.push_str(&format!(
                    " {} | {t} |",
                    r.robust.get(n).map_or("-".into(), |v| pct(*v))
                ));
            }
            for g in &groups {
                s.push_str(&format!(" {} |", r.groups.get(g).map_or("-".into(), |v| pct(*v))));
            }
            s.push_str(&format!(" {} | {:.2}x |\n", human_bytes(r.file_bytes), r.ratio));
        }
        s
    }

    /// The chart: accuracies against bits per weight (float as dashed reference levels) and
    /// the compression ratio.
    pub fn figure(&self) -> Figure {
        let quant: Vec<&SweepRow> = self.rows.iter().filter(|r| r.scheme.is_some()).collect();
        let xs = || quant.iter().map(|r| r.bits);
        let (x0, x1) = xs().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let line = |name: String, f: &dyn Fn(&SweepRow) -> Option<f64>| Series {
            name,
            points: quant
                .iter()
                .filter_map(|r| f(r).map(|v| (r.bits, 100.0 * v)))
                .collect(),
            markers: true,
        };
        let mut series = vec![line("clean".into(), &|r| Some(r.clean))];
        for n in self.attack_names() {
            series.push(line(format!("{n} through quantizer"), &|r| {
                r.robust.get(&n).copied()
            }));
            series.push(line(format!("{n} transfer from float"), &|r| {
                r.transfer.get(&n).copied()
            }));
        }
        if let Some(f) = self.rows.iter().find(|r| r.scheme.is_none()) {
            series.push(Series {
                name: "float clean".into(),
                points: vec![(x0, 100.0 * f.clean), (x1, 100.0 * f.clean)],
                markers: false,
            });
            for (n, v) in &f.robust {
                series.push(Series {
                    name: format!("float {n}"),
                    points: vec![(x0, 100.0 * v), (x1, 100.0 * v)],
                    markers: false,
                });
            }
        }
        let ratio = Series {
            name: "float size / quantized size".into(),
            points: quant.iter().map(|r| (r.bits, r.ratio)).collect(),
            markers: true,
        };
        Figure {
            title: format!("Quantization sweep: {} on {}", self.model, self.dataset),
            panels: vec![
                Panel {
                    title: "Accuracy vs weight bits".into(),
                    x_label: "bits per weight (ternary = 1.58)".into(),
                    y_label: "accuracy (%)".into(),
                    series,
                    y_range: Some((0.0, 102.0)),
                    legend: LegendPosition::LowerRight,
                },
                Panel {
                    title: "Compression".into(),
                    x_label: "bits per weight (ternary = 1.58)".into(),
                    y_label: "compression ratio (x)".into(),
                    series: vec![ratio],
                    y_range: None,
                    legend: LegendPosition::UpperRight,
                },
            ],
            columns: 2,
            panel_size: (820, 560),
        }
    }

    /// Writes `sweep.json`, `sweep.md` and `sweep.png` into `dir` (created if needed),
    /// atomically, and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::Io {
            op: "cannot create",
            path: dir.to_path_buf(),
            source: e,
        })?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| param("report", e.to_string()))?;
        let paths = [
            dir.join("sweep.json"),
            dir.join("sweep.md"),
            dir.join("sweep.png"),
        ];
        temper_core::fsutil::write_atomic(&paths[0], &json)?;
        temper_core::fsutil::write_atomic(&paths[1], self.to_markdown().as_bytes())?;
        self.figure().save(&paths[2])?;
        Ok(paths.to_vec())
    }
}
