//! Matrix products on slices for the fused CPU ops, through the `gemm` crate (what candle's CPU
//! matmul calls): row-major operands, either of them read transposed through its strides.

/// A row-major matrix stored in a slice, read as `rows × cols` (transposed: the stored matrix is
/// `cols × rows`).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: isize, // stride between rows of the matrix as read
    cs: isize, // stride between its columns
}

impl<'a> Mat<'a> {
    /// `data` holds a row-major `rows × cols` matrix.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols as isize, cs: 1 }
    }

    /// A `rows × cols` matrix whose rows lie `row_stride` apart in `data` (columns of a wider one).
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self { data, rows, cols, rs: row_stride as isize, cs: 1 }
    }

    /// The transpose of the stored `stored_rows × stored_cols` matrix in `data`.
    pub(crate) fn t(data: &'a [f32], stored_rows: usize, stored_cols: usize) -> Self {
        Self { data, rows: stored_cols, cols: stored_rows, rs: 1, cs: stored_cols as isize }
    }

    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs as usize + (self.cols - 1) * self.cs as usize
        }
    }
}

/// `c = a · b` (or `c += a · b` with `accumulate`), `c` row-major `a.rows × b.cols`. `threads` > 1
/// splits the product over that many rayon workers.
///
/// # Panics
/// If the shapes disagree or a slice is too short: callers check shapes and return errors first,
/// so a panic here is a bug, never bad input.
pub(crate) fn matmul(a: Mat, b: Mat, c: &mut [f32], accumulate: bool, threads: usize) {
    matmul_strided(a, b, c, b.cols, accumulate, threads)
}

/// [`matmul`] into the `a.rows × b.cols` matrix whose rows lie `c_rs` (≥ b.cols) apart in `c`
/// (columns of a wider one); the values between are left as they are.
pub(crate) fn matmul_strided(a: Mat, b: Mat, c: &mut [f32], c_rs: usize, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions {k} and {} differ", b.rows);
    assert!(c_rs >= n, "gemm: output rows {c_rs} apart hold {n} columns");
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * c_rs + n, "gemm: output holds {} of {}", c.len(), (m - 1) * c_rs + n);
    if k == 0 {
        if !accumulate {
            c.chunks_mut(c_rs).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    assert!(a.max_index() < a.data.len() && b.max_index() < b.data.len(), "gemm: operand out of bounds");
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: every index gemm reads (a, b) or writes (c) is inside its slice (asserted above:
    // the largest offset of a strided m × k / k × n / m × n matrix), and `c` is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `a · b` into a fresh row-major `a.rows × b.cols` vector, which is not zero-filled first: the
/// product writes every value without reading any (gemm's `read_dst = false`).
///
/// With `threads` > 1 and rows enough, the rows of the product are cut into `threads` bands, each
/// one single-threaded gemm on its own rayon worker, instead of gemm's own parallel split: for the
/// weight gradients of the linear layers (`dyᵀ · x`, the depth read strided) gemm's split wastes
/// 15-30% of the two threads' time (measured, 2 threads: 200-245 GFLOP/s against 260-310 in
/// bands), and the other products are as fast or a little faster. Each value is the same sum in
/// the same order either way (the depth is never split).
pub(crate) fn matmul_new(a: Mat, b: Mat, threads: usize) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions {k} and {} differ", b.rows);
    let len = m * n;
    if k == 0 || len == 0 {
        return vec![0f32; len];
    }
    assert!(a.max_index() < a.data.len() && b.max_index() < b.data.len(), "gemm: operand out of bounds");
    let mut c: Vec<f32> = Vec::with_capacity(len);
    let out = SendPtr(c.as_mut_ptr());
    // rows [r0, r0 + rows) of the product, on this thread (or gemm's own `par` split)
    let band = |r0: usize, rows: usize, par: usize| {
        let parallelism = if par > 1 { gemm::Parallelism::Rayon(par) } else { gemm::Parallelism::None };
        // SAFETY: rows r0..r0 + rows of a (asserted in bounds above with all of them) start at
        // offset r0·rs of its slice; the product's rows r0.. are the values r0·n.. of `c`'s
        // capacity of m·n; bands do not overlap. gemm writes every value of the band through the
        // raw pointer and reads none (`read_dst = false`; alpha is then ignored).
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                out.at(r0 * n),
                1,
                n as isize,
                false,
                a.data.as_ptr().offset(r0 as isize * a.rs),
                a.cs,
                a.rs,
                b.data.as_ptr(),
                b.cs,
                b.rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    // bands of at least 64 rows, and enough work to be worth a task each
    let bands = if m * n * k >= 1 << 20 { threads.min(m / 64).max(1) } else { 1 };
    if bands > 1 {
        let per = m.div_ceil(bands);
        use rayon::prelude::*;
        (0..bands).into_par_iter().for_each(|i| {
            let r0 = i * per;
            if r0 < m {
                band(r0, per.min(m - r0), 1);
            }
        });
    } else {
        band(0, m, threads);
    }
    // SAFETY: the bands (or the one product) wrote all m·n values.
    unsafe { c.set_len(len) };
    c
}

/// A raw output pointer shared by the tasks of [`matmul_new`], each writing its own rows.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
impl SendPtr {
    /// The pointer `offset` values on (a method, so that closures capture the whole wrapper).
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

// SAFETY: the tasks write disjoint rows through it, and the vector outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The thread count candle's own matmul uses.
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive product of row-major a (m × k) and b (k × n).
    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols).flat_map(|j| (0..rows).map(move |i| x[i * cols + j])).collect()
    }

    #[test]
    fn a_product_cut_into_bands_of_rows_matches_a_naive_product() {
        // 1 << 20 multiply-adds or more and 64 rows a band: split for 2 and 3 threads
        let (m, k, n) = (200, 96, 120);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 29) as f32 / 13.0 - 1.0).collect();
        let want = naive(&a, &b, m, k, n);
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        for threads in [1, 2, 3] {
            for (name, am, bm) in [
                ("nn", Mat::new(&a, m, k), Mat::new(&b, k, n)),
                ("tn", Mat::t(&at, k, m), Mat::new(&b, k, n)),
                ("nt", Mat::new(&a, m, k), Mat::t(&bt, n, k)),
            ] {
                let c = matmul_new(am, bm, threads);
                let d = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(c.len() == m * n && d < 1e-3, "{name} with {threads} threads: off by {d}");
            }
        }
    }

    #[test]
    fn every_layout_matches_a_naive_product() {
        let (m, k, n) = (37, 19, 53);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
        let a_wide: Vec<f32> =
            (0..m).flat_map(|i| [9.0, 9.0].into_iter().chain(a[i * k..(i + 1) * k].iter().copied())).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 29) as f32 / 13.0 - 1.0).collect();
        let want = naive(&a, &b, m, k, n);
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        for threads in [1, 2] {
            for (name, am, bm) in [
                ("nn", Mat::new(&a, m, k), Mat::new(&b, k, n)),
                ("tn", Mat::t(&at, k, m), Mat::new(&b, k, n)),
                ("nt", Mat::new(&a, m, k), Mat::t(&bt, n, k)),
                ("tt", Mat::t(&at, k, m), Mat::t(&bt, n, k)),
                ("strided", Mat::strided(&a_wide[2..], m, k, k + 2), Mat::new(&b, k, n)),
            ] {
                let fresh = matmul_new(am, bm, threads);
                let d = fresh.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(
                    fresh.len() == m * n && d < 1e-4,
                    "{name} into a new vector with {threads} threads: off by {d}"
                );
                let mut c = vec![9f32; m * n];
                matmul(am, bm, &mut c, false, threads);
                let d = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(d < 1e-4, "{name} with {threads} threads: off by {d}");
                matmul(am, bm, &mut c, true, threads); // c += a·b
                let d = c.iter().zip(&want).map(|(x, y)| (x - 2.0 * y).abs()).fold(0f32, f32::max);
                assert!(d < 1e-4, "{name} accumulated with {threads} threads: off by {d}");
                // into columns 2..2 + n of an m × (n + 5) matrix, the others untouched
                let mut wide = vec![7f32; m * (n + 5)];
                matmul_strided(am, bm, &mut wide[2..], n + 5, false, threads);
                for (i, row) in wide.chunks_exact(n + 5).enumerate() {
                    assert!(row[..2].iter().chain(&row[2 + n..]).all(|&v| v == 7.0), "{name}: row {i} outside");
                    let d = row[2..2 + n].iter().zip(&want[i * n..]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                    assert!(d < 1e-4, "{name} strided with {threads} threads: row {i} off by {d}");
                }
            }
        }
    }
}
