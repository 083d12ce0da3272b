//! The token embedding as one op with its own backward: rows of `w` (V, D) picked by token ids.
//!
//! Forward it is candle's `index_select` (the same storage call). Backward, candle's
//! `index_select` adds the picked rows' gradients with `index_add`, whose CUDA kernel walks the
//! ids one after another for each column: 4.1 ms of a 59 ms seed-baseline training step on an H100
//! (`scripts/gpu/kernel_profile.py`, 32 × 256 tokens), where PyTorch's sort-based embedding
//! backward takes well under 0.1 ms. Here the positions are grouped by token on the host (a
//! counting sort of the ids, stable, so the sums run in increasing position and a run is
//! reproducible) and one CUDA thread per (token, column) adds its rows (`cuda.rs`,
//! `embedding_bwd`). On the CPU the backward is candle's `index_add`, the reference twin
//! (test `the_embedding_op_matches_index_select`).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Rows of `w` (V, D) at `ids` (N,) u32 -> (N, D); the gradient reaches `w` (not the ids).
/// An id past V is an error naming it (forward, as `index_select`'s).
pub fn embedding(w: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_, d) = w.dims2()?;
    let n = ids.dims1()?;
    if ids.dtype() != DType::U32 {
        candle_core::bail!("embedding: ids must be u32, got {:?}", ids.dtype());
    }
    let y = w.contiguous()?.apply_op2(&ids.contiguous()?, Embedding)?;
    debug_assert_eq!(y.dims(), [n, d]);
    Ok(y)
}

struct Embedding;

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(&self, sw: &CpuStorage, lw: &Layout, si: &CpuStorage, li: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = sw.index_select(si, lw, li, 0)?;
        Ok((y, Shape::from((li.shape().elem_count(), lw.shape().dims()[1]))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sw: &candle_core::CudaStorage,
        lw: &Layout,
        si: &candle_core::CudaStorage,
        li: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = sw.index_select(si, lw, li, 0)?;
        Ok((y, Shape::from((li.shape().elem_count(), lw.shape().dims()[1]))))
    }

    fn bwd(&self, w: &Tensor, ids: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if w.device().is_cuda() {
            let (v, _) = w.dims2()?;
            let (off, order) = group_by_token(&ids.to_vec1::<u32>()?, v)?;
            let dev = w.device();
            let off = Tensor::from_vec(off, v + 1, dev)?;
            let order = Tensor::from_vec(order, ids.elem_count(), dev)?;
            let dw = gy.contiguous()?.apply_op3_no_bwd(&off, &order, &super::cuda::EmbeddingGrad { vocab: v })?;
            return Ok((Some(dw), None));
        }
        Ok((Some(w.zeros_like()?.index_add(ids, gy, 0)?), None))
    }
}

/// The positions of `ids` grouped by token, each group in increasing position (a stable counting
/// sort): token t's positions are `order[off[t]..off[t + 1]]`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn group_by_token(ids: &[u32], vocab: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    if u32::try_from(ids.len()).is_err() {
        candle_core::bail!("embedding: {} ids are over 2^32", ids.len());
    }
    let mut off = vec![0u32; vocab + 1];
    for &t in ids {
        let t = t as usize;
        if t >= vocab {
            candle_core::bail!("embedding: token id {t} is outside the vocabulary of {vocab}");
        }
        off[t + 1] += 1;
    }
    for t in 0..vocab {
        off[t + 1] += off[t];
    }
    let mut next = off.clone();
    let mut order = vec![0u32; ids.len()];
    for (i, &t) in ids.iter().enumerate() {
        order[next[t as usize] as usize] = i as u32;
        next[t as usize] += 1;
    }
    Ok((off, order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn grouping_by_token_is_a_stable_counting_sort() {
        let (off, order) = group_by_token(&[2, 0, 2, 1, 2, 0], 4).unwrap();
        assert_eq!(off, vec![0, 2, 3, 6, 6]);
        assert_eq!(order, vec![1, 5, 3, 0, 2, 4]);
        let err = group_by_token(&[1, 4], 4).unwrap_err().to_string();
        assert!(err.contains("token id 4 is outside the vocabulary of 4"), "{err}");
    }

    #[test]
    fn the_embedding_op_matches_index_select() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 5), &dev)?)?;
        let ids = Tensor::new(&[3u32, 0, 3, 6, 1, 3], &dev)?;
        let r = Tensor::randn(0f32, 1.0, (6, 5), &dev)?;
        let y = embedding(w.as_tensor(), &ids)?;
        let y_ref = w.as_tensor().index_select(&ids, 0)?;
        assert_eq!(y.to_vec2::<f32>()?, y_ref.to_vec2::<f32>()?);
        let g = (y * &r)?.sum_all()?.backward()?.get(w.as_tensor()).unwrap().to_vec2::<f32>()?;
        let g_ref = (y_ref * &r)?.sum_all()?.backward()?.get(w.as_tensor()).unwrap().to_vec2::<f32>()?;
        assert_eq!(g, g_ref);
        // a wrong id is a named error, not a panic
        assert!(embedding(w.as_tensor(), &Tensor::new(&[9u32], &dev)?).is_err());
        Ok(())
    }
}
