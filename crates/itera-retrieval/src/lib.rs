//! Itera-Lite's retriever: a frozen dense encoder (hashed character n-grams, words and word pairs
//! into a count-sketch, IDF-weighted, see [`encoder`]), an int8 index with exact search
//! ([`Index`]), its on-disk format ([`store`]), and BM25 as the sparse reference ([`Bm25`]).
//!
//! Nothing here is trained and nothing depends on threads or a GPU: the same crate builds for
//! wasm32 (the page's Web Worker searches the index the trainer saved) and gives the same
//! vectors and hits there, bit for bit, which `tests/golden.rs` and `tests/wasm.rs` pin.
//!
//! ```
//! use itera_retrieval::{EncoderConfig, Index};
//! let docs = vec!["Zana Kolvworth was born in Drushesk.".to_string(), "Alo Brel studied law.".to_string()];
//! let index = Index::build(docs, EncoderConfig::default()).unwrap();
//! assert_eq!(index.search("Where was Zana Kolvworth born?", 1)[0].doc, 0);
//! ```

pub mod bm25;
pub mod dot;
pub mod encoder;
mod error;
mod hash;
mod index;
pub mod store;
mod topk;

pub use bm25::Bm25;
pub use dot::Kernel;
pub use encoder::{Encoder, EncoderConfig, ENCODER_KIND};
pub use error::{Error, Problem, Result};
pub use index::{quantize, Index};
pub use store::IndexManifest;

/// One search result: a document id (its position in the indexed list) and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub doc: usize,
    pub score: f32,
}

/// The 0-based rank of `gold` in `hits`, if it is there.
pub fn rank_of(hits: &[Hit], gold: usize) -> Option<usize> {
    hits.iter().position(|h| h.doc == gold)
}

/// Fraction of queries whose gold document is among the first `k` hits (`results[i]` are the
/// hits of query `i`, `gold[i]` its document). 0 for no queries.
pub fn recall_at(results: &[Vec<Hit>], gold: &[usize], k: usize) -> f64 {
    if results.is_empty() {
        return 0.0;
    }
    let found = results.iter().zip(gold).filter(|(hits, &g)| rank_of(&hits[..k.min(hits.len())], g).is_some()).count();
    found as f64 / results.len() as f64
}
