//! The fused selective scan on an NVIDIA GPU: the same packed operands and the same arithmetic as
//! `cpu.rs`, one thread per (batch row, channel) walking the sequence with its N states in
//! registers. The kernels are CUDA C compiled once per state size N at run time by NVRTC (the
//! library candle's CUDA backend already loads), so the build needs no extra CUDA step.
//!
//! Backward: each thread recomputes its forward, keeping h_t in a scratch buffer (B, L, N, ED),
//! then walks back in time. dB and dC sum over channels: a warp adds its 32 channels with
//! shuffles and writes one partial per (b, t, warp); dA, dD and d(dt_bias) sum over the batch:
//! each thread writes its own row. Those partials are then summed by candle ops in a fixed order,
//! so a run is reproducible (no atomics).

use super::cpu::Dims;
use crate::fused::cuda::view;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Threads per block along the channels (a multiple of the warp size).
const BLOCK: u32 = 128;
/// Channels a warp reduces dB and dC over.
const WARP: usize = 32;

const SOURCE: &str = r#"
// N_STATE is defined before this text (one module per state size).
__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplusf(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

// y (B, L, ED) from udz = [u|dt|z] (B, L, 3ED), p = [A|D|bias] (ED, N+2), bc = [B|C] (B, L, 2N).
// Grid: (ceil(ED / blockDim.x), B); one thread per (b, d).
extern "C" __global__ void gated_scan_fwd(const float* udz, const float* p, const float* bc, float* y,
                                          int L, int ED) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    const int b = blockIdx.y;
    if (d >= ED) return;
    const int N = N_STATE;
    float a[N_STATE], h[N_STATE];
    for (int k = 0; k < N; k++) { a[k] = p[d * (N + 2) + k]; h[k] = 0.0f; }
    const float dskip = p[d * (N + 2) + N], bias = p[d * (N + 2) + N + 1];
    for (int t = 0; t < L; t++) {
        const long row = ((long)b * L + t);
        const float u = udz[row * 3 * ED + d], dt = udz[row * 3 * ED + ED + d], z = udz[row * 3 * ED + 2 * ED + d];
        const float* bt = bc + row * 2 * N;
        const float delta = softplusf(dt + bias);
        const float dtx = delta * u;
        float ys = 0.0f;
        for (int k = 0; k < N; k++) {
            h[k] = expf(delta * a[k]) * h[k] + dtx * bt[k];
            ys += h[k] * bt[N + k];
        }
        y[row * ED + d] = (ys + dskip * u) * (z * sigmoidf(z));
    }
}

// Gradients. ug = [u|dt|z|gy] (B, L, 4ED); hs: scratch (B, L, N, ED).
// Out: dudz (B, L, 3ED); dp_part (B, ED, N+2): per batch row; dbc_part (B, L, W, 2N): per warp.
// Grid: (ceil(ED / blockDim.x), B); every lane of a warp runs the loops (shuffles need them all),
// lanes past ED with zero contributions.
extern "C" __global__ void gated_scan_bwd(const float* ug, const float* p, const float* bc, float* hs,
                                          float* dudz, float* dp_part, float* dbc_part, int L, int ED, int W) {
    const int d_raw = blockIdx.x * blockDim.x + threadIdx.x;
    const int b = blockIdx.y;
    const bool on = d_raw < ED;
    const int d = on ? d_raw : ED - 1;
    const int warp = d_raw / 32, lane = threadIdx.x % 32;
    const int N = N_STATE;
    float a[N_STATE], h[N_STATE];
    for (int k = 0; k < N; k++) { a[k] = p[d * (N + 2) + k]; h[k] = 0.0f; }
    const float dskip = p[d * (N + 2) + N], bias = p[d * (N + 2) + N + 1];
    // Forward again, keeping h_t.
    for (int t = 0; t < L; t++) {
        const long row = ((long)b * L + t);
        const float u = ug[row * 4 * ED + d], dt = ug[row * 4 * ED + ED + d];
        const float* bt = bc + row * 2 * N;
        const float delta = softplusf(dt + bias);
        const float dtx = delta * u;
        for (int k = 0; k < N; k++) {
            h[k] = expf(delta * a[k]) * h[k] + dtx * bt[k];
            if (on) hs[(row * N + k) * ED + d] = h[k];
        }
    }
    float dh[N_STATE], da[N_STATE];
    for (int k = 0; k < N; k++) { dh[k] = 0.0f; da[k] = 0.0f; }
    float dd = 0.0f, dbias = 0.0f;
    for (int t = L - 1; t >= 0; t--) {
        const long row = ((long)b * L + t);
        const float u = ug[row * 4 * ED + d], dt = ug[row * 4 * ED + ED + d];
        const float z = ug[row * 4 * ED + 2 * ED + d];
        const float gy = on ? ug[row * 4 * ED + 3 * ED + d] : 0.0f;
        const float* bt = bc + row * 2 * N;
        const float delta = softplusf(dt + bias);
        const float sig_dt = sigmoidf(dt + bias);
        float ys = 0.0f;
        for (int k = 0; k < N; k++) ys += hs[(row * N + k) * ED + d] * bt[N + k];
        // y = (ys + D u) silu(z)
        const float sig_z = sigmoidf(z);
        const float dz = gy * (ys + dskip * u) * sig_z * (1.0f + z * (1.0f - sig_z));
        const float gd = gy * z * sig_z;
        dd += gd * u;
        float ddelta = 0.0f, du_sum = 0.0f;
        float* dbc_row = dbc_part + (row * W + warp) * 2 * N;
        for (int k = 0; k < N; k++) {
            const float hc = hs[(row * N + k) * ED + d];
            const float hp = t > 0 ? hs[((row - 1) * N + k) * ED + d] : 0.0f;
            const float e = expf(delta * a[k]);
            float dc = gd * hc;
            const float dhk = dh[k] + gd * bt[N + k];
            const float de = dhk * hp;
            ddelta += de * e * a[k] + dhk * bt[k] * u;
            du_sum += dhk * bt[k];
            da[k] += de * e * delta;
            float db = dhk * delta * u;
            dh[k] = dhk * e;
            for (int off = 16; off > 0; off /= 2) {
                db += __shfl_xor_sync(0xffffffffu, db, off);
                dc += __shfl_xor_sync(0xffffffffu, dc, off);
            }
            if (lane == 0 && warp < W) { dbc_row[k] = db; dbc_row[N + k] = dc; }
        }
        const float ddt = ddelta * sig_dt;
        dbias += ddt;
        if (on) {
            dudz[row * 3 * ED + d] = gd * dskip + delta * du_sum;
            dudz[row * 3 * ED + ED + d] = ddt;
            dudz[row * 3 * ED + 2 * ED + d] = dz;
        }
    }
    if (on) {
        float* dp = dp_part + ((long)b * ED + d) * (N + 2);
        for (int k = 0; k < N; k++) dp[k] = da[k];
        dp[N] = dd;
        dp[N + 1] = dbias;
    }
}
"#;

/// The PTX for state size `n`, compiled on first use.
fn ptx(n: usize) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<usize, String>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(&n) {
        return Ok(p.clone());
    }
    let src = format!("#define N_STATE {n}\n{SOURCE}");
    let opts = CompileOptions { name: Some(format!("itera_scan_n{n}.cu")), ..Default::default() };
    let ptx = compile_ptx_with_opts(&src, opts)
        .map_err(|e| candle_core::Error::Msg(format!("compiling the CUDA selective scan (N = {n}): {e:?}")))?
        .to_src();
    cache.insert(n, ptx.clone());
    Ok(ptx)
}

/// A contiguous f32 view of `s` under `l`.
/// Grid: blocks of `BLOCK` channels along x, one batch row per y (CUDA allows up to 65,535).
fn launch_config(dims: Dims) -> Result<LaunchConfig> {
    if dims.bsz > 65_535 {
        candle_core::bail!("selective scan on CUDA: batch {} is over the grid's 65,535 rows", dims.bsz);
    }
    Ok(LaunchConfig {
        grid_dim: ((dims.ed as u32).div_ceil(BLOCK), dims.bsz as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `x` as a kernel's `int` argument (the shared helper, with this kernel's name in its error).
fn int(x: usize, what: &str) -> Result<i32> {
    crate::fused::cuda::int(x, what, "selective scan")
}

/// `GatedScan`'s forward on the GPU.
pub(super) fn forward(
    s_udz: &CudaStorage,
    l_udz: &Layout,
    s_p: &CudaStorage,
    l_p: &Layout,
    s_bc: &CudaStorage,
    l_bc: &Layout,
    op: &str,
) -> Result<(CudaStorage, Shape)> {
    let dims = Dims::of(l_udz, l_p, l_bc, op)?;
    let Dims { bsz, l, ed, n } = dims;
    let dev: &CudaDevice = s_udz.device();
    let func = dev.get_or_load_custom_func("gated_scan_fwd", &format!("itera_scan_n{n}"), &ptx(n)?)?;
    let (udz, p, bc) = (view(s_udz, l_udz, op)?, view(s_p, l_p, op)?, view(s_bc, l_bc, op)?);
    let y: CudaSlice<f32> = dev.alloc_zeros::<f32>(bsz * l * ed)?;
    let (l_i, ed_i) = (int(l, "L")?, int(ed, "ED")?);
    let mut builder = func.builder();
    builder.arg(&udz).arg(&p).arg(&bc).arg(&y).arg(&l_i).arg(&ed_i);
    // SAFETY: the kernel reads B·L·3ED, ED·(N+2) and B·L·2N floats and writes B·L·ED, the sizes
    // of the views and of `y` (checked by `Dims::of`).
    unsafe { builder.launch(launch_config(dims)?) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from((bsz, l, ed))))
}

/// The backward kernel as an op over ([u|dt|z|gy], [A|D|bias], [B|C]): its output is one flat
/// buffer holding dudz, then the per-row dp partials, then the per-warp dbc partials.
struct GatedScanGrad;

impl CustomOp3 for GatedScanGrad {
    fn name(&self) -> &'static str {
        "gated-selective-scan-backward"
    }

    crate::fused::cuda::cuda_only_cpu_fwd3!();

    fn cuda_fwd(
        &self,
        s_ug: &CudaStorage,
        l_ug: &Layout,
        s_p: &CudaStorage,
        l_p: &Layout,
        s_bc: &CudaStorage,
        l_bc: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (bsz, l, ed4) = l_ug.shape().dims3()?;
        let (ed, n2) = l_p.shape().dims2()?;
        if ed4 != 4 * ed || n2 < 3 || l_bc.shape().dims() != [bsz, l, 2 * (n2 - 2)] {
            candle_core::bail!(
                "{op}: [u|dt|z|gy] {:?}, [A|D|bias] {:?}, [B|C] {:?} do not agree",
                l_ug.shape(),
                l_p.shape(),
                l_bc.shape()
            );
        }
        let dims = Dims { bsz, l, ed, n: n2 - 2 };
        let n = dims.n;
        let warps = ed.div_ceil(WARP);
        let dev: &CudaDevice = s_ug.device();
        let func = dev.get_or_load_custom_func("gated_scan_bwd", &format!("itera_scan_n{n}"), &ptx(n)?)?;
        let (ug, p, bc) = (view(s_ug, l_ug, op)?, view(s_p, l_p, op)?, view(s_bc, l_bc, op)?);
        let hs: CudaSlice<f32> = dev.alloc_zeros::<f32>(bsz * l * n * ed)?;
        let sizes = [bsz * l * 3 * ed, bsz * ed * n2, bsz * l * warps * 2 * n];
        let out: CudaSlice<f32> = dev.alloc_zeros::<f32>(sizes.iter().sum())?;
        let dudz = out.slice(0..sizes[0]);
        let dp = out.slice(sizes[0]..sizes[0] + sizes[1]);
        let dbc = out.slice(sizes[0] + sizes[1]..);
        let (l_i, ed_i, w_i) = (int(l, "L")?, int(ed, "ED")?, int(warps, "warps")?);
        let mut builder = func.builder();
        builder.arg(&ug).arg(&p).arg(&bc).arg(&hs).arg(&dudz).arg(&dp).arg(&dbc).arg(&l_i).arg(&ed_i).arg(&w_i);
        // SAFETY: the kernel reads B·L·4ED, ED·(N+2), B·L·2N floats, writes B·L·N·ED into `hs`
        // and the three parts of `out` at the sizes above (checked against the shapes).
        unsafe { builder.launch(launch_config(dims)?) }.w()?;
        drop(builder);
        let total = out.len();
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(total)))
    }
}

/// ∂loss/∂([u|dt|z], [A|D|bias], [B|C]) given ∂loss/∂y, on the GPU.
pub(super) fn backward(udz: &Tensor, p: &Tensor, bc: &Tensor, grad_y: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (bsz, l, ed3) = udz.dims3()?;
    let ed = ed3 / 3;
    let (_, n2) = p.dims2()?;
    let n = n2 - 2;
    let warps = ed.div_ceil(WARP);
    let ug = Tensor::cat(&[udz, grad_y], 2)?.contiguous()?;
    let flat = ug.apply_op3_no_bwd(&p.contiguous()?, &bc.contiguous()?, &GatedScanGrad)?;
    let sizes = [bsz * l * 3 * ed, bsz * ed * n2, bsz * l * warps * 2 * n];
    let dudz = flat.narrow(0, 0, sizes[0])?.reshape((bsz, l, 3 * ed))?;
    let dp = flat.narrow(0, sizes[0], sizes[1])?.reshape((bsz, ed, n2))?.sum(0)?;
    let dbc = flat.narrow(0, sizes[0] + sizes[1], sizes[2])?.reshape((bsz, l, warps, 2 * n))?.sum(2)?;
    Ok((dudz, dp, dbc))
}
