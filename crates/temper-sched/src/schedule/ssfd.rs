//! `ssfd:peak=0.05,warmup=0.3,start=5e-4,final=1e-4,decay=exp`

use super::shape::rise_and_fall;
use super::{check_at_most, check_lr, check_positive, Kind, ScheduleSpec, Shape};
use crate::spec::{Params, Progress, SpecWriter};
use crate::Result;
use std::fmt;

/// Slow start, fast decay: the learning-rate schedule of adversarial fine-tuning (Jeddi,
/// Shafiee & Wong 2020, "A Simple Fine-tuning Is All You Need", arXiv 2012.13628).
///
/// The learning rate rises linearly from `start` to `peak` over the first `warmup` of the
/// run (the slow start), reaching `peak` exactly at the end of the warm-up, then falls to
/// `final` at the end of the run along the `decay` curve (the fast decay), reaching `final`
/// exactly. With `warmup=1` there is no decay phase and the run ends at the peak.
///
/// Spec: `ssfd:peak=LR,warmup=P,start=S,final=F,decay=exp|linear|cos`; every key is
/// optional. `ssfd` alone is the default schedule of `temper finetune`.
///
/// # Defaults (provisional)
///
/// The paper gives the idea, not the constants, so these defaults are a reasoned starting
/// point that is to be retuned by experiment (fine-tuning small-cnn on mnist10k and
/// PreAct-ResNet-18 on CIFAR-10); the values below will change when that is done.
/// They are resolved when a spec is parsed, so a schedule stored in a checkpoint keeps its
/// meaning when they change.
///
/// - `peak = 0.05`: half the 0.1 that SGD with momentum 0.9 uses to train these models from
///   scratch (Madry et al., Rice et al.). Fine-tuning starts next to a good solution; the
///   peak must be large enough to leave the non-robust minimum, not to train from scratch.
/// - `warmup = 0.3` of the run: the adversarial loss of a naturally trained model is huge at
///   first and its gradients point away from the features worth keeping. A slow ramp lets
///   BatchNorm statistics and the classifier adapt to adversarial inputs before large steps
///   are taken; 0.3 leaves most of the run (0.7) for the decay.
/// - `start = peak / 100`: small enough that the first steps barely move the pre-trained
///   weights, large enough to make progress (not 0, which would waste the first iterations).
/// - `final = peak / 500` (`1e-4` with the default peak): the usual end point of step
///   schedules after two decays by 10 (0.1 to 0.001) is around peak/100; going a little
///   lower lets the last epochs settle, which is where fine-tuned models are evaluated.
/// - `decay = exp`: a geometric decay is the fastest of the three shapes right after the
///   peak (with the defaults it halves every 7.8 % of the run, while `linear` and `cos`
///   keep more than half the peak for the first half of the decay). Little time at a high
///   learning rate is what keeps robust overfitting (Rice et al. 2020) away; `exp` is
///   therefore the shape that matches "fast decay" best.
#[derive(Debug, Clone, PartialEq)]
pub struct Ssfd {
    /// The highest learning rate, reached at the end of the warm-up.
    pub peak: f64,
    /// The length of the warm-up (the slow start).
    pub warmup: Progress,
    /// The learning rate at epoch 0.
    pub start: f64,
    /// The learning rate at the end of the run.
    pub final_lr: f64,
    /// The curve of the decay.
    pub decay: Shape,
}

impl Ssfd {
    /// Default peak learning rate (provisional; see [`Ssfd`]).
    pub const DEFAULT_PEAK: f64 = 0.05;
    /// Default warm-up, as a fraction of the run (provisional; see [`Ssfd`]).
    pub const DEFAULT_WARMUP: f64 = 0.3;
    /// Default `peak / start` (provisional; see [`Ssfd`]).
    pub const DEFAULT_START_DIV: f64 = 100.0;
    /// Default `peak / final` (provisional; see [`Ssfd`]).
    pub const DEFAULT_FINAL_DIV: f64 = 500.0;

    /// SSFD with the default warm-up, start, final value and decay around `peak`.
    pub fn new(peak: f64) -> Self {
        Ssfd {
            peak,
            warmup: Progress::Fraction(Self::DEFAULT_WARMUP),
            start: peak / Self::DEFAULT_START_DIV,
            final_lr: peak / Self::DEFAULT_FINAL_DIV,
            decay: Shape::Exp,
        }
    }
}

impl Default for Ssfd {
    /// SSFD with every default, the schedule `ssfd` parses to.
    fn default() -> Self {
        Ssfd::new(Self::DEFAULT_PEAK)
    }
}

impl From<Ssfd> for ScheduleSpec {
    fn from(k: Ssfd) -> Self {
        ScheduleSpec::Ssfd(k)
    }
}

impl Kind for Ssfd {
    const NAME: &'static str = "ssfd";
    const KEYS: &'static [&'static str] = &["peak", "warmup", "start", "final", "decay"];

    fn parse(p: &Params<'_>) -> Result<Self> {
        // Start and final default to fractions of the peak, so they follow a peak given on
        // the command line.
        let mut k = Ssfd::new(p.f64("peak")?.unwrap_or(Self::DEFAULT_PEAK));
        if let Some(v) = p.progress("warmup")? {
            k.warmup = v;
        }
        if let Some(v) = p.f64("start")? {
            k.start = v;
        }
        if let Some(v) = p.f64("final")? {
            k.final_lr = v;
        }
        if let Some(v) = p.keyword("decay")? {
            k.decay = v;
        }
        Ok(k)
    }

    fn write(&self, w: &mut SpecWriter<'_, '_>) -> fmt::Result {
        w.num("peak", self.peak)?;
        w.kv("warmup", self.warmup)?;
        w.num("start", self.start)?;
        w.num("final", self.final_lr)?;
        w.kv("decay", self.decay)
    }

    fn check(&self, total: f64) -> Result<()> {
        check_positive("peak", self.peak)?;
        self.warmup.check("warmup", total)?;
        check_lr("start", self.start)?;
        check_at_most("start", self.start, "peak", self.peak)?;
        check_lr("final", self.final_lr)?;
        check_at_most("final", self.final_lr, "peak", self.peak)?;
        self.decay.check(self.peak, self.final_lr, "peak", "final")
    }

    fn lr(&self, t: f64, total: f64) -> f64 {
        let w = self.warmup.epochs(total);
        let lrs = (self.start, self.peak, self.final_lr);
        rise_and_fall(t, total, w, lrs, Shape::Linear, self.decay)
    }
}
