//! The worker's engine, natively, on the exported tiny test models (target/test-models, written
//! by scripts/test.sh before the tests run).
#![cfg(not(target_arch = "wasm32"))]

use itera_web::engine::{energy_mj_per_token, Engine, TextStream};
use std::path::PathBuf;

fn engine(name: &str) -> Engine {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models").join(name);
    let read = |f: &str| {
        std::fs::read(dir.join(f)).unwrap_or_else(|e| {
            panic!("{}: {e} — scripts/test.sh exports the tiny test models there first", dir.join(f).display())
        })
    };
    Engine::load(&read("config.json"), &read("tokenizer.json"), &read("model.safetensors")).unwrap()
}

#[test]
fn prefill_then_single_tokens_give_the_full_sequence_logits() {
    for name in ["baseline", "itera-lite"] {
        let mut e = engine(name);
        let ids = e.encode("Ulara Askowin was born in Pimouth.").unwrap();
        let full = e.logits(&ids).unwrap(); // rows for [EOT, ids...]
        let mut step = vec![e.prefill(&ids[..3]).unwrap()];
        for &id in &ids[3..] {
            step.push(e.feed(&[id]).unwrap());
        }
        for (i, row) in step.iter().enumerate() {
            let want = &full[3 + i];
            let d = row.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 1e-4, "{name}: position {} differs by {d}", 3 + i);
        }
        assert_eq!(e.context_len(), ids.len() + 1);
    }
}

#[test]
fn ssm_state_stays_constant_while_the_kv_cache_grows() {
    let (mut b, mut i) = (engine("baseline"), engine("itera-lite"));
    let ids = b.encode("Ulara Askowin was born in").unwrap();
    b.prefill(&ids).unwrap();
    i.prefill(&ids).unwrap();
    let (b0, i0) = (b.state_bytes(), i.state_bytes());
    for _ in 0..10 {
        b.feed(&[ids[0]]).unwrap();
        i.feed(&[ids[0]]).unwrap();
    }
    assert!(b.state_bytes() > b0, "the KV cache did not grow");
    assert_eq!(i.state_bytes(), i0, "the SSM state changed size");
    assert_eq!(b.state_bytes(), b.config().state_bytes(b.context_len()));
    assert_eq!(i.state_bytes(), i.config().state_bytes(i.context_len()));
}

#[test]
fn text_stream_releases_only_complete_characters_and_loses_nothing() {
    let e = engine("baseline");
    let text = "naïve café 🚀 日本語 👩‍👩‍👧";
    let ids = e.encode(text).unwrap();
    let mut stream = TextStream::default();
    let mut out = String::new();
    for &id in &ids {
        let piece = stream.push(&e, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "released a broken character: {piece:?}");
        out.push_str(&piece);
    }
    assert_eq!(out, text);
}

#[test]
fn energy_estimate_grows_with_context_for_attention_only() {
    let (b, i) = (engine("baseline"), engine("itera-lite"));
    assert!(energy_mj_per_token(b.config(), 4096) > energy_mj_per_token(b.config(), 64));
    assert_eq!(energy_mj_per_token(i.config(), 4096), energy_mj_per_token(i.config(), 64));
    assert!(energy_mj_per_token(i.config(), 64) > 0.0);
}
