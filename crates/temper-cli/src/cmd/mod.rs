//! One module per subcommand.

pub mod attack;
pub mod data;
pub mod demo;
pub mod eval;
pub mod gpu_check;
pub mod info;
pub mod model;
pub mod quant;
pub mod quantize;
pub mod report;
pub mod sched;
pub mod train;
