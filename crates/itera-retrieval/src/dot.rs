//! The hot path: int8 dot products of one query against many stored vectors.
//!
//! Exact search over 100K documents of 256 dims is 25.6M multiply-adds a query, so this loop is
//! the whole cost. Three versions, all with exact i32 results (so they agree bit for bit):
//! - [`dots_ref`]: the plain scalar loop, the reference twin;
//! - wasm with `simd128`: 16 bytes at a time, `i16x8.extmul` then `i32x4.extadd_pairwise`;
//! - elsewhere, a loop LLVM vectorises (x86_64: `vpmaddwd`), compiled a second time with AVX2
//!   enabled and picked at run time, since the workspace builds for baseline x86_64 (SSE2).
//!
//! [`Kernel`] selects one at run time (the search tests compare them on real indexes).

/// Which inner loop [`crate::Index::search_with`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// [`dots_ref`]: scalar, obviously correct.
    Reference,
    /// [`dots`]: SIMD128 in wasm, AVX2 (when the CPU has it) or autovectorised natively.
    Fast,
}

impl Kernel {
    pub(crate) fn dots(self, query: &[i8], vectors: &[i8], out: &mut [i32]) {
        match self {
            Kernel::Reference => dots_ref(query, vectors, out),
            Kernel::Fast => dots(query, vectors, out),
        }
    }
}

/// `out[j] = Σ_i query[i] · vectors[j · d + i]` with `d = query.len()`, for each `j` below both
/// `out.len()` and `vectors.len() / d`. Reference twin of [`dots`].
pub fn dots_ref(query: &[i8], vectors: &[i8], out: &mut [i32]) {
    if query.is_empty() {
        return out.fill(0);
    }
    for (o, v) in out.iter_mut().zip(vectors.chunks_exact(query.len())) {
        let mut sum = 0i32;
        for i in 0..query.len() {
            sum += i32::from(query[i]) * i32::from(v[i]);
        }
        *o = sum;
    }
}

/// Same contract and results as [`dots_ref`], on the fastest loop this build and CPU have.
pub fn dots(query: &[i8], vectors: &[i8], out: &mut [i32]) {
    if query.is_empty() {
        return out.fill(0);
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        for (o, v) in out.iter_mut().zip(vectors.chunks_exact(query.len())) {
            *o = simd128::dot(query, v);
        }
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked on the line above.
            return unsafe { dots_avx2(query, vectors, out) };
        }
        dots_portable(query, vectors, out)
    }
}

/// The portable loop: i8 → i32 products summed in i32. LLVM recognises the widening
/// multiply-accumulate reduction and emits `pmaddwd` (SSE2) or `vpmaddwd` (AVX2).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn dots_portable(query: &[i8], vectors: &[i8], out: &mut [i32]) {
    for (o, v) in out.iter_mut().zip(vectors.chunks_exact(query.len())) {
        *o = query.iter().zip(v).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
    }
}

/// [`dots_portable`] compiled with AVX2 on: 32 bytes a step instead of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_avx2(query: &[i8], vectors: &[i8], out: &mut [i32]) {
    dots_portable(query, vectors, out)
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use core::arch::wasm32::*;

    /// Σ a[i]·b[i] over the common length. Per 16 bytes: two `i16x8.extmul_{low,high}_i8x16_s`
    /// (each product |p| ≤ 128² = 2^14 fits i16), then each i16x8 widened and pairwise-added
    /// into i32 lanes (`i32x4.extadd_pairwise_i16x8_s`), so no lane can wrap for any i8 input.
    #[inline]
    pub(super) fn dot(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let mut acc = i32x4_splat(0);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 ≤ n ≤ both lengths; v128.load has no alignment requirement.
            let (x, y) =
                unsafe { (v128_load(a.as_ptr().add(i) as *const v128), v128_load(b.as_ptr().add(i) as *const v128)) };
            let lo = i32x4_extadd_pairwise_i16x8(i16x8_extmul_low_i8x16(x, y));
            let hi = i32x4_extadd_pairwise_i16x8(i16x8_extmul_high_i8x16(x, y));
            acc = i32x4_add(acc, i32x4_add(lo, hi));
            i += 16;
        }
        let mut sum = i32x4_extract_lane::<0>(acc)
            + i32x4_extract_lane::<1>(acc)
            + i32x4_extract_lane::<2>(acc)
            + i32x4_extract_lane::<3>(acc);
        while i < n {
            sum += i32::from(a[i]) * i32::from(b[i]);
            i += 1;
        }
        sum
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// Deterministic i8 values over the full range, -128 and 127 included.
    fn patterned(len: usize, salt: u64) -> Vec<i8> {
        (0..len as u64).map(|i| (crate::hash::mix(i ^ (salt << 32)) >> 56) as u8 as i8).collect()
    }

    #[test]
    fn fast_dots_equal_the_scalar_reference_exactly() {
        // Lengths around the 16- and 32-byte SIMD steps, and all-extreme vectors.
        for d in [1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 128, 256, 512] {
            let n = 37;
            let q = patterned(d, 1);
            let v = patterned(d * n, 2);
            let (mut fast, mut slow) = (vec![0; n], vec![0; n]);
            dots(&q, &v, &mut fast);
            dots_ref(&q, &v, &mut slow);
            assert_eq!(fast, slow, "d = {d}");
            dots_portable(&q, &v, &mut fast);
            assert_eq!(fast, slow, "portable, d = {d}");
        }
        for x in [-128i8, 127] {
            let q = vec![x; 512];
            let mut out = [0; 2];
            dots(&q, &[vec![-128i8; 512], vec![127; 512]].concat(), &mut out);
            assert_eq!(out, [-(512 * 128 * i32::from(x)), 512 * 127 * i32::from(x)]);
        }
    }

    #[test]
    fn out_shorter_than_the_vectors_is_filled_and_no_more() {
        let q = patterned(16, 3);
        let v = patterned(16 * 4, 4);
        let mut out = vec![7; 2];
        dots(&q, &v, &mut out);
        let mut want = vec![0; 4];
        dots_ref(&q, &v, &mut want);
        assert_eq!(out, want[..2]);
    }
}
