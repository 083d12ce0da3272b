//! The worker's engine, natively, on the exported tiny test models (target/test-models, written
//! by scripts/test.sh before the tests run).
#![cfg(not(target_arch = "wasm32"))]

use itera_data::prompt::{answer_of, qa_prompt, reading_prompt};
use itera_model::weights::WeightFormat;
use itera_web::engine::{energy_mj_per_token, Engine, TextStream, ANSWER_MAX_TOKENS, PREFILL_CHUNK};
use itera_web::retrieval::{question_prompt, RetrievalSpec, Retriever};
use serde_json::{json, Value};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models").join(name)
}

fn read(name: &str, file: &str) -> Vec<u8> {
    let path = dir(name).join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e} — scripts/test.sh exports the tiny test models there first", path.display())
    })
}

fn engine(name: &str) -> Engine {
    Engine::load(&read(name, "config.json"), &read(name, "tokenizer.json"), &read(name, "model.safetensors")).unwrap()
}

fn manifest(name: &str) -> Value {
    serde_json::from_slice(&read(name, "manifest.json")).unwrap()
}

/// The export's index as the worker loads it, with `edit` applied to the files first.
fn retriever_with(name: &str, manifest: &Value, edit: impl Fn(&str, &mut Vec<u8>)) -> Result<Retriever, String> {
    let spec = RetrievalSpec::from_manifest(manifest)?.expect("the test models have a retrieval index");
    let listed: Vec<String> =
        manifest["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().into()).collect();
    Retriever::load(spec, |file| {
        let mut bytes = listed.iter().any(|l| l == file).then(|| read(name, file))?;
        edit(file, &mut bytes);
        Some(bytes)
    })
}

fn retriever(name: &str) -> Retriever {
    retriever_with(name, &manifest(name), |_, _| {}).unwrap()
}

/// Shards (`export --max-shard-mb`) load in the engine as the worker loads them, to the same logits.
#[test]
fn sharded_weights_load_as_the_worker_loads_them_to_the_same_logits() {
    use itera_model::weights::{read_safetensors, write_sharded};
    let name = "baseline";
    let tensors: Vec<_> =
        read_safetensors(&read(name, "model.safetensors"), &candle_core::Device::Cpu).unwrap().into_iter().collect();
    let (shards, index) = write_sharded(&tensors, 20_000).unwrap();
    assert!(shards.len() >= 2);
    let get = |f: &str| shards.iter().find(|(n, _)| n == f).map(|(_, b)| b.clone());
    let sharded = Engine::load_sharded(&read(name, "config.json"), &read(name, "tokenizer.json"), &index, get).unwrap();
    let single = engine(name);
    let ids = single.encode("Ulara Askowin was born in").unwrap();
    assert_eq!(sharded.logits(&ids).unwrap(), single.logits(&ids).unwrap());
    let none = |_: &str| None;
    let e =
        Engine::load_sharded(&read(name, "config.json"), &read(name, "tokenizer.json"), &index, none).err().unwrap();
    assert!(e.contains("is missing"), "{e}");
}

/// The 8-bit copy (scripts/test.sh: `quantize --format q8_0`) loads through its manifest's dtype
/// as the worker does, and its logits stay near the f32 export's.
#[test]
fn the_quantized_export_loads_as_the_worker_loads_it_and_stays_near_f32() {
    let q = "itera-lite-q8_0";
    let format =
        itera_model::weights::WeightFormat::from_manifest_dtype(manifest(q)["dtype"].as_str().unwrap()).unwrap();
    assert_eq!(format.file_name(), "model.gguf");
    let quantized =
        Engine::load_weights(&read(q, "config.json"), &read(q, "tokenizer.json"), &read(q, format.file_name()), format)
            .unwrap();
    let exact = engine("itera-lite");
    let ids = exact.encode("Ulara Askowin was born in").unwrap();
    let (a, b) = (quantized.logits(&ids).unwrap(), exact.logits(&ids).unwrap());
    let (mut diff, mut norm) = (0f64, 0f64);
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            diff += ((x - y) as f64).powi(2);
            norm += (*y as f64).powi(2);
        }
    }
    let rel = (diff / norm).sqrt();
    println!("q8_0 vs f32 logits: relative error {rel:.2e}");
    assert!(rel > 0.0 && rel < 0.05, "q8_0 logits relative error {rel}");
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

/// Single tokens go through the batch-1 decoder, several through candle: mixed in any order
/// (decoded tokens, then a multi-token feed, which candle's state must first catch up on, then
/// more single tokens), every position's logits are the full sequence's.
#[test]
fn decoded_and_fed_tokens_mix_to_the_full_sequence_logits() {
    for name in ["baseline", "itera-lite"] {
        let mut e = engine(name);
        let ids = e.encode("Ulara Askowin was born in Pimouth, and studied botany at Kell.").unwrap();
        assert!(ids.len() > 12, "{name}: the test needs a longer sentence");
        let full = e.logits(&ids).unwrap(); // rows for [EOT, ids...]
        let mut got = vec![(2, e.prefill(&ids[..2]).unwrap())];
        for (i, &id) in ids.iter().enumerate().take(6).skip(2) {
            got.push((i + 1, e.step(id).unwrap().to_vec()));
        }
        got.push((10, e.feed(&ids[6..10]).unwrap())); // the decoder is ahead: candle catches up
        let mut logits = Vec::new();
        for (i, &id) in ids.iter().enumerate().skip(10) {
            pollster::block_on(e.step_async(id, &mut logits)).unwrap();
            got.push((i + 1, logits.clone()));
        }
        for (pos, row) in got {
            let want = &full[pos];
            let d = row.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 1e-4, "{name}: position {pos} differs by {d}");
        }
        assert_eq!(e.context_len(), ids.len() + 1);
        assert_eq!(e.state_bytes(), e.config().state_bytes(e.context_len()), "{name}: state bytes");
    }
}

/// A long prompt is read `PREFILL_CHUNK` tokens per pass (memory stays bounded): the logits
/// after it are those of one pass over the whole sequence. One longer than the baseline's
/// context is refused by name, and the engine stays usable.
#[test]
fn a_long_prompt_is_read_in_chunks_to_the_same_logits_and_one_too_long_is_a_clear_error() {
    for name in ["baseline", "itera-lite"] {
        let mut e = engine(name);
        let sentence = e.encode("Ulara Askowin was born in Pimouth. ").unwrap();
        let room = e.max_context().min(3 * PREFILL_CHUNK + 17) - 2;
        let ids: Vec<u32> = sentence.iter().copied().cycle().take(room).collect();
        assert!(ids.len() > 2 * PREFILL_CHUNK, "{name}: the test needs a prompt of several chunks");
        let want = e.logits(&ids).unwrap().pop().unwrap();
        let got = e.prefill(&ids).unwrap();
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "{name}: chunked prefill differs by {d}");
        assert_eq!(e.context_len(), ids.len() + 1);
    }
    let mut b = engine("baseline");
    let max = b.max_context();
    let too_long = vec![1u32; max];
    let e = b.prefill(&too_long).unwrap_err();
    assert!(e.starts_with(&format!("the prompt is {} tokens; this model reads at most {}", max + 1, max - 1)), "{e}");
    let ids = b.encode("Ulara Askowin was born in").unwrap();
    assert_eq!(b.prefill(&ids).unwrap().len(), b.config().vocab_size());
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

#[test]
fn answers_equal_the_trainers_own_with_and_without_retrieval() {
    // The manifest records the trainer's greedy answers (native-trainer/src/eval.rs and
    // reading.rs); the worker's engine and retriever must give the same, so that the page asks
    // in the format the model was trained and evaluated on.
    for name in ["baseline", "itera-lite"] {
        let (mut e, r, m) = (engine(name), retriever(name), manifest(name));
        let sets = [
            ("/eval/world_qa/examples", false),
            ("/eval/retrieval/heldout/examples", true),
            ("/eval/retrieval/unseen/examples", true),
            ("/eval/retrieval/unseen_off/examples", false),
        ];
        let mut checked = 0;
        for (set, with_retrieval) in sets {
            for ex in m.pointer(set).and_then(|v| v.as_array()).into_iter().flatten() {
                let q = ex["question"].as_str().unwrap();
                let docs = if with_retrieval { r.retrieve(q) } else { Vec::new() };
                let prompt = question_prompt(q, with_retrieval.then_some((&r, docs.as_slice())));
                let got = e.answer(&prompt).unwrap();
                assert_eq!(got.answer(), ex["answer"].as_str().unwrap(), "{name} {set}: {q:?}");
                checked += 1;
            }
        }
        assert!(checked >= 10, "{name}: only {checked} recorded answers in the manifest");
    }
}

#[test]
fn retrieval_reads_the_manifests_index_in_the_trained_format() {
    for name in ["baseline", "itera-lite"] {
        let (r, m) = (retriever(name), manifest(name));
        assert_eq!(r.documents() as u64, m["retrieval"]["documents"].as_u64().unwrap());
        let q = m.pointer("/eval/retrieval/unseen/examples/0/question").and_then(|v| v.as_str()).unwrap();
        let docs = r.retrieve(q);
        assert_eq!(docs.len(), r.spec().k, "{name}: k documents");
        assert!(docs.windows(2).all(|w| w[0].score >= w[1].score), "{name}: best first");
        assert!(docs.iter().all(|d| d.score.is_finite() && !d.text.is_empty()));
        // "When was Tamara Threlaner born?", "Who is Tamara Threlaner's mentor?": the person's own
        // biography comes first (recall is 1.0 here). The name: the capitalised words after the
        // question word.
        let person = q
            .split_whitespace()
            .skip(1)
            .map(|w| w.trim_end_matches(['?', '.', ',']).trim_end_matches("'s"))
            .filter(|w| w.starts_with(char::is_uppercase))
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(docs[0].text.contains(&person), "{name}: {q:?} retrieved {:?}", docs[0].text);
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(r.prompt(q, &docs), reading_prompt(&texts, q, r.spec().order));
        assert_eq!(question_prompt(q, None), qa_prompt(q));
    }
}

#[test]
fn greedy_answer_is_the_greedy_continuation_up_to_its_first_line() {
    let mut e = engine("itera-lite");
    for prompt in [qa_prompt("Where was Ulara Askowin born?"), "Ulara".to_string(), "Ulara Askowin was".to_string()] {
        let a = e.answer(&prompt).unwrap();
        assert!(a.tokens() <= ANSWER_MAX_TOKENS);
        assert_eq!(a.answer(), answer_of(a.completion()));
        assert!(!a.completion().trim_end_matches('\n').contains('\n'), "{:?} goes past its first line", a.completion());
        let greedy = e.greedy(&prompt, a.tokens()).unwrap();
        assert_eq!(e.decode(&greedy).unwrap(), a.completion(), "{prompt:?}");
        assert_eq!(a.prompt_tokens, e.encode(&prompt).unwrap().len() + 1);
        let ended = a.end().unwrap();
        assert!(["end_of_text", "newline", "max_tokens"].contains(&ended), "{ended}");
        assert_eq!(ended == "newline", a.completion().ends_with('\n'));
    }
}

#[test]
fn a_damaged_or_mismatched_index_is_a_named_error() {
    let m = manifest("baseline");
    let err = |m: &Value, edit: &dyn Fn(&str, &mut Vec<u8>)| retriever_with("baseline", m, edit).err().unwrap();
    let flip = |target: &'static str| {
        move |f: &str, b: &mut Vec<u8>| {
            if f == target {
                b[0] ^= 1
            }
        }
    };

    let e = err(&m, &flip("index/vectors.bin"));
    assert!(e.contains("index/vectors.bin") && e.contains("sha256 mismatch"), "{e}");
    let e = err(&m, &|f, b| {
        if f == "index/documents.jsonl" {
            b.truncate(b.len() - 5)
        }
    });
    assert!(e.contains("index/documents.jsonl") && e.contains("truncated"), "{e}");
    let e = err(&m, &|f, b| {
        if f == "index/index.json" {
            *b = b"{not json".to_vec()
        }
    });
    assert!(e.contains("index/index.json") && e.contains("invalid JSON"), "{e}");

    let mut unlisted = m.clone();
    unlisted["files"].as_array_mut().unwrap().retain(|f| f["name"] != "index/scales.bin");
    let e = err(&unlisted, &|_, _| {});
    assert!(e.contains("index/scales.bin: not listed in manifest.json"), "{e}");

    let mut other = m.clone();
    other["retrieval"]["documents"] = json!(299);
    let e = err(&other, &|_, _| {});
    assert!(e.contains("holds 300 documents, manifest.json says 299"), "{e}");

    for (key, value, says) in [
        ("k", json!(0), "must be in 1..="),
        ("order", json!("sideways"), "unknown variant"),
        ("dir", json!("../x"), "not a folder inside"),
    ] {
        let mut bad = m.clone();
        bad["retrieval"][key] = value;
        let e = RetrievalSpec::from_manifest(&bad).unwrap_err();
        assert!(e.starts_with("manifest.json: `retrieval`") && e.contains(says), "{key}: {e}");
    }
    let mut none = m.clone();
    none.as_object_mut().unwrap().remove("retrieval");
    assert_eq!(RetrievalSpec::from_manifest(&none), Ok(None));
}

/// A GPU adapter (lavapipe in scripts/test.sh, which sets ITERA_WEBGPU_REQUIRED=1: then a
/// missing one fails the test), or `None` and the test says it was skipped.
fn gpu() -> Option<itera_webgpu::Gpu> {
    match pollster::block_on(itera_webgpu::Gpu::new()) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("ITERA_WEBGPU_REQUIRED").is_ok_and(|v| v == "1") => panic!("no GPU adapter: {e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// The engine on the GPU (lavapipe in scripts/test.sh, which sets ITERA_WEBGPU_REQUIRED=1)
/// answers as on the CPU, and switches back and forth between jobs.
#[test]
fn on_the_gpu_the_engine_answers_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for name in ["baseline", "itera-lite"] {
        let (mut cpu, mut on_gpu, m) = (engine(name), engine(name), manifest(name));
        let tensors = itera_web::engine::read_tensors(&read(name, "model.safetensors"), WeightFormat::F32).unwrap();
        on_gpu.attach_gpu(&gpu, &tensors).unwrap();
        assert_eq!(on_gpu.backend().kind, "webgpu");
        assert!(on_gpu.backend().gpu_available);
        let ids = cpu.encode("Ulara Askowin was born in").unwrap();
        let want = cpu.prefill(&ids).unwrap();
        let got = pollster::block_on(on_gpu.prefill_async(&ids)).unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
        assert!(err < 1e-4, "{name}: GPU prefill logits differ by {err:.2e}");
        assert_eq!(on_gpu.context_len(), cpu.context_len());
        assert_eq!(on_gpu.state_bytes(), cpu.state_bytes(), "{name}: the state is counted alike");
        let mut checked = 0;
        for ex in m.pointer("/eval/world_qa/examples").and_then(|v| v.as_array()).into_iter().flatten().take(4) {
            let prompt = question_prompt(ex["question"].as_str().unwrap(), None);
            let want = cpu.answer(&prompt).unwrap();
            let mut a = pollster::block_on(on_gpu.start_answer_async(&prompt)).unwrap();
            while a.end().is_none() {
                pollster::block_on(a.step_async(&mut on_gpu)).unwrap();
            }
            assert_eq!((a.answer(), a.end()), (want.answer(), want.end()), "{name}: {prompt:?}");
            checked += 1;
        }
        assert!(checked > 0, "{name}: no recorded questions");
        assert!(on_gpu.take_fallback().is_none(), "{name}: the GPU did not fail");
        on_gpu.use_gpu(false).unwrap();
        assert_eq!(on_gpu.backend().kind, "cpu");
        let again = cpu.prefill(&ids).unwrap();
        assert_eq!(pollster::block_on(on_gpu.prefill_async(&ids)).unwrap(), again, "{name}: back on the CPU");
        assert!(cpu.use_gpu(true).unwrap_err().contains("not on a GPU"));
    }
}

/// A GPU lost mid-sequence (the device destroyed): the engine goes on on the CPU, re-reading the
/// sequence so far, gives the CPU's logits, and says why once.
#[test]
fn a_lost_gpu_mid_sequence_falls_back_to_the_cpu_without_losing_the_sequence() {
    for name in ["baseline", "itera-lite"] {
        let Some(gpu) = gpu() else { return };
        let (mut cpu, mut e) = (engine(name), engine(name));
        let tensors = itera_web::engine::read_tensors(&read(name, "model.safetensors"), WeightFormat::F32).unwrap();
        e.attach_gpu(&gpu, &tensors).unwrap();
        let ids = cpu.encode("Ulara Askowin was born in").unwrap();
        cpu.prefill(&ids).unwrap();
        pollster::block_on(e.prefill_async(&ids)).unwrap();
        assert!(e.take_fallback().is_none(), "{name}: the GPU works before it is lost");
        gpu.destroy();
        let next = [5u32, 9];
        let want = cpu.feed(&next).unwrap();
        let got = pollster::block_on(e.feed_async(&next)).unwrap();
        let notice = e.take_fallback().expect("the engine says it gave up the GPU");
        assert!(notice.contains("running on the CPU"), "{name}: {notice}");
        assert_eq!(e.backend().kind, "cpu", "{name}");
        assert_eq!(e.context_len(), cpu.context_len(), "{name}: the sequence is whole");
        // (Re-read in one prefill rather than prefill + feed: another summation order.)
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |a, (x, y)| a.max((x - y).abs())) / scale;
        assert!(err < 1e-5, "{name}: the CPU re-read the sequence; its logits differ by {err:.2e}");
        assert!(e.take_fallback().is_none(), "{name}: said once");
    }
}
