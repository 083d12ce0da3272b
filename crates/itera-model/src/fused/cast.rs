//! f32 ⇄ bf16 casts as one op with its own backward: mixed precision's casts around every matrix
//! product (`ops::matmul`, `ops::linear` under `ops::set_autocast`).
//!
//! Why: candle's CUDA casts between f32 and bf16 write each thread's 4 or 8 values with scalar
//! stores a float4 apart, so a warp's stores are uncoalesced and most of the launched threads idle:
//! in the kernel profile of a bf16 seed-baseline step on an H100 (docs/gpu.md, "2026-12-06, late
//! evening") `cast_bf16_f32` took 11.7 ms and `cast_f32_bf16` 3.5 ms of 26.8 ms of kernel time,
//! 57% (4.2M values in 44 µs: 570 GB/s, where the H100's memory is rated 3.35 TB/s). Here each thread converts 4 values with
//! one 16-byte and one 8-byte access, neighbours side by side.
//!
//! The conversion is the same bits as candle's `to_dtype` (the `half` crate's): f32 → bf16 rounds
//! to nearest, ties to even, a NaN stays a NaN with its quiet bit set; bf16 → f32 is exact (a NaN
//! gets its quiet bit too). Reference twin: `Tensor::to_dtype` (test
//! `the_cast_op_matches_to_dtype_bit_for_bit`, and on a GPU `the_fused_cuda_cast_matches_the_cpu`).
//! The CPU runs the same arithmetic as the CUDA kernel ([`f32_to_bf16`], [`bf16_to_f32`]).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

/// Values per parallel chunk on the CPU.
const CHUNK: usize = 1 << 15;

/// `x` in `dtype`, differentiable (the gradient is cast back). f32 ⇄ bf16 of a contiguous tensor
/// runs as the op; any other pair, or a strided `x`, as `to_dtype`.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    match (x.dtype(), dtype) {
        (a, b) if a == b => Ok(x.clone()),
        (DType::F32, DType::BF16) | (DType::BF16, DType::F32) if x.is_contiguous() => x.apply_op1(Cast { to: dtype }),
        _ => x.to_dtype(dtype),
    }
}

/// f32 → bf16 bits: round to nearest, ties to even; a NaN keeps its sign and top payload bits,
/// quieted (as `half::bf16::from_f32`, and the CUDA kernel's `f32_to_bf16`).
#[inline]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) as u16) | 0x0040;
    }
    // u + 0x7fff + lsb cannot pass u32::MAX: the largest non-NaN is 0xff80_0000
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32: exact; a NaN quieted (as `half::bf16::to_f32`).
#[inline]
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    let b = if b & 0x7fff > 0x7f80 { b | 0x0040 } else { b };
    f32::from_bits((b as u32) << 16)
}

struct Cast {
    to: DType,
}

impl CustomOp1 for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("cast: input of shape {:?} is not contiguous", l.shape()))
        })?;
        let out = match (s, self.to) {
            (CpuStorage::F32(x), DType::BF16) => {
                let x = &x[start..end];
                let mut y = vec![bf16::ZERO; x.len()];
                y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = bf16::from_bits(f32_to_bf16(x));
                    }
                });
                CpuStorage::BF16(y)
            }
            (CpuStorage::BF16(x), DType::F32) => {
                let x = &x[start..end];
                let mut y = vec![0f32; x.len()];
                y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = bf16_to_f32(x.to_bits());
                    }
                });
                CpuStorage::F32(y)
            }
            (s, to) => candle_core::bail!("cast: {:?} to {to:?} is not an f32 ⇄ bf16 cast", s.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::cast(s, l, self.to, self.name())
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(cast(grad_res, arg.dtype())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values that exercise the rounding: ties both ways, the largest finite values (one rounds
    /// to infinity), subnormals, zeros, infinities and NaNs of both signs, and a spread of normals.
    fn awkward() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::from_bits(0x3f80_8000), // a tie, even below: stays
            f32::from_bits(0x3f81_8000), // a tie, odd below: rounds up
            f32::from_bits(0x3f80_8001),
            f32::from_bits(0x3f80_7fff),
            f32::MAX,
            f32::from_bits(0x7f7f_0000),
            -f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x8000_8000),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001), // a signalling NaN
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bits = state as u32;
            v.push(f32::from_bits(bits));
            v.push(((state >> 32) as i32 as f32) * 1e-6);
        }
        v
    }

    fn bits_f32(t: &Tensor) -> Vec<u32> {
        t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    fn bits_bf16(t: &Tensor) -> Vec<u16> {
        t.to_vec1::<bf16>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn the_cast_op_matches_to_dtype_bit_for_bit() -> Result<()> {
        let x = Tensor::new(awkward().as_slice(), &Device::Cpu)?;
        let down = cast(&x, DType::BF16)?;
        assert_eq!(bits_bf16(&down), bits_bf16(&x.to_dtype(DType::BF16)?));
        // every bf16 value back up, the NaNs included
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let b = Tensor::new(all.as_slice(), &Device::Cpu)?;
        assert_eq!(bits_f32(&cast(&b, DType::F32)?), bits_f32(&b.to_dtype(DType::F32)?));
        // a view that starts inside its storage, and a strided one (which takes to_dtype)
        let m = x.narrow(0, 3, 2000)?.reshape((40, 50))?;
        assert_eq!(
            bits_bf16(&cast(&m, DType::BF16)?.flatten_all()?),
            bits_bf16(&m.to_dtype(DType::BF16)?.flatten_all()?)
        );
        let t = m.t()?;
        assert_eq!(
            bits_bf16(&cast(&t, DType::BF16)?.flatten_all()?),
            bits_bf16(&t.to_dtype(DType::BF16)?.flatten_all()?)
        );
        Ok(())
    }

    #[test]
    fn the_cast_op_carries_the_gradient_back_as_to_dtype_does() -> Result<()> {
        let x = Tensor::arange(0f32, 25.0 * 40.0, &Device::Cpu)?.affine(0.0137, -6.1)?.sin()?.reshape((25, 40))?;
        let w = Tensor::arange(0f32, 40.0 * 30.0, &Device::Cpu)?.affine(1e-3, -0.5)?.reshape((40, 30))?;
        let r = Tensor::arange(0f32, 25.0 * 30.0, &Device::Cpu)?.affine(-2e-3, 0.7)?.reshape((25, 30))?;
        let grads = |f: &dyn Fn(&Tensor, DType) -> Result<Tensor>| -> Result<(Vec<u32>, Vec<u32>)> {
            let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
            let y = f(&f(&xv, DType::BF16)?.matmul(&f(&wv, DType::BF16)?)?, DType::F32)?;
            let g = (y * &r)?.sum_all()?.backward()?;
            Ok((bits_f32(&g.get(&xv).unwrap().flatten_all()?), bits_f32(&g.get(&wv).unwrap().flatten_all()?)))
        };
        assert_eq!(grads(&|t, d| cast(t, d))?, grads(&|t, d| t.to_dtype(d))?);
        Ok(())
    }

    #[test]
    fn a_cast_between_other_dtypes_is_to_dtype() -> Result<()> {
        let x = Tensor::new(&[1.5f32, -2.25, 3.0], &Device::Cpu)?;
        assert_eq!(cast(&x, DType::F16)?.to_dtype(DType::F32)?.to_vec1::<f32>()?, vec![1.5, -2.25, 3.0]);
        assert_eq!(cast(&x, DType::F32)?.to_vec1::<f32>()?, vec![1.5, -2.25, 3.0]);
        Ok(())
    }
}
