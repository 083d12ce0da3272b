//! AdamW with checkpointable state, and global-norm gradient clipping.
//!
//! candle_nn's AdamW keeps its moments private (no checkpoint, so no exact resume), has no
//! parameter groups (its weight decay hits norms and embeddings too) and no clipping. This one
//! keeps m and v as plain vectors that the trainer saves and restores, and updates each parameter
//! in one plain-Rust pass (PyTorch's `torch.optim.AdamW` update order, decoupled weight decay).
//!
//! Parameters on another device keep their moments there as tensors and take the same update as
//! tensor ops ([`AdamW::new_on_device`]), so nothing is copied to the host per step; on the CPU
//! that path is the host loop's twin, tested equal to float tolerance. On an NVIDIA GPU (the
//! `cuda` feature) [`AdamW::with_device_ops`] updates each parameter and its moments in place by
//! one kernel (`fused/cuda.rs`), the same arithmetic as the host loop, instead of the tensor
//! path's 12.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;
use std::collections::HashMap;

/// Elements per parallel chunk of a parameter's update.
const UPDATE_CHUNK: usize = 1 << 15;

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
    /// The moments as tensors on the parameter's device (the tensor path), instead of `m` / `v`.
    on_device: Option<(Tensor, Tensor)>,
    /// The moments [m | v] (2n) on an NVIDIA GPU, updated in place by the fused kernel.
    fused: Option<Tensor>,
}

pub struct AdamW {
    params: Vec<Param>, // sorted by name: a fixed order keeps runs reproducible
    cfg: AdamWConfig,
    step: u64,
}

/// Where the update of a parameter runs.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// The host loop on the CPU, tensor ops elsewhere.
    Default,
    /// Tensor ops on every device (the CPU too).
    Tensors,
    /// The fused kernel on an NVIDIA GPU (`cuda` feature), else as `Default`.
    Fused,
}

impl AdamW {
    /// The host loop for parameters on the CPU, tensor ops on any other device.
    pub fn new(varmap: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        Self::build(varmap, cfg, Path::Default)
    }

    /// Every parameter updated by tensor ops on its own device (the CPU too: the twin's test).
    pub fn new_on_device(varmap: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        Self::build(varmap, cfg, Path::Tensors)
    }

    /// With `device_ops` (`Kernels::device_ops`), parameters on an NVIDIA GPU are updated in
    /// place by one fused kernel each (`fused/cuda.rs`, a build with the `cuda` feature); the rest
    /// as [`AdamW::new`].
    pub fn with_device_ops(varmap: &VarMap, cfg: AdamWConfig, device_ops: bool) -> Result<Self> {
        Self::build(varmap, cfg, if device_ops { Path::Fused } else { Path::Default })
    }

    fn build(varmap: &VarMap, cfg: AdamWConfig, path: Path) -> Result<Self> {
        let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("adamw: var map lock poisoned"))?;
        let mut params = Vec::with_capacity(data.len());
        for (name, var) in data.iter() {
            let fused = (cfg!(feature = "cuda") && path == Path::Fused && var.device().is_cuda())
                .then(|| Tensor::zeros(2 * var.elem_count(), DType::F32, var.device()))
                .transpose()?;
            let on_device = if fused.is_none() && (path == Path::Tensors || !var.device().is_cpu()) {
                let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())?;
                Some((zeros.clone(), zeros))
            } else {
                None
            };
            let host = if on_device.is_some() || fused.is_some() { 0 } else { var.elem_count() };
            params.push(Param {
                name: name.clone(),
                var: var.clone(),
                decay: decays(name, var.rank()),
                m: vec![0.0; host],
                v: vec![0.0; host],
                on_device,
                fused,
            });
        }
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
        self.step_scaled(grads, lr, 1.0)
    }

    /// [`step`](Self::step) with every gradient multiplied by `grad_scale` as it is read: the
    /// clipping factor ([`clip_factor`] of [`grad_norm_with`]) applied inside the update instead
    /// of by a pass over each gradient first (the same product, so the same bits as
    /// [`clip_grad_norm_with`] then `step`).
    pub fn step_scaled(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else { continue };
            #[cfg(feature = "cuda")]
            if let Some(mv) = &p.fused {
                if p.var.dtype() != DType::F32 {
                    candle_core::bail!(
                        "adamw: the fused CUDA update takes f32 parameters, `{}` is {:?}",
                        p.name,
                        p.var.dtype()
                    );
                }
                let kernel = crate::fused::cuda::AdamWKernel {
                    b1: beta1 as f32,
                    b2: beta2 as f32,
                    eps: eps as f32,
                    decay: (if p.decay { 1.0 - lr * weight_decay } else { 1.0 }) as f32,
                    step_size: (lr / bc1) as f32,
                    bc2_sqrt: bc2.sqrt() as f32,
                    grad_scale: grad_scale as f32,
                };
                // read in place when contiguous or a transposed matrix (candle's matmul backward)
                let g = g.to_dtype(DType::F32)?;
                let dense =
                    g.is_contiguous() || (g.rank() == 2 && crate::fused::cuda::dense_span(g.layout()).is_some());
                let g = if dense { g } else { g.contiguous()? };
                p.var.as_tensor().inplace_op3(&g, mv, &kernel)?;
                continue;
            }
            if let Some((m, v)) = &mut p.on_device {
                // The same update as the loop below, as tensor ops on the parameter's device.
                let g = g.to_dtype(DType::F32)?;
                let g = if grad_scale == 1.0 { g } else { (g * grad_scale)? };
                *m = ((&*m * beta1)? + (&g * (1.0 - beta1))?)?;
                *v = ((&*v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
                let decay = if p.decay { 1.0 - lr * weight_decay } else { 1.0 };
                let w = p.var.as_tensor().to_dtype(DType::F32)?;
                let w = ((w * decay)? - ((&*m / denom)? * (lr / bc1))?)?;
                p.var.set(&w.to_dtype(p.var.dtype())?)?;
                continue;
            }
            let g = crate::fused::host_f32_ref(g)?; // read in place when it is a contiguous f32 CPU tensor
            let mut w = p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let decay = (if p.decay { 1.0 - lr * weight_decay } else { 1.0 }) as f32;
            let (b1, b2) = (beta1 as f32, beta2 as f32);
            let step_size = (lr / bc1) as f32;
            let bc2_sqrt = bc2.sqrt() as f32;
            let eps = eps as f32;
            let gs = grad_scale as f32;
            // Element by element (no sums), so chunks in parallel give the same bits.
            let update = |w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
                for i in 0..w.len() {
                    let g = g[i] * gs;
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    let denom = v[i].sqrt() / bc2_sqrt + eps;
                    w[i] = w[i] * decay - step_size * m[i] / denom;
                }
            };
            if w.len() >= 2 * UPDATE_CHUNK {
                w.par_chunks_mut(UPDATE_CHUNK)
                    .zip(p.m.par_chunks_mut(UPDATE_CHUNK))
                    .zip(p.v.par_chunks_mut(UPDATE_CHUNK).zip(g.par_chunks(UPDATE_CHUNK)))
                    .for_each(|((w, m), (v, g))| update(w, m, v, g));
            } else {
                update(&mut w, &mut p.m, &mut p.v, &g);
            }
            drop(g);
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
            if let Some(mv) = &p.fused {
                let n = p.var.elem_count();
                out.push((format!("adamw.m.{}", p.name), mv.narrow(0, 0, n)?.reshape(p.var.shape())?.copy()?));
                out.push((format!("adamw.v.{}", p.name), mv.narrow(0, n, n)?.reshape(p.var.shape())?.copy()?));
                continue;
            }
            if let Some((m, v)) = &p.on_device {
                out.push((format!("adamw.m.{}", p.name), m.clone()));
                out.push((format!("adamw.v.{}", p.name), v.clone()));
                continue;
            }
            out.push((format!("adamw.m.{}", p.name), Tensor::from_slice(&p.m, p.var.shape(), dev)?));
            out.push((format!("adamw.v.{}", p.name), Tensor::from_slice(&p.v, p.var.shape(), dev)?));
        }
        Ok(out)
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in &mut self.params {
            let mut fused_parts = Vec::new();
            for (which, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("adamw.{which}.{}", p.name);
                let t =
                    tensors.get(&key).ok_or_else(|| candle_core::Error::msg(format!("checkpoint lacks `{key}`")))?;
                if t.dims() != p.var.dims() {
                    candle_core::bail!("checkpoint `{key}` has shape {:?}, parameter has {:?}", t.dims(), p.var.dims());
                }
                match &mut p.on_device {
                    _ if p.fused.is_some() => fused_parts.push(t.to_dtype(DType::F32)?.flatten_all()?),
                    Some((m, v)) => {
                        let t = t.to_dtype(DType::F32)?.to_device(p.var.device())?;
                        *(if which == "m" { m } else { v }) = t;
                    }
                    None => *dst = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                }
            }
            if p.fused.is_some() {
                p.fused = Some(Tensor::cat(&fused_parts, 0)?.to_device(p.var.device())?.contiguous()?);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The variables of `varmap` with their names, sorted by name: an order that is the same in every
/// process and run (the gradient norm's sum, data-parallel ranks' gradient buckets).
pub fn vars_by_name(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap.data().lock().map_err(|_| candle_core::Error::msg("var map lock poisoned"))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. The sum of squares runs in a fixed (sorted-name) order.
pub fn clip_grad_norm(grads: &mut GradStore, varmap: &VarMap, max_norm: f64) -> Result<f64> {
    clip_grad_norm_with(grads, varmap, max_norm, false)
}

/// [`clip_grad_norm`]; with `device_ops` (`Kernels::device_ops`), the sums of squares of f32
/// gradients on an NVIDIA GPU are one kernel each into one buffer (`fused/cuda.rs`), summed in
/// f64 as the others are; elsewhere as without.
pub fn clip_grad_norm_with(grads: &mut GradStore, varmap: &VarMap, max_norm: f64, device_ops: bool) -> Result<f64> {
    let norm = grad_norm_with(grads, varmap, device_ops)?;
    let scale = clip_factor(norm, max_norm);
    if scale != 1.0 {
        for (_, v) in &vars_by_name(varmap)? {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// What clipping to `max_norm` multiplies the gradients by, for their global norm `norm`: 1 at or
/// under it (and for a norm that is not finite: the trainer stops on a non-finite loss itself).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if norm.is_finite() && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// The global L2 norm of the gradients, as [`clip_grad_norm_with`] computes it, without scaling
/// them: with [`clip_factor`] and [`AdamW::step_scaled`], clipping costs no pass of its own.
pub fn grad_norm_with(grads: &GradStore, varmap: &VarMap, device_ops: bool) -> Result<f64> {
    let vars = vars_by_name(varmap)?;
    let mut sum_sq = 0f64;
    let mut on_device = Vec::new();
    #[cfg(feature = "cuda")]
    let mut fused: Vec<Tensor> = Vec::new();
    for (_, v) in &vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            #[cfg(feature = "cuda")]
            if device_ops && g.device().is_cuda() && g.dtype() == DType::F32 {
                // read in place when its values fill a dense block (a transposed weight's do)
                let dense = crate::fused::cuda::dense_span(g.layout()).is_some();
                fused.push(if dense { g.clone() } else { g.contiguous()? });
                continue;
            }
            let sq = g.sqr()?.sum_all()?.to_dtype(DType::F64)?;
            if g.device().is_cpu() {
                sum_sq += sq.to_scalar::<f64>()?;
            } else {
                on_device.push(sq); // summed below: one wait for the device, not one per variable
            }
        }
    }
    #[cfg(feature = "cuda")]
    if !fused.is_empty() {
        use crate::fused::cuda::{sum_squares_slots, SumSquaresInto};
        let slots: usize = fused.iter().map(|g| sum_squares_slots(g.elem_count())).sum();
        let parts = Tensor::zeros(slots, DType::F32, fused[0].device())?;
        let mut slot = 0;
        for g in &fused {
            parts.inplace_op2(g, &SumSquaresInto { slot })?;
            slot += sum_squares_slots(g.elem_count());
        }
        on_device.push(parts.to_dtype(DType::F64)?.sum_all()?);
    }
    let _ = device_ops; // read only by the `cuda` build
    sum_sq += match on_device.len() {
        0 => 0.0,
        1 => on_device[0].to_scalar::<f64>()?,
        _ => Tensor::stack(&on_device, 0)?.sum_all()?.to_scalar::<f64>()?,
    };
    Ok(sum_sq.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Init;

    /// Two copies of the same parameters, one per update path.
    fn varmap(seed: u64) -> VarMap {
        let vm = VarMap::new();
        let mut rng = crate::init::Rng::new(seed);
        let mut mk = |name: &str, shape: &[usize]| {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            vm.get(shape, name, Init::Const(0.0), DType::F32, &Device::Cpu).unwrap();
            vm.data().lock().unwrap()[name].set(&Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()).unwrap();
        };
        mk("layers.0.w", &[4, 3]);
        mk("norm.weight", &[3]);
        mk("embed_tokens.weight", &[5, 3]);
        vm
    }

    fn values(vm: &VarMap) -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<_> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, var)| (n.clone(), var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A loss with different gradients for each parameter and step.
    fn grads(vm: &VarMap, step: usize) -> GradStore {
        let data = vm.data().lock().unwrap();
        let mut named: Vec<_> = data.iter().collect(); // name order: the map's own order varies per map
        named.sort_by(|x, y| x.0.cmp(y.0));
        let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
        for (i, (_, var)) in named.into_iter().enumerate() {
            let t = var.as_tensor();
            let c = 0.3 + 0.1 * (i + step) as f64;
            loss = (loss + ((t * c).unwrap().sin().unwrap().sum_all().unwrap() + t.sqr().unwrap().sum_all().unwrap()))
                .unwrap();
        }
        loss.backward().unwrap()
    }

    /// A parameter past two `UPDATE_CHUNK`s takes the host loop's parallel chunks: two steps
    /// give the same bits as the update written out element by element.
    #[test]
    fn a_large_parameter_updated_in_parallel_chunks_equals_the_plain_loop() {
        let vm = VarMap::new();
        let n = 2 * UPDATE_CHUNK + 123;
        let w0: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        vm.get(n, "x.w", Init::Const(0.0), DType::F32, &Device::Cpu).unwrap();
        let var = vm.data().lock().unwrap()["x.w"].clone();
        var.set(&Tensor::from_vec(w0.clone(), n, &Device::Cpu).unwrap()).unwrap();
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(&vm, cfg).unwrap();
        let (mut w, mut m, mut v) = (w0, vec![0f32; n], vec![0f32; n]);
        for step in 1..=2 {
            let g: Vec<f32> = (0..n).map(|i| ((i * 104_729 + step) % 997) as f32 / 300.0 - 1.6).collect();
            let gt = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
            let mut grads = (var.as_tensor() * 0.0).unwrap().sum_all().unwrap().backward().unwrap();
            grads.insert(var.as_tensor(), gt);
            opt.step(&grads, 1e-2).unwrap();
            let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
            let (bc1, bc2) = (1.0 - cfg.beta1.powi(step as i32), 1.0 - cfg.beta2.powi(step as i32));
            let (step_size, bc2_sqrt, eps) = ((1e-2 / bc1) as f32, bc2.sqrt() as f32, cfg.eps as f32);
            for i in 0..n {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                w[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps); // a vector: no decay
            }
        }
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), w);
    }

    /// Clipping inside the update (`grad_norm_with`, `clip_factor`, `step_scaled`) gives the
    /// same bits as clipping the gradients first (`clip_grad_norm_with`, `step`), on the host
    /// loop and the tensor path, for norms over and under the limit.
    #[test]
    fn clipping_inside_the_update_equals_clipping_first() {
        for max_norm in [0.05, 1e6] {
            for on_device in [false, true] {
                let (a, b) = (varmap(2), varmap(2));
                let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
                let new = |vm: &VarMap| if on_device { AdamW::new_on_device(vm, cfg) } else { AdamW::new(vm, cfg) };
                let (mut first, mut inside) = (new(&a).unwrap(), new(&b).unwrap());
                for step in 0..3 {
                    let mut g = grads(&a, step);
                    let n1 = clip_grad_norm_with(&mut g, &a, max_norm, false).unwrap();
                    first.step(&g, 1e-2).unwrap();
                    let g = grads(&b, step);
                    let n2 = grad_norm_with(&g, &b, false).unwrap();
                    assert_eq!(n1, n2);
                    assert_eq!(clip_factor(n2, max_norm) == 1.0, max_norm == 1e6, "norm {n2}");
                    inside.step_scaled(&g, 1e-2, clip_factor(n2, max_norm)).unwrap();
                }
                assert_eq!(values(&a), values(&b), "max norm {max_norm}, on device {on_device}");
            }
        }
        assert_eq!(clip_factor(f64::NAN, 1.0), 1.0);
    }

    #[test]
    fn the_tensor_update_equals_the_host_loop() {
        const STEPS: usize = 6;
        let (a, b) = (varmap(1), varmap(1));
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let (mut host, mut dev) = (AdamW::new(&a, cfg).unwrap(), AdamW::new_on_device(&b, cfg).unwrap());
        for step in 0..STEPS {
            host.step(&grads(&a, step), 1e-2).unwrap();
            dev.step(&grads(&b, step), 1e-2).unwrap();
        }
        for ((n, x), (_, y)) in values(&a).iter().zip(values(&b)) {
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{n}: host {p} vs tensor {q}");
            }
        }
        // Moments saved by one path restore into the other.
        let saved: HashMap<String, Tensor> = dev.state_tensors().unwrap().into_iter().collect();
        let mut restored = AdamW::new(&a, cfg).unwrap();
        restored.load_state(&saved, dev.steps()).unwrap();
        let host_state: HashMap<String, Tensor> = host.state_tensors().unwrap().into_iter().collect();
        for (k, t) in restored.state_tensors().unwrap() {
            let x = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = host_state[&k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() <= 1e-5 * q.abs().max(1e-3), "{k}: {p} vs {q}");
            }
        }
    }
}
