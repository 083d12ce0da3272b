//! Elementwise row math of the fused ops (softmax's exponentials, SiLU's sigmoid), written so that
//! it vectorises: `fast_exp` instead of libm's scalar `expf`, several accumulators for sums, and
//! each function built for AVX-512 and AVX2 + FMA as well as the baseline target, picked at run
//! time. The builds run the same arithmetic (LLVM contracts no multiply-adds on its own), so they
//! give bit-identical results; only the baseline build runs in the browser (wasm SIMD128).

use crate::scan::{fast_exp, fast_sigmoid};

/// Runs `$body` (an expression over the arguments) in the widest build the CPU supports.
macro_rules! dispatch {
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { body($($arg),*) }
                if crate::scan::has_avx512f() {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                    return unsafe { avx512($($arg),*) };
                }
                if crate::scan::has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Lanes of the partial sums and maxima: one AVX-512 register.
const LANES: usize = 16;

dispatch!(row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    acc.iter().copied().fold(tail, f32::max)
});

dispatch!(exp_affine_sum(row: &mut [f32], scale: f32, shift: f32) -> f32 {
    // z ← exp(scale·z − shift); returns Σ z.
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = fast_exp(c[i] * scale - shift);
            acc[i] += c[i];
        }
    }
    let mut tail = 0f32;
    for z in chunks.into_remainder() {
        *z = fast_exp(*z * scale - shift);
        tail += *z;
    }
    acc.iter().sum::<f32>() + tail
});

dispatch!(scale_row(row: &mut [f32], factor: f32) -> () {
    row.iter_mut().for_each(|z| *z *= factor);
});

dispatch!(softmax_grad_row(p: &[f32], dp: &mut [f32], scale: f32) -> () {
    // dS = P ⊙ (dP − Σ_j P dP) · scale, in place of dP (one row of attention's backward)
    let mut acc = [0f32; LANES];
    let (pc, dc) = (p.chunks_exact(LANES), dp.chunks_exact(LANES));
    let (pt, dt) = (pc.remainder(), dc.remainder());
    for (a, b) in pc.zip(dc) {
        for i in 0..LANES {
            acc[i] += a[i] * b[i];
        }
    }
    let dot = acc.iter().sum::<f32>() + pt.iter().zip(dt).map(|(a, b)| a * b).sum::<f32>();
    for (d, &pv) in dp.iter_mut().zip(p) {
        *d = pv * (*d - dot) * scale;
    }
});

dispatch!(swiglu_fwd(y: &mut [f32], g: &[f32], u: &[f32]) -> () {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g * fast_sigmoid(g) * u;
    }
});

dispatch!(swiglu_bwd(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dy: &[f32]) -> () {
    let n = g.len();
    let (dg, du, u, dy) = (&mut dg[..n], &mut du[..n], &u[..n], &dy[..n]);
    for i in 0..n {
        // silu'(g) = σ(g) (1 + g (1 − σ(g)))
        let s = fast_sigmoid(g[i]);
        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        du[i] = dy[i] * g[i] * s;
    }
});

dispatch!(conv_silu_fwd(x: &[f32], wt: &[f32], bias: &[f32], pad: usize, y: &mut [f32]) -> () {
    // One batch row of silu(bias + Σ_tap wt[tap] ⊙ x[t + tap − pad]): x (Lx, C) with `pad` zero
    // rows in front of it (skipped, not read), wt (K, C), y (L, C); lane-wise over the channels.
    let c = bias.len();
    for (t, yr) in y.chunks_exact_mut(c).enumerate() {
        conv_preact(x, wt, bias, pad, t, yr);
        for v in yr.iter_mut() {
            *v *= fast_sigmoid(*v);
        }
    }
});

dispatch!(conv_silu_bwd(x: &[f32], wt: &[f32], bias: &[f32], pad: usize, gy: &[f32], grads: (&mut [f32], &mut [f32], &mut [f32])) -> () {
    let (gx, dwt, db) = grads;
    // The backward of `conv_silu_fwd` for one batch row: adds into gx (Lx, C), dwt (K, C), db (C).
    let c = bias.len();
    let mut pre = vec![0f32; c];
    for (t, g) in gy.chunks_exact(c).enumerate() {
        conv_preact(x, wt, bias, pad, t, &mut pre);
        // dpre = gy · silu'(pre),  silu'(v) = σ(v) (1 + v (1 − σ(v)))
        for ((p, &g), d) in pre.iter_mut().zip(g).zip(db.iter_mut()) {
            let s = fast_sigmoid(*p);
            *p = g * s * (1.0 + *p * (1.0 - s));
            *d += *p;
        }
        for (tap, (wr, dwr)) in wt.chunks_exact(c).zip(dwt.chunks_exact_mut(c)).enumerate() {
            let Some(row) = (t + tap).checked_sub(pad) else { continue };
            let (xr, gxr) = (&x[row * c..(row + 1) * c], &mut gx[row * c..(row + 1) * c]);
            let (p, wr, dwr) = (&pre[..c], &wr[..c], &mut dwr[..c]);
            for i in 0..c {
                gxr[i] += p[i] * wr[i];
                dwr[i] += p[i] * xr[i];
            }
        }
    }
});

/// Pre-activation of output row t: bias + Σ_tap wt[tap] ⊙ x[t + tap − pad], taps in order.
#[inline(always)]
fn conv_preact(x: &[f32], wt: &[f32], bias: &[f32], pad: usize, t: usize, out: &mut [f32]) {
    let c = bias.len();
    out.copy_from_slice(bias);
    for (tap, wr) in wt.chunks_exact(c).enumerate() {
        let Some(row) = (t + tap).checked_sub(pad) else { continue };
        let (xr, wr, out) = (&x[row * c..(row + 1) * c], &wr[..c], &mut out[..c]);
        for i in 0..c {
            out[i] += wr[i] * xr[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_math_matches_scalar_loops_at_every_length() {
        for len in [0usize, 1, 15, 16, 17, 40, 257] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let want_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(row_max(&row), want_max, "max at length {len}");
            let (scale, shift) = (0.7f32, 1.3f32);
            let want: Vec<f32> = row.iter().map(|z| (z * scale - shift).exp()).collect();
            let mut got = row.clone();
            let sum = exp_affine_sum(&mut got, scale, shift);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * w.abs(), "exp at {i} of {len}: {g} vs {w}");
            }
            let want_sum: f32 = want.iter().sum();
            assert!(
                (sum - want_sum).abs() <= 1e-5 * want_sum.abs().max(1.0),
                "sum at length {len}: {sum} vs {want_sum}"
            );
            scale_row(&mut got, 2.0);
            assert!(got.iter().zip(&want).all(|(g, w)| (g - 2.0 * w).abs() <= 2e-6 * w.abs()), "scale at length {len}");
        }
    }
}
