//! In the browser (headless Chromium), each exported `tiny` model gives the logits the native
//! build computed (max abs diff ≤ 1e-4) on a fixed prompt, and the same 20 greedy tokens.
//! The models and the native figures come from `scripts/test.sh` (target/test-models/).
#![cfg(target_arch = "wasm32")]

use itera_web::engine::Engine;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! model_file {
    ($model:literal, $file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/test-models/", $model, "/", $file))
    };
}

const GOLDEN: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/test-models/golden.json"));

fn check(name: &str, config: &[u8], tokenizer: &[u8], weights: &[u8]) {
    let golden: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    let g = &golden[name];
    let mut engine = Engine::load(config, tokenizer, weights).unwrap();
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
