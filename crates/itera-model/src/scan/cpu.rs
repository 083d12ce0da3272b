//! The fused selective scan on the CPU: plain-Rust loops over tasks of (one batch row, a block of
//! channels), in parallel with rayon, AVX2 + FMA where the CPU has them.

use crate::fused::{f32_slice, host_f32};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// y (B, L, ED) from the packed operands (`GatedScan`'s forward).
pub(super) fn forward(
    s_udz: &CpuStorage,
    l_udz: &Layout,
    s_p: &CpuStorage,
    l_p: &Layout,
    s_bc: &CpuStorage,
    l_bc: &Layout,
    op: &str,
) -> Result<(CpuStorage, Shape)> {
    let dims = Dims::of(l_udz, l_p, l_bc, op)?;
    let Dims { bsz, l, ed, .. } = dims;
    let y = dims.forward(f32_slice(s_udz, l_udz, op)?, f32_slice(s_p, l_p, op)?, f32_slice(s_bc, l_bc, op)?, None);
    Ok((CpuStorage::F32(y), Shape::from((bsz, l, ed))))
}

/// ∂loss/∂([u|dt|z], [A|D|bias], [B|C]) given ∂loss/∂y, on the host: tasks in parallel, their
/// partial sums added in task order (bit-reproducible at any thread count).
pub(super) fn backward(
    udz_t: &Tensor,
    p_t: &Tensor,
    bc_t: &Tensor,
    grad_y: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (bsz, l, _) = udz_t.dims3()?;
    let (ed, n2) = p_t.dims2()?;
    let n = n2 - 2;
    let dims = Dims { bsz, l, ed, n };
    let (udz, p, bc, gy) = (host_f32(udz_t)?, host_f32(p_t)?, host_f32(bc_t)?, host_f32(grad_y)?);
    let tasks = dims.tasks();
    let grads: Vec<TaskGrads> = tasks.par_iter().map(|t| dims.backward_task(t, &udz, &p, &bc, &gy)).collect();

    // Reassemble in task order: a fixed summation order keeps runs bit-reproducible.
    let mut dudz = vec![0f32; bsz * l * 3 * ed];
    let mut dp = vec![0f32; ed * n2];
    let mut dbc = vec![0f32; bsz * l * 2 * n];
    for (t, g) in tasks.iter().zip(grads) {
        for s in 0..l {
            for part in 0..3 {
                let src = &g.dudz[(s * 3 + part) * t.w..(s * 3 + part + 1) * t.w];
                let o = (t.bi * l + s) * 3 * ed + part * ed + t.d0;
                dudz[o..o + t.w].copy_from_slice(src);
            }
        }
        for j in 0..t.w {
            let row = &mut dp[(t.d0 + j) * n2..(t.d0 + j + 1) * n2];
            for (dst, src) in row[..n].iter_mut().zip(&g.da[j * n..(j + 1) * n]) {
                *dst += src;
            }
            row[n] += g.dd[j];
            row[n + 1] += g.dbias[j];
        }
        for (dst, src) in dbc[t.bi * l * 2 * n..(t.bi + 1) * l * 2 * n].iter_mut().zip(&g.dbc) {
            *dst += src;
        }
    }
    let dev = udz_t.device();
    Ok((
        Tensor::from_vec(dudz, (bsz, l, 3 * ed), dev)?,
        Tensor::from_vec(dp, (ed, n2), dev)?,
        Tensor::from_vec(dbc, (bsz, l, 2 * n), dev)?,
    ))
}

// ---------------------------------------------------------------------------------------------
// The kernel. Work is split into tasks of (one batch row, a block of channels): channels are
// independent in the recurrence, so tasks run in parallel; dB and dC sum over channels, and dA,
// dD, d(dt_bias) over the batch, so each task returns partial sums that are added afterwards in a
// fixed order (deterministic at any thread count).

#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub bsz: usize,
    pub l: usize,
    pub ed: usize,
    pub n: usize,
}

impl Dims {
    /// The dimensions of the packed operands [u|dt|z] (B, L, 3ED), [A|D|bias] (ED, N + 2),
    /// [B|C] (B, L, 2N), after checking that they agree.
    pub(super) fn of(l_udz: &Layout, l_p: &Layout, l_bc: &Layout, op: &str) -> Result<Dims> {
        let (bsz, l, ed3) = l_udz.shape().dims3()?;
        let (ed, n2) = l_p.shape().dims2()?;
        if ed3 != 3 * ed || n2 < 3 || l_bc.shape().dims() != [bsz, l, 2 * (n2 - 2)] {
            candle_core::bail!(
                "{op}: [u|dt|z] {:?}, [A|D|bias] {:?}, [B|C] {:?} do not agree",
                l_udz.shape(),
                l_p.shape(),
                l_bc.shape()
            );
        }
        Ok(Dims { bsz, l, ed, n: n2 - 2 })
    }
}

/// Channels per task: small enough for parallelism at batch 1, large enough to amortise.
const CHANNEL_BLOCK: usize = 64;

/// Below this many state updates a scan runs on the calling thread (decode steps are tiny).
const PAR_MIN: usize = 1 << 14;

/// A task: batch row `bi`, channels `d0..d0 + w`.
#[derive(Clone, Copy)]
struct Task {
    bi: usize,
    d0: usize,
    w: usize,
}

/// What the backward keeps of a task's forward: h_t and exp(Δ_t A) per (t, channel, state),
/// Δ_t and C_t·h_t per (t, channel).
struct Trace {
    hs: Vec<f32>,    // (L, w, N)
    es: Vec<f32>,    // (L, w, N)
    delta: Vec<f32>, // (L, w)
    ys: Vec<f32>,    // (L, w)
}

/// One task's gradients.
struct TaskGrads {
    dudz: Vec<f32>,  // (L, 3, w): rows of du, d(dt), dz for the task's channels
    da: Vec<f32>,    // (w, N)
    dd: Vec<f32>,    // (w)
    dbias: Vec<f32>, // (w)
    dbc: Vec<f32>,   // (L, 2N), partial over the task's channels
}

/// The per-state part of the backward for one (timestep, channel), every slice of length N:
/// accumulates dh, dA, dB, dC and writes the terms of dΔ and dx whose sums the caller takes.
///
/// Its own function, not inlined, so that the `&mut` slices arrive as separate parameters, which
/// rustc marks `noalias`: only then does LLVM vectorise the loop (inlined, it cannot tell the
/// buffers apart and runs it scalar). Dispatches to an AVX2 build of the same loop when it can.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn state_terms(
    inputs: (&[f32], &[f32], &[f32], &[f32], &[f32], &[f32]),
    scalars: (f32, f32, f32),
    dh: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dc: &mut [f32],
    ddelta_terms: &mut [f32],
    du_terms: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { state_terms_avx2(inputs, scalars, dh, da, db, dc, ddelta_terms, du_terms) };
    }
    state_terms_generic(inputs, scalars, dh, da, db, dc, ddelta_terms, du_terms)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
unsafe fn state_terms_avx2(
    inputs: (&[f32], &[f32], &[f32], &[f32], &[f32], &[f32]),
    scalars: (f32, f32, f32),
    dh: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dc: &mut [f32],
    ddelta_terms: &mut [f32],
    du_terms: &mut [f32],
) {
    state_terms_body(inputs, scalars, dh, da, db, dc, ddelta_terms, du_terms)
}

#[inline(never)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn state_terms_generic(
    inputs: (&[f32], &[f32], &[f32], &[f32], &[f32], &[f32]),
    scalars: (f32, f32, f32),
    dh: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dc: &mut [f32],
    ddelta_terms: &mut [f32],
    du_terms: &mut [f32],
) {
    state_terms_body(inputs, scalars, dh, da, db, dc, ddelta_terms, du_terms)
}

#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn state_terms_body(
    (hc, hp, ej, a_d, bt, ct): (&[f32], &[f32], &[f32], &[f32], &[f32], &[f32]),
    (gd, delta, x): (f32, f32, f32),
    dh: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dc: &mut [f32],
    ddelta_terms: &mut [f32],
    du_terms: &mut [f32],
) {
    let n = dh.len();
    let (hc, hp, ej, a_d, bt, ct) = (&hc[..n], &hp[..n], &ej[..n], &a_d[..n], &bt[..n], &ct[..n]);
    let (da, db, dc, ddelta_terms, du_terms) =
        (&mut da[..n], &mut db[..n], &mut dc[..n], &mut ddelta_terms[..n], &mut du_terms[..n]);
    for k in 0..n {
        // ys = Σ_k C_t[k] h_t[k]
        dc[k] += gd * hc[k];
        let dhk = dh[k] + gd * ct[k];
        // h_t = e h_{t-1} + Δ x B,  e = exp(Δ A)
        let de = dhk * hp[k];
        let ei = ej[k];
        ddelta_terms[k] = de * ei * a_d[k] + dhk * bt[k] * x;
        du_terms[k] = dhk * bt[k];
        da[k] += de * ei * delta;
        db[k] += dhk * delta * x;
        dh[k] = dhk * ei;
    }
}

/// [`state_terms`] at the presets' state size, on local arrays: copied in and out, the
/// buffers cannot alias, so the body inlines and vectorises without a call per (timestep,
/// channel). Returns Σ_k du_terms and Σ_k ddelta_terms, summed as `sum_lanes` sums them.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn state_terms_16(
    (hc, hp, ej, a_d, bt, ct): (&[f32], &[f32], &[f32], &[f32], &[f32], &[f32]),
    (gd, delta, x): (f32, f32, f32),
    dh: &mut [f32],
    da: &mut [f32],
    db: &mut [f32],
    dc: &mut [f32],
) -> (f32, f32) {
    const N: usize = 16;
    let arr = |s: &[f32]| -> [f32; N] { s[..N].try_into().expect("16 states") };
    let (hc, hp, ej, a_d, bt, ct) = (arr(hc), arr(hp), arr(ej), arr(a_d), arr(bt), arr(ct));
    let (mut dh_v, mut da_v, mut db_v, mut dc_v) = (arr(dh), arr(da), arr(db), arr(dc));
    let (mut ddelta_terms, mut du_terms) = ([0f32; N], [0f32; N]);
    state_terms_body(
        (&hc, &hp, &ej, &a_d, &bt, &ct),
        (gd, delta, x),
        &mut dh_v,
        &mut da_v,
        &mut db_v,
        &mut dc_v,
        &mut ddelta_terms,
        &mut du_terms,
    );
    dh[..N].copy_from_slice(&dh_v);
    da[..N].copy_from_slice(&da_v);
    db[..N].copy_from_slice(&db_v);
    dc[..N].copy_from_slice(&dc_v);
    (sum_lanes(&du_terms), sum_lanes(&ddelta_terms))
}

/// The task's D and dt_bias, gathered from the packed (ED, N + 2) parameter rows.
fn task_params(p: &[f32], n: usize, d0: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let row = |j: usize| &p[(d0 + j) * (n + 2)..(d0 + j + 1) * (n + 2)];
    ((0..w).map(|j| row(j)[n]).collect(), (0..w).map(|j| row(j)[n + 1]).collect())
}

/// 1 / (1 + e^-x), branch-free (vectorises).
#[inline(always)]
pub(crate) fn fast_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// softplus(x) = relu(x) + ln(1 + e^-|x|), branch-free (vectorises); as `ops::softplus`.
#[inline(always)]
pub(crate) fn fast_softplus(x: f32) -> f32 {
    x.max(0.0) + ln_1p_unit(fast_exp(-x.abs()))
}

/// ln(1 + y) for y in [0, 1]: 2·atanh(s), s = y / (2 + y) ≤ 1/3, by its odd series to s^13
/// (truncation error < 1e-8).
#[inline(always)]
fn ln_1p_unit(y: f32) -> f32 {
    let s = y / (2.0 + y);
    let s2 = s * s;
    let p = 1.0 / 13.0;
    let p = p * s2 + 1.0 / 11.0;
    let p = p * s2 + 1.0 / 9.0;
    let p = p * s2 + 1.0 / 7.0;
    let p = p * s2 + 1.0 / 5.0;
    let p = p * s2 + 1.0 / 3.0;
    let p = p * s2 + 1.0;
    2.0 * s * p
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

    /// y (B, L, ED) from udz (B, L, 3ED), params (ED, N+2), bc (B, L, 2N); h0 = `state` or zeros.
    pub(super) fn forward(&self, udz: &[f32], p: &[f32], bc: &[f32], state: Option<&mut [f32]>) -> Vec<f32> {
        let Dims { bsz, l, ed, n } = *self;
        let tasks = self.tasks();
        let parallel = bsz * l * ed * n >= PAR_MIN;
        let work = |task: &Task, h: &mut [f32]| -> Vec<f32> {
            let mut y = vec![0f32; l * task.w]; // (L, w)
            self.forward_task(task, udz, p, bc, h, &mut y, None);
            y
        };
        let outs: Vec<Vec<f32>> = match state {
            // The state (B, ED, N) in blocks of CHANNEL_BLOCK rows lines up with the tasks.
            Some(h) if ed % CHANNEL_BLOCK == 0 && parallel => {
                let mut hs: Vec<&mut [f32]> = h.chunks_mut(CHANNEL_BLOCK * n).collect();
                tasks.par_iter().zip(hs.par_iter_mut()).map(|(t, h)| work(t, h)).collect()
            }
            Some(h) => tasks
                .iter()
                .map(|t| {
                    let off = (t.bi * ed + t.d0) * n;
                    work(t, &mut h[off..off + t.w * n])
                })
                .collect(),
            None if parallel => tasks.par_iter().map(|t| work(t, &mut vec![0f32; t.w * n])).collect(),
            None => tasks.iter().map(|t| work(t, &mut vec![0f32; t.w * n])).collect(),
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

    /// Runs one task forward from `h` (w, N), writing y (L, w); with `trace`, records it.
    #[allow(clippy::too_many_arguments)]
    fn forward_task(
        &self,
        task: &Task,
        udz: &[f32],
        p: &[f32],
        bc: &[f32],
        h: &mut [f32],
        y: &mut [f32],
        trace: Option<&mut Trace>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.forward_task_avx2(task, udz, p, bc, h, y, trace) };
        }
        self.forward_task_impl(task, udz, p, bc, h, y, trace)
    }

    /// The same loops compiled for AVX2 + FMA (8 lanes instead of SSE2's 4). The arithmetic is
    /// the same (no fused multiply-adds are introduced), so both give bit-identical results.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_task_avx2(
        &self,
        task: &Task,
        udz: &[f32],
        p: &[f32],
        bc: &[f32],
        h: &mut [f32],
        y: &mut [f32],
        trace: Option<&mut Trace>,
    ) {
        self.forward_task_impl(task, udz, p, bc, h, y, trace)
    }

    /// [`Self::forward_task_body`] with the state size as a constant where it is the presets'
    /// (16): the per-state loops then have a known trip count, which LLVM unrolls into whole
    /// vectors instead of a loop whose vector body needs more iterations than there are.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn forward_task_impl(
        &self,
        task: &Task,
        udz: &[f32],
        p: &[f32],
        bc: &[f32],
        h: &mut [f32],
        y: &mut [f32],
        trace: Option<&mut Trace>,
    ) {
        if self.n == 16 {
            self.forward_task_body(task, udz, p, bc, h, y, trace, 16)
        } else {
            self.forward_task_body(task, udz, p, bc, h, y, trace, self.n)
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn forward_task_body(
        &self,
        task: &Task,
        udz: &[f32],
        p: &[f32],
        bc: &[f32],
        h: &mut [f32],
        y: &mut [f32],
        mut trace: Option<&mut Trace>,
        n: usize,
    ) {
        let Dims { l, ed, .. } = *self;
        let Task { bi, d0, w } = *task;
        let (dskip, bias) = task_params(p, n, d0, w);
        let (mut delta, mut gate, mut ys) = (vec![0f32; w], vec![0f32; w], vec![0f32; w]);
        let mut e = vec![0f32; n];
        for t in 0..l {
            let row = &udz[(bi * l + t) * 3 * ed..(bi * l + t + 1) * 3 * ed];
            let (u, dtr, z) = (&row[d0..d0 + w], &row[ed + d0..ed + d0 + w], &row[2 * ed + d0..2 * ed + d0 + w]);
            let (bt, ct) = bc[(bi * l + t) * 2 * n..(bi * l + t + 1) * 2 * n].split_at(n);
            // Per channel, vectorised over the block: Δ = softplus(dt + bias), gate = silu(z).
            for j in 0..w {
                delta[j] = fast_softplus(dtr[j] + bias[j]);
                gate[j] = z[j] * fast_sigmoid(z[j]);
            }
            for j in 0..w {
                let ad = &p[(d0 + j) * (n + 2)..(d0 + j) * (n + 2) + n];
                let dtx = delta[j] * u[j];
                let hd = &mut h[j * n..(j + 1) * n];
                // Zipped iterators: no bounds checks inside, so the loops vectorise.
                for (e, &ak) in e.iter_mut().zip(ad) {
                    *e = fast_exp(delta[j] * ak);
                }
                for ((h, &e), &b) in hd.iter_mut().zip(&e).zip(bt) {
                    *h = e * *h + dtx * b;
                }
                ys[j] = dot(hd, ct);
                if let Some(tr) = trace.as_deref_mut() {
                    let o = (t * w + j) * n;
                    tr.hs[o..o + n].copy_from_slice(hd);
                    tr.es[o..o + n].copy_from_slice(&e);
                }
            }
            for j in 0..w {
                y[t * w + j] = (ys[j] + dskip[j] * u[j]) * gate[j];
            }
            if let Some(tr) = trace.as_deref_mut() {
                tr.delta[t * w..(t + 1) * w].copy_from_slice(&delta);
                tr.ys[t * w..(t + 1) * w].copy_from_slice(&ys);
            }
        }
    }

    fn backward_task(&self, task: &Task, udz: &[f32], p: &[f32], bc: &[f32], gy: &[f32]) -> TaskGrads {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.backward_task_avx2(task, udz, p, bc, gy) };
        }
        self.backward_task_impl(task, udz, p, bc, gy)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_task_avx2(&self, task: &Task, udz: &[f32], p: &[f32], bc: &[f32], gy: &[f32]) -> TaskGrads {
        self.backward_task_impl(task, udz, p, bc, gy)
    }

    /// Gradients of one task, given ∂loss/∂y (B, L, ED).
    #[inline(always)]
    fn backward_task_impl(&self, task: &Task, udz: &[f32], p: &[f32], bc: &[f32], gy: &[f32]) -> TaskGrads {
        let Dims { l, ed, n, .. } = *self;
        let Task { bi, d0, w } = *task;
        // Recompute the forward, keeping what the backward reads.
        let mut tr = Trace {
            hs: vec![0f32; l * w * n],
            es: vec![0f32; l * w * n],
            delta: vec![0f32; l * w],
            ys: vec![0f32; l * w],
        };
        let mut y = vec![0f32; l * w];
        self.forward_task_impl(task, udz, p, bc, &mut vec![0f32; w * n], &mut y, Some(&mut tr));

        let mut g = TaskGrads {
            dudz: vec![0f32; l * 3 * w],
            da: vec![0f32; w * n],
            dd: vec![0f32; w],
            dbias: vec![0f32; w],
            dbc: vec![0f32; l * 2 * n],
        };
        let mut dh = vec![0f32; w * n]; // ∂loss/∂h_t, carried backwards in time
        let zeros = vec![0f32; w * n];
        let (mut ddelta_terms, mut du_terms) = (vec![0f32; n], vec![0f32; n]);
        let (dskip, bias) = task_params(p, n, d0, w);
        let (mut dz_row, mut gd_row, mut sig_dt) = (vec![0f32; w], vec![0f32; w], vec![0f32; w]);
        for t in (0..l).rev() {
            let row = &udz[(bi * l + t) * 3 * ed..(bi * l + t + 1) * 3 * ed];
            let (u, rest) = row.split_at(ed);
            let (dtr, z) = rest.split_at(ed);
            let (bt, ct) = bc[(bi * l + t) * 2 * n..(bi * l + t + 1) * 2 * n].split_at(n);
            let (db, dc) = g.dbc[t * 2 * n..(t + 1) * 2 * n].split_at_mut(n);
            let gy_t = &gy[(bi * l + t) * ed..(bi * l + t + 1) * ed];
            let h_cur = &tr.hs[t * w * n..(t + 1) * w * n];
            let h_prev = if t == 0 { &zeros[..] } else { &tr.hs[(t - 1) * w * n..t * w * n] };
            let e_t = &tr.es[t * w * n..(t + 1) * w * n];
            let (u, dtr, z) = (&u[d0..d0 + w], &dtr[d0..d0 + w], &z[d0..d0 + w]);
            let (delta, ys) = (&tr.delta[t * w..(t + 1) * w], &tr.ys[t * w..(t + 1) * w]);
            // Per channel, vectorised over the block: ∂loss/∂z, and gd = ∂loss/∂(ys + D x).
            for j in 0..w {
                // y = (ys + D x) silu(z)
                let sig_z = fast_sigmoid(z[j]);
                let gout = gy_t[d0 + j];
                dz_row[j] = gout * (ys[j] + dskip[j] * u[j]) * sig_z * (1.0 + z[j] * (1.0 - sig_z));
                gd_row[j] = gout * z[j] * sig_z;
                sig_dt[j] = fast_sigmoid(dtr[j] + bias[j]); // dΔ/d(dt) of the softplus
            }
            for j in 0..w {
                let a_d = &p[(d0 + j) * (n + 2)..(d0 + j) * (n + 2) + n];
                let (x, delta, gd) = (u[j], delta[j], gd_row[j]);
                g.dd[j] += gd * x;
                let rows = j * n..(j + 1) * n;
                let (hc, hp, ej) = (&h_cur[rows.clone()], &h_prev[rows.clone()], &e_t[rows.clone()]);
                let (dh_j, da_j) = (&mut dh[rows.clone()], &mut g.da[rows]);
                // Per-state terms first (no sums carried across k), then the two sums over k.
                let (du_sum, ddelta_sum) = if n == 16 {
                    state_terms_16((hc, hp, ej, a_d, bt, ct), (gd, delta, x), dh_j, da_j, db, dc)
                } else {
                    state_terms(
                        (hc, hp, ej, a_d, bt, ct),
                        (gd, delta, x),
                        dh_j,
                        da_j,
                        db,
                        dc,
                        &mut ddelta_terms,
                        &mut du_terms,
                    );
                    (sum_lanes(&du_terms), sum_lanes(&ddelta_terms))
                };
                let du = gd * dskip[j] + delta * du_sum;
                let ddt = ddelta_sum * sig_dt[j];
                g.dbias[j] += ddt;
                g.dudz[(t * 3) * w + j] = du;
                g.dudz[(t * 3 + 1) * w + j] = ddt;
            }
            g.dudz[(t * 3 + 2) * w..(t * 3 + 3) * w].copy_from_slice(&dz_row);
        }
        g
    }
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
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
