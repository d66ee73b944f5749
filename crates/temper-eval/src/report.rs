//! The evaluation report: JSON (schema `temper.eval.v1`, every field documented in
//! `docs/eval-report.md`), a Markdown summary, a plain-text table for terminals, and the
//! robust-accuracy-vs-eps chart.

use crate::chart;
use crate::evaluate::Evaluation;
use crate::masking::{sweep_flags, MaskingFlag, MaskingParams};
use crate::metrics::{Accuracy, ConfusionMatrix, CostSummary};
use crate::sweep::Sweep;
use crate::threat::fmt_eps;
use crate::{Error, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The schema name every report carries; a reader refuses any other.
pub const SCHEMA: &str = "temper.eval.v1";

/// The model that was evaluated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSection {
    /// Zoo name, e.g. `small-cnn`.
    pub name: String,
    /// Number of outputs.
    pub num_classes: usize,
    /// Input `[C, H, W]`.
    pub input_shape: [usize; 3],
    /// Trainable parameters.
    pub parameters: usize,
    /// The weight file, `None` for a freshly initialised model.
    pub weights: Option<String>,
    /// How the model was quantized (e.g. `gpfq 4-bit, per-channel, first/last 8-bit, weights
    /// only`), `None` for a float model. Set by the caller: this crate knows no quantizer.
    #[serde(default)]
    pub quantization: Option<String>,
}

impl ModelSection {
    /// Describes `model`, loaded from `weights` if given.
    pub fn of(model: &dyn temper_core::Classifier, weights: Option<&Path>) -> Self {
        let info = model.info();
        ModelSection {
            name: info.name.clone(),
            num_classes: info.num_classes,
            input_shape: info.input_shape,
            parameters: model.params().num_trainable(),
            weights: weights.map(|w| w.display().to_string()),
            quantization: None,
        }
    }
}

/// The data the model was evaluated on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSection {
    /// Data set name with its split, e.g. `mnist10k/test`.
    pub name: String,
    /// Samples evaluated.
    pub samples: usize,
    /// Image shape `[C, H, W]`.
    pub shape: [usize; 3],
}

impl DatasetSection {
    /// Describes `data`.
    pub fn of(data: &temper_data::Dataset) -> Self {
        DatasetSection {
            name: data.name().to_string(),
            samples: data.len(),
            shape: data.shape(),
        }
    }
}

/// How the evaluation was run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSection {
    /// The global seed of every random choice.
    pub seed: u64,
    /// The device, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// The program and version that wrote the report, e.g. `temper-eval 0.1.0`.
    pub generator: String,
    /// The command line, when the report came from one.
    pub command: Option<String>,
}

impl RunSection {
    /// The current global seed, `device`, this crate's version, and `command`.
    pub fn new(device: &str, command: Option<String>) -> Self {
        RunSection {
            seed: temper_core::seed::seed(),
            device: device.to_string(),
            generator: format!("temper-eval {}", env!("CARGO_PKG_VERSION")),
            command,
        }
    }
}

/// A masking flag with its message, as the report stores it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlagEntry {
    /// The flag: its `kind` and numbers.
    #[serde(flatten)]
    pub flag: MaskingFlag,
    /// The explanation for people.
    pub message: String,
}

impl From<MaskingFlag> for FlagEntry {
    fn from(flag: MaskingFlag) -> Self {
        FlagEntry {
            message: flag.message(),
            flag,
        }
    }
}

/// A complete evaluation report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The model.
    pub model: ModelSection,
    /// The data.
    pub dataset: DatasetSection,
    /// Seed, device, generator and command.
    pub run: RunSection,
    /// Clean, per-attack and worst-case results and the masking checks.
    pub evaluation: Evaluation,
    /// Eps sweeps, one per swept attack.
    pub sweeps: Vec<Sweep>,
    /// Gradient-masking warnings from the checks and the sweeps.
    pub flags: Vec<FlagEntry>,
}

/// The files [`Report::write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `robust_vs_eps.png`, when there were sweeps.
    pub chart: Option<PathBuf>,
}

impl Report {
    /// Assembles a report and collects the flags of the evaluation and of every sweep (the
    /// sweeps use the evaluation's masking tolerance, or the default one).
    pub fn new(
        model: ModelSection,
        dataset: DatasetSection,
        run: RunSection,
        evaluation: Evaluation,
        sweeps: Vec<Sweep>,
    ) -> Self {
        let tolerance = evaluation
            .masking
            .as_ref()
            .map_or(MaskingParams::default().tolerance, |m| m.tolerance);
        let mut flags: Vec<FlagEntry> = evaluation.flags().into_iter().map(FlagEntry::from).collect();
        flags.extend(
            sweeps
                .iter()
                .flat_map(|s| sweep_flags(s, tolerance))
                .map(FlagEntry::from),
        );
        Report {
            schema: SCHEMA.to_string(),
            model,
            dataset,
            run,
            evaluation,
            sweeps,
            flags,
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::BadReport {
            what: "report".into(),
            expected: SCHEMA,
            reason: e.to_string(),
        })
    }

    /// Reads a report from JSON text, refusing any other schema. `what` names the source in
    /// errors.
    pub fn from_json(text: &str, what: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadReport {
            what: what.to_string(),
            expected: SCHEMA,
            reason,
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        match value.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => return Err(bad(format!("its schema is '{other}'"))),
            None => return Err(bad("it has no `schema` field".into())),
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }

    /// Reads `report.json` (or any report file).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Writes `report.json`, `report.md` and, when there are sweeps, `robust_vs_eps.png` into
    /// `dir` (created if needed), each atomically.
    pub fn write(&self, dir: &Path) -> Result<ReportFiles> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let json = dir.join("report.json");
        temper_core::fsutil::write_atomic(&json, self.to_json()?.as_bytes())?;
        let markdown = dir.join("report.md");
        temper_core::fsutil::write_atomic(&markdown, self.to_markdown().as_bytes())?;
        let chart = if self.sweeps.is_empty() {
            None
        } else {
            let path = dir.join("robust_vs_eps.png");
            chart::robust_vs_eps(&self.sweeps, &self.model.name).save(&path)?;
            Some(path)
        };
        Ok(ReportFiles {
            json,
            markdown,
            chart,
        })
    }

    /// The headline table for a terminal: clean, each attack, worst case, cost, flags.
    pub fn to_text(&self) -> String {
        let e = &self.evaluation;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model:   {} ({} parameters)",
            self.model.name, self.model.parameters
        );
        if let Some(q) = &self.model.quantization {
            let _ = writeln!(s, "         quantized: {q}");
        }
        let _ = writeln!(
            s,
            "data:    {} ({} images)",
            self.dataset.name, self.dataset.samples
        );
        let _ = writeln!(s, "threat:  {}", e.threat.describe());
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<16} {:>9} {:>11} {:>9} {:>9} {:>9} {:>10} {:>9}",
            "", "accuracy", "", "success", "mean ‖δ‖∞", "mean ‖δ‖₂", "fwd+bwd", "seconds"
        );
        let acc = |a: &Accuracy| format!("{:>8.2}%", a.percent());
        let frac = |a: &Accuracy| format!("({}/{})", a.correct, a.total);
        let _ = writeln!(
            s,
            "{:<16} {} {:>11}",
            "clean",
            acc(&e.clean.accuracy),
            frac(&e.clean.accuracy)
        );
        for a in &e.attacks {
            let _ = writeln!(
                s,
                "{:<16} {} {:>11} {:>8.2}% {:>9.4} {:>9.4} {:>10} {:>9.1}",
                a.name,
                acc(&a.robust),
                frac(&a.robust),
                100.0 * a.success_rate,
                a.perturbation.linf_mean,
                a.perturbation.l2_mean,
                a.cost.forward + a.cost.backward,
                a.cost.seconds
            );
        }
        if let Some(w) = &e.worst_case {
            let _ = writeln!(
                s,
                "{:<16} {} {:>11} {:>9} {:>9} {:>9} {:>10}",
                "worst case",
                acc(&w.accuracy),
                frac(&w.accuracy),
                "",
                "",
                "",
                w.forward + w.backward
            );
        }
        for sw in &self.sweeps {
            let _ = writeln!(s);
            let _ = writeln!(s, "eps sweep of {} ({}):", sw.attack, sw.norm.name());
            for p in &sw.points {
                let _ = writeln!(s, "  eps {:>8}  robust {}", fmt_eps(p.eps), acc(&p.robust));
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "cost:    {}", cost_line(&e.cost));
        if let Some(m) = &e.masking {
            let _ = writeln!(
                s,
                "masking checks on {} samples: {}",
                m.samples,
                if self.flags.is_empty() {
                    "no warning"
                } else {
                    "see warnings"
                }
            );
        }
        for f in &self.flags {
            let _ = writeln!(s, "WARNING: possible gradient masking: {}", f.message);
        }
        s
    }

    /// The Markdown summary a person reads: headline table, warnings, per-class accuracy,
    /// confusion matrices, sweeps, masking checks and cost.
    pub fn to_markdown(&self) -> String {
        let e = &self.evaluation;
        let mut s = String::new();
        let _ = writeln!(s, "# Robustness evaluation of {}\n", self.model.name);
        let _ = writeln!(
            s,
            "- Model: `{}` ({} classes, input {:?}, {} parameters), weights: {}",
            self.model.name,
            self.model.num_classes,
            self.model.input_shape,
            self.model.parameters,
            self.model
                .weights
                .as_deref()
                .map_or("none (random initialisation)".to_string(), |w| format!("`{w}`"))
        );
        if let Some(q) = &self.model.quantization {
            let _ = writeln!(
                s,
                "- Quantized: {q}; attacks run through the quantizer (straight-through gradients)"
            );
        }
        let _ = writeln!(
            s,
            "- Data: `{}`, {} images",
            self.dataset.name, self.dataset.samples
        );
        let _ = writeln!(s, "- Threat model: {}", e.threat.describe());
        let _ = writeln!(
            s,
            "- Seed {}, device `{}`, {}",
            self.run.seed, self.run.device, self.run.generator
        );
        if let Some(c) = &self.run.command {
            let _ = writeln!(s, "- Command: `{c}`");
        }
        let _ = writeln!(s);
        if !self.flags.is_empty() {
            let _ = writeln!(s, "## Warnings: possible gradient masking\n");
            let _ = writeln!(
                s,
                "The robust accuracies below may overestimate the model's robustness:\n"
            );
            for f in &self.flags {
                let _ = writeln!(s, "- **{}**: {}", f.flag.code(), f.message);
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## Accuracy\n");
        let _ = writeln!(
            s,
            "| | accuracy | correct | attack success | mean ‖δ‖∞ | max ‖δ‖∞ | mean ‖δ‖₂ | max ‖δ‖₂ | forward | backward | seconds | images/s |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let a = &e.clean.accuracy;
        let _ = writeln!(
            s,
            "| clean | {:.2}% | {}/{} | | | | | | | | | |",
            a.percent(),
            a.correct,
            a.total
        );
        for r in &e.attacks {
            let p = &r.perturbation;
            let _ = writeln!(
                s,
                "| {} | {:.2}% | {}/{} | {:.2}% | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {:.1} | {:.0} |",
                r.name,
                r.robust.percent(),
                r.robust.correct,
                r.robust.total,
                100.0 * r.success_rate,
                p.linf_mean,
                p.linf_max,
                p.l2_mean,
                p.l2_max,
                r.cost.forward,
                r.cost.backward,
                r.cost.seconds,
                r.cost.images_per_second
            );
        }
        if let Some(w) = &e.worst_case {
            let a = &w.accuracy;
            let _ = writeln!(
                s,
                "| **worst case** | **{:.2}%** | {}/{} | | | | | | {} | {} | | |",
                a.percent(),
                a.correct,
                a.total,
                w.forward,
                w.backward
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Robust accuracy counts a sample when it is classified correctly and the attack finds \
             no adversarial example inside the threat model. {}\n",
            if e.cascade {
                "The attacks ran as AutoAttack's cascade: each only on the samples the attacks \
                 before it left robust, so each row is the robust accuracy after that attack (the \
                 last is the worst case), and its perturbation sizes and passes are over the \
                 samples it attacked."
            } else {
                "Perturbation sizes are over the attacked (clean-correct) samples. The worst case \
                 runs each attack only on the samples the attacks before it left correct \
                 (AutoAttack-style); its pass counts are for that cascade alone."
            }
        );
        if e.attacks.iter().any(|r| r.outside_threat > 0) {
            for r in e.attacks.iter().filter(|r| r.outside_threat > 0) {
                let _ = writeln!(
                    s,
                    "- {}: {} adversarial examples lay outside the threat model and were not counted.",
                    r.name, r.outside_threat
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "### Attacks\n");
        for r in &e.attacks {
            let eps = r.eps.map_or("minimum-norm".to_string(), fmt_eps);
            let _ = writeln!(
                s,
                "- `{}`: {} ({}, eps {eps})",
                r.name,
                r.description,
                r.norm.name()
            );
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "## Per-class accuracy\n");
        let mut head = "| class | clean |".to_string();
        let mut rule = "|---|---:|".to_string();
        for r in &e.attacks {
            let _ = write!(head, " {} |", r.name);
            rule.push_str("---:|");
        }
        if e.worst_case.is_some() {
            head.push_str(" worst case |");
            rule.push_str("---:|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for (c, name) in e.classes.iter().enumerate() {
            let clean = &e.clean.per_class[c];
            if clean.total == 0 {
                continue;
            }
            let _ = write!(s, "| {name} | {:.1}% |", clean.percent());
            for r in &e.attacks {
                let _ = write!(s, " {:.1}% |", r.per_class[c].percent());
            }
            if let Some(w) = &e.worst_case {
                let _ = write!(s, " {:.1}% |", w.per_class[c].percent());
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "## Confusion matrix, clean\n");
        confusion_md(&mut s, &e.clean.confusion, &e.classes);
        if let Some(w) = &e.worst_case {
            let _ = writeln!(s, "## Confusion matrix, worst case\n");
            confusion_md(&mut s, &w.confusion, &e.classes);
        }

        if !self.sweeps.is_empty() {
            let _ = writeln!(s, "## Robust accuracy vs eps\n");
            let _ = writeln!(s, "![robust accuracy vs eps](robust_vs_eps.png)\n");
            let mut head = "| eps |".to_string();
            let mut rule = "|---:|".to_string();
            for sw in &self.sweeps {
                let _ = write!(head, " {} ({}) |", sw.attack, sw.norm.name());
                rule.push_str("---:|");
            }
            let _ = writeln!(s, "{head}\n{rule}");
            let mut all_eps: Vec<f64> = self
                .sweeps
                .iter()
                .flat_map(|sw| sw.points.iter().map(|p| p.eps))
                .collect();
            all_eps.sort_by(f64::total_cmp);
            all_eps.dedup();
            for eps in all_eps {
                let _ = write!(s, "| {} |", fmt_eps(eps));
                for sw in &self.sweeps {
                    match sw.points.iter().find(|p| p.eps == eps) {
                        Some(p) => {
                            let _ = write!(s, " {:.2}% |", p.robust.percent());
                        }
                        None => s.push_str(" |"),
                    }
                }
                let _ = writeln!(s);
            }
            let _ = writeln!(s);
            for sw in &self.sweeps {
                let _ = writeln!(
                    s,
                    "- `{}`: {}; {}",
                    sw.attack,
                    sw.description,
                    cost_line(&sw.cost)
                );
            }
            let _ = writeln!(s);
        }

        if let Some(m) = &e.masking {
            let _ = writeln!(s, "## Gradient-masking checks\n");
            let _ = writeln!(
                s,
                "On the first {} samples, with a tolerance of {:.1} points:\n",
                m.samples,
                100.0 * m.tolerance
            );
            let g = &m.gradient;
            let _ = writeln!(
                s,
                "- Input gradients: {} of {} all zero, {} not finite.",
                g.zero, g.samples, g.nonfinite
            );
            let _ = writeln!(
                s,
                "- PGD-{}: {:.2}% robust; PGD-{}: {:.2}% robust (more steps must not help the model).",
                m.steps.steps,
                m.steps.robust.percent(),
                m.steps.more_steps,
                m.steps.robust_more_steps.percent()
            );
            let _ = write!(
                s,
                "- Uniform noise in the eps ball ({} draws): {:.2}% accurate; attacks on the same samples:",
                m.noise.draws,
                m.noise.robust_noise.percent()
            );
            for a in &m.noise.attacks {
                let _ = write!(s, " {} {:.2}%;", a.attack, a.robust.percent());
            }
            let _ = writeln!(s, " (noise must not beat an attack).");
            let l = &m.large_eps;
            let _ = writeln!(
                s,
                "- PGD-{} at {} eps {}: {:.2}% robust, success on {}/{} samples (clean accuracy {:.2}%; should reach 0% robust).",
                m.steps.steps,
                l.norm.name(),
                fmt_eps(l.eps),
                l.robust.percent(),
                l.successes.correct,
                l.successes.total,
                l.clean.percent()
            );
            let o = &m.outputs;
            let _ = writeln!(
                s,
                "- Outputs ({} samples, {} classes): {} differ between two clean passes (a randomized model needs EOT); {} (AutoAttack's checks).",
                o.samples,
                o.classes,
                o.randomized,
                if o.probabilities {
                    "probabilities, not logits"
                } else {
                    "logits"
                }
            );
            let _ = writeln!(s, "- Cost of the checks: {}.", cost_line(&m.cost));
            let _ = writeln!(
                s,
                "- Result: {}.\n",
                if m.flags().is_empty() {
                    "no symptom found"
                } else {
                    "see the warnings above"
                }
            );
        }
        let _ = writeln!(s, "## Cost\n");
        let _ = writeln!(s, "Everything together: {}.", cost_line(&e.cost));
        s
    }
}

fn cost_line(c: &CostSummary) -> String {
    let queries = if c.queries > 0 {
        format!(" (of which {} black-box queries)", c.queries)
    } else {
        String::new()
    };
    format!(
        "{} forward{queries} + {} backward image passes, {:.1} s, {:.0} images/s",
        c.forward, c.backward, c.seconds, c.images_per_second
    )
}

/// A confusion matrix as a Markdown table, rows true classes, columns predictions.
fn confusion_md(s: &mut String, m: &ConfusionMatrix, classes: &[String]) {
    let _ = write!(s, "| true \\ predicted |");
    for c in classes {
        let _ = write!(s, " {c} |");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|{}", "---:|".repeat(classes.len()));
    for (t, row) in m.counts.iter().enumerate() {
        if row.iter().all(|&v| v == 0) {
            continue;
        }
        let _ = write!(s, "| {} |", classes.get(t).map_or("?", String::as_str));
        for (p, v) in row.iter().enumerate() {
            if p == t {
                let _ = write!(s, " **{v}** |");
            } else {
                let _ = write!(s, " {v} |");
            }
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s);
}
