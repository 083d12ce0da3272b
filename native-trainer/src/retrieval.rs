//! `native-trainer index`: a world's biographies into a retrieval index (itera-retrieval), and the
//! figures that say whether it is good enough to read from: recall@1 and recall@5 of the asked
//! entity's own biography for held-out questions, build time, bytes on disk, query latency (one
//! thread), and optionally BM25 on the same questions as the sparse reference.

use crate::reading::spread;
use crate::world::World;
use anyhow::{Context, Result};
use itera_retrieval::{recall_at, Bm25, EncoderConfig, Hit, Index};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Recall and latency of one retriever on a question set.
#[derive(Debug, Clone, Serialize)]
pub struct RetrieverFigures {
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub query_ms_p50: f64,
    pub query_ms_p95: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexReport {
    pub documents: usize,
    pub world_entities: usize,
    pub world_seed: u64,
    pub encoder: EncoderConfig,
    pub build_s: f64,
    pub bytes: u64,
    pub load_s: f64,
    pub queries: usize,
    pub dense: Option<RetrieverFigures>,
    pub bm25: Option<RetrieverFigures>,
}

/// Nearest-rank quantile of sorted `xs`.
fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs[((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1]
}

/// Runs `search` on every question, timing each; recall of `gold`.
fn measure(questions: &[String], gold: &[usize], mut search: impl FnMut(&str) -> Vec<Hit>) -> RetrieverFigures {
    let mut times = Vec::with_capacity(questions.len());
    let mut results = Vec::with_capacity(questions.len());
    for q in questions {
        let t = Instant::now();
        results.push(search(q));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    RetrieverFigures {
        recall_at_1: recall_at(&results, gold, 1),
        recall_at_5: recall_at(&results, gold, 5),
        query_ms_p50: quantile(&times, 0.5),
        query_ms_p95: quantile(&times, 0.95),
    }
}

/// Builds the index of `world`'s biographies into `out` (atomically), reloads it, and measures it on
/// `queries` held-out questions spread over the entities (0 skips the measurement).
pub fn build_and_measure(world: &World, out: &Path, queries: usize, bm25: bool) -> Result<IndexReport> {
    let docs = world.biographies();
    let n = docs.len();
    eprintln!("indexing {n} biographies ...");
    let t = Instant::now();
    let index = Index::build(docs, EncoderConfig::default()).context("building the retrieval index")?;
    let build_s = t.elapsed().as_secs_f64();
    index.save(out).with_context(|| format!("writing the retrieval index to {}", out.display()))?;
    let t = Instant::now();
    let index = Index::load(out).with_context(|| format!("reading back {}", out.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let bytes = dir_bytes(out)?;
    eprintln!("built in {build_s:.2} s, {:.2} MB in {} (loads in {load_s:.2} s)", bytes as f64 / 1e6, out.display());

    let items = spread(&world.qa_heldout(), queries);
    let questions: Vec<String> = items.iter().map(|i| i.question.clone()).collect();
    let gold: Vec<usize> = items.iter().map(|i| i.entity).collect();
    let (mut dense, mut sparse) = (None, None);
    if !questions.is_empty() {
        let f = measure(&questions, &gold, |q| index.search(q, 5));
        print_figures("dense", &f, questions.len());
        dense = Some(f);
        if bm25 {
            let t = Instant::now();
            let b = Bm25::new(index.documents());
            eprintln!("BM25 built in {:.2} s", t.elapsed().as_secs_f64());
            let f = measure(&questions, &gold, |q| b.search(q, 5));
            print_figures("BM25", &f, questions.len());
            sparse = Some(f);
        }
    }
    Ok(IndexReport {
        documents: n,
        world_entities: world.entities.len(),
        world_seed: world.config.seed,
        encoder: index.encoder().config().clone(),
        build_s,
        bytes,
        load_s,
        queries: questions.len(),
        dense,
        bm25: sparse,
    })
}

fn print_figures(name: &str, f: &RetrieverFigures, queries: usize) {
    println!(
        "{name}: recall@1 {:.4}, recall@5 {:.4} over {queries} held-out questions; query {:.2} ms p50, {:.2} ms p95 (one thread)",
        f.recall_at_1, f.recall_at_5, f.query_ms_p50, f.query_ms_p95
    );
}

/// Bytes of the files in `dir` (not recursive).
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let m = e?.metadata()?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}
