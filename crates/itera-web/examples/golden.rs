//! Writes what the wasm tests must reproduce: for each exported model folder under DIR
//! (`baseline/`, `itera-lite/`), the full-sequence logits of a fixed prompt and 20 greedy tokens,
//! computed natively with the same `Engine` the worker runs. Output: DIR/golden.json.
//!
//!     cargo run -p itera-web --example golden -- target/test-models

use itera_web::engine::Engine;
use std::path::Path;

/// The prompt both sides run; odd characters on purpose (byte-level BPE, multi-byte UTF-8).
pub const PROMPT: &str = "naïve café 🚀 — Ulara Askowin was born in";
const GREEDY_TOKENS: usize = 20;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/test-models".into());
    let mut golden = serde_json::Map::new();
    for name in ["baseline", "itera-lite"] {
        let folder = Path::new(&dir).join(name);
        let read =
            |f: &str| std::fs::read(folder.join(f)).unwrap_or_else(|e| panic!("{}: {e}", folder.join(f).display()));
        let mut engine = Engine::load(&read("config.json"), &read("tokenizer.json"), &read("model.safetensors"))
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        let ids = engine.encode(PROMPT).unwrap();
        let logits = engine.logits(&ids).unwrap();
        let greedy = engine.greedy(PROMPT, GREEDY_TOKENS).unwrap();
        golden.insert(
            name.into(),
            serde_json::json!({ "prompt": PROMPT, "ids": ids, "logits": logits, "greedy": greedy }),
        );
        println!("{name}: {} prompt tokens, greedy {:?}", ids.len(), greedy);
    }
    let path = Path::new(&dir).join("golden.json");
    std::fs::write(&path, serde_json::to_string(&golden).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
