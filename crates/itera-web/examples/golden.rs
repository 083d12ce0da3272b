//! Writes what the wasm tests must reproduce: for each exported model folder under DIR
//! (`baseline/`, `itera-lite/`, and `itera-lite-q8_0/`, its 8-bit copy), the full-sequence logits of a fixed prompt and 20 greedy tokens,
//! and, when the export has a retrieval index, the documents it retrieves for a question and the
//! model's answers with and without them; computed natively with the same `Engine` and
//! `Retriever` the worker runs. Output: DIR/golden.json.
//!
//!     cargo run -p itera-web --example golden -- target/test-models

use itera_data::prompt::qa_prompt;
use itera_model::weights::WeightFormat;
use itera_web::engine::Engine;
use itera_web::retrieval::{question_prompt, RetrievalSpec, Retriever};
use std::path::Path;

/// The prompt both sides run; odd characters on purpose (byte-level BPE, multi-byte UTF-8).
pub const PROMPT: &str = "naïve café 🚀 — Ulara Askowin was born in";
const GREEDY_TOKENS: usize = 20;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/test-models".into());
    let mut golden = serde_json::Map::new();
    for name in ["baseline", "itera-lite", "itera-lite-q8_0"] {
        let folder = Path::new(&dir).join(name);
        let read =
            |f: &str| std::fs::read(folder.join(f)).unwrap_or_else(|e| panic!("{}: {e}", folder.join(f).display()));
        let manifest: serde_json::Value = serde_json::from_slice(&read("manifest.json")).unwrap();
        let format = WeightFormat::from_manifest_dtype(manifest["dtype"].as_str().unwrap_or("float32"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut engine =
            Engine::load_weights(&read("config.json"), &read("tokenizer.json"), &read(format.file_name()), format)
                .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
        let ids = engine.encode(PROMPT).unwrap();
        let logits = engine.logits(&ids).unwrap();
        let greedy = engine.greedy(PROMPT, GREEDY_TOKENS).unwrap();
        let mut entry = serde_json::json!({ "prompt": PROMPT, "ids": ids, "logits": logits, "greedy": greedy });
        println!("{name}: {} prompt tokens, greedy {:?}", ids.len(), greedy);
        if let Some(spec) = RetrievalSpec::from_manifest(&manifest).unwrap_or_else(|e| panic!("{name}: {e}")) {
            let retriever = Retriever::load(spec, |f| std::fs::read(folder.join(f)).ok())
                .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
            // A question about a person the model never trained on (only indexed), if the
            // manifest has one; the answers need not be right, only the same in wasm.
            let question = manifest
                .pointer("/eval/retrieval/unseen/examples/0/question")
                .and_then(|q| q.as_str())
                .unwrap_or("Where was Ulara Askowin born?");
            let docs = retriever.retrieve(question);
            let on = engine.answer(&question_prompt(question, Some((&retriever, &docs)))).unwrap();
            let off = engine.answer(&qa_prompt(question)).unwrap();
            let hits: serde_json::Value =
                docs.iter().map(|d| serde_json::json!({ "doc": d.doc, "score": d.score })).collect();
            println!(
                "{name}: {question:?}: documents {hits}, answer {:?} with retrieval, {:?} without",
                on.answer(),
                off.answer()
            );
            entry["retrieval"] = serde_json::json!({
                "question": question,
                "documents": hits,
                "completion_on": on.completion(),
                "completion_off": off.completion(),
            });
        }
        golden.insert(name.into(), entry);
    }
    let path = Path::new(&dir).join("golden.json");
    std::fs::write(&path, serde_json::to_string(&golden).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
