//! In the browser (headless Chromium), each exported `tiny` model gives the logits the native
//! build computed (max abs diff ≤ 1e-4) on a fixed prompt, and the same 20 greedy tokens; its
//! retrieval index, loaded from the export's files as the worker loads it, retrieves the same
//! documents with the same scores, and the model answers the same with and without them.
//! The models and the native figures come from `scripts/test.sh` (target/test-models/).
#![cfg(target_arch = "wasm32")]

use itera_data::prompt::qa_prompt;
use itera_model::weights::WeightFormat;
use itera_web::engine::Engine;
use itera_web::retrieval::{question_prompt, RetrievalSpec, Retriever};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! model_file {
    ($model:literal, $file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/test-models/", $model, "/", $file))
    };
}

const GOLDEN: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/test-models/golden.json"));

fn check(name: &str, config: &[u8], tokenizer: &[u8], weights: &[u8]) {
    check_format(name, config, tokenizer, weights, WeightFormat::F32)
}

fn check_format(name: &str, config: &[u8], tokenizer: &[u8], weights: &[u8], format: WeightFormat) {
    let golden: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    let g = &golden[name];
    let mut engine = Engine::load_weights(config, tokenizer, weights, format).unwrap();
    let prompt = g["prompt"].as_str().unwrap();
    let ids = engine.encode(prompt).unwrap();
    let want_ids: Vec<u32> = serde_json::from_value(g["ids"].clone()).unwrap();
    assert_eq!(ids, want_ids, "{name}: the tokenizer encodes differently in wasm");

    let logits = engine.logits(&ids).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(g["logits"].clone()).unwrap();
    assert_eq!(logits.len(), want.len());
    let mut worst = 0f32;
    for (row, want_row) in logits.iter().zip(&want) {
        for (a, b) in row.iter().zip(want_row) {
            worst = worst.max((a - b).abs());
        }
    }
    console_log!("{name}: max |logit wasm - native| = {worst:e} over {} logits", logits.len() * logits[0].len());
    assert!(worst <= 1e-4, "{name}: logits differ from native by {worst}");

    let greedy = engine.greedy(prompt, 20).unwrap();
    let want_greedy: Vec<u32> = serde_json::from_value(g["greedy"].clone()).unwrap();
    assert_eq!(greedy, want_greedy, "{name}: greedy decoding differs from native");
}

/// The export's files by manifest name, as the worker has them after its download loop.
type Files<'a> = &'a [(&'a str, &'a [u8])];

macro_rules! export_files {
    ($model:literal) => {
        &[
            ("manifest.json", model_file!($model, "manifest.json")),
            ("index/index.json", model_file!($model, "index/index.json")),
            ("index/vectors.bin", model_file!($model, "index/vectors.bin")),
            ("index/scales.bin", model_file!($model, "index/scales.bin")),
            ("index/idf.bin", model_file!($model, "index/idf.bin")),
            ("index/documents.jsonl", model_file!($model, "index/documents.jsonl")),
        ]
    };
}

fn check_retrieval(name: &str, engine: &mut Engine, files: Files) {
    let golden: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    let g = &golden[name]["retrieval"];
    let file = |n: &str| files.iter().find(|(f, _)| *f == n).map(|(_, b)| b.to_vec());
    let manifest: serde_json::Value = serde_json::from_slice(&file("manifest.json").unwrap()).unwrap();
    let spec = RetrievalSpec::from_manifest(&manifest).unwrap().expect("the test models have a retrieval index");
    let retriever = Retriever::load(spec, file).unwrap();
    let question = g["question"].as_str().unwrap();
    let docs = retriever.retrieve(question);
    let want = g["documents"].as_array().unwrap();
    assert_eq!(docs.len(), want.len(), "{name}: number of documents retrieved");
    for (d, w) in docs.iter().zip(want) {
        assert_eq!(d.doc as u64, w["doc"].as_u64().unwrap(), "{name}: another document retrieved in wasm");
        assert_eq!(d.score, w["score"].as_f64().unwrap() as f32, "{name}: doc {} scores differently in wasm", d.doc);
    }
    let on = engine.answer(&question_prompt(question, Some((&retriever, &docs)))).unwrap();
    let off = engine.answer(&qa_prompt(question)).unwrap();
    console_log!(
        "{name}: {question:?} -> doc {:?}; answer {:?} with retrieval, {:?} without",
        docs.first().map(|d| d.doc),
        on.answer(),
        off.answer()
    );
    assert_eq!(on.completion(), g["completion_on"].as_str().unwrap(), "{name}: answer with retrieval differs");
    assert_eq!(off.completion(), g["completion_off"].as_str().unwrap(), "{name}: answer without retrieval differs");
}

#[wasm_bindgen_test]
fn baseline_retrieves_and_answers_as_natively() {
    let mut engine = Engine::load(
        model_file!("baseline", "config.json"),
        model_file!("baseline", "tokenizer.json"),
        model_file!("baseline", "model.safetensors"),
    )
    .unwrap();
    check_retrieval("baseline", &mut engine, export_files!("baseline"));
}

#[wasm_bindgen_test]
fn itera_lite_retrieves_and_answers_as_natively() {
    let mut engine = Engine::load(
        model_file!("itera-lite", "config.json"),
        model_file!("itera-lite", "tokenizer.json"),
        model_file!("itera-lite", "model.safetensors"),
    )
    .unwrap();
    check_retrieval("itera-lite", &mut engine, export_files!("itera-lite"));
}

#[wasm_bindgen_test]
fn baseline_gives_the_native_logits_and_greedy_tokens() {
    check(
        "baseline",
        model_file!("baseline", "config.json"),
        model_file!("baseline", "tokenizer.json"),
        model_file!("baseline", "model.safetensors"),
    );
}

#[wasm_bindgen_test]
fn itera_lite_gives_the_native_logits_and_greedy_tokens() {
    check(
        "itera-lite",
        model_file!("itera-lite", "config.json"),
        model_file!("itera-lite", "tokenizer.json"),
        model_file!("itera-lite", "model.safetensors"),
    );
}

/// The 8-bit copy (`native-trainer quantize --format q8_0`: model.gguf) loads in the browser and
/// computes what the native build computed from the same file.
#[wasm_bindgen_test]
fn quantized_itera_lite_gives_the_native_logits_and_greedy_tokens() {
    check_format(
        "itera-lite-q8_0",
        model_file!("itera-lite-q8_0", "config.json"),
        model_file!("itera-lite-q8_0", "tokenizer.json"),
        model_file!("itera-lite-q8_0", "model.gguf"),
        WeightFormat::Q8_0,
    );
}
