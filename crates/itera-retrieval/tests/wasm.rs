//! In the browser (headless Chromium, SIMD128): the golden index gives the checksum, query
//! vector and hits that tests/golden.rs asserts natively; the SIMD128 dot product equals the
//! scalar reference; and the query latency over synthetic 10K- and 100K-vector indexes, printed.
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p itera-retrieval --target wasm32-unknown-unknown --tests -- --nocapture`
//! (add `--release` for the figures in docs/retrieval.md).
#![cfg(target_arch = "wasm32")]

mod common;

use common::{f32_sha256, golden_index, GOLDEN_CHECKSUM, GOLDEN_QUERIES, GOLDEN_QUERY_VECTOR};
use itera_retrieval::dot::{dots, dots_ref};
use itera_retrieval::{Index, Kernel};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn golden_index_matches_native() {
    let index = golden_index();
    assert_eq!(index.checksum(), GOLDEN_CHECKSUM, "stored vectors differ from native");
    assert_eq!(f32_sha256(&index.encoder().encode(GOLDEN_QUERIES[0].0)), GOLDEN_QUERY_VECTOR);
    for (query, want) in GOLDEN_QUERIES {
        let got: Vec<usize> = index.search(query, 3).iter().map(|h| h.doc).collect();
        assert_eq!(got, want, "{query}");
        assert_eq!(index.search_with(query, 10, Kernel::Fast), index.search_with(query, 10, Kernel::Reference));
    }
    // The bytes path the worker uses.
    let (json, parts) = index.to_parts();
    let loaded = Index::from_parts(&json, |n| Ok(parts.iter().find(|(p, _)| *p == n).unwrap().1.clone())).unwrap();
    assert_eq!(loaded, index);
}

#[wasm_bindgen_test]
fn simd128_dots_equal_the_scalar_reference_exactly() {
    let mut rng = common::Rng(5);
    for d in [1, 15, 16, 17, 33, 128, 256, 500] {
        let q: Vec<i8> = (0..d).map(|_| rng.next() as i8).collect();
        let v: Vec<i8> = (0..d * 9).map(|_| rng.next() as i8).collect();
        let (mut fast, mut slow) = (vec![0; 9], vec![0; 9]);
        dots(&q, &v, &mut fast);
        dots_ref(&q, &v, &mut slow);
        assert_eq!(fast, slow, "d = {d}");
    }
    let extreme = vec![-128i8; 256];
    let mut out = [0];
    dots(&extreme, &extreme, &mut out);
    assert_eq!(out[0], 256 * 128 * 128);
}

#[wasm_bindgen_test]
fn print_query_latency_over_synthetic_vectors() {
    let perf = web_sys::window().and_then(|w| w.performance()).expect("performance.now()");
    for (docs, dims) in [(10_000, 128), (100_000, 64), (100_000, 128), (100_000, 256)] {
        let index = common::synthetic_index(docs, dims);
        for i in 0..10 {
            index.search(&format!("warm-up {i}"), 5); // let V8 tier the code up before timing
        }
        let mut ms: Vec<f64> = (0..100)
            .map(|i| {
                let t = perf.now();
                let hits = index.search(&format!("When was Pena Kolwick{i} born?"), 5);
                assert_eq!(hits.len(), 5);
                perf.now() - t
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        let line = format!(
            "wasm ({}), {docs} x {dims} int8: query p50 {:.3} ms, p95 {:.3} ms",
            if cfg!(debug_assertions) { "debug build" } else { "release build" },
            common::percentile(&ms, 0.5),
            common::percentile(&ms, 0.95)
        );
        console_log!("{line}");
    }
}
