//! The objectives attacks ascend.

use crate::Result;
use candle_core::Tensor;

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

pub(crate) use temper_core::loss::{cross_entropy, margin};

/// The per-sample objective to maximise, `(N,)`.
pub(crate) fn objective(kind: LossKind, logits: &Tensor, labels: &Tensor, targeted: bool) -> Result<Tensor> {
    match (kind, targeted) {
        (LossKind::CrossEntropy, false) => Ok(cross_entropy(logits, labels)?),
        (LossKind::CrossEntropy, true) => Ok(cross_entropy(logits, labels)?.neg()?),
        (LossKind::CwMargin, false) => Ok(margin(logits, labels)?.neg()?),
        (LossKind::CwMargin, true) => Ok(margin(logits, labels)?),
    }
}
