//! Rotary position embedding as one op with a hand-written backward: for x (.., L, Dh) and cos,
//! sin (L, Dh/2), the halves x1, x2 of each row rotate by the position's angles,
//! y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin (the rotate-half convention of Hugging Face's
//! Llama). The backward is the inverse rotation (sin negated) of the output's gradient; cos and
//! sin are constants (no gradient).
//!
//! Its reference twin is `candle_nn::rotary_emb::rope_slow` (two narrows, a negation, two
//! concatenations, two multiplies and an add forward, about as many backward), which
//! `baseline::attention` runs without the device ops; `tests/fused.rs` holds them together. One
//! kernel per device: the loop below on the CPU, `cuda.rs` on an NVIDIA GPU.

use super::{f32_slice, zeros};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// y = x rotated by the angles of cos and sin: x (.., L, Dh) with Dh even, cos and sin (L, Dh/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (l, dh) = match dims {
        [.., l, dh] if dh % 2 == 0 => (*l, *dh),
        _ => candle_core::bail!("rope: input {dims:?} is not (.., L, Dh) with Dh even"),
    };
    for (what, t) in [("cos", cos), ("sin", sin)] {
        if t.dims() != [l, dh / 2] {
            candle_core::bail!("rope: {what} {:?} is not (L, Dh/2) = [{l}, {}] for input {dims:?}", t.dims(), dh / 2);
        }
    }
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { inverse: false })
}

struct Rope {
    /// The inverse rotation (sin negated): the backward.
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sc: &CpuStorage,
        lc: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, cos, sin) = (f32_slice(sx, lx, op)?, f32_slice(sc, lc, op)?, f32_slice(ss, ls, op)?);
        let dims = lx.shape().dims();
        let (l, dh) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let half = dh / 2;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut y = zeros(x.len());
        if half > 0 {
            y.par_chunks_mut(dh).zip(x.par_chunks(dh)).enumerate().for_each(|(row, (y, x))| {
                let t = row % l;
                let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                let (x1, x2) = x.split_at(half);
                let (y1, y2) = y.split_at_mut(half);
                for i in 0..half {
                    let s = sign * s[i];
                    y1[i] = x1[i] * c[i] - x2[i] * s;
                    y2[i] = x2[i] * c[i] + x1[i] * s;
                }
            });
        }
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sc: &candle_core::CudaStorage,
        lc: &Layout,
        ss: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rope(sx, lx, sc, lc, ss, ls, self.inverse, self.name())
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = gy.contiguous()?.apply_op3_no_bwd(cos, sin, &Rope { inverse: !self.inverse })?;
        Ok((Some(gx), None, None))
    }
}
