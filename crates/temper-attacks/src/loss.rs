//! The objectives attacks ascend.

use crate::Result;
use candle_core::{DType, Tensor};

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
    /// The difference of logits ratio of Croce and Hein (2020): the CW margin divided by
    /// `z_π1 - z_π3` (untargeted) or `z_π1 - (z_π3 + z_π4) / 2` (targeted), with `π` the
    /// logits sorted in decreasing order. Invariant to shifting and scaling the logits, so a
    /// model cannot hide behind a saturated softmax. Needs 3 classes (untargeted) or 4
    /// (targeted); see [`LossKind::defined_for`].
    Dlr,
}

impl LossKind {
    /// Parses `ce`, `cw` or `dlr`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ce" | "cross-entropy" => Ok(LossKind::CrossEntropy),
            "cw" | "margin" | "cw-margin" => Ok(LossKind::CwMargin),
            "dlr" => Ok(LossKind::Dlr),
            _ => Err(crate::error::param(
                "loss",
                format!("'{s}' is not one of ce, cw, dlr"),
            )),
        }
    }

    /// The short name `parse` accepts: `ce`, `cw` or `dlr`.
    pub fn name(&self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "ce",
            LossKind::CwMargin => "cw",
            LossKind::Dlr => "dlr",
        }
    }

    /// Whether this loss is defined for a model with `classes` outputs: DLR reads the third
    /// largest logit (untargeted) or the fourth (targeted), the others need two classes.
    pub fn defined_for(&self, classes: usize, targeted: bool) -> bool {
        match self {
            LossKind::Dlr if targeted => classes >= 4,
            LossKind::Dlr => classes >= 3,
            _ => classes >= 2,
        }
    }

    /// This loss where it is defined, otherwise the closest one that is: DLR becomes the CW
    /// margin (its numerator) untargeted, and the targeted cross-entropy (the reference's
    /// `ce-targeted`) targeted. AutoAttack's checks refuse such models; Temper says so in
    /// the attack's description and runs the defined variant instead.
    pub fn defined_variant(self, classes: usize, targeted: bool) -> LossKind {
        match self {
            LossKind::Dlr if !self.defined_for(classes, targeted) => {
                if targeted {
                    LossKind::CrossEntropy
                } else {
                    LossKind::CwMargin
                }
            }
            k => k,
        }
    }
}

pub(crate) use temper_core::loss::{cross_entropy, margin};

/// The logits sorted in decreasing order, first `k` columns, `(N, k)`; differentiable with
/// respect to the logits (the order is taken from a detached copy and the values gathered).
fn top_logits(logits: &Tensor, k: usize) -> Result<Tensor> {
    let order = logits
        .detach()
        .arg_sort_last_dim(false)?
        .narrow(1, 0, k)?
        .contiguous()?;
    Ok(logits.gather(&order, 1)?)
}

/// The untargeted DLR loss `-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3 + 1e-12)`, `(N,)`; larger
/// is stronger. Needs at least 3 classes.
pub fn dlr(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let top = top_logits(logits, 3)?;
    let den = ((top.narrow(1, 0, 1)? - top.narrow(1, 2, 1)?)?.squeeze(1)? + 1e-12)?;
    Ok(margin(logits, y)?.neg()?.div(&den)?)
}

/// The targeted DLR loss `-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2 + 1e-12)`, `(N,)`, with
/// `y` the true labels and `t` the targets; larger is stronger. Needs at least 4 classes.
pub fn dlr_targeted(logits: &Tensor, y: &Tensor, t: &Tensor) -> Result<Tensor> {
    let top = top_logits(logits, 4)?;
    let den = ((top.narrow(1, 0, 1)? - ((top.narrow(1, 2, 1)? + top.narrow(1, 3, 1)?)? * 0.5)?)?
        .squeeze(1)?
        + 1e-12)?;
    let pick = |l: &Tensor| -> Result<Tensor> {
        Ok(logits
            .gather(&l.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
            .squeeze(1)?)
    };
    Ok((pick(t)? - pick(y)?)?.div(&den)?)
}

/// The per-sample objective to maximise, `(N,)`: about the true labels `y` (untargeted) or
/// about the targets `t` (targeted).
pub(crate) fn objective(
    kind: LossKind,
    logits: &Tensor,
    y: &Tensor,
    target: Option<&Tensor>,
) -> Result<Tensor> {
    match (kind, target) {
        (LossKind::CrossEntropy, None) => Ok(cross_entropy(logits, y)?),
        (LossKind::CrossEntropy, Some(t)) => Ok(cross_entropy(logits, t)?.neg()?),
        (LossKind::CwMargin, None) => Ok(margin(logits, y)?.neg()?),
        (LossKind::CwMargin, Some(t)) => Ok(margin(logits, t)?),
        (LossKind::Dlr, None) => dlr(logits, y),
        (LossKind::Dlr, Some(t)) => dlr_targeted(logits, y, t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dlr_follows_its_formula_and_ignores_scale() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1f32, 5.0, 3.0, 0.0], [4.0, 2.0, 3.0, 1.0]], &dev)?;
        let y = Tensor::new(&[1u32, 1], &dev)?;
        let t = Tensor::new(&[0u32, 0], &dev)?;
        let d = dlr(&z, &y)?.to_vec1::<f32>()?;
        // Sample 0: y wins by 5 - 3 = 2 over 5 - 1 = 4; sample 1: loses by 4 - 2 = 2 over 4 - 2.
        assert!((d[0] + 0.5).abs() < 1e-6 && (d[1] - 1.0).abs() < 1e-6, "{d:?}");
        let dt = dlr_targeted(&z, &y, &t)?.to_vec1::<f32>()?;
        // Sample 0: (1 - 5) / (5 - (1 + 0) / 2); sample 1: (4 - 2) / (4 - (2 + 1) / 2).
        assert!(
            (dt[0] + 4.0 / 4.5).abs() < 1e-6 && (dt[1] - 2.0 / 2.5).abs() < 1e-6,
            "{dt:?}"
        );
        let big = dlr(&(&z * 1e4)?, &y)?.to_vec1::<f32>()?;
        assert!((big[0] - d[0]).abs() < 1e-5 && (big[1] - d[1]).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn undefined_losses_fall_back() {
        assert_eq!(LossKind::Dlr.defined_variant(3, false), LossKind::Dlr);
        assert_eq!(LossKind::Dlr.defined_variant(2, false), LossKind::CwMargin);
        assert_eq!(LossKind::Dlr.defined_variant(3, true), LossKind::CrossEntropy);
        assert_eq!(
            LossKind::CrossEntropy.defined_variant(2, true),
            LossKind::CrossEntropy
        );
    }
}
