//! safetensors in and out, through the same constructors that initialise a model.
//!
//! Loading goes through a checking `VarBuilder` backend: a tensor the model asks for but the file
//! lacks, a tensor of the wrong shape, and a tensor in the file the model never asks for are each
//! reported by name (the last one usually means the config does not belong to the weights).
//! Works from bytes, since the browser has no mmap.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

/// What can be wrong with a weights file, by tensor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsError {
    /// Not a readable safetensors file.
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
            WeightsError::Format(e) => write!(f, "not a valid safetensors file: {e}"),
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
    candle_core::safetensors::load_buffer(bytes, device).map_err(|e| WeightsError::Format(e.to_string()).into())
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
