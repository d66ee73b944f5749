//! The configuration of a training run, stored as `config.toml` in the run directory.

use crate::attack_bn::AttackBn;
use crate::error::param;
use crate::steps::{HeroParams, L2pParams};
use crate::Result;
use std::path::PathBuf;
use temper_models::ModelConfig;
use temper_sched::{ParamGroup, ParamGroups};

/// The training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Clean examples only.
    Natural,
    /// Madry et al. (2018): train on PGD examples.
    PgdAt,
    /// Wong et al. (2020) "Fast is better than free": FGSM from a random start.
    FgsmRs,
    /// Zhang et al. (2019): clean cross-entropy plus beta times the KL divergence to the
    /// prediction on a KL-maximising perturbation.
    Trades,
    /// Adversarial fine-tuning of given weights (Jeddi et al. 2020): PGD examples and a
    /// slow-start-fast-decay schedule by default.
    Finetune,
    /// HERO (Yang et al.): clean examples, the update at a weight perturbation plus a
    /// Hessian regularizer, for minima that quantize well ([`crate::steps::Hero`]).
    Hero,
    /// Learn2Perturb (Jeddi et al. 2020): learned noise modules and 0.5 clean + 0.5 PGD
    /// cross-entropy ([`crate::steps::Learn2Perturb`]).
    L2p,
}

impl Method {
    /// Parses `natural`, `pgd-at`, `fgsm-rs`, `trades`, `finetune`, `hero`, `l2p`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "natural" => Ok(Method::Natural),
            "pgd-at" | "pgd" | "madry" => Ok(Method::PgdAt),
            "fgsm-rs" | "fast-at" => Ok(Method::FgsmRs),
            "trades" => Ok(Method::Trades),
            "finetune" | "fine-tune" => Ok(Method::Finetune),
            "hero" => Ok(Method::Hero),
            "l2p" | "learn2perturb" => Ok(Method::L2p),
            _ => Err(param(
                "method",
                format!("'{s}' is not one of natural, pgd-at, fgsm-rs, trades, finetune, hero, l2p"),
            )),
        }
    }

    /// The name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Natural => "natural",
            Method::PgdAt => "pgd-at",
            Method::FgsmRs => "fgsm-rs",
            Method::Trades => "trades",
            Method::Finetune => "finetune",
            Method::Hero => "hero",
            Method::L2p => "l2p",
        }
    }

    /// True for methods that train on perturbed inputs.
    pub fn is_adversarial(self) -> bool {
        !matches!(self, Method::Natural | Method::Hero)
    }
}

/// The threat model of the inner attack and of validation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThreatConfig {
    /// L-inf budget in pixel units.
    pub eps: f64,
    /// Inner attack step size: PGD's and TRADES' step, and FGSM-RS's single step (Wong et
    /// al. use 1.25 eps, the default for `fgsm-rs`).
    pub alpha: f64,
    /// Inner attack steps (PGD-AT, TRADES, finetune).
    pub steps: usize,
}

impl ThreatConfig {
    /// Madry's settings for 1-channel 28x28 digits (eps 0.3, step 0.01, 40 steps) and for
    /// everything else (eps 8/255, step 2/255, 10 steps).
    pub fn default_for(input: [usize; 3]) -> Self {
        if input == [1, 28, 28] {
            ThreatConfig {
                eps: 0.3,
                alpha: 0.01,
                steps: 40,
            }
        } else {
            ThreatConfig {
                eps: 8.0 / 255.0,
                alpha: 2.0 / 255.0,
                steps: 10,
            }
        }
    }
}

/// Everything that defines a run. Written to `RUN_DIR/config.toml`; `--resume` reads it back.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Training method.
    pub method: Method,
    /// The model.
    pub model: ModelConfig,
    /// Initial weights (required for `finetune`, optional otherwise).
    pub weights: Option<PathBuf>,
    /// Data set name, as `temper_data::load` takes it.
    pub dataset: String,
    /// Directory of the data set's files (not needed for mnist10k).
    pub data_dir: Option<PathBuf>,
    /// Validation hold-out from the training split: a whole count (`800`), a fraction in
    /// `(0, 1)` (`0.1`), or 0 for no validation.
    pub val_split: f64,
    /// Validation images evaluated each epoch (clean and PGD-10), from the hold-out; at
    /// least 1.
    pub val_size: usize,
    /// Train on only this many images of the training part, evenly spaced through it (every
    /// class of a class-sorted folder stays; the same images for every seed); all when
    /// absent.
    pub train_size: Option<usize>,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning-rate schedule spec, e.g. `ssfd:peak=0.05,warmup=0.3,decay=exp,final=1e-4`.
    pub lr_schedule: String,
    /// Optimizer spec, e.g. `sgd:momentum=0.9,weight_decay=5e-4`.
    pub optimizer: String,
    /// Inner attack and validation threat model.
    pub threat: ThreatConfig,
    /// BatchNorm mode of the inner attack: `train` (batch statistics, the PGD-AT and Fast-AT
    /// references) or `eval` (running statistics, the TRADES reference). Runs written before
    /// the setting existed attacked in eval mode, and resume so.
    #[serde(default = "AttackBn::legacy")]
    pub attack_bn: AttackBn,
    /// Arithmetic of convolutions and linear layers (`f32`, `tf32`, `bf16`); BatchNorm
    /// statistics, losses, optimizer state and master weights stay f32.
    #[serde(default)]
    pub precision: temper_core::kernels::Precision,
    /// Optimizer parameter groups (learning-rate multipliers, frozen groups); empty for one
    /// group of every parameter.
    #[serde(default)]
    pub param_groups: Vec<ParamGroup>,
    /// Inner attack for `finetune`: `pgd` (default) or `fgsm-rs`.
    pub finetune_attack: String,
    /// Quantization-aware training: the spec of the kernels the caller puts under every layer
    /// ([`crate::hooks::LayerTransform`], e.g. `4,per-channel,first-last=8`), or `None` to train
    /// the float model. The run refuses to start or resume without kernels of this spec.
    #[serde(default)]
    pub quantize: Option<String>,
    /// TRADES trade-off beta.
    pub trades_beta: f64,
    /// HERO's hyper-parameters.
    #[serde(default)]
    pub hero: HeroParams,
    /// Learn2Perturb's hyper-parameters.
    #[serde(default)]
    pub l2p: L2pParams,
    /// Random crop (padding 4, or 2 for 28x28) and, for 3-channel data, horizontal flips.
    pub augment: bool,
    /// Global seed.
    pub seed: u64,
    /// Write a resumable checkpoint every this many iterations (0: at epoch ends only).
    pub checkpoint_every: u64,
    /// Write a training line to metrics.jsonl every this many iterations.
    pub log_every: u64,
    /// Fast-AT: stop when validation robust accuracy falls this far (absolute) below its
    /// best, the signature of catastrophic overfitting.
    pub co_drop: f64,
}

impl TrainConfig {
    /// Sensible defaults for `method` on `model` and `dataset`.
    pub fn new(method: Method, model: ModelConfig, dataset: &str) -> Self {
        let input = [model.in_channels, model.input_size.0, model.input_size.1];
        let mut threat = ThreatConfig::default_for(input);
        if method == Method::FgsmRs {
            // Wong et al.'s step: 1.25 eps from a uniform start in the eps ball.
            threat.alpha = 1.25 * threat.eps;
        }
        let mut model = model;
        if method == Method::L2p {
            model.noise_injection = true;
            if input != [1, 28, 28] {
                // The reference's PGD: 7 steps of 0.01 at 8/255.
                threat.alpha = 0.01;
                threat.steps = 7;
            }
        }
        let (lr_schedule, epochs) = match method {
            Method::Finetune => ("ssfd".to_string(), 3),
            Method::FgsmRs => ("cyclic:peak=0.2".to_string(), 10),
            // The reference's decays at epochs 150 and 250 of 350.
            Method::L2p => ("step:lr=0.1,milestones=0.43/0.71".to_string(), 10),
            _ => ("step:lr=0.1,milestones=0.5/0.75".to_string(), 10),
        };
        let optimizer = match method {
            // The reference's (l2p.sh): Nesterov momentum, weight decay 3e-4.
            Method::L2p => "sgd:momentum=0.9,nesterov=true,weight_decay=3e-4",
            _ => "sgd:momentum=0.9,weight_decay=5e-4",
        };
        TrainConfig {
            method,
            model,
            weights: None,
            dataset: dataset.to_string(),
            data_dir: None,
            val_split: 0.1,
            val_size: 500,
            train_size: None,
            epochs,
            batch_size: 128,
            lr_schedule,
            optimizer: optimizer.to_string(),
            threat,
            attack_bn: AttackBn::reference(method),
            precision: temper_core::kernels::Precision::F32,
            param_groups: Vec::new(),
            finetune_attack: "pgd".to_string(),
            quantize: None,
            trades_beta: 6.0,
            hero: HeroParams::default(),
            l2p: L2pParams::default(),
            augment: input != [1, 28, 28],
            seed: 0,
            checkpoint_every: 0,
            log_every: 10,
            co_drop: 0.2,
        }
    }

    /// Validates every field and parses the specs.
    pub fn check(self) -> Result<ValidTrainConfig> {
        let model = self.model.clone().check()?;
        if self.epochs == 0 {
            return Err(param("epochs", "must be at least 1"));
        }
        if self.train_size == Some(0) {
            return Err(param("train-size", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(param("batch-size", "must be at least 1"));
        }
        let v = self.val_split;
        if !(v.is_finite() && v >= 0.0 && (v < 1.0 || v.fract() == 0.0)) {
            return Err(param(
                "val-split",
                format!(
                    "{v} is neither a fraction in [0, 1) nor a whole number of images (0: no validation)"
                ),
            ));
        }
        if self.val_size == 0 {
            return Err(param(
                "val-size",
                "must be at least 1 (to train without validation, set val-split to 0)",
            ));
        }
        let t = &self.threat;
        if !(t.eps.is_finite() && t.eps >= 0.0) {
            return Err(param("eps", format!("{} must be >= 0", t.eps)));
        }
        if !(t.alpha.is_finite() && t.alpha > 0.0) {
            return Err(param("alpha", format!("{} must be > 0", t.alpha)));
        }
        if t.steps == 0 {
            return Err(param("attack-steps", "must be at least 1"));
        }
        if self.method.is_adversarial() && t.eps == 0.0 {
            return Err(param("eps", format!("{} needs eps > 0", self.method.name())));
        }
        if !(self.trades_beta.is_finite() && self.trades_beta >= 0.0) {
            return Err(param("trades-beta", format!("{} must be >= 0", self.trades_beta)));
        }
        if !matches!(self.finetune_attack.as_str(), "pgd" | "fgsm-rs") {
            return Err(param(
                "finetune-attack",
                format!("'{}' is not pgd or fgsm-rs", self.finetune_attack),
            ));
        }
        crate::steps::check_method(&self.method, &self.hero, &self.l2p, &model)?;
        if self.method == Method::Finetune && self.weights.is_none() {
            return Err(param(
                "weights",
                "finetune starts from given weights: pass --weights",
            ));
        }
        if let Some(w) = &self.weights {
            if !w.is_file() {
                return Err(param("weights", format!("'{}' is not a file", w.display())));
            }
        }
        if self.log_every == 0 {
            return Err(param("log-every", "must be at least 1"));
        }
        let schedule = self
            .lr_schedule
            .parse::<temper_sched::ScheduleSpec>()?
            .check(self.epochs as f64)?;
        let optimizer = self.optimizer.parse::<temper_sched::OptimizerConfig>()?;
        optimizer.build()?;
        let groups = ParamGroups::new(self.param_groups.clone())?;
        Ok(ValidTrainConfig {
            cfg: self,
            model,
            schedule,
            optimizer,
            groups,
        })
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| param("config", e.to_string()))
    }

    /// Parses a configuration from TOML text; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| crate::Error::RunDir {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// A [`TrainConfig`] whose values are in range and whose specs parsed.
#[derive(Debug, Clone)]
pub struct ValidTrainConfig {
    pub(crate) cfg: TrainConfig,
    pub(crate) model: temper_models::ValidModelConfig,
    pub(crate) schedule: temper_sched::Schedule,
    pub(crate) optimizer: temper_sched::OptimizerConfig,
    pub(crate) groups: ParamGroups,
}

impl ValidTrainConfig {
    /// The configuration.
    pub fn get(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The parsed learning-rate schedule.
    pub fn schedule(&self) -> &temper_sched::Schedule {
        &self.schedule
    }
}
