//! Reading and writing named f32 entries of a parameter store on the host.

use crate::error::param;
use crate::Result;
use candle_core::Tensor;
use temper_core::ParamStore;

/// The entry `key` as a flat f32 vector.
pub(crate) fn read(store: &ParamStore, key: &str) -> Result<Vec<f32>> {
    let e = store
        .get(key)
        .ok_or_else(|| param(key, "is not a parameter of the model"))?;
    Ok(e.var.as_tensor().flatten_all()?.to_vec1::<f32>()?)
}

/// Overwrites the entry `key` (in place, so every layer holding it sees the new values).
pub(crate) fn write(store: &ParamStore, key: &str, values: Vec<f32>) -> Result<()> {
    let e = store
        .get(key)
        .ok_or_else(|| param(key, "is not a parameter of the model"))?;
    let t = Tensor::from_vec(values, e.var.shape(), e.var.device())?;
    e.var.set(&t)?;
    Ok(())
}

/// Copies every entry of `from` into the entry of the same name in `to` (same layouts).
pub(crate) fn copy_all(from: &ParamStore, to: &ParamStore) -> Result<()> {
    for e in from.entries() {
        let dst = to
            .get(&e.name)
            .ok_or_else(|| param(&e.name, "is missing from the rebuilt model"))?;
        let t = e.var.as_tensor().detach().copy()?.to_device(dst.var.device())?;
        dst.var.set(&t)?;
    }
    Ok(())
}

/// Largest absolute difference between two tensors relative to the largest magnitude of `a`.
pub(crate) fn relative_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
    Ok(diff / scale)
}
