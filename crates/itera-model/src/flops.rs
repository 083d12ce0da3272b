//! FLOPs counted by instrumentation: while a [`Counting`] guard is alive, every op of the two
//! models adds what it just computed, from the shapes it actually ran with (tokens routed to each
//! expert, keys in the KV cache, ...). The benchmark checks the analytic formulas of
//! `config.rs` against this count. Off by default: one thread-local check per op.
//!
//! The per-element weights of elementwise ops (a multiply-add is 2, RMSNorm 4 per element, SiLU
//! and softmax 5, ...) are the same conventions `config.rs` uses; the matmuls, which dominate,
//! are exact.

use std::cell::Cell;

thread_local! {
    static COUNT: Cell<Option<f64>> = const { Cell::new(None) };
}

/// Adds `flops` to the running count, if one is running on this thread.
#[inline]
pub fn add(flops: f64) {
    COUNT.with(|c| {
        if let Some(v) = c.get() {
            c.set(Some(v + flops));
        }
    });
}

/// Counts the FLOPs of everything run on this thread until [`Counting::total`] or drop.
pub struct Counting(());

impl Counting {
    pub fn start() -> Self {
        COUNT.with(|c| c.set(Some(0.0)));
        Counting(())
    }

    /// The FLOPs counted so far.
    pub fn total(&self) -> f64 {
        COUNT.with(|c| c.get().unwrap_or(0.0))
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        COUNT.with(|c| c.set(None));
    }
}
