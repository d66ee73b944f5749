//! # temper-attacks
//!
//! Adversarial attacks for any [`temper_core::Classifier`], written once for every device:
//! [`Fgsm`] (optionally with the uniform random start of Fast-AT), [`Pgd`] (L-inf and L2,
//! random start, restarts keeping the per-sample worst case, targeted or untargeted,
//! cross-entropy, CW-margin or DLR loss, per-sample early stop), [`CarliniWagner`] L2, and
//! AutoAttack: [`Apgd`] (APGD-CE, APGD-DLR, APGD-T; L-inf, L2, L1; with EOT), [`Fab`] (FAB and
//! FAB-T; L-inf, L2), [`Square`] (L-inf, L2) and the [`AutoAttack`] ensemble.
//!
//! Conventions, shared with torchattacks: inputs are pixels in `[0, 1]`, eps is in pixel
//! units (`8/255`), the model is put in eval mode for the attack and restored afterwards,
//! and only input gradients are computed (parameters are detached).
//!
//! Hyper-parameters are validated once: `PgdParams { .. }.check()` returns a [`Pgd`], the
//! only type that can run.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use temper_attacks::{Attack, Goal, PgdParams};
//! use temper_core::Classifier;
//! use temper_models::{build, ModelConfig, ModelKind};
//!
//! # fn main() -> anyhow::Result<()> {
//! let model = build(&ModelConfig::new(ModelKind::SmallCnn, 10).check()?, &Device::Cpu)?;
//! let x = Tensor::rand(0f32, 1f32, (4, 1, 28, 28), &Device::Cpu)?;
//! let y = Tensor::new(&[3u32, 1, 4, 1], &Device::Cpu)?;
//! let pgd = PgdParams { eps: 0.3, alpha: 0.01, steps: 5, ..PgdParams::default() }.check()?;
//! let mut rng = temper_core::seed::rng("attack");
//! let out = pgd.perturb(&model, &x, &y, Goal::Untargeted, &mut rng)?;
//! assert!(out.linf.iter().all(|&d| d <= 0.3 + 1e-6));
//! # Ok(()) }
//! ```

mod apgd;
mod autoattack;
mod cw;
mod error;
mod fab;
mod fgsm;
mod loss;
mod norm;
mod ops;
mod pgd;
mod problem;
pub mod spec;
mod square;

pub use apgd::{checkpoints, Apgd, ApgdParams, ApgdTrace};
pub use autoattack::{components as autoattack_components, fingerprint, AutoAttack, AutoAttackVersion};
pub use cw::{CarliniWagner, CwParams};
pub use error::{Error, Result};
pub use fab::{projection_linf, Fab, FabParams};
pub use fgsm::{Fgsm, FgsmParams};
pub use loss::{dlr, dlr_targeted, LossKind};
pub use norm::{per_sample_l1, per_sample_l2, per_sample_linf, Norm};
pub use pgd::{Pgd, PgdParams};
pub use square::{square_p, Square, SquareParams};

use candle_core::Tensor;
use temper_core::seed::Rng;
use temper_core::Classifier;

/// What the attack tries to achieve.
#[derive(Debug, Clone, Copy)]
pub enum Goal<'a> {
    /// Any wrong class.
    Untargeted,
    /// The given class per sample, `(N,)` integer labels.
    Targeted(&'a Tensor),
}

/// Work done, counted in images through the model, so costs compare across hardware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    /// Images passed forward through the model.
    pub forward: u64,
    /// Images passed backward through the model.
    pub backward: u64,
    /// Of the forward passes, the score queries of black-box attacks (Square): the number
    /// the black-box literature reports.
    #[serde(default)]
    pub queries: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.forward += o.forward;
        self.backward += o.backward;
        self.queries += o.queries;
    }
}

/// The result of an attack on a batch.
#[derive(Debug, Clone)]
pub struct AttackOutput {
    /// Adversarial inputs, same shape as the clean ones, in `[0, 1]`.
    pub adv: Tensor,
    /// Per sample: the attack reached its goal (wrong class, or the target class).
    pub success: Vec<bool>,
    /// Per sample: the attack's objective at the returned point (higher is stronger).
    pub loss: Vec<f32>,
    /// Per sample: `‖adv - x‖∞`.
    pub linf: Vec<f32>,
    /// Per sample: `‖adv - x‖₂`.
    pub l2: Vec<f32>,
    /// Per sample: `‖adv - x‖₁`.
    pub l1: Vec<f32>,
    /// Per sample: the model's prediction at the returned point.
    pub pred: Vec<u32>,
    /// Work done.
    pub cost: Cost,
    /// What the attack changed on its own and the user should know, e.g. a loss that is
    /// undefined for this model (DLR with fewer than 3 classes) replaced by a defined one.
    pub notes: Vec<String>,
}

/// An adversarial attack.
pub trait Attack: Send + Sync {
    /// A short description, e.g. `pgd-linf(eps=0.0314, alpha=0.0078, steps=10)`.
    fn name(&self) -> String;

    /// The threat model's norm.
    fn norm(&self) -> Norm;

    /// The perturbation budget, or `None` for minimum-norm attacks (Carlini-Wagner).
    fn eps(&self) -> Option<f64>;

    /// Attacks the clean batch `x` (pixels in `[0, 1]`, NCHW) with true labels `y` (`(N,)`).
    /// The model runs in eval mode and is restored to its previous mode afterwards.
    fn perturb(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        goal: Goal<'_>,
        rng: &mut Rng,
    ) -> Result<AttackOutput>;
}
