//! The training loop: AdamW (own, checkpointable), linear warmup + cosine decay, global-norm
//! clipping, the MoE load-balancing loss, periodic evaluation, JSONL metrics, a progress bar, and
//! checkpoints from which a run killed at any instant resumes to bit-identical weights.
//!
//! Determinism: init is seeded by name (itera_model::init), batches come from a seeded SplitMix64
//! whose state is checkpointed, the optimizer keeps its moments in the checkpoint, and every
//! reduction runs in a fixed order. Same seed + same thread count ⇒ same weights, resumed or not.

use crate::checkpoint::{Checkpoint, CheckpointMeta, FinalEval};
use crate::data::{self, encode_documents, eot_id};
use crate::eval::{stream_loss, windows, LossSum};
use crate::files::{write_atomic, write_json_atomic};
use crate::parallel::{all_reduce_grads, local_group, rows, Collective, Shares};
use crate::plot;
use crate::reading::{self, Reader, ReadingConfig, ReadingOrder};
use crate::source::{CorpusSpec, Source};
use crate::synthetic::{self, AnswerBatch, Sequence, SyntheticTask};
use crate::tasks::{self, task_accuracy, TaskKind};
use crate::tensorboard::EventWriter;
use crate::world::{QaItem, World, WorldConfig};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use itera_model::init::{InitScheme, Rng};
use itera_model::optim::{clip_factor, grad_norm_with, vars_by_name, AdamW, AdamWConfig};
use itera_model::weights::{assign_varmap, varmap_tensors, WeightFormat};
use itera_model::{Config, Kernels, Losses, Model, ModelKind, Preset};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `train`'s arguments. Stored in every checkpoint; a resume must match them.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Architecture: `baseline` (Llama-style Transformer) or `itera-lite` (Mamba + sparse MoE)
    #[arg(long, default_value = "itera-lite")]
    pub model: ModelKind,
    /// Size preset: `tiny` (tests), `small` (2 layers of width 64), `mid` (4 layers of width 128), `demo` (the page's models), `seed` (10-50M parameters)
    #[arg(long, default_value = "demo")]
    pub preset: Preset,
    /// Training data: `world` (the generated corpus), `tasks` (generated MQAR, induction and selective copying; or
    /// one of `mqar`, `induction`, `selective-copy`, or a comma list), `induction-heads` or `selective-copying` (the
    /// Mamba paper's synthetic tasks: 16 symbols plus markers, fresh sequences every step, loss on the answers), or a .txt file /
    /// folder of .txt files
    #[arg(long, default_value = "world")]
    pub corpus: CorpusSpec,
    /// Entities in the generated world (`--corpus world`), 1 to 100000
    #[arg(long, default_value_t = 10_000)]
    pub world_entities: usize,
    /// Share of the world's entities never trained on (neither biography nor questions), only indexed: the
    /// retrieval evaluation reads them; at most 0.5
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub world_unseen: f64,
    /// Train with retrieval in the loop: the index (built by `native-trainer index` from this world) answers
    /// training questions, and each step adds reading examples (retrieved documents + question → answer, loss on
    /// the answer) to the text batch
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub retrieval: Option<PathBuf>,
    /// Documents retrieved into the context per question
    #[arg(long, default_value_t = 1)]
    #[serde(default = "one")]
    pub retrieval_k: usize,
    /// Reading format: `question-first` (the question, the documents, the question again) or `document-first`
    #[arg(long, default_value = "question-first")]
    #[serde(default)]
    pub reading_order: ReadingOrder,
    /// Reading examples per step with --retrieval [default: --batch-size]
    #[arg(long)]
    #[serde(default)]
    pub reading_batch: Option<usize>,
    /// People of the reading pool: reading examples ask about a world of their own (another seed, never in the
    /// text), so an answer can only come from the retrieved document, never from memory; 0 reads for the
    /// trained world's QA-train people instead (whose answers are also training text)
    #[arg(long, default_value_t = 20_000)]
    #[serde(default)]
    pub reading_entities: usize,
    /// Names of places, universities and employers in the reading pool: `shared` draws them from the pool's own
    /// names and the trained world's alike (its people stay new, so answers still come only from the document, but
    /// reading also learns to copy names the text made familiar), `many` half from the trained world's and half from
    /// the names of 33 generated worlds (far more than a model learns by heart: it has to copy them, as for a world it
    /// never saw), `own` from the pool's own names only
    #[arg(long, default_value = "shared")]
    #[serde(default = "own_places")]
    pub reading_places: ReadingPlaces,
    /// With `--corpus tasks` (or a list of its tasks): `all` trains on every token of random windows of the
    /// instance stream; `answers` on the answer tokens alone, of rows that each begin with an instance and are
    /// filled with instances drawn fresh every step (the Mamba paper's recipe for its synthetic tasks). The
    /// validation loss stays the stream's, every token
    #[arg(long, default_value = "all")]
    #[serde(default)]
    pub task_loss: TaskLoss,
    /// Optimizer steps [default: from --tokens, else 300]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Training tokens; sets the steps to tokens / (batch-size × seq-len), rounded up
    #[arg(long, conflicts_with = "steps")]
    pub tokens: Option<u64>,
    /// Seed of the init, the data order and the world; the same seed repeats a run exactly
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sequences per batch
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per sequence [default: 256; `induction-heads`: 256 and `selective-copying`: 4096 positions before the
    /// 16 markers, as in the paper]
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Peak learning rate
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate of the cosine decay [default: lr / 10]
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Steps of linear warmup
    #[arg(long, default_value_t = 20)]
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (matrices only: not norms, biases, embeddings, A_log)
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm (0 = no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Weight α of the MoE load-balancing loss [default: the preset's, 0.01]
    #[arg(long)]
    pub aux_loss_weight: Option<f64>,
    /// Init of Itera-Lite's mixer projections: `mamba` (state-spaces/mamba's: nn.Linear's kaiming-uniform) or
    /// `normal` (N(0, 0.02), as Hugging Face's MambaPreTrainedModel)
    #[arg(long, default_value = "mamba")]
    #[serde(default = "normal_init")]
    pub init: InitScheme,
    /// Start from the weights of this run folder (its checkpoint) or f32 export instead of `--init`
    /// (fine-tuning, or a curriculum: the same model trained on at another --seq-len or corpus);
    /// the model must be the one this run builds; the optimizer starts afresh. A text corpus
    /// reads with the source's tokenizer.json unless --tokenizer names another
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Experts per Itera-Lite block (0 switches MoE off: plain Mamba blocks) [default: the preset's]
    #[arg(long)]
    pub experts: Option<usize>,
    /// Vocabulary size of the BPE tokenizer trained on the corpus [default: 2048; task corpora: every merge
    /// there is (a few hundred tokens), so each task word is one token]
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// Use this tokenizer.json instead of training one
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Share of a text corpus's documents held out for validation
    #[arg(long, default_value_t = 0.05)]
    pub valid_fraction: f64,
    /// Evaluate on the validation split every N steps
    #[arg(long, default_value_t = 50)]
    pub eval_interval: usize,
    /// Batches per periodic evaluation (the final one reads the whole split, up to 1000 windows)
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Write a checkpoint every N steps (and always at the end)
    #[arg(long, default_value_t = 50)]
    pub checkpoint_interval: usize,
    /// Where the training steps run: `cpu`, or `cuda` / `cuda:N` (a build with the `cuda` feature: the scan,
    /// RMSNorm, the attention's rotary embedding and softmax, the baseline's SwiGLU gating, the gradient norm
    /// and AdamW run CUDA kernels, conv + SiLU its elementary twin, the MoE densely; evaluation runs on a CPU
    /// copy; docs/gpu.md)
    #[arg(long, default_value = "cpu")]
    #[serde(default)]
    pub device: DeviceSpec,
    /// Held-out questions answered at the end: world questions (`--corpus world`), instances per task (task corpora); 0 skips
    #[arg(long, default_value_t = 200)]
    pub qa_questions: usize,
    /// Data-parallel ranks: N copies of the model in threads of this process, each reading 1/N of every batch
    /// (--batch-size and --reading-batch must divide by N), their gradients summed every step, so that a run
    /// follows the one-rank run of the same batch; with `--device cuda:K` rank r trains on cuda:K+r (docs/gpu.md)
    #[arg(long, default_value_t = 1)]
    #[serde(default = "one")]
    pub world_size: usize,
    /// Mixed precision on a GPU (`--device cuda` only): `bf16` or `f16` runs the linear layers', the head's and the
    /// attention's matrix products in that dtype, weights, gradients and AdamW staying f32 (`torch.autocast`'s
    /// recipe; the MoE router and the evaluations, on a CPU copy, stay f32); `f32`: none
    #[arg(long, default_value = "f32")]
    #[serde(default)]
    pub autocast: Autocast,
}

/// `--autocast`: the dtype of the matrix products (`itera_model::ops::set_autocast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Autocast {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Autocast {
    pub fn name(self) -> &'static str {
        match self {
            Autocast::F32 => "f32",
            Autocast::Bf16 => "bf16",
            Autocast::F16 => "f16",
        }
    }

    pub fn dtype(self) -> Option<candle_core::DType> {
        match self {
            Autocast::F32 => None,
            Autocast::Bf16 => Some(candle_core::DType::BF16),
            Autocast::F16 => Some(candle_core::DType::F16),
        }
    }
}

fn one() -> usize {
    1
}

/// Runs checkpointed before `--reading-places` existed read about a pool with its own names only.
fn own_places() -> ReadingPlaces {
    ReadingPlaces::Own
}

/// `--reading-places`: whose names of places and organisations the reading pool's people have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadingPlaces {
    Own,
    Shared,
    Many,
}

/// `--task-loss`: which tokens of the project's task corpus the loss reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskLoss {
    #[default]
    All,
    Answers,
}

impl std::fmt::Display for TaskLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskLoss::All => "all",
            TaskLoss::Answers => "answers",
        })
    }
}

impl std::str::FromStr for TaskLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(TaskLoss::All),
            "answers" => Ok(TaskLoss::Answers),
            _ => Err(format!("unknown task loss `{s}` (expected `all` or `answers`)")),
        }
    }
}

/// Worlds besides its own whose names a `many` reading pool draws (`World::generate_with_many_places`).
const MANY_PLACES_WORLDS: usize = 32;

impl std::str::FromStr for ReadingPlaces {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "own" => Ok(ReadingPlaces::Own),
            "shared" => Ok(ReadingPlaces::Shared),
            "many" => Ok(ReadingPlaces::Many),
            _ => Err(format!("unknown reading places `{s}` (expected `shared`, `many` or `own`)")),
        }
    }
}

/// Runs checkpointed before `--init` existed used N(0, 0.02).
fn normal_init() -> InitScheme {
    InitScheme::Normal
}

/// Fields a resumed run may change: they affect neither the data, nor the model, nor the math.
const RESUMABLE_CHANGES: &[&str] = &["eval_interval", "eval_batches", "checkpoint_interval", "qa_questions", "device"];

/// `--device`: where the training steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!("unknown device `{s}` (expected `cpu`, `cuda` or `cuda:N`)")),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Data-parallel rank `r`'s device: the CPU for every rank, or the r-th GPU from this one.
    pub fn for_rank(self, r: usize) -> DeviceSpec {
        match self {
            DeviceSpec::Cpu => DeviceSpec::Cpu,
            DeviceSpec::Cuda(n) => DeviceSpec::Cuda(n + r),
        }
    }

    /// Opens the device; a build without the `cuda` feature says so by name.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                anyhow::anyhow!(
                    "--device {self}: {e} (this binary must be built with `--features cuda`, and the machine needs an \
                     NVIDIA driver; docs/gpu.md)"
                )
            }),
        }
    }
}

const DEFAULT_STEPS: usize = 300;
const DEFAULT_SEQ_LEN: usize = 256;
/// Held-out sequences of a synthetic task scored at each periodic evaluation (its accuracy curve).
const SYNTHETIC_VALID: usize = 256;
const SYNTHETIC_VALID_TOKENS: usize = 1 << 18;
const DEFAULT_VOCAB_SIZE: usize = 2048;
const METRICS_FILE: &str = "metrics.jsonl";
const LOSS_PLOT: &str = "loss.svg";
const FINAL_EVAL_WINDOWS: usize = 1000;

impl TrainArgs {
    /// Every flag at its default (what `train` with no flags would use).
    pub fn defaults() -> TrainArgs {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: TrainArgs,
        }
        <Wrapper as clap::Parser>::parse_from(["train"]).args
    }

    /// Checks the arguments and fills in the derived defaults (steps, min_lr).
    pub fn resolve(&self) -> Result<TrainArgs> {
        let mut a = self.clone();
        let synthetic = match a.corpus {
            CorpusSpec::Synthetic(t) => Some(t),
            _ => None,
        };
        a.seq_len = Some(a.seq_len.unwrap_or(synthetic.map_or(DEFAULT_SEQ_LEN, SyntheticTask::train_len)));
        if a.batch_size == 0 || a.seq_len == Some(0) {
            bail!("--batch-size and --seq-len must be > 0");
        }
        if let Some(t) = synthetic {
            if a.seq_len() < t.min_len() {
                bail!("--seq-len {} is too short for {t}: at least {}", a.seq_len(), t.min_len());
            }
            if a.vocab_size.is_some() || a.tokenizer.is_some() {
                bail!("--vocab-size and --tokenizer do not apply to {t}: its vocabulary is fixed (16 task tokens)");
            }
        }
        let per_step = (a.batch_size * a.input_len()) as u64;
        a.steps = Some(match (a.steps, a.tokens) {
            (Some(s), _) => s,
            (None, Some(t)) => t.div_ceil(per_step) as usize,
            (None, None) => DEFAULT_STEPS,
        });
        a.tokens = None;
        if a.steps == Some(0) {
            bail!("--steps must be > 0");
        }
        a.min_lr = Some(a.min_lr.unwrap_or(a.lr / 10.0));
        if a.task_loss == TaskLoss::Answers && !matches!(a.corpus, CorpusSpec::Tasks(_)) {
            bail!("--task-loss answers applies to `--corpus tasks` (or a list of its tasks), not to {}", a.corpus);
        }
        if !matches!(a.corpus, CorpusSpec::Tasks(_) | CorpusSpec::Synthetic(_)) {
            a.vocab_size = Some(a.vocab_size.unwrap_or(DEFAULT_VOCAB_SIZE));
        }
        if let Some(dir) = a.init_from.as_ref().filter(|d| !d.is_dir()) {
            bail!("--init-from {}: not a folder (expected a training run or an f32 export)", dir.display());
        }
        if let (Some(dir), None, None) = (&a.init_from, &a.tokenizer, synthetic) {
            a.tokenizer = Some(dir.join("tokenizer.json"));
        }
        if !(a.lr > 0.0 && a.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", a.lr);
        }
        if !(0.0..0.5).contains(&a.valid_fraction) || a.valid_fraction == 0.0 {
            bail!("--valid-fraction must be in (0, 0.5), got {}", a.valid_fraction);
        }
        if a.eval_interval == 0 || a.checkpoint_interval == 0 {
            bail!("--eval-interval and --checkpoint-interval must be > 0");
        }
        if !(0.0..=0.5).contains(&a.world_unseen) {
            bail!(
                "--world-unseen must be in [0, 0.5] (the other half of the entities is QA-train), got {}",
                a.world_unseen
            );
        }
        if a.world_size == 0 {
            bail!("--world-size must be > 0");
        }
        if !a.batch_size.is_multiple_of(a.world_size) {
            bail!("--batch-size {} does not divide among --world-size {} ranks", a.batch_size, a.world_size);
        }
        if a.retrieval.is_some() {
            if a.corpus != CorpusSpec::World {
                bail!("--retrieval reads world biographies: it needs --corpus world");
            }
            self.reading().validate().map_err(anyhow::Error::msg)?;
            a.reading_batch = Some(a.reading_batch.unwrap_or(a.batch_size));
            if a.reading_entities > 100_000 {
                bail!(
                    "--reading-entities must be at most 100000 (0 reads the trained world), got {}",
                    a.reading_entities
                );
            }
            if a.reading_batch == Some(0) {
                bail!("--reading-batch must be > 0");
            }
            if let Some(r) = a.reading_batch.filter(|r| !r.is_multiple_of(a.world_size)) {
                bail!("--reading-batch {r} does not divide among --world-size {} ranks", a.world_size);
            }
        }
        Ok(a)
    }

    pub fn steps(&self) -> usize {
        self.steps.unwrap_or(DEFAULT_STEPS)
    }

    /// How retrieved documents are read (`--retrieval-k`, `--reading-order`).
    pub fn reading(&self) -> ReadingConfig {
        ReadingConfig { k: self.retrieval_k, order: self.reading_order }
    }

    /// Tokens per sequence (for `selective-copying`: positions before the markers).
    pub fn seq_len(&self) -> usize {
        self.seq_len.unwrap_or(DEFAULT_SEQ_LEN)
    }

    /// Tokens of one training sequence as the model reads it.
    pub fn input_len(&self) -> usize {
        match self.corpus {
            CorpusSpec::Synthetic(t) => t.input_len(self.seq_len()),
            _ => self.seq_len(),
        }
    }

    /// The model config: the preset at this vocabulary, with the MoE overrides.
    pub fn model_config(&self, vocab_size: usize) -> Result<Config> {
        let mut cfg = Config::preset(self.model, self.preset, vocab_size);
        if let Config::IteraLite(c) = &mut cfg {
            if let Some(e) = self.experts {
                c.num_experts = e;
            }
            if let Some(a) = self.aux_loss_weight {
                c.router_aux_loss_coef = a;
            }
        } else if self.experts.is_some() || self.aux_loss_weight.is_some() {
            bail!("--experts and --aux-loss-weight apply to --model itera-lite only");
        }
        cfg.validate().map_err(|e| anyhow::anyhow!("model config: {e}"))?;
        Ok(cfg)
    }
}

/// The learning rate at `step` (0-based), as nanoGPT's `get_lr`.
pub fn lr_at(step: usize, a: &TrainArgs) -> f64 {
    let (lr, min_lr, warmup, steps) = (a.lr, a.min_lr.unwrap_or(a.lr / 10.0), a.warmup_steps, a.steps());
    // 1) linear warmup for warmup_steps steps
    if step < warmup {
        return lr * (step + 1) as f64 / (warmup + 1) as f64;
    }
    // 2) past the last step, the floor
    if step >= steps {
        return min_lr;
    }
    // 3) in between, cosine decay from lr down to min_lr
    let ratio = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    min_lr + coeff * (lr - min_lr)
}

/// What a run trains on: a token stream cut into windows, or a synthetic task's generator.
#[allow(clippy::large_enum_variant)] // one value a run
enum Data {
    Text { source: Source, train_stream: Vec<u32>, valid_stream: Vec<u32>, reading: Option<Reading> },
    Synthetic { task: SyntheticTask, valid: Vec<Sequence> },
}

/// Retrieval in the loop: the questions to read for and the index that answers them (the reading
/// pool's, or the run's own), and the run's index with a few questions for the periodic accuracy.
struct Reading {
    pool: Reader,
    train: Vec<QaItem>,
    reader: Reader,
    valid: Vec<QaItem>,
    batch: usize,
}

/// Stream of the reading pool's world: a seed no `--seed` of the trained world maps to by accident.
const READING_POOL_SEED: u64 = 0x7ead_1a90_f001_0001;

/// The reading pool: a world of `entities` people drawn from its own seed (its people and facts are
/// never training text), with an index over its biographies built like `reader`'s.
/// With `ReadingPlaces::Shared` its places, universities and employers are drawn from its own names and
/// those of the trained world (seed `world_seed`) together.
fn reading_pool(
    seed: u64,
    entities: usize,
    places: ReadingPlaces,
    world_seed: u64,
    reader: &Reader,
) -> Result<(Reader, Vec<QaItem>)> {
    let cfg = WorldConfig { entities, seed: seed ^ READING_POOL_SEED, qa_train_fraction: 1.0, unseen_fraction: 0.0 };
    let world = match places {
        ReadingPlaces::Own => World::generate(&cfg),
        ReadingPlaces::Shared => World::generate_sharing_places(&cfg, world_seed),
        ReadingPlaces::Many => World::generate_with_many_places(&cfg, world_seed, MANY_PLACES_WORLDS),
    }
    .context("generating the reading pool's world")?;
    let index = itera_retrieval::Index::build(world.biographies(), reader.index.encoder().config().clone())
        .context("indexing the reading pool")?;
    Ok((Reader { index, config: reader.config }, world.qa_train()))
}

/// Held-out questions answered with retrieval at each periodic evaluation (its accuracy curve).
const READING_VALID: usize = 32;

/// Training batches from a seeded stream, whose state is the data cursor: random windows of
/// the token stream, or fresh instances of a synthetic task (a new draw every step).
/// Draws every step's global batch (the same draws on every rank) and builds this rank's rows of it.
struct Batcher<'a> {
    data: &'a Data,
    /// `--task-loss answers`: rows of fresh task instances, the loss on their answers.
    fresh_tasks: Option<&'a [TaskKind]>,
    rng: Rng,
    batch: usize,
    seq_len: usize,
    tok: &'a tokenizers::Tokenizer,
    eot: u32,
    rank: usize,
    world: usize,
}

/// One step's batch: next-token targets everywhere, or a synthetic task's answers.
enum Batch {
    Next {
        inputs: Tensor,
        targets: Tensor,
    }, // (B, L) each
    Answers(AnswerBatch),
    /// Text windows plus reading examples (retrieval in the loop): both losses, summed.
    Reading {
        inputs: Tensor,
        targets: Tensor,
        reading: AnswerBatch,
    },
}

impl Batcher<'_> {
    fn next(&mut self) -> Result<Batch> {
        if let Some(kinds) = self.fresh_tasks {
            // Every rank draws (and tokenizes) the whole batch, so the draws are the one-rank run's.
            let seqs: Vec<Sequence> = (0..self.batch)
                .map(|_| tasks::answer_row(kinds, self.seq_len, self.tok, self.eot, &mut self.rng))
                .collect::<Result<_>>()?;
            return Ok(Batch::Answers(synthetic::batch(&seqs[rows(self.batch, self.rank, self.world)])?));
        }
        match self.data {
            Data::Text { train_stream: stream, reading, .. } => {
                let span = stream.len() - self.seq_len - 1;
                let starts: Vec<usize> = (0..self.batch).map(|_| self.rng.below(span + 1)).collect();
                let starts = &starts[rows(self.batch, self.rank, self.world)];
                let mut ids = Vec::with_capacity(starts.len() * (self.seq_len + 1));
                for &s in starts {
                    ids.extend_from_slice(&stream[s..s + self.seq_len + 1]);
                }
                let data = Tensor::from_vec(ids, (starts.len(), self.seq_len + 1), &Device::Cpu)?;
                let (inputs, targets) = (data.narrow(1, 0, self.seq_len)?, data.narrow(1, 1, self.seq_len)?);
                let Some(r) = reading else { return Ok(Batch::Next { inputs, targets }) };
                let items: Vec<&QaItem> = (0..r.batch).map(|_| &r.train[self.rng.below(r.train.len())]).collect();
                let mut examples = Vec::with_capacity(r.batch / self.world);
                for item in &items[rows(r.batch, self.rank, self.world)] {
                    let p = r.pool.prompt(&item.question);
                    examples.push(reading::example_tokens(self.tok, self.eot, &p, &item.answer)?);
                }
                Ok(Batch::Reading { inputs, targets, reading: reading::answer_batch(&examples, self.eot)? })
            }
            Data::Synthetic { task, .. } => {
                let seqs: Vec<Sequence> = (0..self.batch).map(|_| task.instance(self.seq_len, &mut self.rng)).collect();
                Ok(Batch::Answers(synthetic::batch(&seqs[rows(self.batch, self.rank, self.world)])?))
            }
        }
    }
}

impl Batch {
    /// The batch on `device` (built on the CPU by the batcher).
    fn into_device(self, device: &Device) -> Result<Batch> {
        if device.is_cpu() {
            return Ok(self);
        }
        let answers = |b: AnswerBatch| -> Result<AnswerBatch> {
            Ok(AnswerBatch {
                inputs: b.inputs.to_device(device)?,
                positions: b.positions.to_device(device)?,
                targets: b.targets.to_device(device)?,
            })
        };
        Ok(match self {
            Batch::Next { inputs, targets } => {
                Batch::Next { inputs: inputs.to_device(device)?, targets: targets.to_device(device)? }
            }
            Batch::Answers(b) => Batch::Answers(answers(b)?),
            Batch::Reading { inputs, targets, reading } => Batch::Reading {
                inputs: inputs.to_device(device)?,
                targets: targets.to_device(device)?,
                reading: answers(reading)?,
            },
        })
    }

    /// The losses, and the reading examples' answer loss on its own when there are some. With
    /// `shares` (a rank of several), each term is scaled by the rank's share of the global batch,
    /// so that the ranks' losses (and gradients) sum to the global batch's.
    fn loss(&self, model: &Model, shares: Option<Shares>) -> Result<(Losses, Option<Tensor>)> {
        let Some(s) = shares else {
            return Ok(match self {
                Batch::Next { inputs, targets } => (model.loss(inputs, targets)?, None),
                Batch::Answers(b) => (model.loss_at(&b.inputs, &b.positions, &b.targets)?, None),
                Batch::Reading { inputs, targets, reading: b } => {
                    let text = model.loss(inputs, targets)?;
                    let read = model.loss_at(&b.inputs, &b.positions, &b.targets)?;
                    // `ce` stays the text loss (comparable with runs without retrieval); the reading
                    // loss is logged on its own.
                    let total = (&text.total + &read.total)?;
                    (Losses { total, ce: text.ce, aux: (&text.aux + &read.aux)? }, Some(read.ce))
                }
            });
        };
        let (ce, aux, read) = match self {
            Batch::Next { inputs, targets } => {
                let l = model.loss(inputs, targets)?;
                ((l.ce * s.text)?, l.aux, None)
            }
            Batch::Answers(b) => {
                let l = model.loss_at(&b.inputs, &b.positions, &b.targets)?;
                ((l.ce * s.answers)?, l.aux, None)
            }
            Batch::Reading { inputs, targets, reading: b } => {
                let text = model.loss(inputs, targets)?;
                let read = model.loss_at(&b.inputs, &b.positions, &b.targets)?;
                ((text.ce * s.text)?, (&text.aux + &read.aux)?, Some((read.ce * s.answers)?))
            }
        };
        let aux = (aux * s.aux)?;
        let total = match &read {
            Some(r) => ((&ce + r)? + &aux)?,
            None => (&ce + &aux)?,
        };
        Ok((Losses { total, ce, aux }, read))
    }

    /// Text tokens and answer tokens whose losses this batch averages.
    fn counts(&self) -> (usize, usize) {
        match self {
            Batch::Next { targets, .. } => (targets.elem_count(), 0),
            Batch::Answers(b) => (0, b.targets.elem_count()),
            Batch::Reading { targets, reading, .. } => (targets.elem_count(), reading.targets.elem_count()),
        }
    }

    /// Tokens the model read this step.
    fn tokens(&self) -> Result<u64> {
        Ok(match self {
            Batch::Next { inputs, .. } => inputs.elem_count() as u64,
            Batch::Answers(b) => b.inputs.elem_count() as u64,
            Batch::Reading { inputs, reading, .. } => (inputs.elem_count() + reading.inputs.elem_count()) as u64,
        })
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    Train {
        step: usize,
        tokens: u64,
        loss: f64,
        ce: f64,
        aux: f64,
        lr: f64,
        grad_norm: f64,
        tok_per_s: f64,
        elapsed_s: f64,
        /// Answer loss of the step's reading examples (`--retrieval`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reading_loss: Option<f64>,
        /// How evenly the step's tokens were routed over the experts: the entropy of each MoE
        /// layer's expert loads over ln(experts), averaged (1 = even; absent without MoE).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expert_load_entropy: Option<f64>,
    },
    Eval {
        step: usize,
        valid_loss: f64,
        valid_perplexity: f64,
        /// Exact match on held-out sequences at the training length (synthetic tasks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accuracy: Option<f64>,
    },
}

impl Metric {
    fn step(&self) -> usize {
        match self {
            Metric::Train { step, .. } | Metric::Eval { step, .. } => *step,
        }
    }
}

/// Reads `metrics.jsonl` (missing file: empty).
pub fn read_metrics(dir: &Path) -> Result<Vec<Metric>> {
    let path = dir.join(METRICS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // A line cut short by a kill is dropped; every complete line must parse.
    let complete = if text.ends_with('\n') { &text[..] } else { &text[..text.rfind('\n').map_or(0, |i| i + 1)] };
    complete
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
        .collect()
}

/// (tokens trained, held-out accuracy) at each periodic evaluation that measured one.
pub fn accuracy_curve(metrics: &[Metric]) -> Vec<crate::export::CurvePoint> {
    let mut tokens_at_step = std::collections::HashMap::new();
    let mut curve = Vec::new();
    for m in metrics {
        match m {
            Metric::Train { step, tokens, .. } => {
                tokens_at_step.insert(*step, *tokens);
            }
            Metric::Eval { step, accuracy: Some(accuracy), .. } => {
                if let Some(&tokens) = tokens_at_step.get(step) {
                    curve.push(crate::export::CurvePoint { tokens, accuracy: *accuracy });
                }
            }
            Metric::Eval { .. } => {}
        }
    }
    curve
}

/// This build's version: crate version + git commit.
pub fn code_version() -> String {
    format!("{}+{}", env!("CARGO_PKG_VERSION"), env!("ITERA_GIT_VERSION"))
}

/// Trains into `out` (created if needed). With `resume`, continues from `out`'s checkpoint if
/// there is one; without, refuses to touch a folder that holds one. Returns the final metadata.
pub fn train(args: &TrainArgs, out: &Path, resume: bool) -> Result<CheckpointMeta> {
    let args = args.resolve()?;
    let previous = if Checkpoint::exists(out) {
        if !resume {
            bail!(
                "{} already holds a checkpoint; pass --resume to continue it, or choose another --out",
                out.display()
            );
        }
        Some(Checkpoint::load(out)?)
    } else {
        None
    };
    // Process-wide, before any model is built (data-parallel ranks share it); for the GPU's
    // products only: the evaluations run on a CPU copy, in f32.
    if args.autocast != Autocast::F32 && args.device == DeviceSpec::Cpu {
        bail!(
            "--autocast {}: mixed precision is for GPUs (`--device cuda`); on this CPU bf16 products run at half \
             the f32 rate (docs/candle.md)",
            args.autocast.name()
        );
    }
    itera_model::ops::set_autocast(args.autocast.dtype(), false)?;
    if let Some(ck) = &previous {
        check_resumable(&ck.meta.args, &args)?;
        if ck.meta.step >= args.steps() && ck.meta.final_eval.is_some() {
            eprintln!("{}: already trained ({} steps); nothing to do", out.display(), ck.meta.step);
            return Ok(ck.meta.clone());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // What earlier runs killed mid-write left (their temp files) goes.
    crate::files::remove_stale_temps(out, None);

    // ---- data
    let tok_path = out.join("tokenizer.json");
    let seq_len = args.seq_len();
    let (data, tokenizer) = match args.corpus {
        CorpusSpec::Synthetic(task) => {
            // At most ~256K tokens per periodic evaluation (64 sequences of 4096 for copying).
            let n = (SYNTHETIC_VALID_TOKENS / task.input_len(seq_len)).clamp(32, SYNTHETIC_VALID);
            let valid = task.instances(n, seq_len, args.seed ^ synthetic::VALID_SALT);
            (Data::Synthetic { task, valid }, task.tokenizer()?)
        }
        _ => {
            let source =
                Source::load(&args.corpus, args.world_entities, args.world_unseen, args.seed, args.valid_fraction)?;
            let tokenizer = if previous.is_some() && tok_path.exists() {
                data::load_tokenizer(&tok_path)?
            } else if let Some(p) = &args.tokenizer {
                data::load_tokenizer(p)?
            } else {
                let tok = match args.vocab_size {
                    Some(v) => data::train_tokenizer(&source.corpus.train, v)?,
                    None => data::train_tokenizer_up_to(&source.corpus.train, DEFAULT_VOCAB_SIZE)?,
                };
                let (n, name) = (tok.get_vocab_size(true), &source.corpus.name);
                eprintln!("trained a {n}-token byte-level BPE tokenizer on {name}");
                tok
            };
            let train_stream = encode_documents(&tokenizer, &source.corpus.train)?;
            let valid_stream = encode_documents(&tokenizer, &source.corpus.valid)?;
            for (name, s) in [("training", &train_stream), ("validation", &valid_stream)] {
                if s.len() < seq_len + 2 {
                    bail!(
                        "the {name} split has {} tokens; --seq-len {seq_len} needs at least {}",
                        s.len(),
                        seq_len + 2
                    );
                }
            }
            let reading = match (&args.retrieval, &source.world) {
                (Some(dir), Some(world)) => {
                    let reader = Reader::load(dir, args.reading(), world)?;
                    // The periodic accuracy reads for people never trained on where there are some.
                    let unseen = world.qa_unseen();
                    let asked = if unseen.is_empty() { world.qa_heldout() } else { unseen };
                    let valid = reading::spread(&asked, READING_VALID);
                    let batch = args.reading_batch.unwrap_or(args.batch_size);
                    let (pool, train) = match args.reading_entities {
                        0 => (Reader { index: reader.index.clone(), config: reader.config }, world.qa_train()),
                        n => reading_pool(args.seed, n, args.reading_places, world.config.seed, &reader)?,
                    };
                    Some(Reading { pool, train, reader, valid, batch })
                }
                _ => None,
            };
            if reading.as_ref().is_some_and(|r| r.train.is_empty()) {
                bail!("--retrieval needs QA-train entities to read for; this world has none");
            }
            (Data::Text { source, train_stream, valid_stream, reading }, tokenizer)
        }
    };
    data::save_tokenizer(&tokenizer, &tok_path)?;
    let eot = eot_id(&tokenizer)?;

    // ---- model and optimizer
    let cfg = args.model_config(tokenizer.get_vocab_size(true))?;
    if let Some(ck) = &previous {
        if ck.meta.config != cfg {
            bail!("the checkpoint's model config differs from this run's (tokenizer or preset changed?)");
        }
    }
    // --init-from: the source's weights, for a fresh run (a resumed one has its own).
    let init = match (&previous, &args.init_from) {
        (None, Some(dir)) => Some(init_weights(dir, &cfg)?),
        _ => None,
    };
    write_json_atomic(&out.join("config.json"), &cfg)?;
    let device = args.device.open()?;
    let mut rep = Replica::new(&cfg, &args, &device)?;
    if let Some(w) = &init {
        assign_varmap(&rep.varmap, w).context("loading the --init-from weights")?;
    }
    let fresh_tasks = match (&args.corpus, args.task_loss) {
        (CorpusSpec::Tasks(kinds), TaskLoss::Answers) => Some(kinds.as_slice()),
        _ => None,
    };
    let batcher_for = |rank: usize, rng: Rng| Batcher {
        data: &data,
        fresh_tasks,
        rng,
        batch: args.batch_size,
        seq_len,
        tok: &tokenizer,
        eot,
        rank,
        world: args.world_size,
    };
    let mut batcher = batcher_for(0, Rng::new(args.seed ^ 0x0da7_a5ee_d000_0001));
    let mut meta = CheckpointMeta {
        step: 0,
        rng_state: batcher.rng.state(),
        tokens_seen: 0,
        elapsed_s: 0.0,
        args: args.clone(),
        config: cfg.clone(),
        threads: candle_core::utils::get_num_threads(),
        code_version: code_version(),
        last_valid_loss: None,
        final_eval: None,
    };
    let mut metrics = read_metrics(out)?;
    if let Some(ck) = &previous {
        rep.restore(ck)?;
        batcher.rng = Rng::new(ck.meta.rng_state);
        meta = CheckpointMeta {
            args: args.clone(),
            threads: meta.threads,
            code_version: meta.code_version,
            ..ck.meta.clone()
        };
        // Forget metrics logged after the checkpoint: the resumed run logs those steps again.
        metrics.retain(|m| m.step() <= meta.step);
        eprintln!("resuming {} at step {}", out.display(), meta.step);
    } else {
        metrics.clear();
    }
    let mut log = MetricsLog::create(out, &metrics)?;
    // TensorBoard's text tab: how the run was made (the arguments and the model's config).
    let hparams = serde_json::json!({ "args": &args, "config": &cfg, "code_version": &meta.code_version });
    let hparams = serde_json::to_string_pretty(&hparams)?;
    log.events.text(meta.step, "hparams", &format!("```\n{hparams}\n```"))?;

    let p = cfg.param_count();
    let corpus_tokens = match &data {
        Data::Text { train_stream, .. } => format!("{} training tokens", train_stream.len()),
        Data::Synthetic { task, .. } => format!("{task} drawn fresh every step"),
    };
    eprintln!(
        "{} {}: {:.2}M parameters ({:.2}M active per token), {corpus_tokens}, {} steps of {} × {}",
        args.model,
        args.preset,
        p.total as f64 / 1e6,
        p.active_per_token as f64 / 1e6,
        args.steps(),
        args.batch_size,
        args.input_len()
    );

    // ---- the loop
    let steps = args.steps();
    let bar = progress_bar(steps, meta.step);
    let say = |line: String| if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) };
    let eval_starts = match &data {
        Data::Text { valid_stream, .. } => {
            windows(valid_stream.len(), seq_len, Some(args.eval_batches * args.batch_size))
        }
        Data::Synthetic { .. } => Vec::new(),
    };
    // Ranks 1.. of a data-parallel run: threads that take the same steps on their rows of each
    // batch and stop with rank 0 (which evaluates, logs and writes the checkpoints).
    let (start_step, start_rng) = (meta.step, meta.rng_state);
    let mut ranks = if args.world_size > 1 { local_group(args.world_size) } else { Vec::new() };
    let rank0 = (!ranks.is_empty()).then(|| ranks.remove(0));
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = ranks
            .into_iter()
            .map(|rank| {
                let (cfg, args, previous, batcher_for, init) = (&cfg, &args, &previous, &batcher_for, &init);
                scope.spawn(move || -> Result<()> {
                    let device = args.device.for_rank(rank.rank()).open()?;
                    let mut rep = Replica::new(cfg, args, &device)?;
                    if let Some(ck) = previous {
                        rep.restore(ck)?;
                    } else if let Some(w) = init {
                        assign_varmap(&rep.varmap, w)?;
                    }
                    let mut batcher = batcher_for(rank.rank(), Rng::new(start_rng));
                    for step in start_step..steps {
                        let batch = batcher.next()?.into_device(&device)?;
                        rep.step(&batch, lr_at(step, args), args.grad_clip, Some(&rank))?;
                    }
                    Ok(())
                })
            })
            .collect();
        let led = (|| -> Result<()> {
            let rank0 = rank0; // dropped on the way out, error or not: the workers stop waiting
            let group = rank0.as_ref().map(|r| r as &dyn Collective);
            let started = Instant::now();
            let elapsed_before = meta.elapsed_s;
            while meta.step < steps {
                let step = meta.step;
                let t0 = Instant::now();
                let batch = batcher.next()?.into_device(&device)?;
                let lr = lr_at(step, &args);
                let loads = itera_model::moe::LoadRecording::start();
                let figures = rep.step(&batch, lr, args.grad_clip, group);
                let expert_load_entropy = loads.normalized_entropy();
                drop(loads);
                let StepFigures { loss, ce, aux, reading_loss, tokens: step_tokens, grad_norm } = match figures {
                    Ok(f) => f,
                    Err(e) => {
                        bar.abandon();
                        if let Some(NonFiniteLoss(loss)) = e.downcast_ref::<NonFiniteLoss>() {
                            bail!(
                                "step {}: the loss is {loss}; stopping. The last good checkpoint (step {}) in {} is intact; \
                                 try a lower --lr or a stronger --grad-clip",
                                step + 1,
                                Checkpoint::load(out).map(|c| c.meta.step).unwrap_or(0),
                                out.display()
                            );
                        }
                        return Err(e);
                    }
                };

                meta.step += 1;
                meta.tokens_seen += step_tokens;
                meta.rng_state = batcher.rng.state();
                meta.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                let tok_per_s = step_tokens as f64 / t0.elapsed().as_secs_f64();
                log.write(&Metric::Train {
                    step: meta.step,
                    tokens: meta.tokens_seen,
                    loss,
                    ce,
                    aux,
                    lr,
                    grad_norm,
                    tok_per_s,
                    elapsed_s: meta.elapsed_s,
                    reading_loss,
                    expert_load_entropy,
                })?;
                bar.set_position(meta.step as u64);
                bar.set_message(format!("loss {ce:.3} | {tok_per_s:.0} tok/s"));

                if meta.step.is_multiple_of(args.eval_interval) || meta.step == steps {
                    let cpu_copy = cpu_model(&rep.varmap, &cfg, &device)?;
                    let model = cpu_copy.as_ref().unwrap_or(&rep.model);
                    let (valid_loss, accuracy) = match &data {
                        Data::Text { valid_stream, reading, .. } => {
                            let loss = stream_loss(model, valid_stream, seq_len, &eval_starts, args.batch_size)?.mean();
                            let accuracy = match reading {
                                Some(r) => Some(
                                    reading::qa_with_retrieval(model, &tokenizer, eot, &r.reader, &r.valid)?
                                        .0
                                        .accuracy(),
                                ),
                                None => None,
                            };
                            (loss, accuracy)
                        }
                        Data::Synthetic { task, valid } => {
                            let (loss, r) = synthetic::score(model, *task, valid, args.batch_size)?;
                            (loss, Some(r.accuracy()))
                        }
                    };
                    meta.last_valid_loss = Some(valid_loss);
                    let valid_perplexity = valid_loss.exp();
                    log.write(&Metric::Eval { step: meta.step, valid_loss, valid_perplexity, accuracy })?;
                    let acc = accuracy.map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a));
                    say(format!("step {}: train loss {ce:.4}, val loss {valid_loss:.4}{acc}", meta.step));
                    let title = format!("{} {} on {} (step {})", args.model, args.preset, data.name(), meta.step);
                    plot::loss_curves_svg(&out.join(LOSS_PLOT), &title, &log.lines, None)?;
                }
                if meta.step.is_multiple_of(args.checkpoint_interval) && meta.step < steps {
                    save_checkpoint(out, &meta, &rep.varmap, &rep.opt)?;
                }
            }
            Ok(())
        })();
        let mut failed = None;
        for (i, w) in workers.into_iter().enumerate() {
            let e = match w.join() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.context(format!("data-parallel rank {}", i + 1)),
                Err(_) => anyhow::anyhow!("data-parallel rank {} panicked", i + 1),
            };
            failed.get_or_insert(e);
        }
        match (led, failed) {
            // Rank 0 stopped because a worker left: the worker's error says why.
            (Err(e), Some(w)) if format!("{e:#}").contains("left the group") => Err(w),
            (Err(e), _) => Err(e),
            (Ok(()), Some(w)) => Err(w),
            (Ok(()), None) => Ok(()),
        }
    })?;
    bar.finish_and_clear();

    // ---- final evaluation, then the last checkpoint
    let cpu_copy = cpu_model(&rep.varmap, &cfg, &device)?;
    let model = cpu_copy.as_ref().unwrap_or(&rep.model);
    let final_eval = match &data {
        Data::Text { source, train_stream, valid_stream, reading } => {
            let reader = reading.as_ref().map(|r| &r.reader);
            final_eval(model, &tokenizer, eot, source, train_stream, valid_stream, reader, &args)?
        }
        Data::Synthetic { task, valid } => synthetic_final_eval(model, *task, valid, &args)?,
    };
    say(format!(
        "done: {} steps, {} tokens in {:.0} s; valid loss {:.4} (ppl {:.2}, {:.3} bits/byte; unigram {:.4}){}",
        meta.step,
        meta.tokens_seen,
        meta.elapsed_s,
        final_eval.valid_loss,
        final_eval.valid_perplexity,
        final_eval.valid_bits_per_byte,
        final_eval.unigram_loss,
        final_eval
            .world_qa
            .as_ref()
            .map_or(String::new(), |q| format!("; world QA {}/{} held-out correct", q.correct, q.total))
            + &final_eval.retrieval.as_ref().map_or(String::new(), |r| {
                let unseen = r.unseen.as_ref().map_or(String::new(), |u| format!(", unseen {}/{}", u.correct, u.total));
                format!(" ({}/{} with retrieval{unseen})", r.heldout.correct, r.heldout.total)
            })
            + &final_eval
                .tasks
                .iter()
                .map(|t| format!("; {} {}/{} answers right", t.label(), t.answers_correct, t.answers))
                .collect::<String>()
    ));
    let title = format!("{} {} on {}", args.model, args.preset, data.name());
    plot::loss_curves_svg(&out.join(LOSS_PLOT), &title, &log.lines, Some(final_eval.unigram_loss))?;
    meta.final_eval = Some(final_eval);
    save_checkpoint(out, &meta, &rep.varmap, &rep.opt)?;
    Ok(meta)
}

/// Evaluation runs on the CPU (its batches and decoding state are built there): a CPU copy of the
/// weights when training runs elsewhere, `None` when the training model is on the CPU already.
fn cpu_model(varmap: &candle_nn::VarMap, cfg: &Config, device: &Device) -> Result<Option<Model>> {
    if device.is_cpu() {
        return Ok(None);
    }
    let weights: HashMap<String, Tensor> = {
        let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("var map lock poisoned"))?;
        data.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().to_device(&Device::Cpu)?))).collect::<Result<_>>()?
    };
    Ok(Some(itera_model::weights::build_checked(weights, candle_core::DType::F32, &Device::Cpu, |vb| {
        Model::new(cfg, vb)
    })?))
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// One rank's model, its variables (in name order, the same on every rank) and optimizer.
struct Replica {
    varmap: candle_nn::VarMap,
    vars: Vec<candle_core::Var>,
    model: Model,
    opt: AdamW,
}

/// A training step's figures (summed over the ranks of a data-parallel run).
struct StepFigures {
    loss: f64,
    ce: f64,
    aux: f64,
    reading_loss: Option<f64>,
    tokens: u64,
    grad_norm: f64,
}

/// The step's loss was not a finite number: nothing was updated.
#[derive(Debug)]
struct NonFiniteLoss(f64);

impl std::fmt::Display for NonFiniteLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the loss is {}", self.0)
    }
}

impl std::error::Error for NonFiniteLoss {}

impl Replica {
    /// The model initialised from `--seed` (the same weights on every rank) on `device`.
    fn new(cfg: &Config, args: &TrainArgs, device: &Device) -> Result<Self> {
        let kernels = Kernels::for_device(device);
        if kernels.device_ops {
            itera_model::runtime::single_stream(device);
        }
        let (varmap, mut model) = Model::init_with(cfg, args.seed, args.init, device)?;
        model.set_kernels(kernels);
        let adamw = AdamWConfig { weight_decay: args.weight_decay, ..Default::default() };
        let opt = AdamW::with_device_ops(&varmap, adamw, kernels.device_ops)?;
        let vars = vars_by_name(&varmap)?.into_iter().map(|(_, v)| v).collect();
        Ok(Self { varmap, vars, model, opt })
    }

    /// Weights and optimizer state from a checkpoint.
    fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        assign_varmap(&self.varmap, &ck.weights()).context("restoring the checkpoint's weights")?;
        self.opt.load_state(&ck.tensors, ck.meta.step as u64).context("restoring the optimizer state")?;
        Ok(())
    }

    /// Forward, backward, (with a group) the gradients summed over the ranks, clipping, update.
    fn step(&mut self, batch: &Batch, lr: f64, clip: f64, group: Option<&dyn Collective>) -> Result<StepFigures> {
        let shares = group
            .map(|g| {
                let (text, answers) = batch.counts();
                Shares::of(text, answers, g)
            })
            .transpose()?;
        let (losses, reading) = batch.loss(&self.model, shares)?;
        let read = reading.as_ref().map(scalar).transpose()?;
        let mut f = [
            scalar(&losses.total)?,
            scalar(&losses.ce)?,
            scalar(&losses.aux)?,
            read.unwrap_or(0.0),
            batch.tokens()? as f64,
        ];
        if let Some(g) = group {
            let sum = g.all_reduce_sum(f.iter().map(|&x| x as f32).collect())?;
            f.iter_mut().zip(sum).for_each(|(a, b)| *a = f64::from(b));
        }
        let [loss, ce, aux, read_sum, tokens] = f;
        if !loss.is_finite() {
            return Err(NonFiniteLoss(loss).into());
        }
        let mut grads = losses.total.backward()?;
        if let Some(g) = group {
            all_reduce_grads(&mut grads, &self.vars, g)?;
        }
        let device_ops = self.model.kernels().device_ops;
        // clipping's factor goes into the update (no pass over the gradients of its own)
        let grad_norm = if clip > 0.0 { grad_norm_with(&grads, &self.varmap, device_ops)? } else { 0.0 };
        let scale = if clip > 0.0 { clip_factor(grad_norm, clip) } else { 1.0 };
        self.opt.step_scaled(&grads, lr, scale)?;
        Ok(StepFigures { loss, ce, aux, reading_loss: read.map(|_| read_sum), tokens: tokens as u64, grad_norm })
    }
}

fn save_checkpoint(out: &Path, meta: &CheckpointMeta, varmap: &candle_nn::VarMap, opt: &AdamW) -> Result<()> {
    let mut tensors = varmap_tensors(varmap)?;
    tensors.extend(opt.state_tensors()?);
    Checkpoint::save(out, meta, &tensors)
}

/// Whole-split loss, bits per byte, the unigram baseline, and world QA.
#[allow(clippy::too_many_arguments)]
pub(crate) fn final_eval(
    model: &Model,
    tok: &tokenizers::Tokenizer,
    eot: u32,
    source: &Source,
    train_stream: &[u32],
    valid_stream: &[u32],
    reader: Option<&Reader>,
    args: &TrainArgs,
) -> Result<FinalEval> {
    let starts = windows(valid_stream.len(), args.seq_len(), Some(FINAL_EVAL_WINDOWS));
    let v: LossSum = stream_loss(model, valid_stream, args.seq_len(), &starts, args.batch_size)?;
    // Bytes covered by the scored tokens, pro rata to the share of the stream scored.
    let covered = v.tokens as f64 / (valid_stream.len() - 1) as f64;
    let bytes = (source.corpus.valid_bytes() as f64 * covered).round() as usize;
    let (world_qa, retrieval) = match (&source.world, args.qa_questions) {
        (Some(world), n) if n > 0 => {
            let (qa, retrieval) = reading::world_qa(model, tok, eot, world, reader, n)?;
            (Some(qa), retrieval)
        }
        _ => (None, None),
    };
    let tasks = match args.qa_questions {
        0 => Vec::new(),
        n => task_accuracy(model, tok, eot, &source.task_eval_instances(n))?,
    };
    Ok(FinalEval {
        retrieval,
        valid_loss: v.mean(),
        valid_perplexity: v.perplexity(),
        valid_bits_per_byte: v.bits_per_byte(bytes),
        valid_tokens: v.tokens,
        world_qa,
        unigram_loss: unigram_loss(train_stream, valid_stream, tok.get_vocab_size(true)),
        tasks,
    })
}

/// A synthetic task's figures: the answer loss on the validation sequences (each answer is one
/// one-byte symbol, so bits per byte are bits per answer), the loss of guessing uniformly among
/// the symbols (the unigram model of uniformly drawn answers), and held-out exact match at the
/// task's evaluation lengths.
fn synthetic_final_eval(model: &Model, task: SyntheticTask, valid: &[Sequence], args: &TrainArgs) -> Result<FinalEval> {
    let (loss, r) = synthetic::score(model, task, valid, args.batch_size)?;
    let tasks = match args.qa_questions {
        0 => Vec::new(),
        n => synthetic::evaluate(model, task, args.seq_len(), n, args.seed)?,
    };
    Ok(FinalEval {
        valid_loss: loss,
        valid_perplexity: loss.exp(),
        valid_bits_per_byte: loss / std::f64::consts::LN_2,
        valid_tokens: r.answers,
        world_qa: None,
        retrieval: None,
        unigram_loss: (task.symbols() as f64).ln(),
        tasks,
    })
}

impl Data {
    fn name(&self) -> String {
        match self {
            Data::Text { source, .. } => source.corpus.name.clone(),
            Data::Synthetic { task, .. } => task.to_string(),
        }
    }
}

/// Cross-entropy of the validation tokens under the training split's unigram distribution
/// (add-½ smoothing): the loss of a model that ignores context. A trained LM must beat it.
pub fn unigram_loss(train: &[u32], valid: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![0.5f64; vocab];
    for &t in train {
        counts[t as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    let nll: f64 = valid[1..].iter().map(|&t| -(counts[t as usize] / total).ln()).sum();
    nll / (valid.len() - 1).max(1) as f64
}

/// The f32 weights of `--init-from DIR` (a run folder's checkpoint, or an export's
/// `model.safetensors` or shards), checked to build `cfg`'s model: a model of other dimensions,
/// another vocabulary or a quantized export is an error naming what differs.
fn init_weights(dir: &Path, cfg: &Config) -> Result<HashMap<String, Tensor>> {
    let what = || format!("--init-from {}", dir.display());
    let (source_cfg, weights) = if Checkpoint::exists(dir) {
        let ck = Checkpoint::load(dir)?;
        let w = ck.weights();
        (ck.meta.config, w)
    } else {
        let source_cfg: Config = crate::files::read_json(&dir.join("config.json")).with_context(what)?;
        let single = dir.join(WeightFormat::F32.file_name());
        let w = if single.is_file() {
            let bytes = std::fs::read(&single).with_context(|| format!("reading {}", single.display()))?;
            itera_model::weights::read_safetensors(&bytes, &Device::Cpu)
                .with_context(|| format!("{} is corrupt", single.display()))?
        } else if dir.join(itera_model::weights::SHARD_INDEX).is_file() {
            crate::export::read_export_sharded(dir)?
        } else {
            bail!(
                "{}: holds neither a training checkpoint nor f32 weights (model.safetensors or shards); \
                 a quantized export cannot seed training",
                what()
            );
        };
        (source_cfg, w)
    };
    if source_cfg != *cfg {
        let (a, b) = (serde_json::to_value(&source_cfg)?, serde_json::to_value(cfg)?);
        let diff: Vec<String> = match (a.as_object(), b.as_object()) {
            (Some(a), Some(b)) => a
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .map(|(k, v)| format!("{k} {v} there, {} here", b.get(k).unwrap_or(&serde_json::Value::Null)))
                .collect(),
            _ => Vec::new(),
        };
        bail!("{}: its model differs from this run's ({})", what(), diff.join("; "));
    }
    Ok(weights)
}

fn check_resumable(saved: &TrainArgs, now: &TrainArgs) -> Result<()> {
    let (a, b) = (serde_json::to_value(saved)?, serde_json::to_value(now)?);
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, va) in a {
            if !RESUMABLE_CHANGES.contains(&k.as_str()) && b.get(k) != Some(va) {
                bail!(
                    "cannot resume: --{} was {} in the checkpoint and is {} now",
                    k.replace('_', "-"),
                    va,
                    b.get(k).unwrap_or(&serde_json::Value::Null)
                );
            }
        }
    }
    Ok(())
}

fn progress_bar(steps: usize, at: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] step {pos}/{len} {msg} (ETA {eta})")
            .expect("static progress template")
            .progress_chars("=> "),
    );
    bar.set_position(at as u64);
    bar
}

/// `metrics.jsonl`, rewritten once at start (dropping lines past a resumed step), then appended;
/// the same figures as TensorBoard scalars in an event file beside it.
struct MetricsLog {
    file: std::fs::File,
    lines: Vec<Metric>, // everything in the file, for the plot
    events: EventWriter,
}

/// A metrics line as TensorBoard scalars (tags grouped as `train/...` and `eval/...`).
fn write_scalars(events: &mut EventWriter, m: &Metric) -> Result<()> {
    match m {
        Metric::Train {
            step,
            tokens,
            loss,
            ce,
            aux,
            lr,
            grad_norm,
            tok_per_s,
            reading_loss,
            expert_load_entropy,
            ..
        } => {
            let mut v = vec![
                ("train/loss", *loss),
                ("train/cross_entropy", *ce),
                ("train/moe_aux_loss", *aux),
                ("train/lr", *lr),
                ("train/grad_norm", *grad_norm),
                ("train/tokens_per_s", *tok_per_s),
                ("train/tokens", *tokens as f64),
            ];
            if let Some(r) = reading_loss {
                v.push(("train/reading_loss", *r));
            }
            if let Some(h) = expert_load_entropy {
                v.push(("train/expert_load_entropy", *h));
            }
            events.scalars(*step, &v)
        }
        Metric::Eval { step, valid_loss, valid_perplexity, accuracy } => {
            let mut v = vec![("eval/valid_loss", *valid_loss), ("eval/valid_perplexity", *valid_perplexity)];
            if let Some(a) = accuracy {
                v.push(("eval/accuracy", *a));
            }
            events.scalars(*step, &v)
        }
    }
}

impl MetricsLog {
    fn create(dir: &Path, keep: &[Metric]) -> Result<Self> {
        let path = dir.join(METRICS_FILE);
        let mut text = String::new();
        for m in keep {
            text.push_str(&serde_json::to_string(m)?);
            text.push('\n');
        }
        write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut events = EventWriter::create(dir)?;
        for m in keep {
            write_scalars(&mut events, m)?;
        }
        Ok(Self { file, lines: keep.to_vec(), events })
    }

    fn write(&mut self, m: &Metric) -> Result<()> {
        let mut line = serde_json::to_string(m)?;
        line.push('\n');
        self.lines.push(m.clone());
        self.file.write_all(line.as_bytes()).context("appending to metrics.jsonl")?;
        write_scalars(&mut self.events, m)
    }
}
