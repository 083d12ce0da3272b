//! The trainer's library: data (the generated world corpus, text corpora, the BPE tokenizer),
//! the training loop with exact-resume checkpoints, export, evaluation and sampling.
//! `main.rs` is the CLI over it.

pub mod data;
pub mod world;
