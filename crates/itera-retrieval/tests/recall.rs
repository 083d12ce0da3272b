//! Retrieval quality on generated biographies: the question names a person, the gold document
//! is that person's biography. Small (1000 people) so a debug build runs it in a second or two;
//! docs/retrieval.md has the figures at 10K and 100K.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use itera_retrieval::{rank_of, recall_at, Bm25, EncoderConfig, Hit, Index, Kernel};

fn recall(queries: &[(usize, String)], search: impl Fn(&str) -> Vec<Hit>) -> (f64, f64) {
    let results: Vec<Vec<Hit>> = queries.iter().map(|(_, q)| search(q)).collect();
    let gold: Vec<usize> = queries.iter().map(|(d, _)| *d).collect();
    (recall_at(&results, &gold, 1), recall_at(&results, &gold, 5))
}

#[test]
fn default_encoder_finds_the_person_asked_about() {
    let (docs, queries) = common::world(1000, 1);
    let index = Index::build(docs.clone(), EncoderConfig::default()).unwrap();
    let (r1, r5) = recall(&queries, |q| index.search(q, 5));
    let bm25 = Bm25::new(&docs);
    let (b1, b5) = recall(&queries, |q| bm25.search(q, 5));
    println!("dense recall@1 {r1:.4} @5 {r5:.4}; BM25 {b1:.4} {b5:.4}");
    assert!(r1 >= 0.99 && r5 >= 0.999, "dense recall@1 {r1}, @5 {r5}");
    assert!(b1 >= 0.99, "BM25 recall@1 {b1}");
}

#[test]
fn idf_and_whole_words_beat_plain_ngrams() {
    // The claim the default rests on, at a size where plain n-grams already slip: with IDF the
    // template words ("was", "born") stop counting.
    let (docs, queries) = common::world(1000, 2);
    let plain = EncoderConfig { dims: 64, idf_buckets: 0, word_weight: 0.0, ..EncoderConfig::default() };
    let tuned = EncoderConfig { dims: 64, ..EncoderConfig::default() };
    let r = |cfg| {
        let index = Index::build(docs.clone(), cfg).unwrap();
        recall(&queries, |q| index.search(q, 5)).0
    };
    let (p, t) = (r(plain), r(tuned));
    println!("64 dims: plain n-grams recall@1 {p:.4}, with IDF and words {t:.4}");
    assert!(t > p, "IDF + words {t} should beat plain {p}");
}

#[test]
fn the_reference_kernel_ranks_every_query_the_same() {
    let (docs, queries) = common::world(300, 3);
    let index = Index::build(docs, EncoderConfig::default()).unwrap();
    for (_, q) in &queries {
        assert_eq!(index.search_with(q, 5, Kernel::Fast), index.search_with(q, 5, Kernel::Reference), "{q}");
    }
}

#[test]
fn hits_are_sorted_capped_at_k_and_at_the_document_count() {
    let (docs, _) = common::world(20, 4);
    let index = Index::build(docs.clone(), EncoderConfig::default()).unwrap();
    let hits = index.search("anything at all", 50);
    assert_eq!(hits.len(), 20);
    assert!(hits.windows(2).all(|w| w[0].score > w[1].score || (w[0].score == w[1].score && w[0].doc < w[1].doc)));
    assert!(index.search("x", 0).is_empty());
    assert_eq!(rank_of(&hits, hits[3].doc), Some(3));
    let empty = Index::build(Vec::new(), EncoderConfig::default()).unwrap();
    assert!(empty.search("x", 5).is_empty() && Bm25::new(&Vec::<String>::new()).search("x", 5).is_empty());
    // BM25 returns only documents that share a term with the query.
    assert!(Bm25::new(&docs).search("zzzz", 5).is_empty());
}
