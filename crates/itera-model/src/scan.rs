//! The selective scan of Mamba-1 ("Mamba", arXiv 2312.00752, §3.2 and Algorithm 2), without the
//! D skip and the z gate (the mixer adds those):
//!
//! ```text
//! h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) B_t          // Eqn (2a) with zero-order-hold Ā, Euler B̄
//! y_t = C_t · h_t                                       // Eqn (2b)
//! ```
//!
//! Shape letters: B batch, L sequence, ED inner channels, N state size.
//!
//! Three entry points share one set of plain-Rust loops:
//! - [`selective_scan`]: the training path, a candle `CustomOp3` with a hand-written backward;
//! - [`selective_scan_ref`]: its reference twin, the same recurrence as per-timestep candle ops
//!   (autograd gives its backward); tests hold the two together;
//! - [`selective_scan_with_state`]: inference (prefill and decode), which starts from and updates a
//!   caller-owned state `h` of shape (B, ED, N) — constant size, whatever the context length.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Fast path. Shapes: u, delta (B, L, ED); a (ED, N); b, c (B, L, N). Returns y (B, L, ED).
pub fn selective_scan(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    check_shapes(u, delta, a, b, c)?;
    // The op takes three inputs: pack [u | Δ] and [B | C] along the last dim.
    let ud = Tensor::cat(&[u, delta], 2)?.contiguous()?; // (B, L, 2ED)
    let bc = Tensor::cat(&[b, c], 2)?.contiguous()?; // (B, L, 2N)
    ud.apply_op3(&a.contiguous()?, &bc, SelectiveScan)
}

/// Reference twin of [`selective_scan`]: one candle op per timestep, autograd for the backward.
/// Slow (op-overhead bound) and memory hungry; for tests and `--scan reference` runs.
pub fn selective_scan_ref(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    let (bsz, l, ed, n) = check_shapes(u, delta, a, b, c)?;
    let delta_a = delta.unsqueeze(3)?.broadcast_mul(&a.reshape((1, 1, ed, n))?)?.exp()?; // (B, L, ED, N)
    let delta_bu = (delta * u)?.unsqueeze(3)?.broadcast_mul(&b.unsqueeze(2)?)?; // (B, L, ED, N)
    let mut h = Tensor::zeros((bsz, ed, n), u.dtype(), u.device())?; // (B, ED, N)
    let mut ys = Vec::with_capacity(l);
    for t in 0..l {
        // h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t
        h = ((h * delta_a.get_on_dim(1, t)?)? + delta_bu.get_on_dim(1, t)?)?; // (B, ED, N)
                                                                              // y_t = h_t C_t
        let c_t = c.get_on_dim(1, t)?.unsqueeze(2)?; // (B, N, 1)
        ys.push(h.matmul(&c_t)?.squeeze(2)?); // (B, ED)
    }
    Tensor::stack(&ys, 1) // (B, L, ED)
}

/// Inference: runs the scan from the state `h` (B, ED, N), f32, and leaves the final state in it.
/// Shapes as in [`selective_scan`]; L may be 1 (decode) or more (prefill). Records no gradient.
pub fn selective_scan_with_state(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    h: &mut [f32],
) -> Result<Tensor> {
    let (bsz, l, ed, n) = check_shapes(u, delta, a, b, c)?;
    if h.len() != bsz * ed * n {
        candle_core::bail!("selective-scan state holds {} values, expected B*ED*N = {bsz}*{ed}*{n}", h.len());
    }
    let ud = Tensor::cat(&[u, delta], 2)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bc = Tensor::cat(&[b, c], 2)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let a = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let dims = Dims { bsz, l, ed, n };
    let y = dims.forward(&ud, &a, &bc, Some(h));
    Tensor::from_vec(y, (bsz, l, ed), u.device())?.to_dtype(u.dtype())
}

fn check_shapes(
    u: &Tensor,
    delta: &Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
) -> Result<(usize, usize, usize, usize)> {
    let (bsz, l, ed) = u.dims3()?;
    let (ed_a, n) = a.dims2()?;
    if delta.dims() != u.dims() || ed_a != ed || b.dims() != [bsz, l, n] || c.dims() != [bsz, l, n] {
        candle_core::bail!(
            "selective-scan shapes: u {:?}, delta {:?}, A {:?}, B {:?}, C {:?} (want u, delta (B, L, ED); A (ED, N); B, C (B, L, N))",
            u.dims(),
            delta.dims(),
            a.dims(),
            b.dims(),
            c.dims()
        );
    }
    Ok((bsz, l, ed, n))
}

// ---------------------------------------------------------------------------------------------
// The kernel. Work is split into tasks of (one batch row, a block of channels): channels are
// independent in the recurrence, so tasks run in parallel; dB and dC sum over channels, so each
// task returns its partial sums and they are added afterwards in a fixed order (deterministic).

struct SelectiveScan;

#[derive(Clone, Copy)]
struct Dims {
    bsz: usize,
    l: usize,
    ed: usize,
    n: usize,
}

/// Channels per task: small enough for parallelism at batch 1, large enough to amortise.
const CHANNEL_BLOCK: usize = 32;

/// A task: batch row `bi`, channels `d0..d0 + w`.
#[derive(Clone, Copy)]
struct Task {
    bi: usize,
    d0: usize,
    w: usize,
}

impl Dims {
    fn tasks(&self) -> Vec<Task> {
        let mut tasks = Vec::new();
        for bi in 0..self.bsz {
            let mut d0 = 0;
            while d0 < self.ed {
                let w = CHANNEL_BLOCK.min(self.ed - d0);
                tasks.push(Task { bi, d0, w });
                d0 += w;
            }
        }
        tasks
    }

    /// y (B, L, ED) from ud (B, L, 2ED), a (ED, N), bc (B, L, 2N); h0 = `state` or zeros.
    fn forward(&self, ud: &[f32], a: &[f32], bc: &[f32], mut state: Option<&mut [f32]>) -> Vec<f32> {
        let Dims { bsz, l, ed, n } = *self;
        let tasks = self.tasks();
        let work = |task: &Task, h: &mut [f32]| -> Vec<f32> {
            let mut y = vec![0f32; l * task.w]; // (L, w)
            self.forward_task(task, ud, a, bc, h, &mut y, None);
            y
        };
        // Each task's slice of the state: h is (B, ED, N), a task owns rows bi, d0..d0+w.
        let outs: Vec<Vec<f32>> = match state.as_deref_mut() {
            Some(h) => {
                let mut hs: Vec<&mut [f32]> = h.chunks_mut(CHANNEL_BLOCK * n).collect();
                // chunks_mut over (B*ED, N) rows lines up with tasks only when ED % block == 0;
                // otherwise fall back to per-task copies.
                if ed % CHANNEL_BLOCK == 0 && l * ed * n >= PAR_MIN {
                    tasks.par_iter().zip(hs.par_iter_mut()).map(|(t, h)| work(t, h)).collect()
                } else {
                    drop(hs);
                    tasks
                        .iter()
                        .map(|t| {
                            let off = (t.bi * ed + t.d0) * n;
                            work(t, &mut h[off..off + t.w * n])
                        })
                        .collect()
                }
            }
            None => {
                let run = |t: &Task| work(t, &mut vec![0f32; t.w * n]);
                if bsz * l * ed * n >= PAR_MIN {
                    tasks.par_iter().map(run).collect()
                } else {
                    tasks.iter().map(run).collect()
                }
            }
        };
        let mut y = vec![0f32; bsz * l * ed];
        for (t, yt) in tasks.iter().zip(outs) {
            for (s, row) in yt.chunks_exact(t.w).enumerate() {
                let o = (t.bi * l + s) * ed + t.d0;
                y[o..o + t.w].copy_from_slice(row);
            }
        }
        y
    }

    /// Runs one task forward from `h` (w, N), writing y (L, w). With `trace`, also stores h_t for
    /// every t (L, w, N) and exp(Δ_t A) (L, w, N) for the backward.
    #[allow(clippy::too_many_arguments)]
    fn forward_task(
        &self,
        task: &Task,
        ud: &[f32],
        a: &[f32],
        bc: &[f32],
        h: &mut [f32],
        y: &mut [f32],
        trace: Option<(&mut [f32], &mut [f32])>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.forward_task_avx2(task, ud, a, bc, h, y, trace) };
        }
        self.forward_task_impl(task, ud, a, bc, h, y, trace)
    }

    /// The same loops compiled for AVX2 + FMA (8 lanes instead of SSE2's 4). The arithmetic is the
    /// same (no fused multiply-adds are introduced), so both give bit-identical results.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_task_avx2(
        &self,
        task: &Task,
        ud: &[f32],
        a: &[f32],
        bc: &[f32],
        h: &mut [f32],
        y: &mut [f32],
        trace: Option<(&mut [f32], &mut [f32])>,
    ) {
        self.forward_task_impl(task, ud, a, bc, h, y, trace)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn forward_task_impl(
        &self,
        task: &Task,
        ud: &[f32],
        a: &[f32],
        bc: &[f32],
        h: &mut [f32],
        y: &mut [f32],
        mut trace: Option<(&mut [f32], &mut [f32])>,
    ) {
        let Dims { l, ed, n, .. } = *self;
        let Task { bi, d0, w } = *task;
        let mut e = vec![0f32; n];
        for t in 0..l {
            let row = (bi * l + t) * 2 * ed;
            let (u, dl) = (&ud[row..row + ed], &ud[row + ed..row + 2 * ed]);
            let bcr = &bc[(bi * l + t) * 2 * n..(bi * l + t + 1) * 2 * n];
            let (bt, ct) = bcr.split_at(n);
            for j in 0..w {
                let d = d0 + j;
                let (dt, dtx) = (dl[d], dl[d] * u[d]);
                let ad = &a[d * n..(d + 1) * n];
                let hd = &mut h[j * n..(j + 1) * n];
                // Zipped iterators: no bounds checks inside, so the loops vectorise.
                for (e, &ak) in e.iter_mut().zip(ad) {
                    *e = fast_exp(dt * ak);
                }
                for ((h, &e), &b) in hd.iter_mut().zip(&e).zip(bt) {
                    *h = e * *h + dtx * b;
                }
                y[t * w + j] = dot(hd, ct);
                if let Some((hs, es)) = trace.as_mut() {
                    let o = (t * w + j) * n;
                    hs[o..o + n].copy_from_slice(hd);
                    es[o..o + n].copy_from_slice(&e);
                }
            }
        }
    }

    /// Gradients of one task: writes d[u|Δ] for its channels into `dud` (L, 2, w), returns
    /// (dA (w, N), d[B|C] partial (L, 2N)).
    fn backward_task(&self, task: &Task, ud: &[f32], a: &[f32], bc: &[f32], gy: &[f32]) -> TaskGrads {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.backward_task_avx2(task, ud, a, bc, gy) };
        }
        self.backward_task_impl(task, ud, a, bc, gy)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_task_avx2(&self, task: &Task, ud: &[f32], a: &[f32], bc: &[f32], gy: &[f32]) -> TaskGrads {
        self.backward_task_impl(task, ud, a, bc, gy)
    }

    #[inline(always)]
    fn backward_task_impl(&self, task: &Task, ud: &[f32], a: &[f32], bc: &[f32], gy: &[f32]) -> TaskGrads {
        let Dims { l, ed, n, .. } = *self;
        let Task { bi, d0, w } = *task;
        // Recompute the forward, keeping every h_t and exp(Δ_t A).
        let mut hs = vec![0f32; l * w * n];
        let mut es = vec![0f32; l * w * n];
        let mut y = vec![0f32; l * w];
        self.forward_task_impl(task, ud, a, bc, &mut vec![0f32; w * n], &mut y, Some((&mut hs, &mut es)));

        let mut dh = vec![0f32; w * n]; // ∂loss/∂h_t, carried backwards in time
        let mut da = vec![0f32; w * n];
        let mut dbc = vec![0f32; l * 2 * n];
        let mut dud = vec![0f32; l * 2 * w];
        let zeros = vec![0f32; w * n];
        let (mut ddt_terms, mut dx_terms) = (vec![0f32; n], vec![0f32; n]);
        for t in (0..l).rev() {
            let row = (bi * l + t) * 2 * ed;
            let (u, dl) = (&ud[row..row + ed], &ud[row + ed..row + 2 * ed]);
            let bcr = &bc[(bi * l + t) * 2 * n..(bi * l + t + 1) * 2 * n];
            let (bt, ct) = bcr.split_at(n);
            let (db, dc) = dbc[t * 2 * n..(t + 1) * 2 * n].split_at_mut(n);
            let g = &gy[(bi * l + t) * ed..(bi * l + t + 1) * ed];
            let h_cur = &hs[t * w * n..(t + 1) * w * n];
            let h_prev = if t == 0 { &zeros[..] } else { &hs[(t - 1) * w * n..t * w * n] };
            let e_t = &es[t * w * n..(t + 1) * w * n];
            for j in 0..w {
                let d = d0 + j;
                let (dt, x, gd) = (dl[d], u[d], g[d]);
                let a_d = &a[d * n..(d + 1) * n];
                let rows = j * n..(j + 1) * n;
                let (hc, hp, ej) = (&h_cur[rows.clone()], &h_prev[rows.clone()], &e_t[rows.clone()]);
                let (dh_j, da_j) = (&mut dh[rows.clone()], &mut da[rows]);
                // Per-state terms first (no sums carried across k), then the two sums over k.
                for k in 0..n {
                    // y_t = Σ_k C_t[k] h_t[k]
                    dc[k] += gd * hc[k];
                    let dhk = dh_j[k] + gd * ct[k];
                    // h_t = e h_{t-1} + Δ x B,  e = exp(Δ A)
                    let de = dhk * hp[k];
                    let ei = ej[k];
                    ddt_terms[k] = de * ei * a_d[k] + dhk * bt[k] * x;
                    dx_terms[k] = dhk * bt[k];
                    da_j[k] += de * ei * dt;
                    db[k] += dhk * dt * x;
                    dh_j[k] = dhk * ei;
                }
                dud[(t * 2) * w + j] = dt * sum_lanes(&dx_terms);
                dud[(t * 2 + 1) * w + j] = sum_lanes(&ddt_terms);
            }
        }
        TaskGrads { dud, da, dbc }
    }
}

struct TaskGrads {
    dud: Vec<f32>, // (L, 2, w): rows of du then dΔ for the task's channels
    da: Vec<f32>,  // (w, N)
    dbc: Vec<f32>, // (L, 2N), partial over the task's channels
}

/// Below this many state updates a scan runs on the calling thread (decode steps are tiny).
const PAR_MIN: usize = 1 << 14;

impl CustomOp3 for SelectiveScan {
    fn name(&self) -> &'static str {
        "selective-scan"
    }

    fn cpu_fwd(
        &self,
        s_ud: &CpuStorage,
        l_ud: &Layout,
        s_a: &CpuStorage,
        l_a: &Layout,
        s_bc: &CpuStorage,
        l_bc: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bsz, l, ed2) = l_ud.shape().dims3()?;
        let (ed, n) = l_a.shape().dims2()?;
        if ed2 != 2 * ed || l_bc.shape().dims() != [bsz, l, 2 * n] {
            candle_core::bail!(
                "selective-scan: [u|Δ] {:?}, A {:?}, [B|C] {:?} do not agree",
                l_ud.shape(),
                l_a.shape(),
                l_bc.shape()
            );
        }
        let dims = Dims { bsz, l, ed, n };
        let y = dims.forward(f32_slice(s_ud, l_ud)?, f32_slice(s_a, l_a)?, f32_slice(s_bc, l_bc)?, None);
        Ok((CpuStorage::F32(y), Shape::from((bsz, l, ed))))
    }

    fn bwd(
        &self,
        ud_t: &Tensor,
        a_t: &Tensor,
        bc_t: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bsz, l, ed2) = ud_t.dims3()?;
        let (ed, n) = a_t.dims2()?;
        let dims = Dims { bsz, l, ed, n };
        debug_assert_eq!(ed2, 2 * ed);
        let ud = host_f32(ud_t)?;
        let a = host_f32(a_t)?;
        let bc = host_f32(bc_t)?;
        let gy = host_f32(grad_y)?;
        let tasks = dims.tasks();
        let grads: Vec<TaskGrads> = tasks.par_iter().map(|t| dims.backward_task(t, &ud, &a, &bc, &gy)).collect();

        // Reassemble in task order: a fixed summation order keeps runs bit-reproducible.
        let mut dud = vec![0f32; bsz * l * 2 * ed];
        let mut da = vec![0f32; ed * n];
        let mut dbc = vec![0f32; bsz * l * 2 * n];
        for (t, g) in tasks.iter().zip(grads) {
            for s in 0..l {
                for half in 0..2 {
                    let src = &g.dud[(s * 2 + half) * t.w..(s * 2 + half + 1) * t.w];
                    let o = (t.bi * l + s) * 2 * ed + half * ed + t.d0;
                    dud[o..o + t.w].copy_from_slice(src);
                }
            }
            for (dst, src) in da[t.d0 * n..(t.d0 + t.w) * n].iter_mut().zip(&g.da) {
                *dst += src;
            }
            for (dst, src) in dbc[t.bi * l * 2 * n..(t.bi + 1) * l * 2 * n].iter_mut().zip(&g.dbc) {
                *dst += src;
            }
        }
        let dev = ud_t.device();
        Ok((
            Some(Tensor::from_vec(dud, (bsz, l, 2 * ed), dev)?),
            Some(Tensor::from_vec(da, (ed, n), dev)?),
            Some(Tensor::from_vec(dbc, (bsz, l, 2 * n), dev)?),
        ))
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v,
        other => candle_core::bail!("selective-scan: f32 only, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("selective-scan: input of shape {:?} is not contiguous", l.shape()),
    }
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Σ a_i with eight independent accumulators, so the compiler can vectorise it.
#[inline(always)]
fn sum_lanes(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for i in 0..8 {
            acc[i] += a[c * 8 + i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for v in &a[chunks * 8..] {
        s += v;
    }
    s
}

/// Σ a_i b_i with eight independent accumulators, so the compiler can vectorise it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for i in 0..8 {
            acc[i] += a[c * 8 + i] * b[c * 8 + i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// exp(x) for f32 without branches, so loops over it vectorise: Cody-Waite range reduction
/// x = k ln2 + r, |r| ≤ ln2/2, then a degree-6 polynomial for e^r (Cephes expf coefficients),
/// scaled by 2^k through the exponent bits. Relative error ≲ 2e-7 on [-87, 88]; inputs are clamped
/// there (e^-87 ≈ 1.6e-38 stands in for 0, which the scan only ever multiplies with).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2^23 trick: after the add, the low mantissa bits of `t` hold
    // k as a two's-complement integer. Plain float/int ops only, so the loop vectorises (an
    // `as i32` cast would add scalar saturation checks).
    const SHIFTER: f32 = 12_582_912.0;
    let t = x * LOG2E + SHIFTER;
    let k = t - SHIFTER;
    let k_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits()); // k mod 2^32
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    er * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std_exp() {
        let mut worst = 0f32;
        let mut x = -80f32;
        while x < 80.0 {
            let rel = ((fast_exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.001_37;
        }
        println!("fast_exp worst relative error {worst:e}");
        assert!(worst < 5e-7, "fast_exp relative error {worst:e}");
    }
}
