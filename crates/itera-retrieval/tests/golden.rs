//! Golden values: the default encoder's vectors and hits on fixed documents. tests/wasm.rs
//! asserts the same constants in headless Chromium, which ties the two platforms together.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{f32_sha256, golden_index, GOLDEN_CHECKSUM, GOLDEN_QUERIES, GOLDEN_QUERY_VECTOR};
use itera_retrieval::{Encoder, EncoderConfig, Kernel};

#[test]
fn golden_index_has_the_stored_checksum_and_hits() {
    let index = golden_index();
    let q = index.encoder().encode(GOLDEN_QUERIES[0].0);
    let got: Vec<(&str, Vec<usize>)> =
        GOLDEN_QUERIES.iter().map(|(q, _)| (*q, index.search(q, 3).iter().map(|h| h.doc).collect())).collect();
    println!("checksum {}\nquery vector {}\nhits {got:?}", index.checksum(), f32_sha256(&q));
    assert_eq!(index.checksum(), GOLDEN_CHECKSUM, "stored vectors moved");
    assert_eq!(f32_sha256(&q), GOLDEN_QUERY_VECTOR, "query encoding moved");
    for ((query, want), (_, got)) in GOLDEN_QUERIES.iter().zip(&got) {
        assert_eq!(got, want, "{query}");
    }
}

#[test]
fn encoding_is_deterministic_and_unit_length() {
    let index = golden_index();
    assert_eq!(index, golden_index(), "two builds of the same documents differ");
    let enc = index.encoder();
    let v = enc.encode("When was Pena Kolwick born?");
    assert_eq!(v, enc.encode("when was PENA kolwick born"), "case and punctuation must not matter");
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    assert!(enc.encode("").iter().all(|&x| x == 0.0), "no features: zero vector");
    // Without IDF nothing is fit, so the encoder is the same for any documents.
    let plain = EncoderConfig { idf_buckets: 0, ..EncoderConfig::default() };
    let a = Encoder::fit(plain.clone(), &["x"]).unwrap();
    let b = Encoder::fit(plain, &["y", "z"]).unwrap();
    assert_eq!(a.encode("Pena Kolwick"), b.encode("Pena Kolwick"));
}

#[test]
fn reference_and_fast_kernels_give_identical_hits() {
    let index = golden_index();
    for (q, _) in GOLDEN_QUERIES {
        assert_eq!(index.search_with(q, 10, Kernel::Fast), index.search_with(q, 10, Kernel::Reference), "{q}");
    }
}
