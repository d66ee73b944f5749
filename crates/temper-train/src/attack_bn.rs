//! The BatchNorm mode of the inner attack during adversarial training.
//!
//! The reference implementations disagree with Temper's attacks, which always run the model
//! in eval mode: PGD-AT (Madry et al.; Rice et al.'s `train_cifar.py`) and Fast-AT (Wong et
//! al.'s `train_fgsm.py`) call `model.train()` and attack with it, so BatchNorm normalises
//! with the statistics of the batch being perturbed; TRADES (Zhang et al.'s `trades.py`)
//! calls `model.eval()` for its attack. [`AttackBn`] makes the mode a setting, defaulting to
//! the reference of each method.
//!
//! Running statistics. In PyTorch every train-mode forward updates the running mean and
//! variance, so the references update them once per attack step (Wong: one attack forward
//! and one training forward per iteration; Rice et al.: one per PGD step, one to score the
//! final point, one training forward). Temper's attacks also make forwards the references do
//! not (a last evaluation of the final point to report success). So [`AttackView`] lets a
//! train-mode forward update the statistics only when it is an attack step, recognised by an
//! input that takes part in autograd (the attack asks for its gradient), and restores them
//! after any other forward. Per iteration this gives exactly Wong's count for Fast-AT and
//! one fewer than Rice et al.'s for PGD-AT: never more than the reference.

use crate::config::Method;
use crate::error::param;
use crate::Result;
use candle_core::{Device, Tensor};
use temper_core::{Classifier, ForwardOpts, Mode, ModelInfo, ParamStore};

/// BatchNorm mode of the inner attack during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackBn {
    /// Batch statistics, as `model.train()` (PGD-AT and Fast-AT references).
    Train,
    /// Running statistics, as `model.eval()` (TRADES reference; Temper before the setting
    /// existed).
    Eval,
}

impl AttackBn {
    /// Parses `train` or `eval`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(AttackBn::Train),
            "eval" => Ok(AttackBn::Eval),
            _ => Err(param("attack-bn", format!("'{s}' is not train or eval"))),
        }
    }

    /// The name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            AttackBn::Train => "train",
            AttackBn::Eval => "eval",
        }
    }

    /// What the reference implementation of `method` does: eval for TRADES and
    /// Learn2Perturb (whose PGD calls `model.eval()`), train otherwise (fine-tuning follows
    /// the PGD-AT code it is built on; natural training and HERO have no attack).
    pub fn reference(method: Method) -> Self {
        match method {
            Method::Trades | Method::L2p => AttackBn::Eval,
            Method::Natural | Method::PgdAt | Method::FgsmRs | Method::Finetune | Method::Hero => {
                AttackBn::Train
            }
        }
    }

    /// The mode of runs whose config.toml predates the setting: they attacked in eval mode.
    pub(crate) fn legacy() -> Self {
        AttackBn::Eval
    }
}

/// A model as an attack sees it during training: every forward runs in `mode`, whatever
/// mode the attack asks for; in train mode only attack steps update BatchNorm running
/// statistics (see the module documentation).
pub struct AttackView<'a> {
    model: &'a dyn Classifier,
    mode: Mode,
}

impl<'a> AttackView<'a> {
    /// `model` with its attack forwards in the mode `bn` names.
    pub fn new(model: &'a dyn Classifier, bn: AttackBn) -> Self {
        let mode = match bn {
            AttackBn::Train => Mode::Train,
            AttackBn::Eval => Mode::Eval,
        };
        AttackView { model, mode }
    }
}

impl Classifier for AttackView<'_> {
    fn info(&self) -> &ModelInfo {
        self.model.info()
    }

    fn forward_opts(&self, x: &Tensor, opts: ForwardOpts) -> temper_core::Result<Tensor> {
        let opts = ForwardOpts {
            mode: self.mode,
            ..opts
        };
        if self.mode == Mode::Eval || x.track_op() {
            return self.model.forward_opts(x, opts);
        }
        // A forward that is not an attack step: batch statistics, but the buffers are put
        // back afterwards, so it leaves the running statistics as the reference would.
        let saved: Vec<(&candle_core::Var, Tensor)> = self
            .model
            .params()
            .buffers()
            .map(|e| Ok((&e.var, e.var.as_tensor().copy()?)))
            .collect::<temper_core::Result<_>>()?;
        let out = self.model.forward_opts(x, opts);
        for (var, t) in saved {
            var.set(&t)?;
        }
        out
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    /// Attacks set eval mode for their scope; the view's mode is fixed, and the model's own
    /// mode (train, during the step) must stay as the loop set it.
    fn set_mode(&self, _mode: Mode) {}

    fn params(&self) -> &ParamStore {
        self.model.params()
    }

    fn device(&self) -> &Device {
        self.model.device()
    }
}
