//! The attention's scaled causal softmax as one op with a hand-written backward:
//! y = softmax(scale · x) over the last dim S of x (.., L, S), query i (row i of the last two
//! dims, absolute position S - L + i) seeing keys 0..=S - L + i and the rest getting 0.
//!
//! Its reference twin is what `baseline::attention` builds from candle ops (scale, an additive
//! -inf mask uploaded from the host, `softmax_last`); `tests/fused.rs` holds them together. One
//! kernel per device: the loops below on the CPU, `cuda.rs` on an NVIDIA GPU (where the twin's
//! 8 kernels forward and 10 backward, and its mask's upload, cost more than the arithmetic).

use super::{f32_slice, zeros};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// y = softmax(scale · x) over the last dim with the causal mask; x (.., L, S) with S ≥ L.
pub fn causal_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 || dims[dims.len() - 1] < dims[dims.len() - 2] {
        candle_core::bail!("causal-softmax: scores {dims:?} are not (.., L queries, S ≥ L keys)");
    }
    x.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32 })
}

struct CausalSoftmax {
    scale: f32,
}

fn dims_ls(l: &Layout) -> (usize, usize) {
    let d = l.shape().dims();
    (d[d.len() - 2], d[d.len() - 1])
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (ql, sl) = dims_ls(l);
        let mut y = zeros(x.len());
        if sl > 0 {
            y.par_chunks_mut(sl).zip(x.par_chunks(sl)).enumerate().for_each(|(row, (y, x))| {
                let visible = sl - ql + row % ql + 1;
                let m = x[..visible].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
                let mut sum = 0f32;
                for (y, &x) in y[..visible].iter_mut().zip(&x[..visible]) {
                    *y = (x * self.scale - m).exp();
                    sum += *y;
                }
                let inv = 1.0 / sum;
                y[..visible].iter_mut().for_each(|y| *y *= inv);
            });
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::causal_softmax_fwd(s, l, self.scale, self.name())
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        let g = y.contiguous()?.apply_op2_no_bwd(&gy.contiguous()?, &CausalSoftmaxGrad { scale: self.scale })?;
        Ok(Some(g))
    }
}

/// gx = scale · y ⊙ (gy - Σ_j gy_j y_j) per row (masked keys have y = 0, so gx = 0 there).
struct CausalSoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(&self, sy: &CpuStorage, ly: &Layout, sg: &CpuStorage, lg: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, gy) = (f32_slice(sy, ly, self.name())?, f32_slice(sg, lg, self.name())?);
        if ly.shape() != lg.shape() {
            candle_core::bail!("{}: y {:?} and its gradient {:?} disagree", self.name(), ly.shape(), lg.shape());
        }
        let sl = dims_ls(ly).1;
        let mut gx = zeros(y.len());
        if sl > 0 {
            gx.par_chunks_mut(sl).zip(y.par_chunks(sl).zip(gy.par_chunks(sl))).for_each(|(gx, (y, gy))| {
                let dot: f32 = y.iter().zip(gy).map(|(y, g)| y * g).sum();
                for ((gx, &y), &g) in gx.iter_mut().zip(y).zip(gy) {
                    *gx = self.scale * y * (g - dot);
                }
            });
        }
        Ok((CpuStorage::F32(gx), ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sy: &candle_core::CudaStorage,
        ly: &Layout,
        sg: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::causal_softmax_bwd(sy, ly, sg, lg, self.scale, self.name())
    }
}
