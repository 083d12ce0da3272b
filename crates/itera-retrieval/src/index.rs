//! The dense index: documents, their int8 vectors and exact search over all of them.
//!
//! Each unit vector is stored as int8 with its own scale (`v ≈ scale · q`, `q` in -127..=127,
//! the largest component mapped to ±127), a quarter of f32's bytes: the page downloads the
//! index. A query is quantised the same way, so its score against a document is one integer dot
//! product times two scales; the ranking error this adds is measured in docs/retrieval.md.
//! Search is exact (every vector is scored): at 100K documents that is a few milliseconds, and
//! an approximate structure would be a second thing to keep identical natively and in wasm.

use crate::dot::Kernel;
use crate::encoder::{Encoder, EncoderConfig};
use crate::error::{Error, Result};
use crate::topk::TopK;
use crate::Hit;

/// Vectors scored per call of the dot kernel: 4096 × 256 B = 1 MiB of vectors and 16 KiB of
/// scores, so the scores are still in cache when the top-k pass reads them.
const BLOCK: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    pub(crate) encoder: Encoder,
    pub(crate) vectors: Vec<i8>,       // docs × dims, row-major
    pub(crate) scales: Vec<f32>,       // docs; vector j ≈ scales[j] · vectors[j]
    pub(crate) documents: Vec<String>, // docs
}

/// Quantises `v` into `out` (appended, `v.len()` values in -127..=127) and returns its scale,
/// `max |v| / 127` (0 for a zero vector, whose values are then all 0).
pub fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.extend(std::iter::repeat_n(0, v.len()));
        return 0.0;
    }
    let inv = 127.0 / max;
    out.extend(v.iter().map(|&x| (x * inv).round().clamp(-127.0, 127.0) as i8));
    max / 127.0
}

impl Index {
    /// Fits the encoder on `documents` (IDF, if configured), encodes and quantises each one.
    pub fn build(documents: Vec<String>, config: EncoderConfig) -> Result<Self> {
        let encoder = Encoder::fit(config, &documents)?;
        let dims = encoder.dims();
        let mut vectors = Vec::with_capacity(documents.len() * dims);
        let mut scales = Vec::with_capacity(documents.len());
        for doc in &documents {
            scales.push(quantize(&encoder.encode(doc), &mut vectors));
        }
        Ok(Self { encoder, vectors, scales, documents })
    }

    /// An index from already quantised parts (what loading does after checking the files).
    /// `vectors` holds `documents.len() × encoder.dims()` values; scales are finite and ≥ 0.
    pub fn from_quantized(
        encoder: Encoder,
        vectors: Vec<i8>,
        scales: Vec<f32>,
        documents: Vec<String>,
    ) -> Result<Self> {
        let n = documents.len();
        if scales.len() != n || Some(vectors.len()) != n.checked_mul(encoder.dims()) {
            return Err(Error::Config(format!(
                "{} documents need {} scales and {} × {} vector values, got {} and {}",
                n,
                n,
                n,
                encoder.dims(),
                scales.len(),
                vectors.len()
            )));
        }
        if let Some((j, s)) = scales.iter().enumerate().find(|(_, s)| !s.is_finite() || **s < 0.0) {
            return Err(Error::Config(format!("scale of document {j} is {s}, not a finite value ≥ 0")));
        }
        Ok(Self { encoder, vectors, scales, documents })
    }

    /// The `k` best documents for `query`, best first, ties to the lower id.
    pub fn search(&self, query: &str, k: usize) -> Vec<Hit> {
        self.search_with(query, k, Kernel::Fast)
    }

    /// [`Index::search`] on a chosen dot-product kernel (the reference twin for tests).
    pub fn search_with(&self, query: &str, k: usize, kernel: Kernel) -> Vec<Hit> {
        let mut q = Vec::with_capacity(self.dims());
        let scale = quantize(&self.encoder.encode(query), &mut q);
        self.search_quantized(&q, scale, k, kernel)
    }

    /// Scores a quantised query (`dims` values, its scale) against every document.
    pub fn search_quantized(&self, query: &[i8], scale: f32, k: usize, kernel: Kernel) -> Vec<Hit> {
        let dims = self.dims();
        let mut top = TopK::new(k.min(self.len()));
        if query.len() != dims || k == 0 {
            return Vec::new();
        }
        let mut dots = vec![0i32; BLOCK.min(self.len())];
        for (b, block) in self.vectors.chunks(BLOCK * dims).enumerate() {
            let dots = &mut dots[..block.len() / dims];
            kernel.dots(query, block, dots);
            let base = b * BLOCK;
            for (j, &d) in dots.iter().enumerate() {
                top.push(base + j, d as f32 * (scale * self.scales[base + j]));
            }
        }
        top.into_hits()
    }

    pub fn len(&self) -> usize {
        self.documents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    pub fn dims(&self) -> usize {
        self.encoder.dims()
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    pub fn document(&self, doc: usize) -> Option<&str> {
        self.documents.get(doc).map(String::as_str)
    }

    pub fn documents(&self) -> &[String] {
        &self.documents
    }

    /// Document `doc`'s quantised vector and its scale.
    pub fn vector(&self, doc: usize) -> Option<(&[i8], f32)> {
        let (d, start) = (self.dims(), doc.checked_mul(self.dims())?);
        Some((self.vectors.get(start..start.checked_add(d)?)?, *self.scales.get(doc)?))
    }
}
