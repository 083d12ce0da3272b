//! Okapi BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework", eq. 3.15 with
//! the Lucene idf `ln(1 + (N - df + 0.5) / (df + 0.5))`, which is never negative), k1 = 1.2,
//! b = 0.75, over the encoder's word tokens. The sparse reference the dense index is measured
//! against; it lives in memory only.

use crate::encoder::for_each_word;
use crate::hash::ln;
use crate::topk::TopK;
use crate::Hit;
use std::collections::HashMap;

pub const K1: f64 = 1.2;
pub const B: f64 = 0.75;

pub struct Bm25 {
    postings: HashMap<String, Vec<(u32, u32)>>, // term → (doc, term frequency), doc ascending
    doc_len: Vec<u32>,                          // tokens per document
    avg_len: f64,
}

impl Bm25 {
    pub fn new<S: AsRef<str>>(documents: &[S]) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut doc_len = Vec::with_capacity(documents.len());
        for (d, text) in documents.iter().enumerate() {
            let mut len = 0;
            for_each_word(text.as_ref(), |w| {
                len += 1;
                let list = postings.entry(w.to_string()).or_default();
                match list.last_mut() {
                    Some((doc, tf)) if *doc == d as u32 => *tf += 1,
                    _ => list.push((d as u32, 1)),
                }
            });
            doc_len.push(len);
        }
        let total: u64 = doc_len.iter().map(|&l| u64::from(l)).sum();
        let avg_len = if documents.is_empty() { 1.0 } else { (total as f64 / documents.len() as f64).max(1.0) };
        Self { postings, doc_len, avg_len }
    }

    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    /// (distinct terms, postings): the in-memory size, for comparison with the dense index.
    pub fn size(&self) -> (usize, usize) {
        (self.postings.len(), self.postings.values().map(Vec::len).sum())
    }

    /// The `k` best documents with a score above 0, best first, ties to the lower id. Each
    /// distinct query term counts once, in query order (so the float sums are reproducible).
    pub fn search(&self, query: &str, k: usize) -> Vec<Hit> {
        let n = self.len() as f64;
        let mut terms: Vec<String> = Vec::new();
        for_each_word(query, |w| {
            if !terms.iter().any(|t| t == w) {
                terms.push(w.to_string());
            }
        });
        let mut scores = vec![0f64; self.len()];
        for t in &terms {
            let Some(list) = self.postings.get(t) else { continue };
            let df = list.len() as f64;
            let idf = ln(1.0 + (n - df + 0.5) / (df + 0.5));
            for &(d, tf) in list {
                let (tf, len) = (f64::from(tf), f64::from(self.doc_len[d as usize]));
                scores[d as usize] += idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / self.avg_len));
            }
        }
        let mut top = TopK::new(k.min(self.len()));
        for (d, &s) in scores.iter().enumerate() {
            if s > 0.0 {
                top.push(d, s as f32);
            }
        }
        top.into_hits()
    }
}
