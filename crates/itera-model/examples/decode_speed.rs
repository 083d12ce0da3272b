//! Per-token decode latency of the demo presets, natively, one thread: the model's own candle
//! path (`forward_with_state`, L = 1) against the batch-1 decoder (`decode::Decoder`), after a
//! prefill to each context. `RAYON_NUM_THREADS=1 cargo run --release -p itera-model --example decode_speed`
use candle_core::{Device, Tensor};
use itera_model::decode::Decoder;
use itera_model::{Config, Model, ModelKind, Preset};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> candle_core::Result<()> {
    itera_model::runtime::tune_allocator();
    let steps = 32;
    // The GEMV rate of the decoder's kernel on 16 MiB of weights (as the page's peak).
    let (rows, cols) = (4096, 1024);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
    let x: Vec<f32> = (0..cols).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5).collect();
    let mut y = vec![0f32; rows];
    let mut best = 0f64;
    for _ in 0..20 {
        let t = Instant::now();
        itera_model::decode::gemv(&w, &x, &mut y);
        best = best.max(2.0 * (rows * cols) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    println!("gemv peak (16 MiB): {best:.1} GFLOP/s");
    for kind in [ModelKind::Baseline, ModelKind::IteraLite] {
        let cfg = Config::preset(kind, Preset::Demo, 2048);
        let (_, model) = Model::init(&cfg, 1, &Device::Cpu)?;
        let mut dec = Decoder::new(&model)?;
        for context in [64usize, 1024, 4000] {
            let prompt: Vec<u32> = (0..context as u32).map(|i| 1 + (i * 7919) % 2047).collect();
            let mut state = model.new_state(1)?;
            for chunk in prompt.chunks(itera_model::PREFILL_CHUNK) {
                model.forward_with_state(&Tensor::from_slice(chunk, (1, chunk.len()), &Device::Cpu)?, &mut state)?;
            }
            dec.load(&state)?;
            dec.reserve(context + steps);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for i in 0..steps as u32 {
                let token = 1 + (i * 31) % 2047;
                let t = Instant::now();
                let x = Tensor::from_slice(&[token], (1, 1), &Device::Cpu)?;
                std::hint::black_box(model.forward_with_state(&x, &mut state)?);
                theirs.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                std::hint::black_box(dec.step(token)?);
                ours.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let (a, b) = (median(theirs), median(ours));
            let gflops = cfg.decode_flops_per_token(context) / (b * 1e-3) / 1e9;
            println!(
                "{kind:?} demo at {context}: candle {a:.3} ms, decoder {b:.3} ms ({:.1}×), {gflops:.1} GFLOP/s",
                a / b
            );
        }
    }
    Ok(())
}
