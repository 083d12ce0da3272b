//! Times the fused selective scan alone (forward, backward) at the demo preset's dimensions,
//! for profiling: `RAYON_NUM_THREADS=1 perf record target/release/examples/scan_profile`.
use candle_core::{Device, Tensor, Var};
use itera_model::scan::selective_scan;
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    itera_model::runtime::tune_allocator();
    let (b, l, ed, n) = (16, 256, 512, 16);
    let dev = Device::Cpu;
    let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, ed), &dev)?)?;
    let d = Var::from_tensor(&(Tensor::rand(0.01f32, 0.2, (b, l, ed), &dev)?))?;
    let a = Var::from_tensor(&(Tensor::rand(-4f32, -0.5, (ed, n), &dev)?))?;
    let bm = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, n), &dev)?)?;
    let cm = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, n), &dev)?)?;
    for _ in 0..5 {
        let t0 = Instant::now();
        let y = selective_scan(&u, &d, &a, &bm, &cm)?;
        let s = y.sum_all()?;
        let t1 = Instant::now();
        s.backward()?;
        let t2 = Instant::now();
        println!("fwd {:.3} s, bwd {:.3} s", (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
    }
    Ok(())
}
