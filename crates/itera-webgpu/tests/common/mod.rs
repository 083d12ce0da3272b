//! Helpers shared by the native parity tests and the browser's.
#![allow(dead_code)]

use anyhow::Result;
use candle_core::{Device, Tensor};
use itera_model::config::{Config, ModelKind, Preset};
use itera_model::{weights, Model};
use std::collections::HashMap;

pub const VOCAB: usize = 256;
/// The bar: logits within 1e-3, relative to the largest logit of the row set.
pub const TOLERANCE: f32 = 1e-3;

/// A fresh model, with the query, key and router weights scaled up: at init, attention scores
/// and router logits are so small that attention is nearly uniform and the top-k nearly
/// arbitrary, which would let a wrong RoPE or a wrong routing pass. The RMSNorm weights, all ones
/// at init, get values of 0.5-1.5 by channel: the GPU folds them into the projections after them
/// (the final norm into a copy of the embedding table), and ones would let a norm weight folded
/// into the wrong columns, or not at all, pass.
pub fn model(cfg: &Config, seed: u64) -> Result<(Model, HashMap<String, Tensor>)> {
    let (varmap, model) = Model::init(cfg, seed, &Device::Cpu)?;
    let mut tensors: HashMap<String, Tensor> = weights::varmap_tensors(&varmap)?.into_iter().collect();
    for (name, t) in tensors.iter_mut() {
        let scale = if name.contains("q_proj") || name.contains("k_proj") {
            12.0
        } else if name.contains("router") {
            40.0
        } else {
            1.0
        };
        let norm = name.ends_with("norm.weight") || name.ends_with("norm_f.weight");
        // A copy: a variable cannot be set from a tensor that is its own value.
        let v: Vec<f32> = t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|x| x * scale).collect();
        let v =
            if norm { (0..v.len()).map(|j| v[j] * (0.5 + ((j * 37 + 11) % 101) as f32 / 100.0)).collect() } else { v };
        *t = Tensor::from_vec(v, t.shape(), &Device::Cpu)?;
    }
    weights::assign_varmap(&varmap, &tensors)?;
    Ok((model, tensors))
}

pub fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % VOCAB as u64) as u32
        })
        .collect()
}

/// The CPU model's logits (every row, flattened) for `ids` read after what `state` holds.
pub fn cpu_logits(cpu: &Model, ids: &[u32], state: &mut itera_model::State) -> Result<Vec<f32>> {
    let x = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
    Ok(cpu.forward_with_state(&x, state)?.flatten_all()?.to_vec1()?)
}

/// Largest |a - b| over the largest |b|; infinite where either holds a NaN or an infinity (which
/// `f32::max` would skip: a NaN logit would pass).
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit counts differ");
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn configs() -> Vec<(&'static str, Config)> {
    let base = Config::preset(ModelKind::Baseline, Preset::Tiny, VOCAB);
    let itera = Config::preset(ModelKind::IteraLite, Preset::Tiny, VOCAB);
    let mut plain = itera.clone();
    if let Config::IteraLite(c) = &mut plain {
        c.num_experts = 0;
    }
    let mut gqa = base.clone();
    if let Config::Baseline(c) = &mut gqa {
        c.num_key_value_heads = 1;
    }
    vec![("baseline", base), ("baseline (GQA)", gqa), ("itera-lite", itera), ("itera-lite, no MoE", plain)]
}
