//! Causal self-attention with RoPE as one op, for the training path (no KV cache): the
//! baseline's `softmax(rope(q) · rope(k)ᵀ / √Dh + causal mask) · v`, taking q, k, v as the
//! projections leave them, (B, L, heads · Dh), and returning (B, L, H · Dh) for `o_proj`.
//!
//! Through candle ops this is some thirty ops per layer (head transposes and copies, RoPE's
//! halves, the scores, the mask, the softmax's five passes), each a fresh allocation forward and
//! a gradient accumulated backward, and the full L × L score matrices computed, masked half and
//! all. Here each (batch, head) runs in blocks of query rows: a block's scores exist only up to
//! its diagonal, the softmax is done in place, and only each row's log-sum-exp is kept for the
//! backward, which recomputes the block's probabilities (flash-attention's recipe, on the CPU).
//! Grouped-query attention: the backward runs one task per key/value head, so the gradients of
//! the shared keys and values are summed without races. Reference twin: `baseline::attention`
//! (test `fused_attention_matches_the_elementary_twin`).

use super::gemm::{matmul, Mat};
use super::vmath::{exp_affine_sum, row_max, scale_row, softmax_grad_row};
use super::{f32_slice, host_f32, host_f32_ref, zeros};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Query rows per block.
const BLOCK: usize = 64;

/// Causal attention with rotary embeddings: q (B, L, H·Dh), k and v (B, L, Hkv·Dh), cos and sin
/// (L, Dh/2) for the positions of the L tokens (HF Llama's rotate-half convention). Returns
/// (B, L, H·Dh).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    n_heads: usize,
    n_kv_heads: usize,
) -> Result<Tensor> {
    let (b, l, qd) = q.dims3()?;
    let bad = || {
        candle_core::Error::msg(format!(
            "causal-attention: q {:?}, k {:?}, v {:?}, cos {:?}, sin {:?} do not fit {n_heads} heads over {n_kv_heads} kv heads",
            q.dims(),
            k.dims(),
            v.dims(),
            cos.dims(),
            sin.dims()
        ))
    };
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) || !qd.is_multiple_of(n_heads) {
        return Err(bad());
    }
    let dh = qd / n_heads;
    if !dh.is_multiple_of(2)
        || k.dims() != [b, l, n_kv_heads * dh]
        || v.dims() != k.dims()
        || cos.dims() != [l, dh / 2]
        || sin.dims() != cos.dims()
    {
        return Err(bad());
    }
    let op = CausalAttention {
        cos: host_f32(cos)?,
        sin: host_f32(sin)?,
        h: n_heads,
        hkv: n_kv_heads,
        dh,
        lse: Mutex::new(None),
    };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct CausalAttention {
    cos: Vec<f32>, // (L, Dh/2)
    sin: Vec<f32>, // (L, Dh/2)
    h: usize,
    hkv: usize,
    dh: usize,
    /// Log-sum-exp of every score row, (B, H, L), kept by the forward for the backward.
    lse: Mutex<Option<Vec<f32>>>,
}

impl CausalAttention {
    /// Head `head` of batch row `bi` of x (B, L, heads·Dh) as a contiguous (L, Dh) matrix, rotated
    /// by RoPE when `rope`.
    fn head(&self, x: &[f32], bi: usize, head: usize, heads: usize, l: usize, rope: bool) -> Vec<f32> {
        let (dh, half) = (self.dh, self.dh / 2);
        let mut out = vec![0f32; l * dh];
        for (t, o) in out.chunks_exact_mut(dh).enumerate() {
            let src = &x[(bi * l + t) * heads * dh + head * dh..][..dh];
            if rope {
                let (c, s) = (&self.cos[t * half..][..half], &self.sin[t * half..][..half]);
                for i in 0..half {
                    o[i] = src[i] * c[i] - src[i + half] * s[i];
                    o[i + half] = src[i + half] * c[i] + src[i] * s[i];
                }
            } else {
                o.copy_from_slice(src);
            }
        }
        out
    }

    /// The gradient through RoPE: rotates each row of g (L, Dh) back, in place.
    fn unrope(&self, g: &mut [f32]) {
        let half = self.dh / 2;
        for (t, row) in g.chunks_exact_mut(self.dh).enumerate() {
            let (c, s) = (&self.cos[t * half..][..half], &self.sin[t * half..][..half]);
            for i in 0..half {
                let (g1, g2) = (row[i], row[i + half]);
                row[i] = g1 * c[i] + g2 * s[i];
                row[i + half] = g2 * c[i] - g1 * s[i];
            }
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dh as f32).sqrt()
    }
}

/// Writes per-head blocks `heads_data` ((B, heads, L, Dh)) into x (B, L, heads·Dh).
fn interleave(heads_data: &[f32], b: usize, heads: usize, l: usize, dh: usize) -> Vec<f32> {
    let mut x = zeros(b * l * heads * dh);
    x.par_chunks_mut(l * heads * dh).enumerate().for_each(|(bi, xb)| {
        for t in 0..l {
            for hi in 0..heads {
                xb[(t * heads + hi) * dh..][..dh]
                    .copy_from_slice(&heads_data[((bi * heads + hi) * l + t) * dh..][..dh]);
            }
        }
    });
    x
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) =
            (f32_slice(sq, lq, self.name())?, f32_slice(sk, lk, self.name())?, f32_slice(sv, lv, self.name())?);
        let (b, l, _) = lq.shape().dims3()?;
        let (h, hkv, dh) = (self.h, self.hkv, self.dh);
        let rep = h / hkv;
        let scale = self.scale();
        let mut y_heads = zeros(b * h * l * dh); // (B, H, L, Dh)
        let mut lse = vec![0f32; b * h * l];
        y_heads.par_chunks_mut(l * dh).zip(lse.par_chunks_mut(l)).enumerate().for_each(|(bh, (yh, lse_h))| {
            let (bi, hi) = (bh / h, bh % h);
            let qr = self.head(q, bi, hi, h, l, true);
            let kr = self.head(k, bi, hi / rep, hkv, l, true);
            let vh = self.head(v, bi, hi / rep, hkv, l, false);
            let mut p = vec![0f32; BLOCK.min(l) * l];
            for i0 in (0..l).step_by(BLOCK) {
                let (r, n) = (BLOCK.min(l - i0), (i0 + BLOCK).min(l)); // rows i0..i0+r see keys 0..n
                let pb = &mut p[..r * n];
                matmul(Mat::new(&qr[i0 * dh..(i0 + r) * dh], r, dh), Mat::t(&kr[..n * dh], n, dh), pb, false, 1);
                for (ri, row) in pb.chunks_exact_mut(n).enumerate() {
                    let (seen, masked) = row.split_at_mut(i0 + ri + 1);
                    // max(scale·z) = scale·max(z) exactly (scale > 0; rounding is monotonic)
                    let max = row_max(seen) * scale;
                    let sum = exp_affine_sum(seen, scale, max);
                    scale_row(seen, 1.0 / sum);
                    masked.fill(0.0);
                    lse_h[i0 + ri] = max + sum.ln();
                }
                matmul(Mat::new(pb, r, n), Mat::new(&vh[..n * dh], n, dh), &mut yh[i0 * dh..(i0 + r) * dh], false, 1);
            }
        });
        *self.lse.lock().map_err(|_| candle_core::Error::msg("causal-attention: poisoned lock"))? = Some(lse);
        Ok((CpuStorage::F32(interleave(&y_heads, b, h, l, dh)), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q_t: &Tensor,
        k_t: &Tensor,
        v_t: &Tensor,
        _y: &Tensor,
        dy_t: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, l, _) = q_t.dims3()?;
        let (h, hkv, dh) = (self.h, self.hkv, self.dh);
        let rep = h / hkv;
        let scale = self.scale();
        let (q, k, v, dy) = (host_f32_ref(q_t)?, host_f32_ref(k_t)?, host_f32_ref(v_t)?, host_f32_ref(dy_t)?);
        let (q, k, v, dy): (&[f32], &[f32], &[f32], &[f32]) = (&q, &k, &v, &dy);
        let lse_guard = self.lse.lock().map_err(|_| candle_core::Error::msg("causal-attention: poisoned lock"))?;
        let Some(lse) = lse_guard.as_ref() else { candle_core::bail!("causal-attention: backward before a forward") };
        // One task per (batch row, kv head): the gradients of its `rep` query heads, and of the
        // key and value they share, summed inside the task.
        let mut dq_heads = zeros(b * h * l * dh); // (B, H, L, Dh)
        let mut dk_heads = zeros(b * hkv * l * dh); // (B, Hkv, L, Dh)
        let mut dv_heads = zeros(b * hkv * l * dh);
        dq_heads
            .par_chunks_mut(rep * l * dh)
            .zip(dk_heads.par_chunks_mut(l * dh).zip(dv_heads.par_chunks_mut(l * dh)))
            .enumerate()
            .for_each(|(g, (dq_group, (dkr, dv)))| {
                let (bi, kvh) = (g / hkv, g % hkv);
                let kr = self.head(k, bi, kvh, hkv, l, true);
                let vh = self.head(v, bi, kvh, hkv, l, false);
                let mut p = vec![0f32; BLOCK.min(l) * l];
                let mut dp = vec![0f32; BLOCK.min(l) * l];
                for (ri, dqr) in dq_group.chunks_exact_mut(l * dh).enumerate() {
                    let hi = kvh * rep + ri;
                    let qr = self.head(q, bi, hi, h, l, true);
                    let dyh = self.head(dy, bi, hi, h, l, false);
                    let lse_h = &lse[(bi * h + hi) * l..][..l];
                    for i0 in (0..l).step_by(BLOCK) {
                        let (r, n) = (BLOCK.min(l - i0), (i0 + BLOCK).min(l));
                        let (q_blk, dy_blk) = (&qr[i0 * dh..(i0 + r) * dh], &dyh[i0 * dh..(i0 + r) * dh]);
                        let (pb, dpb) = (&mut p[..r * n], &mut dp[..r * n]);
                        // P = exp(scale · q kᵀ − lse) below the diagonal, recomputed
                        matmul(Mat::new(q_blk, r, dh), Mat::t(&kr[..n * dh], n, dh), pb, false, 1);
                        for (row_i, row) in pb.chunks_exact_mut(n).enumerate() {
                            let (seen, masked) = row.split_at_mut(i0 + row_i + 1);
                            let lse_i = lse_h[i0 + row_i];
                            exp_affine_sum(seen, scale, lse_i);
                            masked.fill(0.0);
                        }
                        // dP = dy vᵀ;  dv += Pᵀ dy
                        matmul(Mat::new(dy_blk, r, dh), Mat::t(&vh[..n * dh], n, dh), dpb, false, 1);
                        matmul(Mat::t(pb, r, n), Mat::new(dy_blk, r, dh), &mut dv[..n * dh], true, 1);
                        // dS = P ⊙ (dP − Σ_j P dP) · scale, in place of dP
                        for (prow, dprow) in pb.chunks_exact(n).zip(dpb.chunks_exact_mut(n)) {
                            softmax_grad_row(prow, dprow, scale);
                        }
                        // dq = dS k;  dk += dSᵀ q   (both before RoPE's rotation back)
                        matmul(
                            Mat::new(dpb, r, n),
                            Mat::new(&kr[..n * dh], n, dh),
                            &mut dqr[i0 * dh..(i0 + r) * dh],
                            false,
                            1,
                        );
                        matmul(Mat::t(dpb, r, n), Mat::new(q_blk, r, dh), &mut dkr[..n * dh], true, 1);
                    }
                    self.unrope(dqr);
                }
                self.unrope(dkr);
            });
        let dev = q_t.device();
        let dq = Tensor::from_vec(interleave(&dq_heads, b, h, l, dh), q_t.shape(), dev)?;
        let dk = Tensor::from_vec(interleave(&dk_heads, b, hkv, l, dh), k_t.shape(), dev)?;
        let dv = Tensor::from_vec(interleave(&dv_heads, b, hkv, l, dh), v_t.shape(), dev)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
