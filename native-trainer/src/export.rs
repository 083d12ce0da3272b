//! Export: one folder per model, as Hugging Face expects it, plus a manifest of measured figures.
//!
//! - `model.safetensors`: the weights under HF names (f32, tied head not stored);
//! - `config.json`: `LlamaConfig` / `MambaConfig` keys (`model_type`, `architectures`, ...);
//!   Itera-Lite with MoE adds the keys documented in docs/weights.md;
//! - `tokenizer.json`: the byte-level BPE tokenizer;
//! - `manifest.json`: name, architecture, parameters, every file's bytes and sha256, how it was
//!   trained, what it scored, and the code version. The page reads it first and checks each
//!   file's sha256 against it;
//! - `index/` (a model trained with `--retrieval`): the retrieval index it reads from, as
//!   `native-trainer index` wrote it (`index.json`, vectors, scales, IDF, documents), each file
//!   listed in the manifest too, and the manifest's `retrieval` says how the model reads it.

use crate::checkpoint::{Checkpoint, CheckpointMeta, FinalEval};
use crate::data;
use crate::files::{read_json, sha256_hex, write_atomic, write_dir_atomic, write_json_atomic};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use itera_model::weights::{
    read_safetensors, read_sharded, write_gguf, write_safetensors, write_sharded, WeightFormat, SHARD_INDEX,
};
use itera_model::{Config, Model, ParamCount};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Training {
    pub corpus: String,
    pub preset: String,
    pub seed: u64,
    pub steps: usize,
    pub tokens: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub threads: usize,
    /// Held-out exact match against training tokens, from the run's periodic evaluations
    /// (the paper's synthetic tasks); empty for other corpora.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accuracy_curve: Vec<CurvePoint>,
    /// `--task-loss answers`: the task corpus trained on its answers alone (the Mamba paper's
    /// recipe); absent for the every-token loss and for other corpora. Part of what makes two
    /// models comparable in the report, and of their names there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_loss: Option<crate::train::TaskLoss>,
    /// `--init-from`: the run folder or export whose weights this run started from (its steps and
    /// tokens are not in `steps` and `tokens`, which count this run's alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
}

/// One periodic evaluation of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub tokens: u64,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,         // e.g. "itera-lite-demo"
    pub architecture: String, // "baseline" | "itera-lite"
    pub model_type: String,   // HF: "llama" | "mamba"
    pub dtype: String,        // of model.safetensors
    pub params: ParamCount,
    pub files: Vec<FileEntry>,
    pub training: Training,
    pub eval: Option<FinalEval>,
    pub code_version: String,
    /// How to read the index in `index/` (models trained with retrieval); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<ManifestRetrieval>,
    /// Bytes of the weights file in each format (`f32`: model.safetensors; `f16`, `q8_0`,
    /// `q4_0`: the model.gguf `quantize` writes), measured at export by serialising them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub weight_bytes: std::collections::BTreeMap<String, u64>,
    /// For an export made by `quantize`: the f32 weights it was made from. Its `eval` is then
    /// absent (the source's figures were measured in f32; `eval --model` measures this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized_from: Option<FileEntry>,
}

impl Manifest {
    /// The format of the export's weights, from `dtype`.
    pub fn weight_format(&self) -> Result<WeightFormat> {
        WeightFormat::from_manifest_dtype(&self.dtype).map_err(|e| anyhow::anyhow!("manifest.json dtype: {e}"))
    }
}

/// The export's retrieval: where its index is, and the reading format the model was trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRetrieval {
    /// Folder of the index inside the export (`index`).
    pub dir: String,
    /// Documents in the index.
    pub documents: usize,
    /// Documents placed in the context per question.
    pub k: usize,
    /// `question-first` or `document-first`.
    pub order: crate::reading::ReadingOrder,
}

/// Folder of the retrieval index inside an export.
pub const INDEX_DIR: &str = "index";

/// The `config.json` that `transformers` loads: our config (HF keys already) plus the keys HF
/// needs to pick the class and the defaults it would otherwise guess.
pub fn hf_config(cfg: &Config, eot: u32) -> Result<Value> {
    let mut v = serde_json::to_value(cfg)?;
    let obj = v.as_object_mut().context("config serialises to an object")?;
    let extra = match cfg {
        Config::Baseline(_) => json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "use_cache": true,
        }),
        Config::IteraLite(c) => json!({
            "architectures": ["MambaForCausalLM"],
            "hidden_act": "silu",
            "intermediate_size": c.d_inner(),
            "initializer_range": 0.02,
            "residual_in_fp32": true,
            "rescale_prenorm_residual": false,
            "time_step_scale": 1.0,
            "time_step_init_scheme": "random",
            "use_cache": true,
        }),
    };
    for (k, val) in extra.as_object().into_iter().flatten() {
        obj.insert(k.clone(), val.clone());
    }
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        obj.insert(k.into(), json!(eot));
    }
    obj.insert("torch_dtype".into(), json!("float32"));
    Ok(v)
}

/// Writes the export folder `out` from the run folder `run` (which holds the checkpoint and the
/// tokenizer). Every file is written atomically; the manifest last, so a folder with a manifest
/// is complete.
pub fn export(run: &Path, out: &Path) -> Result<Manifest> {
    export_sharded(run, out, None)
}

/// As [`export`]; with `max_shard_bytes`, f32 weights larger than that are written as
/// `model-0000i-of-0000N.safetensors` shards and `model.safetensors.index.json` (Hugging Face's
/// convention) instead of one `model.safetensors`.
pub fn export_sharded(run: &Path, out: &Path, max_shard_bytes: Option<u64>) -> Result<Manifest> {
    let ck = Checkpoint::load(run)?;
    let meta: &CheckpointMeta = &ck.meta;
    if meta.final_eval.is_none() {
        eprintln!(
            "warning: {} is a mid-run checkpoint (step {} of {}); exporting it anyway",
            run.display(),
            meta.step,
            meta.args.steps()
        );
    }
    let tok_path = run.join("tokenizer.json");
    let tokenizer = data::load_tokenizer(&tok_path)?;
    let eot = data::eot_id(&tokenizer)?;
    if tokenizer.get_vocab_size(true) != meta.config.vocab_size() {
        bail!(
            "{} has {} tokens but the model expects {}",
            tok_path.display(),
            tokenizer.get_vocab_size(true),
            meta.config.vocab_size()
        );
    }
    // Build the model from the checkpoint's weights: proves they load before anything is written.
    let weights = ck.weights();
    itera_model::weights::build_checked(weights.clone(), candle_core::DType::F32, &Device::Cpu, |vb| {
        Model::new(&meta.config, vb)
    })
    .context("the checkpoint's weights do not fit its config")?;

    // The whole folder at once: a kill mid-export leaves the previous export whole.
    write_dir_atomic(out, |out| {
        let tensors: Vec<_> = weights.into_iter().collect();
        let f32_bytes = write_safetensors(&tensors)?;
        let mut weight_bytes =
            std::collections::BTreeMap::from([(WeightFormat::F32.name().to_string(), f32_bytes.len() as u64)]);
        for f in [WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Q4_0] {
            weight_bytes.insert(f.name().into(), write_gguf(&tensors, f, &[])?.len() as u64);
        }
        let mut names: Vec<String> = Vec::new();
        match max_shard_bytes {
            Some(max) if f32_bytes.len() as u64 > max => {
                let (shards, index) = write_sharded(&tensors, max)?;
                for (file, bytes) in &shards {
                    write_atomic(&out.join(file), bytes)?;
                    names.push(file.clone());
                }
                write_atomic(&out.join(SHARD_INDEX), &index)?;
                names.push(SHARD_INDEX.into());
                // A single file left from an earlier export would be read instead of the shards.
                let single = out.join(WeightFormat::F32.file_name());
                if single.exists() {
                    std::fs::remove_file(&single).with_context(|| format!("removing {}", single.display()))?;
                }
            }
            _ => {
                write_atomic(&out.join("model.safetensors"), &f32_bytes)?;
                names.push("model.safetensors".into());
            }
        }
        write_json_atomic(&out.join("config.json"), &hf_config(&meta.config, eot)?)?;
        let tok_bytes = std::fs::read(&tok_path).with_context(|| format!("reading {}", tok_path.display()))?;
        write_atomic(&out.join("tokenizer.json"), &tok_bytes)?;

        let a = &meta.args;
        names.extend(["config.json".to_string(), "tokenizer.json".to_string()]);
        // The index the model reads, checked and written again (atomically) inside the export.
        let retrieval = match &a.retrieval {
            None => None,
            Some(dir) => {
                let index = itera_retrieval::Index::load(dir)
                    .with_context(|| format!("loading the run's retrieval index {} to export it", dir.display()))?;
                let index_out = out.join(INDEX_DIR);
                index.save(&index_out).with_context(|| format!("writing {}", index_out.display()))?;
                let index_json = std::fs::read(index_out.join(itera_retrieval::store::INDEX_JSON))?;
                let m = itera_retrieval::store::IndexManifest::parse(&index_json)?;
                names.push(format!("{INDEX_DIR}/{}", itera_retrieval::store::INDEX_JSON));
                names.extend(m.expected_files().iter().map(|f| format!("{INDEX_DIR}/{f}")));
                let c = a.reading();
                Some(ManifestRetrieval { dir: INDEX_DIR.into(), documents: index.len(), k: c.k, order: c.order })
            }
        };
        let files = names
            .iter()
            .map(|name| {
                let bytes = std::fs::read(out.join(name)).with_context(|| format!("reading back {name}"))?;
                Ok(FileEntry { name: name.to_string(), bytes: bytes.len() as u64, sha256: sha256_hex(&bytes) })
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = Manifest {
            // "itera-lite-demo"; "-moe-off" when its blocks are plain Mamba.
            name: match &meta.config {
                Config::IteraLite(c) if c.num_experts == 0 => format!("{}-{}-moe-off", a.model, a.preset),
                _ => format!("{}-{}", a.model, a.preset),
            },
            architecture: a.model.to_string(),
            model_type: match meta.config {
                Config::Baseline(_) => "llama".into(),
                Config::IteraLite(_) => "mamba".into(),
            },
            dtype: "float32".into(),
            params: meta.config.param_count(),
            files,
            training: Training {
                corpus: match &a.corpus {
                    crate::source::CorpusSpec::World => {
                        format!("world (entities {}, seed {})", a.world_entities, a.seed)
                    }
                    t @ (crate::source::CorpusSpec::Tasks(_) | crate::source::CorpusSpec::Synthetic(_)) => {
                        format!("{t} (seed {})", a.seed)
                    }
                    p => p.to_string(),
                },
                preset: a.preset.to_string(),
                seed: a.seed,
                steps: meta.step,
                tokens: meta.tokens_seen,
                batch_size: a.batch_size,
                seq_len: a.input_len(),
                wall_seconds: meta.elapsed_s,
                tokens_per_second: meta.tokens_seen as f64 / meta.elapsed_s.max(1e-9),
                threads: meta.threads,
                accuracy_curve: crate::train::accuracy_curve(&crate::train::read_metrics(run)?),
                task_loss: (a.task_loss != crate::train::TaskLoss::All).then_some(a.task_loss),
                init_from: a.init_from.as_ref().map(|p| p.display().to_string()),
            },
            eval: meta.final_eval.clone(),
            code_version: meta.code_version.clone(),
            retrieval,
            weight_bytes,
            quantized_from: None,
        };
        write_json_atomic(&out.join("manifest.json"), &manifest)?;
        Ok(manifest)
    })
}

/// Parses `manifest.json` (the bytes of `path`, named in every error) and checks that each file
/// it lists is a plain relative path inside the export: `load_model_dir` reads every listed
/// file to check its sha256, and `../../x` or `/dev/zero` would read outside the folder (the
/// latter without end).
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(bytes).with_context(|| format!("parsing {}", path.display()))?;
    for f in &m.files {
        let inside = !f.name.is_empty()
            && !f.name.contains('\\')
            && f.name.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !inside {
            bail!("{}: file name {:?} is not a relative path inside the export", path.display(), f.name);
        }
    }
    Ok(m)
}

/// A model ready to run: weights, config and tokenizer from an export folder.
pub struct LoadedModel {
    pub model: Model,
    pub config: Config,
    pub tokenizer: tokenizers::Tokenizer,
    pub eot: u32,
    pub manifest: Option<Manifest>,
}

/// Loads an export folder (model.safetensors + config.json + tokenizer.json [+ manifest.json]),
/// or a training run folder (checkpoint.safetensors + config.json + tokenizer.json). With a
/// manifest, every file's sha256 is checked against it first.
pub fn load_model_dir(dir: &Path) -> Result<LoadedModel> {
    if !dir.is_dir() {
        bail!("{} is not a model folder (expected model.safetensors, config.json, tokenizer.json)", dir.display());
    }
    let manifest_path = dir.join("manifest.json");
    let manifest: Option<Manifest> = if manifest_path.exists() {
        let bytes = std::fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
        Some(parse_manifest(&manifest_path, &bytes)?)
    } else {
        None
    };
    if let Some(m) = &manifest {
        for f in &m.files {
            let bytes =
                std::fs::read(dir.join(&f.name)).with_context(|| format!("reading {}", dir.join(&f.name).display()))?;
            if sha256_hex(&bytes) != f.sha256 {
                bail!("{}: sha256 does not match manifest.json (file changed or corrupt)", dir.join(&f.name).display());
            }
        }
    }
    let config: Config = read_json(&dir.join("config.json"))?;
    config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("config.json").display()))?;
    let tokenizer = data::load_tokenizer(&dir.join("tokenizer.json"))?;
    let eot = data::eot_id(&tokenizer)?;
    // The weights file: the manifest's format, else whichever file is there; f32 may be sharded.
    let format = match &manifest {
        Some(m) => Some(m.weight_format().with_context(|| format!("{}", manifest_path.display()))?),
        // Without a manifest, model.gguf stands for any GGUF format: they all read the same way.
        None => [WeightFormat::F32, WeightFormat::Q8_0].into_iter().find(|f| dir.join(f.file_name()).exists()),
    };
    let sharded = match &manifest {
        Some(m) => m.files.iter().any(|f| f.name == SHARD_INDEX),
        None => format.is_none() && dir.join(SHARD_INDEX).exists(),
    };
    let model = if sharded {
        let tensors = read_export_sharded(dir)?;
        itera_model::weights::build_checked(tensors, candle_core::DType::F32, &Device::Cpu, |vb| {
            Model::new(&config, vb)
        })
        .with_context(|| format!("loading the shards of {}", dir.display()))?
    } else if let Some(format) = format {
        let path = dir.join(format.file_name());
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Model::from_weights(&config, format, &bytes, &Device::Cpu)
            .with_context(|| format!("loading {}", path.display()))?
    } else if Checkpoint::exists(dir) {
        let ck = Checkpoint::load(dir)?;
        itera_model::weights::build_checked(ck.weights(), candle_core::DType::F32, &Device::Cpu, |vb| {
            Model::new(&config, vb)
        })
        .with_context(|| format!("loading the checkpoint in {}", dir.display()))?
    } else {
        bail!("{} holds neither model.safetensors, model.gguf nor a training checkpoint", dir.display());
    };
    if tokenizer.get_vocab_size(true) != config.vocab_size() {
        bail!(
            "{}: tokenizer has {} tokens, config.json says {}",
            dir.display(),
            tokenizer.get_vocab_size(true),
            config.vocab_size()
        );
    }
    Ok(LoadedModel { model, config, tokenizer, eot, manifest })
}

/// Writes a copy of the f32 export `src` to `out` with its weights in `format` (`model.gguf`;
/// `f32` copies it as it is): config, tokenizer and index are copied, every file checked against
/// the source's manifest first and written atomically, the manifest last with `dtype`, the new
/// files and `quantized_from`.
///
/// An f16 export is a source too (a model too large to bring back from a GPU machine in f32):
/// its values widen to f32 exactly, so its `f32` copy is the f16 model in the f32 file layout
/// (`quantized_from` names the f16 weights, and the f32 figures of training are dropped), and its
/// q8_0 / q4_0 copies are those of the f16-rounded weights. 8- and 4-bit exports are refused:
/// quantizing them again would compound the rounding.
pub fn quantize(src: &Path, out: &Path, format: WeightFormat) -> Result<Manifest> {
    let manifest_path = src.join("manifest.json");
    if !manifest_path.exists() {
        bail!("{} has no manifest.json: quantize an export (native-trainer export), not a run folder", src.display());
    }
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(src).ok() {
        bail!("--out {} is the source export; write the quantized copy to another folder", out.display());
    }
    let loaded = load_model_dir(src)?; // checks every file's sha256 and that the weights load
    let mut manifest = loaded.manifest.context("manifest.json vanished while loading")?;
    let source_format = manifest.weight_format()?;
    if !matches!(source_format, WeightFormat::F32 | WeightFormat::F16) {
        bail!("{} is already {}: quantize the f32 (or f16) export", src.display(), manifest.dtype);
    }
    // The source weights: model.safetensors, the shard index, or the f16 model.gguf (whose entry
    // `quantized_from` names).
    let is_weights = |name: &str| {
        name == WeightFormat::F32.file_name()
            || name == SHARD_INDEX
            || is_shard(name)
            || (source_format == WeightFormat::F16 && name == WeightFormat::F16.file_name())
    };
    let source =
        manifest.files.iter().find(|f| is_weights(&f.name) && !is_shard(&f.name)).cloned().with_context(|| {
            format!(
                "{} lists no weights file (model.safetensors, {SHARD_INDEX} or model.gguf)",
                manifest_path.display()
            )
        })?;
    let tensors = match source_format {
        WeightFormat::F16 => {
            let bytes = std::fs::read(src.join(&source.name))?;
            let mut t: Vec<(String, candle_core::Tensor)> =
                itera_model::weights::read_gguf(&bytes, &Device::Cpu)?.into_iter().collect();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        }
        _ => export_f32_tensors(src)?,
    };

    write_dir_atomic(out, |out| {
        let weights_out = match format {
            WeightFormat::F32 => write_safetensors(&tensors)?,
            f => write_gguf(
                &tensors,
                f,
                &[
                    ("general.architecture", manifest.model_type.clone()),
                    ("general.name", manifest.name.clone()),
                    ("general.quantization", f.name().to_string()),
                    ("itera.source_sha256", source.sha256.clone()),
                ],
            )?,
        };
        write_atomic(&out.join(format.file_name()), &weights_out)?;
        let mut files = vec![FileEntry {
            name: format.file_name().into(),
            bytes: weights_out.len() as u64,
            sha256: sha256_hex(&weights_out),
        }];
        for f in manifest.files.iter().filter(|f| !is_weights(&f.name)) {
            let bytes = std::fs::read(src.join(&f.name))?;
            let to = out.join(&f.name);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            write_atomic(&to, &bytes)?;
            files.push(f.clone());
        }
        manifest.dtype = match format {
            WeightFormat::F32 => "float32".into(),
            f => f.name().into(),
        };
        manifest.files = files;
        if format != WeightFormat::F32 || source_format != WeightFormat::F32 {
            manifest.eval = None;
            manifest.quantized_from = Some(source);
        }
        write_json_atomic(&out.join("manifest.json"), &manifest)?;
        Ok(manifest)
    })
}

/// The tensors of an export's sharded f32 weights (`model.safetensors.index.json` and the
/// shards it names, read from `dir`).
pub(crate) fn read_export_sharded(dir: &Path) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    let index_path = dir.join(SHARD_INDEX);
    let index = std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?;
    read_sharded(&index, |file| std::fs::read(dir.join(file)).ok(), &Device::Cpu)
        .with_context(|| format!("reading the shards of {}", dir.display()))
}

/// An f32 export's weights, from `model.safetensors` or its shards.
pub fn export_f32_tensors(dir: &Path) -> Result<Vec<(String, candle_core::Tensor)>> {
    let single = dir.join(WeightFormat::F32.file_name());
    let tensors = if single.exists() {
        let bytes = std::fs::read(&single).with_context(|| format!("reading {}", single.display()))?;
        read_safetensors(&bytes, &Device::Cpu)?
    } else {
        read_export_sharded(dir)?
    };
    Ok(tensors.into_iter().collect())
}

/// `model-00001-of-00003.safetensors` and the like.
fn is_shard(name: &str) -> bool {
    name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-")
}
