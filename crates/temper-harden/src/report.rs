//! The pipeline's report: harden.json (schema [`SCHEMA`]), harden.md, matrix.png (the
//! robustness x bit-width heat map) and sweep.png (accuracy and compression against bits).

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use temper_eval::chart::HeatMap;
use temper_quant::sweep::{SweepReport, SweepRow};
use temper_train::TrainReport;

/// The `schema` of harden.json.
pub const SCHEMA: &str = "temper.harden.v1";

/// A model file the pipeline wrote or used.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelFile {
    /// The matrix row: `float` for the fine-tuned float model, else the grid.
    pub label: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes (for packed files, as exported).
    pub bytes: u64,
}

/// Everything the pipeline did and measured; the content of harden.json.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HardenReport {
    /// [`SCHEMA`].
    pub schema: String,
    /// The architecture's name.
    pub model: String,
    /// The pre-trained checkpoint it started from.
    pub weights: PathBuf,
    /// The adversarial fine-tuning run.
    pub finetune: TrainReport,
    /// How each grid's model was made.
    pub quantization: String,
    /// The quantization-aware runs, one per grid (empty for post-training quantization).
    pub qat: Vec<TrainReport>,
    /// The matrix: the fine-tuned float model, then one row per grid.
    pub matrix: SweepReport,
    /// The model files, float first.
    pub models: Vec<ModelFile>,
    /// Wall-clock seconds of the whole pipeline (reused runs count as they were read).
    pub seconds: f64,
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

impl HardenReport {
    /// Assembles the report.
    #[allow(clippy::too_many_arguments)] // One call site, each argument a different part.
    pub fn new(
        model: String,
        weights: PathBuf,
        finetune: TrainReport,
        quantization: String,
        qat: Vec<TrainReport>,
        matrix: SweepReport,
        models: Vec<ModelFile>,
        seconds: f64,
    ) -> Self {
        HardenReport {
            schema: SCHEMA.to_string(),
            model,
            weights,
            finetune,
            quantization,
            qat,
            matrix,
            models,
            seconds,
        }
    }

    /// The matrix's columns: `clean`, each attack not in a group, each group (its worst
    /// case), and the worst case over every attack when there is more than one column of
    /// attacks.
    pub fn columns(&self) -> Vec<String> {
        let Some(first) = self.matrix.rows.first() else {
            return vec!["clean".into()];
        };
        let in_group = |name: &str| {
            self.matrix
                .groups
                .iter()
                .any(|g| g.members.iter().any(|m| m == name))
        };
        let mut cols = vec!["clean".to_string()];
        cols.extend(first.robust.keys().filter(|n| !in_group(n)).cloned());
        cols.extend(first.groups.keys().cloned());
        if cols.len() > 2 {
            cols.push("worst case".into());
        }
        cols
    }

    /// One row's value in a column of [`HardenReport::columns`].
    fn cell(row: &SweepRow, column: &str) -> Option<f64> {
        match column {
            "clean" => Some(row.clean),
            "worst case" => row.worst_case,
            c => row.groups.get(c).or_else(|| row.robust.get(c)).copied(),
        }
    }

    fn row_label(row: &SweepRow) -> String {
        if row.scheme.is_none() {
            "float (fine-tuned)".into()
        } else {
            row.label.clone()
        }
    }

    /// The report as Markdown: the matrix, the model files, the fine-tuning, then the full
    /// sweep table (every attack, through the quantizer and transferred from float).
    pub fn to_markdown(&self) -> String {
        let m = &self.matrix;
        let cols = self.columns();
        let mut s = format!(
            "# Hardening {} on {}\n\nFrom `{}`: adversarial fine-tuning ({} iterations, validation clean {}, PGD-10 {}), \
             then quantization: {}.\n\nRobustness on {} test images, threat model {}; attacks run *through* each \
             quantized model (straight-through gradients). A group's column (e.g. `autoattack`) counts an image \
             only if none of its attacks broke it; *worst case* is over every attack.\n\n",
            self.model,
            m.dataset,
            self.weights.display(),
            self.finetune.iters,
            self.finetune.val_clean.map_or("-".into(), pct),
            self.finetune.val_robust.map_or("-".into(), pct),
            self.quantization,
            m.images,
            m.threat.describe(),
        );
        s.push_str("| model | bits |");
        for c in &cols {
            s.push_str(&format!(" {c} |"));
        }
        s.push_str(" file | ratio |\n|---|---:|");
        for _ in &cols {
            s.push_str("---:|");
        }
        s.push_str("---:|---:|\n");
        for r in &m.rows {
            s.push_str(&format!("| {} | {:.2} |", Self::row_label(r), r.bits));
            for c in &cols {
                s.push_str(&format!(" {} |", Self::cell(r, c).map_or("-".into(), pct)));
            }
            s.push_str(&format!(" {} B | {:.2}x |\n", r.file_bytes, r.ratio));
        }
        s.push_str("\n## Model files\n\n");
        for f in &self.models {
            s.push_str(&format!(
                "- {}: `{}` ({} bytes)\n",
                f.label,
                f.path.display(),
                f.bytes
            ));
        }
        s.push_str(&format!(
            "\n## Cost\n\nFine-tuning: {} forward + {} backward image passes, {:.0} s.",
            self.finetune.cost.forward, self.finetune.cost.backward, self.finetune.cost.wall_seconds
        ));
        for r in &self.qat {
            s.push_str(&format!(
                " Quantization-aware run {}: {} + {} passes, {:.0} s.",
                r.run_dir.display(),
                r.cost.forward,
                r.cost.backward,
                r.cost.wall_seconds
            ));
        }
        s.push_str(&format!(
            " Whole pipeline: {:.0} s.\n\n## Details\n\n",
            self.seconds
        ));
        // The sweep's own table, one heading level down.
        s.push_str(&m.to_markdown().replacen("# ", "### ", 1));
        s
    }

    /// The matrix as a heat map.
    pub fn heat_map(&self) -> HeatMap {
        let cols = self.columns();
        let m = &self.matrix;
        HeatMap {
            title: format!("Robustness x bit width: {} on {}", self.model, m.dataset),
            subtitle: format!(
                "{} test images, {}, attacks through each quantizer; {}",
                m.images,
                m.threat.describe(),
                if self.qat.is_empty() {
                    "quantized after fine-tuning".to_string()
                } else {
                    format!(
                        "quantization-aware fine-tuning per grid ({} iterations each)",
                        self.qat[0].iters
                    )
                }
            ),
            rows: m
                .rows
                .iter()
                .map(|r| format!("{} ({:.1}x)", Self::row_label(r), r.ratio))
                .collect(),
            columns: cols.clone(),
            values: m
                .rows
                .iter()
                .map(|r| cols.iter().map(|c| Self::cell(r, c).map(|v| 100.0 * v)).collect())
                .collect(),
        }
    }

    /// Writes harden.json, harden.md, matrix.png and sweep.png into `dir`, each atomically,
    /// and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::param("report", e.to_string()))?;
        let paths = [
            dir.join("harden.json"),
            dir.join("harden.md"),
            dir.join("matrix.png"),
            dir.join("sweep.png"),
        ];
        temper_core::fsutil::write_atomic(&paths[0], &json)?;
        temper_core::fsutil::write_atomic(&paths[1], self.to_markdown().as_bytes())?;
        self.heat_map().save(&paths[2])?;
        self.matrix.figure().save(&paths[3])?;
        Ok(paths.to_vec())
    }
}
