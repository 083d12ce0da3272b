//! Helpers shared by the model tests: seeded tensors and comparisons.
#![allow(dead_code)]

use candle_core::{Device, Result, Tensor};
use itera_model::init::Rng;

pub const SEED: u64 = 299_792_458;

/// N(0, scale²) values of the given shape from a seeded stream.
pub fn randn(rng: &mut Rng, dims: &[usize], scale: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * scale) as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// U(lo, hi) values of the given shape from a seeded stream.
pub fn uniform(rng: &mut Rng, dims: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (lo + (hi - lo) * rng.uniform()) as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Random token ids in 0..vocab, shape (b, l).
pub fn tokens(rng: &mut Rng, b: usize, l: usize, vocab: usize) -> Tensor {
    let v: Vec<u32> = (0..b * l).map(|_| rng.below(vocab) as u32).collect();
    Tensor::from_vec(v, (b, l), &Device::Cpu).unwrap()
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// max |a - b|, after checking the shapes agree.
pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    Ok(max_abs(&(a - b)?))
}
