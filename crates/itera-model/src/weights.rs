//! safetensors (f32) and GGUF (f16, 8-bit Q8_0, 4-bit Q4_0) in and out, through the same
//! constructors that initialise a model.
//!
//! Loading goes through a checking `VarBuilder` backend: a tensor the model asks for but the file
//! lacks, a tensor of the wrong shape, and a tensor in the file the model never asks for are each
//! reported by name (the last one usually means the config does not belong to the weights).
//! Works from bytes, since the browser has no mmap.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

/// What can be wrong with a weights file, by tensor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsError {
    /// Not a readable safetensors or GGUF file: "not a valid {format} file: {why}".
    Format(String),
    /// The model needs this tensor; the file lacks it.
    Missing { name: String, expected: Vec<usize> },
    /// The file's tensor has another shape than the config implies.
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    /// Tensors in the file that the model does not use.
    Unexpected { names: Vec<String> },
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::Format(e) => f.write_str(e),
            WeightsError::Missing { name, expected } => {
                write!(f, "missing tensor `{name}` (the config expects shape {expected:?})")
            }
            WeightsError::Shape { name, expected, found } => {
                write!(f, "tensor `{name}` has shape {found:?}, the config expects {expected:?}")
            }
            WeightsError::Unexpected { names } => {
                let shown: Vec<&str> = names.iter().take(5).map(|s| s.as_str()).collect();
                write!(
                    f,
                    "{} tensor(s) in the file are not part of this model (wrong config?): {}{}",
                    names.len(),
                    shown.join(", "),
                    if names.len() > 5 { ", ..." } else { "" }
                )
            }
        }
    }
}

impl std::error::Error for WeightsError {}

impl From<WeightsError> for candle_core::Error {
    fn from(e: WeightsError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// Reads every tensor of a safetensors buffer.
pub fn read_safetensors(bytes: &[u8], device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| WeightsError::Format(format!("not a valid safetensors file: {e}")).into())
}

/// Serialises named tensors (sorted by name) with the `{"format": "pt"}` metadata that
/// `transformers` checks for.
pub fn write_safetensors(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    write_safetensors_with_metadata(tensors, HashMap::new())
}

/// As [`write_safetensors`], with extra string metadata in the header.
pub fn write_safetensors_with_metadata(
    tensors: &[(String, Tensor)],
    mut metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut sorted: Vec<(&str, Tensor)> =
        tensors.iter().map(|(n, t)| Ok((n.as_str(), t.contiguous()?))).collect::<Result<_>>()?;
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::tensor::serialize(sorted.iter().map(|(n, t)| (*n, t)), Some(metadata))
        .map_err(|e| candle_core::Error::msg(format!("safetensors serialise: {e}")))
}

/// How an export stores its weights: `model.safetensors` in f32, or `model.gguf` with the
/// matrices in f16 or a ggml block format (the vectors, and matrices too small or narrow for the
/// blocks, stay f32 there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    F32,
    F16,
    /// Blocks of 32 weights: 32 int8 and one f16 scale (8.5 bits a weight).
    Q8_0,
    /// Blocks of 32 weights: 32 4-bit ints and one f16 scale (4.5 bits a weight).
    Q4_0,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 4] = [WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
        }
    }

    /// The file the weights live in.
    pub fn file_name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "model.safetensors",
            _ => "model.gguf",
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            WeightFormat::F32 => GgmlDType::F32,
            WeightFormat::F16 => GgmlDType::F16,
            WeightFormat::Q8_0 => GgmlDType::Q8_0,
            WeightFormat::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// The ggml type `t` is stored in: the format's for matrices whose rows split into its
    /// blocks (and that have at least one block's worth of rows: a router of 8 experts stays
    /// exact), f32 otherwise.
    pub fn dtype_for(self, t: &Tensor) -> GgmlDType {
        let dims = t.dims();
        let ggml = self.ggml();
        let block = ggml.block_size();
        match dims {
            [rows, cols] if *rows >= 32 && cols % block == 0 => ggml,
            _ => GgmlDType::F32,
        }
    }
}

impl WeightFormat {
    /// The format a `manifest.json`'s `dtype` names: `float32` (every export before the GGUF
    /// formats said so) or a format name.
    pub fn from_manifest_dtype(dtype: &str) -> std::result::Result<Self, String> {
        match dtype {
            "float32" => Ok(WeightFormat::F32),
            other => other.parse(),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown weight format `{s}` (expected f32, f16, q8_0 or q4_0)"))
    }
}

/// Serialises named tensors as GGUF (version 2), each in `format.dtype_for(tensor)`, with
/// `metadata` as string values. The names are the Hugging Face ones of `model.safetensors`.
pub fn write_gguf(tensors: &[(String, Tensor)], format: WeightFormat, metadata: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let q: Vec<(&str, QTensor)> = sorted
        .iter()
        .map(|(n, t)| Ok((n.as_str(), QTensor::quantize(&t.to_dtype(DType::F32)?, format.dtype_for(t))?)))
        .collect::<Result<_>>()?;
    let values: Vec<(&str, gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (*k, gguf_file::Value::String(v.clone()))).collect();
    let meta: Vec<(&str, &gguf_file::Value)> = values.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta, &refs)?;
    Ok(out.into_inner())
}

/// The most elements a GGUF tensor may declare (2^31: 8 GiB of f32, beyond any model here).
const MAX_GGUF_TENSOR_ELEMENTS: usize = 1 << 31;

/// Reads every tensor of a GGUF buffer, dequantized to f32.
pub fn read_gguf(bytes: &[u8], device: &Device) -> Result<HashMap<String, Tensor>> {
    let bad = |e: candle_core::Error| -> candle_core::Error {
        WeightsError::Format(format!("not a valid GGUF file: {e}")).into()
    };
    let mut reader = std::io::Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut reader).map_err(bad)?;
    let mut out = HashMap::new();
    for (name, info) in &content.tensor_infos {
        // Checked before candle reads the tensor (both found by itera-fuzz): candle multiplies
        // the dimensions unchecked and allocates for the product, so an overflowing shape
        // panics there; and it views an empty tensor's dangling byte buffer as blocks, which
        // aborts a build with debug assertions (misaligned pointer). No model has either.
        let elements = info.shape.dims().iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let problem = match elements {
            Some(0) => Some("has no elements".to_string()),
            Some(n) if n <= MAX_GGUF_TENSOR_ELEMENTS => None,
            _ => Some(format!("is over {MAX_GGUF_TENSOR_ELEMENTS} elements")),
        };
        if let Some(p) = problem {
            let e = format!("tensor `{name}` of shape {:?} {p}", info.shape.dims());
            return Err(WeightsError::Format(format!("not a valid GGUF file: {e}")).into());
        }
        let q = content.tensor(&mut reader, name, device).map_err(bad)?;
        out.insert(name.clone(), q.dequantize(device).map_err(bad)?);
    }
    Ok(out)
}

/// The index of a sharded `model.safetensors` (Hugging Face's convention): which shard holds
/// each tensor.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// One shard of [`write_sharded`]: its file name and bytes.
pub type Shard = (String, Vec<u8>);

/// Splits `tensors` (by name) into safetensors shards of at most `max_bytes` of tensor data
/// each (a larger tensor gets a shard of its own), named `model-00001-of-0000N.safetensors` as
/// `save_pretrained(max_shard_size=...)` names them. Returns the shards and the index JSON.
pub fn write_sharded(tensors: &[(String, Tensor)], max_bytes: u64) -> Result<(Vec<Shard>, Vec<u8>)> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut groups: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let (mut used, mut total) = (0u64, 0u64);
    for (name, t) in sorted {
        let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        if used > 0 && used + bytes > max_bytes {
            groups.push(Vec::new());
            used = 0;
        }
        used += bytes;
        total += bytes;
        groups.last_mut().expect("one group at least").push((name.clone(), t.clone()));
    }
    let n = groups.len();
    let mut shards = Vec::with_capacity(n);
    let mut weight_map = serde_json::Map::new();
    for (i, group) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        for (name, _) in group {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
        shards.push((file, write_safetensors(group)?));
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let json = serde_json::to_vec_pretty(&index).map_err(candle_core::Error::wrap)?;
    Ok((shards, json))
}

/// Reads a sharded checkpoint: the index JSON, and each shard it names from `shard(file)`.
/// A shard that is missing, a tensor the index places in a shard that lacks it, and a tensor in
/// a shard the index does not list are errors naming the file and the tensor.
pub fn read_sharded(
    index_json: &[u8],
    mut shard: impl FnMut(&str) -> Option<Vec<u8>>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let bad = |e: String| -> candle_core::Error { WeightsError::Format(format!("{SHARD_INDEX}: {e}")).into() };
    let index: serde_json::Value = serde_json::from_slice(index_json).map_err(|e| bad(e.to_string()))?;
    let map = index["weight_map"].as_object().ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut by_file: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`{tensor}` maps to {file}, not a file name")))?;
        if file.is_empty() || file.contains(['/', '\\']) || file == ".." {
            return Err(bad(format!("`{tensor}` maps to {file:?}, not a file beside the index")));
        }
        by_file.entry(file).or_default().insert(tensor.as_str());
    }
    let mut out = HashMap::new();
    for (file, listed) in by_file {
        let bytes = shard(file).ok_or_else(|| bad(format!("shard `{file}` is missing")))?;
        let tensors = read_safetensors(&bytes, device).map_err(|e| bad(format!("shard `{file}`: {e}")))?;
        for name in &listed {
            if !tensors.contains_key(*name) {
                return Err(bad(format!("the index places `{name}` in `{file}`, which lacks it")));
            }
        }
        for (name, t) in tensors {
            if !listed.contains(name.as_str()) {
                return Err(bad(format!("`{file}` holds `{name}`, which the index does not list")));
            }
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// Every variable of a `VarMap` as (name, tensor), sorted by name.
pub fn varmap_tensors(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
    let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("var map lock poisoned"))?;
    let mut out: Vec<(String, Tensor)> = data.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Sets every variable of `varmap` from `tensors`; every variable must be there with its shape.
pub fn assign_varmap(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("var map lock poisoned"))?;
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| WeightsError::Missing { name: name.clone(), expected: var.dims().to_vec() })?;
        if t.dims() != var.dims() {
            return Err(WeightsError::Shape {
                name: name.clone(),
                expected: var.dims().to_vec(),
                found: t.dims().to_vec(),
            }
            .into());
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// A `VarBuilder` backend over a map of tensors that remembers which names were asked for.
struct Checked {
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<BTreeSet<String>>>,
}

impl SimpleBackend for Checked {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self
            .get_unchecked(name, dtype, dev)
            .map_err(|_| WeightsError::Missing { name: name.to_string(), expected: s.dims().to_vec() })?;
        if t.shape() != &s {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            }
            .into());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t =
            self.tensors.get(name).ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Builds a model with `build` from named tensors, then checks that it used all of them.
pub fn build_checked<T>(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let used = Arc::new(Mutex::new(BTreeSet::new()));
    let names: BTreeSet<String> = tensors.keys().cloned().collect();
    let backend: Box<dyn SimpleBackend> = Box::new(Checked { tensors, used: used.clone() });
    let model = build(VarBuilder::from_backend(backend, dtype, device.clone()))?;
    let used = used.lock().map_err(|_| candle_core::Error::msg("weights: lock poisoned"))?;
    let unexpected: Vec<String> = names.difference(&used).cloned().collect();
    if !unexpected.is_empty() {
        return Err(WeightsError::Unexpected { names: unexpected }.into());
    }
    Ok(model)
}
