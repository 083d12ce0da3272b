//! Times the fused selective scan alone (forward, backward) at the demo preset's dimensions,
//! for profiling: `RAYON_NUM_THREADS=1 perf record target/release/examples/scan_profile`.
use candle_core::{Device, Tensor, Var};
use itera_model::scan::{gated_selective_scan, ScanInputs};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    itera_model::runtime::tune_allocator();
    let (b, l, ed, n) = (16, 256, 512, 16);
    let dev = Device::Cpu;
    let var = |t: Tensor| Var::from_tensor(&t);
    let vars = [
        var(Tensor::randn(0f32, 1.0, (b, l, ed), &dev)?)?,
        var(Tensor::rand(-3f32, 0.0, (b, l, ed), &dev)?)?,
        var(Tensor::rand(-4f32, -0.5, (ed, n), &dev)?)?,
        var(Tensor::randn(0f32, 1.0, (b, l, n), &dev)?)?,
        var(Tensor::randn(0f32, 1.0, (b, l, n), &dev)?)?,
        var(Tensor::ones(ed, candle_core::DType::F32, &dev)?)?,
        var(Tensor::rand(-4f32, -2.0, ed, &dev)?)?,
        var(Tensor::randn(0f32, 1.0, (b, l, ed), &dev)?)?,
    ];
    let v: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let x = ScanInputs { u: &v[0], dt: &v[1], a: &v[2], b: &v[3], c: &v[4], d: &v[5], dt_bias: &v[6], z: &v[7] };
    for _ in 0..5 {
        let t0 = Instant::now();
        let s = gated_selective_scan(x)?.sum_all()?;
        let t1 = Instant::now();
        s.backward()?;
        let t2 = Instant::now();
        println!("fwd {:.3} s, bwd {:.3} s", (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64());
    }
    Ok(())
}
