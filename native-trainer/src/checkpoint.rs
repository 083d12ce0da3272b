//! Training checkpoints: one safetensors file holding the weights (under their Hugging Face
//! names), the AdamW moments (`adamw.m.*`, `adamw.v.*`) and, in its metadata, everything else a
//! run needs to continue bit-identically: step, data-sampler RNG state, tokens seen, wall time,
//! the run's arguments and model config. One file, replaced atomically.

use crate::eval::QaResult;
use crate::files::write_atomic;
use crate::train::TrainArgs;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use itera_model::weights::{read_safetensors, write_safetensors_with_metadata};
use itera_model::Config;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Key of the JSON metadata inside the safetensors header.
const META_KEY: &str = "itera_checkpoint";
/// Prefix of optimizer tensors; weights are the rest.
pub const OPTIMIZER_PREFIX: &str = "adamw.";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub step: usize,      // optimizer steps completed
    pub rng_state: u64,   // the data sampler's stream: the data cursor
    pub tokens_seen: u64, // training tokens consumed
    pub elapsed_s: f64,   // training wall time, summed over resumes
    pub args: TrainArgs,  // the run's arguments (resolved)
    pub config: Config,   // the model
    pub threads: usize,   // compute threads of the run that wrote it
    pub code_version: String,
    pub last_valid_loss: Option<f64>,
    pub final_eval: Option<FinalEval>, // set once the run has finished
}

/// Figures measured at the end of a run; the export's manifest repeats them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalEval {
    pub valid_loss: f64,
    pub valid_perplexity: f64,
    pub valid_bits_per_byte: f64,
    pub valid_tokens: usize,
    pub world_qa: Option<QaResult>, // held-out questions (entities whose QA pairs were never trained on)
    /// The same questions read with retrieval, and questions about unseen entities (`--retrieval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<crate::reading::RetrievalEval>,
    pub unigram_loss: f64, // entropy of the training unigram distribution on the valid split
    #[serde(default)]
    pub tasks: Vec<crate::tasks::TaskResult>, // held-out instances of the targeted tasks trained on
}

pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Writes weights + optimizer tensors + metadata atomically to `dir/checkpoint.safetensors`.
    pub fn save(dir: &Path, meta: &CheckpointMeta, tensors: &[(String, Tensor)]) -> Result<()> {
        let json = serde_json::to_string(meta)?;
        let bytes = write_safetensors_with_metadata(tensors, HashMap::from([(META_KEY.to_string(), json)]))?;
        write_atomic(&dir.join(CHECKPOINT_FILE), &bytes)
    }

    /// Reads `dir/checkpoint.safetensors`; errors name the file and what is wrong.
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading checkpoint {}", path.display()))?;
        Self::from_bytes(&path, &bytes)
    }

    /// A checkpoint from the bytes of `path` (named in every error).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("checkpoint {} is corrupt or not safetensors: {e}", path.display()))?;
        let json = header.metadata().as_ref().and_then(|m| m.get(META_KEY)).with_context(|| {
            format!("{} is not an Itera-Lite checkpoint (no `{META_KEY}` metadata)", path.display())
        })?;
        let meta: CheckpointMeta = serde_json::from_str(json)
            .with_context(|| format!("checkpoint {} has unreadable metadata", path.display()))?;
        // The config builds the model the weights go into: check it before anything is built.
        meta.config.validate().map_err(|e| anyhow::anyhow!("checkpoint {}: config: {e}", path.display()))?;
        let tensors = read_safetensors(bytes, &Device::Cpu)
            .with_context(|| format!("checkpoint {} is corrupt", path.display()))?;
        Ok(Checkpoint { meta, tensors })
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(CHECKPOINT_FILE).is_file()
    }

    /// The model weights, without the optimizer state.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter(|(n, _)| !n.starts_with(OPTIMIZER_PREFIX))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    }
}
