//! Auto-PGD (Croce and Hein 2020), L-inf, L2 and L1: PGD without a step size to tune.
//!
//! The algorithm is the reference's (fra31/auto-attack, `autopgd_base.py`): the first step
//! has size `2 eps`, later steps mix the new step with the last displacement (momentum 0.75).
//! At checkpoints `p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)` of
//! the iterations, a sample's step size is halved, and the sample sent back to its best point,
//! when (1) the loss rose in at most `rho = 0.75` of the steps since the last checkpoint, or
//! (2) neither its step size nor its best loss changed since the last checkpoint. APGD-T ascends
//! the targeted DLR loss towards each of the top-9 (or `classes - 1`) other classes in turn.
//!
//! L1 is the reference's own variant (Croce and Hein 2021, "Mind the box"): each step moves
//! the coordinates whose gradient is in the top `topk` fraction, by the step over their
//! number, with no momentum, and projects onto the intersection of the L1 ball with the image
//! box; every `max(0.04 n, 1)` iterations a sample whose best point became clearly sparser
//! (by 5%) goes back to it with the first step size (eps), the others divide their step by
//! 1.5 (down to eps / 10), and `topk` follows the best point's sparsity. AutoAttack runs it in
//! three stages at 3, 2 and 1 times eps (`large_eps`).
//!
//! The step-size control is tensor operations: an iteration reads nothing back to the host.

use crate::error::param;
use crate::loss::LossKind;
use crate::norm::{expand, per_sample_l2, project_l1_box};
use crate::ops::{and, not, or, pick_rows, reached, take_cols, to_bools};
use crate::problem::Problem;
use crate::{Attack, AttackOutput, Goal, Norm, Result};
use candle_core::{DType, Tensor, D};
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
    /// L1 only: run in three stages at 3, 2 and 1 times eps (the reference's
    /// `use_largereps`, which AutoAttack's L1 versions use).
    pub large_eps: bool,
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
            large_eps: false,
        }
    }
}

impl ApgdParams {
    /// Validates: `eps >= 0`, `steps >= 1`, `restarts >= 1`, `0 < rho <= 1`, `eot >= 1`,
    /// `targets >= 1` when given, `large_eps` only with L1.
    pub fn check(self) -> Result<Apgd> {
        if self.large_eps && self.norm != Norm::L1 {
            return Err(param(
                "large_eps",
                "the staged budget is for l1 only, as in the reference",
            ));
        }
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

/// How a run starts, which sets the L1 sparsity control's first state: from the reference's
/// random start (20% of the coordinates, every coordinate counted as moved), or from a given
/// point (the reference's `x_init`: the sparsity of that point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    Random,
    Given,
}

/// The iterations (0-based) after which APGD-L1 checks its step size and sparsity: every
/// `max(0.04 steps, 1)` iterations, as the reference.
fn l1_checkpoints(steps: usize) -> Vec<usize> {
    let k = ((0.04 * steps as f64) as usize).max(1);
    (1..=steps / k).map(|j| j * k - 1).collect()
}

/// Per sample, the number of coordinates that differ from zero, as f32 `(N,)`.
fn l0(t: &Tensor) -> Result<Tensor> {
    Ok(t.flatten_from(1)?.ne(0f32)?.to_dtype(DType::F32)?.sum(1)?)
}

impl Apgd {
    /// The parameters.
    pub fn params(&self) -> &ApgdParams {
        &self.0
    }

    /// The reference's random start: L-inf, uniform noise scaled so its largest pixel is eps;
    /// L2, Gaussian noise scaled to norm eps; L1, Gaussian noise projected onto the eps ball
    /// within the image box; then clamped to the image box.
    fn start(&self, x: &Tensor, eps: f64, rng: &mut Rng) -> Result<Tensor> {
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
                Norm::L2 | Norm::L1 => (0..d).map(|_| StandardNormal.sample(rng)).collect(),
            };
            let size = match c.norm {
                Norm::Linf => t.iter().fold(0f64, |m, v| m.max(v.abs())),
                Norm::L2 => t.iter().map(|v| v * v).sum::<f64>().sqrt(),
                // Projected below instead of scaled.
                Norm::L1 => 1.0 / eps.max(1e-12),
            };
            data.extend(t.iter().map(|v| (eps * v / (size + 1e-12)) as f32));
        }
        let delta = Tensor::from_vec(data, dims, x.device())?;
        Ok(self.project(x, eps, &(x + delta)?)?.clamp(0f32, 1f32)?)
    }

    /// `z` projected onto the eps ball around `x` and the image box, the reference's way:
    /// L-inf by clamping between `x - eps` and `x + eps`; L2 by rescaling to norm
    /// `min(eps, ‖z - x‖)`, then clamping; L1 by the Euclidean projection onto the ball's
    /// intersection with the box.
    fn project(&self, x: &Tensor, eps: f64, z: &Tensor) -> Result<Tensor> {
        Ok(match self.0.norm {
            Norm::Linf => z.maximum(&(x - eps)?)?.minimum(&(x + eps)?)?.clamp(0f32, 1f32)?,
            Norm::L2 => {
                let d = (z - x)?;
                let norms = per_sample_l2(&d)?;
                let scale = (norms.clamp(0f32, eps as f32)? / (&norms + 1e-12)?)?;
                (x + d.broadcast_mul(&expand(&scale, d.rank())?)?)?.clamp(0f32, 1f32)?
            }
            Norm::L1 => {
                let (xf, d) = (x.flatten_from(1)?, (z - x)?.flatten_from(1)?);
                let delta = project_l1_box(&d, eps, &xf.neg()?, &(1.0 - &xf)?)?;
                (xf + delta)?.reshape(x.shape())?
            }
        })
    }

    /// The step direction for a gradient, before the step size: the sign (L-inf), the
    /// gradient over its L2 norm (L2), or (L1) the signs of the coordinates whose gradient is
    /// in the top `topk` fraction by magnitude, over their number.
    fn direction(&self, grad: &Tensor, topk: &Tensor) -> Result<Tensor> {
        let rank = grad.rank();
        Ok(match self.0.norm {
            Norm::Linf => grad.sign()?,
            Norm::L2 => {
                let g = per_sample_l2(grad)?;
                grad.broadcast_div(&expand(&(g + 1e-12)?, rank)?)?
            }
            Norm::L1 => {
                let flat = grad.flatten_from(1)?;
                let d = flat.dim(1)?;
                let (sorted, _) = flat.abs()?.contiguous()?.sort_last_dim(true)?;
                let at = ((1.0 - topk)? * d as f64)?
                    .clamp(0f32, (d - 1) as f32)?
                    .floor()?
                    .to_dtype(DType::U32)?;
                let threshold = take_cols(&sorted, &at)?.unsqueeze(1)?;
                let keep = flat.abs()?.broadcast_ge(&threshold)?.to_dtype(DType::F32)?;
                let sparse = (flat * keep)?.sign()?;
                let count = (sparse.abs()?.sum_keepdim(1)? + 1e-10)?;
                sparse.broadcast_div(&count)?.reshape(grad.shape())?
            }
        })
    }

    /// One run of APGD on every row of `p` from `start`, ascending `loss`, at budget `eps` for
    /// `steps` iterations; records into `trace` when given. The step-size control stays on the
    /// device: nothing is read back to the host before the run ends (unless tracing).
    fn run(
        &self,
        p: &mut Problem<'_>,
        start: Tensor,
        loss: LossKind,
        (eps, steps, init): (f64, usize, Init),
        mut trace: Option<&mut ApgdTrace>,
    ) -> Result<Run> {
        let c = &self.0;
        let n = p.n();
        let x = p.x.clone();
        let l1 = c.norm == Norm::L1;
        let checks = if l1 {
            l1_checkpoints(steps)
        } else {
            checkpoints(steps)
        };
        if let Some(t) = trace.as_deref_mut() {
            t.checkpoints = checks.clone();
        }
        let record = |v: &Tensor| -> Result<Vec<f32>> { Ok(v.to_vec1::<f32>()?) };

        let mut x_adv = start.clamp(0f32, 1f32)?;
        let mut x_best = x_adv.clone();
        let mut x_best_adv = x_adv.clone();
        let (l0_loss, mut grad, logits) = p.grad_eot(&x_adv, loss, c.eot)?;
        let mut grad_best = grad.clone();
        let mut success = reached(&logits, &p.labels, p.targeted)?;
        let mut loss_best = l0_loss;
        // The reference's first step: 2 eps (L-inf, L2), eps (L1).
        let alpha = if l1 { 1.0 } else { 2.0 };
        let mut step = Tensor::full((alpha * eps) as f32, n, x.device())?;
        let mut x_old = x_adv.clone();
        // Per sample: steps since the last check that raised the loss over the step before
        // (the first compares with 0, as the reference's circular buffer does), the best loss
        // and whether the step was reduced at the last check.
        let mut prev = loss_best.zeros_like()?;
        let mut rises = loss_best.zeros_like()?;
        let mut best_at_check = loss_best.clone();
        let mut reduced_at_check = loss_best.ones_like()?.to_dtype(DType::U8)?;
        // L1: the fraction of coordinates a step moves, and the sparsity at the last check.
        let features = x.elem_count() / n.max(1);
        let (mut topk, mut sp_old) = match init {
            Init::Random => (
                Tensor::full(0.2f32, n, x.device())?,
                Tensor::full(features as f32, n, x.device())?,
            ),
            Init::Given => {
                let sp = l0(&(&x_adv - &x)?)?;
                (((&sp / features as f64)? / 1.5)?, sp)
            }
        };
        let mut next_check = checks.iter().copied().peekable();
        let mut since_check = 0usize;

        for i in 0..steps {
            if let Some(t) = trace.as_deref_mut() {
                t.step_size.push(record(&step)?);
            }
            let step_t = expand(&step, x.rank())?;
            let dir = self.direction(&grad, &topk)?;
            if l1 {
                // The reference's L1 step has no momentum.
                x_old = x_adv.clone();
                x_adv = self
                    .project(&x, eps, &(&x_adv + dir.broadcast_mul(&step_t)?)?)?
                    .detach();
            } else {
                let a = if i > 0 { 0.75 } else { 1.0 };
                let moved = (&x_adv - &x_old)?;
                x_old = x_adv.clone();
                let z = self.project(&x, eps, &(&x_adv + dir.broadcast_mul(&step_t)?)?)?;
                let mixed = ((&x_adv + ((z - &x_adv)? * a)?)? + (moved * (1.0 - a))?)?;
                x_adv = self.project(&x, eps, &mixed)?.detach();
            }

            let (li, g, logits) = p.grad_eot(&x_adv, loss, c.eot)?;
            grad = g;
            let now = reached(&logits, &p.labels, p.targeted)?;
            x_best_adv = pick_rows(&now, &x_adv, &x_best_adv)?;
            success = or(&success, &now)?;
            let better = li.gt(&loss_best)?;
            x_best = pick_rows(&better, &x_adv, &x_best)?;
            grad_best = pick_rows(&better, &grad, &grad_best)?;
            loss_best = better.where_cond(&li, &loss_best)?;
            rises = (rises + li.gt(&prev)?.to_dtype(DType::F32)?)?;
            prev = li.clone();
            if let Some(t) = trace.as_deref_mut() {
                t.loss.push(record(&li)?);
                t.loss_best.push(record(&loss_best)?);
            }
            since_check += 1;

            if next_check.peek() == Some(&i) {
                next_check.next();
                let reset = if l1 {
                    // Sparsity control: a point that became clearly sparser restarts from the
                    // best point at the first step size; the others shrink their step.
                    let sp = l0(&(&x_best - &x)?)?;
                    let sparser = (&sp / &sp_old)?.lt(0.95f32)?;
                    topk = ((&sp / features as f64)? / 1.5)?;
                    let first = step.ones_like()?.affine(alpha * eps, 0.0)?;
                    step = sparser
                        .where_cond(&first, &(&step / 1.5)?)?
                        .clamp((alpha * eps / 10.0) as f32, (alpha * eps) as f32)?;
                    sp_old = sp;
                    sparser
                } else {
                    let oscillating = rises.le((since_check as f64 * c.rho) as f32)?;
                    let stalled = and(&not(&reduced_at_check)?, &best_at_check.ge(&loss_best)?)?;
                    let reduce = or(&oscillating, &stalled)?;
                    reduced_at_check = reduce.clone();
                    best_at_check = loss_best.clone();
                    step = reduce.where_cond(&(&step / 2.0)?, &step)?;
                    reduce
                };
                x_adv = pick_rows(&reset, &x_best, &x_adv)?;
                grad = pick_rows(&reset, &grad_best, &grad)?;
                rises = rises.zeros_like()?;
                since_check = 0;
            }
        }
        let adv = pick_rows(&success, &x_best_adv, &x_best)?;
        Ok(Run {
            adv,
            best: x_best,
            success: to_bools(&success)?,
            loss: record(&loss_best)?,
        })
    }

    /// A run as AutoAttack runs it: for L1 with `large_eps`, three stages at 3, 2 and 1 times
    /// eps (30%, 30% and 40% of the iterations), each from the previous stage's best point
    /// projected onto its ball (the reference's `decr_eps_pgd`, started from Gaussian noise
    /// projected onto the largest ball); otherwise one run from the random start.
    fn attack_rows(&self, p: &mut Problem<'_>, loss: LossKind, rng: &mut Rng) -> Result<Run> {
        let c = &self.0;
        if !c.large_eps {
            let start = self.start(&p.x, c.eps, rng)?;
            return self.run(p, start, loss, (c.eps, c.steps, Init::Random), None);
        }
        // The reference's ceil(0.3 n), ceil(0.3 n) and the rest; for the few step counts where
        // that leaves the last stage nothing (1, 2, 4), where the reference fails, the first
        // stages give it one iteration.
        let first = ((0.3 * c.steps as f64).ceil() as usize).min((c.steps - 1) / 2);
        let iters = [first, first, c.steps - 2 * first];
        let x = p.x.clone();
        let noise: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                let v: f64 = StandardNormal.sample(rng);
                v as f32
            })
            .collect();
        let mut init = (&x + Tensor::from_vec(noise, x.shape(), x.device())?)?;
        let mut last = None;
        for (f, it) in [3.0, 2.0, 1.0].into_iter().zip(iters) {
            let eps = f * c.eps;
            init = self.project(&x, eps, &init)?;
            if it == 0 {
                continue;
            }
            let run = self.run(p, init.clone(), loss, (eps, it, Init::Given), None)?;
            init = run.best.clone();
            last = Some(run);
        }
        match last {
            Some(run) => Ok(run),
            None => self.run(p, init, loss, (c.eps, c.steps, Init::Given), None),
        }
    }

    /// One run from `start` on the whole batch (no random start, no restarts, one stage), with
    /// everything the step-size control did, and the highest-loss point per sample: for
    /// checking against the reference (its `attack_single_run` with `x_init = start`). `goal`
    /// targeted makes the objective targeted (APGD-T's targeted DLR with the loss `dlr`).
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
        let c = &self.0;
        let run = self.run(
            &mut p,
            start.clone(),
            loss,
            (c.eps, c.steps, Init::Given),
            Some(&mut t),
        )?;
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
                let run = self.attack_rows(&mut sub, loss, rng)?;
                p.absorb(&sub);
                asm.take(&rows, run.adv, &run.success, &run.loss)?;
            }
        }
        let adv = asm.finish()?;
        let report_loss = loss.defined_variant(k, user_target);
        p.finish(adv, if user_target { loss } else { report_loss })
    }
}
