//! The selective scan of Mamba-1 ("Mamba", arXiv 2312.00752, §3.2 and Algorithm 2), fused with
//! what surrounds it in the mixer, as the reference CUDA kernel `selective_scan_fn(u, delta, A,
//! B, C, D, z, delta_bias, delta_softplus=True)` does (state-spaces/mamba, selective_scan_interface.py):
//!
//! ```text
//! Δ_t = softplus(dt_t + dt_bias)                         // (B, L, ED)
//! h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t             // Eqn (2a), zero-order-hold Ā, Euler B̄
//! y_t = (C_t · h_t + D ⊙ u_t) ⊙ silu(z_t)                // Eqn (2b), skip, gate
//! ```
//!
//! Shape letters: B batch, L sequence, ED inner channels, N state size.
//!
//! Entry points:
//! - [`gated_selective_scan`]: training, a candle `CustomOp3` with a hand-written backward, one
//!   kernel per device (`cpu.rs`: plain-Rust loops; `cuda.rs`, behind the `cuda` feature);
//! - [`gated_selective_scan_ref`]: its reference twin, built from candle ops around
//!   [`selective_scan_ref`] (one op per timestep; autograd gives the backward);
//! - [`gated_selective_scan_chunked`]: the same from whole-tensor candle ops, a two-level
//!   parallel scan (for devices with neither kernel);
//! - [`mixer_scan`]: the CPU training path of the mixer, the same kernel with Δ's projection
//!   inside and its operands read where the mixer makes them (no packing; `mixer.rs`); its twin
//!   [`mixer_scan_ref`];
//! - [`selective_scan_with_state`]: inference (CPU loops) (prefill and decode) from a caller-owned state `h`
//!   (B, ED, N) that it updates — constant size, whatever the context length.
//!
//! Fusing the softplus, the skip and the gate into the kernel saves about twenty elementwise
//! passes over (B, L, ED) tensors per block, forward and backward.

mod chunked;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod mixer;

pub use chunked::{gated_selective_scan_chunked, selective_scan_chunked};
pub use cpu::fast_exp;
pub(crate) use cpu::{dot, fast_sigmoid, fast_softplus};
#[cfg(target_arch = "x86_64")]
pub(crate) use cpu::{has_avx2_fma, has_avx512f};
pub use mixer::{mixer_scan, mixer_scan_ref, MixerInputs};

use crate::fused::host_f32;
use crate::ops::softplus;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use cpu::{Dims, Operands, Stream};

/// The scan's inputs. Shapes: u, dt, z (B, L, ED); a (ED, N) (A itself: negative); b, c
/// (B, L, N); d, dt_bias (ED).
#[derive(Clone, Copy)]
pub struct ScanInputs<'a> {
    pub u: &'a Tensor,       // input stream x (after conv + SiLU)
    pub dt: &'a Tensor,      // Δ before bias and softplus: dt_proj(x_proj(u)[..R])
    pub a: &'a Tensor,       // A = -exp(A_log)
    pub b: &'a Tensor,       // B_t
    pub c: &'a Tensor,       // C_t
    pub d: &'a Tensor,       // skip D
    pub dt_bias: &'a Tensor, // dt_proj bias
    pub z: &'a Tensor,       // gate stream
}

impl ScanInputs<'_> {
    /// (B, L, ED, N), after checking every shape.
    fn dims(&self) -> Result<(usize, usize, usize, usize)> {
        let (bsz, l, ed) = self.u.dims3()?;
        let (ed_a, n) = self.a.dims2()?;
        let ok = self.dt.dims() == self.u.dims()
            && self.z.dims() == self.u.dims()
            && ed_a == ed
            && self.b.dims() == [bsz, l, n]
            && self.c.dims() == [bsz, l, n]
            && self.d.dims() == [ed]
            && self.dt_bias.dims() == [ed];
        if !ok {
            candle_core::bail!(
                "selective-scan shapes: u {:?}, dt {:?}, A {:?}, B {:?}, C {:?}, D {:?}, dt_bias {:?}, z {:?} \
                 (want u, dt, z (B, L, ED); A (ED, N); B, C (B, L, N); D, dt_bias (ED))",
                self.u.dims(),
                self.dt.dims(),
                self.a.dims(),
                self.b.dims(),
                self.c.dims(),
                self.d.dims(),
                self.dt_bias.dims(),
                self.z.dims()
            );
        }
        Ok((bsz, l, ed, n))
    }

    /// The kernel's three packed operands: [u | dt | z] (B, L, 3ED), [A | D | dt_bias]
    /// (ED, N + 2), [B | C] (B, L, 2N).
    fn pack(&self) -> Result<(Tensor, Tensor, Tensor)> {
        let udz = Tensor::cat(&[self.u, self.dt, self.z], 2)?.contiguous()?;
        let params = Tensor::cat(&[self.a, &self.d.unsqueeze(1)?, &self.dt_bias.unsqueeze(1)?], 1)?.contiguous()?;
        let bc = Tensor::cat(&[self.b, self.c], 2)?.contiguous()?;
        Ok((udz, params, bc))
    }
}

/// Fast path: the fused kernel. Returns y (B, L, ED).
pub fn gated_selective_scan(x: ScanInputs) -> Result<Tensor> {
    x.dims()?;
    let (udz, params, bc) = x.pack()?;
    udz.apply_op3(&params, &bc, GatedScan)
}

/// Reference twin of [`gated_selective_scan`]: the same function from candle ops.
pub fn gated_selective_scan_ref(x: ScanInputs) -> Result<Tensor> {
    gated(x, selective_scan_ref)
}

/// A bare recurrence u, Δ, A, B, C -> y (B, L, ED), as candle ops.
type BareScan = fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>;

/// What surrounds the recurrence, from candle ops: Δ = softplus(dt + bias) before it, the skip D
/// and the gate silu(z) after it.
fn gated(x: ScanInputs, scan: BareScan) -> Result<Tensor> {
    x.dims()?;
    let delta = softplus(&x.dt.broadcast_add(x.dt_bias)?)?; // (B, L, ED)
    let y = scan(x.u, &delta, x.a, x.b, x.c)?; // (B, L, ED)
    let y = (y + x.u.broadcast_mul(x.d)?)?;
    y * x.z.silu()?
}

/// The bare recurrence (no softplus, skip or gate) as per-timestep candle ops.
/// Shapes: u, delta (B, L, ED); a (ED, N); b, c (B, L, N) -> y (B, L, ED).
pub fn selective_scan_ref(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    let (bsz, l, ed) = u.dims3()?;
    let (_, n) = a.dims2()?;
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

/// Inference: the fused scan from the state `h` (B, ED, N), f32, leaving the final state in it.
/// L may be 1 (decode) or more (prefill). Records no gradient.
pub fn selective_scan_with_state(x: ScanInputs, h: &mut [f32]) -> Result<Tensor> {
    let (bsz, l, ed, n) = x.dims()?;
    if h.len() != bsz * ed * n {
        candle_core::bail!("selective-scan state holds {} values, expected B*ED*N = {bsz}*{ed}*{n}", h.len());
    }
    let dims = Dims { bsz, l, ed, n };
    let [u, dt, z, a, b, c, d, bias] = [x.u, x.dt, x.z, x.a, x.b, x.c, x.d, x.dt_bias].map(host_f32);
    let (u, dt, z, a, b, c, d, bias) = (u?, dt?, z?, a?, b?, c?, d?, bias?);
    let ops = Operands {
        u: Stream::rows(&u, ed),
        dt: Stream::rows(&dt, ed),
        z: Stream::rows(&z, ed),
        b: Stream::rows(&b, n),
        c: Stream::rows(&c, n),
        a: &a,
        d: &d,
        bias: &bias,
    };
    let y = dims.forward(&ops, Some(h));
    Tensor::from_vec(y, (bsz, l, ed), x.u.device())?.to_dtype(x.u.dtype())
}

/// The fused op: y (B, L, ED) from [u|dt|z] (B, L, 3ED), [A|D|bias] (ED, N + 2), [B|C] (B, L, 2N),
/// with a hand-written backward; one file per device (`cpu.rs`, `cuda.rs`).
struct GatedScan;

impl CustomOp3 for GatedScan {
    fn name(&self) -> &'static str {
        "gated-selective-scan"
    }

    fn cpu_fwd(
        &self,
        s_udz: &CpuStorage,
        l_udz: &Layout,
        s_p: &CpuStorage,
        l_p: &Layout,
        s_bc: &CpuStorage,
        l_bc: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu::forward(s_udz, l_udz, s_p, l_p, s_bc, l_bc, self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s_udz: &candle_core::CudaStorage,
        l_udz: &Layout,
        s_p: &candle_core::CudaStorage,
        l_p: &Layout,
        s_bc: &candle_core::CudaStorage,
        l_bc: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(s_udz, l_udz, s_p, l_p, s_bc, l_bc, self.name())
    }

    fn bwd(
        &self,
        udz: &Tensor,
        p: &Tensor,
        bc: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if udz.device().is_cuda() {
            let (dudz, dp, dbc) = cuda::backward(udz, p, bc, grad_y)?;
            return Ok((Some(dudz), Some(dp), Some(dbc)));
        }
        let (dudz, dp, dbc) = cpu::backward(udz, p, bc, grad_y)?;
        Ok((Some(dudz), Some(dp), Some(dbc)))
    }
}
