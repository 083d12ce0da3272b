//! Prefill and decode speed on the GPU (wgpu) against the CPU path (candle), both models, at
//! several contexts: the benchmark of docs/webgpu.md ("Speed"). Software adapters (lavapipe,
//! SwiftShader) run it too, but their figures say nothing about a GPU.
//!
//!     cargo run --release -p itera-webgpu --example speed -- [--presets demo,seed]
//!         [--contexts 64,256,1024,4096] [--steps 16] [--warmup-ms 300] [--json OUT] [--no-cpu]
//!
//! Models are freshly initialised (speed does not depend on the values). Per (model, preset,
//! context): prefill of `context` tokens from an empty state (tokens/s, best of 3), then `steps`
//! single-token decodes after a prefill of `context - steps` tokens (median and p95 ms per token).
//! The GPU figures include reading the last logits back, as generation needs them. The CPU path
//! is the page's: candle's batched forward for the prefill (`RAYON_NUM_THREADS` threads; the page
//! has one) and the batch-1 decoder for the decode steps (one thread).
//!
//! Before each GPU timing (the prefills, then the decode steps) the GPU decodes untimed for
//! `--warmup-ms` (then the state is reset): the CPU measurements between points leave it idle,
//! and a GPU that has gone idle lowers its clocks (on an H100, decode steps measured first took
//! 2-3 times as long as the same steps later in the run).

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use itera_model::config::{Config, ModelKind, Preset};
use itera_model::decode::Decoder;
use itera_model::{weights, Model};
use itera_webgpu::{Gpu, GpuModel};
use std::collections::HashMap;
use std::time::Instant;

const VOCAB: usize = 2048;

struct Args {
    presets: Vec<Preset>,
    contexts: Vec<usize>,
    steps: usize,
    warmup_ms: u64,
    json: Option<String>,
    cpu: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        presets: vec![Preset::Demo, Preset::Seed],
        contexts: vec![64, 256, 1024, 4096],
        steps: 16,
        warmup_ms: 300,
        json: None,
        cpu: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--presets" => {
                a.presets = value()?.split(',').map(|p| p.parse().map_err(anyhow::Error::msg)).collect::<Result<_>>()?
            }
            "--contexts" => {
                a.contexts = value()?.split(',').map(|c| c.parse().context("--contexts")).collect::<Result<_>>()?
            }
            "--steps" => a.steps = value()?.parse().context("--steps")?,
            "--warmup-ms" => a.warmup_ms = value()?.parse().context("--warmup-ms")?,
            "--json" => a.json = Some(value()?),
            "--no-cpu" => a.cpu = false,
            _ => bail!("unknown flag {flag} (expected --presets, --contexts, --steps, --warmup-ms, --json, --no-cpu)"),
        }
    }
    if a.steps < 2 || a.contexts.iter().any(|&c| c <= a.steps) {
        bail!("every context must be larger than --steps ({}), and --steps at least 2", a.steps);
    }
    Ok(a)
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 1 + (i * 7919) % (VOCAB as u32 - 1)).collect()
}

fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

/// Keeps the GPU busy for `ms` milliseconds (single-token forwards from an empty state, reset
/// afterwards), so that its clocks are up when a timing starts.
fn warm_up(g: &mut GpuModel, ms: u64) -> Result<()> {
    g.reset();
    let (t, toks) = (Instant::now(), tokens(g.max_context()));
    let mut i = 0;
    while t.elapsed().as_millis() < u128::from(ms) && i + 1 < toks.len() {
        pollster::block_on(g.forward(&toks[i..i + 1], false))?;
        i += 1;
    }
    g.reset();
    Ok(())
}

/// (prefill tokens/s, decode median ms, decode p95 ms) on the GPU.
fn gpu_point(g: &mut GpuModel, context: usize, steps: usize, warmup_ms: u64) -> Result<(f64, f64, f64)> {
    let toks = tokens(context);
    warm_up(g, warmup_ms)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        g.reset();
        let t = Instant::now();
        pollster::block_on(g.forward(&toks, false))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    warm_up(g, warmup_ms)?;
    pollster::block_on(g.forward(&toks[..context - steps], false))?;
    let mut times = Vec::with_capacity(steps);
    for &t in &toks[context - steps..] {
        let t0 = Instant::now();
        pollster::block_on(g.forward(&[t], false))?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((context as f64 / best, quantile(&mut times, 0.5), quantile(&mut times, 0.95)))
}

/// The same on the CPU as the page runs it: the prefill through candle's batched forward (with
/// `RAYON_NUM_THREADS` threads; the page has one), the decode steps through the batch-1 decoder
/// (`itera_model::decode`, one thread).
fn cpu_point(m: &Model, context: usize, steps: usize) -> Result<(f64, f64, f64)> {
    let toks = tokens(context);
    let input = |ids: &[u32]| Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut state = m.new_state(1)?;
        let t = Instant::now();
        m.forward_with_state(&input(&toks)?, &mut state)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mut state = m.new_state(1)?;
    m.forward_with_state(&input(&toks[..context - steps])?, &mut state)?;
    let mut decoder = Decoder::new(m)?;
    decoder.load(&state)?;
    decoder.reserve(context);
    let mut times = Vec::with_capacity(steps);
    for &t in &toks[context - steps..] {
        let t0 = Instant::now();
        decoder.step(t)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((context as f64 / best, quantile(&mut times, 0.5), quantile(&mut times, 0.95)))
}

fn main() -> Result<()> {
    let a = args()?;
    let gpu = pollster::block_on(Gpu::new())?;
    eprintln!(
        "adapter: {}{}",
        gpu.adapter_name(),
        if gpu.is_software() { " (software: its speed means nothing)" } else { "" }
    );
    let max_context = *a.contexts.iter().max().unwrap_or(&64);
    let mut rows = Vec::new();
    println!("| model | preset | context | GPU prefill tok/s | CPU prefill tok/s | GPU decode ms p50 / p95 | CPU decode ms p50 / p95 |");
    println!("|---|---|---|---|---|---|---|");
    for &preset in &a.presets {
        for kind in [ModelKind::Baseline, ModelKind::IteraLite] {
            let cfg = Config::preset(kind, preset, VOCAB);
            let (varmap, cpu) = Model::init(&cfg, 0, &Device::Cpu)?;
            let tensors: HashMap<String, Tensor> = weights::varmap_tensors(&varmap)?.into_iter().collect();
            let mut g = GpuModel::new(&gpu, &cfg, &tensors, max_context)?;
            // The plan's dispatches per call (the same for one token or many).
            let dispatches = g.dispatches(1, false)?;
            eprintln!("{} {preset}: {dispatches} dispatches per forward", kind.name());
            for &c in &a.contexts {
                let (gp, gd, gd95) = gpu_point(&mut g, c, a.steps, a.warmup_ms)?;
                let cpu_fig = if a.cpu { Some(cpu_point(&cpu, c, a.steps)?) } else { None };
                let (cp, cd, cd95) = cpu_fig.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
                println!(
                    "| {} | {preset} | {c} | {gp:.0} | {cp:.0} | {gd:.2} / {gd95:.2} | {cd:.2} / {cd95:.2} |",
                    kind.name()
                );
                rows.push(serde_json::json!({
                    "model": kind.name(), "preset": preset.to_string(), "context": c,
                    "gpu_prefill_tok_s": gp, "gpu_decode_ms_p50": gd, "gpu_decode_ms_p95": gd95,
                    "cpu_prefill_tok_s": cpu_fig.map(|f| f.0), "cpu_decode_ms_p50": cpu_fig.map(|f| f.1),
                    "cpu_decode_ms_p95": cpu_fig.map(|f| f.2), "gpu_dispatches": dispatches,
                }));
            }
        }
    }
    if let Some(path) = a.json {
        let out = serde_json::json!({
            "adapter": gpu.adapter_name(), "software_adapter": gpu.is_software(),
            "cpu_prefill_threads": candle_core::utils::get_num_threads(),
            "decode_steps": a.steps, "warmup_ms": a.warmup_ms, "rows": rows,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&out)?).with_context(|| format!("writing {path}"))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
