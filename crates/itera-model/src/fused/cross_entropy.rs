//! The output head and the next-token cross-entropy as one op: `mean_i CE(x_i · Wᵀ, target_i)`.
//!
//! Through candle ops, the head's logits (N × V: 64 MiB for 16 × 256 tokens and a vocabulary of
//! 4096) pass through a log-softmax, a gather and a mean forward, and each of those ops' gradients
//! backward: a dozen passes over the largest tensor of the step, each a fresh allocation. Here the
//! rows go through in chunks: a chunk's logits (R × V) are computed, turned into the loss and, when
//! a gradient is wanted, straight into the gradients of x and W (`softmax − one-hot` times W and
//! times x), so no N × V tensor ever exists. The backward only scales the gradients prepared in
//! the forward by the incoming one (the loss is a scalar). Reference twin: `ops::linear`, then
//! `candle_nn::loss::cross_entropy` (test `linear_cross_entropy_matches_the_elementary_twin`).

use super::gemm::{matmul, threads, Mat};
use super::vmath::{exp_affine_sum, row_max, scale_row};
use super::{f32_slice, zeros};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Rows per chunk: a chunk's logits are `ROWS × V` floats (4 MiB at V = 4096).
const ROWS: usize = 256;

/// Mean next-token cross-entropy of the logits `x · wᵀ`: x (N, D), w (V, D), targets (N,) u32,
/// each below V. Returns a scalar; its gradient reaches x and w.
pub fn linear_cross_entropy(x: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let (v, dw) = w.dims2()?;
    if dw != d || targets.dims() != [n] {
        candle_core::bail!(
            "linear-cross-entropy: input {:?}, weight {:?} and targets {:?} disagree",
            x.dims(),
            w.dims(),
            targets.dims()
        );
    }
    if n == 0 {
        candle_core::bail!("linear-cross-entropy: no rows");
    }
    let targets = targets.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("linear-cross-entropy: target {t} is outside the vocabulary of {v}");
    }
    let op = LinearCrossEntropy { targets, want_grad: x.track_op() || w.track_op(), grads: Mutex::new(None) };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

struct LinearCrossEntropy {
    targets: Vec<u32>,
    want_grad: bool,
    /// d(mean CE)/dx (N × D) and d(mean CE)/dw (V × D), prepared by the forward.
    grads: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(sx, lx, self.name())?, f32_slice(sw, lw, self.name())?);
        let (n, d) = lx.shape().dims2()?;
        let (v, _) = lw.shape().dims2()?;
        let threads = threads();
        let scale = 1.0 / n as f32;
        let mut logits = vec![0f32; ROWS.min(n) * v];
        let (mut dx, mut dw) = if self.want_grad { (zeros(n * d), zeros(v * d)) } else { (vec![], vec![]) };
        let mut total = 0f64;
        for start in (0..n).step_by(ROWS) {
            let r = ROWS.min(n - start);
            let xc = &x[start * d..(start + r) * d];
            let lc = &mut logits[..r * v];
            matmul(Mat::new(xc, r, d), Mat::t(w, v, d), lc, false, threads); // (R, V)
            let targets = &self.targets[start..start + r];
            // Each row: its loss, and (for the gradient) softmax − one-hot, over N.
            let want_grad = self.want_grad;
            total += lc
                .par_chunks_mut(v)
                .zip(targets.par_iter())
                .map(|(row, &t)| {
                    let max = row_max(row);
                    let sum = exp_affine_sum(row, 1.0, max); // row ← e^(z − max)
                    let target_p = row[t as usize];
                    if want_grad {
                        scale_row(row, scale / sum);
                        row[t as usize] -= scale;
                    }
                    // -log softmax[t] = log Σ e^(z - max) - (z_t - max)
                    (sum.ln() - target_p.ln()) as f64
                })
                .sum::<f64>();
            if self.want_grad {
                // dx_c = G_c · W;  dW += G_cᵀ · x_c   (G_c the chunk's (softmax − one-hot) / N)
                matmul(Mat::new(lc, r, v), Mat::new(w, v, d), &mut dx[start * d..(start + r) * d], false, threads);
                matmul(Mat::t(lc, r, v), Mat::new(xc, r, d), &mut dw, true, threads);
            }
        }
        if self.want_grad {
            *self.grads.lock().map_err(|_| candle_core::Error::msg("linear-cross-entropy: poisoned lock"))? =
                Some((dx, dw));
        }
        Ok((CpuStorage::F32(vec![(total / n as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let grads = self.grads.lock().map_err(|_| candle_core::Error::msg("linear-cross-entropy: poisoned lock"))?;
        let Some((dx, dw)) = grads.as_ref() else {
            candle_core::bail!("linear-cross-entropy: backward through a forward that prepared no gradient")
        };
        let scaled =
            |v: &[f32], like: &Tensor| Tensor::from_vec(v.iter().map(|a| a * g).collect(), like.shape(), like.device());
        Ok((Some(scaled(dx, x)?), Some(scaled(dw, w)?)))
    }
}

/// The cross-entropy of each row of logits against its target: x (N, V) f32, targets (N,) u32
/// -> (N,) losses `logsumexp(x_i) − x_i[t_i]`; their mean is the next-token loss. One op each way
/// (a loop on the CPU, a warp per row on an NVIDIA GPU: `cuda.rs`), where candle's
/// `cross_entropy` is a log-softmax of five passes over the logits, a gather, and the backward of
/// each (≈ 1.7 ms of a 59 ms seed-baseline training step on an H100). Reference twin:
/// `candle_nn::loss::cross_entropy` (test `cross_entropy_rows_match_candles_loss`).
///
/// A target outside the vocabulary is a named error on the CPU; on the GPU (where checking would
/// wait for the device) its row's loss is NaN, which the trainer reports as a diverged loss.
pub fn cross_entropy_rows(x: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _) = x.dims2()?;
    if targets.dims() != [n] {
        candle_core::bail!("cross-entropy: logits {:?} and targets {:?} disagree", x.dims(), targets.dims());
    }
    x.contiguous()?.apply_op2(&targets.to_dtype(candle_core::DType::U32)?.contiguous()?, CrossEntropyRows)
}

struct CrossEntropyRows;

/// The max and the sum of `exp(x − max)` of a row.
fn row_stats(x: &[f32]) -> (f32, f32) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (m, x.iter().map(|&v| (v - m).exp()).sum())
}

impl CustomOp2 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, st: &CpuStorage, lt: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(sx, lx, self.name())?;
        let t = match (st, lt.contiguous_offsets()) {
            (CpuStorage::U32(t), Some((a, b))) => &t[a..b],
            _ => candle_core::bail!("cross-entropy: targets must be contiguous u32"),
        };
        let (n, v) = lx.shape().dims2()?;
        if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: target {bad} is outside the vocabulary of {v}");
        }
        let loss: Vec<f32> = (0..n)
            .into_par_iter()
            .map(|i| {
                let row = &x[i * v..(i + 1) * v];
                let (m, s) = row_stats(row);
                s.ln() + m - row[t[i] as usize]
            })
            .collect();
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        st: &candle_core::CudaStorage,
        lt: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::cross_entropy_fwd(sx, lx, st, lt, self.name())
    }

    fn bwd(&self, x: &Tensor, t: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let gx = x.apply_op3_no_bwd(t, &g.contiguous()?, &super::cuda::CrossEntropyGrad)?;
            return Ok((Some(gx), None));
        }
        let (n, v) = x.dims2()?;
        let (xs, ts, gs) = (super::host_f32(x)?, t.to_vec1::<u32>()?, super::host_f32(g)?);
        let mut gx = super::zeros(n * v);
        gx.par_chunks_mut(v).enumerate().for_each(|(i, out)| {
            let row = &xs[i * v..(i + 1) * v];
            let (m, s) = row_stats(row);
            let scale = gs[i] / s;
            for (o, &xv) in out.iter_mut().zip(row) {
                *o = (xv - m).exp() * scale;
            }
            out[ts[i] as usize] -= gs[i];
        });
        Ok((Some(Tensor::from_vec(gx, (n, v), x.device())?), None))
    }
}
