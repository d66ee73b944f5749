//! The objectives attacks ascend.

use crate::Result;
use candle_core::{DType, Tensor, D};

/// The loss an attack maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Cross-entropy of the true label (untargeted), or minus that of the target (targeted).
    CrossEntropy,
    /// The Carlini-Wagner margin: `max_{j≠y} z_j - z_y` (untargeted), or
    /// `z_t - max_{j≠t} z_j` (targeted). Immune to the softmax saturation that can mask
    /// cross-entropy gradients.
    CwMargin,
}

impl LossKind {
    /// Parses `ce` or `cw`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ce" | "cross-entropy" => Ok(LossKind::CrossEntropy),
            "cw" | "margin" | "cw-margin" => Ok(LossKind::CwMargin),
            _ => Err(crate::error::param("loss", format!("'{s}' is not one of ce, cw"))),
        }
    }

    /// The short name `parse` accepts: `ce` or `cw`.
    pub fn name(&self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "ce",
            LossKind::CwMargin => "cw",
        }
    }
}

/// One-hot `(N, K)` f32 for `labels` `(N,)`.
pub(crate) fn one_hot(labels: &Tensor, k: usize) -> Result<Tensor> {
    let n = labels.dim(0)?;
    let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let zeros = Tensor::zeros((n, k), DType::F32, labels.device())?;
    let ones = Tensor::ones((n, 1), DType::F32, labels.device())?;
    Ok(zeros.scatter_add(&idx, &ones, 1)?)
}

/// `z_label - max_{j≠label} z_j` per sample: positive when `label` wins.
pub(crate) fn margin(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let oh = one_hot(labels, k)?;
    let own = (logits * &oh)?.sum(1)?;
    // Push the label's own logit far down so it cannot be the "other" maximum.
    let others = (logits - (oh * 1e9)?)?.max(D::Minus1)?;
    Ok((own - others)?)
}

/// Per-sample cross-entropy `(N,)`.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    Ok(logp.gather(&idx, 1)?.squeeze(1)?.neg()?)
}

/// The per-sample objective to maximise, `(N,)`.
pub(crate) fn objective(kind: LossKind, logits: &Tensor, labels: &Tensor, targeted: bool) -> Result<Tensor> {
    match (kind, targeted) {
        (LossKind::CrossEntropy, false) => cross_entropy(logits, labels),
        (LossKind::CrossEntropy, true) => Ok(cross_entropy(logits, labels)?.neg()?),
        (LossKind::CwMargin, false) => Ok(margin(logits, labels)?.neg()?),
        (LossKind::CwMargin, true) => margin(logits, labels),
    }
}
