//! Auto-PGD (Croce and Hein 2020), L-inf and L2: PGD without a step size to tune.
//!
//! The algorithm is the reference's (fra31/auto-attack, `autopgd_base.py`): the first step
//! has size `2 eps`, later steps mix the new step with the last displacement (momentum 0.75).
//! At checkpoints `p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)` of
//! the iterations, a sample's step size is halved, and the sample sent back to its best point,
//! when (1) the loss rose in at most `rho = 0.75` of the steps since the last checkpoint, or
//! (2) neither its step size nor its best loss changed since the last checkpoint. APGD-T ascends
//! the targeted DLR loss towards each of the top-9 (or `classes - 1`) other classes in turn.

use crate::error::param;
use crate::loss::LossKind;
use crate::norm::{expand, mask_like, per_sample_l2};
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::{Tensor, D};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use temper_core::seed::Rng;
use temper_core::{Classifier, Mode, ModeGuard};

/// Unchecked APGD hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApgdParams {
    /// Threat model.
    pub norm: Norm,
    /// Budget in pixel units.
    pub eps: f64,
    /// Iterations per run (the reference's `n_iter`).
    pub steps: usize,
    /// Runs from new random starts on the samples still unbroken (per target for APGD-T).
    pub restarts: usize,
    /// Objective: `ce` or `dlr` (the CW margin also works). APGD-T uses the targeted
    /// version of it.
    pub loss: LossKind,
    /// `Some(k)`: APGD-T, one run per target class among the `k` most likely other classes
    /// (clamped to `classes - 1`); `None`: untargeted.
    pub targets: Option<usize>,
    /// Step-halving threshold on the fraction of steps that raised the loss.
    pub rho: f64,
    /// Gradient passes averaged per step (expectation over transformation); 1 for
    /// deterministic models.
    pub eot: usize,
    /// Start uniformly on the eps sphere's directions as the reference does (otherwise at the
    /// clean point).
    pub random_start: bool,
}

impl Default for ApgdParams {
    /// APGD-CE as in standard AutoAttack: L-inf 8/255, 100 iterations, 1 restart, rho 0.75.
    fn default() -> Self {
        ApgdParams {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            steps: 100,
            restarts: 1,
            loss: LossKind::CrossEntropy,
            targets: None,
            rho: 0.75,
            eot: 1,
            random_start: true,
        }
    }
}

impl ApgdParams {
    /// Validates: `eps >= 0`, `steps >= 1`, `restarts >= 1`, `0 < rho <= 1`, `eot >= 1`,
    /// `targets >= 1` when given.
    pub fn check(self) -> Result<Apgd> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(param("eps", format!("{} must be finite and >= 0", self.eps)));
        }
        if self.steps == 0 {
            return Err(param("steps", "must be at least 1"));
        }
        if self.restarts == 0 {
            return Err(param("restarts", "must be at least 1"));
        }
        if !(self.rho > 0.0 && self.rho <= 1.0) {
            return Err(param("rho", format!("{} must be in (0, 1]", self.rho)));
        }
        if self.eot == 0 {
            return Err(param("eot", "must be at least 1"));
        }
        if self.targets == Some(0) {
            return Err(param("targets", "must be at least 1"));
        }
        Ok(Apgd(self))
    }
}

/// The iterations (0-based) after which APGD checks the step size, for `steps` iterations:
/// the reference's `n_iter_2 = max(0.22 n, 1)` first, then gaps shrinking by
/// `max(0.03 n, 1)` down to `max(0.06 n, 1)` (each fraction truncated as Python's `int`).
pub fn checkpoints(steps: usize) -> Vec<usize> {
    let frac = |f: f64| ((f * steps as f64) as usize).max(1);
    let (first, min_gap, decr) = (frac(0.22), frac(0.06), frac(0.03));
    let mut out = Vec::new();
    let mut gap = first;
    let mut at = 0;
    while at + gap <= steps {
        at += gap;
        out.push(at - 1);
        gap = gap.saturating_sub(decr).max(min_gap);
    }
    out
}

/// What one APGD run did, iteration by iteration: for checking it against the reference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApgdTrace {
    /// The iterations after which the step size was checked.
    pub checkpoints: Vec<usize>,
    /// `step_size[i][s]`: the step size sample `s` used at iteration `i`.
    pub step_size: Vec<Vec<f32>>,
    /// `loss[i][s]`: the objective at the iterate of iteration `i`.
    pub loss: Vec<Vec<f32>>,
    /// `loss_best[i][s]`: the best objective after iteration `i`.
    pub loss_best: Vec<Vec<f32>>,
}

/// A validated APGD or APGD-T attack.
#[derive(Debug, Clone, Copy)]
pub struct Apgd(ApgdParams);

/// One run's result on its rows.
struct Run {
    /// The adversarial point where the run succeeded, otherwise its highest-loss point.
    adv: Tensor,
    /// The highest-loss point (the reference's `x_best`).
    best: Tensor,
    success: Vec<bool>,
    loss: Vec<f32>,
}

impl Apgd {
    /// The parameters.
    pub fn params(&self) -> &ApgdParams {
        &self.0
    }

    /// The reference's random start: L-inf, uniform noise scaled so its largest pixel is eps;
    /// L2, Gaussian noise scaled to norm eps; then clamped to the image box.
    fn start(&self, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let c = &self.0;
        if !c.random_start {
            return Ok(x.clone());
        }
        let dims = x.dims().to_vec();
        let n = dims[0];
        let d: usize = dims[1..].iter().product();
        let mut data = Vec::with_capacity(n * d);
        for _ in 0..n {
            let t: Vec<f64> = match c.norm {
                Norm::Linf => (0..d).map(|_| rng.random_range(-1.0..1.0)).collect(),
                Norm::L2 => (0..d).map(|_| StandardNormal.sample(rng)).collect(),
            };
            let size = match c.norm {
                Norm::Linf => t.iter().fold(0f64, |m, v| m.max(v.abs())),
                Norm::L2 => t.iter().map(|v| v * v).sum::<f64>().sqrt(),
            };
            data.extend(t.iter().map(|v| (c.eps * v / (size + 1e-12)) as f32));
        }
        let delta = Tensor::from_vec(data, dims, x.device())?;
        Ok((x + delta)?.clamp(0f32, 1f32)?)
    }

    /// `x + delta` projected onto the eps ball around `x` and the image box, the reference's
    /// way: L-inf by clamping between `x - eps` and `x + eps`; L2 by rescaling to norm
    /// `min(eps, ‖delta‖)`.
    fn project(&self, x: &Tensor, lo: &Tensor, hi: &Tensor, z: &Tensor) -> Result<Tensor> {
        let c = &self.0;
        Ok(match c.norm {
            Norm::Linf => z.maximum(lo)?.minimum(hi)?.clamp(0f32, 1f32)?,
            Norm::L2 => {
                let d = (z - x)?;
                let norms = per_sample_l2(&d)?;
                let scale = (norms.clamp(0f32, c.eps as f32)? / (&norms + 1e-12)?)?;
                (x + d.broadcast_mul(&expand(&scale, d.rank())?)?)?.clamp(0f32, 1f32)?
            }
        })
    }

    /// One run of APGD on every row of `p` from `start`, ascending `loss`; records into
    /// `trace` when given.
    fn run(
        &self,
        p: &mut Problem<'_>,
        start: Tensor,
        loss: LossKind,
        mut trace: Option<&mut ApgdTrace>,
    ) -> Result<Run> {
        let c = &self.0;
        let n = p.n();
        let x = p.x.clone();
        let (lo, hi) = ((&x - c.eps)?, (&x + c.eps)?);
        let rank = x.rank();
        let device = x.device().clone();
        let steps_t =
            |s: &[f32]| -> Result<Tensor> { expand(&Tensor::from_vec(s.to_vec(), s.len(), &device)?, rank) };
        let checks = checkpoints(c.steps);
        if let Some(t) = trace.as_deref_mut() {
            t.checkpoints = checks.clone();
        }

        let mut x_adv = start.clamp(0f32, 1f32)?;
        let mut x_best = x_adv.clone();
        let mut x_best_adv = x_adv.clone();
        let (l0, mut grad, logits) = p.grad_eot(&x_adv, loss, c.eot)?;
        let mut grad_best = grad.clone();
        let mut success = p.success(&logits)?;
        let mut loss_best = l0.to_vec1::<f32>()?;
        let mut step = vec![(2.0 * c.eps) as f32; n];
        let mut x_old = x_adv.clone();
        // The losses of every iteration, for the oscillation test. The reference's first
        // test reads one entry before the first iteration, which is its buffer's last row,
        // still zero then; `prev(-1) = 0` reproduces that.
        let mut history: Vec<Vec<f32>> = Vec::with_capacity(c.steps);
        let mut best_at_check = loss_best.clone();
        let mut reduced_at_check = vec![true; n];
        let mut next_check = checks.iter().copied().peekable();
        let mut since_check = 0usize;

        for i in 0..c.steps {
            if let Some(t) = trace.as_deref_mut() {
                t.step_size.push(step.clone());
            }
            let a = if i > 0 { 0.75 } else { 1.0 };
            let moved = (&x_adv - &x_old)?;
            x_old = x_adv.clone();
            let dir = match c.norm {
                Norm::Linf => grad.sign()?,
                Norm::L2 => {
                    let g = per_sample_l2(&grad)?;
                    grad.broadcast_div(&expand(&(g + 1e-12)?, rank)?)?
                }
            };
            let z = self.project(&x, &lo, &hi, &(&x_adv + dir.broadcast_mul(&steps_t(&step)?)?)?)?;
            let mixed = ((&x_adv + ((z - &x_adv)? * a)?)? + (moved * (1.0 - a))?)?;
            x_adv = self.project(&x, &lo, &hi, &mixed)?.detach();

            let (li, g, logits) = p.grad_eot(&x_adv, loss, c.eot)?;
            grad = g;
            let now = p.success(&logits)?;
            if now.iter().any(|&s| s) {
                let m = mask_like(&now, &x_adv)?;
                x_best_adv = ((&x_adv * &m)? + (&x_best_adv * (1.0 - &m)?)?)?;
            }
            for (s, w) in success.iter_mut().zip(&now) {
                *s |= *w;
            }
            let li = li.to_vec1::<f32>()?;
            let better: Vec<bool> = li.iter().zip(&loss_best).map(|(a, b)| a > b).collect();
            if better.iter().any(|&b| b) {
                let m = mask_like(&better, &x_adv)?;
                x_best = ((&x_adv * &m)? + (&x_best * (1.0 - &m)?)?)?;
                grad_best = ((&grad * &m)? + (&grad_best * (1.0 - &m)?)?)?;
                for s in 0..n {
                    if better[s] {
                        loss_best[s] = li[s];
                    }
                }
            }
            history.push(li.clone());
            if let Some(t) = trace.as_deref_mut() {
                t.loss.push(li);
                t.loss_best.push(loss_best.clone());
            }
            since_check += 1;

            if next_check.peek() == Some(&i) {
                next_check.next();
                let k = since_check;
                let prev = |j: isize, s: usize| if j < 0 { 0.0 } else { history[j as usize][s] };
                let reduce: Vec<bool> = (0..n)
                    .map(|s| {
                        let rises = (0..k)
                            .filter(|&c5| {
                                let j = i as isize - c5 as isize;
                                prev(j, s) > prev(j - 1, s)
                            })
                            .count();
                        let oscillating = rises as f64 <= k as f64 * c.rho;
                        let stalled = !reduced_at_check[s] && best_at_check[s] >= loss_best[s];
                        oscillating || stalled
                    })
                    .collect();
                reduced_at_check = reduce.clone();
                best_at_check = loss_best.clone();
                if reduce.iter().any(|&r| r) {
                    for s in 0..n {
                        if reduce[s] {
                            step[s] /= 2.0;
                        }
                    }
                    let m = mask_like(&reduce, &x_adv)?;
                    x_adv = ((&x_best * &m)? + (&x_adv * (1.0 - &m)?)?)?;
                    grad = ((&grad_best * &m)? + (&grad * (1.0 - &m)?)?)?;
                }
                since_check = 0;
            }
        }
        let m = mask_like(&success, &x_adv)?;
        let adv = ((&x_best_adv * &m)? + (&x_best * (1.0 - &m)?)?)?;
        Ok(Run {
            adv,
            best: x_best,
            success,
            loss: loss_best,
        })
    }

    /// One run from `start` on the whole batch (no random start, no restarts), with
    /// everything the step-size control did, and the highest-loss point per sample: for
    /// checking against the reference. `goal` targeted makes the objective targeted (APGD-T's
    /// targeted DLR with the loss `dlr`).
    pub fn trace(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        start: &Tensor,
        y: &Tensor,
        goal: Goal<'_>,
    ) -> Result<(ApgdTrace, Tensor)> {
        let _eval = ModeGuard::new(model, Mode::Eval);
        let mut p = Problem::new(model, x, y, goal)?;
        let loss = self
            .0
            .loss
            .defined_variant(model.num_classes(), p.objective_target.is_some());
        let mut t = ApgdTrace::default();
        let run = self.run(&mut p, start.clone(), loss, Some(&mut t))?;
        Ok((t, run.best))
    }

    /// The target classes of APGD-T at the clean points: the `rank`-th most likely class
    /// (rank 2 is the runner-up).
    fn targets_of(p: &mut Problem<'_>, rank: usize) -> Result<Tensor> {
        let logits = p.logits(&p.x.clone())?;
        let order = logits.arg_sort_last_dim(false)?;
        Ok(order
            .narrow(D::Minus1, rank - 1, 1)?
            .squeeze(D::Minus1)?
            .contiguous()?)
    }
}

/// Per sample, where its result lives: which tensor of a list and which row.
pub(crate) struct Assembly {
    parts: Vec<Tensor>,
    offsets: Vec<usize>,
    /// `(part, row)` per sample.
    from: Vec<(usize, usize)>,
    pub success: Vec<bool>,
    pub loss: Vec<f32>,
}

impl Assembly {
    /// Every sample at the clean point, unbroken, with the lowest loss.
    pub fn new(x: &Tensor, success: Vec<bool>) -> Result<Self> {
        let n = x.dim(0)?;
        Ok(Assembly {
            parts: vec![x.clone()],
            offsets: vec![0],
            from: (0..n).map(|i| (0, i)).collect(),
            loss: vec![f32::NEG_INFINITY; n],
            success,
        })
    }

    /// The samples not yet broken.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.success.len()).filter(|&i| !self.success[i]).collect()
    }

    /// Takes a run on rows `rows`: a success always, otherwise a higher loss.
    pub fn take(&mut self, rows: &[usize], adv: Tensor, success: &[bool], loss: &[f32]) -> Result<()> {
        let part = self.parts.len();
        let last = self.offsets[part - 1] + self.parts[part - 1].dim(0)?;
        self.parts.push(adv);
        self.offsets.push(last);
        for (j, &r) in rows.iter().enumerate() {
            if self.success[r] {
                continue;
            }
            if success[j] || loss[j] > self.loss[r] {
                self.from[r] = (part, j);
                self.success[r] = success[j];
                self.loss[r] = loss[j];
            }
        }
        Ok(())
    }

    /// The assembled batch.
    pub fn finish(&self) -> Result<Tensor> {
        let idx: Vec<u32> = self
            .from
            .iter()
            .map(|&(p, r)| (self.offsets[p] + r) as u32)
            .collect();
        let all = Tensor::cat(&self.parts, 0)?;
        let idx = Tensor::from_vec(idx, self.from.len(), all.device())?;
        Ok(all.index_select(&idx, 0)?)
    }
}

impl Attack for Apgd {
    fn name(&self) -> String {
        let c = &self.0;
        let family = match c.targets {
            Some(k) => format!("apgd-t(targets={k}, "),
            None => format!("apgd-{}(", c.loss.name()),
        };
        let eot = if c.eot > 1 {
            format!(", eot={}", c.eot)
        } else {
            String::new()
        };
        format!(
            "{family}{}, eps={:.4}, steps={}, restarts={}, rho={}{eot})",
            c.norm.name(),
            c.eps,
            c.steps,
            c.restarts,
            c.rho
        )
    }

    fn norm(&self) -> Norm {
        self.0.norm
    }

    fn eps(&self) -> Option<f64> {
        Some(self.0.eps)
    }

    fn perturb(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        goal: Goal<'_>,
        rng: &mut Rng,
    ) -> Result<AttackOutput> {
        let _eval = ModeGuard::new(model, Mode::Eval);
        let mut p = Problem::new(model, x, y, goal)?;
        let c = &self.0;
        let k = model.num_classes();
        let user_target = p.objective_target.is_some();
        let loss = c.loss.defined_variant(k, user_target || c.targets.is_some());
        if loss != c.loss {
            p.notes.push(format!(
                "{} loss undefined with {k} classes; used {} instead",
                c.loss.name(),
                loss.name()
            ));
        }
        let clean = p.logits(x)?;
        let mut asm = Assembly::new(x, p.success(&clean)?)?;
        // APGD-T's targets, by rank among the clean logits; a user-given target replaces them.
        let ranks: Vec<Option<usize>> = match c.targets {
            Some(t) if !user_target => (2..=t.min(k.saturating_sub(1)) + 1).map(Some).collect(),
            _ => vec![None],
        };
        for rank in ranks {
            for _ in 0..c.restarts {
                let rows = asm.alive();
                if rows.is_empty() {
                    break;
                }
                let mut sub = p.subset(&rows)?;
                if let Some(r) = rank {
                    sub.objective_target = Some(Apgd::targets_of(&mut sub, r)?);
                }
                let start = self.start(&sub.x, rng)?;
                let run = self.run(&mut sub, start, loss, None)?;
                p.absorb(&sub);
                asm.take(&rows, run.adv, &run.success, &run.loss)?;
            }
        }
        let adv = asm.finish()?;
        let report_loss = loss.defined_variant(k, user_target);
        p.finish(adv, if user_target { loss } else { report_loss })
    }
}
