//! The fused selective scan on the CPU: plain-Rust loops over tasks of (one batch row, a block of
//! channels), in parallel with rayon, vectorised across the block's channels; compiled again for
//! AVX2 + FMA and for AVX-512 where the CPU has them.

use crate::fused::{f32_slice, host_f32_ref};
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
    let (udz, p, bc, gy) = (host_f32_ref(udz_t)?, host_f32_ref(p_t)?, host_f32_ref(bc_t)?, host_f32_ref(grad_y)?);
    let (udz, p, bc, gy): (&[f32], &[f32], &[f32], &[f32]) = (&udz, &p, &bc, &gy);
    let tasks = dims.tasks();
    let grads: Vec<TaskGrads> =
        tasks.par_iter().map_init(|| Trace::new(l, n), |tr, t| dims.backward_task(t, udz, p, bc, gy, tr)).collect();

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
            for (dst, da_k) in row[..n].iter_mut().zip(&g.da) {
                *dst += da_k[j];
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
//
// Inside a task the vectors run across its channels, not across the states of one channel: the
// state is kept transposed, one `Row` of channels per state k, so that for each (t, k) the update
// e = exp(Δ A[k]), h[k] = e h[k] + (Δ x) B_t[k] and y += C_t[k] h[k] are all lane-wise, with B_t[k]
// and C_t[k] broadcast. Only dB_t[k] and dC_t[k] (sums over channels) need a horizontal sum, one
// per (t, k) for the whole block. A task's last block may be partial: its missing channels are
// zeros (A = 0, x = 0, ∂loss/∂y = 0), which keep h = 0 and add exact zeros to every sum.

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

/// Channels per task, and the lanes of the kernel's rows (four AVX-512 registers). Wide enough
/// to amortise the horizontal sums of dB and dC and the per-timestep work; a backward's trace (h
/// and exp(ΔA) per (t, state, channel), 2 × L N × 256 bytes: 2 MiB at L = 256, N = 16) about
/// fills L2 (32 and 128 channels measured slower and no faster at the demo's dimensions).
const CHANNEL_BLOCK: usize = 64;

/// Lanes of the partial sums of dB and dC: a row's products are first added lane-wise in chunks
/// of this many channels, then the chunk's lanes by halving (`halving_sum`). A fixed order, the
/// same whatever vector width a build has.
const PART: usize = 16;

/// One value per channel of a task.
type Row = [f32; CHANNEL_BLOCK];

/// Below this many state updates a scan runs on the calling thread (decode steps are tiny).
const PAR_MIN: usize = 1 << 14;

/// A task: batch row `bi`, channels `d0..d0 + w`.
#[derive(Clone, Copy)]
struct Task {
    bi: usize,
    d0: usize,
    w: usize,
}

/// A task's parameters as rows over its channels: A transposed (N rows), D, dt_bias.
struct TaskParams {
    at: Vec<Row>,
    dskip: Row,
    bias: Row,
}

/// What the backward keeps of a task's forward: h_t and exp(Δ_t A) per (t, state) as rows over
/// the channels, Δ_t and C_t·h_t per t. Reused across the tasks a worker runs.
struct Trace {
    hs: Vec<Row>,    // (L, N)
    es: Vec<Row>,    // (L, N)
    delta: Vec<Row>, // (L)
    ys: Vec<Row>,    // (L)
}

impl Trace {
    fn new(l: usize, n: usize) -> Trace {
        let zero = [0f32; CHANNEL_BLOCK];
        Trace { hs: vec![zero; l * n], es: vec![zero; l * n], delta: vec![zero; l], ys: vec![zero; l] }
    }
}

/// One task's gradients.
struct TaskGrads {
    dudz: Vec<f32>, // (L, 3, w): rows of du, d(dt), dz for the task's channels
    da: Vec<Row>,   // (N): dA transposed
    dd: Row,        // dD
    dbias: Row,     // d(dt_bias)
    dbc: Vec<f32>,  // (L, 2N), partial over the task's channels
}

/// The first `src.len()` (≤ CHANNEL_BLOCK) lanes from `src`, the rest zeros.
#[inline(always)]
fn gather(src: &[f32]) -> Row {
    match src.try_into() {
        Ok(row) => row,
        Err(_) => {
            let mut row = [0f32; CHANNEL_BLOCK];
            row[..src.len()].copy_from_slice(src);
            row
        }
    }
}

/// A row's partial sums: its chunks of PART channels added lane-wise, in order.
#[inline(always)]
fn fold(row: &Row) -> [f32; PART] {
    let mut p = [0f32; PART];
    p.copy_from_slice(&row[..PART]);
    for q in 1..CHANNEL_BLOCK / PART {
        for i in 0..PART {
            p[i] += row[q * PART + i];
        }
    }
    p
}

/// Σ_i p_i by halving: p_i + p_{i+8}, then + p_{i+4}, ... (a fixed order).
#[inline(always)]
fn halving_sum(mut p: [f32; PART]) -> f32 {
    let mut m = PART / 2;
    while m > 0 {
        for i in 0..m {
            p[i] += p[i + m];
        }
        m /= 2;
    }
    p[0]
}

/// [`halving_sum`] of each of PART rows. The AVX-512 build does the same additions on the rows
/// packed together (`halving_sums_avx512`): 15 vector additions instead of 16 horizontal sums.
#[inline(always)]
fn halving_sums<const AVX512: bool>(rows: &[[f32; PART]; PART]) -> [f32; PART] {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: only the backward's AVX-512 build, run where the CPU has AVX-512F, passes true.
        return unsafe { halving_sums_avx512(rows) };
    }
    let mut out = [0f32; PART];
    for (o, r) in out.iter_mut().zip(rows) {
        *o = halving_sum(*r);
    }
    out
}

/// [`halving_sums`] in AVX-512 registers: each stage adds the halves of two rows' live lanes,
/// packing the results into one register (the same pairs of operands as `halving_sum`, so the
/// same bits); the last stage leaves row 4s + q at lane 4q + s, permuted back at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn halving_sums_avx512(rows: &[[f32; PART]; PART]) -> [f32; PART] {
    use std::arch::x86_64::*;
    let r: [__m512; PART] = std::array::from_fn(|i| _mm512_loadu_ps(rows[i].as_ptr()));
    // p_i + p_{i+8}: rows 2m and 2m + 1 in the lower and upper 256 bits.
    let a: [__m512; 8] = std::array::from_fn(|m| {
        let (x, y) = (r[2 * m], r[2 * m + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(x, y), _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y))
    });
    // + p_{i+4}: rows 4m .. 4m + 3, one per 128 bits.
    let b: [__m512; 4] = std::array::from_fn(|m| {
        let (x, y) = (a[2 * m], a[2 * m + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y))
    });
    // + p_{i+2}: in 128-bit lane q, rows q + 8m (lanes 0, 1) and q + 8m + 4 (lanes 2, 3).
    let c: [__m512; 2] = std::array::from_fn(|m| {
        let (x, y) = (b[2 * m], b[2 * m + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(x, y), _mm512_shuffle_ps::<0b11_10_11_10>(x, y))
    });
    // + p_{i+1}: lane 4q + s holds row q + 4s.
    let d =
        _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(c[0], c[1]), _mm512_shuffle_ps::<0b11_01_11_01>(c[0], c[1]));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut out = [0f32; PART];
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_permutexvar_ps(idx, d));
    out
}

/// The backward of one (timestep, state) over a task's channels: given h_t, h_{t-1}, e = exp(Δ A)
/// and A, and per channel gd = ∂loss/∂ys, x, Δ, Δ x; and B_t[k], C_t[k]: carries dh back a step,
/// accumulates dA and the state's terms of ∂loss/∂(Δ x B) and of dΔ, and writes the products
/// whose sums over the channels are dB_t[k] and dC_t[k].
///
/// Every row a parameter of its own, `&mut` ones marked `noalias`, which inlining keeps: LLVM
/// then vectorises the loop (on rows it cannot tell apart from the trace it runs it scalar).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn state_grads(
    (hc, hp, ek, ak): (&Row, &Row, &Row, &Row),
    (gd, x, delta, dtx): (&Row, &Row, &Row, &Row),
    (b, c): (f32, f32),
    (dh, da): (&mut Row, &mut Row),
    (dxb_sum, ddelta): (&mut Row, &mut Row),
    (pb, pc): (&mut [f32; PART], &mut [f32; PART]),
) {
    let (mut prod_b, mut prod_c) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
    for j in 0..CHANNEL_BLOCK {
        // ys = Σ_k C_t[k] h_t[k]
        prod_c[j] = gd[j] * hc[j];
        let dhj = dh[j] + gd[j] * c;
        // h_t = e h_{t-1} + Δ x B,  e = exp(Δ A)
        let dee = dhj * hp[j] * ek[j];
        let dxb = dhj * b;
        dxb_sum[j] += dxb;
        ddelta[j] += dee * ak[j] + dxb * x[j];
        da[j] += dee * delta[j];
        prod_b[j] = dhj * dtx[j];
        dh[j] = dhj * ek[j];
    }
    (*pb, *pc) = (fold(&prod_b), fold(&prod_c));
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

    /// The task's A (transposed), D and dt_bias, gathered from the packed (ED, N + 2) rows.
    fn task_params(&self, p: &[f32], task: &Task) -> TaskParams {
        let n = self.n;
        let mut tp = TaskParams {
            at: vec![[0f32; CHANNEL_BLOCK]; n],
            dskip: [0f32; CHANNEL_BLOCK],
            bias: [0f32; CHANNEL_BLOCK],
        };
        for j in 0..task.w {
            let row = &p[(task.d0 + j) * (n + 2)..(task.d0 + j + 1) * (n + 2)];
            for (at_k, &a) in tp.at.iter_mut().zip(&row[..n]) {
                at_k[j] = a;
            }
            tp.dskip[j] = row[n];
            tp.bias[j] = row[n + 1];
        }
        tp
    }

    /// y (B, L, ED) from udz (B, L, 3ED), params (ED, N+2), bc (B, L, 2N); h0 = `state` or zeros.
    pub(super) fn forward(&self, udz: &[f32], p: &[f32], bc: &[f32], state: Option<&mut [f32]>) -> Vec<f32> {
        let Dims { bsz, l, ed, n } = *self;
        let tasks = self.tasks();
        let parallel = bsz * l * ed * n >= PAR_MIN;
        // `h` is the task's part of a state (B, ED, N): (w, N), transposed in and out.
        let work = |task: &Task, h: Option<&mut [f32]>| -> Vec<f32> {
            let mut y = vec![0f32; l * task.w]; // (L, w)
            let mut ht = vec![[0f32; CHANNEL_BLOCK]; n];
            if let Some(h) = h.as_deref() {
                for (j, hj) in h.chunks_exact(n).enumerate() {
                    for k in 0..n {
                        ht[k][j] = hj[k];
                    }
                }
            }
            self.forward_task(task, &self.task_params(p, task), udz, bc, &mut ht, &mut y, None);
            if let Some(h) = h {
                for (j, hj) in h.chunks_exact_mut(n).enumerate() {
                    for k in 0..n {
                        hj[k] = ht[k][j];
                    }
                }
            }
            y
        };
        let outs: Vec<Vec<f32>> = match state {
            // The state (B, ED, N) in blocks of CHANNEL_BLOCK rows lines up with the tasks.
            Some(h) if ed % CHANNEL_BLOCK == 0 && parallel => {
                let mut hs: Vec<&mut [f32]> = h.chunks_mut(CHANNEL_BLOCK * n).collect();
                tasks.par_iter().zip(hs.par_iter_mut()).map(|(t, h)| work(t, Some(h))).collect()
            }
            Some(h) => tasks
                .iter()
                .map(|t| {
                    let off = (t.bi * ed + t.d0) * n;
                    work(t, Some(&mut h[off..off + t.w * n]))
                })
                .collect(),
            None if parallel => tasks.par_iter().map(|t| work(t, None)).collect(),
            None => tasks.iter().map(|t| work(t, None)).collect(),
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

    /// Runs one task forward from `h` (N rows over the task's channels), writing y (L, w); with
    /// `trace`, records it.
    #[allow(clippy::too_many_arguments)]
    fn forward_task(
        &self,
        task: &Task,
        tp: &TaskParams,
        udz: &[f32],
        bc: &[f32],
        h: &mut [Row],
        y: &mut [f32],
        trace: Option<&mut Trace>,
    ) {
        let mut none = Trace { hs: vec![], es: vec![], delta: vec![], ys: vec![] };
        match trace {
            Some(tr) => self.forward_task_dispatch::<true>(task, tp, udz, bc, h, y, tr),
            None => self.forward_task_dispatch::<false>(task, tp, udz, bc, h, y, &mut none),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_task_dispatch<const TRACE: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        udz: &[f32],
        bc: &[f32],
        h: &mut [Row],
        y: &mut [f32],
        tr: &mut Trace,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
            return unsafe { self.forward_task_avx512::<TRACE>(task, tp, udz, bc, h, y, tr) };
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.forward_task_avx2::<TRACE>(task, tp, udz, bc, h, y, tr) };
        }
        self.forward_task_body::<TRACE>(task, tp, udz, bc, h, y, tr)
    }

    /// The same loops for AVX-512 (16 lanes: a row is two registers). The arithmetic is the same
    /// (no fused multiply-adds are introduced), so every build gives bit-identical results.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_task_avx512<const TRACE: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        udz: &[f32],
        bc: &[f32],
        h: &mut [Row],
        y: &mut [f32],
        tr: &mut Trace,
    ) {
        self.forward_task_body::<TRACE>(task, tp, udz, bc, h, y, tr)
    }

    /// The same loops compiled for AVX2 + FMA (8 lanes instead of SSE2's 4).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_task_avx2<const TRACE: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        udz: &[f32],
        bc: &[f32],
        h: &mut [Row],
        y: &mut [f32],
        tr: &mut Trace,
    ) {
        self.forward_task_body::<TRACE>(task, tp, udz, bc, h, y, tr)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn forward_task_body<const TRACE: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        udz: &[f32],
        bc: &[f32],
        h: &mut [Row],
        y: &mut [f32],
        tr: &mut Trace,
    ) {
        let Dims { l, ed, n, .. } = *self;
        let Task { bi, d0, w } = *task;
        let (h, at) = (&mut h[..n], &tp.at[..n]);
        for t in 0..l {
            let row = &udz[(bi * l + t) * 3 * ed..(bi * l + t + 1) * 3 * ed];
            let u = gather(&row[d0..d0 + w]);
            let dtr = gather(&row[ed + d0..ed + d0 + w]);
            let z = gather(&row[2 * ed + d0..2 * ed + d0 + w]);
            let (bt, ct) = bc[(bi * l + t) * 2 * n..(bi * l + t + 1) * 2 * n].split_at(n);
            // Δ = softplus(dt + bias), and Δ x
            let (mut delta, mut dtx) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            for j in 0..CHANNEL_BLOCK {
                delta[j] = fast_softplus(dtr[j] + tp.bias[j]);
                dtx[j] = delta[j] * u[j];
            }
            let mut ys = [0f32; CHANNEL_BLOCK]; // Σ_k C_t[k] h_t[k], in the order of k
            for k in 0..n {
                let (hk, ak, b, c) = (&mut h[k], &at[k], bt[k], ct[k]);
                let mut e = [0f32; CHANNEL_BLOCK];
                for j in 0..CHANNEL_BLOCK {
                    e[j] = fast_exp(delta[j] * ak[j]);
                    hk[j] = e[j] * hk[j] + dtx[j] * b;
                    ys[j] += c * hk[j];
                }
                if TRACE {
                    tr.hs[t * n + k] = *hk;
                    tr.es[t * n + k] = e;
                }
            }
            let mut out = [0f32; CHANNEL_BLOCK];
            for j in 0..CHANNEL_BLOCK {
                out[j] = (ys[j] + tp.dskip[j] * u[j]) * (z[j] * fast_sigmoid(z[j]));
            }
            y[t * w..(t + 1) * w].copy_from_slice(&out[..w]);
            if TRACE {
                tr.delta[t] = delta;
                tr.ys[t] = ys;
            }
        }
    }

    fn backward_task(&self, task: &Task, udz: &[f32], p: &[f32], bc: &[f32], gy: &[f32], tr: &mut Trace) -> TaskGrads {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
            return unsafe { self.backward_task_avx512(task, udz, p, bc, gy, tr) };
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.backward_task_avx2(task, udz, p, bc, gy, tr) };
        }
        self.backward_task_body::<false>(task, udz, p, bc, gy, tr)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn backward_task_avx512(
        &self,
        task: &Task,
        udz: &[f32],
        p: &[f32],
        bc: &[f32],
        gy: &[f32],
        tr: &mut Trace,
    ) -> TaskGrads {
        self.backward_task_body::<true>(task, udz, p, bc, gy, tr)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_task_avx2(
        &self,
        task: &Task,
        udz: &[f32],
        p: &[f32],
        bc: &[f32],
        gy: &[f32],
        tr: &mut Trace,
    ) -> TaskGrads {
        self.backward_task_body::<false>(task, udz, p, bc, gy, tr)
    }

    /// Gradients of one task, given ∂loss/∂y (B, L, ED). `AVX512`: this is the AVX-512 build,
    /// which sums dB and dC with `halving_sums_avx512`.
    #[inline(always)]
    fn backward_task_body<const AVX512: bool>(
        &self,
        task: &Task,
        udz: &[f32],
        p: &[f32],
        bc: &[f32],
        gy: &[f32],
        tr: &mut Trace,
    ) -> TaskGrads {
        let Dims { l, ed, n, .. } = *self;
        let Task { bi, d0, w } = *task;
        let tp = self.task_params(p, task);
        // Recompute the forward, keeping what the backward reads.
        let mut y = vec![0f32; l * w];
        self.forward_task_body::<true>(task, &tp, udz, bc, &mut vec![[0f32; CHANNEL_BLOCK]; n], &mut y, tr);

        let zero = [0f32; CHANNEL_BLOCK];
        let mut g = TaskGrads {
            dudz: vec![0f32; l * 3 * w],
            da: vec![zero; n],
            dd: zero,
            dbias: zero,
            dbc: vec![0f32; l * 2 * n],
        };
        let mut dh = vec![zero; n]; // ∂loss/∂h_t, carried backwards in time
        let zeros = vec![zero; n]; // h_{-1}
        let (at, dskip, bias) = (&tp.at[..n], &tp.dskip, &tp.bias);
        for t in (0..l).rev() {
            let row = &udz[(bi * l + t) * 3 * ed..(bi * l + t + 1) * 3 * ed];
            let u = gather(&row[d0..d0 + w]);
            let dtr = gather(&row[ed + d0..ed + d0 + w]);
            let z = gather(&row[2 * ed + d0..2 * ed + d0 + w]);
            let gout = gather(&gy[(bi * l + t) * ed + d0..(bi * l + t) * ed + d0 + w]);
            let (bt, ct) = bc[(bi * l + t) * 2 * n..(bi * l + t + 1) * 2 * n].split_at(n);
            let (db, dc) = g.dbc[t * 2 * n..(t + 1) * 2 * n].split_at_mut(n);
            let (delta, ys) = (&tr.delta[t], &tr.ys[t]);
            let h_cur = &tr.hs[t * n..(t + 1) * n];
            let h_prev = if t == 0 { &zeros[..] } else { &tr.hs[(t - 1) * n..t * n] };
            let e_t = &tr.es[t * n..(t + 1) * n];
            // ∂loss/∂z, gd = ∂loss/∂(ys + D x), dΔ/d(dt) of the softplus, Δ x; dD.
            let mut dz = [0f32; CHANNEL_BLOCK];
            let (mut gd, mut sig_dt, mut dtx) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            for j in 0..CHANNEL_BLOCK {
                // y = (ys + D x) silu(z)
                let sig_z = fast_sigmoid(z[j]);
                dz[j] = gout[j] * (ys[j] + dskip[j] * u[j]) * sig_z * (1.0 + z[j] * (1.0 - sig_z));
                gd[j] = gout[j] * z[j] * sig_z;
                sig_dt[j] = fast_sigmoid(dtr[j] + bias[j]);
                dtx[j] = delta[j] * u[j];
                g.dd[j] += gd[j] * u[j];
            }
            // Lane-wise over the channels for each state; Σ_k of the dΔ and dx terms in the
            // order of k, and dB_t[k], dC_t[k] summed over the channels.
            let (mut ddelta, mut dx) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            let (mut pb, mut pc) = ([[0f32; PART]; PART], [[0f32; PART]; PART]);
            for k0 in (0..n).step_by(PART) {
                let kn = PART.min(n - k0);
                for (i, k) in (k0..k0 + kn).enumerate() {
                    state_grads(
                        (&h_cur[k], &h_prev[k], &e_t[k], &at[k]),
                        (&gd, &u, delta, &dtx),
                        (bt[k], ct[k]),
                        (&mut dh[k], &mut g.da[k]),
                        (&mut dx, &mut ddelta),
                        (&mut pb[i], &mut pc[i]),
                    );
                }
                // dB_t[k], dC_t[k] for this group of states at once
                db[k0..k0 + kn].copy_from_slice(&halving_sums::<AVX512>(&pb)[..kn]);
                dc[k0..k0 + kn].copy_from_slice(&halving_sums::<AVX512>(&pc)[..kn]);
            }
            let (mut du, mut ddt) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            for j in 0..CHANNEL_BLOCK {
                du[j] = gd[j] * dskip[j] + delta[j] * dx[j];
                ddt[j] = ddelta[j] * sig_dt[j];
                g.dbias[j] += ddt[j];
            }
            let o = t * 3 * w;
            g.dudz[o..o + w].copy_from_slice(&du[..w]);
            g.dudz[o + w..o + 2 * w].copy_from_slice(&ddt[..w]);
            g.dudz[o + 2 * w..o + 3 * w].copy_from_slice(&dz[..w]);
        }
        g
    }
}

/// The CPU can run the AVX-512 builds (which also use AVX2 and FMA); here and in `fused::vmath`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512f() -> bool {
    std::is_x86_feature_detected!("avx512f") && has_avx2_fma()
}

/// The CPU can run the AVX2 + FMA builds; here and in `fused::vmath`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
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
