//! Malformed files the worker is handed: each is an error naming the file, never a panic (a
//! panic kills the worker). Regression tests for what itera-fuzz found (issue 14).

use itera_model::{Config, ModelKind, Preset};
use itera_web::engine::Engine;

/// tokenizers 0.23 panics (`expect("Helper")`, decoders/mod.rs:90) on a JSON syntax error inside
/// `decoder`; found by itera-fuzz's `tokenizer` target.
#[test]
fn tokenizer_json_with_a_syntax_error_in_its_decoder_is_an_error() {
    let config = serde_json::to_vec(&Config::preset(ModelKind::Baseline, Preset::Tiny, 256)).unwrap();
    let tokenizer = br#"{"version":"1.0","decoder":{"type":"ByteLevel" "x":1}}"#;
    let e = Engine::load(&config, tokenizer, b"").err().expect("an error");
    assert!(e.starts_with("tokenizer.json:"), "{e}");
}
