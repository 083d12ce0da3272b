//! Measures encoder variants and BM25 on a generated world: recall@1/@5, build time, index bytes
//! and single-thread query latency. The table in docs/retrieval.md comes from this.
//!
//! ```sh
//! cargo run --release -p itera-retrieval --example recall -- /work/retrieval-data/world100000
//! cargo run --release -p itera-retrieval --example recall -- DIR --variants 'd256,n3-5,w1,p2,idf18;d128,n3-5' --f32
//! ```
//! DIR holds `docs.jsonl` (`{"id":N,"text":...}`, id = line number) and `queries.jsonl`
//! (`{"doc":N,"question":...}`). A variant is comma-separated: `dN` dims, `nA-B` n-gram sizes
//! (`n0`: none), `gX` n-gram weight, `wX` word weight, `pX` word-pair weight, `idfB` a 2^B-slot
//! IDF table (`noidf`: none). `--f32` adds the recall of the same vectors unquantised.

use anyhow::{bail, ensure, Context, Result};
use itera_retrieval::{recall_at, Bm25, EncoderConfig, Hit, Index};
use std::time::Instant;

/// The table of docs/retrieval.md; the third is `EncoderConfig::default()`.
const DEFAULT_VARIANTS: &[&str] = &[
    "d128,n3-5,noidf",
    "d128,n3-5,idf18",
    "d128,n3-5,w2,idf18",
    "d128,n3-5,w1,idf18",
    "d128,n3-5,w2,idf16",
    "d128,n0,w2,idf18",
    "d128,n3-4,w2,idf18",
    "d128,n2-4,w2,idf18",
    "d128,n3-5,w2,p1,idf18",
    "d128,n3-5,w2,p1,idf22",
    "d64,n3-5,w2,idf18",
    "d256,n3-5,w2,idf16",
    "d256,n3-5,w2,idf18",
    "d512,n3-5,w2,idf18",
];

fn parse_variant(spec: &str) -> Result<EncoderConfig> {
    let mut c = EncoderConfig { word_weight: 0.0, pair_weight: 0.0, ..EncoderConfig::default() };
    for part in spec.split(',').map(str::trim) {
        let num = |s: &str| s.parse::<f32>().with_context(|| format!("{part:?} in variant {spec:?}"));
        if part == "noidf" {
            c.idf_buckets = 0;
        } else if let Some(b) = part.strip_prefix("idf") {
            c.idf_buckets = 1 << b.parse::<u32>().with_context(|| format!("{part:?}"))?;
        } else if part == "n0" {
            c.ngram_weight = 0.0;
        } else if let Some(r) = part.strip_prefix('n') {
            let (a, b) = r.split_once('-').with_context(|| format!("{part:?}: n-gram sizes are nA-B"))?;
            (c.ngram_min, c.ngram_max) = (a.parse()?, b.parse()?);
        } else if let Some(d) = part.strip_prefix('d') {
            c.dims = d.parse()?;
        } else if let Some(w) = part.strip_prefix('g') {
            c.ngram_weight = num(w)?;
        } else if let Some(w) = part.strip_prefix('w') {
            c.word_weight = num(w)?;
        } else if let Some(w) = part.strip_prefix('p') {
            c.pair_weight = num(w)?;
        } else {
            bail!("unknown part {part:?} in variant {spec:?}");
        }
    }
    c.validate().map_err(anyhow::Error::msg)?;
    Ok(c)
}

fn read_jsonl(path: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

/// p-th percentile (nearest rank) of sorted seconds, in milliseconds.
fn pct_ms(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1] * 1e3
}

struct Row {
    name: String,
    r1: f64,
    r5: f64,
    r1_f32: Option<f64>,
    build_s: f64,
    bytes: Vec<(&'static str, usize)>,
    p50: f64,
    p95: f64,
    margin_p1: f64,
}

/// Runs every query through `search`, timing each, and returns recall@1, recall@5, p50, p95 and
/// the 1st percentile of the margin `score(gold) - best other score` relative to the top score
/// (negative when the gold document is not first; -1 when it is not in the top 5): how far the
/// worst-but-one-percent query is from a wrong answer, which recall alone hides once it is 1.
fn measure(queries: &[(usize, String)], mut search: impl FnMut(&str) -> Vec<Hit>) -> (f64, f64, f64, f64, f64) {
    let mut results = Vec::with_capacity(queries.len());
    let mut times = Vec::with_capacity(queries.len());
    for (_, q) in queries {
        let t = Instant::now();
        let hits = search(q);
        times.push(t.elapsed().as_secs_f64());
        results.push(hits);
    }
    times.sort_by(f64::total_cmp);
    let gold: Vec<usize> = queries.iter().map(|(d, _)| *d).collect();
    let mut margins: Vec<f64> = results
        .iter()
        .zip(&gold)
        .map(|(hits, &g)| {
            let top = hits.first().map_or(1.0, |h| f64::from(h.score)).max(1e-9);
            match (itera_retrieval::rank_of(hits, g), hits.get(1)) {
                (Some(0), Some(second)) => (f64::from(hits[0].score) - f64::from(second.score)) / top,
                (Some(0), None) => 1.0,
                (Some(r), _) => (f64::from(hits[r].score) - top) / top,
                (None, _) => -1.0,
            }
        })
        .collect();
    margins.sort_by(f64::total_cmp);
    let margin_p1 = margins.get(margins.len() / 100).copied().unwrap_or(0.0);
    (recall_at(&results, &gold, 1), recall_at(&results, &gold, 5), pct_ms(&times, 0.5), pct_ms(&times, 0.95), margin_p1)
}

/// Recall@1 of the unquantised f32 vectors (exact cosine), to see what int8 costs.
fn recall_f32(index: &Index, queries: &[(usize, String)]) -> f64 {
    let enc = index.encoder();
    let docs: Vec<Vec<f32>> = index.documents().iter().map(|d| enc.encode(d)).collect();
    let hits = queries
        .iter()
        .filter(|(gold, q)| {
            let qv = enc.encode(q);
            let score = |d: &Vec<f32>| d.iter().zip(&qv).map(|(a, b)| a * b).sum::<f32>();
            let mut best = (f32::NEG_INFINITY, usize::MAX);
            for (j, d) in docs.iter().enumerate() {
                let s = score(d);
                if s > best.0 {
                    best = (s, j);
                }
            }
            best.1 == *gold
        })
        .count();
    hits as f64 / queries.len() as f64
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(
        args.first().context("usage: recall DIR [--variants A;B] [--queries N] [--f32] [--no-bm25]")?,
    );
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let variants: Vec<String> = match flag("--variants") {
        Some(v) => v.split(';').map(str::to_string).collect(),
        None => DEFAULT_VARIANTS.iter().map(|s| s.to_string()).collect(),
    };
    let with_f32 = args.iter().any(|a| a == "--f32");

    let docs: Vec<String> = read_jsonl(&dir.join("docs.jsonl"))?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            ensure!(v["id"].as_u64() == Some(i as u64), "docs.jsonl line {}: id is not {i}", i + 1);
            v["text"].as_str().map(str::to_string).context("docs.jsonl: a line without \"text\"")
        })
        .collect::<Result<_>>()?;
    let mut queries: Vec<(usize, String)> = read_jsonl(&dir.join("queries.jsonl"))?
        .iter()
        .map(|v| {
            Ok((
                v["doc"].as_u64().context("no doc")? as usize,
                v["question"].as_str().context("no question")?.to_string(),
            ))
        })
        .collect::<Result<_>>()?;
    if let Some(n) = flag("--queries") {
        queries.truncate(n.parse()?);
    }
    println!("{}: {} documents, {} queries", dir.display(), docs.len(), queries.len());

    let mut rows = Vec::new();
    for spec in &variants {
        let config = parse_variant(spec)?;
        let t = Instant::now();
        let index = Index::build(docs.clone(), config)?;
        let build_s = t.elapsed().as_secs_f64();
        let (_, parts) = index.to_parts();
        let bytes = parts.iter().map(|(n, b)| (*n, b.len())).collect();
        let (r1, r5, p50, p95, margin_p1) = measure(&queries, |q| index.search(q, 5));
        let r1_f32 = with_f32.then(|| recall_f32(&index, &queries));
        rows.push(Row { name: spec.clone(), r1, r5, r1_f32, build_s, bytes, p50, p95, margin_p1 });
        eprintln!("{spec}: recall@1 {r1:.4}");
    }
    if !args.iter().any(|a| a == "--no-bm25") {
        let t = Instant::now();
        let bm25 = Bm25::new(&docs);
        let build_s = t.elapsed().as_secs_f64();
        let (terms, postings) = bm25.size();
        let (r1, r5, p50, p95, margin_p1) = measure(&queries, |q| bm25.search(q, 5));
        // In-memory estimate: 8 B a posting (doc, tf as u32) + ~24 B a term's key.
        let bytes = vec![("postings (memory)", postings * 8 + terms * 24)];
        rows.push(Row {
            name: "BM25 (k1 1.2, b 0.75)".into(),
            r1,
            r5,
            r1_f32: None,
            build_s,
            bytes,
            p50,
            p95,
            margin_p1,
        });
    }

    let mb = |b: usize| format!("{:.2}", b as f64 / 1e6);
    println!("| variant | recall@1 | recall@5 | margin p1 |{} build s | vectors+scales MB | idf MB | documents MB | query p50 ms | p95 ms |", if with_f32 { " r@1 f32 |" } else { "" });
    println!("|---|---|---|---|{}---|---|---|---|---|---|", if with_f32 { "---|" } else { "" });
    for r in &rows {
        let get = |n: &str| r.bytes.iter().filter(|(k, _)| k.starts_with(n)).map(|(_, b)| b).sum::<usize>();
        let f32_col = match (with_f32, r.r1_f32) {
            (true, Some(x)) => format!(" {x:.4} |"),
            (true, None) => " |".to_string(),
            _ => String::new(),
        };
        let vectors = if r.name.starts_with("BM25") {
            format!("{} (postings, in memory)", mb(get("postings")))
        } else {
            mb(get("vectors") + get("scales"))
        };
        println!(
            "| {} | {:.4} | {:.4} | {:.3} |{f32_col} {:.2} | {vectors} | {} | {} | {:.3} | {:.3} |",
            r.name,
            r.r1,
            r.r5,
            r.margin_p1,
            r.build_s,
            mb(get("idf")),
            mb(get("documents")),
            r.p50,
            r.p95
        );
    }
    Ok(())
}
