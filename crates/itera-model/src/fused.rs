//! Fused CPU kernels with hand-written backwards for the two hot elementwise blocks outside the
//! scan: RMSNorm, and Mamba's causal depthwise conv + bias + SiLU. Their reference twins are the
//! elementary-op versions in `ops.rs` (`rms_norm`, `causal_depthwise_conv` + `silu`); tests hold
//! each pair together, and `Kernels::fused_ops` picks one at run time. RMSNorm, the attention's
//! causal softmax (`softmax.rs`) and AdamW's update also have CUDA kernels (`cuda.rs`, the `cuda`
//! feature), which `Kernels::device_ops` picks.
//!
//! Why: built from candle ops, each of these is 5-10 passes over an activation forward and more
//! backward, and the gradients of their broadcast weights go through candle's strided
//! `sum_keepdim` over the batch and time dims, which runs scalar (≈ 9% of an Itera-Lite training
//! step by itself). Here each is one pass forward, one backward, with per-chunk partial sums for
//! the weight gradients added in a fixed order (deterministic at any thread count).

pub mod attention;
pub mod cast;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod embedding;
pub(crate) mod experts;
pub(crate) mod gemm;
pub mod linear;
pub mod rope;
pub mod softmax;
pub mod swiglu;
mod vmath;

pub use attention::causal_attention;
pub use cast::cast;
pub use cross_entropy::{cross_entropy_rows, linear_cross_entropy};
pub use embedding::embedding;
pub use linear::linear;
pub use rope::{heads, merge_heads, rope, rope_heads};
pub use softmax::causal_softmax;
pub use swiglu::swiglu;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel chunk.
const ROWS_PER_TASK: usize = 64;

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// RMSNorm, fused: x / sqrt(mean(x²) + eps) * w.  x (.., D), w (D).
pub fn rms_norm_fused(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [d] {
        candle_core::bail!("rms-norm: input {:?} and weight {:?} disagree", x.dims(), w.dims());
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-fused"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(sx, lx, self.name())?, f32_slice(sw, lw, self.name())?);
        let d = w.len();
        let mut y = zeros(x.len());
        y.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).for_each(|(y, x)| {
            for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let inv = inv_rms(xr, self.eps);
                for ((y, &x), &w) in yr.iter_mut().zip(xr).zip(w) {
                    *y = x * inv * w;
                }
            }
        });
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sw: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::rms_norm_fwd(sx, lx, sw, lw, self.eps, self.name())
    }

    fn bwd(&self, x_t: &Tensor, w_t: &Tensor, _y: &Tensor, gy_t: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x_t.device().is_cuda() {
            let (gx, gw) = cuda::rms_norm_bwd(x_t, w_t, gy_t, self.eps)?;
            return Ok((Some(gx), Some(gw)));
        }
        let (x, w, gy) = (host_f32_ref(x_t)?, host_f32_ref(w_t)?, host_f32_ref(gy_t)?);
        let (x, w, gy): (&[f32], &[f32], &[f32]) = (&x, &w, &gy);
        let d = w.len();
        let mut gx = zeros(x.len());
        // dx = inv (gy w) - x inv³ / D Σ_j (gy w x)_j;   dw = Σ_rows gy x inv
        let partial_dw: Vec<Vec<f32>> = gx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK).zip(gy.par_chunks(d * ROWS_PER_TASK)))
            .map(|(gx, (x, gy))| {
                let mut dw = vec![0f32; d];
                for ((gxr, xr), gyr) in gx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(gy.chunks_exact(d)) {
                    let inv = inv_rms(xr, self.eps);
                    let mut dot = 0f32;
                    for ((&g, &x), &w) in gyr.iter().zip(xr).zip(w) {
                        dot += g * w * x;
                    }
                    let k = inv * inv * inv * dot / d as f32;
                    for (((gx, &g), &x), (&w, dw)) in gxr.iter_mut().zip(gyr).zip(xr).zip(w.iter().zip(dw.iter_mut())) {
                        *gx = inv * g * w - x * k;
                        *dw += g * x * inv;
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in partial_dw {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        let dev = x_t.device();
        Ok((Some(Tensor::from_vec(gx, x_t.shape(), dev)?), Some(Tensor::from_vec(dw, d, dev)?)))
    }
}

#[inline]
pub(crate) fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.len() / 8;
    for c in 0..chunks {
        for i in 0..8 {
            acc[i] += x[c * 8 + i] * x[c * 8 + i];
        }
    }
    let mut ss = acc.iter().sum::<f32>();
    for v in &x[chunks * 8..] {
        ss += v * v;
    }
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

// ---------------------------------------------------------------------------------------------
// Causal depthwise conv + bias + SiLU

/// silu(causal depthwise conv + bias), fused. `xp` (B, K-1+L, C) holds K-1 rows of history in
/// front; `w` (C, K), `bias` (C); returns (B, L, C). Same as `silu(ops::causal_depthwise_conv(..))`.
pub fn conv_silu_fused(xp: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    conv_silu(xp, w, bias, 0)
}

/// [`conv_silu_fused`] of `x` (B, L, C) after K-1 zero rows of history: the same as
/// `conv_silu_fused(&x.pad_with_zeros(1, K - 1, 0)?, ..)`, without making the padded copy (nor,
/// backward, narrowing its gradient back to x). Returns (B, L, C).
pub fn conv_silu_fused_zero_history(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let k = w.dims2()?.1;
    conv_silu(x, w, bias, k.saturating_sub(1))
}

fn conv_silu(x: &Tensor, w: &Tensor, bias: &Tensor, pad: usize) -> Result<Tensor> {
    let (_, lx, c) = x.dims3()?;
    let (cw, k) = w.dims2()?;
    if cw != c || bias.dims() != [c] || k == 0 || lx + pad + 1 < k {
        candle_core::bail!("conv-silu: input {:?}, weight {:?}, bias {:?} disagree", x.dims(), w.dims(), bias.dims());
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, ConvSilu { pad })
}

/// The op: input x (B, Lx, C) read as if `pad` zero rows preceded it; output L = Lx + pad + 1 − K
/// rows. The arithmetic is in `vmath` (`conv_silu_fwd`, `conv_silu_bwd`), lane-wise over the
/// channels with the taps transposed to (K, C); one task per batch row.
struct ConvSilu {
    pad: usize,
}

/// (C, K) -> (K, C).
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for q in 0..cols {
            t[q * rows + r] = w[r * cols + q];
        }
    }
    t
}

impl CustomOp3 for ConvSilu {
    fn name(&self) -> &'static str {
        "conv-silu-fused"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bsz, lxn, c) = lx.shape().dims3()?;
        let (_, k) = lw.shape().dims2()?;
        let l = lxn + self.pad + 1 - k;
        let (x, w, bias) =
            (f32_slice(sx, lx, self.name())?, f32_slice(sw, lw, self.name())?, f32_slice(sb, lb, self.name())?);
        let wt = transpose(w, c, k);
        let mut y = zeros(bsz * l * c);
        if bsz * l * c < PAR_MIN_ELEMS {
            for (b, yb) in y.chunks_mut(l * c).enumerate() {
                vmath::conv_silu_fwd(&x[b * lxn * c..(b + 1) * lxn * c], &wt, bias, self.pad, yb);
            }
        } else {
            y.par_chunks_mut(l * c).enumerate().for_each(|(b, yb)| {
                vmath::conv_silu_fwd(&x[b * lxn * c..(b + 1) * lxn * c], &wt, bias, self.pad, yb);
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((bsz, l, c))))
    }

    fn bwd(
        &self,
        x_t: &Tensor,
        w_t: &Tensor,
        b_t: &Tensor,
        _y: &Tensor,
        gy_t: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bsz, lxn, c) = x_t.dims3()?;
        let (_, k) = w_t.dims2()?;
        let l = lxn + self.pad + 1 - k;
        let (x, w, bias, gy) = (host_f32_ref(x_t)?, host_f32_ref(w_t)?, host_f32_ref(b_t)?, host_f32_ref(gy_t)?);
        let (x, bias, gy): (&[f32], &[f32], &[f32]) = (&x, &bias, &gy);
        let wt = transpose(&w, c, k);
        let mut gx = zeros(x.len());
        // One task per batch row: its dx rows are its own; dw, dbias are partial sums.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = gx
            .par_chunks_mut(lxn * c)
            .enumerate()
            .map(|(b, gxb)| {
                let (mut dwt, mut db) = (vec![0f32; k * c], vec![0f32; c]);
                let (xb, gyb) = (&x[b * lxn * c..(b + 1) * lxn * c], &gy[b * l * c..(b + 1) * l * c]);
                vmath::conv_silu_bwd(xb, &wt, bias, self.pad, gyb, (gxb, &mut dwt, &mut db));
                (dwt, db)
            })
            .collect();
        let (mut dwt, mut db) = (vec![0f32; k * c], vec![0f32; c]);
        for (pw, pb) in partial {
            dwt.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let dev = x_t.device();
        Ok((
            Some(Tensor::from_vec(gx, (bsz, lxn, c), dev)?),
            Some(Tensor::from_vec(transpose(&dwt, k, c), (c, k), dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// `vec![0f32; len]`, the clearing spread over the rayon workers when it is large: the fused
/// ops' outputs and gradients are 4-23 MB each at the demo dims, and glibc's calloc clears a
/// reused heap block on the calling thread alone, while the other workers wait.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    const PAR_MIN: usize = 1 << 18;
    if len < PAR_MIN {
        return vec![0f32; len];
    }
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len].par_chunks_mut(1 << 16).for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: all `len` values were written (as zeros) just above.
    unsafe { v.set_len(len) };
    v
}

/// Below this many output values the conv runs on the calling thread (decode steps are tiny).
const PAR_MIN_ELEMS: usize = 1 << 14;

/// The f32 data of a contiguous CPU storage; errors name the op.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v,
        other => candle_core::bail!("{op}: f32 only, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{op}: input of shape {:?} is not contiguous", l.shape()),
    }
}

/// A tensor's values as a flat f32 vector (copied to the host).
pub(crate) fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// A tensor's f32 values on the host for reading: borrowed from its storage when that is a
/// contiguous f32 buffer on the CPU (the usual case in a backward pass: no copy), else copied
/// by [`host_f32`]. The storage stays read-locked while this lives.
pub(crate) enum HostF32<'a> {
    Borrowed(candle_core::StorageRef<'a>, std::ops::Range<usize>),
    Owned(Vec<f32>),
}

impl std::ops::Deref for HostF32<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            HostF32::Borrowed(storage, range) => match &**storage {
                candle_core::Storage::Cpu(CpuStorage::F32(v)) => &v[range.clone()],
                _ => unreachable!("a borrowed storage is a CPU f32 one (checked by host_f32_ref)"),
            },
            HostF32::Owned(v) => v,
        }
    }
}

/// [`HostF32`] of `t`.
pub(crate) fn host_f32_ref(t: &Tensor) -> Result<HostF32<'_>> {
    let (storage, layout) = t.storage_and_layout();
    if let (candle_core::Storage::Cpu(CpuStorage::F32(_)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        return Ok(HostF32::Borrowed(storage, start..end));
    }
    drop(storage);
    Ok(HostF32::Owned(host_f32(t)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeros_is_all_zeros_below_and_above_the_parallel_size() {
        for len in [0, 1, 1000, (1 << 18) + 17] {
            let v = super::zeros(len);
            assert!(v.len() == len && v.iter().all(|&x| x == 0.0), "{len}");
        }
    }
}
