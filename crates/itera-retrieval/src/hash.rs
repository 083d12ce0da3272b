//! The fixed functions the encoder is built from: a byte hash, a bit mixer and a natural log.
//!
//! All three are written here rather than taken from std because the index is frozen: a vector
//! computed natively today must equal the one the browser computes tomorrow. std's `RandomState`
//! is seeded per process and `DefaultHasher`'s algorithm may change between Rust releases;
//! `f64::ln` calls the platform's libm (glibc natively, a musl port in wasm), which need not agree
//! in the last bit. Integer ops and IEEE `+ - * / sqrt` are the same everywhere, so these are.

/// FNV-1a 64 (http://www.isthe.com/chongo/tech/comp/fnv/), continuing from `state`.
/// Start from [`FNV_OFFSET`]; feeding a second slice continues the same stream.
pub(crate) fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// SplitMix64's finaliser (Steele, Lea, Flood 2014; the `mix64` of java.util.SplittableRandom).
/// FNV's low bits are weak for short keys (a 3-byte n-gram only stirs them three times); this
/// spreads every input bit over the whole word, so bucket, sign and IDF slot, taken from
/// different bits, behave as independent hashes.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Natural log from IEEE basic operations only, so it gives the same bits on every platform.
/// `x = m · 2^e` with `m` in [√½, √2), then `ln m = 2·atanh(s)`, `s = (m-1)/(m+1)`, |s| < 0.172:
/// ten odd terms of the series leave an error below 1e-15 (far under the f32 the callers keep).
/// Returns NaN for x ≤ 0 or NaN, +inf for +inf (as `f64::ln` would).
pub(crate) fn ln(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let (mut x, mut e) = (x, 0i64);
    if x < f64::MIN_POSITIVE {
        x *= 2f64.powi(54); // subnormal: make the exponent field meaningful (powi of 2 is exact)
        e -= 54;
    }
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023 << 52)); // in [1, 2)
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // Horner over 1 + s²/3 + s⁴/5 + ... + s¹⁸/19, innermost term first.
    let mut series = 0.0;
    for k in (1..10).rev() {
        series = s2 * (1.0 / (2 * k + 1) as f64 + series);
    }
    e as f64 * std::f64::consts::LN_2 + 2.0 * s * (1.0 + series)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite (fnv-1a 64-bit).
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a(fnv1a(FNV_OFFSET, b"foo"), b"bar"), fnv1a(FNV_OFFSET, b"foobar"));
    }

    #[test]
    fn ln_agrees_with_libm_to_1e_14_relative() {
        let mut x = 1e-310;
        while x < 1e300 {
            let (ours, libm) = (ln(x), x.ln());
            assert!((ours - libm).abs() <= 1e-14 * libm.abs().max(1.0), "ln({x}) = {ours}, libm {libm}");
            x *= 1.37;
        }
        assert_eq!(ln(1.0), 0.0);
        assert!(ln(0.0).is_nan() && ln(-1.0).is_nan() && ln(f64::NAN).is_nan());
    }
}
