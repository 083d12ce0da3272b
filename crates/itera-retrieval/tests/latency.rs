//! Query latency over synthetic 10K- and 100K-vector indexes, natively: the twin of the timing in
//! tests/wasm.rs, for a side-by-side figure on one machine. Ignored by default (it needs a
//! release build to mean anything):
//! `cargo test --release -p itera-retrieval --test latency -- --ignored --nocapture`
#![cfg(not(target_arch = "wasm32"))]

mod common;

use itera_retrieval::Kernel;
use std::time::Instant;

#[test]
#[ignore]
fn print_query_latency_over_synthetic_vectors() {
    for (docs, dims) in [(10_000, 128), (100_000, 64), (100_000, 128), (100_000, 256)] {
        let index = common::synthetic_index(docs, dims);
        for kernel in [Kernel::Fast, Kernel::Reference] {
            for i in 0..10 {
                index.search_with(&format!("warm-up {i}"), 5, kernel); // as tests/wasm.rs does
            }
            let mut ms: Vec<f64> = (0..100)
                .map(|i| {
                    let t = Instant::now();
                    let hits = index.search_with(&format!("When was Pena Kolwick{i} born?"), 5, kernel);
                    assert_eq!(hits.len(), 5);
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            println!(
                "native, {docs} x {dims} int8, {kernel:?}: query p50 {:.3} ms, p95 {:.3} ms",
                common::percentile(&ms, 0.5),
                common::percentile(&ms, 0.95)
            );
        }
    }
}
