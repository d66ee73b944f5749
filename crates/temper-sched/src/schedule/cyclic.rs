//! `cyclic:peak=0.2,at=0.4`

use super::{check_positive, Kind, ScheduleSpec};
use crate::spec::{Params, Progress, SpecWriter};
use crate::Result;
use std::fmt;

/// The triangular schedule of Fast-AT (Wong, Rice & Kolter 2020): linear from 0 up to `peak`
/// at `at`, then linear back down to 0 at the end of the run.
///
/// Spec: `cyclic:peak=LR,at=P`; `peak` required, `at` defaults to 0.4, the `2/5` of the run
/// used by Fast-AT's reference code (`np.interp(t, [0, 2/5 E, E], [0, peak, 0])`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cyclic {
    /// The highest learning rate.
    pub peak: f64,
    /// Where the peak is.
    pub at: Progress,
}

impl Cyclic {
    /// Fast-AT's triangle with its peak at 2/5 of the run.
    pub fn new(peak: f64) -> Self {
        Cyclic {
            peak,
            at: Progress::Fraction(0.4),
        }
    }
}

impl From<Cyclic> for ScheduleSpec {
    fn from(k: Cyclic) -> Self {
        ScheduleSpec::Cyclic(k)
    }
}

impl Kind for Cyclic {
    const NAME: &'static str = "cyclic";
    const KEYS: &'static [&'static str] = &["peak", "at"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        let mut k = Cyclic::new(p.required("peak", Params::f64)?);
        if let Some(at) = p.progress("at")? {
            k.at = at;
        }
        Ok(k)
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("peak", self.peak)?;
        w.kv("at", self.at)
    }

    fn check(&self, total: f64) -> Result<()> {
        check_positive("peak", self.peak)?;
        self.at.check("at", total)
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        let at = self.at.epochs(total);
        if t == at {
            self.peak
        } else if t < at {
            self.peak * (t / at)
        } else {
            self.peak * ((total - t) / (total - at))
        }
    }
}
