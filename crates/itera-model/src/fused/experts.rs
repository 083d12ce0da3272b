//! The sparse MoE's experts as one op on the CPU: gather each expert's tokens, its SwiGLU
//! (`down(silu(gate x) ⊙ up x)`), and the gate-weighted sum back into token order, forward and
//! backward by hand. Reference twin: `SparseMoe::forward_sparse` (an `index_select` per expert,
//! candle ops and autograd), which the test `sparse_moe_matches_dense_reference_output_aux_and_gradients`
//! holds to the dense reference beside this op.
//!
//! Why: built from candle ops, every expert's `index_select` has a backward that fills a (T, D)
//! gradient with zeros, adds its rows in and adds the whole into x's gradient (E of each per
//! block), and the outputs go through a `cat` and an `index_add`. Here x's gradient is written
//! once, each token's k rows read where they lie.
//!
//! Shape letters: T tokens, D hidden, K top-k, H expert width; P = T·K routed (token, slot) pairs,
//! sorted by expert.

use super::gemm::{matmul, Mat};
use super::vmath::{swiglu_bwd, swiglu_fwd};
use super::{f32_slice, host_f32_ref, zeros};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Tokens per parallel chunk of the gathers and sums.
const ROWS_PER_TASK: usize = 64;

/// Where each (token, slot) pair goes: the pairs sorted by expert, in slot order within one.
#[derive(Clone, Debug)]
pub(crate) struct ExpertPlan {
    /// (P) the pair (t, s) at each sorted position, as t·K + s.
    slot: Vec<u32>,
    /// (T·K) sorted position of the pair (t, s) at t·K + s.
    pos: Vec<u32>,
    /// Experts that got tokens, in order; the op's weights hold exactly these experts.
    pub(crate) active: Vec<usize>,
    /// Their ranges of sorted positions.
    groups: Vec<std::ops::Range<usize>>,
    k: usize,
}

impl ExpertPlan {
    /// From the chosen expert of each (token, slot), t·K + s, of `e` experts.
    pub(crate) fn new(chosen: &[u32], e: usize, k: usize) -> Self {
        let mut counts = vec![0usize; e];
        for &j in chosen {
            counts[j as usize] += 1;
        }
        let mut start = vec![0usize; e];
        for j in 1..e {
            start[j] = start[j - 1] + counts[j - 1];
        }
        let active: Vec<usize> = (0..e).filter(|&j| counts[j] > 0).collect();
        let groups = active.iter().map(|&j| start[j]..start[j] + counts[j]).collect();
        let (mut slots, mut pos) = (vec![0u32; chosen.len()], vec![0u32; chosen.len()]);
        for (slot, &j) in chosen.iter().enumerate() {
            let p = start[j as usize];
            start[j as usize] += 1;
            slots[p] = slot as u32;
            pos[slot] = p as u32;
        }
        Self { slot: slots, pos, active, groups, k }
    }
}

/// Σ_s gates[t, s] · expert_s(x[t]) for every token: x (T, D); `weights` the active experts'
/// matrices flattened and concatenated, [gate_0 (H, D), up_0 (H, D), gate_1, up_1, ...,
/// down_0 (D, H), down_1, ...]; gates (T, K). Returns (T, D).
pub(crate) fn moe_experts(x: &Tensor, weights: &Tensor, gates: &Tensor, plan: ExpertPlan, h: usize) -> Result<Tensor> {
    let (t, d) = x.dims2()?;
    let e = plan.groups.len();
    if gates.dims() != [t, plan.k] || weights.dims() != [e * 3 * h * d] || plan.pos.len() != t * plan.k {
        candle_core::bail!(
            "moe-experts: x {:?}, weights {:?}, gates {:?} disagree with {e} experts of width {h}, top-{}",
            x.dims(),
            weights.dims(),
            gates.dims(),
            plan.k
        );
    }
    let op = Experts { plan, d, h, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&weights.contiguous()?, &gates.contiguous()?, op)
}

/// What the experts' forward computes on the sorted pairs: x's rows xs (P, D), the
/// pre-activations hs = [gate x | up x] (P, 2H), the outputs (P, D).
struct Activations {
    xs: Vec<f32>,
    hs: Vec<f32>,
    out: Vec<f32>,
}

struct Experts {
    plan: ExpertPlan,
    d: usize,
    h: usize,
    /// The forward's [`Activations`], for the backward (which recomputes them if missing).
    saved: Mutex<Option<Activations>>,
}

impl Experts {
    /// x's rows in sorted order: (P, D).
    fn gather(&self, x: &[f32]) -> Vec<f32> {
        let d = self.d;
        let k = self.plan.k;
        let mut xs = zeros(self.plan.slot.len() * d);
        xs.par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(c, chunk)| {
            for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
                let tok = self.plan.slot[c * ROWS_PER_TASK + i] as usize / k;
                row.copy_from_slice(&x[tok * d..(tok + 1) * d]);
            }
        });
        xs
    }

    /// (expert's [gate; up] (2H, D), down (D, H)) of the i-th active expert.
    fn expert<'a>(&self, w: &'a [f32], i: usize) -> (&'a [f32], &'a [f32]) {
        let (d, h, e) = (self.d, self.h, self.plan.groups.len());
        let w_in = &w[i * 2 * h * d..(i + 1) * 2 * h * d];
        let w_out = &w[e * 2 * h * d + i * d * h..e * 2 * h * d + (i + 1) * d * h];
        (w_in, w_out)
    }

    /// The experts on their tokens. One task per expert (their rows are disjoint), each product
    /// on its own thread.
    fn experts_forward(&self, x: &[f32], w: &[f32]) -> Activations {
        let (d, h, p) = (self.d, self.h, self.plan.slot.len());
        let xs = self.gather(x);
        let mut hs = zeros(p * 2 * h);
        let mut out = zeros(p * d);
        let mut tasks = Vec::with_capacity(self.plan.groups.len());
        let (mut hs_rest, mut out_rest) = (&mut hs[..], &mut out[..]);
        for (i, r) in self.plan.groups.iter().enumerate() {
            let (hs_j, hs_tail) = hs_rest.split_at_mut(r.len() * 2 * h);
            let (out_j, out_tail) = out_rest.split_at_mut(r.len() * d);
            (hs_rest, out_rest) = (hs_tail, out_tail);
            tasks.push((i, r.clone(), hs_j, out_j));
        }
        tasks.into_par_iter().for_each(|(i, r, hs_j, out_j)| {
            let (w_in, w_out) = self.expert(w, i);
            let n = r.len();
            matmul(Mat::new(&xs[r.start * d..r.end * d], n, d), Mat::t(w_in, 2 * h, d), hs_j, false, 1);
            let mut a = vec![0f32; n * h];
            for (ar, hr) in a.chunks_exact_mut(h).zip(hs_j.chunks_exact(2 * h)) {
                swiglu_fwd(ar, &hr[..h], &hr[h..]);
            }
            matmul(Mat::new(&a, n, h), Mat::t(w_out, d, h), out_j, false, 1);
        });
        Activations { xs, hs, out }
    }
}

impl CustomOp3 for Experts {
    fn name(&self) -> &'static str {
        "moe-experts"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) =
            (f32_slice(sx, lx, self.name())?, f32_slice(sw, lw, self.name())?, f32_slice(sg, lg, self.name())?);
        let (d, k) = (self.d, self.plan.k);
        let acts = self.experts_forward(x, w);
        let out = &acts.out;
        // y[t] = Σ_s gates[t, s] · out[pos(t, s)], slots in order
        let mut y = zeros(x.len());
        y.par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(c, chunk)| {
            for (i, yr) in chunk.chunks_exact_mut(d).enumerate() {
                let tok = c * ROWS_PER_TASK + i;
                for s in 0..k {
                    let (gv, p) = (g[tok * k + s], self.plan.pos[tok * k + s] as usize);
                    for (yv, &o) in yr.iter_mut().zip(&out[p * d..(p + 1) * d]) {
                        *yv += gv * o;
                    }
                }
            }
        });
        *self.saved.lock().unwrap() = Some(acts);
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x_t: &Tensor,
        w_t: &Tensor,
        g_t: &Tensor,
        _y: &Tensor,
        dy_t: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, w, g, dy) = (host_f32_ref(x_t)?, host_f32_ref(w_t)?, host_f32_ref(g_t)?, host_f32_ref(dy_t)?);
        let (x, w, g, dy): (&[f32], &[f32], &[f32], &[f32]) = (&x, &w, &g, &dy);
        let (d, h, k, p) = (self.d, self.h, self.plan.k, self.plan.slot.len());
        let saved = self.saved.lock().unwrap().take();
        let Activations { xs, hs, out } = match saved {
            Some(s) => s,
            None => self.experts_forward(x, w),
        };
        // dgates[t, s] = out[pos(t, s)] · dy[t]
        let mut dg = zeros(g.len());
        dg.par_chunks_mut(ROWS_PER_TASK * k).enumerate().for_each(|(c, chunk)| {
            for (i, v) in chunk.iter_mut().enumerate() {
                let slot = c * ROWS_PER_TASK * k + i;
                let (tok, p) = (slot / k, self.plan.pos[slot] as usize);
                *v = crate::scan::dot(&out[p * d..(p + 1) * d], &dy[tok * d..(tok + 1) * d]);
            }
        });
        drop(out);
        // dout[p] = gates[slot(p)] · dy[token(p)]
        let mut dout = zeros(p * d);
        dout.par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(c, chunk)| {
            for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
                let slot = self.plan.slot[c * ROWS_PER_TASK + i] as usize;
                let (gv, dyr) = (g[slot], &dy[(slot / k) * d..(slot / k + 1) * d]);
                for (o, &v) in row.iter_mut().zip(dyr) {
                    *o = gv * v;
                }
            }
        });
        // Through each expert: da = dout W_down, dW_down = doutᵀ a, dh by SwiGLU's backward,
        // dW_in = dhᵀ xs, dxs = dh W_in. One task per expert (their rows and weights are
        // disjoint), each product on its own thread.
        let e = self.plan.groups.len();
        let mut dw = zeros(w.len());
        let mut dxs = zeros(p * d);
        {
            let (dw_in_all, dw_out_all) = dw.split_at_mut(e * 2 * h * d);
            let mut rest = &mut dxs[..];
            let mut tasks = Vec::with_capacity(e);
            for (i, ((r, dw_in_j), dw_out_j)) in self
                .plan
                .groups
                .iter()
                .zip(dw_in_all.chunks_exact_mut(2 * h * d))
                .zip(dw_out_all.chunks_exact_mut(d * h))
                .enumerate()
            {
                let (dxs_j, tail) = rest.split_at_mut(r.len() * d);
                rest = tail;
                tasks.push((i, r.clone(), dw_in_j, dw_out_j, dxs_j));
            }
            tasks.into_par_iter().for_each(|(i, r, dw_in_j, dw_out_j, dxs_j)| {
                let (w_in, w_out) = self.expert(w, i);
                let n = r.len();
                let hs_j = &hs[r.start * 2 * h..r.end * 2 * h];
                let mut a = vec![0f32; n * h];
                for (ar, hr) in a.chunks_exact_mut(h).zip(hs_j.chunks_exact(2 * h)) {
                    swiglu_fwd(ar, &hr[..h], &hr[h..]);
                }
                let dout_j = &dout[r.start * d..r.end * d];
                let mut da = vec![0f32; n * h];
                matmul(Mat::new(dout_j, n, d), Mat::new(w_out, d, h), &mut da, false, 1);
                matmul(Mat::t(dout_j, n, d), Mat::new(&a, n, h), dw_out_j, false, 1);
                let mut dh = vec![0f32; n * 2 * h];
                for ((dhr, hr), dar) in dh.chunks_exact_mut(2 * h).zip(hs_j.chunks_exact(2 * h)).zip(da.chunks_exact(h))
                {
                    let (dgate, dup) = dhr.split_at_mut(h);
                    swiglu_bwd(dgate, dup, &hr[..h], &hr[h..], dar);
                }
                matmul(Mat::t(&dh, n, 2 * h), Mat::new(&xs[r.start * d..r.end * d], n, d), dw_in_j, false, 1);
                matmul(Mat::new(&dh, n, 2 * h), Mat::new(w_in, 2 * h, d), dxs_j, false, 1);
            });
        }
        // dx[t] = Σ_s dxs[pos(t, s)], slots in order
        let mut dx = zeros(x.len());
        dx.par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(c, chunk)| {
            for (i, dxr) in chunk.chunks_exact_mut(d).enumerate() {
                let tok = c * ROWS_PER_TASK + i;
                for s in 0..k {
                    let q = self.plan.pos[tok * k + s] as usize;
                    for (v, &o) in dxr.iter_mut().zip(&dxs[q * d..(q + 1) * d]) {
                        *v += o;
                    }
                }
            }
        });
        let dev = x_t.device();
        Ok((
            Some(Tensor::from_vec(dx, x_t.shape(), dev)?),
            Some(Tensor::from_vec(dw, w_t.shape(), dev)?),
            Some(Tensor::from_vec(dg, g_t.shape(), dev)?),
        ))
    }
}
