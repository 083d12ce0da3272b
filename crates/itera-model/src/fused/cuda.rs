//! The fused ops on an NVIDIA GPU (behind the `cuda` feature): RMSNorm forward and backward, the
//! attention's scaled causal softmax forward and backward, the rotary embedding (one kernel both
//! ways) and AdamW's update of one parameter. The same arithmetic as their CPU kernels
//! (`fused.rs`, `softmax.rs`, `rope.rs`, `optim.rs`'s host loop),
//! CUDA C compiled once at run time by NVRTC (as the scan's, `scan/cuda.rs`).
//!
//! Why: built from candle ops, RMSNorm is 7 kernels forward and about 15 backward, the masked
//! softmax (with its mask uploaded from the host each call) about 8 and 10, AdamW about 12 per
//! parameter (counted in the code). A demo-size training step on a GPU runs at a third of PyTorch
//! eager's speed (docs/gpu.md), and per-op overhead is the suspect (not yet profiled). Here each
//! is one launch.
//!
//! Reductions are in a fixed order (a block's tree, or a candle sum of per-block partials), so a
//! run is reproducible (no atomics).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};
use std::sync::OnceLock;

/// The `cpu_fwd` of a three-operand op that has only a CUDA kernel (the backward halves of the
/// fused ops, whose forward runs on the CPU elsewhere): a named error.
macro_rules! cuda_only_cpu_fwd3 {
    () => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{}: a CUDA kernel, called on CPU tensors", self.name())
        }
    };
}
pub(crate) use cuda_only_cpu_fwd3;

const MODULE: &str = "itera_fused";
/// Threads of a block that reduces one row (RMSNorm); a multiple of the warp size.
const ROW_BLOCK: u32 = 256;
/// Rows a block of the RMSNorm backward walks at least (its weight-gradient partial covers them);
/// more where there would be over `NORM_MAX_BLOCKS` blocks.
const NORM_ROWS_PER_BLOCK: usize = 32;
const NORM_MAX_BLOCKS: usize = 1024;
/// Floats of shared memory the RMSNorm backward's warps may fill (48 KiB, the default limit):
/// one row of D per warp, at most 8 warps.
const NORM_SHARED_FLOATS: usize = 12 * 1024;
/// Threads of a block of the elementwise kernels (RoPE).
const ELEMENT_BLOCK: u32 = 256;
/// Rows of the softmax per block: one warp each.
const SOFTMAX_WARPS: u32 = 4;

const SOURCE: &str = r#"
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ float block_sum(float v, float* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < warps; w++) t += shared[w];
    return t;
}

// y = x / sqrt(mean(x^2) + eps) * w. One block per row of D.
extern "C" __global__ void rms_norm_fwd(const float* x, const float* w, float* y, int D, float eps) {
    __shared__ float shared[32];
    const long row = blockIdx.x;
    const float* xr = x + row * D;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) ss += xr[c] * xr[c];
    const float inv = rsqrtf(block_sum(ss, shared) / D + eps);
    for (int c = threadIdx.x; c < D; c += blockDim.x) y[row * D + c] = xr[c] * inv * w[c];
}

// dx = inv (gy w) - x inv^3 / D sum_j (gy w x)_j, one warp per row; the block's rows
// [blockIdx.x * R, +R) are dealt to its W warps in turn, each warp adds gy x inv of its rows into
// its own row of shared memory (W x D), and dw_part[block] is their sum in warp order (no atomics).
extern "C" __global__ void rms_norm_bwd(const float* x, const float* w, const float* gy, float* gx,
                                        float* dw_part, int rows, int D, int R, float eps) {
    extern __shared__ float acc[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
    float* mine = acc + (long)warp * D;
    for (int c = lane; c < D; c += 32) mine[c] = 0.0f;
    const long end = min((long)rows, ((long)blockIdx.x + 1) * R);
    for (long row = (long)blockIdx.x * R + warp; row < end; row += W) {
        const float* xr = x + row * D;
        const float* gr = gy + row * D;
        float ss = 0.0f, dot = 0.0f;
        for (int c = lane; c < D; c += 32) { ss += xr[c] * xr[c]; dot += gr[c] * w[c] * xr[c]; }
        const float inv = rsqrtf(warp_sum(ss) / D + eps);
        const float k = inv * inv * inv * warp_sum(dot) / D;
        for (int c = lane; c < D; c += 32) {
            gx[row * D + c] = inv * gr[c] * w[c] - xr[c] * k;
            mine[c] += gr[c] * xr[c] * inv;
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < D; c += blockDim.x) {
        float s = 0.0f;
        for (int v = 0; v < W; v++) s += acc[(long)v * D + c];
        dw_part[(long)blockIdx.x * D + c] = s;
    }
}

// y = softmax(scale * x) over the last dim S, keys j > S - L + i masked (y = 0), where i is the
// row's query (row % L). One warp per row.
extern "C" __global__ void causal_softmax_fwd(const float* x, float* y, long rows, int L, int S, float scale) {
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int visible = S - L + (int)(row % L) + 1;
    const float* xr = x + row * S;
    float* yr = y + row * S;
    float m = __int_as_float(0xff800000); // -inf (NVRTC has no math.h)
    for (int j = lane; j < visible; j += 32) m = fmaxf(m, xr[j] * scale);
    m = warp_max(m);
    float s = 0.0f;
    for (int j = lane; j < visible; j += 32) s += expf(xr[j] * scale - m);
    const float inv = 1.0f / warp_sum(s);
    for (int j = lane; j < S; j += 32) yr[j] = j < visible ? expf(xr[j] * scale - m) * inv : 0.0f;
}

// gx = scale * y * (gy - sum_j gy_j y_j). One warp per row.
extern "C" __global__ void causal_softmax_bwd(const float* y, const float* gy, float* gx, long rows, int S, float scale) {
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* yr = y + row * S;
    const float* gr = gy + row * S;
    float dot = 0.0f;
    for (int j = lane; j < S; j += 32) dot += gr[j] * yr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < S; j += 32) gx[row * S + j] = scale * yr[j] * (gr[j] - dot);
}

// The input row that output row `row` reads, and its position t: mode 0 in place, 1 tokens' order
// (B, L, H, Dh) in and heads' (B, H, L, Dh) out, 2 heads' in and tokens' out (`rope.rs`'s
// Order::source_row).
__device__ __forceinline__ long source_row(long row, int L, int H, int mode, int* t) {
    if (mode == 1) {
        const long bh = row / L;
        *t = (int)(row % L);
        return (bh / H * L + *t) * H + bh % H;
    }
    if (mode == 2) {
        const long bt = row / H;
        *t = (int)(bt % L);
        return (bt / L * H + row % H) * L + *t;
    }
    *t = (int)(row % L);
    return row;
}

// Rotary embedding of rows of Dh = 2 half (row t of L: cos and sin (L, half)); sign -1 is the
// inverse rotation (the backward). One thread per pair (x1[i], x2[i]) of the output, whose rows
// come from the input's by `source_row`.
extern "C" __global__ void rope(const float* x, const float* cs, const float* sn, float* y, long pairs, int L,
                                int half, float sign, int H, int mode) {
    const long p = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= pairs) return;
    const long row = p / half;
    const int i = (int)(p % half);
    int t;
    const long src = source_row(row, L, H, mode, &t);
    const float c = cs[t * half + i], s = sign * sn[t * half + i];
    const long a = src * 2 * half + i, o = row * 2 * half + i;
    const float x1 = x[a], x2 = x[a + half];
    y[o] = x1 * c - x2 * s;
    y[o + half] = x2 * c + x1 * s;
}

// The heads moved between the tokens' order (B, L, H, Dh) and the heads' (B, H, L, Dh): mode 1
// tokens in, heads out; mode 2 heads in, tokens out. One thread per value of the output.
extern "C" __global__ void move_heads(const float* x, float* y, long n, int L, int H, int Dh, int mode) {
    const long o = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n) return;
    const long row = o / Dh;
    const int i = (int)(o % Dh);
    int t;
    const long src = source_row(row, L, H, mode, &t);
    y[o] = x[src * Dh + i];
}

// SwiGLU's gating y = silu(g) u, and its backward: out = [dg | du] (2n).
extern "C" __global__ void swiglu_fwd(const float* g, const float* u, float* y, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float s = 1.0f / (1.0f + expf(-g[i]));
    y[i] = g[i] * s * u[i];
}
extern "C" __global__ void swiglu_bwd(const float* g, const float* u, const float* dy, float* out, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float s = 1.0f / (1.0f + expf(-g[i]));
    out[i] = dy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s)); // silu'(g) = s (1 + g (1 - s))
    out[n + i] = dy[i] * g[i] * s;
}

// Partial sums of squares of g (n values): block b's into out[b] (gridDim.x blocks, each a
// fixed order; the caller sums the partials).
extern "C" __global__ void sum_squares(const float* g, float* out, long n) {
    __shared__ float shared[32];
    float s = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) s += g[i] * g[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// AdamW (PyTorch's order, decoupled decay), in place: w, and mv = [m | v] (2n), the gradient
// times gscale (clipping's factor). The gradient is read through 2-D strides (value i of w is g[(i / cols) * sr + (i % cols) * sc]), so a
// transposed weight gradient (candle's matmul backward gives one) needs no copy first.
extern "C" __global__ void adamw_step(float* w, const float* g, float* mv, long n, long cols, long sr, long sc,
                                      float b1, float b2, float eps, float decay, float step_size, float bc2_sqrt,
                                      float gscale) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gi = g[(i / cols) * sr + (i % cols) * sc] * gscale;
    const float m = b1 * mv[i] + (1.0f - b1) * gi;
    const float v = b2 * mv[n + i] + (1.0f - b2) * gi * gi;
    mv[i] = m;
    mv[n + i] = v;
    const float denom = sqrtf(v) / bc2_sqrt + eps;
    w[i] = w[i] * decay - step_size * m / denom;
}

// The token embedding's backward: dw[v, c] = sum of gy[i, c] over the positions i whose token is
// v, in increasing i (off (V + 1) and order (N): the positions grouped by token, built on the
// host), so a run is reproducible. Block (v, column chunk); every row of dw is written.
extern "C" __global__ void embedding_bwd(const float* gy, const unsigned* off, const unsigned* order, float* dw,
                                         int D) {
    const long v = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= D) return;
    float s = 0.0f;
    for (unsigned p = off[v]; p < off[v + 1]; p++) s += gy[(long)order[p] * D + c];
    dw[v * D + c] = s;
}

// A row's max m and sum of exp(x - m), every lane of the warp getting both.
__device__ void warp_row_stats(const float* xr, int V, int lane, float* m_out, float* s_out) {
    float m = __int_as_float(0xff800000); // -inf (NVRTC has no math.h)
    for (int j = lane; j < V; j += 32) m = fmaxf(m, xr[j]);
    m = warp_max(m);
    float s = 0.0f;
    for (int j = lane; j < V; j += 32) s += expf(xr[j] - m);
    *m_out = m;
    *s_out = warp_sum(s);
}

// Cross-entropy of logits rows (N x V) against targets: loss[i] = logsumexp(x_i) - x_i[t_i]
// (NaN for a target outside the vocabulary). One warp per row.
extern "C" __global__ void cross_entropy_fwd(const float* x, const unsigned* t, float* loss, long rows, int V) {
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + row * V;
    float m, s;
    warp_row_stats(xr, V, lane, &m, &s);
    if (lane == 0) {
        const unsigned ti = t[row];
        loss[row] = ti < (unsigned)V ? logf(s) + m - xr[ti] : __int_as_float(0x7fc00000);
    }
}

// Its backward: gx[i, j] = gl[i] (softmax(x_i)_j - [j == t_i]). One warp per row.
extern "C" __global__ void cross_entropy_bwd(const float* x, const unsigned* t, const float* gl, float* gx, long rows,
                                             int V) {
    const long row = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + row * V;
    float m, s;
    warp_row_stats(xr, V, lane, &m, &s);
    const float g = gl[row], scale = g / s;
    const unsigned ti = t[row];
    for (int j = lane; j < V; j += 32) gx[row * V + j] = expf(xr[j] - m) * scale - ((unsigned)j == ti ? g : 0.0f);
}
// f32 <-> bf16 (`cast.rs`): bf16 as its 16 bits, the same arithmetic as the CPU's f32_to_bf16 /
// bf16_to_f32 (round to nearest even; NaNs quieted). With `vec` (x and y 16- and 8-byte aligned)
// thread i converts values 4i..4i+3 with one float4 and one 8-byte access, and thread n/4 the
// last n % 4; else one value a thread.
__device__ __forceinline__ unsigned f32_to_bf16(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ float bf16_to_f32(unsigned b) {
    if ((b & 0x7fffu) > 0x7f80u) b |= 0x40u;
    return __uint_as_float(b << 16);
}
extern "C" __global__ void cast_f32_bf16(const float* x, unsigned short* y, long n, int vec) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (!vec) {
        if (i < n) y[i] = (unsigned short)f32_to_bf16(x[i]);
        return;
    }
    const long n4 = n >> 2;
    if (i < n4) {
        const float4 v = reinterpret_cast<const float4*>(x)[i];
        uint2 o;
        o.x = f32_to_bf16(v.x) | (f32_to_bf16(v.y) << 16);
        o.y = f32_to_bf16(v.z) | (f32_to_bf16(v.w) << 16);
        reinterpret_cast<uint2*>(y)[i] = o;
    } else if (i == n4) {
        for (long j = n4 << 2; j < n; j++) y[j] = (unsigned short)f32_to_bf16(x[j]);
    }
}
extern "C" __global__ void cast_bf16_f32(const unsigned short* x, float* y, long n, int vec) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (!vec) {
        if (i < n) y[i] = bf16_to_f32(x[i]);
        return;
    }
    const long n4 = n >> 2;
    if (i < n4) {
        const uint2 v = reinterpret_cast<const uint2*>(x)[i];
        reinterpret_cast<float4*>(y)[i] =
            make_float4(bf16_to_f32(v.x & 0xffffu), bf16_to_f32(v.x >> 16), bf16_to_f32(v.y & 0xffffu), bf16_to_f32(v.y >> 16));
    } else if (i == n4) {
        for (long j = n4 << 2; j < n; j++) y[j] = bf16_to_f32(x[j]);
    }
}
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let compiled = PTX.get_or_init(|| {
        let opts = CompileOptions { name: Some(format!("{MODULE}.cu")), ..Default::default() };
        compile_ptx_with_opts(SOURCE, opts).map(|p| p.to_src()).map_err(|e| format!("{e:?}"))
    });
    compiled.as_deref().map_err(|e| candle_core::Error::Msg(format!("compiling the fused CUDA kernels: {e}")))
}

/// The contiguous f32 values of a CUDA operand (also the scan's, `scan/cuda.rs`); `what` names
/// the op in the error.
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input of shape {:?} is not contiguous", l.shape())))?;
    Ok(s.as_cuda_slice::<f32>()?.slice(start..end))
}

/// `x` as a kernel's `int` argument, or an error naming `op` and `what` past 2^31.
pub(crate) fn int(x: usize, what: &str, op: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("{op} on CUDA: {what} = {x} is over 2^31")))
}

fn grid(blocks: usize, op: &str) -> Result<u32> {
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b < (1 << 31))
        .ok_or_else(|| candle_core::Error::Msg(format!("{op} on CUDA: {blocks} blocks are too many")))
}

/// RMSNorm forward: x (.., D), w (D) contiguous f32.
pub(super) fn rms_norm_fwd(
    sx: &CudaStorage,
    lx: &Layout,
    sw: &CudaStorage,
    lw: &Layout,
    eps: f32,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let (x, w) = (view(sx, lx, op)?, view(sw, lw, op)?);
    let d = w.len();
    if d == 0 || x.len() % d != 0 {
        candle_core::bail!("{op}: input {:?} and weight {:?} disagree", lx.shape(), lw.shape());
    }
    let rows = x.len() / d;
    let dev = sx.device();
    let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(x.len()) }?;
    if rows > 0 {
        let f = dev.get_or_load_custom_func("rms_norm_fwd", MODULE, ptx()?)?;
        let d_i = int(d, "D", op)?;
        let mut b = f.builder();
        b.arg(&x).arg(&w).arg(&y).arg(&d_i).arg(&eps);
        let cfg = LaunchConfig { grid_dim: (grid(rows, op)?, 1, 1), block_dim: (ROW_BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), lx.shape().clone()))
}

/// RMSNorm backward: (dx, dw) for x (.., D), w (D), the output's gradient gy (.., D).
pub(super) fn rms_norm_bwd(x: &Tensor, w: &Tensor, gy: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let d = w.elem_count();
    if d > NORM_SHARED_FLOATS {
        candle_core::bail!("rms-norm-fused-backward on CUDA: width {d} is over the kernel's {NORM_SHARED_FLOATS}");
    }
    let rows = x.elem_count() / d.max(1);
    let rows_per_block = NORM_ROWS_PER_BLOCK.max(rows.div_ceil(NORM_MAX_BLOCKS));
    let blocks = rows.div_ceil(rows_per_block).max(1);
    let warps = (NORM_SHARED_FLOATS / d.max(1)).clamp(1, 8);
    let (x, w, gy) = (x.contiguous()?, w.contiguous()?, gy.contiguous()?);
    let flat = x.apply_op3_no_bwd(&w, &gy, &RmsNormGrad { eps, blocks, rows_per_block, warps })?;
    let gx = flat.narrow(0, 0, rows * d)?.reshape(x.shape())?;
    let dw = flat.narrow(0, rows * d, blocks * d)?.reshape((blocks, d))?.sum(0)?;
    Ok((gx, dw))
}

/// Writes [dx (rows·D) | dw partials (blocks·D)] as one flat tensor.
struct RmsNormGrad {
    eps: f32,
    blocks: usize,
    rows_per_block: usize,
    /// Warps of a block, each with a row of D floats of shared memory.
    warps: usize,
}

impl candle_core::CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-fused-backward"
    }

    cuda_only_cpu_fwd3!();

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        sw: &CudaStorage,
        lw: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (x, w, gy) = (view(sx, lx, op)?, view(sw, lw, op)?, view(sg, lg, op)?);
        let d = w.len();
        if d == 0 || x.len() % d != 0 || gy.len() != x.len() {
            candle_core::bail!("{op}: x {:?}, w {:?}, gy {:?} disagree", lx.shape(), lw.shape(), lg.shape());
        }
        let rows = x.len() / d;
        let dev = sx.device();
        let total = rows * d + self.blocks * d;
        // The kernel writes every value (dx row by row; each block its dw partial), so only an
        // empty input needs the zeros.
        let out: CudaSlice<f32> =
            if rows == 0 { dev.alloc_zeros::<f32>(total)? } else { unsafe { dev.alloc::<f32>(total) }? };
        if rows > 0 {
            let gx = out.slice(0..rows * d);
            let dw = out.slice(rows * d..);
            let f = dev.get_or_load_custom_func("rms_norm_bwd", MODULE, ptx()?)?;
            let (rows_i, d_i, r_i) = (int(rows, "rows", op)?, int(d, "D", op)?, int(self.rows_per_block, "R", op)?);
            let mut b = f.builder();
            b.arg(&x).arg(&w).arg(&gy).arg(&gx).arg(&dw).arg(&rows_i).arg(&d_i).arg(&r_i).arg(&self.eps);
            let cfg = LaunchConfig {
                grid_dim: (grid(self.blocks, op)?, 1, 1),
                block_dim: (32 * self.warps as u32, 1, 1),
                shared_mem_bytes: (self.warps * d * 4) as u32,
            };
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(total)))
    }
}

fn softmax_config(rows: usize, op: &str) -> Result<LaunchConfig> {
    let blocks = rows.div_ceil(SOFTMAX_WARPS as usize);
    Ok(LaunchConfig { grid_dim: (grid(blocks, op)?, 1, 1), block_dim: (32 * SOFTMAX_WARPS, 1, 1), shared_mem_bytes: 0 })
}

/// The scaled causal softmax forward: x (.., L, S) contiguous f32.
pub(super) fn causal_softmax_fwd(s: &CudaStorage, l: &Layout, scale: f32, op: &str) -> Result<(CudaStorage, Shape)> {
    let dims = l.shape().dims();
    let (ql, sl) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let x = view(s, l, op)?;
    let rows = x.len() / sl.max(1);
    let dev = s.device();
    let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(x.len()) }?;
    if rows > 0 {
        let f = dev.get_or_load_custom_func("causal_softmax_fwd", MODULE, ptx()?)?;
        let (rows_i, l_i, s_i) = (rows as i64, int(ql, "L", op)?, int(sl, "S", op)?);
        let mut b = f.builder();
        b.arg(&x).arg(&y).arg(&rows_i).arg(&l_i).arg(&s_i).arg(&scale);
        unsafe { b.launch(softmax_config(rows, op)?) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), l.shape().clone()))
}

/// The scaled causal softmax backward: gx from y and gy (.., L, S), contiguous f32.
pub(super) fn causal_softmax_bwd(
    sy: &CudaStorage,
    ly: &Layout,
    sg: &CudaStorage,
    lg: &Layout,
    scale: f32,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let (y, gy) = (view(sy, ly, op)?, view(sg, lg, op)?);
    if ly.shape() != lg.shape() {
        candle_core::bail!("{op}: y {:?} and its gradient {:?} disagree", ly.shape(), lg.shape());
    }
    let sl = *ly.shape().dims().last().unwrap_or(&1);
    let rows = y.len() / sl.max(1);
    let dev = sy.device();
    let gx: CudaSlice<f32> = unsafe { dev.alloc::<f32>(y.len()) }?;
    if rows > 0 {
        let f = dev.get_or_load_custom_func("causal_softmax_bwd", MODULE, ptx()?)?;
        let (rows_i, s_i) = (rows as i64, int(sl, "S", op)?);
        let mut b = f.builder();
        b.arg(&y).arg(&gy).arg(&gx).arg(&rows_i).arg(&s_i).arg(&scale);
        unsafe { b.launch(softmax_config(rows, op)?) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(gx, dev.clone()), ly.shape().clone()))
}

/// Rotary embedding (`rope.rs`): x, cos and sin (L, Dh/2), all contiguous f32; `inverse` negates
/// sin (the backward); `order` says whether the rows move between the tokens' and the heads' order.
#[allow(clippy::too_many_arguments)]
pub(super) fn rope(
    sx: &CudaStorage,
    lx: &Layout,
    sc: &CudaStorage,
    lc: &Layout,
    ss: &CudaStorage,
    ls: &Layout,
    inverse: bool,
    order: super::rope::Order,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let (x, cos, sin) = (view(sx, lx, op)?, view(sc, lc, op)?, view(ss, ls, op)?);
    let (shape, l, dh, h, mode) = order.shapes(lx.shape().dims())?;
    let half = dh / 2;
    let pairs = x.len() / 2;
    let dev = sx.device();
    let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(x.len()) }?;
    if pairs > 0 {
        let f = dev.get_or_load_custom_func("rope", MODULE, ptx()?)?;
        let (pairs_i, l_i, half_i, h_i) = (pairs as i64, int(l, "L", op)?, int(half, "Dh/2", op)?, int(h, "H", op)?);
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let mut b = f.builder();
        b.arg(&x).arg(&cos).arg(&sin).arg(&y).arg(&pairs_i).arg(&l_i).arg(&half_i).arg(&sign).arg(&h_i).arg(&mode);
        let cfg = LaunchConfig {
            grid_dim: (grid(pairs.div_ceil(ELEMENT_BLOCK as usize), op)?, 1, 1),
            block_dim: (ELEMENT_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
}

/// The heads moved (`rope.rs`'s [`heads`](super::rope::heads)): x contiguous f32, `order` ToHeads
/// or FromHeads.
pub(super) fn move_heads(
    sx: &CudaStorage,
    lx: &Layout,
    order: super::rope::Order,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let x = view(sx, lx, op)?;
    let (shape, l, dh, h, mode) = order.shapes(lx.shape().dims())?;
    if mode == 0 {
        candle_core::bail!("{op}: no heads to move");
    }
    let dev = sx.device();
    let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(x.len()) }?;
    if !x.is_empty() {
        let f = dev.get_or_load_custom_func("move_heads", MODULE, ptx()?)?;
        let (n_i, l_i, h_i, dh_i) = (x.len() as i64, int(l, "L", op)?, int(h, "H", op)?, int(dh, "Dh", op)?);
        let mut b = f.builder();
        b.arg(&x).arg(&y).arg(&n_i).arg(&l_i).arg(&h_i).arg(&dh_i).arg(&mode);
        unsafe { b.launch(element_config(x.len(), op)?) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
}

fn element_config(n: usize, op: &str) -> Result<LaunchConfig> {
    let blocks = grid(n.div_ceil(ELEMENT_BLOCK as usize), op)?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ELEMENT_BLOCK, 1, 1), shared_mem_bytes: 0 })
}

/// f32 ⇄ bf16 (`cast.rs`) of a contiguous operand: `to` is the other dtype of the pair.
pub(super) fn cast(s: &CudaStorage, l: &Layout, to: DType, op: &str) -> Result<(CudaStorage, Shape)> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input of shape {:?} is not contiguous", l.shape())))?;
    let n = end - start;
    // The vector path reads 4 values at once from a 4-aligned start (allocations are aligned more).
    let vec = i32::from(start % 4 == 0);
    let threads = if vec == 1 { n / 4 + 1 } else { n };
    let cfg = element_config(threads, op)?;
    match (s.dtype(), to) {
        (DType::F32, DType::BF16) => cast_as::<f32, half::bf16>(s, l, (start, end), "cast_f32_bf16", vec, cfg),
        (DType::BF16, DType::F32) => cast_as::<half::bf16, f32>(s, l, (start, end), "cast_bf16_f32", vec, cfg),
        (from, to) => candle_core::bail!("{op}: {from:?} to {to:?} is not an f32 ⇄ bf16 cast"),
    }
}

/// [`cast`]'s launch: values `span` of `s` (dtype `S`) into a fresh buffer of `D` by `kernel`.
fn cast_as<S, D>(
    s: &CudaStorage,
    l: &Layout,
    span: (usize, usize),
    kernel: &str,
    vec: i32,
    cfg: LaunchConfig,
) -> Result<(CudaStorage, Shape)>
where
    S: CudaDType + DeviceRepr,
    D: CudaDType + DeviceRepr,
{
    let (dev, n) = (s.device(), span.1 - span.0);
    let x = s.as_cuda_slice::<S>()?.slice(span.0..span.1);
    let y: CudaSlice<D> = unsafe { dev.alloc::<D>(n) }?;
    if n > 0 {
        let f = dev.get_or_load_custom_func(kernel, MODULE, ptx()?)?;
        let n_i = n as i64;
        let mut b = f.builder();
        b.arg(&x).arg(&y).arg(&n_i).arg(&vec);
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), l.shape().clone()))
}

/// SwiGLU's gating (`swiglu.rs`): silu(g) u, g and u contiguous f32 of the same shape.
pub(super) fn swiglu_fwd(
    sg: &CudaStorage,
    lg: &Layout,
    su: &CudaStorage,
    lu: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let (g, u) = (view(sg, lg, op)?, view(su, lu, op)?);
    if g.len() != u.len() {
        candle_core::bail!("{op}: gate {:?} and up {:?} disagree", lg.shape(), lu.shape());
    }
    let dev = sg.device();
    let y: CudaSlice<f32> = unsafe { dev.alloc::<f32>(g.len()) }?;
    if !g.is_empty() {
        let f = dev.get_or_load_custom_func("swiglu_fwd", MODULE, ptx()?)?;
        let n_i = g.len() as i64;
        let mut b = f.builder();
        b.arg(&g).arg(&u).arg(&y).arg(&n_i);
        unsafe { b.launch(element_config(g.len(), op)?) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), lg.shape().clone()))
}

/// SwiGLU's backward: from g, u and dy (contiguous f32, one shape), [dg | du] as one tensor of
/// 2n values (the caller splits it).
pub(super) struct SwiGluGrad;

impl candle_core::CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    cuda_only_cpu_fwd3!();

    fn cuda_fwd(
        &self,
        sg: &CudaStorage,
        lg: &Layout,
        su: &CudaStorage,
        lu: &Layout,
        sd: &CudaStorage,
        ld: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (g, u, dy) = (view(sg, lg, op)?, view(su, lu, op)?, view(sd, ld, op)?);
        if g.len() != u.len() || g.len() != dy.len() {
            candle_core::bail!("{op}: g {:?}, u {:?} and dy {:?} disagree", lg.shape(), lu.shape(), ld.shape());
        }
        let n = g.len();
        let dev = sg.device();
        let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(2 * n) }?;
        if n > 0 {
            let f = dev.get_or_load_custom_func("swiglu_bwd", MODULE, ptx()?)?;
            let n_i = n as i64;
            let mut b = f.builder();
            b.arg(&g).arg(&u).arg(&dy).arg(&out).arg(&n_i);
            unsafe { b.launch(element_config(n, op)?) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(2 * n)))
    }
}

/// Values a block of the sum of squares takes at least (256 threads, 16 values each); a gradient
/// gets up to `SUM_SQUARES_MAX_BLOCKS` blocks, one partial sum each.
const SUM_SQUARES_PER_BLOCK: usize = 4096;
const SUM_SQUARES_MAX_BLOCKS: usize = 256;

/// The partial sums [`SumSquaresInto`] writes for a gradient of `n` values.
pub(crate) fn sum_squares_slots(n: usize) -> usize {
    n.div_ceil(SUM_SQUARES_PER_BLOCK).clamp(1, SUM_SQUARES_MAX_BLOCKS)
}

/// The storage span of a layout whose values fill a dense block in some order (contiguous, or a
/// permutation of the dims of a contiguous tensor, as a transposed matrix is): `(start, end)`.
/// An order-free reduction reads such a tensor in place.
pub(crate) fn dense_span(l: &Layout) -> Option<(usize, usize)> {
    if let Some(span) = l.contiguous_offsets() {
        return Some(span);
    }
    let mut dims: Vec<(usize, usize)> =
        l.dims().iter().copied().zip(l.stride().iter().copied()).filter(|&(d, _)| d != 1).collect();
    if dims.iter().any(|&(d, _)| d == 0) {
        return Some((l.start_offset(), l.start_offset()));
    }
    dims.sort_by_key(|&(_, stride)| stride);
    let mut expect = 1;
    for (d, stride) in dims {
        if stride != expect {
            return None;
        }
        expect *= d;
    }
    Some((l.start_offset(), l.start_offset() + expect))
}

/// The sum of squares of a gradient (the second operand: f32, contiguous or any dense layout, see
/// [`dense_span`]) as [`sum_squares_slots`] partial sums into slots `slot..` of an f32 buffer
/// (the first): the parts of the gradient norm (`optim::clip_grad_norm_with`), one launch per
/// gradient where elementary ops take three (square, sum, widen) and a copy to gather them.
pub(crate) struct SumSquaresInto {
    pub slot: usize,
}

impl candle_core::InplaceOp2 for SumSquaresInto {
    fn name(&self) -> &'static str {
        "sum-squares-into"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        candle_core::bail!("{}: the CUDA kernel was called on CPU tensors", self.name())
    }

    fn cuda_fwd(&self, sb: &mut CudaStorage, lb: &Layout, sg: &CudaStorage, lg: &Layout) -> Result<()> {
        let op = self.name();
        let (g_start, g_end) = dense_span(lg)
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the gradient {:?} is not dense", lg.shape())))?;
        let g = sg.as_cuda_slice::<f32>()?.slice(g_start..g_end);
        let (start, end) = lb
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the buffer {:?} is not contiguous", lb.shape())))?;
        let slots = sum_squares_slots(g.len());
        if self.slot + slots > end - start {
            candle_core::bail!(
                "{op}: slots {}..{} are past the buffer's {} values",
                self.slot,
                self.slot + slots,
                end - start
            );
        }
        let dev = sb.device().clone();
        let buf = sb.as_cuda_slice_mut::<f32>()?;
        let mut out = buf.slice_mut(start + self.slot..start + self.slot + slots);
        let f = dev.get_or_load_custom_func("sum_squares", MODULE, ptx()?)?;
        let n_i = g.len() as i64;
        let mut b = f.builder();
        b.arg(&g).arg(&mut out).arg(&n_i);
        let cfg = LaunchConfig { grid_dim: (slots as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}

/// AdamW's update of one parameter in place: `w` (the parameter's own storage) and `mv` = [m | v]
/// (2n, the optimizer's), from the gradient `g`. The kernel writes `mv` too, through the device
/// pointer of a source operand: `mv` belongs to the optimizer alone and is never read elsewhere
/// while it runs.
pub(crate) struct AdamWKernel {
    pub b1: f32,
    pub b2: f32,
    pub eps: f32,
    pub decay: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    /// Clipping's factor, applied to the gradient as it is read.
    pub grad_scale: f32,
}

impl candle_core::InplaceOp3 for AdamWKernel {
    fn name(&self) -> &'static str {
        "adamw-fused"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        candle_core::bail!("{}: the CUDA update was called on CPU tensors", self.name())
    }

    fn cuda_fwd(
        &self,
        sw: &mut CudaStorage,
        lw: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
        smv: &CudaStorage,
        lmv: &Layout,
    ) -> Result<()> {
        let op = self.name();
        let mv = view(smv, lmv, op)?;
        let (start, end) = lw.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("{op}: the parameter {:?} is not contiguous", lw.shape()))
        })?;
        let n = end - start;
        // The gradient as (rows, cols) with strides (sr, sc): contiguous, or any 2-D dense layout
        // (a transposed weight's gradient) read in place.
        let not_dense = || format!("{op}: the gradient {:?} is neither contiguous nor a dense matrix", lg.shape());
        let (g_start, g_end) = dense_span(lg).ok_or_else(|| candle_core::Error::Msg(not_dense()))?;
        let (cols, sr, sc) = match (lg.is_contiguous(), lg.dims(), lg.stride()) {
            (true, _, _) => (n.max(1), n.max(1), 1),
            (false, &[_, c], &[a, b]) => (c, a, b),
            _ => candle_core::bail!("{}", not_dense()),
        };
        let g = sg.as_cuda_slice::<f32>()?.slice(g_start..g_end);
        if g.len() != n || lg.shape() != lw.shape() || mv.len() != 2 * n {
            candle_core::bail!(
                "{op}: parameter {:?}, gradient {:?}, moments {:?} disagree",
                lw.shape(),
                lg.shape(),
                lmv.shape()
            );
        }
        if n == 0 {
            return Ok(());
        }
        let dev = sw.device().clone();
        let w = sw.as_cuda_slice_mut::<f32>()?;
        let mut w = w.slice_mut(start..end);
        let f = dev.get_or_load_custom_func("adamw_step", MODULE, ptx()?)?;
        let (n_i, cols_i, sr_i, sc_i) = (n as i64, cols as i64, sr as i64, sc as i64);
        let mut b = f.builder();
        b.arg(&mut w).arg(&g).arg(&mv).arg(&n_i).arg(&cols_i).arg(&sr_i).arg(&sc_i);
        b.arg(&self.b1).arg(&self.b2).arg(&self.eps).arg(&self.decay).arg(&self.step_size).arg(&self.bc2_sqrt);
        b.arg(&self.grad_scale);
        let cfg =
            LaunchConfig { grid_dim: (grid(n.div_ceil(256), op)?, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}

/// The contiguous u32 values of a CUDA operand; `what` names the op in the error.
fn view_u32<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, u32>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input of shape {:?} is not contiguous", l.shape())))?;
    Ok(s.as_cuda_slice::<u32>()?.slice(start..end))
}

/// The token embedding's backward (`embedding.rs`): from the output's gradient gy (N, D) and the
/// positions grouped by token (`off` (V + 1), `order` (N), u32), the weight's gradient (V, D).
pub(super) struct EmbeddingGrad {
    pub vocab: usize,
}

impl candle_core::CustomOp3 for EmbeddingGrad {
    fn name(&self) -> &'static str {
        "embedding-backward"
    }

    cuda_only_cpu_fwd3!();

    fn cuda_fwd(
        &self,
        sg: &CudaStorage,
        lg: &Layout,
        so: &CudaStorage,
        lo: &Layout,
        sp: &CudaStorage,
        lp: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (gy, off, order) = (view(sg, lg, op)?, view_u32(so, lo, op)?, view_u32(sp, lp, op)?);
        let (n, d) = lg.shape().dims2()?;
        let v = self.vocab;
        if off.len() != v + 1 || order.len() != n {
            candle_core::bail!("{op}: gy {:?}, offsets {:?}, order {:?} disagree", lg.shape(), lo.shape(), lp.shape());
        }
        let dev = sg.device();
        let dw: CudaSlice<f32> = dev.alloc_zeros::<f32>(v * d)?;
        if v > 0 && d > 0 {
            let f = dev.get_or_load_custom_func("embedding_bwd", MODULE, ptx()?)?;
            let d_i = int(d, "D", op)?;
            let threads = d.min(ELEMENT_BLOCK as usize).div_ceil(32) * 32;
            let mut b = f.builder();
            b.arg(&gy).arg(&off).arg(&order).arg(&dw).arg(&d_i);
            let cfg = LaunchConfig {
                grid_dim: (grid(v, op)?, grid(d.div_ceil(threads), op)?, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(dw, dev.clone()), Shape::from((v, d))))
    }
}

/// The cross-entropy of logit rows (`cross_entropy.rs`): x (N, V) f32, targets (N,) u32 -> the
/// rows' losses (N,).
pub(super) fn cross_entropy_fwd(
    sx: &CudaStorage,
    lx: &Layout,
    st: &CudaStorage,
    lt: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let (x, t) = (view(sx, lx, op)?, view_u32(st, lt, op)?);
    let (rows, v) = lx.shape().dims2()?;
    if t.len() != rows {
        candle_core::bail!("{op}: logits {:?} and targets {:?} disagree", lx.shape(), lt.shape());
    }
    let dev = sx.device();
    let loss: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows) }?;
    if rows > 0 {
        let f = dev.get_or_load_custom_func("cross_entropy_fwd", MODULE, ptx()?)?;
        let (rows_i, v_i) = (rows as i64, int(v, "V", op)?);
        let mut b = f.builder();
        b.arg(&x).arg(&t).arg(&loss).arg(&rows_i).arg(&v_i);
        unsafe { b.launch(softmax_config(rows, op)?) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(loss, dev.clone()), Shape::from(rows)))
}

/// Its backward: from the logits x (N, V), the targets (N,) u32 and the losses' gradient (N,),
/// the logits' gradient (N, V).
pub(super) struct CrossEntropyGrad;

impl candle_core::CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-backward"
    }

    cuda_only_cpu_fwd3!();

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        st: &CudaStorage,
        lt: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (x, t, gl) = (view(sx, lx, op)?, view_u32(st, lt, op)?, view(sg, lg, op)?);
        let (rows, v) = lx.shape().dims2()?;
        if t.len() != rows || gl.len() != rows {
            candle_core::bail!(
                "{op}: logits {:?}, targets {:?}, gradient {:?} disagree",
                lx.shape(),
                lt.shape(),
                lg.shape()
            );
        }
        let dev = sx.device();
        let gx: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows * v) }?;
        if rows > 0 {
            let f = dev.get_or_load_custom_func("cross_entropy_bwd", MODULE, ptx()?)?;
            let (rows_i, v_i) = (rows as i64, int(v, "V", op)?);
            let mut b = f.builder();
            b.arg(&x).arg(&t).arg(&gl).arg(&gx).arg(&rows_i).arg(&v_i);
            unsafe { b.launch(softmax_config(rows, op)?) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(gx, dev.clone()), lx.shape().clone()))
    }
}
