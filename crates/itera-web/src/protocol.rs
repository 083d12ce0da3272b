//! Messages between the page and a model worker, as JSON strings through `postMessage`.
//! One worker per model; the page talks to both with the same messages.

pub use crate::engine::BackendInfo;
pub use crate::retrieval::Retrieved;
use itera_data::ReadingOrder;
use serde::{Deserialize, Serialize};

/// Page → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Fetch the model folder at `base` (manifest first), check every file's sha256, load it;
    /// on the GPU too unless `backend` is `cpu` (`auto`, the default, uses it when there is one).
    Load {
        base: String,
        #[serde(default)]
        backend: BackendChoice,
    },
    /// Run on the GPU (`webgpu`; the model must have been put there at load) or on the `cpu`
    /// from the next job on; a `Backend` message answers.
    SetBackend { backend: BackendChoice },
    /// Continue `prompt`; one `Token` message per generated token.
    Generate {
        prompt: String,
        max_tokens: usize,
        temperature: f64,
        top_k: usize,
        top_p: f64,
        seed: u64,
        /// Stop at the first newline (World QA answers are one line).
        #[serde(default)]
        stop_at_newline: bool,
        /// Treat `prompt` as a question: search the model's index and generate after the reading
        /// prompt (documents + question); a `Retrieved` message comes first. An error if the
        /// model has no usable index (`Loaded`'s `retrieval` says so beforehand).
        #[serde(default)]
        retrieval: bool,
    },
    /// Answer `question` greedily (the trainer's evaluation: at most 24 tokens, one line),
    /// with the retrieved documents in the context or without; one `Answer` message.
    Answer { question: String, retrieval: bool },
    /// Stop the generation or benchmark in progress after the current token.
    Abort,
    /// Decode latency at each context length: prefill to it, then time `steps` single tokens.
    Bench { contexts: Vec<usize>, steps: usize },
}

/// Which backend the page asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// The GPU when the browser has a WebGPU adapter, else the CPU.
    #[default]
    Auto,
    Cpu,
    Webgpu,
}

/// Worker status, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Loading,
    Ready,
    Generating,
    Benchmarking,
    Done,
    Aborted,
    Error,
}

/// Worker → page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker's wasm is up; messages sent before this one are lost.
    Ready {
        backend: String,
        energy_formula: String,
    },
    Status {
        status: Status,
        detail: String,
    },
    /// Download progress of one file (`total` 0 when unknown).
    Progress {
        file: String,
        loaded: u64,
        total: u64,
    },
    /// Where the model runs now; sent at load, after `SetBackend`, and when the GPU fails and
    /// the CPU takes over. `notice` says why the GPU is not in use where it was asked for (no
    /// adapter, a model too large for it, a lost device), else it is absent.
    Backend {
        backend: BackendInfo,
        #[serde(skip_serializing_if = "Option::is_none")]
        notice: Option<String>,
    },
    /// The model is loaded.
    Loaded {
        manifest: serde_json::Value,
        bytes: u64,      // bytes of the model's files (its index's included)
        downloaded: u64, // bytes fetched from the network this time (0: all from the cache)
        load_ms: f64,    // fetch + check + build
        retrieval: RetrievalStatus,
        /// Why the files could not be kept in the Cache API (they are fetched on every visit);
        /// absent when they were.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache: Option<String>,
    },
    /// The documents retrieved for a `Generate` with `retrieval`, before its prefill.
    Retrieved {
        documents: Vec<Retrieved>,
        query_ms: f64,  // the index search alone
        prompt: String, // what the model reads: documents + question
    },
    /// The answer to an `Answer` request.
    Answer {
        question: String,
        retrieval: bool,
        documents: Vec<Retrieved>, // empty without retrieval
        query_ms: Option<f64>,     // the index search alone; None without retrieval
        prompt_tokens: usize,      // including the leading <|endoftext|>
        tokens: usize,             // generated
        ms: f64,                   // prefill + generation
        answer: String,            // the completion up to its first newline, trimmed
        reason: String,            // why generation ended (see `GreedyAnswer::end`), or `aborted`
    },
    /// The prompt was read.
    Prefill {
        tokens: usize,
        ms: f64,
    },
    /// One generated token.
    Token {
        id: u32,
        text: String,       // newly completed text (may be empty mid-character)
        ms: f64,            // time to produce this token
        context: usize,     // tokens in the sequence after it
        state_bytes: usize, // decoding state held now
        energy_mj: f64,     // estimated energy of this token (see `engine::energy_mj_per_token`)
    },
    Done {
        tokens: usize,
        ms: f64,
        reason: String,
    },
    /// One point of the latency-vs-context benchmark.
    BenchPoint {
        context: usize,
        median_ms: f64,
        p95_ms: f64,
        /// The timed steps' wall time over their number, read once around them all: exact where
        /// one step is shorter than the browser's timer resolution (0.1 ms), unlike the median.
        #[serde(default)]
        mean_ms: f64,
        state_bytes: usize,
        backend: String, // `cpu` or `webgpu`: the page draws one curve per model and backend
        /// The decode step's FLOPs (the config's count at this context) over its mean time.
        #[serde(default)]
        gflops: f64,
        /// The prompt read before the timed steps (`<|endoftext|>` and the filler, through the
        /// backend's batched forward, chunk by chunk): its tokens and wall time.
        #[serde(default)]
        prefill_tokens: usize,
        #[serde(default)]
        prefill_ms: f64,
    },
    /// This worker's GEMV rate (`peak::gemv_gflops`, one thread), measured before a benchmark.
    Peak {
        gflops: f64,
        rows: usize,
        cols: usize,
    },
    Error {
        message: String,
    },
}

impl FromWorker {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"type":"error","message":"serialise: {e}"}}"#))
    }
}

/// Whether a loaded model can answer with retrieval, as `Loaded` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RetrievalStatus {
    /// The index is loaded and checked.
    Ready {
        documents: usize,
        k: usize, // documents placed in the context per question
        order: ReadingOrder,
        bytes: u64, // of the index's files
        ms: f64,    // to decode and check it (its download is part of `load_ms`)
    },
    /// The manifest has no `retrieval`: the model was exported without an index.
    Absent,
    /// The manifest names an index that could not be used (a file missing, damaged, or not the
    /// one described); the model runs without retrieval.
    Failed { message: String },
}
