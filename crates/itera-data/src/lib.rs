//! What the trainer (`native-trainer`) and the browser (`itera-web`) must agree on, defined once.
//! No trainer or web dependencies: it builds for wasm32 as it is.
//!
//! - [`prompt`]: the QA format, and how retrieved documents are placed in the context.

pub mod prompt;

pub use prompt::{ReadingConfig, ReadingOrder};
