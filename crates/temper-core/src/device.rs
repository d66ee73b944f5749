//! Device selection from the strings users type: `cpu`, `cuda`, `cuda:1`, `metal`.

use crate::{Error, Result};
use candle_core::Device;

/// Parses a device string and opens the device.
///
/// Accepted forms are `cpu`, `cuda`, `cuda:N`, `metal` and `metal:N`. A device whose
/// support was not compiled in, or that is not present, gives an [`Error::Device`] naming the
/// string and the reason.
///
/// ```
/// let dev = temper_core::device::parse("cpu").unwrap();
/// assert!(dev.is_cpu());
/// assert!(temper_core::device::parse("tpu").is_err());
/// ```
pub fn parse(spec: &str) -> Result<Device> {
    let err = |reason: String| Error::Device {
        spec: spec.to_string(),
        reason,
    };
    let s = spec.trim().to_ascii_lowercase();
    let (kind, ordinal) = match s.split_once(':') {
        Some((k, n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| err(format!("'{n}' is not a device ordinal")))?;
            (k.to_string(), n)
        }
        None => (s.clone(), 0),
    };
    match kind.as_str() {
        "cpu" if s.contains(':') => Err(err("cpu takes no ordinal".into())),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                return Err(err(
                    "this build has no CUDA support; rebuild with `--features cuda`".into(),
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| err(e.to_string()))
        }
        "metal" => {
            if !cfg!(feature = "metal") {
                return Err(err(
                    "this build has no Metal support; rebuild with `--features metal`".into(),
                ));
            }
            Device::new_metal(ordinal).map_err(|e| err(e.to_string()))
        }
        _ => Err(err("expected one of cpu, cuda, cuda:N, metal, metal:N".into())),
    }
}

/// The feature flags this build was compiled with, among `cuda`, `cudnn` and `metal`.
pub fn compiled_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    if cfg!(feature = "cudnn") {
        f.push("cudnn");
    }
    if cfg!(feature = "metal") {
        f.push("metal");
    }
    f
}

/// The devices that can be opened right now, spelled as [`parse`] accepts them.
pub fn available() -> Vec<String> {
    let mut out = vec!["cpu".to_string()];
    if cfg!(feature = "cuda") {
        // Probe ordinals until one fails to open; a machine rarely has more than a handful.
        for i in 0..16 {
            if Device::new_cuda(i).is_ok() {
                out.push(format!("cuda:{i}"));
            } else {
                break;
            }
        }
    }
    if cfg!(feature = "metal") && Device::new_metal(0).is_ok() {
        out.push("metal".to_string());
    }
    out
}

/// A short human-readable name for a device, e.g. `cpu` or `cuda:0`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The environment variable of candle's CPU thread pool for element-wise operations that
/// sets how long an idle worker spins before it sleeps.
pub const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Sets up the process for fast CPU tensor work; call it first thing in `main`, before any
/// tensor operation. Two things, both measured on the 2-core development machine
/// (docs/performance.md):
///
/// - Idle workers of candle's element-wise CPU pool sleep at once instead of spinning (unless
///   the user has set [`SPIN_LIMIT_VAR`]; candle reads it once, when the pool starts).
///   candle 0.11 runs element-wise operations on a pool of its own whose idle workers spin
///   25,000 times before sleeping, while the convolutions' matrix products run on rayon's
///   pool; on few cores the spinning takes the cores the products need (a small-cnn PGD step
///   ran 3-4 times faster under load with the limit at 0).
/// - Large freed buffers are kept for reuse ([`crate::kernels::alloc::keep_freed_memory`]).
pub fn tune_cpu_runtime() {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(SPIN_LIMIT_VAR, "0");
    }
    crate::kernels::alloc::keep_freed_memory();
}
