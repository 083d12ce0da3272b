//! The Mamba mixer's scan on the CPU as one op that takes its operands where the mixer makes
//! them: u (the conv's output) and z as they are, Δ's low-rank input, B and C as columns of
//! x_proj's output x_dbl = [dt_r | B | C], and Δ's projection dt = dt_r W_dtᵀ done inside (one
//! product forward, two backward). Reference twin: [`mixer_scan_ref`], the mixer's former path
//! (narrows of x_dbl, a linear layer, then [`super::gated_selective_scan`]'s function).
//!
//! Why: `GatedScan` takes three operands (candle's `CustomOp3`), so it packs [u|dt|z] with a
//! `cat` (a (B, L, 3ED) copy) and gets back a packed gradient, which `cat`'s backward cuts into
//! three views that the gradient store copies again; x_dbl's three narrows each pad their
//! gradient with zeros to full width. Here the large streams are not copied: the op's operands
//! are u, z and one small flat tensor of the rest ([x_dbl | A | D | dt_bias | W_dt]).

use super::cpu::{Dims, Operands, Stream};
use super::{gated_selective_scan_ref, ScanInputs};
use crate::fused::gemm::{matmul, matmul_strided, threads, Mat};
use crate::fused::{f32_slice, host_f32_ref};
use crate::ops::linear;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// The mixer's operands. Shapes: u, z (B, L, ED); x_dbl (B, L, R + 2N) = [dt_r | B | C];
/// dt_proj_w (ED, R); a (ED, N) (A itself: negative); d, dt_bias (ED).
#[derive(Clone, Copy)]
pub struct MixerInputs<'a> {
    pub u: &'a Tensor,
    pub z: &'a Tensor,
    pub x_dbl: &'a Tensor,
    pub dt_proj_w: &'a Tensor,
    pub a: &'a Tensor,
    pub d: &'a Tensor,
    pub dt_bias: &'a Tensor,
}

impl MixerInputs<'_> {
    /// (B, L, ED, N, R), after checking every shape.
    fn dims(&self) -> Result<(usize, usize, usize, usize, usize)> {
        let (bsz, l, ed) = self.u.dims3()?;
        let (ed_w, r) = self.dt_proj_w.dims2()?;
        let (ed_a, n) = self.a.dims2()?;
        let ok = self.z.dims() == self.u.dims()
            && self.x_dbl.dims() == [bsz, l, r + 2 * n]
            && ed_w == ed
            && ed_a == ed
            && self.d.dims() == [ed]
            && self.dt_bias.dims() == [ed];
        if !ok {
            candle_core::bail!(
                "mixer scan shapes: u {:?}, z {:?}, x_dbl {:?}, dt_proj_w {:?}, A {:?}, D {:?}, dt_bias {:?} \
                 (want u, z (B, L, ED); x_dbl (B, L, R + 2N); dt_proj_w (ED, R); A (ED, N); D, dt_bias (ED))",
                self.u.dims(),
                self.z.dims(),
                self.x_dbl.dims(),
                self.dt_proj_w.dims(),
                self.a.dims(),
                self.d.dims(),
                self.dt_bias.dims()
            );
        }
        Ok((bsz, l, ed, n, r))
    }
}

/// Fast path (CPU): y (B, L, ED) = the gated selective scan of u, Δ = x_dbl[.., ..R] W_dtᵀ,
/// B = x_dbl[.., R..R+N], C = x_dbl[.., R+N..], with A, D, dt_bias and the gate z.
pub fn mixer_scan(x: MixerInputs) -> Result<Tensor> {
    let (bsz, l, ed, n, r) = x.dims()?;
    let small = Tensor::cat(
        &[x.x_dbl, x.a, x.d, x.dt_bias, x.dt_proj_w]
            .map(|t| t.flatten_all())
            .into_iter()
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let op = MixerScan { dims: Dims { bsz, l, ed, n }, r };
    x.u.contiguous()?.apply_op3(&x.z.contiguous()?, &small, op)
}

/// Reference twin of [`mixer_scan`]: Δ by a linear layer of the narrowed x_dbl, then the
/// reference scan of candle ops.
pub fn mixer_scan_ref(x: MixerInputs) -> Result<Tensor> {
    let (_, _, _, n, r) = x.dims()?;
    let dt = linear(&x.x_dbl.narrow(2, 0, r)?, x.dt_proj_w)?;
    let (b, c) = (x.x_dbl.narrow(2, r, n)?, x.x_dbl.narrow(2, r + n, n)?);
    gated_selective_scan_ref(ScanInputs { u: x.u, dt: &dt, a: x.a, b: &b, c: &c, d: x.d, dt_bias: x.dt_bias, z: x.z })
}

struct MixerScan {
    dims: Dims,
    r: usize,
}

/// The parts of the small operand.
struct Small<'a> {
    x_dbl: &'a [f32], // (B·L, R + 2N)
    a: &'a [f32],     // (ED, N)
    d: &'a [f32],     // (ED)
    bias: &'a [f32],  // (ED)
    w_dt: &'a [f32],  // (ED, R)
}

impl MixerScan {
    fn width(&self) -> usize {
        self.r + 2 * self.dims.n
    }

    fn split<'a>(&self, s: &'a [f32]) -> Result<Small<'a>> {
        let Dims { bsz, l, ed, n } = self.dims;
        let sizes = [bsz * l * self.width(), ed * n, ed, ed, ed * self.r];
        if s.len() != sizes.iter().sum::<usize>() {
            candle_core::bail!(
                "mixer scan: {} values in the small operand, expected {}",
                s.len(),
                sizes.iter().sum::<usize>()
            );
        }
        let (x_dbl, s) = s.split_at(sizes[0]);
        let (a, s) = s.split_at(sizes[1]);
        let (d, s) = s.split_at(sizes[2]);
        let (bias, w_dt) = s.split_at(sizes[3]);
        Ok(Small { x_dbl, a, d, bias, w_dt })
    }

    /// Δ before bias and softplus: x_dbl[.., ..R] W_dtᵀ (B·L, ED).
    fn dt(&self, p: &Small) -> Vec<f32> {
        let Dims { bsz, l, ed, .. } = self.dims;
        let mut dt = vec![0f32; bsz * l * ed];
        let dt_r = Mat::strided(p.x_dbl, bsz * l, self.r, self.width());
        matmul(dt_r, Mat::t(p.w_dt, ed, self.r), &mut dt, false, threads());
        dt
    }

    fn operands<'a>(&self, u: &'a [f32], z: &'a [f32], dt: &'a [f32], p: &Small<'a>) -> Operands<'a> {
        let (ed, n, r, w) = (self.dims.ed, self.dims.n, self.r, self.width());
        Operands {
            u: Stream::rows(u, ed),
            dt: Stream::rows(dt, ed),
            z: Stream::rows(z, ed),
            b: Stream::cols(p.x_dbl, w, r),
            c: Stream::cols(p.x_dbl, w, r + n),
            a: p.a,
            d: p.d,
            bias: p.bias,
        }
    }
}

impl CustomOp3 for MixerScan {
    fn name(&self) -> &'static str {
        "mixer-scan"
    }

    fn cpu_fwd(
        &self,
        su: &CpuStorage,
        lu: &Layout,
        sz: &CpuStorage,
        lz: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Dims { bsz, l, ed, .. } = self.dims;
        let (u, z) = (f32_slice(su, lu, self.name())?, f32_slice(sz, lz, self.name())?);
        let p = self.split(f32_slice(ss, ls, self.name())?)?;
        let dt = self.dt(&p);
        let y = self.dims.forward(&self.operands(u, z, &dt, &p), None);
        Ok((CpuStorage::F32(y), Shape::from((bsz, l, ed))))
    }

    fn bwd(
        &self,
        u_t: &Tensor,
        z_t: &Tensor,
        s_t: &Tensor,
        _y: &Tensor,
        gy_t: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { bsz, l, ed, n } = self.dims;
        let (r, w, rows) = (self.r, self.width(), bsz * l);
        let (u, z, s, gy) = (host_f32_ref(u_t)?, host_f32_ref(z_t)?, host_f32_ref(s_t)?, host_f32_ref(gy_t)?);
        let p = self.split(&s)?;
        let dt = self.dt(&p);
        let g = self.dims.backward(&self.operands(&u, &z, &dt, &p), &gy);
        drop(dt);

        // The small operand's gradient: [dx_dbl | dA | dD | d(dt_bias) | dW_dt].
        let mut ds = vec![0f32; s.len()];
        let (dx_dbl, rest) = ds.split_at_mut(rows * w);
        // dx_dbl = [ddt W_dt | dB | dC]
        matmul_strided(Mat::new(&g.ddt, rows, ed), Mat::new(p.w_dt, ed, r), dx_dbl, w, false, threads());
        for ((row, db), dc) in dx_dbl.chunks_exact_mut(w).zip(g.db.chunks_exact(n)).zip(g.dc.chunks_exact(n)) {
            row[r..r + n].copy_from_slice(db);
            row[r + n..].copy_from_slice(dc);
        }
        let (da, rest) = rest.split_at_mut(ed * n);
        da.copy_from_slice(&g.da);
        let (dd, rest) = rest.split_at_mut(ed);
        dd.copy_from_slice(&g.dd);
        let (dbias, dw_dt) = rest.split_at_mut(ed);
        dbias.copy_from_slice(&g.dbias);
        // dW_dt = ddtᵀ dt_r
        matmul(Mat::t(&g.ddt, rows, ed), Mat::strided(p.x_dbl, rows, r, w), dw_dt, false, threads());

        let dev = u_t.device();
        Ok((
            Some(Tensor::from_vec(g.du, u_t.shape(), dev)?),
            Some(Tensor::from_vec(g.dz, z_t.shape(), dev)?),
            Some(Tensor::from_vec(ds, s_t.shape(), dev)?),
        ))
    }
}
