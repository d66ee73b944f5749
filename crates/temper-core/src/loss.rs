//! The losses every crate shares: one cross-entropy, one margin, one KL divergence.
//!
//! Attacks, evaluation and training all call these, so "the loss" means the same thing in
//! every number Temper reports. They are written with candle-core alone and are numerically
//! stable for large logits (the row maximum is subtracted before `exp`).

use crate::Result;
use candle_core::{DType, Tensor, D};

/// Row-wise `log_softmax` of `(N, K)` logits, stable for large logits.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Per-sample cross-entropy `(N,)` of `(N, K)` logits against integer `labels` `(N,)`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    Ok(logp.gather(&idx, 1)?.squeeze(1)?.neg()?)
}

/// Mean cross-entropy over the batch (PyTorch's `F.cross_entropy` with `reduction="mean"`).
pub fn cross_entropy_mean(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(cross_entropy(logits, labels)?.mean_all()?)
}

/// One-hot `(N, K)` f32 for integer `labels` `(N,)`.
pub fn one_hot(labels: &Tensor, k: usize) -> Result<Tensor> {
    let n = labels.dim(0)?;
    let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let zeros = Tensor::zeros((n, k), DType::F32, labels.device())?;
    let ones = Tensor::ones((n, 1), DType::F32, labels.device())?;
    Ok(zeros.scatter_add(&idx, &ones, 1)?)
}

/// `z_label - max_{j != label} z_j` per sample `(N,)`: positive when `label` wins.
pub fn margin(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let oh = one_hot(labels, k)?;
    let own = (logits * &oh)?.sum(1)?;
    // Push the label's own logit far down so it cannot be the "other" maximum.
    let others = (logits - (oh * 1e9)?)?.max(D::Minus1)?;
    Ok((own - others)?)
}

/// `sum_i KL(softmax(p_i) || softmax(q_i))` over the batch, with `p` the target
/// distribution (PyTorch's `F.kl_div(log_softmax(q), softmax(p), reduction="sum")`).
pub fn kl_div_sum(p_logits: &Tensor, q_logits: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(p_logits)?;
    let logq = log_softmax(q_logits)?;
    Ok((logp.exp()? * (logp - logq)?)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-5 * (1.0 + b.abs())
    }

    #[test]
    fn cross_entropy_matches_the_formula_and_survives_huge_logits() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1f32, 2.0, 3.0], [1e4, 0.0, -1e4]], &dev)?;
        let y = Tensor::new(&[2u32, 1], &dev)?;
        let ce = cross_entropy(&z, &y)?.to_vec1::<f32>()?;
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!(close(ce[0], lse - 3.0), "{ce:?}");
        assert!(close(ce[1], 1e4), "{ce:?}");
        let mean = cross_entropy_mean(&z, &y)?.to_scalar::<f32>()?;
        assert!(close(mean, (ce[0] + ce[1]) / 2.0));
        Ok(())
    }

    #[test]
    fn margin_and_kl() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1f32, 5.0, 3.0]], &dev)?;
        assert_eq!(margin(&z, &Tensor::new(&[1u32], &dev)?)?.to_vec1::<f32>()?, vec![2.0]);
        assert_eq!(margin(&z, &Tensor::new(&[0u32], &dev)?)?.to_vec1::<f32>()?, vec![-4.0]);
        let kl_self = kl_div_sum(&z, &z)?.to_scalar::<f32>()?;
        assert!(kl_self.abs() < 1e-6);
        let q = Tensor::new(&[[0f32, 0.0, 0.0]], &dev)?;
        let p: Vec<f32> = log_softmax(&z)?.exp()?.flatten_all()?.to_vec1()?;
        let want: f32 = p.iter().map(|&pi| pi * (pi.ln() - (1f32 / 3.0).ln())).sum();
        assert!(close(kl_div_sum(&z, &q)?.to_scalar::<f32>()?, want));
        Ok(())
    }
}
