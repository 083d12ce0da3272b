//! SwiGLU's gating, `silu(g) ⊙ u`, as one op: one pass forward, one backward (dg and du
//! together), where candle's `silu` and `mul` are a pass each forward and several backward, each
//! with its own allocation and gradient accumulation. Reference twin: `g.silu()? * u`
//! (test `fused_swiglu_matches_the_elementary_twin`). One kernel each way per device: the loops
//! below on the CPU, `cuda.rs` on an NVIDIA GPU (its backward writes dg and du as one (2, ..)
//! tensor, split by views).

use super::vmath::{swiglu_bwd, swiglu_fwd};
use super::{f32_slice, host_f32_ref, zeros};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// silu(g) ⊙ u, g and u of the same shape.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.dims() != u.dims() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} disagree", g.dims(), u.dims());
    }
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, sg: &CpuStorage, lg: &Layout, su: &CpuStorage, lu: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(sg, lg, self.name())?, f32_slice(su, lu, self.name())?);
        let mut y = zeros(g.len());
        y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(y, (g, u))| {
            swiglu_fwd(y, g, u);
        });
        Ok((CpuStorage::F32(y), lg.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sg: &candle_core::CudaStorage,
        lg: &Layout,
        su: &candle_core::CudaStorage,
        lu: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::swiglu_fwd(sg, lg, su, lu, self.name())
    }

    fn bwd(&self, g_t: &Tensor, u_t: &Tensor, _y: &Tensor, dy_t: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if g_t.device().is_cuda() {
            // [dg | du] as (2, ..): one kernel, then two views
            let both = g_t.apply_op3_no_bwd(u_t, &dy_t.contiguous()?, &super::cuda::SwiGluGrad)?;
            let n = g_t.elem_count();
            let part = |i: usize| both.narrow(0, i * n, n)?.reshape(g_t.shape());
            return Ok((Some(part(0)?), Some(part(1)?)));
        }
        let (g, u, dy) = (host_f32_ref(g_t)?, host_f32_ref(u_t)?, host_f32_ref(dy_t)?);
        let (g, u, dy): (&[f32], &[f32], &[f32]) = (&g, &u, &dy);
        let (mut dg, mut du) = (zeros(g.len()), zeros(g.len()));
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)))
            .for_each(|((dg, du), ((g, u), dy))| swiglu_bwd(dg, du, g, u, dy));
        let dev = g_t.device();
        Ok((Some(Tensor::from_vec(dg, g_t.shape(), dev)?), Some(Tensor::from_vec(du, u_t.shape(), dev)?)))
    }
}
