//! A bias-free linear layer, `y = x · wᵀ`, as one op with a hand-written backward: `dx = dy · w`
//! and `dw = dyᵀ · x`, each one product straight into a fresh, unfilled buffer.
//!
//! Through candle, `x.matmul(&w.t())` zero-fills its output before the product overwrites it, and
//! backward computes `xᵀ · dy`, the gradient of the transposed view `wᵀ`, which the transpose's
//! backward then copies into w's layout element by element. Reference twin: `ops::linear`
//! (test `fused_linear_matches_the_elementary_twin`).

use super::f32_slice;
use super::gemm::{matmul_new, threads, Mat};
use super::host_f32_ref;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// x (.., K) · w (M, K)ᵀ -> (.., M).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let k = *dims.last().unwrap_or(&0);
    let (m, kw) = w.dims2()?;
    if dims.is_empty() || k != kw {
        candle_core::bail!("linear: input {:?} does not match weight {:?}", dims, w.dims());
    }
    let rows: usize = dims[..dims.len() - 1].iter().product();
    crate::flops::add(2.0 * (rows * k * m) as f64);
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(m);
    x.reshape((rows, k))?.contiguous()?.apply_op2(&w.contiguous()?, Linear)?.reshape(out_dims)
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(sx, lx, self.name())?, f32_slice(sw, lw, self.name())?);
        let (n, k) = lx.shape().dims2()?;
        let (m, _) = lw.shape().dims2()?;
        let y = matmul_new(Mat::new(x, n, k), Mat::t(w, m, k), threads());
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(&self, x_t: &Tensor, w_t: &Tensor, _y: &Tensor, dy_t: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = x_t.dims2()?;
        let (m, _) = w_t.dims2()?;
        let threads = threads();
        let dev = x_t.device();
        let dy = host_f32_ref(dy_t)?;
        let dx = if x_t.track_op() {
            let w = host_f32_ref(w_t)?;
            Some(Tensor::from_vec(matmul_new(Mat::new(&dy, n, m), Mat::new(&w, m, k), threads), (n, k), dev)?)
        } else {
            None
        };
        let x = host_f32_ref(x_t)?;
        let dw = matmul_new(Mat::t(&dy, n, m), Mat::new(&x, n, k), threads);
        Ok((dx, Some(Tensor::from_vec(dw, (m, k), dev)?)))
    }
}
