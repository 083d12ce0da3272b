//! What the trainer (`native-trainer`) and the browser (`itera-web`) must agree on, defined once.
//! No trainer or web dependencies: it builds for wasm32 as it is.
//!
//! - [`prompt`]: the QA format, and how retrieved documents are placed in the context;
//! - [`world`]: the generated world (people, their facts, biographies, QA split);
//! - [`rng`]: the seeded random stream everything generated is drawn from;
//! - [`tokenizer_json`]: the checks a `tokenizer.json` passes before the `tokenizers` crate reads it.

pub mod prompt;
pub mod rng;
pub mod tokenizer_json;
pub mod world;

pub use prompt::{ReadingConfig, ReadingOrder};
