//! Small differentiable building blocks shared by both models.
//!
//! candle 0.11's fused `ops::rms_norm`, `softmax_last_dim`, `rope` and the `RmsNorm` module record
//! no backward (gradients silently stop; candle issue #2168), and its CPU `conv1d` weight gradient
//! is wrong for batch > 1. Everything here is built from elementary ops whose backward was checked
//! by finite differences (docs/candle.md), so it is safe on the training path.

use crate::fused::cast;
use crate::moe::MoeKernel;
use candle_core::{DType, Result, Tensor, D};
use std::sync::atomic::{AtomicU8, Ordering};

/// Mixed precision, as PyTorch's `torch.autocast`: the dtype the elementary path's matrix products
/// run in — the linear layers ([`linear`], and [`project`], which then takes them over from the
/// CPU's fused op), the head, and the attention's two products ([`matmul_t`], [`matmul`]) — their
/// f32 operands cast to it and each product cast back to f32 (`fused::cast`, which carries the
/// gradient back the same way; candle's `to_dtype` is its twin). Weights, activations, gradients
/// and AdamW's moments stay f32: the master weights. The ops fused for the CPU (attention, experts, head + loss) stay f32.
/// Process-wide, set once before training (`train --autocast bf16`); `None`, f32 throughout, by
/// default. It pays where f32 products are slow beside bf16 ones (a GPU's tensor cores), not on a
/// CPU without bf16 products at twice the f32 rate (docs/candle.md): products on the CPU stay f32
/// (so do the trainer's evaluations, which run on a CPU copy) unless `on_cpu` (the tests).
static AUTOCAST: AtomicU8 = AtomicU8::new(0);
/// Bit of [`AUTOCAST`]: the CPU's products too.
const ON_CPU: u8 = 4;

/// Sets [`AUTOCAST`]: `None`, `Some(BF16)` or `Some(F16)` (another dtype is an error), for
/// products on accelerators, and with `on_cpu` on the CPU too.
pub fn set_autocast(dtype: Option<DType>, on_cpu: bool) -> Result<()> {
    let code = match dtype {
        None => 0,
        Some(DType::BF16) => 1,
        Some(DType::F16) => 2,
        Some(d) => candle_core::bail!("autocast to {d:?}: the products can run in bf16 or f16"),
    };
    AUTOCAST.store(if on_cpu && code != 0 { code | ON_CPU } else { code }, Ordering::Relaxed);
    Ok(())
}

/// The dtype set by [`set_autocast`], if any, and whether it holds on the CPU too.
pub fn autocast() -> Option<(DType, bool)> {
    let code = AUTOCAST.load(Ordering::Relaxed);
    let dtype = match code & !ON_CPU {
        1 => DType::BF16,
        2 => DType::F16,
        _ => return None,
    };
    Some((dtype, code & ON_CPU != 0))
}

/// The autocast dtype for a product of `a` and `b`: set for their device, and both operands f32.
fn cast_for(a: &Tensor, b: &Tensor) -> Option<DType> {
    let (dtype, on_cpu) = autocast()?;
    (a.dtype() == DType::F32 && b.dtype() == DType::F32 && (on_cpu || !a.device().is_cpu())).then_some(dtype)
}

/// a · b (batched as `Tensor::matmul`), in the autocast dtype where one is set (f32 back).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match cast_for(a, b) {
        Some(dt) => cast(&cast(a, dt)?.matmul(&cast(b, dt)?)?, DType::F32),
        None => a.matmul(b),
    }
}

/// a · bᵀ over the last two dims, b cast before it is transposed (the product reads the
/// transposed view; no transposed copy), in the autocast dtype where one is set (f32 back).
pub fn matmul_t(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t_in(a, b, cast_for(a, b))
}

fn matmul_t_in(a: &Tensor, b: &Tensor, dtype: Option<DType>) -> Result<Tensor> {
    match dtype {
        Some(dt) => cast(&cast(a, dt)?.matmul(&cast(b, dt)?.t()?)?, DType::F32),
        None => a.matmul(&b.t()?),
    }
}

/// How the selective scan runs on the full-sequence (training) path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScanKernel {
    /// The fused `CustomOp3` (softplus, scan, skip, gate) with a hand-written backward.
    #[default]
    Fused,
    /// Candle ops around a per-timestep scan, autograd for the backward (reference twin, slow).
    Reference,
    /// Candle ops around a two-level parallel scan (whole-tensor rounds), autograd for the
    /// backward: the scan of devices without the fused kernel.
    Chunked,
}

/// Run-time choice between the fast paths and their reference twins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    pub scan: ScanKernel,
    pub moe: MoeKernel,
    /// RMSNorm and conv + SiLU as fused ops (`fused.rs`) rather than elementary candle ops.
    pub fused_ops: bool,
    /// The ops fused for the device (NVIDIA GPUs: `fused/cuda.rs`), on an otherwise elementary
    /// path: RMSNorm, the attention's rotary embedding and scaled causal softmax, the baseline's
    /// SwiGLU gating, the token embedding, the head's cross-entropy, and (`optim.rs`) AdamW's
    /// update and the gradient norm.
    pub device_ops: bool,
}

impl Default for Kernels {
    fn default() -> Self {
        Self { scan: ScanKernel::Fused, moe: MoeKernel::Sparse, fused_ops: true, device_ops: false }
    }
}

impl Kernels {
    /// Every reference twin.
    pub fn reference() -> Self {
        Self { scan: ScanKernel::Reference, moe: MoeKernel::Dense, fused_ops: false, device_ops: false }
    }

    /// Whether RMSNorm runs as the fused op (`fused::rms_norm_fused`: CPU and CUDA kernels).
    pub fn fused_norm(&self) -> bool {
        self.fused_ops || self.device_ops
    }

    /// What runs on `device`. The fused scan has CPU and CUDA kernels (`scan/`); conv + SiLU and
    /// the rest of `fused` are the CPU's. Elsewhere: the chunked parallel scan and the reference
    /// twins of the rest (elementary candle ops, which every backend has).
    ///
    /// On an NVIDIA GPU also `device_ops` (CUDA kernels for RMSNorm, the causal softmax and AdamW,
    /// `fused/cuda.rs`; one stream, `runtime::single_stream`): tested there against their CPU
    /// kernels and in the whole-model loss and gradients, and 1.76× the elementary ops' training
    /// throughput for both baselines, 1.48× for demo Itera-Lite (an H100, 32 × 256: docs/gpu.md).
    /// The rotary embedding's, SwiGLU's and the gradient norm's kernels joined them after that
    /// session and passed their CUDA tests on an H100 the next (0.74× / 0.91× of PyTorch eager
    /// for the seed / demo baseline); the token embedding's backward, the cross-entropy and RoPE
    /// moving the heads joined after a kernel profile of that session: tested on the CPU, their
    /// CUDA tests wait for the next GPU session (docs/gpu.md).
    ///
    /// The MoE: sparse on the CPU (top-2 of 8 experts is a quarter of the work); dense on a GPU,
    /// where the sparse path's gathers, scatters and host-side routing cost more than the
    /// experts' arithmetic: on an H200, demo Itera-Lite at 32 × 256 trained at 92K tok/s dense
    /// against 56K sparse (`throughput-cuda --device cuda`, docs/gpu.md). Same function either way.
    pub fn for_device(device: &candle_core::Device) -> Self {
        match device {
            candle_core::Device::Cpu => Self::default(),
            candle_core::Device::Cuda(_) => {
                Self { scan: ScanKernel::Fused, moe: MoeKernel::Dense, fused_ops: false, device_ops: true }
            }
            _ => Self { scan: ScanKernel::Chunked, moe: MoeKernel::Dense, fused_ops: false, device_ops: false },
        }
    }
}

/// RMSNorm by the fused op or its elementary twin.
pub fn norm(x: &Tensor, w: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    crate::flops::add(4.0 * x.elem_count() as f64); // square, sum, scale, weight
    if fused {
        crate::fused::rms_norm_fused(x, w, eps)
    } else {
        rms_norm(x, w, eps)
    }
}

/// RMSNorm: x / sqrt(mean(x²) + eps) * w.  x (.., D), w (D).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] {
        candle_core::bail!("rms-norm: input {:?} and weight {:?} disagree", x.dims(), w.dims());
    }
    let mean_sq = (x.sqr()?.sum_keepdim(D::Minus1)? / d as f64)?; // (.., 1)
    x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// Softmax over the last dim, from elementary ops (max-shifted for stability).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// softplus(x) = log(1 + e^x), computed as relu(x) + log(1 + e^-|x|) so it never overflows.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Causal depthwise conv over time, "valid" part: `xp` (B, K-1+T, C) is the input with K-1 rows
/// of history in front (zeros at the start of a sequence); `w` (C, K), `bias` (C).
/// y[b, t, c] = bias[c] + Σ_k w[c, k] · xp[b, t + k, c]; returns (B, T, C).
///
/// Written as K shifted multiply-adds: candle's CPU conv1d has a wrong weight gradient for
/// batch > 1 (docs/candle.md) and runs groups one by one.
pub fn causal_depthwise_conv(xp: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, lp, c) = xp.dims3()?;
    let (cw, k) = w.dims2()?;
    if cw != c || bias.dims() != [c] || lp < k - 1 {
        candle_core::bail!(
            "causal-conv: input {:?}, weight {:?}, bias {:?} disagree",
            xp.dims(),
            w.dims(),
            bias.dims()
        );
    }
    let t = lp - (k - 1);
    let wt = w.t()?.contiguous()?; // (K, C): row k is the weight of tap k for every channel
    let mut y = xp.narrow(1, 0, t)?.broadcast_mul(&wt.get(0)?)?; // (B, T, C)
    for tap in 1..k {
        y = (y + xp.narrow(1, tap, t)?.broadcast_mul(&wt.get(tap)?)?)?;
    }
    y.broadcast_add(bias)
}

/// x (N, K) @ w (M, K)^T -> (N, M), for any leading dims on x: a bias-free linear layer.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_in(x, w, cast_for(x, w))
}

/// [`linear`] with its product in `dtype` (`None`: as its operands are).
fn linear_in(x: &Tensor, w: &Tensor, dtype: Option<DType>) -> Result<Tensor> {
    let dims = x.dims();
    let k = *dims.last().unwrap_or(&0);
    let (m, kw) = w.dims2()?;
    if k != kw {
        candle_core::bail!("linear: input {:?} does not match weight {:?}", dims, w.dims());
    }
    let rows: usize = dims[..dims.len() - 1].iter().product();
    crate::flops::add(2.0 * (rows * k * m) as f64);
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(m);
    matmul_t_in(&x.reshape((rows, k))?, w, dtype)?.reshape(out_dims)
}

/// The rows of the embedding `w` (V, D) at `ids` (any shape, u32 or another integer type):
/// (ids.., D). Under `device_ops` with u32 ids, the embedding op with its own backward
/// (`fused::embedding`: grouped by token on the host, one kernel on an NVIDIA GPU), else candle's
/// `index_select` (whose backward is `index_add`, the twin).
pub fn embed(w: &Tensor, ids: &Tensor, device_ops: bool) -> Result<Tensor> {
    let flat = ids.flatten_all()?;
    let rows = if device_ops && flat.dtype() == candle_core::DType::U32 {
        crate::fused::embedding(w, &flat)?
    } else {
        w.index_select(&flat, 0)?
    };
    let mut dims = ids.dims().to_vec();
    dims.push(w.dim(1)?);
    rows.reshape(dims)
}

/// A linear layer by the fused op (`fused::linear`) or its elementary twin [`linear`] (which
/// also runs it under [`autocast`]).
pub fn project(x: &Tensor, w: &Tensor, fused: bool) -> Result<Tensor> {
    if fused && cast_for(x, w).is_none() {
        crate::fused::linear(x, w)
    } else {
        linear(x, w)
    }
}

/// [`project`] in f32 under any [`autocast`]: the MoE router's logits, whose top-k choice is
/// discrete (the Switch Transformer's selective precision: a product rounded to bf16 moves
/// tokens between experts).
pub fn project_f32(x: &Tensor, w: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        crate::fused::linear(x, w)
    } else {
        linear_in(x, w, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn softplus_is_stable_and_exact() {
        let x = Tensor::new(&[-100f32, -1.0, 0.0, 1.0, 100.0], &Device::Cpu).unwrap();
        let y = softplus(&x).unwrap().to_vec1::<f32>().unwrap();
        let want = [0.0f32, 0.313_261_7, std::f32::consts::LN_2, 1.313_261_7, 100.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn causal_conv_matches_a_hand_computed_value() {
        // one channel, K = 2: y_t = w0 x_{t-1} + w1 x_t + bias
        let xp = Tensor::new(&[[[0f32], [1.0], [2.0], [3.0]]], &Device::Cpu).unwrap(); // history 0, then 1,2,3
        let w = Tensor::new(&[[10f32, 1.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        let y = causal_depthwise_conv(&xp, &w, &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![1.5, 12.5, 23.5]);
    }
}
