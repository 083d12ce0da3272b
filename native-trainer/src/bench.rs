//! The benchmark harness: measures exported models on this machine and writes
//! `results.json`, `efficiency_report.md` and plots (see `report.rs`).
//!
//! Speed and memory are measured in child processes (`native-trainer bench-child`), one per
//! model and thread count: rayon reads its thread count once per process, and a child's peak RSS
//! is its own. Everything else (sizes, FLOPs, state, quality) is measured in this process.

use crate::checkpoint::FinalEval;
use crate::data::{self, Corpus};
use crate::eval::{stream_loss, windows, QaResult};
use crate::export::{load_model_dir, Manifest};
use crate::reading;
use crate::world::{World, WorldConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use itera_model::decode::Decoder;
use itera_model::flops::Counting;
use itera_model::init::Rng;
use itera_model::optim::{clip_grad_norm, AdamW, AdamWConfig};
use itera_model::weights::write_safetensors;
use itera_model::weights::WeightFormat;
use itera_model::{Config, Model, ParamCount};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `bench`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Exported model folders to measure (each holds manifest.json)
    #[arg(long, num_args = 1.., required_unless_present = "render_only")]
    pub models: Vec<PathBuf>,
    /// Measure nothing: rewrite the report and plots from OUT/results.json
    #[arg(long)]
    pub render_only: bool,
    /// Measure only --models and add them to OUT/results.json (replacing a model measured from the same folder), then
    /// rewrite the report; the machine and the settings must be those of the results already there
    #[arg(long, conflicts_with = "render_only")]
    pub add: bool,
    /// Report folder: results.json, efficiency_report.md, plots
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
    /// Contexts at which decode latency, FLOPs and state are measured
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024,4096")]
    pub contexts: Vec<usize>,
    /// Timed decode steps per context (after the warm-up steps); many, so that a burst of noise
    /// from a shared machine moves the median little
    #[arg(long, default_value_t = 128)]
    pub steps: usize,
    /// Untimed decode steps before the timed ones
    #[arg(long, default_value_t = 16)]
    pub warmup: usize,
    /// Thread counts to measure speed at
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Held-out text to measure loss / perplexity / bits per byte on: NAME=PATH (repeatable)
    #[arg(long = "eval", value_parser = parse_named_path)]
    pub evals: Vec<(String, PathBuf)>,
    /// Tokens per evaluation window
    #[arg(long, default_value_t = 256)]
    pub eval_seq_len: usize,
    /// At most this many windows per held-out text (0: all)
    #[arg(long, default_value_t = 200)]
    pub eval_windows: usize,
    /// Batch × sequence length of the measured training step (peak RSS, tokens/s)
    #[arg(long, value_delimiter = 'x', default_value = "16x256")]
    pub train_shape: Vec<usize>,
    /// World QA measured here for every model trained on the generated world, N questions of each
    /// kind (held-out without retrieval; with it, and about people never trained on, when the
    /// export carries an index), as `eval --retrieval` asks them; 0 reports the figures its
    /// training run wrote into manifest.json (a run may have skipped them)
    #[arg(long, default_value_t = 0)]
    pub world_qa: usize,
    /// With --world-qa: the share of the world's people the models never trained on (`train
    /// --world-unseen`, which the manifest does not record; the default job's 0.1)
    #[arg(long, default_value_t = 0.1)]
    pub world_unseen: f64,
    /// With --world-qa, for models that read an index: also ask the questions with retrieval of
    /// the weights rounded to these formats (as `quantize` writes them), for the report's size
    /// claim and quality-against-bytes points; empty (`--qa-formats ''`) skips them
    #[arg(long, value_delimiter = ',', default_value = "q8_0,q4_0")]
    pub qa_formats: Vec<WeightFormatArg>,
    /// A run of the WebGPU speed benchmark on a GPU (the JSON of `crates/itera-webgpu`'s `speed
    /// --json`, measured on another machine: a GPU machine has no browser and this one no GPU):
    /// its table joins the report, the GPU named; with --render-only or --add too
    #[arg(long, value_name = "FILE")]
    pub webgpu: Option<PathBuf>,
}

/// What the WebGPU speed benchmark measured on a GPU (`speed --json`): the same models' forward
/// pass through `crates/itera-webgpu` (wgpu, natively on the GPU's Vulkan driver) beside the CPU
/// path on one thread of that machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebGpuRun {
    pub adapter: String,
    pub software_adapter: bool,
    #[serde(default)]
    pub cpu_prefill_threads: usize,
    pub decode_steps: usize,
    #[serde(default)]
    pub warmup_ms: u64,
    /// Idle draw of the GPU measured through NVML at the start; None without NVML
    #[serde(default)]
    pub gpu_idle_power_w: Option<f64>,
    /// Whether every preset and model asked for was measured: `speed --json` writes its file
    /// after each model, false until the last (a run stopped by a GPU machine's command limit
    /// keeps what it finished); files from before that field were written whole at the end
    #[serde(default = "whole")]
    pub complete: bool,
    /// The presets the run was asked for (absent in older files)
    #[serde(default)]
    pub presets: Vec<String>,
    pub rows: Vec<WebGpuRow>,
}

fn whole() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebGpuRow {
    pub model: String,
    pub preset: String,
    pub context: usize,
    pub gpu_prefill_tok_s: f64,
    pub cpu_prefill_tok_s: f64,
    pub gpu_decode_ms_p50: f64,
    pub gpu_decode_ms_p95: f64,
    pub cpu_decode_ms_p50: f64,
    pub cpu_decode_ms_p95: f64,
    /// GPU energy per decoded token through NVML (joules), gross and above the idle draw
    #[serde(default)]
    pub energy_j_per_token: Option<f64>,
    #[serde(default)]
    pub energy_above_idle_j_per_token: Option<f64>,
}

impl WebGpuRun {
    /// Reads a `speed --json` file; a clear error naming the file when it is not one.
    pub fn read(path: &Path) -> Result<WebGpuRun> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let run: WebGpuRun = serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not the JSON of the WebGPU speed benchmark (speed --json)", path.display())
        })?;
        if run.rows.is_empty() {
            bail!("{}: the WebGPU speed benchmark's JSON has no rows", path.display());
        }
        Ok(run)
    }
}

/// A `--qa-formats` entry (an empty list is allowed: `--qa-formats ''`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightFormatArg(pub Option<WeightFormat>);

impl std::str::FromStr for WeightFormatArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Ok(WeightFormatArg(None)),
            f => f.parse().map(|f| WeightFormatArg(Some(f))),
        }
    }
}

fn parse_named_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=PATH, got `{s}`")),
    }
}

// ---------------------------------------------------------------------------------------------
// What is measured

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub models: Vec<ModelResults>,
    /// Models measured later by `bench --add`, on the same kind of machine with the same settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additions: Vec<Addition>,
    /// The WebGPU speed benchmark run on a GPU machine (`--webgpu`), reported beside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webgpu: Option<WebGpuRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Addition {
    pub models: Vec<String>,
    pub code_version: String,
    pub date_unix: u64,
}

impl Results {
    /// `new`'s models added to these results (a model measured again from the same folder is
    /// replaced; one of another folder joins, names made distinct by their steps where two
    /// share one), refused when the machine or the settings differ: their figures would not
    /// compare.
    pub fn merge(mut self, new: Results) -> Result<Results> {
        let (a, b) = (&self.machine, &new.machine);
        if (a.cpu.as_str(), a.cores, a.os.as_str(), &a.energy_counter)
            != (b.cpu.as_str(), b.cores, b.os.as_str(), &b.energy_counter)
        {
            bail!(
                "bench --add: these results were measured on {} ({} cores, energy {:?}), this machine is {} ({} cores, \
                 energy {:?}); measure every model again instead",
                a.cpu, a.cores, a.energy_counter, b.cpu, b.cores, b.energy_counter
            );
        }
        if self.settings.batch1_decoder != new.settings.batch1_decoder {
            bail!(
                "bench --add: these results timed decoding through candle's forward_with_state, before the batch-1 \
                 decoder this build times; measure every model again instead"
            );
        }
        let (sa, sb) = (serde_json::to_value(&self.settings)?, serde_json::to_value(&new.settings)?);
        if sa != sb {
            bail!("bench --add: the settings differ from those of the results (pass the same flags): {sa} vs {sb}");
        }
        let folders: Vec<String> = new.models.iter().map(|m| m.folder.clone()).collect();
        for m in new.models {
            match self.models.iter_mut().find(|x| x.folder == m.folder) {
                Some(x) => *x = m,
                None => self.models.push(m),
            }
        }
        distinct_names(&mut self.models);
        let names = folders
            .iter()
            .filter_map(|f| self.models.iter().find(|m| &m.folder == f).map(|m| m.name.clone()))
            .collect();
        self.additions.push(Addition { models: names, code_version: b.code_version.clone(), date_unix: b.date_unix });
        Ok(self)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub os: String,
    pub energy_counter: Option<String>, // e.g. "RAPL package 0"; None: energy is estimated
    pub code_version: String,
    pub date_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub contexts: Vec<usize>,
    pub steps: usize,
    pub warmup: usize,
    pub threads: Vec<usize>,
    pub precision: String,
    pub eval_seq_len: usize,
    pub train_shape: (usize, usize),
    /// `--world-qa` and `--world-unseen` (0 and 0 in results measured before them).
    #[serde(default)]
    pub world_qa: usize,
    #[serde(default)]
    pub world_unseen: f64,
    /// Decode steps timed through the batch-1 decoder the page generates with
    /// (`itera_model::decode`); false in results measured before it existed, whose decode steps
    /// went through candle's `forward_with_state`. The report says which.
    #[serde(default)]
    pub batch1_decoder: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelResults {
    pub name: String,
    pub architecture: String,
    pub folder: String,
    pub params: ParamCount,
    pub bytes_f32: u64, // model.safetensors as exported (f32)
    pub bytes_f16: u64, // the same weights serialised as f16
    /// The same weights as `native-trainer quantize` writes them: model.gguf in q8_0 and q4_0
    /// (0 in results measured before these formats).
    #[serde(default)]
    pub bytes_q8_0: u64,
    #[serde(default)]
    pub bytes_q4_0: u64,
    pub bytes_all_files: u64, // every file of the export (weights, config, tokenizer, index)
    /// The retrieval index the model reads (`index/` of the export): documents, vectors, IDF.
    #[serde(default)]
    pub bytes_index: u64,
    pub training: Option<crate::export::Training>,
    /// The manifest's final evaluation; its `world_qa` and `retrieval` replaced by this run's
    /// measurement when `world_qa_questions` > 0.
    pub train_eval: Option<FinalEval>,
    /// Questions of each kind of the world QA measured by this run (`--world-qa`); 0: the
    /// manifest's figures.
    #[serde(default)]
    pub world_qa_questions: usize,
    pub per_context: Vec<ContextPoint>,
    pub speed: Vec<Speed>,
    pub quality: Vec<Quality>,
    /// World QA with retrieval of the weights rounded to smaller formats (`--qa-formats`); empty
    /// for models without an index and in results measured before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<FormatQa>,
}

/// World QA with retrieval of one model's weights in one format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormatQa {
    pub format: String,
    /// `model.gguf` in this format, as `quantize` writes it less its few metadata strings (the
    /// same count as `bytes_q8_0` / `bytes_q4_0`)
    pub weight_bytes: u64,
    pub heldout: QaResult,
    /// Questions about people never trained on (the index alone knows them)
    pub unseen: Option<QaResult>,
}

/// Figures at one context length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextPoint {
    pub context: usize,
    pub flops_analytic: f64, // config.rs formula, per decoded token
    pub flops_counted: f64,  // instrumented ops of one real decode step
    pub state_bytes_analytic: usize,
    pub state_bytes_measured: usize, // bytes the decoding state really holds there
    pub energy_mj_estimate: f64,     // itera_model::energy (FLOPs and bytes, Horowitz 2014)
}

/// Speed and memory at one thread count (from a child process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Speed {
    pub threads: usize,
    pub prefill_tokens: usize,
    pub prefill_tok_per_s: f64,
    pub decode: Vec<DecodePoint>,
    pub inference_peak_rss_bytes: u64,
    pub train_tok_per_s: f64,
    pub train_peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodePoint {
    pub context: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub samples: usize,
    /// Measured energy per token (mJ) when the machine has a counter; see `Machine::energy_counter`.
    pub energy_mj_measured: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quality {
    pub corpus: String,
    pub path: String,
    pub tokens: usize,
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

// ---------------------------------------------------------------------------------------------
// The parent: static figures, quality, and one child per thread count

pub fn run(args: &BenchArgs) -> Result<Results> {
    if args.contexts.is_empty() || args.threads.is_empty() || args.steps < 2 {
        bail!("bench needs at least one context, one thread count and 2 timed steps");
    }
    if args.train_shape.len() != 2 || args.train_shape.contains(&0) {
        bail!("--train-shape must look like 16x256, got {:?}", args.train_shape);
    }
    if args.world_qa > 0 && !(0.0..=0.5).contains(&args.world_unseen) {
        bail!("--world-unseen must be in 0..=0.5 (train's bound), got {}", args.world_unseen);
    }
    let mut models = Vec::new();
    for dir in &args.models {
        eprintln!("measuring {}", dir.display());
        models.push(measure_model(dir, args).with_context(|| format!("benchmarking {}", dir.display()))?);
    }
    distinct_names(&mut models);
    Ok(Results {
        machine: machine(),
        settings: Settings {
            contexts: args.contexts.clone(),
            steps: args.steps,
            warmup: args.warmup,
            threads: args.threads.clone(),
            precision: "f32".into(),
            eval_seq_len: args.eval_seq_len,
            train_shape: (args.train_shape[0], args.train_shape[1]),
            world_qa: args.world_qa,
            world_unseen: if args.world_qa > 0 { args.world_unseen } else { 0.0 },
            batch1_decoder: true,
        },
        models,
        additions: Vec::new(),
        webgpu: None,
    })
}

fn measure_model(dir: &Path, args: &BenchArgs) -> Result<ModelResults> {
    let loaded = load_model_dir(dir)?;
    if let Some(m) = loaded.manifest.as_ref().filter(|m| m.dtype != "float32") {
        anyhow::bail!(
            "{} holds {} weights (a `quantize` copy): bench measures the f32 export and reports every format's size",
            dir.display(),
            m.dtype
        );
    }
    let manifest: Option<Manifest> = loaded.manifest.clone();
    let cfg = loaded.config.clone();
    // The f32 weights (one model.safetensors, or its shards) and their size in each format.
    let tensors = crate::export::export_f32_tensors(dir)?;
    let bytes_f32 = write_safetensors(&tensors)?.len() as u64;
    let half: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F16)?))).collect::<Result<_>>()?;
    let bytes_f16 = write_safetensors(&half)?.len() as u64;
    let gguf = |f| -> Result<u64> { Ok(itera_model::weights::write_gguf(&tensors, f, &[])?.len() as u64) };
    let (bytes_q8_0, bytes_q4_0) = (gguf(WeightFormat::Q8_0)?, gguf(WeightFormat::Q4_0)?);
    let bytes_all_files = manifest.as_ref().map_or(bytes_f32, |m| m.files.iter().map(|f| f.bytes).sum());
    let index_prefix = format!("{}/", crate::export::INDEX_DIR);
    let bytes_index = manifest
        .as_ref()
        .map_or(0, |m| m.files.iter().filter(|f| f.name.starts_with(&index_prefix)).map(|f| f.bytes).sum());

    let mut per_context = Vec::new();
    for &c in args.contexts.iter().filter(|&&c| c <= crate::eval::max_context(&cfg)) {
        let (flops_counted, state_bytes_measured) = counted_decode_step(&loaded.model, &cfg, c)?;
        per_context.push(ContextPoint {
            context: c,
            flops_analytic: cfg.decode_flops_per_token(c),
            flops_counted,
            state_bytes_analytic: cfg.state_bytes(c),
            state_bytes_measured,
            energy_mj_estimate: itera_model::energy::energy_mj_per_token(&cfg, c),
        });
    }

    let mut quality = Vec::new();
    // A model of the paper's synthetic tasks has a closed 18-token vocabulary: no text to score.
    let synthetic = manifest.as_ref().is_some_and(|m| {
        matches!(m.training.corpus.split(' ').next().map(str::parse), Some(Ok(crate::source::CorpusSpec::Synthetic(_))))
    });
    for (name, path) in args.evals.iter().filter(|_| !synthetic) {
        quality.push(held_out_quality(&loaded.model, &loaded.tokenizer, name, path, args)?);
    }

    let mut train_eval = manifest.as_ref().and_then(|m| m.eval.clone());
    if let (true, None, Some(m)) = (args.world_qa > 0, &train_eval, manifest.as_ref()) {
        // A copy made by `quantize` from f16 weights carries no figures of its own.
        train_eval = world_final_eval(&loaded, m, args)?;
    }
    let mut world_qa_questions = 0;
    let mut formats = Vec::new();
    if let (true, Some(m), Some(e)) = (args.world_qa > 0, manifest.as_ref(), train_eval.as_mut()) {
        if let Some((world, reader)) = world_and_reader(dir, m, args)? {
            let (model, tok, eot) = (&loaded.model, &loaded.tokenizer, loaded.eot);
            let (qa, retrieval) = reading::world_qa(model, tok, eot, &world, reader.as_ref(), args.world_qa)?;
            (e.world_qa, e.retrieval, world_qa_questions) = (Some(qa), retrieval, args.world_qa);
            // The formats' questions, asked with retrieval only (their point is the reading).
            for f in args.qa_formats.iter().filter_map(|f| f.0) {
                let Some(reader) = reader.as_ref() else { break };
                eprintln!("  world QA with retrieval, weights in {f}");
                let bytes = itera_model::weights::write_gguf(&tensors, f, &[])?;
                let rounded = Model::from_weights(&cfg, f, &bytes, &Device::Cpu)?;
                let r = reading::evaluate(&rounded, tok, eot, reader, &world, args.world_qa)?;
                formats.push(FormatQa {
                    format: f.name().to_string(),
                    weight_bytes: bytes.len() as u64,
                    heldout: r.heldout,
                    unseen: r.unseen,
                });
            }
        }
    }

    let mut speed = Vec::new();
    for &t in &args.threads {
        eprintln!("  speed at {t} thread(s)");
        speed.push(child_speed(dir, t, args)?);
    }
    Ok(ModelResults {
        // "baseline-demo [world]": the same preset trained on several corpora stays distinguishable.
        name: manifest.as_ref().map_or_else(
            || dir.display().to_string(),
            |m| match m.training.task_loss {
                Some(loss) => format!("{} [{}, {loss} loss]", m.name, short_corpus(&m.training.corpus)),
                None => format!("{} [{}]", m.name, short_corpus(&m.training.corpus)),
            },
        ),
        architecture: cfg.kind().to_string(),
        folder: dir.display().to_string(),
        params: cfg.param_count(),
        bytes_f32,
        bytes_f16,
        bytes_q8_0,
        bytes_q4_0,
        bytes_all_files,
        bytes_index,
        training: manifest.as_ref().map(|m| m.training.clone()),
        train_eval,
        world_qa_questions,
        per_context,
        speed,
        quality,
        formats,
    })
}

/// The world a model was trained on (with `--world-unseen` of its people never trained on) and,
/// when its export carries an index, the reader of that index; `None` for other corpora.
fn world_and_reader(dir: &Path, m: &Manifest, args: &BenchArgs) -> Result<Option<(World, Option<reading::Reader>)>> {
    let Some((entities, seed)) = world_of(&m.training.corpus) else { return Ok(None) };
    eprintln!("  world QA, {} questions of each kind", args.world_qa);
    let cfg = WorldConfig { entities, seed, unseen_fraction: args.world_unseen, ..Default::default() };
    let world = World::generate(&cfg).context("generating the world the model was trained on")?;
    let reader = match &m.retrieval {
        Some(r) => {
            Some(reading::Reader::load(&dir.join(&r.dir), reading::ReadingConfig { k: r.k, order: r.order }, &world)?)
        }
        None => None,
    };
    Ok(Some((world, reader)))
}

/// A world model's final figures (validation loss, bits per byte, the unigram loss) measured
/// here as its training run measures them, for an export whose manifest carries none: a copy
/// `quantize` widened from f16 weights (the seed-preset baseline comes back from the GPU
/// machine so). The world QA is then asked as for every model.
fn world_final_eval(loaded: &crate::export::LoadedModel, m: &Manifest, args: &BenchArgs) -> Result<Option<FinalEval>> {
    let Some((entities, seed)) = world_of(&m.training.corpus) else { return Ok(None) };
    eprintln!("  no figures in its manifest: measuring its validation loss");
    let source =
        crate::source::Source::load(&crate::source::CorpusSpec::World, entities, args.world_unseen, seed, 0.05)?;
    let train = data::encode_documents(&loaded.tokenizer, &source.corpus.train)?;
    let valid = data::encode_documents(&loaded.tokenizer, &source.corpus.valid)?;
    let targs = crate::train::TrainArgs {
        seq_len: Some(m.training.seq_len),
        qa_questions: 0,
        ..crate::train::TrainArgs::defaults()
    };
    let e =
        crate::train::final_eval(&loaded.model, &loaded.tokenizer, loaded.eot, &source, &train, &valid, None, &targs)?;
    Ok(Some(e))
}

/// "world (entities 10000, seed 0)", a world model's corpus in its manifest -> (10000, 0).
fn world_of(corpus: &str) -> Option<(usize, u64)> {
    let (entities, seed) = corpus.strip_prefix("world (entities ")?.strip_suffix(')')?.split_once(", seed ")?;
    Some((entities.parse().ok()?, seed.parse().ok()?))
}

/// Models that would share a name (one preset trained on one corpus for different steps: a page
/// pair and a longer GPU-trained one) get their steps in it: "baseline-demo [world, 2400 steps]".
/// Idempotent: a name that has its steps already is taken without them first, so results
/// merged by `bench --add` are named as if measured together.
fn distinct_names(models: &mut [ModelResults]) {
    let bases: Vec<String> = models.iter().map(base_name).collect();
    for (m, b) in models.iter_mut().zip(&bases) {
        m.name = match (bases.iter().filter(|n| *n == b).count() > 1, &m.training) {
            (true, Some(t)) => format!("{}, {} steps]", b.trim_end_matches(']'), t.steps),
            _ => b.clone(),
        };
    }
}

/// A model's name without the steps [`distinct_names`] may have put in it.
fn base_name(m: &ModelResults) -> String {
    match &m.training {
        Some(t) => m.name.strip_suffix(&format!(", {} steps]", t.steps)).map_or(m.name.clone(), |b| format!("{b}]")),
        None => m.name.clone(),
    }
}

/// "world (entities 10000, seed 0)" -> "world"; "../data/tinystories.txt" -> "tinystories".
fn short_corpus(corpus: &str) -> String {
    let c = corpus.split(" (").next().unwrap_or_default();
    match Path::new(c).file_stem() {
        Some(stem) if c.contains(std::path::MAIN_SEPARATOR) => stem.to_string_lossy().into_owned(),
        _ => c.to_string(),
    }
}

/// FLOPs counted over one decode step at `context` (the token sees `context` positions), and
/// the state bytes held after it.
fn counted_decode_step(model: &Model, cfg: &Config, context: usize) -> Result<(f64, usize)> {
    let mut state = model.new_state(1)?;
    let filler = filler_tokens(context - 1, cfg.vocab_size());
    for chunk in filler.chunks(512) {
        model.forward_with_state(&Tensor::from_slice(chunk, (1, chunk.len()), &Device::Cpu)?, &mut state)?;
    }
    let counter = Counting::start();
    model.forward_with_state(&Tensor::from_slice(&[1u32], (1, 1), &Device::Cpu)?, &mut state)?;
    Ok((counter.total(), state.bytes()))
}

/// A fixed token pattern (content does not change the cost of a forward).
fn filler_tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 1 + (i.wrapping_mul(7919)) % (vocab as u32 - 1)).collect()
}

fn held_out_quality(
    model: &Model,
    tok: &tokenizers::Tokenizer,
    name: &str,
    path: &Path,
    args: &BenchArgs,
) -> Result<Quality> {
    // Every document of the file is evaluated (the split only decides the order).
    let corpus = Corpus::from_path(path, 0.05)?;
    let docs: Vec<String> = corpus.train.iter().chain(&corpus.valid).cloned().collect();
    let stream = data::encode_documents(tok, &docs)?;
    if stream.len() < args.eval_seq_len + 2 {
        bail!("{}: {} tokens, too short for --eval-seq-len {}", path.display(), stream.len(), args.eval_seq_len);
    }
    let max = (args.eval_windows > 0).then_some(args.eval_windows);
    let starts = windows(stream.len(), args.eval_seq_len, max);
    let loss = stream_loss(model, &stream, args.eval_seq_len, &starts, 16)?;
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let covered = loss.tokens as f64 / (stream.len() - 1) as f64;
    Ok(Quality {
        corpus: name.to_string(),
        path: path.display().to_string(),
        tokens: loss.tokens,
        loss: loss.mean(),
        perplexity: loss.perplexity(),
        bits_per_byte: loss.bits_per_byte((bytes as f64 * covered).round() as usize),
    })
}

fn child_speed(dir: &Path, threads: usize, args: &BenchArgs) -> Result<Speed> {
    let exe = std::env::current_exe().context("finding the native-trainer binary")?;
    let contexts: Vec<String> = args.contexts.iter().map(|c| c.to_string()).collect();
    let out = std::process::Command::new(exe)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .args(["bench-child", "--model"])
        .arg(dir)
        .args(["--contexts", &contexts.join(","), "--steps", &args.steps.to_string(), "--warmup"])
        .arg(args.warmup.to_string())
        .args(["--train-shape", &format!("{}x{}", args.train_shape[0], args.train_shape[1])])
        .output()
        .context("starting the benchmark child process")?;
    if !out.status.success() {
        bail!("benchmark child ({threads} threads) failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut speed: Speed = serde_json::from_slice(&out.stdout).context("reading the benchmark child's output")?;
    speed.threads = threads;
    Ok(speed)
}

// ---------------------------------------------------------------------------------------------
// The child: one model, one thread count

#[derive(clap::Args, Debug, Clone)]
pub struct ChildArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_delimiter = ',')]
    pub contexts: Vec<usize>,
    #[arg(long)]
    pub steps: usize,
    #[arg(long)]
    pub warmup: usize,
    #[arg(long, value_delimiter = 'x')]
    pub train_shape: Vec<usize>,
}

/// Measures prefill and decode speed, then one training step; prints `Speed` as JSON.
pub fn child(a: &ChildArgs) -> Result<()> {
    let loaded = load_model_dir(&a.model)?;
    let (model, cfg) = (&loaded.model, &loaded.config);
    let vocab = cfg.vocab_size();
    let limit = crate::eval::max_context(cfg);

    // Prefill: a warm-up, then 1024 tokens (or what the model can take) from an empty state.
    let prefill_tokens = 1024.min(limit - 1);
    let tokens = filler_tokens(prefill_tokens, vocab);
    let mut state = model.new_state(1)?;
    model.forward_with_state(
        &Tensor::from_slice(&tokens[..64.min(prefill_tokens)], (1, 64.min(prefill_tokens)), &Device::Cpu)?,
        &mut state,
    )?;
    let mut state = model.new_state(1)?;
    let t = Instant::now();
    model.forward_with_state(&Tensor::from_slice(&tokens, (1, prefill_tokens), &Device::Cpu)?, &mut state)?;
    let prefill_tok_per_s = prefill_tokens as f64 / t.elapsed().as_secs_f64();

    let energy = crate::bench::EnergyCounter::open();
    let mut decoder = Decoder::new(model)?;
    let mut decode = Vec::new();
    for &c in &a.contexts {
        if c > limit || c < 8 {
            continue;
        }
        // Timed steps end at context c. Short contexts cannot hold all of them at once, so the
        // samples come in rounds, each from a fresh state filled up to just before its window.
        let per_round = a.steps.min(c / 4).max(1);
        let warmup = a.warmup.min(c / 4);
        // The steps go through the batch-1 decoder, as generation in the page does; the prefill
        // before them through candle's batched forward (also as the page does).
        let step = |decoder: &mut Decoder, i: usize| -> Result<()> {
            let id = 1 + (i as u32 * 31) % (vocab as u32 - 1);
            decoder.step(id)?;
            Ok(())
        };
        let mut times = Vec::with_capacity(a.steps);
        let mut energy_uj: Option<u64> = energy.as_ref().map(|_| 0);
        while times.len() < a.steps {
            let timed = per_round.min(a.steps - times.len());
            let mut state = model.new_state(1)?;
            for chunk in filler_tokens(c - timed - warmup, vocab).chunks(512) {
                model.forward_with_state(&Tensor::from_slice(chunk, (1, chunk.len()), &Device::Cpu)?, &mut state)?;
            }
            decoder.load(&state)?;
            decoder.reserve(c);
            for i in 0..warmup {
                step(&mut decoder, i)?;
            }
            let e0 = energy.as_ref().map(|e| e.read_uj());
            for i in 0..timed {
                let t = Instant::now();
                step(&mut decoder, i)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            energy_uj = match (&energy, e0, energy_uj) {
                (Some(e), Some(Ok(start)), Some(sum)) => e.read_uj().ok().map(|end| sum + end.wrapping_sub(start)),
                _ => None,
            };
        }
        let energy_mj_measured = energy_uj.map(|uj| uj as f64 / 1e3 / times.len() as f64);
        times.sort_by(|x, y| x.total_cmp(y));
        let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        decode.push(DecodePoint {
            context: c,
            median_ms: q(0.5),
            p95_ms: q(0.95),
            samples: times.len(),
            energy_mj_measured,
        });
    }
    let inference_peak_rss_bytes = peak_rss_bytes();

    // One training step (after a warm-up step) at the given shape, from a fresh init.
    let (batch, seq) = (a.train_shape[0], a.train_shape[1].min(limit - 1));
    let (varmap, train_model) = Model::init(cfg, 0, &Device::Cpu)?;
    let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
    let mut rng = Rng::new(1);
    let mut train_tok_per_s = 0.0;
    for step in 0..2 {
        let ids: Vec<u32> = (0..batch * (seq + 1)).map(|_| rng.below(vocab) as u32).collect();
        let data = Tensor::from_vec(ids, (batch, seq + 1), &Device::Cpu)?;
        let t = Instant::now();
        let loss = train_model.loss(&data.narrow(1, 0, seq)?, &data.narrow(1, 1, seq)?)?.total;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &varmap, 1.0)?;
        opt.step(&grads, 1e-3)?;
        if step == 1 {
            train_tok_per_s = (batch * seq) as f64 / t.elapsed().as_secs_f64();
        }
    }
    let speed = Speed {
        threads: candle_core::utils::get_num_threads(),
        prefill_tokens,
        prefill_tok_per_s,
        decode,
        inference_peak_rss_bytes,
        train_tok_per_s,
        train_peak_rss_bytes: peak_rss_bytes(),
    };
    println!("{}", serde_json::to_string(&speed)?);
    Ok(())
}

/// Peak resident set of this process (VmHWM), in bytes; 0 where /proc is not there.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The CPU package energy counter of Linux powercap (Intel/AMD RAPL), when readable.
pub struct EnergyCounter {
    path: PathBuf,
    pub label: String,
}

impl EnergyCounter {
    pub fn open() -> Option<Self> {
        let dir = Path::new("/sys/class/powercap/intel-rapl:0");
        let path = dir.join("energy_uj");
        std::fs::read_to_string(&path).ok()?.trim().parse::<u64>().ok()?;
        let name = std::fs::read_to_string(dir.join("name")).unwrap_or_else(|_| "package-0".into());
        Some(Self { path, label: format!("RAPL {}", name.trim()) })
    }

    pub fn read_uj(&self) -> Result<u64> {
        Ok(std::fs::read_to_string(&self.path)?.trim().parse()?)
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or_else(|| std::env::consts::ARCH.to_string(), |s| s.trim().to_string());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        os: std::env::consts::OS.to_string(),
        energy_counter: EnergyCounter::open().map(|e| e.label),
        code_version: crate::train::code_version(),
        date_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed report's results, as a fixture of real measurements.
    fn committed() -> Results {
        crate::files::read_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../report/results.json")).unwrap()
    }

    #[test]
    fn added_models_replace_their_namesakes_and_join_the_rest() {
        let old = committed();
        let n = old.models.len();
        let mut new = old.clone();
        new.machine.code_version = "new".into();
        new.models.truncate(2);
        new.models[0].bytes_f32 += 1; // a re-measured model of an existing name
        new.models[1].name = "a new model".into();
        new.models[1].folder = "models/new".into();
        let merged = old.clone().merge(new).unwrap();
        assert_eq!(merged.models.len(), n + 1);
        assert_eq!(merged.models[0].bytes_f32, old.models[0].bytes_f32 + 1);
        assert_eq!(merged.models[n].name, "a new model");
        let a = old.additions.len();
        assert_eq!(merged.additions.len(), a + 1);
        assert_eq!(merged.additions[a].code_version, "new");
        assert!(crate::report::markdown_for_test(&merged).contains("bench --add"));

        // a model of an existing name from another folder (another run of the preset) joins the
        // results, and the two get their steps in their names; the one already there stays
        let i = old.models.iter().position(|m| m.training.as_ref().is_some_and(|t| t.steps != 7)).unwrap();
        let mut other = old.clone();
        other.models = vec![old.models[i].clone()];
        other.models[0].folder = "models/another-run".into();
        other.models[0].training.as_mut().unwrap().steps = 7;
        other.models[0].name = base_name(&old.models[i]);
        let merged = old.clone().merge(other).unwrap();
        assert_eq!(merged.models.len(), n + 1);
        let steps = old.models[i].training.as_ref().unwrap().steps;
        assert_eq!(
            merged.models[i].name,
            format!("{}, {steps} steps]", base_name(&old.models[i]).trim_end_matches(']'))
        );
        assert_eq!(merged.models[i].folder, old.models[i].folder);
        assert_eq!(merged.models[n].name, format!("{}, 7 steps]", base_name(&old.models[i]).trim_end_matches(']')));
        assert_eq!(merged.additions[a].models, [merged.models[n].name.clone()]);
    }

    #[test]
    fn adding_from_another_machine_or_other_settings_is_refused() {
        let old = committed();
        let mut other_cpu = old.clone();
        other_cpu.machine.cpu = "another CPU".into();
        assert!(old.clone().merge(other_cpu).unwrap_err().to_string().contains("another CPU"));
        let mut other_settings = old.clone();
        other_settings.settings.steps += 1;
        assert!(old.clone().merge(other_settings).unwrap_err().to_string().contains("settings differ"));
        // results timed through candle's forward_with_state and through the batch-1 decoder do
        // not mix, whichever of the two the committed ones are
        let mut decoder = old.clone();
        decoder.settings.batch1_decoder = !old.settings.batch1_decoder;
        assert!(old.merge(decoder).unwrap_err().to_string().contains("forward_with_state"));
    }

    #[test]
    fn the_report_names_the_decode_path_its_results_were_timed_with() {
        let mut r = committed();
        r.settings.batch1_decoder = false;
        assert!(crate::report::markdown_for_test(&r).contains("of candle's `forward_with_state`"));
        r.settings.batch1_decoder = true;
        assert!(crate::report::markdown_for_test(&r).contains("of the batch-1 decoder the page generates with"));
    }

    #[test]
    fn a_world_models_corpus_names_its_world() {
        assert_eq!(world_of("world (entities 10000, seed 0)"), Some((10000, 0)));
        assert_eq!(world_of("world (entities 300, seed 7)"), Some((300, 7)));
        assert_eq!(world_of("tasks (seed 0)"), None);
        assert_eq!(world_of("../shared/data/world.txt"), None);
    }

    #[test]
    fn models_of_one_name_get_their_steps_in_it() {
        let mut models = committed().models;
        models.truncate(3);
        for m in models.iter_mut() {
            m.name = base_name(m);
        }
        let mut longer = models[0].clone();
        longer.training.as_mut().unwrap().steps = 2400;
        models.push(longer);
        let before: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        distinct_names(&mut models);
        let steps = models[0].training.as_ref().unwrap().steps;
        assert_eq!(models[0].name, format!("{}, {steps} steps]", before[0].trim_end_matches(']')));
        assert_eq!(models[3].name, format!("{}, 2400 steps]", before[0].trim_end_matches(']')));
        assert_eq!(models[1].name, before[1]);
        assert_eq!(models[2].name, before[2]);
        // idempotent: named again, the same names; one of the two gone, the other's steps go too
        let named: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        distinct_names(&mut models);
        assert_eq!(models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(), named);
        let mut alone = models[..3].to_vec();
        distinct_names(&mut alone);
        assert_eq!(alone[0].name, before[0]);
    }
}
