//! Attacks described by short strings, as users type them: `fgsm`, `fgsm-rs`, `pgd`,
//! `pgd-20`, `pgd-l2-50`, `pgd-cw-20` (PGD on the CW margin loss), `cw`, `cw-200`,
//! `apgd-ce`, `apgd-dlr`, `apgd-t`, `apgd-ce-l2-50-r5-eot20`, `apgd-ce-l1`, `fab`, `fab-r5`,
//! `fab-t`, `square`, `square-l2`, `square-1000`, `autoattack`, `autoattack-plus`,
//! `autoattack-rand`; and budgets such as `8/255`.

use crate::autoattack::{AutoAttack, AutoAttackVersion};
use crate::error::param;
use crate::{
    ApgdParams, Attack, CwParams, FabParams, FgsmParams, LossKind, Norm, PgdParams, Result, SquareParams,
};

/// Parses a number written as a decimal (`0.3`, `1e-2`) or a fraction (`8/255`).
///
/// ```
/// assert_eq!(temper_attacks::spec::parse_number("8/255", "eps").unwrap(), 8.0 / 255.0);
/// assert_eq!(temper_attacks::spec::parse_number("0.3", "eps").unwrap(), 0.3);
/// assert!(temper_attacks::spec::parse_number("8/0", "eps").is_err());
/// ```
pub fn parse_number(s: &str, name: &'static str) -> Result<f64> {
    let bad = || param(name, format!("'{s}' is not a number such as 0.03 or 8/255"));
    let v = match s.trim().split_once('/') {
        Some((a, b)) => {
            let a: f64 = a.trim().parse().map_err(|_| bad())?;
            let b: f64 = b.trim().parse().map_err(|_| bad())?;
            if b == 0.0 {
                return Err(bad());
            }
            a / b
        }
        None => s.trim().parse().map_err(|_| bad())?,
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(bad())
    }
}

/// Parses a sweep `start:stop:step` (each a number as in [`parse_number`]), inclusive of
/// `stop` up to rounding, or a comma-separated list.
pub fn parse_sweep(s: &str, name: &'static str) -> Result<Vec<f64>> {
    if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(param(name, format!("'{s}' is not start:stop:step")));
        }
        let (a, b, st) = (
            parse_number(parts[0], name)?,
            parse_number(parts[1], name)?,
            parse_number(parts[2], name)?,
        );
        if st <= 0.0 || b < a {
            return Err(param(name, format!("'{s}' needs step > 0 and stop >= start")));
        }
        let n = ((b - a) / st + 1e-9).floor() as usize;
        if n > 1000 {
            return Err(param(name, format!("'{s}' has more than 1000 points")));
        }
        Ok((0..=n).map(|i| a + st * i as f64).collect())
    } else {
        s.split(',').map(|p| parse_number(p, name)).collect()
    }
}

/// The family of an attack spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackKind {
    /// One signed-gradient step of size eps.
    Fgsm,
    /// FGSM from a uniform random start (Fast-AT).
    FgsmRs,
    /// Projected gradient descent.
    Pgd,
    /// Carlini-Wagner L2.
    Cw,
    /// Auto-PGD, untargeted (Croce and Hein 2020).
    Apgd,
    /// Auto-PGD on the targeted loss towards each of the 9 most likely other classes.
    ApgdT,
    /// FAB: untargeted minimum-norm attack, result checked against eps.
    Fab,
    /// FAB-T: targeted minimum-norm attack, result checked against eps.
    FabT,
    /// The Square attack (score-based, no gradients).
    Square,
    /// An AutoAttack ensemble.
    AutoAttack(AutoAttackVersion),
}

/// A parsed attack name: family, optional norm and optional step count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttackSpec {
    /// The family.
    pub kind: AttackKind,
    /// `pgd-l2-..` fixes the norm; otherwise the caller's choice (L-inf by default).
    pub norm: Option<Norm>,
    /// `pgd-20`, `cw-200`: the number of steps.
    pub steps: Option<usize>,
    /// `pgd-cw-20`, `fgsm-ce`, `apgd-dlr`: the objective, overriding the caller's.
    pub loss: Option<LossKind>,
    /// `apgd-ce-r5`: restarts, overriding the caller's.
    pub restarts: Option<usize>,
    /// `apgd-ce-eot20`: gradient passes averaged per step (expectation over transformation).
    pub eot: Option<usize>,
    /// The text it was parsed from.
    pub text: String,
}

/// Settings an attack spec is completed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackSettings {
    /// Budget in pixel units.
    pub eps: f64,
    /// Step size; `None` picks `2.5 * eps / steps` for PGD (Madry et al.) and `1.25 * eps`
    /// for FGSM-RS (Wong et al.).
    pub alpha: Option<f64>,
    /// Norm when the spec does not fix one.
    pub norm: Norm,
    /// PGD restarts.
    pub restarts: usize,
    /// PGD steps when the spec does not say (`pgd` alone).
    pub steps: usize,
    /// Objective for FGSM and PGD.
    pub loss: LossKind,
    /// Random start for PGD.
    pub random_start: bool,
}

impl Default for AttackSettings {
    fn default() -> Self {
        AttackSettings {
            eps: 8.0 / 255.0,
            alpha: None,
            norm: Norm::Linf,
            restarts: 1,
            steps: 10,
            loss: LossKind::CrossEntropy,
            random_start: true,
        }
    }
}

impl AttackSpec {
    /// Parses `fgsm`, `fgsm-rs`, `pgd`, `pgd-N`, `pgd-linf-N`, `pgd-l2-N`, `cw`, `cw-N`;
    /// FGSM and PGD names may also carry the loss, `ce` or `cw` (the margin loss of Carlini
    /// and Wagner), e.g. `pgd-cw-20` or `fgsm-rs-cw`. APGD: `apgd-ce`, `apgd-dlr`, `apgd-t`,
    /// with optional norm (`l2`, `l1`, `linf`), iterations (default 100), `rN` restarts and
    /// `eotN` gradient passes, e.g. `apgd-dlr-l2-50-r5-eot20`. `fab`, `fab-t`, with optional
    /// norm, iterations (default 100 per run) and `rN` restarts, e.g. `fab-l2-r5`. `square`,
    /// `square-N` (N queries, default 5000), with optional norm. `autoattack`,
    /// `autoattack-standard`, `autoattack-plus`, `autoattack-rand`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || {
            param(
                "attack",
                format!(
                    "'{s}' is not one of fgsm[-rs][-ce|-cw], pgd[-l2|-l1|-linf][-ce|-cw][-STEPS], cw[-STEPS], \
                     apgd-ce|apgd-dlr|apgd-t[-l2|-l1][-STEPS][-rN][-eotN], fab|fab-t[-l2][-STEPS][-rN], \
                     square[-l2][-QUERIES], autoattack[-standard|-plus|-rand]"
                ),
            )
        };
        let mut parts: Vec<&str> = t.split('-').collect();
        let kind = match parts.first().copied() {
            Some("fgsm") if parts.get(1) == Some(&"rs") => {
                parts.remove(1);
                AttackKind::FgsmRs
            }
            Some("fgsm") => AttackKind::Fgsm,
            Some("pgd") => AttackKind::Pgd,
            Some("cw") => AttackKind::Cw,
            Some("apgd") if parts.get(1) == Some(&"t") => {
                parts.remove(1);
                AttackKind::ApgdT
            }
            Some("apgd") => AttackKind::Apgd,
            Some("square") => AttackKind::Square,
            Some("autoattack") | Some("aa") => {
                let version = match parts.get(1..).unwrap_or_default() {
                    [] | ["standard"] => AutoAttackVersion::Standard,
                    ["plus"] => AutoAttackVersion::Plus,
                    ["rand"] => AutoAttackVersion::Rand,
                    _ => return Err(bad()),
                };
                return Ok(AttackSpec {
                    kind: AttackKind::AutoAttack(version),
                    norm: None,
                    steps: None,
                    loss: None,
                    restarts: None,
                    eot: None,
                    text: s.trim().to_string(),
                });
            }
            Some("fab") if parts.get(1) == Some(&"t") => {
                parts.remove(1);
                AttackKind::FabT
            }
            Some("fab") => AttackKind::Fab,
            _ => return Err(bad()),
        };
        let mut norm = None;
        let mut steps = None;
        let mut loss = None;
        let mut restarts = None;
        let mut eot = None;
        let fab = matches!(kind, AttackKind::Fab | AttackKind::FabT);
        let with_loss = !matches!(kind, AttackKind::Cw | AttackKind::Square) && !fab;
        let with_norm = matches!(
            kind,
            AttackKind::Pgd | AttackKind::Apgd | AttackKind::ApgdT | AttackKind::Square
        ) || fab;
        let with_steps = !matches!(kind, AttackKind::Fgsm | AttackKind::FgsmRs);
        let apgd = matches!(kind, AttackKind::Apgd | AttackKind::ApgdT);
        let count = |v: &str, name: &'static str| -> Result<usize> {
            let v: usize = v.parse().map_err(|_| bad())?;
            if v == 0 {
                return Err(param(name, format!("'{s}' asks for zero {name}")));
            }
            Ok(v)
        };
        for p in &parts[1..] {
            match *p {
                "ce" if with_loss && loss.is_none() => loss = Some(LossKind::CrossEntropy),
                "cw" | "margin" if with_loss && loss.is_none() => loss = Some(LossKind::CwMargin),
                "dlr" if with_loss && loss.is_none() => loss = Some(LossKind::Dlr),
                "l2" if with_norm => norm = Some(Norm::L2),
                "l1" if with_norm => norm = Some(Norm::L1),
                "linf" | "inf" if with_norm => norm = Some(Norm::Linf),
                r if apgd && r.starts_with("eot") => eot = Some(count(&r[3..], "eot")?),
                r if (apgd || fab) && r.starts_with('r') => restarts = Some(count(&r[1..], "restarts")?),
                n if with_steps => steps = Some(count(n, "steps")?),
                _ => return Err(bad()),
            }
        }
        Ok(AttackSpec {
            kind,
            norm,
            steps,
            loss,
            restarts,
            eot,
            text: s.trim().to_string(),
        })
    }

    /// The specs this one stands for in a list: an AutoAttack ensemble becomes its component
    /// attacks, so an evaluation reports each and runs each on the points the ones before
    /// it left (the evaluator's cascade); any other spec is itself.
    pub fn expand(&self) -> Result<Vec<Self>> {
        match self.kind {
            AttackKind::AutoAttack(v) => v.components().iter().map(|c| Self::parse(c)).collect(),
            _ => Ok(vec![self.clone()]),
        }
    }

    /// True when the attack averages its gradient over several passes per step (expectation
    /// over transformation: `apgd-ce-eot20`, `autoattack-rand`), the only kind whose robust
    /// accuracy means something on a randomized model; every other attack takes one forward
    /// pass per gradient (or per query) and is fooled by the noise.
    pub fn averages_over_randomness(&self) -> bool {
        match self.kind {
            AttackKind::Apgd | AttackKind::ApgdT => self.eot.is_some_and(|n| n > 1),
            AttackKind::AutoAttack(v) => v == AutoAttackVersion::Rand,
            _ => false,
        }
    }

    /// Parses a comma-separated list such as `fgsm,pgd-20,cw`; an AutoAttack name stands
    /// for its component attacks (see [`AttackSpec::expand`]).
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for p in s.split(',').filter(|p| !p.trim().is_empty()) {
            out.extend(Self::parse(p)?.expand()?);
        }
        Ok(out)
    }

    /// The attack, completed and validated with `settings`.
    pub fn build(&self, settings: &AttackSettings) -> Result<Box<dyn Attack>> {
        let eps = settings.eps;
        let loss = self.loss.unwrap_or(settings.loss);
        Ok(match self.kind {
            AttackKind::Fgsm => Box::new(
                FgsmParams {
                    eps,
                    random_start: None,
                    loss,
                }
                .check()?,
            ),
            AttackKind::FgsmRs => Box::new(
                FgsmParams {
                    eps,
                    random_start: Some(settings.alpha.unwrap_or(1.25 * eps).max(1e-12)),
                    loss,
                }
                .check()?,
            ),
            AttackKind::Pgd => {
                let steps = self.steps.unwrap_or(settings.steps);
                if steps == 0 {
                    return Err(param("steps", "must be at least 1"));
                }
                Box::new(
                    PgdParams {
                        norm: self.norm.unwrap_or(settings.norm),
                        eps,
                        alpha: settings.alpha.unwrap_or((2.5 * eps / steps as f64).max(1e-12)),
                        steps,
                        restarts: self.restarts.unwrap_or(settings.restarts),
                        random_start: settings.random_start,
                        loss,
                        early_stop: false,
                    }
                    .check()?,
                )
            }
            AttackKind::Cw => {
                let mut p = CwParams::default();
                if let Some(s) = self.steps {
                    p.steps = s;
                }
                Box::new(p.check()?)
            }
            AttackKind::Apgd | AttackKind::ApgdT => {
                let targeted = self.kind == AttackKind::ApgdT;
                let norm = self.norm.unwrap_or(settings.norm);
                Box::new(
                    ApgdParams {
                        norm,
                        eps,
                        // The reference's 100 iterations, not the PGD default: APGD's
                        // checkpoints are fractions of the run, and 10 steps leave too few.
                        steps: self.steps.unwrap_or(100),
                        restarts: self.restarts.unwrap_or(settings.restarts),
                        loss: self
                            .loss
                            .unwrap_or(if targeted { LossKind::Dlr } else { settings.loss }),
                        targets: targeted.then_some(9),
                        eot: self.eot.unwrap_or(1),
                        random_start: settings.random_start,
                        // As AutoAttack runs L1 APGD: in stages at 3, 2 and 1 times eps.
                        large_eps: norm == Norm::L1,
                        ..ApgdParams::default()
                    }
                    .check()?,
                )
            }
            AttackKind::Fab | AttackKind::FabT => Box::new(
                FabParams {
                    norm: self.norm.unwrap_or(settings.norm),
                    eps,
                    steps: self.steps.unwrap_or(100),
                    targeted: self.kind == AttackKind::FabT,
                    restarts: self.restarts.unwrap_or(settings.restarts),
                    ..FabParams::default()
                }
                .check()?,
            ),
            AttackKind::Square => Box::new(
                SquareParams {
                    norm: self.norm.unwrap_or(settings.norm),
                    eps,
                    queries: self.steps.unwrap_or(5000),
                    ..SquareParams::default()
                }
                .check()?,
            ),
            AttackKind::AutoAttack(v) => Box::new(AutoAttack::new(v, settings.norm, eps)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() -> Result<()> {
        assert_eq!(AttackSpec::parse("pgd-20")?.steps, Some(20));
        assert_eq!(AttackSpec::parse("pgd-l2-50")?.norm, Some(Norm::L2));
        assert_eq!(AttackSpec::parse("fgsm-rs")?.kind, AttackKind::FgsmRs);
        assert_eq!(AttackSpec::parse("cw-200")?.steps, Some(200));
        for bad in ["pgd-x", "fgsm-3", "deepfool", "pgd-0", ""] {
            assert!(AttackSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(AttackSpec::parse_list("fgsm, pgd-20,cw")?.len(), 3);
        for (name, eot) in [
            ("autoattack-rand", true),
            ("apgd-ce-eot20", true),
            ("apgd-t-eot2", true),
            ("apgd-ce", false),
            ("apgd-ce-eot1", false),
            ("pgd-20", false),
            ("square", false),
            ("autoattack", false),
        ] {
            assert_eq!(AttackSpec::parse(name)?.averages_over_randomness(), eot, "{name}");
        }
        assert!(AttackSpec::parse_list("autoattack-rand")?
            .iter()
            .all(AttackSpec::averages_over_randomness));
        let p = AttackSpec::parse("pgd-cw-20")?;
        assert_eq!(
            (p.kind, p.loss, p.steps),
            (AttackKind::Pgd, Some(LossKind::CwMargin), Some(20))
        );
        assert_eq!(
            AttackSpec::parse("fgsm-rs-ce")?.loss,
            Some(LossKind::CrossEntropy)
        );
        assert_eq!(AttackSpec::parse("pgd-l2-margin-5")?.norm, Some(Norm::L2));
        for bad in ["cw-cw", "pgd-ce-cw-10", "fgsm-cw-3"] {
            assert!(AttackSpec::parse(bad).is_err(), "{bad}");
        }
        let s = AttackSettings::default();
        let a = AttackSpec::parse("pgd-cw-20")?.build(&s)?;
        let b = AttackSpec::parse("pgd-20")?.build(&s)?;
        assert_ne!(a.name(), b.name(), "the loss must reach the attack");
        Ok(())
    }

    #[test]
    fn autoattack_names_parse() -> Result<()> {
        let p = AttackSpec::parse("apgd-dlr-l2-50-r5-eot20")?;
        assert_eq!(
            (p.kind, p.loss, p.norm, p.steps, p.restarts, p.eot),
            (
                AttackKind::Apgd,
                Some(LossKind::Dlr),
                Some(Norm::L2),
                Some(50),
                Some(5),
                Some(20)
            )
        );
        assert_eq!(AttackSpec::parse("apgd-t")?.kind, AttackKind::ApgdT);
        assert_eq!(AttackSpec::parse("square-1000")?.steps, Some(1000));
        assert_eq!(
            AttackSpec::parse("autoattack-rand")?.kind,
            AttackKind::AutoAttack(AutoAttackVersion::Rand)
        );
        assert_eq!(AttackSpec::parse("fab-t-50")?.kind, AttackKind::FabT);
        for bad in [
            "apgd-t-eot0",
            "apgd-ce-r0",
            "square-dlr",
            "autoattack-fast",
            "autoattack-20",
            "fab-ce",
            "fab-t-ce",
            "fab-eot5",
        ] {
            assert!(AttackSpec::parse(bad).is_err(), "{bad}");
        }
        let names: Vec<String> = AttackSpec::parse_list("pgd-20,autoattack")?
            .into_iter()
            .map(|s| s.text)
            .collect();
        assert_eq!(names, ["pgd-20", "apgd-ce", "apgd-t", "fab-t", "square"]);
        let s = AttackSettings {
            eps: 0.3,
            ..AttackSettings::default()
        };
        let a = AttackSpec::parse("apgd-ce")?.build(&s)?;
        assert!(
            a.name().contains("steps=100"),
            "the reference's 100 iterations: {}",
            a.name()
        );
        let t = AttackSpec::parse("apgd-t")?.build(&s)?;
        assert!(t.name().starts_with("apgd-t(targets=9"), "{}", t.name());
        let q = AttackSpec::parse("square")?.build(&s)?;
        assert!(q.name().contains("queries=5000"), "{}", q.name());
        assert!(AttackSpec::parse("autoattack")?
            .build(&s)?
            .name()
            .contains("apgd-t"));
        Ok(())
    }

    #[test]
    fn zero_steps_is_a_steps_error() {
        let s = AttackSettings {
            steps: 0,
            ..AttackSettings::default()
        };
        let e = AttackSpec::parse("pgd").and_then(|p| p.build(&s)).err();
        assert!(
            matches!(e, Some(crate::Error::InvalidParam { name: "steps", .. })),
            "{e:?}"
        );
        let e = PgdParams {
            steps: 0,
            alpha: f64::INFINITY,
            ..PgdParams::default()
        }
        .check()
        .err();
        assert!(
            matches!(e, Some(crate::Error::InvalidParam { name: "steps", .. })),
            "{e:?}"
        );
    }

    #[test]
    fn sweeps_parse() -> Result<()> {
        let v = parse_sweep("0:8/255:2/255", "eps")?;
        assert_eq!(v.len(), 5);
        assert!((v[4] - 8.0 / 255.0).abs() < 1e-12);
        assert_eq!(parse_sweep("0.1,0.2", "eps")?, vec![0.1, 0.2]);
        assert!(parse_sweep("1:0:0.1", "eps").is_err());
        Ok(())
    }

    #[test]
    fn defaults_follow_the_literature() -> Result<()> {
        let s = AttackSettings {
            eps: 0.3,
            ..AttackSettings::default()
        };
        let a = AttackSpec::parse("pgd-40")?.build(&s)?;
        assert!(
            a.name().contains("alpha=0.0187") && a.name().contains("steps=40"),
            "{}",
            a.name()
        );
        Ok(())
    }
}
