//! Layer tables: which layers a forward pass runs, their output shapes, parameters and
//! multiply-accumulates.
//!
//! Layers report themselves while a [`trace`] is active on the current thread; outside a trace
//! the cost is one thread-local check per layer.

use std::cell::RefCell;

/// One row of a layer table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerRecord {
    /// The layer's PyTorch-style name, e.g. `layer1.0.conv1`.
    pub name: String,
    /// What the layer is, e.g. `Conv2d 3x3 s1 64->64`.
    pub kind: String,
    /// Output shape for one image (batch dimension dropped).
    pub output: Vec<usize>,
    /// Trainable parameters owned by the layer.
    pub params: usize,
    /// Multiply-accumulates per image.
    pub macs: u64,
}

thread_local! {
    static TRACE: RefCell<Option<Vec<LayerRecord>>> = const { RefCell::new(None) };
}

/// True while a trace is recording on this thread.
pub fn is_tracing() -> bool {
    TRACE.with(|t| t.borrow().is_some())
}

/// Adds a row to the active trace (no-op when none is active).
pub fn record(rec: LayerRecord) {
    TRACE.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.push(rec);
        }
    });
}

/// Runs `f` while recording every layer it executes, and returns its result with the rows.
pub fn trace<T>(f: impl FnOnce() -> T) -> (T, Vec<LayerRecord>) {
    TRACE.with(|t| *t.borrow_mut() = Some(Vec::new()));
    let out = f();
    let rows = TRACE.with(|t| t.borrow_mut().take()).unwrap_or_default();
    (out, rows)
}
