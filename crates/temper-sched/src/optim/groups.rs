//! Parameter groups: which parameters an optimizer step updates, and at what multiple of the
//! scheduled learning rate.
//!
//! Groups are a property of the optimizer's input, not of the model (PyTorch's
//! `param_groups`): a fine-tuning run can give a new head ten times the backbone's learning
//! rate, or freeze the backbone; a method that trains two sets of parameters alternately
//! (noise modules and weights, as Learn2Perturb does) names the groups a step may update with
//! [`Active`]. A parameter belongs to the first group with a prefix of its `state_dict` name;
//! parameters that match no group form the implicit group [`DEFAULT_GROUP`], updated at the
//! scheduled rate.

use crate::{Error, Result};
use temper_core::ParamStore;

/// The name of the implicit group of every parameter that no [`ParamGroup`] claims.
pub const DEFAULT_GROUP: &str = "default";

/// One group of parameters, chosen by name prefix.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// The group's name, used in errors and by [`Active::Only`].
    pub name: String,
    /// A parameter belongs to the group when its `state_dict` name starts with one of these,
    /// e.g. `fc.` for a ResNet head.
    pub prefixes: Vec<String>,
    /// Multiplies the scheduled learning rate, `>= 0`.
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// A frozen group is never updated, and no optimizer state is kept for it.
    #[serde(default)]
    pub frozen: bool,
}

fn one() -> f64 {
    1.0
}

impl ParamGroup {
    /// A group of the parameters under `prefixes`, at the scheduled rate, not frozen.
    pub fn new(name: &str, prefixes: &[&str]) -> Self {
        ParamGroup {
            name: name.to_string(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            lr_scale: 1.0,
            frozen: false,
        }
    }

    /// The same group with learning-rate multiplier `scale`.
    pub fn lr_scale(mut self, scale: f64) -> Self {
        self.lr_scale = scale;
        self
    }

    /// The same group, frozen.
    pub fn frozen(mut self) -> Self {
        self.frozen = true;
        self
    }

    fn claims(&self, param: &str) -> bool {
        self.prefixes.iter().any(|p| param.starts_with(p.as_str()))
    }
}

/// Which groups one optimizer step updates.
#[derive(Debug, Clone, Copy, Default)]
pub enum Active<'a> {
    /// Every group that is not frozen.
    #[default]
    All,
    /// Only the named groups (those not frozen); the others keep their values and state, as
    /// if they belonged to another optimizer.
    Only(&'a [&'a str]),
}

/// Validated parameter groups; [`ParamGroups::default`] is one group of everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamGroups {
    groups: Vec<ParamGroup>,
}

impl ParamGroups {
    /// Checks the groups: names non-empty, unique and not [`DEFAULT_GROUP`], at least one
    /// non-empty prefix each, `lr_scale` finite and `>= 0`.
    pub fn new(groups: Vec<ParamGroup>) -> Result<Self> {
        for (i, g) in groups.iter().enumerate() {
            let what = format!("param_groups.{}", if g.name.is_empty() { "?" } else { &g.name });
            if g.name.is_empty() || g.name == DEFAULT_GROUP {
                return Err(Error::param(
                    what,
                    format!("a group needs a name other than '' and '{DEFAULT_GROUP}'"),
                ));
            }
            if groups[..i].iter().any(|h| h.name == g.name) {
                return Err(Error::param(what, "the name is given twice"));
            }
            if g.prefixes.is_empty() || g.prefixes.iter().any(|p| p.is_empty()) {
                return Err(Error::param(what, "needs at least one non-empty prefix"));
            }
            if !(g.lr_scale.is_finite() && g.lr_scale >= 0.0) {
                return Err(Error::param(
                    what,
                    format!("lr_scale must be a finite number >= 0, got {}", g.lr_scale),
                ));
            }
        }
        Ok(ParamGroups { groups })
    }

    /// The groups, in matching order.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The group that claims `param`, `None` for the default group.
    pub fn group_of(&self, param: &str) -> Option<&ParamGroup> {
        self.groups.iter().find(|g| g.claims(param))
    }

    /// The name of the group that claims `param`.
    pub fn group_name(&self, param: &str) -> &str {
        self.group_of(param).map_or(DEFAULT_GROUP, |g| g.name.as_str())
    }

    /// The learning rate of `param` in a step scheduled at `lr`, or `None` when the step
    /// leaves it alone (its group is frozen, or not among the active ones).
    pub fn lr_for(&self, param: &str, lr: f64, active: Active<'_>) -> Option<f64> {
        let (name, scale, frozen) = match self.group_of(param) {
            Some(g) => (g.name.as_str(), g.lr_scale, g.frozen),
            None => (DEFAULT_GROUP, 1.0, false),
        };
        let on = match active {
            Active::All => true,
            Active::Only(names) => names.contains(&name),
        };
        (on && !frozen).then_some(lr * scale)
    }

    /// Checks the groups against a model: each claims at least one trainable parameter, so a
    /// misspelt prefix is an error rather than a group that silently trains nothing; and
    /// `active` names only groups that exist.
    pub fn check_store(&self, store: &ParamStore) -> Result<()> {
        for g in &self.groups {
            let claimed = store
                .trainable()
                .any(|e| self.group_of(&e.name).is_some_and(|h| h.name == g.name));
            if !claimed {
                return Err(Error::param(
                    format!("param_groups.{}", g.name),
                    format!(
                        "no trainable parameter starts with {} (or an earlier group claims them all)",
                        g.prefixes.join(" or ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that every name in `active` is a group (or [`DEFAULT_GROUP`]).
    pub fn check_active(&self, active: Active<'_>) -> Result<()> {
        if let Active::Only(names) = active {
            for n in names {
                if *n != DEFAULT_GROUP && !self.groups.iter().any(|g| g.name == *n) {
                    return Err(Error::param(
                        "param_groups",
                        format!("a step asks to update group '{n}', which does not exist"),
                    ));
                }
            }
        }
        Ok(())
    }
}
