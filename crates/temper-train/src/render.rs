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
    /// Fractional epoch.
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
    /// A bar for a run of `total` iterations, starting at `done`.
    pub fn new(total: u64, done: u64) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} it  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(done);
        BarRenderer { bar }
    }
}

impl Renderer for BarRenderer {
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
}

impl PlainRenderer {
    /// Prints every `every` iterations.
    pub fn new(every: u64) -> Self {
        PlainRenderer {
            every: every.max(1),
            start: std::time::Instant::now(),
        }
    }
}

impl Renderer for PlainRenderer {
    fn iter(&mut self, i: &IterInfo) {
        if i.iter.is_multiple_of(self.every) || i.iter == i.total {
            eprintln!(
                "[{:>6.1}s] it {}/{} ep {:.2} loss {:.4} acc {:.3} lr {:.2e}",
                self.start.elapsed().as_secs_f64(),
                i.iter,
                i.total,
                i.epoch,
                i.loss,
                i.acc,
                i.lr
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
pub fn default_renderer(total: u64, done: u64, log_every: u64) -> Box<dyn Renderer> {
    if std::io::stderr().is_terminal() {
        Box::new(BarRenderer::new(total, done))
    } else {
        Box::new(PlainRenderer::new(log_every))
    }
}
