//! AdamW with checkpointable state, and global-norm gradient clipping.
//!
//! candle_nn's AdamW keeps its moments private (no checkpoint, so no exact resume), has no
//! parameter groups (its weight decay hits norms and embeddings too) and no clipping. This one
//! keeps m and v as plain vectors that the trainer saves and restores, and updates each parameter
//! in one plain-Rust pass (PyTorch's `torch.optim.AdamW` update order, decoupled weight decay).

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,        // first-moment decay
    pub beta2: f64,        // second-moment decay
    pub eps: f64,          // added to sqrt(v̂)
    pub weight_decay: f64, // decoupled decay, only on matrices (not norms, biases, embeddings)
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// Whether weight decay applies to a parameter: matrices only — not norms, biases, embeddings,
/// nor Mamba's A_log (mamba_simple.py marks it `_no_weight_decay`).
pub fn decays(name: &str, rank: usize) -> bool {
    rank >= 2 && !name.contains("embed") && !name.ends_with("A_log")
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct AdamW {
    params: Vec<Param>, // sorted by name: a fixed order keeps runs reproducible
    cfg: AdamWConfig,
    step: u64,
}

impl AdamW {
    pub fn new(varmap: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("adamw: var map lock poisoned"))?;
        let mut params: Vec<Param> = data
            .iter()
            .map(|(name, var)| Param {
                name: name.clone(),
                var: var.clone(),
                decay: decays(name, var.rank()),
                m: vec![0.0; var.elem_count()],
                v: vec![0.0; var.elem_count()],
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { params, cfg, step: 0 })
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr`. Parameters without a gradient (an expert no token was
    /// routed to) are left alone, as PyTorch does for `grad is None`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            let g = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let mut w = p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let decay = if p.decay { 1.0 - lr * weight_decay } else { 1.0 };
            let (b1, b2) = (beta1 as f32, beta2 as f32);
            let step_size = (lr / bc1) as f32;
            let bc2_sqrt = bc2.sqrt() as f32;
            for i in 0..w.len() {
                p.m[i] = b1 * p.m[i] + (1.0 - b1) * g[i];
                p.v[i] = b2 * p.v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = p.v[i].sqrt() / bc2_sqrt + eps as f32;
                w[i] = w[i] * decay as f32 - step_size * p.m[i] / denom;
            }
            let var = &p.var;
            var.set(&Tensor::from_vec(w, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.<param>`, `adamw.v.<param>`) for a checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            let dev = p.var.device();
            out.push((format!("adamw.m.{}", p.name), Tensor::from_slice(&p.m, p.var.shape(), dev)?));
            out.push((format!("adamw.v.{}", p.name), Tensor::from_slice(&p.v, p.var.shape(), dev)?));
        }
        Ok(out)
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in &mut self.params {
            for (which, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("adamw.{which}.{}", p.name);
                let t =
                    tensors.get(&key).ok_or_else(|| candle_core::Error::msg(format!("checkpoint lacks `{key}`")))?;
                if t.dims() != p.var.dims() {
                    candle_core::bail!("checkpoint `{key}` has shape {:?}, parameter has {:?}", t.dims(), p.var.dims());
                }
                *dst = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. The sum of squares runs in a fixed (sorted-name) order.
pub fn clip_grad_norm(grads: &mut GradStore, varmap: &VarMap, max_norm: f64) -> Result<f64> {
    let mut vars: Vec<(String, Var)> = {
        let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("clip: var map lock poisoned"))?;
        data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sum_sq = 0f64;
    for (_, v) in &vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum_sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
    }
    let norm = sum_sq.sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, v) in &vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}
