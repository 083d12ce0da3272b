//! The patched candle-core's backward (third_party/README.md): a gradient's first contribution
//! is stored instead of added into zeros. What must still hold: every contribution of a tensor
//! with several consumers is summed, and a stored gradient is contiguous even when the first
//! contribution was a broadcast or transposed view (a matmul's backward cannot read a broadcast).

use candle_core::{Device, Result, Var};

#[test]
fn gradients_sum_every_contribution_and_are_stored_contiguous() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), &dev)?;
    let w = Var::from_vec(vec![0.5f32, -1., 2.], (3, 1), &dev)?;
    // x has three consumers: a matmul under a sum (whose backward hands the matmul a broadcast
    // view), a transpose, and a row sum.
    let a = x.matmul(&w)?.sum_all()?; // ∂/∂x_ij = w_j
    let b = (x.t()? * 3.0)?.sum_all()?; // ∂/∂x_ij = 3
    let c = x.sum_keepdim(1)?.sqr()?.sum_all()?; // ∂/∂x_ij = 2 Σ_j x_ij
    let grads = (a + b + c)?.backward()?;

    let gx = grads.get(&x).expect("x has a gradient");
    let gw = grads.get(&w).expect("w has a gradient");
    assert!(gx.is_contiguous() && gw.is_contiguous());
    let row_sums = [6f32, 15.];
    let want: Vec<f32> = (0..6).map(|k| [0.5f32, -1., 2.][k % 3] + 3.0 + 2.0 * row_sums[k / 3]).collect();
    assert_eq!(gx.flatten_all()?.to_vec1::<f32>()?, want);
    assert_eq!(gw.flatten_all()?.to_vec1::<f32>()?, vec![5f32, 7., 9.]); // column sums of x
    Ok(())
}

#[test]
fn a_first_contribution_that_is_a_broadcast_view_is_stored_contiguous() -> Result<()> {
    let x = Var::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &Device::Cpu)?;
    // The sum's backward hands x a (2, 2) broadcast of one value (strides 0).
    let grads = (x.sum_all()? * 2.0)?.backward()?;
    let gx = grads.get(&x).expect("x has a gradient");
    assert!(gx.is_contiguous(), "stored gradient has strides {:?}", gx.stride());
    assert_eq!(gx.flatten_all()?.to_vec1::<f32>()?, vec![2f32; 4]);
    Ok(())
}
