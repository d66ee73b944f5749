//! Reading a training run's `metrics.jsonl`.
//!
//! Each line is one JSON object. Training lines,
//! `{"kind":"train","epoch":1.5,"iter":120,"loss":0.31,"acc":0.91,"lr":0.01}`, and validation
//! lines, `{"kind":"val","epoch":2.0,"iter":160,"clean_acc":0.98,"robust_acc":0.71,"loss":0.12}`
//! (`robust_acc` may be absent or null), are read; unknown keys and unknown kinds are
//! skipped, so the trainer can log more without breaking this reader.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// One training line.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainPoint {
    /// Fractional epoch.
    pub epoch: f64,
    /// Iteration, if logged.
    #[serde(default)]
    pub iter: Option<u64>,
    /// Training loss.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Training accuracy (on the inputs trained on, adversarial ones in adversarial training).
    #[serde(default)]
    pub acc: Option<f64>,
    /// Learning rate.
    #[serde(default)]
    pub lr: Option<f64>,
}

/// One validation line.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValPoint {
    /// Fractional epoch.
    pub epoch: f64,
    /// Iteration, if logged.
    #[serde(default)]
    pub iter: Option<u64>,
    /// Clean validation accuracy.
    #[serde(default)]
    pub clean_acc: Option<f64>,
    /// Robust validation accuracy, when the run measured it.
    #[serde(default)]
    pub robust_acc: Option<f64>,
    /// Validation loss.
    #[serde(default)]
    pub loss: Option<f64>,
}

/// The metrics of one training run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingLog {
    /// Training lines, in file order.
    pub train: Vec<TrainPoint>,
    /// Validation lines, in file order.
    pub val: Vec<ValPoint>,
    /// Lines of other kinds, skipped.
    pub skipped: usize,
    /// True when the last line was cut short (the run is still writing it) and was left out.
    pub truncated_tail: bool,
}

#[derive(serde::Deserialize)]
struct Kind {
    kind: Option<String>,
}

impl TrainingLog {
    /// Reads `run_dir/metrics.jsonl`.
    pub fn read_run(run_dir: &Path) -> Result<Self> {
        Self::read(&run_dir.join("metrics.jsonl"))
    }

    /// Reads a metrics file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the text of a metrics file; `path` names it in errors.
    ///
    /// ```
    /// let text = r#"{"kind":"train","epoch":0.5,"iter":10,"loss":0.9,"acc":0.7,"lr":0.01}
    /// {"kind":"val","epoch":1.0,"iter":20,"clean_acc":0.95,"robust_acc":null,"loss":0.2}
    /// {"kind":"checkpoint","epoch":1.0,"path":"ckpt.safetensors"}
    /// "#;
    /// let log = temper_eval::TrainingLog::parse(text, "metrics.jsonl".as_ref())?;
    /// assert_eq!((log.train.len(), log.val.len(), log.skipped), (1, 1, 1));
    /// assert_eq!(log.val[0].robust_acc, None);
    /// # Ok::<(), temper_eval::Error>(())
    /// ```
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut log = TrainingLog::default();
        let bad = |line: usize, reason: String| Error::BadLogLine {
            path: PathBuf::from(path),
            line,
            reason,
        };
        let lines: Vec<&str> = text.split('\n').collect();
        for (i, raw) in lines.iter().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let kind: Kind = match serde_json::from_str(line) {
                Ok(k) => k,
                // A run being written may end in half a line; it is not an error to read it
                // mid-write, so the cut-off tail (no newline after it) is left out.
                Err(e) if i + 1 == lines.len() && e.is_eof() => {
                    log.truncated_tail = true;
                    continue;
                }
                Err(e) => return Err(bad(i + 1, format!("not a JSON object: {e}"))),
            };
            match kind.kind.as_deref() {
                Some("train") => log.train.push(
                    serde_json::from_str(line).map_err(|e| bad(i + 1, format!("bad train line: {e}")))?,
                ),
                Some("val") => log
                    .val
                    .push(serde_json::from_str(line).map_err(|e| bad(i + 1, format!("bad val line: {e}")))?),
                _ => log.skipped += 1,
            }
        }
        Ok(log)
    }

    /// True when there is nothing to plot.
    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.val.is_empty()
    }

    /// The last validation line, if any.
    pub fn last_val(&self) -> Option<&ValPoint> {
        self.val.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_kinds_and_skips_the_rest() -> Result<()> {
        let text = concat!(
            r#"{"kind":"train","epoch":0.5,"iter":10,"loss":0.9,"acc":0.7,"lr":0.01,"grad_norm":3.2}"#,
            "\n",
            r#"{"kind":"val","epoch":1.0,"iter":20,"clean_acc":0.95,"loss":0.2}"#,
            "\n",
            r#"{"kind":"val","epoch":2.0,"iter":40,"clean_acc":0.96,"robust_acc":0.5,"loss":0.1}"#,
            "\n",
            r#"{"epoch":3}"#,
            "\n\n",
            r#"{"kind":"train","epoch":2.5,"it"#
        );
        let log = TrainingLog::parse(text, Path::new("run/metrics.jsonl"))?;
        assert_eq!(log.train.len(), 1);
        assert_eq!(log.train[0].lr, Some(0.01));
        assert_eq!(log.val[0].robust_acc, None);
        assert_eq!(log.val[1].robust_acc, Some(0.5));
        assert_eq!(log.skipped, 1);
        assert!(log.truncated_tail);
        Ok(())
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let text = "{\"kind\":\"train\",\"epoch\":1}\nnot json\n{\"kind\":\"val\",\"epoch\":2}\n";
        let err = TrainingLog::parse(text, Path::new("run/metrics.jsonl"))
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("run/metrics.jsonl") && err.contains("line 2"),
            "{err}"
        );
        let text = "{\"kind\":\"train\",\"loss\":1}\n";
        let err = TrainingLog::parse(text, Path::new("m.jsonl"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("line 1") && err.contains("epoch"), "{err}");
    }
}
