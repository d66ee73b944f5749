//! Counts that evaluation reports: accuracies, confusion matrices, perturbation sizes and
//! cost.

/// A fraction of samples, kept with its counts so that a reader can judge its precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    /// Samples counted as correct (or robust).
    pub correct: usize,
    /// Samples counted.
    pub total: usize,
    /// `correct / total`, in `[0, 1]`; 0 when `total` is 0.
    pub accuracy: f64,
}

impl Accuracy {
    /// `correct` out of `total`.
    pub fn new(correct: usize, total: usize) -> Self {
        Accuracy {
            correct,
            total,
            accuracy: if total == 0 {
                0.0
            } else {
                correct as f64 / total as f64
            },
        }
    }

    /// The accuracy in percent.
    pub fn percent(&self) -> f64 {
        100.0 * self.accuracy
    }
}

/// Predictions against true labels: `counts[true][predicted]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfusionMatrix {
    /// `counts[t][p]`: samples of true class `t` predicted as class `p`.
    pub counts: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    /// An empty `k x k` matrix.
    pub fn new(k: usize) -> Self {
        ConfusionMatrix {
            counts: vec![vec![0; k]; k],
        }
    }

    /// Counts one sample; labels outside the matrix are ignored (the caller checks them).
    pub fn add(&mut self, truth: u32, predicted: u32) {
        if let Some(c) = self
            .counts
            .get_mut(truth as usize)
            .and_then(|row| row.get_mut(predicted as usize))
        {
            *c += 1;
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Accuracy of each true class: the diagonal over the row sums.
    pub fn per_class(&self) -> Vec<Accuracy> {
        self.counts
            .iter()
            .enumerate()
            .map(|(t, row)| {
                let total: u64 = row.iter().sum();
                Accuracy::new(row[t] as usize, total as usize)
            })
            .collect()
    }

    /// Overall accuracy: the trace over the total.
    pub fn accuracy(&self) -> Accuracy {
        let total: u64 = self.counts.iter().flatten().sum();
        let correct: u64 = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        Accuracy::new(correct as usize, total as usize)
    }
}

/// Sizes of perturbations, in pixel units.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NormStats {
    /// Perturbations measured.
    pub count: usize,
    /// Mean `‖δ‖∞` (0 when `count` is 0).
    pub linf_mean: f64,
    /// Largest `‖δ‖∞`.
    pub linf_max: f64,
    /// Mean `‖δ‖₂`.
    pub l2_mean: f64,
    /// Largest `‖δ‖₂`.
    pub l2_max: f64,
    /// Mean `‖δ‖₁`.
    #[serde(default)]
    pub l1_mean: f64,
    /// Largest `‖δ‖₁`.
    #[serde(default)]
    pub l1_max: f64,
}

/// Accumulates [`NormStats`]; sums are in f64 so that means over many samples stay exact.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NormAcc {
    count: usize,
    linf_sum: f64,
    linf_max: f64,
    l2_sum: f64,
    l2_max: f64,
    l1_sum: f64,
    l1_max: f64,
}

impl NormAcc {
    pub(crate) fn add(&mut self, linf: f32, l2: f32, l1: f32) {
        let (linf, l2, l1) = (f64::from(linf), f64::from(l2), f64::from(l1));
        self.count += 1;
        self.linf_sum += linf;
        self.l2_sum += l2;
        self.l1_sum += l1;
        self.linf_max = self.linf_max.max(linf);
        self.l2_max = self.l2_max.max(l2);
        self.l1_max = self.l1_max.max(l1);
    }

    pub(crate) fn stats(&self) -> NormStats {
        let n = self.count.max(1) as f64;
        NormStats {
            count: self.count,
            linf_mean: self.linf_sum / n,
            linf_max: self.linf_max,
            l2_mean: self.l2_sum / n,
            l2_max: self.l2_max,
            l1_mean: self.l1_sum / n,
            l1_max: self.l1_max,
        }
    }
}

/// Work done and time taken.
///
/// Passes are counted in images through the model ([`temper_attacks::Cost`]), so costs compare
/// across hardware; seconds are wall-clock time on this machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CostSummary {
    /// Images passed forward through the model.
    pub forward: u64,
    /// Images passed backward through the model (input gradients).
    pub backward: u64,
    /// Of the forward passes, score queries of black-box attacks (Square).
    #[serde(default)]
    pub queries: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Images processed (evaluated or attacked).
    pub images: usize,
    /// `images / seconds` (0 when no time passed).
    pub images_per_second: f64,
}

impl CostSummary {
    /// A summary of `cost` for `images` images in `seconds`.
    pub fn new(cost: temper_attacks::Cost, images: usize, seconds: f64) -> Self {
        CostSummary {
            forward: cost.forward,
            backward: cost.backward,
            queries: cost.queries,
            seconds,
            images,
            images_per_second: if seconds > 0.0 {
                images as f64 / seconds
            } else {
                0.0
            },
        }
    }

    /// The pass counts as a [`temper_attacks::Cost`].
    pub fn passes(&self) -> temper_attacks::Cost {
        temper_attacks::Cost {
            forward: self.forward,
            backward: self.backward,
            queries: self.queries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_matrix_gives_per_class_accuracy() {
        let mut m = ConfusionMatrix::new(3);
        for (t, p) in [(0, 0), (0, 1), (1, 1), (2, 2), (2, 2), (2, 0), (7, 0)] {
            m.add(t, p);
        }
        let pc = m.per_class();
        assert_eq!((pc[0].correct, pc[0].total), (1, 2));
        assert_eq!((pc[2].correct, pc[2].total), (2, 3));
        assert_eq!(m.accuracy(), Accuracy::new(4, 6));
        assert_eq!(Accuracy::new(0, 0).accuracy, 0.0);
    }

    #[test]
    fn norm_stats_average_and_max() {
        let mut a = NormAcc::default();
        a.add(0.1, 1.0, 4.0);
        a.add(0.3, 2.0, 6.0);
        let s = a.stats();
        assert_eq!(s.count, 2);
        assert!((s.linf_mean - 0.2).abs() < 1e-7 && (s.l2_max - 2.0).abs() < 1e-12);
        assert_eq!(NormAcc::default().stats().linf_mean, 0.0);
    }
}
