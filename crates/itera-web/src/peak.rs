//! The bound of a batch-1 decode step, measured where the model runs: how many FLOP/s one
//! thread reaches multiplying a matrix held in memory by a vector (GEMV). A decode step is a
//! chain of such products over every weight, so `decode FLOPs / latency` against this figure
//! says how much of the machine (here: the browser's wasm SIMD, one thread) the step uses. The
//! kernel is the decoder's own (`itera_model::decode::gemv`), so the peak is what its steps could reach.

pub use itera_model::decode::gemv;

/// GFLOP/s of [`gemv`] over a (rows, cols) matrix (2 FLOPs a weight), timed with `now` (ms):
/// the best of `rounds` rounds of repetitions, each at least `round_ms` long. The best, because
/// a browser first runs wasm from a quick baseline compile and swaps in optimised code while it
/// runs. The matrix should be larger than the caches, as a model's weights are, so that the
/// figure is memory-bound like a decode step.
pub fn gemv_gflops(rows: usize, cols: usize, rounds: usize, round_ms: f64, now: impl Fn() -> f64) -> f64 {
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
    let x: Vec<f32> = (0..cols).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5).collect();
    let mut y = vec![0f32; rows];
    // Warm: pages touched, caches as they will be, and time for the browser's optimising compile.
    let t0 = now();
    while now() - t0 < round_ms {
        gemv(&w, &x, &mut y);
    }
    let mut best = 0f64;
    for _ in 0..rounds.max(1) {
        let (t0, mut reps) = (now(), 0usize);
        while reps == 0 || now() - t0 < round_ms {
            gemv(&w, &x, &mut y);
            reps += 1;
        }
        let ms = (now() - t0).max(1e-6);
        best = best.max(2.0 * (rows * cols * reps) as f64 / (ms * 1e-3) / 1e9);
    }
    std::hint::black_box(&y);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_a_positive_rate() {
        let t = std::time::Instant::now();
        let g = gemv_gflops(64, 256, 3, 2.0, || t.elapsed().as_secs_f64() * 1e3);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
