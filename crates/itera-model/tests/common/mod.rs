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

/// Adds N(0, 0.3²) to every weight except Mamba's A_log and Δ bias, so that logits are O(1)
/// rather than the init's near-zero and comparisons between paths have something to compare.
pub fn shake(varmap: &candle_nn::VarMap, rng: &mut Rng) -> Result<()> {
    // In name order: the VarMap is a HashMap, whose order changes from run to run, and with it
    // which noise each variable got (and so, rarely, a near-tie in the MoE's top-2 routing).
    let data = varmap.data().lock().unwrap();
    let mut vars: Vec<_> = data.iter().collect();
    vars.sort_by(|a, b| a.0.cmp(b.0));
    for (name, var) in vars {
        if !name.ends_with("A_log") && !name.ends_with("dt_proj.bias") {
            var.set(&(var.as_tensor() + randn(rng, var.dims(), 0.3))?)?;
        }
    }
    Ok(())
}
