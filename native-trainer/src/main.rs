//! native-trainer: trains, evaluates, scores, samples and exports the Transformer baseline and
//! Itera-Lite on the CPU. With no subcommand it produces the page's default models.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use itera_model::sample::SamplingConfig;
use itera_model::{ModelKind, Preset};
use native_trainer::eval::{qa_accuracy, score_text, stream_loss, windows};
use native_trainer::export::{export, load_model_dir};
use native_trainer::reading::{self, Reader, ReadingConfig, ReadingOrder};
use native_trainer::source::{CorpusSpec, Source};
use native_trainer::synthetic::{self, SyntheticTask};
use native_trainer::tasks::task_accuracy;
use native_trainer::train::{train, TrainArgs};
use native_trainer::world::{World, WorldConfig};
use native_trainer::{data, files};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "native-trainer",
    version,
    about = "Train, evaluate and export the Transformer baseline and Itera-Lite (Mamba + sparse MoE) on the CPU",
    long_about = "Train, evaluate and export the Transformer baseline and Itera-Lite (Mamba + sparse MoE) on the CPU.\n\n\
                  With no subcommand: trains the `demo` preset of both models on the generated world corpus \
                  (runs/<model>-demo, resumable) and exports them to models/baseline and models/itera-lite; \
                  models already trained are only re-exported."
)]
struct Cli {
    /// Compute threads [default: all cores]
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one model; checkpoints, tokenizer, config and metrics.jsonl go to --out
    Train {
        #[command(flatten)]
        args: TrainArgs,
        /// Run folder (created if missing)
        #[arg(long)]
        out: PathBuf,
        /// Continue from the checkpoint in --out (a finished run is left as it is)
        #[arg(long)]
        resume: bool,
        /// Also export the trained model to this folder
        #[arg(long)]
        export: Option<PathBuf>,
    },
    /// Loss, perplexity and bits per byte on a corpus's validation split (and world-QA accuracy)
    Eval(EvalArgs),
    /// Per-token log-probabilities of a text, as JSON
    Score {
        /// Model folder (an export, or a training run folder)
        #[arg(long)]
        model: PathBuf,
        /// UTF-8 text file to score
        #[arg(long)]
        text: PathBuf,
        /// Where to write {"tokens", "token_texts", "logprobs", "nll_mean", "bits_per_byte"}
        #[arg(long)]
        json: PathBuf,
    },
    /// Continue a prompt
    Generate {
        /// Model folder (an export, or a training run folder)
        #[arg(long)]
        model: PathBuf,
        /// Text to continue
        #[arg(long)]
        prompt: String,
        /// Tokens to generate at most (stops early at end-of-text)
        #[arg(long, default_value_t = 100)]
        max_tokens: usize,
        /// Sampling temperature; 0 = greedy
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sample among the k most likely tokens; 0 = all
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        /// Sample among the smallest set of tokens whose probability reaches p
        #[arg(long, default_value_t = 0.95)]
        top_p: f64,
        /// Seed of the sampling stream
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Retrieve documents for the prompt from this index (built by `index`) and place them in the context
        /// before it, read as in training; the prompt is then a question, answered as `Q: ...\nA:`
        #[arg(long, value_name = "DIR")]
        retrieval: Option<PathBuf>,
        #[command(flatten)]
        reading: ReadingArgs,
    },
    /// Build a retrieval index over a world's biographies; report recall@1/5, build time, bytes and query latency
    Index(IndexArgs),
    /// Measure exported models on this machine; write results.json, efficiency_report.md, plots
    Bench(native_trainer::bench::BenchArgs),
    /// (internal) one model's speed and memory at one thread count, as JSON
    #[command(hide = true)]
    BenchChild(native_trainer::bench::ChildArgs),
    /// Copy an f32 export with its weights in f16, 8-bit (q8_0) or 4-bit (q4_0): a GGUF file,
    /// `model.gguf`, beside the same config, tokenizer and index (docs/weights.md)
    Quantize {
        /// The f32 export folder (or an f16 one: its values widen to f32 exactly)
        #[arg(long)]
        model: PathBuf,
        /// `f16`, `q8_0` (blocks of 32 int8 and a scale: 8.5 bits a weight) or `q4_0` (4.5 bits)
        #[arg(long)]
        format: itera_model::weights::WeightFormat,
        /// The new export folder
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the Hugging Face `config.json` of a model preset (what `export` would write), e.g.
    /// to build the same model in `transformers` (scripts/peer_bench.py does)
    Config {
        /// `baseline` (Llama) or `itera-lite` (Mamba + sparse MoE)
        #[arg(long, default_value = "itera-lite")]
        model: itera_model::ModelKind,
        /// Size preset: `tiny`, `small`, `mid`, `demo`, `seed`
        #[arg(long, default_value = "demo")]
        preset: itera_model::config::Preset,
        /// Vocabulary size
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Itera-Lite's experts per MoE layer (0: plain Mamba blocks)
        #[arg(long)]
        experts: Option<usize>,
    },
    /// Export a training run as a Hugging Face folder with a manifest
    Export {
        /// Training run folder (holds checkpoint.safetensors and tokenizer.json)
        #[arg(long)]
        checkpoint: PathBuf,
        /// Export folder
        #[arg(long)]
        out: PathBuf,
        /// Write f32 weights over this many megabytes (10^6 bytes) as shards
        /// (`model-0000i-of-0000N.safetensors` + `model.safetensors.index.json`, as Hugging Face does)
        #[arg(long, value_name = "MB")]
        max_shard_mb: Option<f64>,
    },
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Model folder (an export, or a training run folder)
    #[arg(long)]
    model: PathBuf,
    /// `world`, `tasks` (or `mqar`, `induction`, `selective-copy`, a comma list), `induction-heads` or
    /// `selective-copying` (exact match at the training length and its multiples), or a .txt file / folder of .txt files
    #[arg(long, default_value = "world")]
    corpus: CorpusSpec,
    /// Entities of the generated world (must match training)
    #[arg(long, default_value_t = 10_000)]
    world_entities: usize,
    /// Seed of the generated world or tasks (must match training)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of a text corpus's documents that form the validation split (must match training)
    #[arg(long, default_value_t = 0.05)]
    valid_fraction: f64,
    /// Tokens per evaluation window [default: 256]; for `induction-heads` / `selective-copying`, the length the
    /// model was trained at [default: the paper's, 256 / 4096], scored at it and its multiples
    #[arg(long)]
    seq_len: Option<usize>,
    /// Windows per forward pass
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Held-out world questions to answer (`--corpus world`), or instances per task (and length) for task corpora; 0 skips
    #[arg(long, default_value_t = 200)]
    qa_questions: usize,
    /// Also write the figures as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the world questions asked as JSON here: each one's question, expected answer and
    /// set (held-out; never trained on, with --retrieval), e.g. for the page's `tests/e2e/qa.mjs`
    #[arg(long, value_name = "FILE")]
    questions_out: Option<PathBuf>,
    /// Share of the world never trained on (must match training's --world-unseen)
    #[arg(long, default_value_t = 0.0)]
    world_unseen: f64,
    /// Also answer the world questions with retrieval from this index (built by `index` from the world of
    /// --world-entities / --seed, which may be another world than the model was trained on)
    #[arg(long, value_name = "DIR")]
    retrieval: Option<PathBuf>,
    #[command(flatten)]
    reading: ReadingArgs,
}

/// How retrieved documents are read (as in training).
#[derive(Args, Debug, Clone, Copy)]
struct ReadingArgs {
    /// Documents retrieved into the context per question
    #[arg(long, default_value_t = 1)]
    retrieval_k: usize,
    /// `question-first` (the question, the documents, the question again) or `document-first`
    #[arg(long, default_value = "question-first")]
    reading_order: ReadingOrder,
}

impl ReadingArgs {
    fn config(self) -> ReadingConfig {
        ReadingConfig { k: self.retrieval_k, order: self.reading_order }
    }
}

#[derive(Args, Debug)]
struct IndexArgs {
    /// What to index: `world` (one biography per entity)
    #[arg(long, default_value = "world")]
    corpus: CorpusSpec,
    /// Entities of the generated world
    #[arg(long, default_value_t = 10_000)]
    world_entities: usize,
    /// Seed of the generated world
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Index folder (index.json, vectors, documents; written atomically)
    #[arg(long)]
    out: PathBuf,
    /// Questions to measure recall and query latency on (held-out world questions); 0 skips
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// Also measure BM25 (the sparse reference) on the same questions
    #[arg(long)]
    bm25: bool,
    /// Also write the figures as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    itera_model::runtime::tune_allocator();
    // A file-size limit (`ulimit -f`) hit while writing: an error naming the file (EFBIG), like
    // a full disk (ENOSPC), instead of death by SIGXFSZ; atomic writes leave the old file whole.
    #[cfg(target_os = "linux")]
    // SAFETY: setting a signal's disposition to "ignore" at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Read by rayon (gemm) and candle when they first start, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => default_job(),
        Some(Command::Train { args, out, resume, export: export_to }) => {
            train(&args, &out, resume)?;
            if let Some(dir) = export_to {
                export(&out, &dir)?;
                eprintln!("exported to {}", dir.display());
            }
            Ok(())
        }
        Some(Command::Eval(a)) => eval(a),
        Some(Command::Score { model, text, json }) => {
            let m = load_model_dir(&model)?;
            let text = std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
            let score = score_text(&m.model, &m.tokenizer, m.eot, &text)?;
            files::write_json_atomic(&json, &score)?;
            eprintln!(
                "{} tokens, mean NLL {:.4} nats, {:.4} bits/byte -> {}",
                score.tokens.len(),
                score.nll_mean,
                score.bits_per_byte,
                json.display()
            );
            Ok(())
        }
        Some(Command::Index(a)) => index(a),
        Some(Command::Generate { model, prompt, max_tokens, temperature, top_k, top_p, seed, retrieval, reading }) => {
            let m = load_model_dir(&model)?;
            let retrieval_used = retrieval.is_some();
            let prompt = match retrieval {
                None => prompt,
                Some(dir) => {
                    let reader = Reader::open(&dir, reading.config())?;
                    let hits = reader.retrieve(&prompt);
                    eprintln!("retrieved from {} ({} documents):", dir.display(), reader.index.len());
                    for h in &hits {
                        eprintln!("  [{:.3}] {}", h.score, reader.index.document(h.doc).unwrap_or("").trim_end());
                    }
                    reader.prompt_with(&prompt, &hits)
                }
            };
            // A retrieval prompt is read as in training: after end-of-text.
            let mut ids = if retrieval_used { vec![m.eot] } else { Vec::new() };
            ids.extend(data::encode(&m.tokenizer, &prompt)?);
            let sampling = SamplingConfig { temperature, top_k, top_p, seed };
            let mut out = std::io::stdout().lock();
            write!(out, "{prompt}")?;
            // Decode the growing sequence and print what is new: a token may end mid-character.
            let mut generated: Vec<u32> = Vec::new();
            let mut printed = 0;
            native_trainer::eval::generate(&m.model, &ids, max_tokens, sampling, |id| {
                if id == m.eot {
                    return Ok(false);
                }
                generated.push(id);
                let text = data::decode(&m.tokenizer, &generated)?;
                let stable = text.trim_end_matches('\u{FFFD}');
                if stable.len() > printed {
                    write!(out, "{}", &stable[printed..])?;
                    out.flush()?;
                    printed = stable.len();
                }
                Ok(true)
            })?;
            writeln!(out)?;
            let limit = native_trainer::eval::max_context(&m.model.config());
            if ids.len() + generated.len() >= limit && generated.len() < max_tokens {
                eprintln!("stopped at the model's context limit ({limit} tokens)");
            }
            Ok(())
        }
        Some(Command::Bench(a)) => {
            let mut results = if a.render_only {
                // The same figures, drawn again (after a change to the report's layout).
                files::read_json(&a.out.join("results.json"))?
            } else if a.add {
                let old: native_trainer::bench::Results = files::read_json(&a.out.join("results.json"))?;
                old.merge(native_trainer::bench::run(&a)?)?
            } else {
                native_trainer::bench::run(&a)?
            };
            if let Some(path) = &a.webgpu {
                results.webgpu = Some(native_trainer::bench::WebGpuRun::read(path)?);
            }
            native_trainer::report::write_report(&results, &a.out)?;
            eprintln!("report written to {}", a.out.join("efficiency_report.md").display());
            Ok(())
        }
        Some(Command::BenchChild(a)) => native_trainer::bench::child(&a),
        Some(Command::Quantize { model, format, out }) => {
            let m = native_trainer::export::quantize(&model, &out, format)?;
            let bytes = |m: &native_trainer::export::Manifest| m.files.iter().map(|f| f.bytes).sum::<u64>();
            let weights = m.files.first().map_or(0, |f| f.bytes);
            eprintln!(
                "wrote {} ({format}): weights {:.2} MB, folder {:.2} MB; measure it with `native-trainer eval --model {}`",
                out.display(),
                weights as f64 / 1e6,
                bytes(&m) as f64 / 1e6,
                out.display()
            );
            Ok(())
        }
        Some(Command::Config { model, preset, vocab_size, experts }) => {
            let mut cfg = itera_model::Config::preset(model, preset, vocab_size);
            match (&mut cfg, experts) {
                (itera_model::Config::IteraLite(c), Some(e)) => c.num_experts = e,
                (_, Some(_)) => anyhow::bail!("--experts applies to --model itera-lite only"),
                _ => {}
            }
            cfg.validate().map_err(|e| anyhow::anyhow!("model config: {e}"))?;
            let json = native_trainer::export::hf_config(&cfg, 0)?;
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(())
        }
        Some(Command::Export { checkpoint, out, max_shard_mb }) => {
            let max = match max_shard_mb {
                Some(mb) if !(mb.is_finite() && mb > 0.0) => anyhow::bail!("--max-shard-mb {mb} is not a size > 0"),
                Some(mb) => Some((mb * 1e6) as u64),
                None => None,
            };
            let m = native_trainer::export::export_sharded(&checkpoint, &out, max)?;
            eprintln!("exported {} ({} parameters) to {}", m.name, m.params.total, out.display());
            Ok(())
        }
    }
}

/// The page's models: `demo` presets of both architectures on the default world corpus.
fn default_job() -> Result<()> {
    // The retrieval index over the default world's biographies (both models read it).
    let index_dir = PathBuf::from("runs").join("world-index");
    let defaults = TrainArgs::defaults();
    if !index_dir.join(itera_retrieval::store::INDEX_JSON).exists() {
        let world = World::generate(&WorldConfig {
            entities: defaults.world_entities,
            seed: defaults.seed,
            ..Default::default()
        })?;
        eprintln!("== retrieval index -> {}", index_dir.display());
        native_trainer::retrieval::build_and_measure(&world, &index_dir, 500, false)?;
    }
    for kind in ModelKind::ALL {
        let args = TrainArgs {
            model: kind,
            preset: Preset::Demo,
            steps: Some(DEFAULT_DEMO_STEPS),
            world_unseen: DEFAULT_WORLD_UNSEEN,
            retrieval: Some(index_dir.clone()),
            reading_batch: Some(DEFAULT_READING_BATCH),
            qa_questions: DEFAULT_QA_QUESTIONS,
            ..defaults.clone()
        };
        let run_dir = PathBuf::from("runs").join(format!("{kind}-demo"));
        let model_dir = PathBuf::from("models").join(kind.name());
        eprintln!("== {kind} (demo, retrieval in the loop) -> {}", model_dir.display());
        train(&args, &run_dir, true)?;
        export(&run_dir, &model_dir)?;
    }
    eprintln!("models ready in models/baseline and models/itera-lite");
    Ok(())
}

/// Steps of the default demo runs: both models train in about 10 minutes on 2 cores.
const DEFAULT_DEMO_STEPS: usize = 140;
/// Reading examples (a retrieved biography + a question, the loss on the answer) per step, beside
/// the 16 text windows.
const DEFAULT_READING_BATCH: usize = 8;
/// Questions of each kind the final evaluation asks (held-out, never trained on; with retrieval and without).
const DEFAULT_QA_QUESTIONS: usize = 100;
/// Share of the default world never trained on, only indexed: the page and the evaluation ask
/// about them to test reading rather than memory.
const DEFAULT_WORLD_UNSEEN: f64 = 0.1;

fn eval(a: EvalArgs) -> Result<()> {
    let m = load_model_dir(&a.model)?;
    if let CorpusSpec::Synthetic(task) = a.corpus {
        return eval_synthetic(&a, &m, task);
    }
    let source = Source::load(&a.corpus, a.world_entities, a.world_unseen, a.seed, a.valid_fraction)?;
    let stream = data::encode_documents(&m.tokenizer, &source.corpus.valid)?;
    let seq_len = a.seq_len.unwrap_or(256);
    if stream.len() < seq_len + 2 {
        anyhow::bail!(
            "the validation split has {} tokens; --seq-len {seq_len} needs at least {}",
            stream.len(),
            seq_len + 2
        );
    }
    let starts = windows(stream.len(), seq_len, None);
    let loss = stream_loss(&m.model, &stream, seq_len, &starts, a.batch_size)?;
    let covered = loss.tokens as f64 / (stream.len() - 1) as f64;
    let bytes = (source.corpus.valid_bytes() as f64 * covered).round() as usize;
    let mut report = serde_json::json!({
        "model": a.model.display().to_string(),
        "corpus": source.corpus.name,
        "valid_tokens": loss.tokens,
        "loss": loss.mean(),
        "perplexity": loss.perplexity(),
        "bits_per_byte": loss.bits_per_byte(bytes),
    });
    println!(
        "{}: loss {:.4}, perplexity {:.2}, {:.4} bits/byte over {} tokens",
        source.corpus.name,
        loss.mean(),
        loss.perplexity(),
        loss.bits_per_byte(bytes),
        loss.tokens
    );
    if let (Some(world), true) = (&source.world, a.qa_questions > 0) {
        let (sample, unseen) = reading::questions(world, a.qa_questions);
        if let Some(path) = &a.questions_out {
            // Questions about people never trained on are asked only with retrieval.
            let unseen = if a.retrieval.is_some() { unseen } else { vec![] };
            let sets = [("held-out", &sample), ("never trained on", &unseen)];
            let asked: Vec<serde_json::Value> = sets
                .iter()
                .flat_map(|(set, items)| {
                    items
                        .iter()
                        .map(move |q| serde_json::json!({"question": q.question, "expected": q.answer, "set": set}))
                })
                .collect();
            files::write_json_atomic(path, &asked)?;
        }
        let qa = qa_accuracy(&m.model, &m.tokenizer, m.eot, &sample)?;
        println!("world QA (held-out): {}/{} exact match ({:.1}%)", qa.correct, qa.total, 100.0 * qa.accuracy());
        for ex in &qa.examples {
            println!("  Q: {}  expected {:?}, got {:?}", ex.question, ex.expected, ex.answer);
        }
        report["world_qa"] = serde_json::to_value(&qa)?;
        report["world_qa_accuracy"] = qa.accuracy().into();
        if let Some(dir) = &a.retrieval {
            let reader = Reader::load(dir, a.reading.config(), world)?;
            let r = reading::evaluate(&m.model, &m.tokenizer, m.eot, &reader, world, a.qa_questions)?;
            let (k, order) = (r.k, r.order);
            let pct = |q: &native_trainer::eval::QaResult| {
                format!("{}/{} ({:.1}%)", q.correct, q.total, 100.0 * q.accuracy())
            };
            println!(
                "world QA (held-out) with retrieval (top-{k}, {order}): {}; the entity's document retrieved for {:.1}%",
                pct(&r.heldout),
                100.0 * r.heldout_recall
            );
            println!("  by attribute: {}", r.heldout.by_attribute_line());
            if let (Some(on), Some(off), Some(recall)) = (&r.unseen, &r.unseen_off, r.unseen_recall) {
                println!(
                    "world QA (unseen entities, never trained on): with retrieval {}, without {}; document retrieved for {:.1}%",
                    pct(on),
                    pct(off),
                    100.0 * recall
                );
                println!("  by attribute, with retrieval: {}", on.by_attribute_line());
            }
            println!(
                "answer loss (nats/token) with / without retrieval: held-out {:.3} / {:.3}{}",
                r.heldout_answer_nll,
                r.heldout_answer_nll_off,
                match (r.unseen_answer_nll, r.unseen_answer_nll_off) {
                    (Some(on), Some(off)) => format!(", unseen {on:.3} / {off:.3}"),
                    _ => String::new(),
                }
            );
            for ex in &r.heldout.examples {
                println!("  Q: {}  expected {:?}, got {:?}", ex.question, ex.expected, ex.answer);
            }
            report["retrieval"] = serde_json::to_value(&r)?;
        }
    }
    if a.qa_questions > 0 && !source.tasks.is_empty() {
        let results = task_accuracy(&m.model, &m.tokenizer, m.eot, &source.task_eval_instances(a.qa_questions))?;
        print_task_results(&results);
        report["tasks"] = serde_json::to_value(&results)?;
    }
    if let Some(path) = a.json {
        files::write_json_atomic(&path, &report)?;
    }
    Ok(())
}

/// Builds a world's index, then measures it on held-out questions.
fn index(a: IndexArgs) -> Result<()> {
    if a.corpus != CorpusSpec::World {
        anyhow::bail!("`index --corpus {}`: only `world` can be indexed for now", a.corpus);
    }
    let world = World::generate(&WorldConfig { entities: a.world_entities, seed: a.seed, ..Default::default() })?;
    let report = native_trainer::retrieval::build_and_measure(&world, &a.out, a.queries, a.bm25)?;
    if let Some(path) = &a.json {
        files::write_json_atomic(path, &report)?;
    }
    Ok(())
}

/// Exact match on held-out instances of one of the paper's synthetic tasks, at the training
/// length and its multiples.
fn eval_synthetic(a: &EvalArgs, m: &native_trainer::export::LoadedModel, task: SyntheticTask) -> Result<()> {
    if m.tokenizer.get_vocab(true) != task.tokenizer()?.get_vocab(true) {
        anyhow::bail!("{} was not trained on {task}: its tokenizer has another vocabulary", a.model.display());
    }
    let len = a.seq_len.unwrap_or(task.train_len());
    if len < task.min_len() {
        anyhow::bail!("--seq-len {len} is too short for {task}: at least {}", task.min_len());
    }
    let results = synthetic::evaluate(&m.model, task, len, a.qa_questions, a.seed)?;
    print_task_results(&results);
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "model": a.model.display().to_string(),
            "corpus": task.name(),
            "train_len": len,
            "tasks": results,
        });
        files::write_json_atomic(path, &report)?;
    }
    Ok(())
}

/// One line per task (and length): answers and whole instances right.
fn print_task_results(results: &[native_trainer::tasks::TaskResult]) {
    for t in results {
        println!(
            "{} (held-out): {}/{} answers right ({:.1}%), {}/{} instances all right",
            t.label(),
            t.answers_correct,
            t.answers,
            100.0 * t.accuracy(),
            t.instances_correct,
            t.instances
        );
    }
}
