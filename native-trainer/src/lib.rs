//! The trainer's library: data (the generated world corpus and targeted tasks, text corpora, the BPE tokenizer),
//! the training loop with exact-resume checkpoints, evaluation, and export. `main.rs` is the CLI.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod export;
pub mod files;
pub mod parallel;
pub mod plot;
pub mod reading;
pub mod report;
pub mod retrieval;
pub mod source;
pub mod synthetic;
pub mod tasks;
pub mod tensorboard;
pub mod train;
pub use itera_data::world;
