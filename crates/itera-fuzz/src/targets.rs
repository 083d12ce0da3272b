//! The fuzz targets: one function per parser of outside bytes, each taking the raw bytes and
//! returning nothing, plus the seed inputs it starts from. Seeds are made at run time with the
//! crates' own writers (a tiny model exported in-process, an index built and serialised), so
//! they always match the current formats and nothing binary is committed.
//!
//! A target calls the parser the way the project does and, when the bytes parse, uses the
//! result a little (loads the weights into a model, encodes with the tokenizer, searches the
//! index) so that a value that parses but cannot be used is exercised too.

use candle_core::{DType, Device};
use itera_data::prompt::ReadingOrder;
use itera_model::weights::{
    read_gguf, varmap_tensors, write_gguf, write_safetensors, write_sharded, Shard, WeightFormat,
};
use itera_model::{BaselineConfig, Config, IteraLiteConfig, Model, Preset};
use itera_retrieval::{EncoderConfig, Index};
use itera_web::protocol::{BackendChoice, ToWorker};
use itera_web::retrieval::{RetrievalSpec, Retriever};
use native_trainer::checkpoint::{Checkpoint, CheckpointMeta, CHECKPOINT_FILE};
use native_trainer::export::{FileEntry, Manifest, ManifestRetrieval, Training};
use std::path::Path;
use std::sync::OnceLock;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    /// Runs the parser on the bytes; must neither panic nor abort, whatever they are.
    pub run: fn(&[u8]),
    /// The valid inputs mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens of the format that mutations insert.
    pub dict: &'static [&'static [u8]],
}

pub const TARGETS: &[Target] = &[
    Target { name: "protocol", run: protocol, seeds: protocol_seeds, dict: PROTOCOL_DICT },
    Target { name: "config", run: config, seeds: config_seeds, dict: CONFIG_DICT },
    Target { name: "manifest", run: manifest, seeds: manifest_seeds, dict: MANIFEST_DICT },
    Target { name: "corpus", run: corpus, seeds: corpus_seeds, dict: CORPUS_DICT },
    Target { name: "safetensors", run: safetensors, seeds: safetensors_seeds, dict: SAFETENSORS_DICT },
    Target { name: "gguf", run: gguf, seeds: gguf_seeds, dict: GGUF_DICT },
    Target { name: "shards", run: shards, seeds: shards_seeds, dict: SHARDS_DICT },
    Target { name: "checkpoint", run: checkpoint, seeds: checkpoint_seeds, dict: CHECKPOINT_DICT },
    Target { name: "index", run: index, seeds: index_seeds, dict: INDEX_DICT },
    Target { name: "tokenizer", run: tokenizer, seeds: tokenizer_seeds, dict: TOKENIZER_DICT },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

// ---------------------------------------------------------------------------------------------
// Shared seeds: two tiny models and a tiny index, built once per process.

struct Shared {
    configs: [Config; 2],                      // baseline, itera-lite
    weights: [Vec<u8>; 2],                     // their model.safetensors (f32)
    index_json: Vec<u8>,                       // a tiny index's index.json
    index_files: Vec<(&'static str, Vec<u8>)>, // and its other files
    index_docs: usize,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let configs = [tiny_baseline(), tiny_itera_lite()];
        let weights = configs.clone().map(|cfg| {
            let (varmap, _) = Model::init(&cfg, 0, &Device::Cpu).expect("a tiny model initialises");
            write_safetensors(&varmap_tensors(&varmap).expect("tensors")).expect("serialises")
        });
        let docs: Vec<String> = [
            "Zana Kolvworth was born in Drushesk.",
            "Alo Brel studied law in Vemmit.",
            "Ruda Sorn works as a baker.",
            "Ilo Pask was born in 1901.",
            "Mira Tolt lives in Kessa.",
        ]
        .map(String::from)
        .to_vec();
        let config = EncoderConfig { dims: 16, idf_buckets: 64, ..EncoderConfig::default() };
        let index = Index::build(docs, config).expect("a tiny index builds");
        let (index_json, index_files) = index.to_parts();
        Shared { configs, weights, index_json, index_files, index_docs: index.len() }
    })
}

/// Under 2K parameters: the loader's work, not the model's, dominates an execution.
pub fn tiny_baseline() -> Config {
    Config::Baseline(BaselineConfig {
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 1,
        num_key_value_heads: 1,
        max_position_embeddings: 32,
        ..BaselineConfig::preset(Preset::Tiny, 16)
    })
}

pub fn tiny_itera_lite() -> Config {
    Config::IteraLite(IteraLiteConfig {
        hidden_size: 8,
        num_hidden_layers: 1,
        state_size: 4,
        time_step_rank: 1,
        num_experts: 2,
        num_experts_per_tok: 1,
        expert_intermediate_size: 8,
        ..IteraLiteConfig::preset(Preset::Tiny, 16)
    })
}

// ---------------------------------------------------------------------------------------------
// model.safetensors: itera_model::Model::from_safetensors (the worker's and the CLI's loader).

const SAFETENSORS_DICT: &[&[u8]] = &[
    b"\"dtype\"",
    b"\"shape\"",
    b"\"data_offsets\"",
    b"\"F16\"",
    b"\"BF16\"",
    b"\"F64\"",
    b"\"U8\"",
    b"\"I64\"",
    b"\"F8_E4M3\"",
    b"\"__metadata__\"",
    b"[]",
    b"[0,0]",
];

/// Magic, version 2 and 3, ggml type ids (f32 0, f16 1, q4_0 2, q8_0 8, a large one) as u32.
const GGUF_DICT: &[&[u8]] = &[
    b"GGUF",
    &[2, 0, 0, 0],
    &[3, 0, 0, 0],
    &[0, 0, 0, 0],
    &[1, 0, 0, 0],
    &[2, 0, 0, 0],
    &[8, 0, 0, 0],
    &[0xff, 0xff, 0, 0],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    b"general.name",
];

/// `model.gguf` (`native-trainer quantize`): the bytes as both tiny models' weights, and as bare
/// tensors.
fn gguf(bytes: &[u8]) {
    for cfg in &shared().configs {
        let _ = Model::from_gguf(cfg, bytes, &Device::Cpu);
    }
    let _ = read_gguf(bytes, &Device::Cpu);
}

fn gguf_seeds() -> Vec<Vec<u8>> {
    let s = shared();
    let mut seeds = Vec::new();
    for cfg in &s.configs {
        let (varmap, _) = Model::init(cfg, 2, &Device::Cpu).expect("init");
        let tensors = varmap_tensors(&varmap).expect("tensors");
        for f in [WeightFormat::F16, WeightFormat::Q8_0] {
            seeds.push(write_gguf(&tensors, f, &[("general.name", "fuzz".into())]).expect("gguf"));
        }
    }
    // A matrix wide and tall enough for the blocks, in each block format.
    let m = candle_core::Tensor::arange(0f32, 32.0 * 64.0, &Device::Cpu)
        .expect("arange")
        .reshape((32, 64))
        .expect("reshape");
    for f in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
        seeds.push(write_gguf(&[("w".into(), m.clone())], f, &[]).expect("gguf"));
    }
    seeds
}

const SHARDS_DICT: &[&[u8]] = &[
    b"\"weight_map\"",
    b"\"metadata\"",
    b"\"total_size\"",
    b"\"model-00001-of-00002.safetensors\"",
    b"\"../model-00002-of-00002.safetensors\"",
    b"\"model.layers.0.mixer.in_proj.weight\"",
    b"null",
];

/// The tiny Itera-Lite's weights in shards of 1 KB: (index JSON, shards).
fn tiny_shards() -> &'static (Vec<u8>, Vec<Shard>) {
    static SHARDS: OnceLock<(Vec<u8>, Vec<Shard>)> = OnceLock::new();
    SHARDS.get_or_init(|| {
        let (varmap, _) = Model::init(&shared().configs[1], 3, &Device::Cpu).expect("init");
        let (shards, index) = write_sharded(&varmap_tensors(&varmap).expect("tensors"), 1024).expect("shards");
        (index, shards)
    })
}

/// `model.safetensors.index.json` (`export --max-shard-mb`): the bytes as the index over the
/// tiny Itera-Lite's real shards, loaded as its weights.
fn shards(bytes: &[u8]) {
    let (_, files) = tiny_shards();
    let get = |f: &str| files.iter().find(|(n, _)| n == f).map(|(_, b)| b.clone());
    let _ = Model::from_sharded(&shared().configs[1], bytes, get, &Device::Cpu);
}

fn shards_seeds() -> Vec<Vec<u8>> {
    vec![tiny_shards().0.clone()]
}

fn safetensors(bytes: &[u8]) {
    for cfg in &shared().configs {
        let _ = Model::from_safetensors(cfg, bytes, &Device::Cpu);
    }
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let s = shared();
    let mut seeds = s.weights.to_vec();
    // The same weights in f16 (computed in f32 after loading).
    for cfg in &s.configs {
        let (varmap, _) = Model::init(cfg, 1, &Device::Cpu).expect("init");
        let f16: Vec<_> = varmap_tensors(&varmap)
            .expect("tensors")
            .into_iter()
            .map(|(n, t)| (n, t.to_dtype(DType::F16).expect("f16")))
            .collect();
        seeds.push(write_safetensors(&f16).expect("serialises"));
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// config.json: deserialise + validate, the page's analytic model of it, and the tiny weights
// loaded with it (what `Engine::load` does with a config that does not fit its weights).

const CONFIG_DICT: &[&[u8]] = &[
    b"\"model_type\"",
    b"\"llama\"",
    b"\"mamba\"",
    b"\"num_attention_heads\"",
    b"\"max_position_embeddings\"",
    b"\"num_experts\"",
    b"null",
    b"true",
];

fn config(bytes: &[u8]) {
    let Ok(cfg) = serde_json::from_slice::<Config>(bytes) else { return };
    if cfg.validate().is_err() {
        return;
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = itera_web::analytic::analytic_json(text, &[1, 64, 4096]);
    }
    for weights in &shared().weights {
        let _ = Model::from_safetensors(&cfg, weights, &Device::Cpu);
    }
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> =
        shared().configs.iter().map(|c| serde_json::to_vec_pretty(c).expect("serialises")).collect();
    // The exported form, with the keys Hugging Face adds.
    for cfg in &shared().configs {
        let v = native_trainer::export::hf_config(cfg, 0).expect("hf config");
        seeds.push(serde_json::to_vec(&v).expect("serialises"));
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json: native-trainer's loader (the worker's `Tokenizer::from_bytes` underneath).

const TOKENIZER_DICT: &[&[u8]] = &[
    b"\"merges\"",
    b"\"vocab\"",
    b"\"added_tokens\"",
    b"\"<|endoftext|>\"",
    b"\"type\":\"BPE\"",
    b"\"ByteLevel\"",
    b"\"Split\"",
    b"\"Sequence\"",
    b"\"pattern\"",
    b"\"Regex\"",
    b"null",
];

fn tokenizer(bytes: &[u8]) {
    let Ok(tok) = native_trainer::data::tokenizer_from_bytes(bytes) else { return };
    let Ok(ids) = native_trainer::data::encode(&tok, "Once upon a time, Zana 😀 ran.<|endoftext|>") else { return };
    let _ = native_trainer::data::decode(&tok, &ids);
    let _ = native_trainer::data::decode(&tok, &[0, 1, 255, 256, 300, u32::MAX]);
}

fn tokenizer_seeds() -> Vec<Vec<u8>> {
    let docs: Vec<String> = corpus_text().split("<|endoftext|>").map(String::from).collect();
    let tok = native_trainer::data::train_tokenizer_up_to(&docs, 300).expect("a tokenizer trains");
    vec![tok.to_string(false).expect("serialises").into_bytes()]
}

// ---------------------------------------------------------------------------------------------
// manifest.json: native-trainer's `Manifest` and the worker's `RetrievalSpec::from_manifest`.

const MANIFEST_DICT: &[&[u8]] = &[
    b"\"retrieval\"",
    b"\"dir\"",
    b"\"files\"",
    b"\"order\"",
    b"\"document-first\"",
    b"\"../index\"",
    b"\"/\"",
    b"null",
];

fn manifest(bytes: &[u8]) {
    let _ = native_trainer::export::parse_manifest(Path::new("manifest.json"), bytes);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return };
    if let Ok(Some(spec)) = RetrievalSpec::from_manifest(&value) {
        let _ = spec.holds(&spec.path("vectors.bin"));
    }
}

fn manifest_seeds() -> Vec<Vec<u8>> {
    let s = shared();
    let cfg = &s.configs[1];
    let file = |name: &str| FileEntry { name: name.into(), bytes: 1234, sha256: "ab".repeat(32) };
    let mut m = Manifest {
        name: "itera-lite-tiny".into(),
        architecture: "itera-lite".into(),
        model_type: "mamba".into(),
        dtype: "float32".into(),
        params: cfg.param_count(),
        files: vec![file("model.safetensors"), file("config.json"), file("tokenizer.json"), file("index/index.json")],
        training: Training {
            corpus: "world (entities 100, seed 0)".into(),
            preset: "tiny".into(),
            seed: 0,
            steps: 10,
            tokens: 40960,
            batch_size: 16,
            seq_len: 256,
            wall_seconds: 1.5,
            tokens_per_second: 27306.7,
            threads: 2,
            accuracy_curve: vec![],
            task_loss: None,
            init_from: None,
        },
        eval: None,
        code_version: "0.1.0 (fuzz seed)".into(),
        retrieval: Some(ManifestRetrieval {
            dir: "index".into(),
            documents: s.index_docs,
            k: 1,
            order: ReadingOrder::QuestionFirst,
        }),
        weight_bytes: Default::default(),
        quantized_from: None,
    };
    let with = serde_json::to_vec_pretty(&m).expect("serialises");
    m.retrieval = None;
    m.files.truncate(3);
    vec![with, serde_json::to_vec(&m).expect("serialises")]
}

// ---------------------------------------------------------------------------------------------
// The retrieval index: `Index::from_parts` through the worker's `Retriever::load`. The first
// byte picks the file the rest replaces: 0 `index.json`; 1.. one of the other files, with its
// length and sha256 in `index.json` made to match, so the bytes reach the decoders instead of
// stopping at the checksum.

const INDEX_DICT: &[&[u8]] = &[
    b"\"docs\"",
    b"\"dims\"",
    b"\"idf_buckets\"",
    b"\"bytes\"",
    b"\"vectors.bin\"",
    b"\"idf.bin\"",
    b"\"\\n\"",
    b"\n",
    b"\"\"",
];

fn index(bytes: &[u8]) {
    let Some((&which, body)) = bytes.split_first() else { return };
    let s = shared();
    let mut json = s.index_json.clone();
    let mut files = s.index_files.clone();
    match (which as usize) % (files.len() + 1) {
        0 => json = body.to_vec(),
        i => {
            let (name, data) = &mut files[i - 1];
            *data = body.to_vec();
            let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&json) else { return };
            v["files"][*name] = serde_json::json!({
                "bytes": body.len(),
                "sha256": native_trainer::files::sha256_hex(body),
            });
            json = serde_json::to_vec(&v).unwrap_or_default();
        }
    }
    let spec = RetrievalSpec { dir: "index".into(), documents: s.index_docs, k: 2, order: ReadingOrder::QuestionFirst };
    let file = |name: &str| {
        if name == spec.path(itera_retrieval::store::INDEX_JSON) {
            return Some(json.clone());
        }
        files.iter().find(|(n, _)| spec.path(n) == name).map(|(_, d)| d.clone())
    };
    if let Ok(r) = Retriever::load(spec.clone(), file) {
        let docs = r.retrieve("Where was Zana Kolvworth born?");
        let _ = r.prompt("Where was Zana Kolvworth born?", &docs);
    }
}

fn index_seeds() -> Vec<Vec<u8>> {
    let s = shared();
    let mut seeds = vec![[&[0u8][..], &s.index_json].concat()];
    for (i, (_, data)) in s.index_files.iter().enumerate() {
        seeds.push([&[i as u8 + 1][..], data].concat());
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// Corpus text: native-trainer's reader (UTF-8 check, `<|endoftext|>` split or paragraph
// chunks), then the train / valid split.

const CORPUS_DICT: &[&[u8]] = &[b"<|endoftext|>", b"\n\n", b"\r\n", b"<|endoftext|", "é".as_bytes(), b" \t \n"];

fn corpus(bytes: &[u8]) {
    let Ok(docs) = native_trainer::data::documents_from_bytes(Path::new("corpus.txt"), bytes.to_vec()) else {
        return;
    };
    for fraction in [0.1, 0.5] {
        let _ = native_trainer::data::Corpus::from_documents("corpus", docs.clone(), fraction);
    }
}

fn corpus_text() -> String {
    let stories = [
        "Once upon a time there was a little boy named Ben. He liked to play in the park.",
        "Lily found a shiny stone.\nShe showed it to her mom, who smiled.",
        "  The cat sat on the mat. \u{1F600} The end.",
    ];
    stories.join("\n<|endoftext|>\n")
}

fn corpus_seeds() -> Vec<Vec<u8>> {
    // Paragraphs past CHUNK (4096 bytes) and one line past MAX_CHUNK (8192), as a book has them.
    let paragraph = "It was the best of times, it was the worst of times, it was the age of wisdom.\n";
    let book = format!("{}\n\n{}\n\n{}", paragraph.repeat(40), paragraph.repeat(30), "ü".repeat(4200));
    vec![corpus_text().into_bytes(), book.into_bytes(), b"a".to_vec()]
}

// ---------------------------------------------------------------------------------------------
// checkpoint.safetensors: native-trainer's loader, then the weights built into the model its
// metadata names (what `export` and `load_model_dir` do next).

const CHECKPOINT_DICT: &[&[u8]] = &[
    b"\"itera_checkpoint\"",
    b"\\\"step\\\"",
    b"\\\"config\\\"",
    b"\\\"model_type\\\":\\\"llama\\\"",
    b"\\\"num_attention_heads\\\":0",
    b"\\\"max_position_embeddings\\\":4294967296",
    b"\"adamw.m.",
];

fn checkpoint(bytes: &[u8]) {
    let Ok(ck) = Checkpoint::from_bytes(Path::new(CHECKPOINT_FILE), bytes) else { return };
    let _ = itera_model::weights::build_checked(ck.weights(), DType::F32, &Device::Cpu, |vb| {
        Model::new(&ck.meta.config, vb)
    });
}

fn checkpoint_seeds() -> Vec<Vec<u8>> {
    use clap::Parser;
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        train: native_trainer::train::TrainArgs,
    }
    let args = Args::try_parse_from(["train", "--model", "baseline", "--preset", "tiny"]).expect("train args").train;
    let dir = std::env::temp_dir().join(format!("itera-fuzz-checkpoint-{}", std::process::id()));
    let mut seeds = Vec::new();
    for cfg in &shared().configs {
        let (varmap, _) = Model::init(cfg, 0, &Device::Cpu).expect("init");
        let mut tensors = varmap_tensors(&varmap).expect("tensors");
        // One AdamW moment per tensor kind, as a real checkpoint holds them.
        let moments: Vec<_> =
            tensors.iter().take(2).map(|(n, t)| (format!("adamw.m.{n}"), t.zeros_like().expect("zeros"))).collect();
        tensors.extend(moments);
        let meta = CheckpointMeta {
            step: 3,
            rng_state: 42,
            tokens_seen: 12288,
            elapsed_s: 0.5,
            args: args.clone(),
            config: cfg.clone(),
            threads: 2,
            code_version: "0.1.0 (fuzz seed)".into(),
            last_valid_loss: Some(2.5),
            final_eval: None,
        };
        Checkpoint::save(&dir, &meta, &tensors).expect("checkpoint saves");
        seeds.push(std::fs::read(dir.join(CHECKPOINT_FILE)).expect("checkpoint reads back"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    seeds
}

// ---------------------------------------------------------------------------------------------
// The worker's incoming messages (JSON strings from the page).

const PROTOCOL_DICT: &[&[u8]] = &[
    b"\"type\"",
    b"\"load\"",
    b"\"generate\"",
    b"\"bench\"",
    b"\"abort\"",
    b"\"answer\"",
    b"\"contexts\"",
    b"null",
    b"\"set_backend\"",
    b"\"webgpu\"",
];

fn protocol(bytes: &[u8]) {
    // The worker receives a JS string: UTF-8 by construction.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = serde_json::from_str::<ToWorker>(text);
    }
    let _ = serde_json::from_slice::<ToWorker>(bytes);
}

fn protocol_seeds() -> Vec<Vec<u8>> {
    let msgs = [
        ToWorker::Load { base: "models/itera-lite/".into(), backend: BackendChoice::Auto },
        ToWorker::SetBackend { backend: BackendChoice::Webgpu },
        ToWorker::Generate {
            prompt: "Once upon a time".into(),
            max_tokens: 64,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 7,
            stop_at_newline: false,
            retrieval: true,
        },
        ToWorker::Answer { question: "Where was Zana Kolvworth born?".into(), retrieval: true },
        ToWorker::Abort,
        ToWorker::Bench { contexts: vec![64, 256, 1024, 4096], steps: 16 },
    ];
    msgs.iter().map(|m| serde_json::to_vec(m).expect("serialises")).collect()
}
