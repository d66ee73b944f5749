//! `step:lr=0.1,milestones=0.5/0.75,gamma=0.1` and `step:lr=0.1,every=30ep,gamma=0.1`

use super::{check_lr, Kind, ScheduleSpec};
use crate::spec::{self, Params, Progress, SpecWriter};
use crate::{Error, Result};
use std::fmt;

/// Where a [`Step`] schedule decays.
#[derive(Debug, Clone, PartialEq)]
pub enum Milestones {
    /// At each of these points (PyTorch's `MultiStepLR`), strictly increasing.
    At(Vec<Progress>),
    /// Every so often (PyTorch's `StepLR`).
    Every(Progress),
}

/// The learning rate is multiplied by `gamma` at each milestone: at epoch `t` it is
/// `lr * gamma^k`, `k` the number of milestones `<= t` (so at a milestone the decayed value
/// already applies, as in PyTorch).
///
/// Spec: `step:lr=LR,milestones=P/P/...,gamma=G` or `step:lr=LR,every=P,gamma=G` (alias
/// `multistep`); `lr` and one of `milestones` / `every` required, `gamma` defaults to 0.1
/// (PyTorch's default). Points `P` are fractions of the run (`0.5`) or epochs (`100ep`).
/// Example, Rice et al.'s PGD-AT schedule over 200 epochs: `step:lr=0.1,milestones=100ep/150ep`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The initial learning rate.
    pub lr: f64,
    /// Where it decays.
    pub milestones: Milestones,
    /// The factor applied at each milestone, in `(0, 1]`.
    pub gamma: f64,
}

impl Step {
    /// Decays `lr` by `gamma = 0.1` at each of `milestones`.
    pub fn new(lr: f64, milestones: Vec<Progress>) -> Self {
        Step {
            lr,
            milestones: Milestones::At(milestones),
            gamma: 0.1,
        }
    }

    /// Decays `lr` by `gamma = 0.1` every `every`.
    pub fn every(lr: f64, every: Progress) -> Self {
        Step {
            lr,
            milestones: Milestones::Every(every),
            gamma: 0.1,
        }
    }
}

impl From<Step> for ScheduleSpec {
    fn from(k: Step) -> Self {
        ScheduleSpec::Step(k)
    }
}

impl Kind for Step {
    const NAME: &'static str = "step";
    const KEYS: &'static [&'static str] = &["lr", "milestones", "every", "gamma"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        let lr = p.required("lr", Params::f64)?;
        let milestones = match (p.list("milestones", spec::progress)?, p.progress("every")?) {
            (Some(at), None) => Milestones::At(at),
            (None, Some(every)) => Milestones::Every(every),
            (Some(_), Some(_)) => {
                return Err(Error::param(
                    "every",
                    "give either `milestones` or `every`, not both",
                ))
            }
            (None, None) => {
                return Err(Error::MissingKey {
                    kind: Self::NAME,
                    key: "milestones",
                })
            }
        };
        let gamma = p.f64("gamma")?.unwrap_or(0.1);
        Ok(Step {
            lr,
            milestones,
            gamma,
        })
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("lr", self.lr)?;
        match &self.milestones {
            Milestones::At(at) => {
                let list: Vec<String> = at.iter().map(Progress::to_string).collect();
                w.kv("milestones", list.join("/"))?;
            }
            Milestones::Every(every) => w.kv("every", every)?,
        }
        w.num("gamma", self.gamma)
    }

    fn check(&self, total: f64) -> Result<()> {
        check_lr("lr", self.lr)?;
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            return Err(Error::param(
                "gamma",
                format!("must be in (0, 1], got {}", self.gamma),
            ));
        }
        match &self.milestones {
            Milestones::At(at) => {
                if at.is_empty() {
                    return Err(Error::param("milestones", "needs at least one milestone"));
                }
                let mut prev = f64::NEG_INFINITY;
                for m in at {
                    m.check("milestones", total)?;
                    let e = m.epochs(total);
                    if e <= prev {
                        return Err(Error::param(
                            "milestones",
                            format!("must be strictly increasing, got {m} after epoch {prev}"),
                        ));
                    }
                    prev = e;
                }
                Ok(())
            }
            Milestones::Every(every) => {
                every.check("every", total)?;
                if every.epochs(total) > 0.0 {
                    Ok(())
                } else {
                    Err(Error::param("every", "must be > 0"))
                }
            }
        }
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        let k = match &self.milestones {
            Milestones::At(at) => at.iter().filter(|m| m.epochs(total) <= t).count(),
            Milestones::Every(every) => (t / every.epochs(total)).floor() as usize,
        };
        // `powi` takes an i32; a schedule with more than i32::MAX decays is at 0 anyway.
        self.lr * self.gamma.powi(i32::try_from(k).unwrap_or(i32::MAX))
    }
}
