//! One [`TrainStep`] per training method, and the one place that maps a configured
//! [`Method`] to its step.

mod fast_at;
mod finetune;
pub mod hero;
pub mod l2p;
mod natural;
mod pgd_at;
pub mod trades;

pub use fast_at::FastAt;
pub use finetune::Finetune;
pub use hero::{Hero, HeroParams};
pub use l2p::{L2pParams, Learn2Perturb};
pub use natural::Natural;
pub use pgd_at::PgdAt;
pub use trades::Trades;

use crate::config::{Method, ValidTrainConfig};
use crate::step::TrainStep;
use crate::Result;

/// The step of the configured method, with the run's threat model.
pub fn for_config(v: &ValidTrainConfig) -> Result<Box<dyn TrainStep>> {
    let cfg = v.get();
    let t = cfg.threat;
    Ok(match cfg.method {
        Method::Natural => Box::new(Natural),
        Method::PgdAt => Box::new(PgdAt::new(t.eps, t.alpha, t.steps)?),
        Method::FgsmRs => Box::new(FastAt::new(t.eps, t.alpha, cfg.co_drop)?),
        Method::Trades => Box::new(Trades::new(t.eps, t.alpha, t.steps, cfg.trades_beta)),
        Method::Finetune => Box::new(Finetune::new(&cfg.finetune_attack, t.eps, t.alpha, t.steps)?),
        Method::Hero => Box::new(cfg.hero.check()?),
        Method::L2p => Box::new(Learn2Perturb::new(cfg.l2p.check()?, t.eps, t.alpha, t.steps)?),
    })
}

/// Checks what a method asks of its settings and of the model, when the configuration is
/// checked: HERO's and Learn2Perturb's hyper-parameters, and the model each can train.
pub(crate) fn check_method(
    method: &Method,
    hero: &HeroParams,
    l2p: &L2pParams,
    model: &temper_models::ValidModelConfig,
) -> Result<()> {
    let m = model.get();
    match method {
        Method::Hero => {
            hero.check()?;
            // Its finite differences compare passes that must differ only in the weights.
            if model.is_randomized() {
                return Err(crate::error::param(
                    "method",
                    "hero needs a deterministic model: this one has noise modules",
                ));
            }
            let dropout = match m.kind {
                temper_models::ModelKind::Vgg16Bn | temper_models::ModelKind::MobileNetV2 => {
                    m.dropout.is_none_or(|p| p > 0.0)
                }
                _ => false,
            };
            if dropout {
                return Err(crate::error::param(
                    "method",
                    format!(
                        "hero needs a model without dropout ({} has it unless its dropout is 0): \
                         its finite differences need the same masks in every pass",
                        m.kind
                    ),
                ));
            }
        }
        Method::L2p => {
            l2p.check()?;
            if !m.noise_injection {
                return Err(crate::error::param(
                    "method",
                    format!(
                        "l2p trains the noise modules of a model with noise_injection on, which {} \
                         has off (Learn2Perturb's modules exist for preact-resnet18)",
                        m.kind
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}
