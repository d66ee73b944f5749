//! One [`TrainStep`] per training method, and the one place that maps a configured
//! [`Method`] to its step.

mod fast_at;
mod finetune;
mod natural;
mod pgd_at;
pub mod trades;

pub use fast_at::FastAt;
pub use finetune::Finetune;
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
    })
}
