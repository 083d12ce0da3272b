//! The fused selective scan on the CPU: plain-Rust loops over tasks of (one batch row, a block of
//! channels), in parallel with rayon, vectorised across the block's channels; compiled again for
//! AVX2 + FMA and for AVX-512 where the CPU has them.
//!
//! The kernel reads its operands where they lie ([`Operands`]: each (B·L, ·) stream with its own
//! row stride and column offset), so that callers need not pack them: `GatedScan` passes views
//! of its packed [u|dt|z] and [B|C], the mixer's op (`mixer.rs`) u, z and Δ apart and B, C inside
//! x_proj's output.

use crate::fused::{f32_slice, host_f32_ref};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// One of the scan's (B·L, ·) row-major streams: row r's element j at data[r·stride + offset + j].
#[derive(Clone, Copy)]
pub(super) struct Stream<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub offset: usize,
}

impl<'a> Stream<'a> {
    /// A packed (B·L, width) array.
    pub(super) fn rows(data: &'a [f32], width: usize) -> Self {
        Self { data, stride: width, offset: 0 }
    }

    /// Columns `offset..` of a (B·L, stride) array.
    pub(super) fn cols(data: &'a [f32], stride: usize, offset: usize) -> Self {
        Self { data, stride, offset }
    }

    /// Elements j0..j0 + w of row r.
    #[inline(always)]
    fn at(&self, r: usize, j0: usize, w: usize) -> &'a [f32] {
        let s = r * self.stride + self.offset + j0;
        &self.data[s..s + w]
    }
}

/// The scan's operands, wherever they lie: u, dt (before bias and softplus), z of width ED; B, C
/// of width N; A (ED, N) (negative), D and dt_bias (ED).
#[derive(Clone, Copy)]
pub(super) struct Operands<'a> {
    pub u: Stream<'a>,
    pub dt: Stream<'a>,
    pub z: Stream<'a>,
    pub b: Stream<'a>,
    pub c: Stream<'a>,
    pub a: &'a [f32],
    pub d: &'a [f32],
    pub bias: &'a [f32],
}

impl<'a> Operands<'a> {
    /// Views of `GatedScan`'s packed operands [u|dt|z] (B·L, 3ED), [A|D|bias] (ED, N + 2) (split
    /// into `params`' three parts by the caller), [B|C] (B·L, 2N).
    fn packed(dims: &Dims, udz: &'a [f32], a: &'a [f32], d: &'a [f32], bias: &'a [f32], bc: &'a [f32]) -> Self {
        let (ed, n) = (dims.ed, dims.n);
        Operands {
            u: Stream::cols(udz, 3 * ed, 0),
            dt: Stream::cols(udz, 3 * ed, ed),
            z: Stream::cols(udz, 3 * ed, 2 * ed),
            b: Stream::cols(bc, 2 * n, 0),
            c: Stream::cols(bc, 2 * n, n),
            a,
            d,
            bias,
        }
    }
}

/// Every gradient of the scan, each packed: du, ddt (of dt before bias and softplus), dz
/// (B·L, ED); dA (ED, N); dD, d(dt_bias) (ED); dB, dC (B·L, N).
pub(super) struct Grads {
    pub du: Vec<f32>,
    pub ddt: Vec<f32>,
    pub dz: Vec<f32>,
    pub da: Vec<f32>,
    pub dd: Vec<f32>,
    pub dbias: Vec<f32>,
    pub db: Vec<f32>,
    pub dc: Vec<f32>,
}

/// [A|D|bias] (ED, N + 2) split into A (ED, N), D, bias (ED).
fn split_params(p: &[f32], ed: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut a = Vec::with_capacity(ed * n);
    let (mut d, mut bias) = (Vec::with_capacity(ed), Vec::with_capacity(ed));
    for row in p.chunks_exact(n + 2) {
        a.extend_from_slice(&row[..n]);
        d.push(row[n]);
        bias.push(row[n + 1]);
    }
    (a, d, bias)
}

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
    let Dims { bsz, l, ed, n } = dims;
    let (a, d, bias) = split_params(f32_slice(s_p, l_p, op)?, ed, n);
    let ops = Operands::packed(&dims, f32_slice(s_udz, l_udz, op)?, &a, &d, &bias, f32_slice(s_bc, l_bc, op)?);
    let y = dims.forward(&ops, None);
    Ok((CpuStorage::F32(y), Shape::from((bsz, l, ed))))
}

/// ∂loss/∂([u|dt|z], [A|D|bias], [B|C]) given ∂loss/∂y (`GatedScan`'s backward).
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
    let (a, d, bias) = split_params(&p, ed, n);
    let g = dims.backward(&Operands::packed(&dims, &udz, &a, &d, &bias, &bc), &gy);
    // Pack the gradients as the operands are.
    let rows = bsz * l;
    let mut dudz = Vec::with_capacity(rows * 3 * ed);
    let mut dbc = Vec::with_capacity(rows * 2 * n);
    for r in 0..rows {
        for part in [&g.du, &g.ddt, &g.dz] {
            dudz.extend_from_slice(&part[r * ed..(r + 1) * ed]);
        }
        dbc.extend_from_slice(&g.db[r * n..(r + 1) * n]);
        dbc.extend_from_slice(&g.dc[r * n..(r + 1) * n]);
    }
    let mut dp = Vec::with_capacity(ed * n2);
    for j in 0..ed {
        dp.extend_from_slice(&g.da[j * n..(j + 1) * n]);
        dp.push(g.dd[j]);
        dp.push(g.dbias[j]);
    }
    let dev = udz_t.device();
    Ok((
        Tensor::from_vec(dudz, (bsz, l, 3 * ed), dev)?,
        Tensor::from_vec(dp, (ed, n2), dev)?,
        Tensor::from_vec(dbc, (bsz, l, 2 * n), dev)?,
    ))
}

/// A (B·L, ED) output that the tasks fill in parallel, each its own (batch row, channel block)
/// rows: written through a raw pointer because those parts interleave in memory.
struct TaskOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write disjoint parts (see `write`); the buffer outlives the parallel loop.
unsafe impl Send for TaskOut {}
unsafe impl Sync for TaskOut {}

impl TaskOut {
    /// An output of `len` values, uninitialised until every one is written ([`TaskOut::finish`]).
    fn new(len: usize) -> (Vec<f32>, TaskOut) {
        let mut v: Vec<f32> = Vec::with_capacity(len);
        let out = TaskOut { ptr: v.as_mut_ptr(), len };
        (v, out)
    }

    /// Copies `src` to `offset..`.
    ///
    /// # Safety
    /// No two calls, on any threads, write overlapping ranges.
    #[inline(always)]
    unsafe fn write(&self, offset: usize, src: &[f32]) {
        assert!(offset + src.len() <= self.len, "task output out of bounds");
        std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset), src.len());
    }

    /// `v` (made by [`TaskOut::new`]) once its every value has been written.
    ///
    /// # Safety
    /// Every one of the `len` values has been written.
    unsafe fn finish(mut v: Vec<f32>, len: usize) -> Vec<f32> {
        v.set_len(len);
        v
    }
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
/// per (t, state, channel), L N × 256 bytes: 1 MiB at L = 256, N = 16) about fills L2 (32 and
/// 128 channels measured slower and no faster at the demo's dimensions).
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

/// What the backward keeps of a task's forward: h_t per (t, state) as rows over the channels,
/// Δ_t and C_t·h_t per t. Reused across the tasks a worker runs. exp(Δ_t A) is not kept: the
/// backward computes it again from Δ_t and A (the same bits), which measured a little faster
/// than reading it back from a trace twice this size, past L2 (`examples/scan_profile`, demo
/// dims, 2026-12-07: backward 32 → 31 ms at one thread, 20 → 19 at two).
struct Trace {
    hs: Vec<Row>,    // (L, N)
    delta: Vec<Row>, // (L)
    ys: Vec<Row>,    // (L)
}

impl Trace {
    fn new(l: usize, n: usize) -> Trace {
        let zero = [0f32; CHANNEL_BLOCK];
        Trace { hs: vec![zero; l * n], delta: vec![zero; l], ys: vec![zero; l] }
    }
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

/// The backward of one timestep for a group of states `ks` (at most PART) over a task's
/// channels: given h_t, h_{t-1} and A per state (rows over the channels, indexed by k; e =
/// exp(Δ A) computed here), and per channel gd = ∂loss/∂ys, x, Δ, Δ x; and B_t, C_t: carries
/// dh back a step, accumulates dA and the states' terms of ∂loss/∂(Δ x B) and of dΔ (in the order of k), and
/// leaves in `pb[i]`, `pc[i]` the partial sums (chunks of PART channels added lane-wise, in
/// order) of the products whose sums over the channels are dB_t[k] and dC_t[k].
///
/// Chunk by chunk of PART channels, the states inside: a chunk's per-channel operands and the
/// two sums over k stay in registers while the states go by (a state at a time over all the
/// channels loaded and stored them once per state). The same operations in the same order.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn state_grads<const FMA: bool>(
    ks: std::ops::Range<usize>,
    (hc, hp, at): (&[Row], &[Row], &[Row]),
    (gd, x, delta, dtx): (&Row, &Row, &Row, &Row),
    (bt, ct): (&[f32], &[f32]),
    (dh, da): (&mut [Row], &mut [Row]),
    (dxb_sum, ddelta): (&mut Row, &mut Row),
    (pb, pc): (&mut [[f32; PART]; PART], &mut [[f32; PART]; PART]),
) {
    type Lanes = [f32; PART];
    let chunk = |row: &Row, q: usize| -> Lanes { row[q * PART..(q + 1) * PART].try_into().unwrap() };
    for q in 0..CHANNEL_BLOCK / PART {
        let (gd, x, delta, dtx) = (chunk(gd, q), chunk(x, q), chunk(delta, q), chunk(dtx, q));
        let (mut acc_x, mut acc_d) = (chunk(dxb_sum, q), chunk(ddelta, q));
        for (i, k) in ks.clone().enumerate() {
            let (b, c) = (bt[k], ct[k]);
            let (hc, hp, ak) = (chunk(&hc[k], q), chunk(&hp[k], q), chunk(&at[k], q));
            // e = exp(Δ A), recomputed: the same function of the same operands as the forward's
            let ek: Lanes = std::array::from_fn(|j| exp_with::<FMA>(delta[j] * ak[j]));
            let (mut dhq, mut daq) = (chunk(&dh[k], q), chunk(&da[k], q));
            let (mut prod_b, mut prod_c) = ([0f32; PART], [0f32; PART]);
            for j in 0..PART {
                // ys = Σ_k C_t[k] h_t[k]
                prod_c[j] = gd[j] * hc[j];
                let dhj = madd::<FMA>(gd[j], c, dhq[j]);
                // h_t = e h_{t-1} + Δ x B,  e = exp(Δ A)
                let dee = dhj * hp[j] * ek[j];
                let dxb = dhj * b;
                acc_x[j] += dxb;
                acc_d[j] += madd::<FMA>(dee, ak[j], dxb * x[j]);
                daq[j] = madd::<FMA>(dee, delta[j], daq[j]);
                prod_b[j] = dhj * dtx[j];
                dhq[j] = dhj * ek[j];
            }
            dh[k][q * PART..(q + 1) * PART].copy_from_slice(&dhq);
            da[k][q * PART..(q + 1) * PART].copy_from_slice(&daq);
            if q == 0 {
                (pb[i], pc[i]) = (prod_b, prod_c);
            } else {
                for j in 0..PART {
                    pb[i][j] += prod_b[j];
                    pc[i][j] += prod_c[j];
                }
            }
        }
        dxb_sum[q * PART..(q + 1) * PART].copy_from_slice(&acc_x);
        ddelta[q * PART..(q + 1) * PART].copy_from_slice(&acc_d);
    }
}

/// a·b + c: one fused multiply-add (a single rounding) when `FMA`, a product then a sum
/// otherwise. The scan's AVX2 and AVX-512 builds pass true (the instruction; the same bits in
/// both), the baseline build false: a `mul_add` there would be libm's `fmaf` in software.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// 1 / (1 + e^-x), branch-free (vectorises).
#[inline(always)]
pub(crate) fn fast_sigmoid(x: f32) -> f32 {
    sigmoid_with::<false>(x)
}

/// [`fast_sigmoid`], its exponential through [`exp_with`].
#[inline(always)]
fn sigmoid_with<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp_with::<FMA>(-x))
}

/// softplus(x) = relu(x) + ln(1 + e^-|x|), branch-free (vectorises); as `ops::softplus`.
#[inline(always)]
pub(crate) fn fast_softplus(x: f32) -> f32 {
    softplus_with::<false>(x)
}

/// [`fast_softplus`] with multiply-adds fused when `FMA` ([`madd`]).
#[inline(always)]
fn softplus_with<const FMA: bool>(x: f32) -> f32 {
    x.max(0.0) + ln_1p_unit::<FMA>(exp_with::<FMA>(-x.abs()))
}

/// ln(1 + y) for y in [0, 1]: 2·atanh(s), s = y / (2 + y) ≤ 1/3, by its odd series to s^13
/// (truncation error < 1e-8).
#[inline(always)]
fn ln_1p_unit<const FMA: bool>(y: f32) -> f32 {
    let s = y / (2.0 + y);
    let s2 = s * s;
    let p = 1.0 / 13.0;
    let p = madd::<FMA>(p, s2, 1.0 / 11.0);
    let p = madd::<FMA>(p, s2, 1.0 / 9.0);
    let p = madd::<FMA>(p, s2, 1.0 / 7.0);
    let p = madd::<FMA>(p, s2, 1.0 / 5.0);
    let p = madd::<FMA>(p, s2, 1.0 / 3.0);
    let p = madd::<FMA>(p, s2, 1.0);
    2.0 * s * p
}

/// One task's partial sums (its own rows of du, ddt, dz go straight to the outputs).
struct TaskGrads {
    da: Vec<Row>,  // (N): dA transposed
    dd: Row,       // dD
    dbias: Row,    // d(dt_bias)
    dbc: Vec<f32>, // (L, 2N), partial over the task's channels
}

/// The outputs a backward task writes its rows of.
struct GradOut {
    du: TaskOut,
    ddt: TaskOut,
    dz: TaskOut,
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

    /// The task's A (transposed), D and dt_bias.
    fn task_params(&self, ops: &Operands, task: &Task) -> TaskParams {
        let n = self.n;
        let mut tp = TaskParams {
            at: vec![[0f32; CHANNEL_BLOCK]; n],
            dskip: [0f32; CHANNEL_BLOCK],
            bias: [0f32; CHANNEL_BLOCK],
        };
        for j in 0..task.w {
            let ch = task.d0 + j;
            for (at_k, &a) in tp.at.iter_mut().zip(&ops.a[ch * n..(ch + 1) * n]) {
                at_k[j] = a;
            }
            tp.dskip[j] = ops.d[ch];
            tp.bias[j] = ops.bias[ch];
        }
        tp
    }

    /// y (B·L, ED) from the operands; h0 = `state` (B, ED, N) or zeros, the final state left there.
    pub(super) fn forward(&self, ops: &Operands, state: Option<&mut [f32]>) -> Vec<f32> {
        let Dims { bsz, l, ed, n } = *self;
        let tasks = self.tasks();
        let parallel = bsz * l * ed * n >= PAR_MIN;
        let (y, out) = TaskOut::new(bsz * l * ed);
        // `h` is the task's part of a state (B, ED, N): (w, N), transposed in and out.
        let work = |task: &Task, h: Option<&mut [f32]>| {
            let mut ht = vec![[0f32; CHANNEL_BLOCK]; n];
            if let Some(h) = h.as_deref() {
                for (j, hj) in h.chunks_exact(n).enumerate() {
                    for k in 0..n {
                        ht[k][j] = hj[k];
                    }
                }
            }
            self.forward_task(task, &self.task_params(ops, task), ops, &mut ht, &out, None);
            if let Some(h) = h {
                for (j, hj) in h.chunks_exact_mut(n).enumerate() {
                    for k in 0..n {
                        hj[k] = ht[k][j];
                    }
                }
            }
        };
        match state {
            // The state (B, ED, N) in blocks of CHANNEL_BLOCK rows lines up with the tasks.
            Some(h) if ed % CHANNEL_BLOCK == 0 && parallel => {
                let mut hs: Vec<&mut [f32]> = h.chunks_mut(CHANNEL_BLOCK * n).collect();
                tasks.par_iter().zip(hs.par_iter_mut()).for_each(|(t, h)| work(t, Some(h)));
            }
            Some(h) => tasks.iter().for_each(|t| {
                let off = (t.bi * ed + t.d0) * n;
                work(t, Some(&mut h[off..off + t.w * n]))
            }),
            None if parallel => tasks.par_iter().for_each(|t| work(t, None)),
            None => tasks.iter().for_each(|t| work(t, None)),
        }
        // SAFETY: the tasks cover every (batch row, channel) once, and each wrote its rows at every t.
        unsafe { TaskOut::finish(y, bsz * l * ed) }
    }

    /// Runs one task forward from `h` (N rows over the task's channels), writing its part of y;
    /// with `trace`, records it.
    fn forward_task(
        &self,
        task: &Task,
        tp: &TaskParams,
        ops: &Operands,
        h: &mut [Row],
        y: &TaskOut,
        trace: Option<&mut Trace>,
    ) {
        let mut none = Trace { hs: vec![], delta: vec![], ys: vec![] };
        match trace {
            Some(tr) => self.forward_task_dispatch::<true>(task, tp, ops, h, Some(y), tr),
            None => self.forward_task_dispatch::<false>(task, tp, ops, h, Some(y), &mut none),
        }
    }

    fn forward_task_dispatch<const TRACE: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        ops: &Operands,
        h: &mut [Row],
        y: Option<&TaskOut>,
        tr: &mut Trace,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
            return unsafe { self.forward_task_avx512::<TRACE>(task, tp, ops, h, y, tr) };
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.forward_task_avx2::<TRACE>(task, tp, ops, h, y, tr) };
        }
        self.forward_task_body::<TRACE, false>(task, tp, ops, h, y, tr)
    }

    /// The same loops for AVX-512 (16 lanes: a row is two registers). The AVX2 and AVX-512 builds
    /// fuse the same multiply-adds ([`madd`]), so they give bit-identical results; the baseline
    /// build (no FMA: other CPUs, wasm) rounds each product and sum apart.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn forward_task_avx512<const TRACE: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        ops: &Operands,
        h: &mut [Row],
        y: Option<&TaskOut>,
        tr: &mut Trace,
    ) {
        self.forward_task_body::<TRACE, true>(task, tp, ops, h, y, tr)
    }

    /// The same loops compiled for AVX2 + FMA (8 lanes instead of SSE2's 4).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_task_avx2<const TRACE: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        ops: &Operands,
        h: &mut [Row],
        y: Option<&TaskOut>,
        tr: &mut Trace,
    ) {
        self.forward_task_body::<TRACE, true>(task, tp, ops, h, y, tr)
    }

    /// The recurrence over the task's L steps; writes y's rows of the task's channels when given.
    #[inline(always)]
    fn forward_task_body<const TRACE: bool, const FMA: bool>(
        &self,
        task: &Task,
        tp: &TaskParams,
        ops: &Operands,
        h: &mut [Row],
        y: Option<&TaskOut>,
        tr: &mut Trace,
    ) {
        let Dims { l, ed, n, .. } = *self;
        let Task { bi, d0, w } = *task;
        let (h, at) = (&mut h[..n], &tp.at[..n]);
        for t in 0..l {
            let r = bi * l + t;
            let u = gather(ops.u.at(r, d0, w));
            let dtr = gather(ops.dt.at(r, d0, w));
            let z = gather(ops.z.at(r, d0, w));
            let (bt, ct) = (ops.b.at(r, 0, n), ops.c.at(r, 0, n));
            // Δ = softplus(dt + bias), and Δ x
            let (mut delta, mut dtx) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            for j in 0..CHANNEL_BLOCK {
                delta[j] = softplus_with::<FMA>(dtr[j] + tp.bias[j]);
                dtx[j] = delta[j] * u[j];
            }
            let mut ys = [0f32; CHANNEL_BLOCK]; // Σ_k C_t[k] h_t[k], in the order of k
            for k in 0..n {
                let (hk, ak, b, c) = (&mut h[k], &at[k], bt[k], ct[k]);
                let mut e = [0f32; CHANNEL_BLOCK];
                for j in 0..CHANNEL_BLOCK {
                    e[j] = exp_with::<FMA>(delta[j] * ak[j]);
                    hk[j] = madd::<FMA>(e[j], hk[j], dtx[j] * b);
                    ys[j] = madd::<FMA>(c, hk[j], ys[j]);
                }
                if TRACE {
                    tr.hs[t * n + k] = *hk;
                }
            }
            if let Some(y) = y {
                let mut out = [0f32; CHANNEL_BLOCK];
                for j in 0..CHANNEL_BLOCK {
                    out[j] = madd::<FMA>(tp.dskip[j], u[j], ys[j]) * (z[j] * sigmoid_with::<FMA>(z[j]));
                }
                // SAFETY: this task alone writes row r's channels d0..d0 + w.
                unsafe { y.write(r * ed + d0, &out[..w]) };
            }
            if TRACE {
                tr.delta[t] = delta;
                tr.ys[t] = ys;
            }
        }
    }

    /// Every gradient given ∂loss/∂y (B·L, ED): tasks in parallel, their partial sums added in
    /// task order (bit-reproducible at any thread count).
    pub(super) fn backward(&self, ops: &Operands, gy: &[f32]) -> Grads {
        let Dims { bsz, l, ed, n } = *self;
        let tasks = self.tasks();
        let len = bsz * l * ed;
        let ((du, du_out), (ddt, ddt_out), (dz, dz_out)) = (TaskOut::new(len), TaskOut::new(len), TaskOut::new(len));
        let out = GradOut { du: du_out, ddt: ddt_out, dz: dz_out };
        let partial: Vec<TaskGrads> =
            tasks.par_iter().map_init(|| Trace::new(l, n), |tr, t| self.backward_task(t, ops, gy, &out, tr)).collect();
        // SAFETY: the tasks cover every (batch row, channel) once, and each wrote its rows at every t.
        let (du, ddt, dz) = unsafe { (TaskOut::finish(du, len), TaskOut::finish(ddt, len), TaskOut::finish(dz, len)) };

        // Partial sums in task order: a fixed summation order keeps runs bit-reproducible.
        let mut da = vec![0f32; ed * n];
        let (mut dd, mut dbias) = (vec![0f32; ed], vec![0f32; ed]);
        let (mut db, mut dc) = (vec![0f32; bsz * l * n], vec![0f32; bsz * l * n]);
        for (t, g) in tasks.iter().zip(partial) {
            for j in 0..t.w {
                let row = &mut da[(t.d0 + j) * n..(t.d0 + j + 1) * n];
                for (dst, da_k) in row.iter_mut().zip(&g.da) {
                    *dst += da_k[j];
                }
                dd[t.d0 + j] += g.dd[j];
                dbias[t.d0 + j] += g.dbias[j];
            }
            for (s, src) in g.dbc.chunks_exact(2 * n).enumerate() {
                let r = t.bi * l + s;
                for (dst, v) in db[r * n..(r + 1) * n].iter_mut().zip(&src[..n]) {
                    *dst += v;
                }
                for (dst, v) in dc[r * n..(r + 1) * n].iter_mut().zip(&src[n..]) {
                    *dst += v;
                }
            }
        }
        Grads { du, ddt, dz, da, dd, dbias, db, dc }
    }

    fn backward_task(&self, task: &Task, ops: &Operands, gy: &[f32], out: &GradOut, tr: &mut Trace) -> TaskGrads {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
            return unsafe { self.backward_task_avx512(task, ops, gy, out, tr) };
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { self.backward_task_avx2(task, ops, gy, out, tr) };
        }
        self.backward_task_body::<false, false>(task, ops, gy, out, tr)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn backward_task_avx512(
        &self,
        task: &Task,
        ops: &Operands,
        gy: &[f32],
        out: &GradOut,
        tr: &mut Trace,
    ) -> TaskGrads {
        self.backward_task_body::<true, true>(task, ops, gy, out, tr)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_task_avx2(
        &self,
        task: &Task,
        ops: &Operands,
        gy: &[f32],
        out: &GradOut,
        tr: &mut Trace,
    ) -> TaskGrads {
        self.backward_task_body::<false, true>(task, ops, gy, out, tr)
    }

    /// Gradients of one task, given ∂loss/∂y (B·L, ED): its rows of du, ddt, dz written to `out`,
    /// its partial sums returned. `AVX512`: this is the AVX-512 build, which sums dB and dC with
    /// `halving_sums_avx512`.
    #[inline(always)]
    fn backward_task_body<const AVX512: bool, const FMA: bool>(
        &self,
        task: &Task,
        ops: &Operands,
        gy: &[f32],
        out: &GradOut,
        tr: &mut Trace,
    ) -> TaskGrads {
        let Dims { l, ed, n, .. } = *self;
        let Task { bi, d0, w } = *task;
        let tp = self.task_params(ops, task);
        // Recompute the forward, keeping what the backward reads.
        self.forward_task_body::<true, FMA>(task, &tp, ops, &mut vec![[0f32; CHANNEL_BLOCK]; n], None, tr);

        let zero = [0f32; CHANNEL_BLOCK];
        let mut g = TaskGrads { da: vec![zero; n], dd: zero, dbias: zero, dbc: vec![0f32; l * 2 * n] };
        let mut dh = vec![zero; n]; // ∂loss/∂h_t, carried backwards in time
        let zeros = vec![zero; n]; // h_{-1}
        let (at, dskip, bias) = (&tp.at[..n], &tp.dskip, &tp.bias);
        for t in (0..l).rev() {
            let r = bi * l + t;
            let u = gather(ops.u.at(r, d0, w));
            let dtr = gather(ops.dt.at(r, d0, w));
            let z = gather(ops.z.at(r, d0, w));
            let gout = gather(&gy[r * ed + d0..r * ed + d0 + w]);
            let (bt, ct) = (ops.b.at(r, 0, n), ops.c.at(r, 0, n));
            let (db, dc) = g.dbc[t * 2 * n..(t + 1) * 2 * n].split_at_mut(n);
            let (delta, ys) = (&tr.delta[t], &tr.ys[t]);
            let h_cur = &tr.hs[t * n..(t + 1) * n];
            let h_prev = if t == 0 { &zeros[..] } else { &tr.hs[(t - 1) * n..t * n] };
            // ∂loss/∂z, gd = ∂loss/∂(ys + D x), dΔ/d(dt) of the softplus, Δ x; dD.
            let mut dz = [0f32; CHANNEL_BLOCK];
            let (mut gd, mut sig_dt, mut dtx) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            for j in 0..CHANNEL_BLOCK {
                // y = (ys + D x) silu(z)
                let sig_z = sigmoid_with::<FMA>(z[j]);
                dz[j] = gout[j] * madd::<FMA>(dskip[j], u[j], ys[j]) * sig_z * madd::<FMA>(z[j], 1.0 - sig_z, 1.0);
                gd[j] = gout[j] * z[j] * sig_z;
                sig_dt[j] = sigmoid_with::<FMA>(dtr[j] + bias[j]);
                dtx[j] = delta[j] * u[j];
                g.dd[j] = madd::<FMA>(gd[j], u[j], g.dd[j]);
            }
            // Lane-wise over the channels for each state; Σ_k of the dΔ and dx terms in the
            // order of k, and dB_t[k], dC_t[k] summed over the channels.
            let (mut ddelta, mut dx) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            let (mut pb, mut pc) = ([[0f32; PART]; PART], [[0f32; PART]; PART]);
            for k0 in (0..n).step_by(PART) {
                let kn = PART.min(n - k0);
                state_grads::<FMA>(
                    k0..k0 + kn,
                    (h_cur, h_prev, at),
                    (&gd, &u, delta, &dtx),
                    (bt, ct),
                    (&mut dh, &mut g.da),
                    (&mut dx, &mut ddelta),
                    (&mut pb, &mut pc),
                );
                // dB_t[k], dC_t[k] for this group of states at once
                db[k0..k0 + kn].copy_from_slice(&halving_sums::<AVX512>(&pb)[..kn]);
                dc[k0..k0 + kn].copy_from_slice(&halving_sums::<AVX512>(&pc)[..kn]);
            }
            let (mut du, mut ddt) = ([0f32; CHANNEL_BLOCK], [0f32; CHANNEL_BLOCK]);
            for j in 0..CHANNEL_BLOCK {
                du[j] = madd::<FMA>(delta[j], dx[j], gd[j] * dskip[j]);
                ddt[j] = ddelta[j] * sig_dt[j];
                g.dbias[j] += ddt[j];
            }
            // SAFETY: this task alone writes row r's channels d0..d0 + w of each output.
            unsafe {
                out.du.write(r * ed + d0, &du[..w]);
                out.ddt.write(r * ed + d0, &ddt[..w]);
                out.dz.write(r * ed + d0, &dz[..w]);
            }
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
    exp_with::<false>(x)
}

/// [`fast_exp`] with its multiply-adds fused when `FMA` ([`madd`]): the same formula, rounded
/// once per multiply-add (the relative error bound holds for both).
#[inline(always)]
pub(crate) fn exp_with<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2^23 trick: after the add, the low mantissa bits of `t` hold
    // k as a two's-complement integer. Plain float/int ops only, so the loop vectorises (an
    // `as i32` cast would add scalar saturation checks).
    const SHIFTER: f32 = 12_582_912.0;
    let t = madd::<FMA>(x, LOG2E, SHIFTER);
    let k = t - SHIFTER;
    let k_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits()); // k mod 2^32
    let r = madd::<FMA>(-k, LN2_LO, madd::<FMA>(-k, LN2_HI, x));
    let p = 1.987_569_1e-4_f32;
    let p = madd::<FMA>(p, r, 1.398_199_9e-3);
    let p = madd::<FMA>(p, r, 8.333_452e-3);
    let p = madd::<FMA>(p, r, 4.166_579_6e-2);
    let p = madd::<FMA>(p, r, 1.666_666_5e-1);
    let p = madd::<FMA>(p, r, 5e-1);
    let er = madd::<FMA>(p * r, r, r) + 1.0;
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    er * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 and AVX2 builds of one task, forward and backward, give the same bits (they
    /// fuse the same multiply-adds; the docs and the trainer's reproducibility rely on it). A
    /// partial block of channels (w < 64) and N = 37 (a partial group of states) included. Skipped
    /// where the CPU lacks AVX-512 (one build only).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_avx512_builds_give_the_same_bits() {
        if !has_avx512f() {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let (bsz, l, ed, n) = (1, 24, 64 + 29, 37);
        let mut seed = 0x9e37_79b9_u32;
        let mut rand = |lo: f32, hi: f32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            lo + (hi - lo) * (seed as f32 / u32::MAX as f32)
        };
        let rows = bsz * l;
        let mut vec_of = |len: usize, lo: f32, hi: f32| (0..len).map(|_| rand(lo, hi)).collect::<Vec<f32>>();
        let (u, dt, z) = (vec_of(rows * ed, -1.0, 1.0), vec_of(rows * ed, -3.0, 0.5), vec_of(rows * ed, -2.0, 2.0));
        let bc = vec_of(rows * 2 * n, -1.0, 1.0);
        let (a, d, bias) = (vec_of(ed * n, -4.0, -0.5), vec_of(ed, 0.5, 1.5), vec_of(ed, -4.0, -2.0));
        let gy = vec_of(rows * ed, -1.0, 1.0);
        let ops = Operands {
            u: Stream::rows(&u, ed),
            dt: Stream::rows(&dt, ed),
            z: Stream::rows(&z, ed),
            b: Stream::cols(&bc, 2 * n, 0),
            c: Stream::cols(&bc, 2 * n, n),
            a: &a,
            d: &d,
            bias: &bias,
        };
        let dims = Dims { bsz, l, ed, n };
        // the first value whose bits differ, named (whole vectors would flood the log)
        let same = |what: &str, task: &Task, x: &[f32], y: &[f32]| {
            assert_eq!(x.len(), y.len(), "{what}: lengths");
            if let Some(i) = (0..x.len()).find(|&i| x[i].to_bits() != y[i].to_bits()) {
                panic!(
                    "{what} of task {}..{}: value {i} is {} (AVX-512) but {} (AVX2)",
                    task.d0,
                    task.d0 + task.w,
                    x[i],
                    y[i]
                );
            }
        };
        for task in dims.tasks() {
            let tp = dims.task_params(&ops, &task);
            // The task's columns of each row of a `TaskOut` buffer (rows × ed), the only values it wrote.
            let task_cols = |v: &Vec<f32>| -> Vec<f32> {
                (0..rows)
                    // SAFETY: the task wrote its columns of every row; nothing else is read.
                    .flat_map(|r| {
                        unsafe { std::slice::from_raw_parts(v.as_ptr().add(r * ed + task.d0), task.w) }.to_vec()
                    })
                    .collect()
            };
            // forward with its trace
            let run_fwd = |avx512: bool| {
                let (y, out) = TaskOut::new(rows * ed);
                let mut h = vec![[0f32; CHANNEL_BLOCK]; n];
                let mut tr = Trace::new(l, n);
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                unsafe {
                    if avx512 {
                        dims.forward_task_avx512::<true>(&task, &tp, &ops, &mut h, Some(&out), &mut tr)
                    } else {
                        dims.forward_task_avx2::<true>(&task, &tp, &ops, &mut h, Some(&out), &mut tr)
                    }
                }
                let ys = task_cols(&y);
                let trace: Vec<f32> = tr.hs.iter().chain(&tr.delta).chain(&tr.ys).flatten().copied().collect();
                (ys, trace, h.concat())
            };
            let (f512, f2) = (run_fwd(true), run_fwd(false));
            same("y", &task, &f512.0, &f2.0);
            same("the trace", &task, &f512.1, &f2.1);
            same("the final state", &task, &f512.2, &f2.2);
            // backward
            let run_bwd = |avx512: bool| {
                let ((du, du_o), (ddt, ddt_o), (dz, dz_o)) =
                    (TaskOut::new(rows * ed), TaskOut::new(rows * ed), TaskOut::new(rows * ed));
                let out = GradOut { du: du_o, ddt: ddt_o, dz: dz_o };
                let mut tr = Trace::new(l, n);
                // SAFETY: as above.
                let g = unsafe {
                    if avx512 {
                        dims.backward_task_avx512(&task, &ops, &gy, &out, &mut tr)
                    } else {
                        dims.backward_task_avx2(&task, &ops, &gy, &out, &mut tr)
                    }
                };
                let partial: Vec<f32> =
                    g.da.iter().flatten().chain(&g.dd).chain(&g.dbias).chain(&g.dbc).copied().collect();
                (task_cols(&du), task_cols(&ddt), task_cols(&dz), partial)
            };
            let (b512, b2) = (run_bwd(true), run_bwd(false));
            for (what, x, y) in [
                ("du", &b512.0, &b2.0),
                ("ddt", &b512.1, &b2.1),
                ("dz", &b512.2, &b2.2),
                ("partial sums", &b512.3, &b2.3),
            ] {
                same(what, &task, x, y);
            }
        }
    }

    #[test]
    fn fast_exp_matches_std_exp() {
        // the multiply-adds fused or not (`mul_add` is exact here too, in software if need be)
        for (name, f) in [("fast_exp", fast_exp as fn(f32) -> f32), ("exp_with::<true>", exp_with::<true>)] {
            let mut worst = 0f32;
            let mut x = -80f32;
            while x < 80.0 {
                let rel = ((f(x) - x.exp()) / x.exp()).abs();
                worst = worst.max(rel);
                x += 0.001_37;
            }
            println!("{name} worst relative error {worst:e}");
            assert!(worst < 5e-7, "{name} relative error {worst:e}");
        }
    }

    #[test]
    fn softplus_and_sigmoid_with_fma_match_std() {
        let mut x = -30f32;
        while x < 30.0 {
            let (sp, sg) =
                ((1.0 + (-x.abs() as f64).exp()).ln() + (x as f64).max(0.0), 1.0 / (1.0 + (-x as f64).exp()));
            for (got, want, what) in
                [(softplus_with::<true>(x) as f64, sp, "softplus"), (sigmoid_with::<true>(x) as f64, sg, "sigmoid")]
            {
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "{what}({x}) = {got}, want {want}");
            }
            x += 0.0173;
        }
    }
}
