//! `exp:lr=0.1,gamma=0.95` and `exp:lr=0.1,final=1e-4`

use super::{check_lr, check_positive, Kind, ScheduleSpec};
use crate::spec::{Params, SpecWriter};
use crate::{Error, Result};
use std::fmt;

/// How fast an [`Exponential`] schedule decays.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpRate {
    /// The factor per epoch, in `(0, 1]` (PyTorch's `ExponentialLR` gamma).
    Gamma(f64),
    /// The value reached at the end of the run, in `(0, lr]`.
    Final(f64),
}

/// Exponential decay, continuous in the fractional epoch: `lr * gamma^t`, or with `final`,
/// `lr * (final / lr)^(t / total)`.
///
/// Unlike PyTorch's `ExponentialLR`, which steps once per epoch, the decay is smooth, so a
/// per-iteration schedule has no staircase.
///
/// Spec: `exp:lr=LR,gamma=G` or `exp:lr=LR,final=F` (alias `exponential`); `lr` and one of
/// `gamma` / `final` required.
#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    /// The initial learning rate.
    pub lr: f64,
    /// The decay rate.
    pub rate: ExpRate,
}

impl Exponential {
    /// Decays `lr` by `gamma` per epoch.
    pub fn new(lr: f64, gamma: f64) -> Self {
        Exponential {
            lr,
            rate: ExpRate::Gamma(gamma),
        }
    }

    /// Decays `lr` to `final_lr` at the end of the run.
    pub fn to_final(lr: f64, final_lr: f64) -> Self {
        Exponential {
            lr,
            rate: ExpRate::Final(final_lr),
        }
    }
}

impl From<Exponential> for ScheduleSpec {
    fn from(k: Exponential) -> Self {
        ScheduleSpec::Exponential(k)
    }
}

impl Kind for Exponential {
    const NAME: &'static str = "exp";
    const KEYS: &'static [&'static str] = &["lr", "gamma", "final"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        let lr = p.required("lr", Params::f64)?;
        let rate = match (p.f64("gamma")?, p.f64("final")?) {
            (Some(g), None) => ExpRate::Gamma(g),
            (None, Some(f)) => ExpRate::Final(f),
            (Some(_), Some(_)) => {
                return Err(Error::param("final", "give either `gamma` or `final`, not both"))
            }
            (None, None) => {
                return Err(Error::MissingKey {
                    kind: Self::NAME,
                    key: "gamma",
                })
            }
        };
        Ok(Exponential { lr, rate })
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("lr", self.lr)?;
        match self.rate {
            ExpRate::Gamma(g) => w.num("gamma", g),
            ExpRate::Final(f) => w.num("final", f),
        }
    }

    fn check(&self, _total: f64) -> Result<()> {
        check_lr("lr", self.lr)?;
        match self.rate {
            ExpRate::Gamma(g) if !(g > 0.0 && g <= 1.0) => {
                Err(Error::param("gamma", format!("must be in (0, 1], got {g}")))
            }
            ExpRate::Final(f) => {
                check_positive("final", f)?;
                super::check_at_most("final", f, "lr", self.lr)
            }
            ExpRate::Gamma(_) => Ok(()),
        }
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        match self.rate {
            ExpRate::Gamma(g) => self.lr * g.powf(t),
            // The end is returned exactly rather than through `powf`, which may round.
            ExpRate::Final(f) if t >= total => f,
            ExpRate::Final(f) => self.lr * (f / self.lr).powf(t / total),
        }
    }
}
