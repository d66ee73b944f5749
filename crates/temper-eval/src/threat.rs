//! The threat model robust accuracy refers to.

use crate::{Error, Result};
use temper_attacks::Norm;

/// A perturbation budget: a norm and a radius `eps` in pixel units.
///
/// Robust accuracy is always "at eps in this norm": an attack's success counts only when its
/// adversarial example lies inside this ball. This keeps minimum-norm attacks (Carlini-Wagner),
/// which may go as far as they like, honest next to bounded ones, and lets one Carlini-Wagner
/// run serve every point of an eps sweep.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Threat {
    /// The norm of the ball.
    pub norm: Norm,
    /// Its radius in pixel units (L-inf: per pixel; L2: per image).
    pub eps: f64,
}

/// Slack for float rounding: projected and clamped perturbations land on the boundary up to
/// f32 precision, and must not be thrown out for it.
const ABS_SLACK: f64 = 1e-5;
const REL_SLACK: f64 = 1e-4;

impl Threat {
    /// A validated threat model: `eps` finite and `>= 0`.
    pub fn new(norm: Norm, eps: f64) -> Result<Self> {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::param("eps", format!("{eps} must be finite and >= 0")));
        }
        Ok(Threat { norm, eps })
    }

    /// True when a perturbation of the given L-inf, L2 and L1 sizes lies inside the ball.
    pub fn contains(&self, linf: f32, l2: f32, l1: f32) -> bool {
        let size = match self.norm {
            Norm::Linf => f64::from(linf),
            Norm::L2 => f64::from(l2),
            Norm::L1 => f64::from(l1),
        };
        size <= self.eps * (1.0 + REL_SLACK) + ABS_SLACK
    }

    /// `linf eps=0.1`, `l2 eps=0.5` or `l1 eps=10`, for tables.
    pub fn describe(&self) -> String {
        format!("{} eps={}", self.norm.name(), fmt_eps(self.eps))
    }
}

/// An eps as people write it: `8/255` when it is a whole number of 255ths, a decimal otherwise.
pub fn fmt_eps(eps: f64) -> String {
    let k = eps * 255.0;
    if eps > 0.0
        && (k - k.round()).abs() < 1e-6
        && k.round() <= 255.0
        && (eps * 100.0 - (eps * 100.0).round()).abs() > 1e-9
    {
        format!("{}/255", k.round() as i64)
    } else {
        let s = format!("{eps:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" {
            "0".to_string()
        } else {
            s.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_formats_as_people_write_it() {
        assert_eq!(fmt_eps(8.0 / 255.0), "8/255");
        assert_eq!(fmt_eps(0.3), "0.3");
        assert_eq!(fmt_eps(0.1), "0.1");
        assert_eq!(fmt_eps(0.0), "0");
        assert_eq!(fmt_eps(1.0), "1");
        assert_eq!(fmt_eps(0.5), "0.5");
    }

    #[test]
    fn ball_membership_allows_rounding_only() -> Result<()> {
        let t = Threat::new(Norm::Linf, 0.1)?;
        assert!(t.contains(0.1, 5.0, 50.0));
        assert!(t.contains(0.100_001, 5.0, 50.0));
        assert!(!t.contains(0.11, 0.0, 0.0));
        let t = Threat::new(Norm::L2, 1.0)?;
        assert!(t.contains(0.9, 1.0, 9.0) && !t.contains(0.0, 1.01, 0.0));
        let t = Threat::new(Norm::L1, 10.0)?;
        assert!(t.contains(1.0, 5.0, 10.0) && !t.contains(0.0, 0.0, 10.1));
        assert!(Threat::new(Norm::L2, -1.0).is_err());
        assert!(Threat::new(Norm::L2, f64::NAN).is_err());
        Ok(())
    }
}
