//! Itera-Lite in the browser. The page (index.html + web/page.js) runs one Web Worker per model;
//! each worker is this crate compiled to wasm32 (`src/bin/worker.rs`), using `itera-model` as it
//! is — the same model code the trainer runs natively.
//!
//! - [`engine`]: a loaded model + tokenizer + decoding state; no browser APIs, so it also runs
//!   natively (the wasm tests compare against it);
//! - [`retrieval`]: the export's retrieval index (`index/`), searched for a question, and the
//!   reading prompt (`itera_data::prompt`); no browser APIs either;
//! - [`protocol`]: the JSON messages between page and worker;
//! - [`peak`]: the GEMV rate one thread reaches, the bound of a batch-1 decode step;
//! - [`analytic`]: the config's cost model for the page's charts (main thread, `src/bin/app.rs`);
//! - `worker` (wasm32 only): fetch + sha256 check + Cache API, generation, latency benchmark.

pub mod analytic;
pub mod engine;
pub mod peak;
pub mod protocol;
pub mod retrieval;
#[cfg(target_arch = "wasm32")]
pub mod worker;
