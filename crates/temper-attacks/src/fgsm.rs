//! FGSM (Goodfellow et al. 2015) and FGSM with uniform random start (Wong et al. 2020).

use crate::error::param;
use crate::loss::LossKind;
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::Tensor;
use temper_core::seed::Rng;
use temper_core::{Classifier, Mode, ModeGuard};

/// Unchecked FGSM hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FgsmParams {
    /// L-inf budget in pixel units.
    pub eps: f64,
    /// `Some(alpha)`: start uniformly in the eps ball and take one step of size alpha, then
    /// project (Fast-AT uses alpha = 1.25 eps). `None`: one step of size eps from the clean
    /// point.
    pub random_start: Option<f64>,
    /// Objective.
    pub loss: LossKind,
}

impl Default for FgsmParams {
    fn default() -> Self {
        FgsmParams {
            eps: 8.0 / 255.0,
            random_start: None,
            loss: LossKind::CrossEntropy,
        }
    }
}

impl FgsmParams {
    /// Validates: `eps >= 0`, `alpha > 0`.
    pub fn check(self) -> Result<Fgsm> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(param("eps", format!("{} must be finite and >= 0", self.eps)));
        }
        if let Some(a) = self.random_start {
            if !(a.is_finite() && a > 0.0) {
                return Err(param("alpha", format!("{a} must be finite and > 0")));
            }
        }
        Ok(Fgsm(self))
    }
}

/// A validated FGSM attack (L-inf).
#[derive(Debug, Clone, Copy)]
pub struct Fgsm(FgsmParams);

impl Fgsm {
    /// The parameters.
    pub fn params(&self) -> &FgsmParams {
        &self.0
    }
}

impl Attack for Fgsm {
    fn name(&self) -> String {
        match self.0.random_start {
            None => format!("fgsm(eps={:.4}, loss={})", self.0.eps, self.0.loss.name()),
            Some(a) => format!(
                "fgsm-rs(eps={:.4}, alpha={:.4}, loss={})",
                self.0.eps,
                a,
                self.0.loss.name()
            ),
        }
    }

    fn norm(&self) -> Norm {
        Norm::Linf
    }

    fn eps(&self) -> Option<f64> {
        Some(self.0.eps)
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        goal: Goal<'_>,
        rng: &mut Rng,
    ) -> Result<AttackOutput> {
        let _eval = ModeGuard::new(model, Mode::Eval);
        let mut p = Problem::new(model, x, y, goal)?;
        let p0 = &self.0;
        let (start, step) = match p0.random_start {
            None => (x.clone(), p0.eps),
            Some(alpha) => {
                let delta = Norm::Linf.random_start(x, p0.eps, rng)?;
                ((x + delta)?.clamp(0f32, 1f32)?, alpha)
            }
        };
        let (_, g, _) = p.grad(&start, p0.loss)?;
        let moved = (&start + (g.sign()? * step)?)?;
        let delta = Norm::Linf.project(&(moved - x)?, p0.eps)?;
        let adv = (x + delta)?.clamp(0f32, 1f32)?;
        p.finish(adv, p0.loss)
    }
}
