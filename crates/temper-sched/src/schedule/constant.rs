//! `constant:lr=0.1`

use super::{check_lr, Kind, ScheduleSpec};
use crate::spec::{Params, SpecWriter};
use crate::Result;
use std::fmt;

/// The same learning rate for the whole run.
///
/// Spec: `constant:lr=LR` (alias `const`), `lr` required.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    /// The learning rate.
    pub lr: f64,
}

impl Constant {
    /// A constant learning rate.
    pub fn new(lr: f64) -> Self {
        Constant { lr }
    }
}

impl From<Constant> for ScheduleSpec {
    fn from(k: Constant) -> Self {
        ScheduleSpec::Constant(k)
    }
}

impl Kind for Constant {
    const NAME: &'static str = "constant";
    const KEYS: &'static [&'static str] = &["lr"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        Ok(Constant::new(p.required("lr", Params::f64)?))
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("lr", self.lr)
    }

    fn check(&self, _total: f64) -> Result<()> {
        check_lr("lr", self.lr)
    }

    fn lr(&self, _t: f64, _total: f64) -> f64 {
        self.lr
    }
}
