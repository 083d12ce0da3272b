//! The selective scan as a two-level parallel scan of candle ops: what a device without a fused
//! kernel runs (every backend has these ops). Same function as the reference twin in `mod.rs`.

use super::ScanInputs;
use candle_core::{Result, Tensor};

/// The same function as [`gated_selective_scan_ref`], for devices without the fused kernel (the
/// GPU): candle ops around [`selective_scan_chunked`], whose whole-tensor rounds replace the
/// reference's per-timestep ops.
pub fn gated_selective_scan_chunked(x: ScanInputs) -> Result<Tensor> {
    super::gated(x, selective_scan_chunked)
}

/// The bare recurrence of [`selective_scan_ref`] as a two-level parallel scan of candle ops.
///
/// h_t = ā_t ⊙ h_{t-1} + b̄_t is associative in (ā, b̄), so L steps become rounds of doubling
/// (Hillis–Steele): the sequence is cut into chunks of T ≈ √L steps, scanned within every chunk
/// at once in ⌈log2 T⌉ rounds, the chunks' end states scanned across chunks in ⌈log2(L/T)⌉
/// more, and each chunk's local states corrected by the state it starts from. Every op covers
/// whole tensors: a GPU runs about 40 kernels per call where the reference runs 4 per timestep,
/// and autograd pads a gradient to full size once per round instead of once per timestep.
/// Products of decays in (0, 1] only: no division, no log-space cumsum that could overflow.
/// Shapes: u, delta (B, L, ED); a (ED, N); b, c (B, L, N) -> y (B, L, ED).
pub fn selective_scan_chunked(u: &Tensor, delta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    let (bsz, l, ed) = u.dims3()?;
    let (_, n) = a.dims2()?;
    let decay = delta.unsqueeze(3)?.broadcast_mul(&a.reshape((1, 1, ed, n))?)?.exp()?; // (B, L, ED, N)
    let input = (delta * u)?.unsqueeze(3)?.broadcast_mul(&b.unsqueeze(2)?)?; // (B, L, ED, N)
    let t = chunk_len(l);
    let chunks = l.div_ceil(t);
    let pad = chunks * t - l;
    // Padding steps at the end (decay 1, input 0) leave the states before them alone.
    let (decay, input) = if pad > 0 {
        let ones = Tensor::ones((bsz, pad, ed, n), decay.dtype(), decay.device())?;
        let zeros = Tensor::zeros((bsz, pad, ed, n), input.dtype(), input.device())?;
        (Tensor::cat(&[&decay, &ones], 1)?, Tensor::cat(&[&input, &zeros], 1)?)
    } else {
        (decay, input)
    };
    let decay = decay.reshape((bsz, chunks, t, ed, n))?;
    let input = input.reshape((bsz, chunks, t, ed, n))?;
    // Within each chunk, from a zero state: the decay product since the chunk began, and the state.
    let (prod, local) = linear_recurrence(&decay, &input, 2)?; // (B, C, T, ED, N) each
    let h = if chunks > 1 {
        let last = |x: &Tensor| x.narrow(2, t - 1, 1)?.squeeze(2); // (B, C, ED, N)
        let (_, end) = linear_recurrence(&last(&prod)?, &last(&local)?, 1)?; // state at each chunk's end
        let start = shift(&end, 1, 1, 0.0)?; // the state each chunk starts from
        (local + prod.broadcast_mul(&start.unsqueeze(2)?)?)?
    } else {
        local
    };
    let h = h.reshape((bsz, chunks * t, ed, n))?.narrow(1, 0, l)?; // (B, L, ED, N)
    h.broadcast_mul(&c.unsqueeze(2)?)?.sum(3) // y_t = C_t · h_t: (B, L, ED)
}

/// Chunk length of [`selective_scan_chunked`]: the power of two nearest above √L.
fn chunk_len(l: usize) -> usize {
    ((l as f64).sqrt().ceil() as usize).max(1).next_power_of_two()
}

/// h_t = a_t ⊙ h_{t-1} + b_t along `dim`, from h = 0, by doubling: after the round of offset k,
/// element t holds the composition of steps t-2k+1..=t. Returns (Π a up to t, h_t).
fn linear_recurrence(a: &Tensor, b: &Tensor, dim: usize) -> Result<(Tensor, Tensor)> {
    let l = a.dim(dim)?;
    let (mut a, mut b) = (a.clone(), b.clone());
    let mut k = 1;
    while k < l {
        b = (a.mul(&shift(&b, dim, k, 0.0)?)? + b)?;
        a = a.mul(&shift(&a, dim, k, 1.0)?)?;
        k *= 2;
    }
    Ok((a, b))
}

/// `x` moved `k` places later along `dim`, the first `k` places filled with `fill`.
fn shift(x: &Tensor, dim: usize, k: usize, fill: f64) -> Result<Tensor> {
    let l = x.dim(dim)?;
    let mut shape = x.dims().to_vec();
    shape[dim] = k.min(l);
    let head = (Tensor::ones(shape, x.dtype(), x.device())? * fill)?;
    if k >= l {
        return Ok(head);
    }
    Tensor::cat(&[&head, &x.narrow(dim, 0, l - k)?], dim)
}
