//! Prefill and decode speed on the GPU (wgpu) against the CPU path (candle), both models, at
//! several contexts: the benchmark of docs/webgpu.md ("Speed"). Software adapters (lavapipe,
//! SwiftShader) run it too, but their figures say nothing about a GPU.
//!
//!     cargo run --release -p itera-webgpu --example speed -- [--presets demo,seed]
//!         [--contexts 64,256,1024,4096] [--steps 16] [--warmup-ms 300] [--energy-ms 1000]
//!         [--energy-tokens 1024] [--json OUT] [--no-cpu | --no-gpu]
//!
//! Models are freshly initialised (speed does not depend on the values). Per (model, preset,
//! context): prefill of `context` tokens from an empty state, read as the page reads a prompt
//! (`itera_model::PREFILL_CHUNK` tokens per forward; tokens/s, best of 3 after one untimed read),
//! then `steps` single-token decodes after a prefill of `context - steps` tokens (median and p95
//! ms per token). The GPU figures include reading the last logits back, as generation needs them.
//! The CPU path is the page's: candle's batched forward for the prefill (`RAYON_NUM_THREADS`
//! threads; the page has one) and the batch-1 decoder for the decode steps (one thread).
//! `--no-cpu` skips the CPU figures; `--no-gpu` the GPU ones (an adapter is still opened: on a
//! software one, such as lavapipe, the GPU figures mean nothing and the largest contexts take
//! minutes).
//!
//! Before each GPU timing (the prefills, then the decode steps) the GPU decodes untimed for
//! `--warmup-ms` (then the state is reset): the CPU measurements between points leave it idle,
//! and a GPU that has gone idle lowers its clocks (on an H100, decode steps measured first took
//! 2-3 times as long as the same steps later in the run).
//!
//! Energy per decoded token, measured (NVIDIA GPUs, through NVML; GPU `ITERA_NVML_DEVICE`, default
//! 0): at the start, the GPU's idle power (its energy counter over `--energy-ms` with nothing
//! running); then after each point's timed decode steps the GPU decodes on from that state (no
//! reset, no prefill) until `--energy-ms` have passed or `--energy-tokens` tokens are decoded, and
//! no further than the model's context allows (the baseline's positions end at 4,096: its point there gets no figure),
//! the energy counter read before the first token and after the last token's logits are back.
//! Reported: joules per token gross (counter delta / tokens) and above idle ((delta - idle power ×
//! window) / tokens), with the window's tokens and the contexts it covered (the point's context
//! onwards: it grows by the window's tokens, and the baseline's cost with it). Without NVML (no
//! NVIDIA driver, a software adapter) the figures are absent, and `--energy-ms 0` turns them off.
//! The counter refreshes every few to tens of ms: hence the long window.
//!
//! `--json OUT` writes every figure to OUT after each model (atomically: a temporary file
//! renamed), with `"complete": false` until the last model is measured, so a run stopped by a
//! GPU machine's command limit keeps the models it finished; `bench --webgpu` names a run cut
//! short as such.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use itera_model::config::{Config, ModelKind, Preset};
use itera_model::decode::Decoder;
use itera_model::nvml::Nvml;
use itera_model::{weights, Model, PREFILL_CHUNK};
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
    gpu: bool,
    energy_ms: u64,
    energy_tokens: usize,
}

const USAGE: &str = "usage: speed [--presets demo,seed] [--contexts 64,256,1024,4096] [--steps 16] [--warmup-ms 300] \
                     [--energy-ms 1000 (0: no energy figures)] [--energy-tokens 1024] [--json OUT] [--no-cpu | --no-gpu]";

fn args() -> Result<Args> {
    let mut a = Args {
        presets: vec![Preset::Demo, Preset::Seed],
        contexts: vec![64, 256, 1024, 4096],
        steps: 16,
        warmup_ms: 300,
        json: None,
        cpu: true,
        gpu: true,
        energy_ms: 1000,
        energy_tokens: 1024,
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
            "--energy-ms" => a.energy_ms = value()?.parse().context("--energy-ms")?,
            "--energy-tokens" => a.energy_tokens = value()?.parse().context("--energy-tokens")?,
            "--json" => a.json = Some(value()?),
            "--no-cpu" => a.cpu = false,
            "--no-gpu" => a.gpu = false,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if !a.cpu && !a.gpu {
        bail!("--no-cpu and --no-gpu leave nothing to measure\n{USAGE}");
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
    // One untimed read first: the plan of this prompt length is recorded then, and the prompt
    // kernels' first dispatches of the run land outside the timing (the first context of each
    // model, Itera-Lite's at 64 tokens, had read 2.7x slower in one run than in another).
    g.reset();
    gpu_read(g, &toks)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        g.reset();
        let t = Instant::now();
        gpu_read(g, &toks)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    warm_up(g, warmup_ms)?;
    gpu_read(g, &toks[..context - steps])?;
    let mut times = Vec::with_capacity(steps);
    for &t in &toks[context - steps..] {
        let t0 = Instant::now();
        pollster::block_on(g.forward(&[t], false))?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((context as f64 / best, quantile(&mut times, 0.5), quantile(&mut times, 0.95)))
}

/// Reads a prompt as the page does: [`PREFILL_CHUNK`] tokens per forward, the last logits of each
/// read back (`Engine::gpu_feed`).
fn gpu_read(g: &mut GpuModel, toks: &[u32]) -> Result<()> {
    for chunk in toks.chunks(PREFILL_CHUNK) {
        pollster::block_on(g.forward(chunk, false))?;
    }
    Ok(())
}

/// Reads a prompt into `state` as the page's CPU path does: [`PREFILL_CHUNK`] tokens per forward
/// (`Engine::feed`).
fn cpu_read(m: &Model, toks: &[u32], state: &mut itera_model::State) -> Result<()> {
    for chunk in toks.chunks(PREFILL_CHUNK) {
        m.forward_with_state(&Tensor::from_slice(chunk, (1, chunk.len()), &Device::Cpu)?, state)?;
    }
    Ok(())
}

/// The GPU's energy counter, and its power with nothing running.
struct Meter {
    nvml: Nvml,
    index: u32,
    idle_w: f64,
}

/// Opens NVML on GPU `ITERA_NVML_DEVICE` (default 0: on a machine of one GPU, the GPU that wgpu's
/// adapter runs on; with several, NVML's order need not be the adapter order, so compare the name
/// printed with the adapter's) and measures its idle power: the energy counter over `ms` with
/// nothing running. `Err` says why energy is not measured.
fn meter(ms: u64) -> Result<Meter, String> {
    let index = match std::env::var("ITERA_NVML_DEVICE") {
        Ok(v) => v.trim().parse::<u32>().map_err(|e| format!("ITERA_NVML_DEVICE={v:?} is not a GPU index ({e})"))?,
        Err(_) => 0,
    };
    let nvml = Nvml::open(index).map_err(|e| e.to_string())?;
    let name = nvml.name().map_err(|e| e.to_string())?;
    let e0 = nvml.energy_mj().map_err(|e| format!("GPU {index} ({name}): {e}"))?;
    let t = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let e1 = nvml.energy_mj().map_err(|e| format!("GPU {index} ({name}): {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let mj = e1.checked_sub(e0).ok_or(format!("GPU {index} ({name}): the energy counter went back"))?;
    Ok(Meter { nvml, index, idle_w: mj as f64 * 1e-3 / secs })
}

/// One energy window: decoded tokens, the context before the first and after the last, seconds,
/// and the counter's joules.
struct Window {
    tokens: usize,
    from: usize,
    to: usize,
    secs: f64,
    joules: f64,
}

impl Window {
    fn j_per_token(&self) -> f64 {
        self.joules / self.tokens as f64
    }
    fn above_idle_j_per_token(&self, idle_w: f64) -> f64 {
        (self.joules - idle_w * self.secs) / self.tokens as f64
    }
}

/// Decodes on from the state `g` holds (`context` tokens, no reset) for at least `ms` and at most
/// `max_tokens` tokens (the baseline's decode cost grows with the context: the window's context
/// range is kept short and reported), as far as the model's context allows, reading the energy counter
/// before the first token and after the last token's logits are back. `Ok(Err(why))`: no figure
/// (no room left, or NVML failed: the run goes on).
fn energy_window(
    g: &mut GpuModel,
    m: &Meter,
    context: usize,
    ms: u64,
    max_tokens: usize,
) -> Result<Result<Window, String>> {
    let room = g.max_context().saturating_sub(context).min(max_tokens);
    if room == 0 {
        return Ok(Err(format!("no room: the model's context on the GPU ends at {}", g.max_context())));
    }
    let toks = tokens(context + room);
    let e0 = match m.nvml.energy_mj() {
        Ok(e) => e,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let t = Instant::now();
    let mut n = 0;
    while n < room && (n == 0 || t.elapsed().as_millis() < u128::from(ms)) {
        pollster::block_on(g.forward(&toks[context + n..context + n + 1], false))?;
        n += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let e1 = match m.nvml.energy_mj() {
        Ok(e) => e,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some(mj) = e1.checked_sub(e0) else {
        return Ok(Err(format!("the energy counter went back from {e0} to {e1} mJ")));
    };
    Ok(Ok(Window { tokens: n, from: context, to: context + n, secs, joules: mj as f64 * 1e-3 }))
}

/// The same on the CPU as the page runs it: the prefill through candle's batched forward (with
/// `RAYON_NUM_THREADS` threads; the page has one), the decode steps through the batch-1 decoder
/// (`itera_model::decode`, one thread).
fn cpu_point(m: &Model, context: usize, steps: usize) -> Result<(f64, f64, f64)> {
    let toks = tokens(context);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut state = m.new_state(1)?;
        let t = Instant::now();
        cpu_read(m, &toks, &mut state)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mut state = m.new_state(1)?;
    cpu_read(m, &toks[..context - steps], &mut state)?;
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
    let meter = if a.energy_ms == 0 { Err("--energy-ms 0".to_string()) } else { meter(a.energy_ms) };
    let (meter, energy_unavailable) = match meter {
        Ok(m) => {
            eprintln!(
                "energy: measured through NVML on GPU {} ({}; idle {:.1} W over {} ms)",
                m.index,
                m.nvml.name().unwrap_or_default(),
                m.idle_w,
                a.energy_ms
            );
            (Some(m), None)
        }
        Err(why) => {
            eprintln!("energy: not measured ({why})");
            (None, Some(why))
        }
    };
    // Room after the largest context for the energy windows (the baseline's is capped by its
    // positions; the attention walks the keys written so far, so the larger cache costs no time).
    let max_context = *a.contexts.iter().max().unwrap_or(&64) + if meter.is_some() { a.energy_tokens } else { 0 };
    let mut rows = Vec::new();
    println!("| model | preset | context | GPU prefill tok/s | CPU prefill tok/s | GPU decode ms p50 / p95 | CPU decode ms p50 / p95 | GPU decode mJ/token gross / above idle (window) |");
    println!("|---|---|---|---|---|---|---|---|");
    for &preset in &a.presets {
        for kind in [ModelKind::Baseline, ModelKind::IteraLite] {
            let cfg = Config::preset(kind, preset, VOCAB);
            let (varmap, cpu) = Model::init(&cfg, 0, &Device::Cpu)?;
            let tensors: HashMap<String, Tensor> = weights::varmap_tensors(&varmap)?.into_iter().collect();
            let mut g = GpuModel::new(&gpu, &cfg, &tensors, max_context)?;
            // The plans' dispatches per call: a decode step's, and a prefill chunk's (the same
            // but for the baseline past 256 cached tokens, whose decode step takes two a layer
            // for attention: flash-decoding).
            let dispatches = g.dispatches(1, false)?;
            let prefill_dispatches = g.dispatches(PREFILL_CHUNK, false)?;
            eprintln!(
                "{} {preset}: {dispatches} dispatches per decode step, {prefill_dispatches} per prefill",
                kind.name()
            );
            for &c in &a.contexts {
                let (gp, gd, gd95) =
                    if a.gpu { gpu_point(&mut g, c, a.steps, a.warmup_ms)? } else { (f64::NAN, f64::NAN, f64::NAN) };
                // Straight after the timed steps: the state holds `c` tokens.
                let window = match &meter {
                    Some(m) if a.gpu => Some(energy_window(&mut g, m, c, a.energy_ms, a.energy_tokens)?),
                    _ => None,
                };
                let idle_w = meter.as_ref().map_or(f64::NAN, |m| m.idle_w);
                let energy_cell = match &window {
                    Some(Ok(w)) => format!(
                        "{:.3} / {:.3} ({} tokens, context {}-{}, {:.2} s)",
                        w.j_per_token() * 1e3,
                        w.above_idle_j_per_token(idle_w) * 1e3,
                        w.tokens,
                        w.from,
                        w.to,
                        w.secs
                    ),
                    Some(Err(why)) => format!("not measured: {why}"),
                    None => "-".to_string(),
                };
                let w = window.as_ref().and_then(|w| w.as_ref().ok());
                let cpu_fig = if a.cpu { Some(cpu_point(&cpu, c, a.steps)?) } else { None };
                let (cp, cd, cd95) = cpu_fig.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
                // "-" for a side not measured (--no-cpu, --no-gpu)
                let f = |v: f64, digits: usize| if v.is_nan() { "-".to_string() } else { format!("{v:.digits$}") };
                println!(
                    "| {} | {preset} | {c} | {} | {} | {} / {} | {} / {} | {energy_cell} |",
                    kind.name(),
                    f(gp, 0),
                    f(cp, 0),
                    f(gd, 2),
                    f(gd95, 2),
                    f(cd, 2),
                    f(cd95, 2)
                );
                rows.push(serde_json::json!({
                    "model": kind.name(), "preset": preset.to_string(), "context": c,
                    "gpu_prefill_tok_s": gp, "gpu_decode_ms_p50": gd, "gpu_decode_ms_p95": gd95,
                    "cpu_prefill_tok_s": cpu_fig.map(|f| f.0), "cpu_decode_ms_p50": cpu_fig.map(|f| f.1),
                    "cpu_decode_ms_p95": cpu_fig.map(|f| f.2), "gpu_dispatches": dispatches,
                    "gpu_prefill_dispatches": prefill_dispatches,
                    "energy_j_per_token": w.map(|w| w.j_per_token()),
                    "energy_above_idle_j_per_token": w.map(|w| w.above_idle_j_per_token(idle_w)),
                    "energy_window_tokens": w.map(|w| w.tokens),
                    "energy_window_context_from": w.map(|w| w.from),
                    "energy_window_context_to": w.map(|w| w.to),
                    "energy_window_s": w.map(|w| w.secs), "energy_window_j": w.map(|w| w.joules),
                    "energy_not_measured": window.as_ref().and_then(|w| w.as_ref().err()),
                }));
            }
            // What is measured so far, so that a run cut short (a GPU machine's command limit)
            // keeps its finished models: `complete` false until the last.
            if let Some(path) = &a.json {
                write_json(path, &a, &gpu, meter.as_ref(), energy_unavailable.as_deref(), &rows, false)?;
            }
        }
    }
    if let Some(path) = &a.json {
        write_json(path, &a, &gpu, meter.as_ref(), energy_unavailable.as_deref(), &rows, true)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

/// Writes the run's JSON (`--json`) atomically (a temporary file, then renamed over `path`), so a
/// run stopped mid-write leaves the previous whole file. `complete` says whether every preset
/// and model asked for was measured (false in the files written along the way).
fn write_json(
    path: &str,
    a: &Args,
    gpu: &Gpu,
    meter: Option<&Meter>,
    energy_unavailable: Option<&str>,
    rows: &[serde_json::Value],
    complete: bool,
) -> Result<()> {
    let out = serde_json::json!({
        "adapter": gpu.adapter_name(), "software_adapter": gpu.is_software(),
        "cpu_prefill_threads": candle_core::utils::get_num_threads(),
        "decode_steps": a.steps, "warmup_ms": a.warmup_ms,
        "nvml_gpu": meter.and_then(|m| m.nvml.name().ok()),
        "nvml_device": meter.map(|m| m.index),
        "gpu_idle_power_w": meter.map(|m| m.idle_w),
        "gpu_idle_power_method": meter.map(|_| format!(
            "NVML energy counter delta over {} ms with nothing running, at the start of the run", a.energy_ms)),
        "energy_ms": a.energy_ms, "energy_max_tokens": a.energy_tokens,
        "energy_unavailable": energy_unavailable,
        "presets": a.presets.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "complete": complete, "rows": rows,
    });
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&out)?).with_context(|| format!("writing {tmp}"))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {tmp} to {path}"))?;
    Ok(())
}
