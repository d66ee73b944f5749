//! Weight interpolation: the model on the straight line between two parameter sets of the same
//! architecture, `(1 - alpha) * a + alpha * b`.
//!
//! Every entry is interpolated, buffers included: BatchNorm running means and variances are
//! blended with the same `alpha` as the weights (the statistics of neither end model describe
//! the activations of the blend exactly; the linear blend is what weight-space interpolation
//! studies such as Wortsman et al.'s WiSE-FT use without recomputing them), and the integer
//! `num_batches_tracked` counter is blended and rounded. `alpha` outside `[0, 1]`
//! extrapolates along the same line.

use crate::error::{ShapeMismatch, WeightMismatch};
use crate::{Error, ParamStore, Result};
use candle_core::DType;

/// Every way `b` differs from `a`: keys of `a` that `b` lacks (`missing`), keys of `b` that `a`
/// lacks (`unexpected`), and keys whose shapes or dtypes differ (`shape`, with `a`'s shape as
/// `expected`; a dtype difference shows as equal shapes). Empty when they can be interpolated.
pub fn differences(a: &ParamStore, b: &ParamStore) -> WeightMismatch {
    let mut m = WeightMismatch::default();
    for e in a.entries() {
        match b.get(&e.name) {
            None => m.missing.push(e.name.clone()),
            Some(f) if f.var.dims() != e.var.dims() || f.var.dtype() != e.var.dtype() => {
                m.shape.push(ShapeMismatch {
                    key: e.name.clone(),
                    expected: e.var.dims().to_vec(),
                    found: f.var.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    m.unexpected = b
        .entries()
        .iter()
        .filter(|e| a.get(&e.name).is_none())
        .map(|e| e.name.clone())
        .collect();
    m
}

/// Writes `(1 - alpha) * a + alpha * b` into every entry of `out`.
///
/// `a`, `b` and `out` must hold the same keys with the same shapes and dtypes (the same
/// architecture); otherwise nothing is written and the error lists every difference, naming
/// `a` and `b` by `names`. `alpha` must be finite. f32 entries are blended in f32; i64
/// counters are blended and rounded to the nearest integer.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use temper_core::{Builder, Init, Role};
/// let store = |v: f64| -> temper_core::Result<temper_core::ParamStore> {
///     let b = Builder::zeroed(&Device::Cpu);
///     b.param("w", &[2], Init::Const(v), Role::Weight)?;
///     b.buffer("bn.running_var", &[1], Init::Const(v))?;
///     Ok(b.finish())
/// };
/// let (a, b, out) = (store(1.0)?, store(3.0)?, store(0.0)?);
/// temper_core::interpolate::interpolate(&a, &b, 0.25, &out, ("A", "B"))?;
/// assert_eq!(out.get("w").unwrap().var.as_tensor().to_vec1::<f32>()?, vec![1.5, 1.5]);
/// // Buffers (BatchNorm running statistics) follow the same line.
/// assert_eq!(out.get("bn.running_var").unwrap().var.as_tensor().to_vec1::<f32>()?, vec![1.5]);
/// # Ok::<(), temper_core::Error>(())
/// ```
pub fn interpolate(
    a: &ParamStore,
    b: &ParamStore,
    alpha: f64,
    out: &ParamStore,
    names: (&str, &str),
) -> Result<()> {
    if !alpha.is_finite() {
        return Err(Error::param("alpha", format!("{alpha} is not a finite number")));
    }
    for (other, what) in [(b, names.1), (out, "the interpolated model")] {
        let d = differences(a, other);
        if !d.is_empty() {
            return Err(Error::StoresDiffer {
                a: names.0.to_string(),
                b: what.to_string(),
                mismatch: Box::new(d),
            });
        }
    }
    // Compute every entry first, then write, so a failure leaves `out` as it was.
    let mut staged = Vec::with_capacity(a.len());
    for e in a.entries() {
        let ta = e.var.as_tensor().detach();
        let Some(tb) = b.get(&e.name).map(|f| f.var.as_tensor().detach()) else {
            continue;
        };
        let dtype = ta.dtype();
        let blend = if dtype == DType::F32 {
            ((ta * (1.0 - alpha))? + (tb * alpha)?)?
        } else {
            let (fa, fb) = (ta.to_dtype(DType::F64)?, tb.to_dtype(DType::F64)?);
            ((fa * (1.0 - alpha))? + (fb * alpha)?)?
                .round()?
                .to_dtype(dtype)?
        };
        staged.push((e.name.as_str(), blend));
    }
    for (name, t) in staged {
        if let Some(e) = out.get(name) {
            e.var.set(&t)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Builder, Init, Role};
    use candle_core::Device;

    fn store(v: f64, extra: Option<(&str, &[usize])>) -> Result<ParamStore> {
        let b = Builder::zeroed(&Device::Cpu);
        b.param("conv.weight", &[2, 3], Init::Const(v), Role::Weight)?;
        b.param("conv.bias", &[2], Init::Const(-v), Role::NoDecay)?;
        b.buffer("bn.running_mean", &[2], Init::Const(2.0 * v))?;
        b.counter("bn.num_batches_tracked")?;
        if let Some((name, shape)) = extra {
            b.param(name, shape, Init::Const(v), Role::Weight)?;
        }
        Ok(b.finish())
    }

    fn values(s: &ParamStore, key: &str) -> Result<Vec<f32>> {
        Ok(s.get(key)
            .ok_or_else(|| Error::param(key, "missing"))?
            .var
            .as_tensor()
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    #[test]
    fn ends_reproduce_each_model_and_the_middle_is_the_mean() -> Result<()> {
        let (a, b, out) = (store(1.0, None)?, store(5.0, None)?, store(0.0, None)?);
        a.get("bn.num_batches_tracked")
            .ok_or_else(|| Error::param("n", "missing"))?
            .var
            .set(&candle_core::Tensor::new(10i64, &Device::Cpu)?)?;
        for (alpha, w, bias, mean, n) in [
            (0.0, 1.0, -1.0, 2.0, 10),
            (1.0, 5.0, -5.0, 10.0, 0),
            (0.5, 3.0, -3.0, 6.0, 5),
            (0.25, 2.0, -2.0, 4.0, 8),
            (-0.5, -1.0, 1.0, -2.0, 15),
        ] {
            interpolate(&a, &b, alpha, &out, ("A", "B"))?;
            assert_eq!(values(&out, "conv.weight")?, vec![w; 6], "alpha {alpha}");
            assert_eq!(values(&out, "conv.bias")?, vec![bias; 2]);
            assert_eq!(values(&out, "bn.running_mean")?, vec![mean; 2]);
            let t = out
                .get("bn.num_batches_tracked")
                .map(|e| e.var.as_tensor().clone());
            let n_out = t
                .ok_or_else(|| Error::param("n", "missing"))?
                .to_scalar::<i64>()?;
            // 7.5 rounds away from zero.
            assert_eq!(n_out, if alpha == 0.25 { 8 } else { n }, "alpha {alpha}");
        }
        Ok(())
    }

    #[test]
    fn different_architectures_are_refused_with_every_difference_named() -> Result<()> {
        let a = store(1.0, Some(("fc.weight", &[4, 2])))?;
        let b = store(2.0, Some(("fc.weight", &[4, 3])))?;
        let out = store(0.0, Some(("fc.weight", &[4, 2])))?;
        let before = values(&out, "conv.weight")?;
        let e = interpolate(&a, &b, 0.5, &out, ("nat.safetensors", "ft.safetensors"))
            .err()
            .ok_or_else(|| Error::param("test", "accepted different shapes"))?
            .to_string();
        assert!(
            e.contains("nat.safetensors") && e.contains("ft.safetensors"),
            "{e}"
        );
        assert!(
            e.contains("fc.weight") && e.contains("[4, 2]") && e.contains("[4, 3]"),
            "{e}"
        );
        // Nothing was written.
        assert_eq!(values(&out, "conv.weight")?, before);

        let c = store(2.0, Some(("head.weight", &[4, 2])))?;
        let e = interpolate(&a, &c, 0.5, &out, ("A", "C"))
            .err()
            .ok_or_else(|| Error::param("test", "accepted different keys"))?
            .to_string();
        assert!(e.contains("fc.weight") && e.contains("head.weight"), "{e}");
        let d = differences(&a, &c);
        assert_eq!(
            (d.missing, d.unexpected),
            (vec!["fc.weight".to_string()], vec!["head.weight".to_string()])
        );
        assert!(interpolate(&a, &a, f64::NAN, &out, ("A", "A")).is_err());
        Ok(())
    }
}
