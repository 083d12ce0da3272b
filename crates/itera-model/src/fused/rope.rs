//! Rotary position embedding as one op with a hand-written backward: for x (.., L, Dh) and cos,
//! sin (L, Dh/2), the halves x1, x2 of each row rotate by the position's angles,
//! y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin (the rotate-half convention of Hugging Face's
//! Llama). The backward is the inverse rotation (sin negated) of the output's gradient; cos and
//! sin are constants (no gradient).
//!
//! Its reference twin is `candle_nn::rotary_emb::rope_slow` (two narrows, a negation, two
//! concatenations, two multiplies and an add forward, about as many backward), which
//! `baseline::attention` runs without the device ops; `tests/fused.rs` holds them together. One
//! kernel per device: the loop below on the CPU, `cuda.rs` on an NVIDIA GPU.
//!
//! [`rope_heads`] also moves the heads: the projections' (B, L, H·Dh) in, the attention's
//! (B, H, L, Dh) out (and back, backward), where a transpose would copy each of q and k once more
//! each way (≈ 1.5 ms of a 59 ms seed-baseline step on an H100, `scripts/gpu/kernel_profile.py`).

use super::{f32_slice, zeros};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// y = x rotated by the angles of cos and sin: x (.., L, Dh) with Dh even, cos and sin (L, Dh/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (l, dh) = match dims {
        [.., l, dh] if dh % 2 == 0 => (*l, *dh),
        _ => candle_core::bail!("rope: input {dims:?} is not (.., L, Dh) with Dh even"),
    };
    for (what, t) in [("cos", cos), ("sin", sin)] {
        if t.dims() != [l, dh / 2] {
            candle_core::bail!("rope: {what} {:?} is not (L, Dh/2) = [{l}, {}] for input {dims:?}", t.dims(), dh / 2);
        }
    }
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { inverse: false, order: Order::Same })
}

/// [`rope`] of the heads of x (B, L, H·Dh) (a projection's output), into the attention's order:
/// (B, H, L, Dh), as `rope(x.reshape((B, L, H, Dh)).transpose(1, 2))` in one pass.
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (_, l, hd) = x.dims3()?;
    if n_heads == 0 || hd % (2 * n_heads) != 0 {
        candle_core::bail!("rope: input {:?} is not (B, L, H·Dh) with {n_heads} heads of even Dh", x.dims());
    }
    let dh = hd / n_heads;
    for (what, t) in [("cos", cos), ("sin", sin)] {
        if t.dims() != [l, dh / 2] {
            candle_core::bail!(
                "rope: {what} {:?} is not (L, Dh/2) = [{l}, {}] for input {:?}",
                t.dims(),
                dh / 2,
                x.dims()
            );
        }
    }
    let op = Rope { inverse: false, order: Order::ToHeads(n_heads) };
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)
}

/// x (B, L, H·Dh) into the attention's (B, H, L, Dh): `x.reshape((B, L, H, Dh)).transpose(1, 2)`
/// made contiguous, as one op on an NVIDIA GPU (candle's strided copy is about 3× slower there);
/// its backward is [`merge_heads`].
pub fn heads(x: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (_, _, hd) = x.dims3()?;
    if n_heads == 0 || hd % n_heads != 0 {
        candle_core::bail!("heads: input {:?} is not (B, L, H·Dh) with {n_heads} heads", x.dims());
    }
    x.contiguous()?.apply_op1(MoveHeads(Order::ToHeads(n_heads)))
}

/// y (B, H, L, Dh) back to (B, L, H·Dh): `y.transpose(1, 2).reshape((B, L, H·Dh))`, as one op;
/// its backward is [`heads`].
pub fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (_, h, _, _) = y.dims4()?;
    y.contiguous()?.apply_op1(MoveHeads(Order::FromHeads(h)))
}

struct MoveHeads(Order);

impl candle_core::CustomOp1 for MoveHeads {
    fn name(&self) -> &'static str {
        "move-heads"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(sx, lx, self.name())?;
        let (shape, l, dh, h, mode) = self.0.shapes(lx.shape().dims())?;
        let mut y = zeros(x.len());
        if dh > 0 {
            y.par_chunks_mut(dh).enumerate().for_each(|(r, y)| {
                let (_, src) = Order::source_row(mode, r, l, h);
                y.copy_from_slice(&x[src * dh..(src + 1) * dh]);
            });
        }
        Ok((CpuStorage::F32(y), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, sx: &candle_core::CudaStorage, lx: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::move_heads(sx, lx, self.0, self.name())
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gy.contiguous()?.apply_op1_no_bwd(&MoveHeads(self.0.inverse()))?))
    }
}

/// Where the rows go: in place, or between the projections' (B, L, H·Dh) and the attention's
/// (B, H, L, Dh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    Same,
    /// (B, L, H·Dh) in, (B, H, L, Dh) out, H heads.
    ToHeads(usize),
    /// (B, H, L, Dh) in, (B, L, H·Dh) out.
    FromHeads(usize),
}

impl Order {
    /// The output's shape, (L, Dh), H and the kernel's mode (0 same, 1 to heads, 2 from heads),
    /// for an input of `dims`.
    pub(crate) fn shapes(self, dims: &[usize]) -> Result<(Shape, usize, usize, usize, i32)> {
        Ok(match (self, dims) {
            (Order::Same, [.., l, dh]) => (Shape::from(dims), *l, *dh, 1, 0),
            (Order::ToHeads(h), &[b, l, hd]) => (Shape::from((b, h, l, hd / h)), l, hd / h, h, 1),
            (Order::FromHeads(h), &[b, hh, l, dh]) if hh == h => (Shape::from((b, l, h * dh)), l, dh, h, 2),
            _ => candle_core::bail!("rope: input {dims:?} does not fit {self:?}"),
        })
    }

    /// For output row `r` (a row of Dh), its position t and the input row it reads, given L and
    /// the kernel's `mode` and H from [`shapes`](Self::shapes) (the CUDA kernels' `source_row`).
    pub(crate) fn source_row(mode: i32, r: usize, l: usize, h: usize) -> (usize, usize) {
        match mode {
            0 => (r % l, r),
            1 => {
                let (bh, t) = (r / l, r % l); // heads order out, tokens order in
                (t, (bh / h * l + t) * h + bh % h)
            }
            _ => {
                let (bt, hh) = (r / h, r % h); // tokens order out, heads order in
                let t = bt % l;
                (t, (bt / l * h + hh) * l + t)
            }
        }
    }

    fn inverse(self) -> Self {
        match self {
            Order::Same => Order::Same,
            Order::ToHeads(h) => Order::FromHeads(h),
            Order::FromHeads(h) => Order::ToHeads(h),
        }
    }
}

struct Rope {
    /// The inverse rotation (sin negated): the backward.
    inverse: bool,
    order: Order,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sc: &CpuStorage,
        lc: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, cos, sin) = (f32_slice(sx, lx, op)?, f32_slice(sc, lc, op)?, f32_slice(ss, ls, op)?);
        let (shape, l, dh, h, mode) = self.order.shapes(lx.shape().dims())?;
        let half = dh / 2;
        let sign = if self.inverse { -1.0f32 } else { 1.0 };
        let mut y = zeros(x.len());
        if half > 0 {
            // output row r: its position t and where its input row starts
            y.par_chunks_mut(dh).enumerate().for_each(|(row, y)| {
                let (t, src) = Order::source_row(mode, row, l, h);
                let x = &x[src * dh..(src + 1) * dh];
                let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                let (x1, x2) = x.split_at(half);
                let (y1, y2) = y.split_at_mut(half);
                for i in 0..half {
                    let s = sign * s[i];
                    y1[i] = x1[i] * c[i] - x2[i] * s;
                    y2[i] = x2[i] * c[i] + x1[i] * s;
                }
            });
        }
        Ok((CpuStorage::F32(y), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sc: &candle_core::CudaStorage,
        lc: &Layout,
        ss: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rope(sx, lx, sc, lc, ss, ls, self.inverse, self.order, self.name())
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = Rope { inverse: !self.inverse, order: self.order.inverse() };
        let gx = gy.contiguous()?.apply_op3_no_bwd(cos, sin, &back)?;
        Ok((Some(gx), None, None))
    }
}
