//! What a person sees while a run trains: a progress bar on a terminal, plain log lines
//! otherwise. Rendering is separate from training; the trainer only emits events.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// One training iteration, as shown to a person.
#[derive(Debug, Clone, Copy)]
pub struct IterInfo {
    /// Iterations done, total.
    pub iter: u64,
    /// Iterations in the whole run.
    pub total: u64,
    /// Fractional epoch after this iteration (as metrics.jsonl writes it).
    pub epoch: f64,
    /// Running mean training loss of the epoch.
    pub loss: f64,
    /// Running training accuracy of the epoch (on the inputs trained on).
    pub acc: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// Receives training events.
pub trait Renderer: Send {
    /// The run starts (or resumes) with `done` of its `total` iterations behind it. Callers
    /// create a renderer before the trainer knows the run's length; this tells it.
    fn start(&mut self, _total: u64, _done: u64) {}
    /// After each iteration.
    fn iter(&mut self, info: &IterInfo);
    /// A line of text (validation results, checkpoints, warnings).
    fn message(&mut self, text: &str);
    /// The run ended.
    fn finish(&mut self);
}

/// A progress bar with loss, accuracy, LR and ETA (for terminals).
pub struct BarRenderer {
    bar: ProgressBar,
}

impl BarRenderer {
    /// A bar for a run of `total` iterations, starting at `done` (both updated by
    /// [`Renderer::start`]).
    pub fn new(total: u64, done: u64) -> Self {
        Self::with_bar(ProgressBar::new(total), done)
    }

    /// A bar that draws nowhere, for tests.
    pub fn hidden() -> Self {
        // Length 0, as the bar a caller creates before the run's length is known.
        Self::with_bar(
            ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::hidden()),
            0,
        )
    }

    fn with_bar(bar: ProgressBar, done: u64) -> Self {
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} it  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(done);
        BarRenderer { bar }
    }

    /// Iterations done and the bar's length, as drawn.
    pub fn progress(&self) -> (u64, Option<u64>) {
        (self.bar.position(), self.bar.length())
    }
}

impl Renderer for BarRenderer {
    fn start(&mut self, total: u64, done: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        // The rate behind the ETA is measured from here, not from iteration 0, so a resumed
        // run does not count the iterations it skipped as done instantly.
        self.bar.reset_eta();
    }
    fn iter(&mut self, i: &IterInfo) {
        self.bar.set_position(i.iter);
        self.bar.set_message(format!(
            "ep {:.2} loss {:.4} acc {:.3} lr {:.2e}",
            i.epoch, i.loss, i.acc, i.lr
        ));
    }
    fn message(&mut self, text: &str) {
        self.bar.println(text);
    }
    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Plain lines every `every` iterations (for logs and pipes).
pub struct PlainRenderer {
    /// Iterations between lines.
    pub every: u64,
    start: std::time::Instant,
    done_at_start: u64,
}

impl PlainRenderer {
    /// Prints every `every` iterations.
    pub fn new(every: u64) -> Self {
        PlainRenderer {
            every: every.max(1),
            start: std::time::Instant::now(),
            done_at_start: 0,
        }
    }

    /// Seconds left at the rate of this session's iterations so far.
    fn eta(&self, i: &IterInfo) -> f64 {
        let done = i.iter.saturating_sub(self.done_at_start);
        if done == 0 {
            return f64::NAN;
        }
        self.start.elapsed().as_secs_f64() / done as f64 * i.total.saturating_sub(i.iter) as f64
    }
}

impl Renderer for PlainRenderer {
    fn start(&mut self, _total: u64, done: u64) {
        self.start = std::time::Instant::now();
        self.done_at_start = done;
    }

    fn iter(&mut self, i: &IterInfo) {
        if i.iter.is_multiple_of(self.every) || i.iter == i.total {
            eprintln!(
                "[{:>6.1}s] it {}/{} ep {:.2} loss {:.4} acc {:.3} lr {:.2e} eta {:.0}s",
                self.start.elapsed().as_secs_f64(),
                i.iter,
                i.total,
                i.epoch,
                i.loss,
                i.acc,
                i.lr,
                self.eta(i)
            );
        }
    }
    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }
    fn finish(&mut self) {}
}

/// Prints nothing (tests, embedding).
#[derive(Debug, Default)]
pub struct Silent;

impl Renderer for Silent {
    fn iter(&mut self, _: &IterInfo) {}
    fn message(&mut self, _: &str) {}
    fn finish(&mut self) {}
}

/// A bar when stderr is a terminal, plain lines otherwise (as burn's `default_renderer`).
/// `total` and `done` may be 0: the trainer sets them through [`Renderer::start`].
pub fn default_renderer(total: u64, done: u64, log_every: u64) -> Box<dyn Renderer> {
    if std::io::stderr().is_terminal() {
        Box::new(BarRenderer::new(total, done))
    } else {
        Box::new(PlainRenderer::new(log_every))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_iterations_of_the_total_and_an_eta() {
        // Callers create the bar before the run's length is known.
        let mut r = BarRenderer::hidden();
        assert_eq!(r.progress(), (0, Some(0)));
        r.start(20, 5);
        assert_eq!(r.progress(), (5, Some(20)));
        r.iter(&IterInfo {
            iter: 6,
            total: 20,
            epoch: 0.3,
            loss: 1.0,
            acc: 0.5,
            lr: 0.1,
        });
        assert_eq!(r.progress(), (6, Some(20)));
    }
}
