//! Training throughput of both models, and the fused scan / sparse MoE against their reference
//! twins. Not a test: figures depend on the machine. Run:
//!
//!     cargo bench -p itera-model --bench throughput                 # 1 and 2 threads
//!     cargo bench -p itera-model --bench throughput -- --quick      # demo presets only
//!     cargo bench -p itera-model --bench throughput -- --only itera  # runs whose name matches
//!     cargo bench -p itera-model --bench throughput -- --run "baseline demo"  # that run only
//!     cargo bench -p itera-model --bench throughput -- --no-kernels  # skip the kernel table
//!     cargo bench -p itera-model --bench throughput -- --threads 1   # one thread count only
//!     cargo bench -p itera-model --bench throughput -- --fma-peak    # the CPU's f32 FMA rate
//!     ITERA_BENCH_STEPS=20 cargo bench ...                           # timed steps (default 3)
//!     ITERA_AUTOCAST=bf16 throughput-cuda --device cuda ...          # bf16 products (`ops::set_autocast`)
//!     throughput-cuda --device cuda  # `scripts/build-cuda.sh --bench` builds it: the GPU's
//!                                    # kernels against their alternatives
//!
//! Each thread count runs in a child process (rayon and candle read RAYON_NUM_THREADS once).
//! "gpt-bench" is the Llama baseline at the dimensions of the GPT that PyTorch eager was
//! measured with on this machine kind (4 layers, d 256, 4 heads, MLP 1024, vocab 4096, ctx 256,
//! batch 16; the figures are in docs/candle.md); note that its SwiGLU MLP has three 256×1024
//! matrices where that GPT's GELU MLP has two.

use candle_core::{Device, Result, Tensor, Var};
use itera_model::init::Rng;
use itera_model::moe::MoeKernel;
use itera_model::optim::{clip_factor, grad_norm_with, AdamW, AdamWConfig};
use itera_model::scan::{gated_selective_scan, gated_selective_scan_chunked, gated_selective_scan_ref, ScanInputs};
use itera_model::{BaselineConfig, Config, Kernels, Model, ModelKind, Preset, ScanKernel};
use std::time::Instant;

const WARMUP: usize = 1;
/// Timed steps per run; `ITERA_BENCH_STEPS` changes it (more for a profile of steady state).
fn timed_steps() -> usize {
    std::env::var("ITERA_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).filter(|&n| n > 0).unwrap_or(3)
}

fn main() -> Result<()> {
    itera_model::runtime::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let no_kernels = args.iter().any(|a| a == "--no-kernels");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let exact = args.iter().position(|a| a == "--run").and_then(|i| args.get(i + 1)).cloned();
    let device = match args.iter().position(|a| a == "--device").and_then(|i| args.get(i + 1)).map(String::as_str) {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::new_cuda(0)?,
        Some(other) => candle_core::bail!("unknown --device `{other}` (expected `cpu` or `cuda`)"),
    };
    let autocast = match std::env::var("ITERA_AUTOCAST").as_deref() {
        Err(_) | Ok("" | "f32") => None,
        Ok("bf16") => Some(candle_core::DType::BF16),
        Ok("f16") => Some(candle_core::DType::F16),
        Ok(other) => candle_core::bail!("ITERA_AUTOCAST=`{other}` (expected f32, bf16 or f16)"),
    };
    if autocast.is_some() && device.is_cpu() {
        candle_core::bail!(
            "ITERA_AUTOCAST: mixed precision is for GPUs (`--device cuda`); the CPU's products stay f32"
        );
    }
    itera_model::ops::set_autocast(autocast, false)?;
    if !device.is_cpu() {
        return gpu(&device, only.as_deref(), exact.as_deref(), no_kernels);
    }
    let thread_counts: Vec<usize> = match args.iter().position(|a| a == "--threads").and_then(|i| args.get(i + 1)) {
        Some(n) => vec![n.parse().map_err(|_| candle_core::Error::Msg(format!("--threads `{n}` is not a number")))?],
        None => vec![1, 2],
    };
    if std::env::var("ITERA_BENCH_CHILD").is_err() {
        for threads in thread_counts {
            let status = std::process::Command::new(&args[0])
                .args(&args[1..])
                .env("ITERA_BENCH_CHILD", "1")
                .env("RAYON_NUM_THREADS", threads.to_string())
                .status()
                .map_err(candle_core::Error::wrap)?;
            if !status.success() {
                candle_core::bail!("bench child with {threads} thread(s) failed");
            }
        }
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    if args.iter().any(|a| a == "--fma-peak") {
        return fma_peak(threads);
    }
    println!("## {threads} thread(s)");
    println!("| model | params | batch × ctx | fwd s | bwd s | opt s | train tok/s |");
    println!("|---|---|---|---|---|---|---|");
    let vocab = 4096;
    let mut runs: Vec<(String, Config, usize, usize)> = vec![];
    let presets: &[Preset] = if quick { &[Preset::Demo] } else { &[Preset::Demo, Preset::Seed] };
    for &p in presets {
        for kind in ModelKind::ALL {
            let batch = if p == Preset::Seed { 8 } else { 16 };
            runs.push((format!("{kind} {p}"), Config::preset(kind, p, vocab), batch, 256));
        }
    }
    // Plain Mamba blocks (the MoE-off ablation; the peer of `MambaForCausalLM`).
    let mut plain = Config::preset(ModelKind::IteraLite, Preset::Demo, vocab);
    if let Config::IteraLite(c) = &mut plain {
        c.num_experts = 0;
    }
    runs.push(("itera-lite demo, no MoE".into(), plain, 16, 256));
    let mut gpt = BaselineConfig::preset(Preset::Demo, vocab);
    gpt.intermediate_size = 1024;
    runs.push(("baseline gpt-bench".into(), Config::Baseline(gpt), 16, 256));
    for (name, cfg, batch, ctx) in &runs {
        if only.as_ref().is_none_or(|o| name.contains(o.as_str())) && exact.as_ref().is_none_or(|e| e == name) {
            train_speed(name, cfg, *batch, *ctx, &Device::Cpu, None)?;
        }
    }
    if no_kernels {
        return Ok(());
    }

    println!("\n| kernel (demo dims, B 16, L 256) | fast fwd+bwd s | reference fwd+bwd s | speed-up |");
    println!("|---|---|---|---|");
    scan_speed(16, 256, 512, 16, &Device::Cpu)?;
    moe_speed(16, 256, &Device::Cpu)?;
    Ok(())
}

/// On a GPU: first (the device's fused ops switch its stream events off for the rest of the
/// process) rows `, elementary ops` without the device's fused RMSNorm, rotary embedding, causal
/// softmax and AdamW (`Kernels::device_ops` off, candle's stream events on); then both models of
/// the demo and seed
/// presets at the training run's text batch (32 × 256) with what `Kernels::for_device` picks (rows
/// without a kernel note: the device ops on), Itera-Lite also without MoE, the demo Itera-Lite
/// with each alternative scan and MoE path, the seed Itera-Lite also with the sparse MoE (its
/// dense MoE runs all 8 experts: 39.85M parameters' work for 17.83M active); then the kernel
/// table.
/// `--run NAME` runs the row of that exact name (scripts/peer_bench.py --device cuda does).
fn gpu(dev: &Device, only: Option<&str>, exact: Option<&str>, no_kernels: bool) -> Result<()> {
    println!("## {dev:?}");
    let on_device = Kernels::for_device(dev);
    println!("Itera-Lite rows without a kernel note: {}", describe(on_device));
    println!("| model | params | batch × ctx | fwd s | bwd s | opt s | train tok/s |");
    println!("|---|---|---|---|---|---|---|");
    let vocab = 2048;
    let without_moe = |preset| {
        let mut plain = Config::preset(ModelKind::IteraLite, preset, vocab);
        if let Config::IteraLite(c) = &mut plain {
            c.num_experts = 0;
        }
        plain
    };
    let itera = Config::preset(ModelKind::IteraLite, Preset::Demo, vocab);
    let elementary = Kernels { device_ops: false, ..on_device };
    let runs: Vec<(String, Config, Kernels)> = vec![
        ("baseline demo, elementary ops".into(), Config::preset(ModelKind::Baseline, Preset::Demo, vocab), elementary),
        ("itera-lite demo, elementary ops".into(), itera.clone(), elementary),
        ("baseline seed, elementary ops".into(), Config::preset(ModelKind::Baseline, Preset::Seed, vocab), elementary),
        ("baseline demo".into(), Config::preset(ModelKind::Baseline, Preset::Demo, vocab), on_device),
        ("itera-lite demo".into(), itera.clone(), on_device),
        (
            "itera-lite demo (fused scan, sparse MoE)".into(),
            itera.clone(),
            Kernels { moe: MoeKernel::Sparse, ..on_device },
        ),
        (
            "itera-lite demo (chunked scan, dense MoE)".into(),
            itera.clone(),
            Kernels { scan: ScanKernel::Chunked, ..on_device },
        ),
        (
            "itera-lite demo (reference scan, dense MoE)".into(),
            itera,
            Kernels { scan: ScanKernel::Reference, ..on_device },
        ),
        ("itera-lite demo, no MoE".into(), without_moe(Preset::Demo), on_device),
        ("baseline seed".into(), Config::preset(ModelKind::Baseline, Preset::Seed, vocab), on_device),
        ("itera-lite seed".into(), Config::preset(ModelKind::IteraLite, Preset::Seed, vocab), on_device),
        (
            "itera-lite seed (fused scan, sparse MoE)".into(),
            Config::preset(ModelKind::IteraLite, Preset::Seed, vocab),
            Kernels { moe: MoeKernel::Sparse, ..on_device },
        ),
        ("itera-lite seed, no MoE".into(), without_moe(Preset::Seed), on_device),
    ];
    for (name, cfg, kernels) in &runs {
        if only.is_none_or(|o| name.contains(o)) && exact.is_none_or(|e| name == e) {
            train_speed(name, cfg, 32, 256, dev, Some(*kernels))?;
        }
    }
    if !no_kernels {
        println!("\n| kernel (demo dims, B 32, L 256) | fast fwd+bwd s | reference fwd+bwd s | speed-up |");
        println!("|---|---|---|---|");
        scan_speed(32, 256, 512, 16, dev)?;
        moe_speed(32, 256, dev)?;
    }
    Ok(())
}

/// "fused scan, dense MoE" and the like.
fn describe(k: Kernels) -> String {
    let scan = match k.scan {
        ScanKernel::Fused => "fused",
        ScanKernel::Chunked => "chunked",
        ScanKernel::Reference => "reference",
    };
    let moe = match k.moe {
        MoeKernel::Sparse => "sparse",
        MoeKernel::Dense => "dense",
    };
    format!("{scan} scan, {moe} MoE")
}

fn train_speed(
    name: &str,
    cfg: &Config,
    batch: usize,
    ctx: usize,
    dev: &Device,
    kernels: Option<Kernels>,
) -> Result<()> {
    let device_ops = kernels.is_some_and(|k| k.device_ops);
    if device_ops {
        // for this row and every later one of the process (the rows without them come first)
        itera_model::runtime::single_stream(dev);
    }
    let (varmap, mut model) = Model::init(cfg, 0, dev)?;
    if let Some(k) = kernels {
        model.set_kernels(k);
    }
    let mut opt = AdamW::with_device_ops(&varmap, AdamWConfig::default(), device_ops)?;
    let mut rng = Rng::new(1);
    let (mut tf, mut tb, mut to) = (0.0, 0.0, 0.0);
    let steps = timed_steps();
    for step in 0..WARMUP + steps {
        let ids: Vec<u32> = (0..batch * (ctx + 1)).map(|_| rng.below(cfg.vocab_size()) as u32).collect();
        let data = Tensor::from_vec(ids, (batch, ctx + 1), dev)?;
        let (x, y) = (data.narrow(1, 0, ctx)?, data.narrow(1, 1, ctx)?);
        dev.synchronize()?;
        let t0 = Instant::now();
        let loss = model.loss(&x, &y)?.total;
        loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        dev.synchronize()?;
        let t2 = Instant::now();
        let norm = grad_norm_with(&grads, &varmap, device_ops)?;
        opt.step_scaled(&grads, 1e-3, clip_factor(norm, 1.0))?; // clipping to 1, inside the update
        dev.synchronize()?;
        let t3 = Instant::now();
        if step >= WARMUP {
            tf += (t1 - t0).as_secs_f64();
            tb += (t2 - t1).as_secs_f64();
            to += (t3 - t2).as_secs_f64();
        }
    }
    let n = steps as f64;
    let step = (tf + tb + to) / n;
    let p = cfg.param_count();
    println!(
        "| {name} | {:.2}M ({:.2}M active) | {batch} × {ctx} | {:.3} | {:.3} | {:.3} | {:.0} |",
        p.total as f64 / 1e6,
        p.active_per_token as f64 / 1e6,
        tf / n,
        tb / n,
        to / n,
        (batch * ctx) as f64 / step
    );
    Ok(())
}

type ScanFn = for<'a> fn(ScanInputs<'a>) -> Result<Tensor>;

fn scan_speed(b: usize, l: usize, ed: usize, n: usize, dev: &Device) -> Result<()> {
    let mut rng = Rng::new(2);
    let mut var = |dims: &[usize], lo: f64, hi: f64| -> Result<Var> {
        let numel: usize = dims.iter().product();
        let v: Vec<f32> = (0..numel).map(|_| (lo + (hi - lo) * rng.uniform()) as f32).collect();
        Var::from_tensor(&Tensor::from_vec(v, dims, dev)?)
    };
    let vars = [
        var(&[b, l, ed], -1.0, 1.0)?, // u
        var(&[b, l, ed], -3.0, 0.0)?, // dt
        var(&[ed, n], -4.0, -0.5)?,   // A
        var(&[b, l, n], -1.0, 1.0)?,  // B
        var(&[b, l, n], -1.0, 1.0)?,  // C
        var(&[ed], 0.5, 1.5)?,        // D
        var(&[ed], -4.0, -2.0)?,      // dt_bias
        var(&[b, l, ed], -1.0, 1.0)?, // z
    ];
    let v: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let inputs = ScanInputs { u: &v[0], dt: &v[1], a: &v[2], b: &v[3], c: &v[4], d: &v[5], dt_bias: &v[6], z: &v[7] };
    let time = |f: ScanFn| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            dev.synchronize()?;
            let t0 = Instant::now();
            f(inputs)?.sum_all()?.backward()?;
            dev.synchronize()?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let slow = time(gated_selective_scan_ref)?;
    let mut fast: Vec<(&str, ScanFn)> = vec![("chunked", gated_selective_scan_chunked)];
    if dev.is_cpu() || dev.is_cuda() {
        fast.insert(0, ("fused", gated_selective_scan));
    }
    for (name, f) in fast {
        let t = time(f)?;
        println!("| gated selective scan ({name}) ED {ed} N {n} | {t:.3} | {slow:.3} | {:.1}× |", slow / t);
    }
    Ok(())
}

fn moe_speed(b: usize, l: usize, dev: &Device) -> Result<()> {
    let cfg = Config::preset(ModelKind::IteraLite, Preset::Demo, 4096);
    let (_, mut model) = Model::init(&cfg, 0, dev)?;
    let mut rng = Rng::new(3);
    let ids: Vec<u32> = (0..b * (l + 1)).map(|_| rng.below(4096) as u32).collect();
    let data = Tensor::from_vec(ids, (b, l + 1), dev)?;
    let (x, y) = (data.narrow(1, 0, l)?, data.narrow(1, 1, l)?);
    let mut time = |moe| -> Result<f64> {
        model.set_kernels(Kernels { moe, ..Kernels::for_device(dev) });
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            dev.synchronize()?;
            let t0 = Instant::now();
            model.loss(&x, &y)?.total.backward()?;
            dev.synchronize()?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let (fast, slow) = (time(MoeKernel::Sparse)?, time(MoeKernel::Dense)?);
    println!("| itera-lite demo model, sparse vs dense MoE | {fast:.3} | {slow:.3} | {:.1}× |", slow / fast);
    Ok(())
}

/// `--fma-peak`: the f32 rate of the CPU's fused multiply-adds at `threads` threads, each running
/// a register-only loop of 12 independent accumulators (enough to cover the instruction's latency
/// on two pipes) in the widest vectors the CPU has: the ceiling every matrix product of the
/// training step sits under, whoever wrote it (scripts/peer_bench.py states both sides' FLOP/s
/// against it). One line: `fma peak: <ISA> <GFLOP/s> GFLOP/s at <n> thread(s)`.
fn fma_peak(threads: usize) -> Result<()> {
    let Some((isa, lanes, run)) = fma_loop() else {
        candle_core::bail!("--fma-peak: this CPU has no AVX2 + FMA (the loop is written for x86-64 with them)");
    };
    const ITERS: u64 = 400_000_000; // about half a second at 16 lanes
    run(ITERS / 10); // warm up: clocks, and the AVX-512 units' power-up
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| std::hint::black_box(run(ITERS)));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let flops = (threads as u64 * ITERS * FMA_CHAINS as u64 * lanes * 2) as f64;
    println!("fma peak: {isa} {:.1} GFLOP/s at {threads} thread(s)", flops / secs / 1e9);
    Ok(())
}

/// Independent accumulators of the FMA loop.
const FMA_CHAINS: usize = 12;

/// The widest FMA loop this CPU runs: its ISA's name, f32 lanes per instruction, the loop.
#[allow(clippy::type_complexity)]
fn fma_loop() -> Option<(&'static str, u64, fn(u64) -> f32)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return Some(("AVX-512", 16, |n| unsafe { fma_loop_avx512(n) }));
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return Some(("AVX2", 8, |n| unsafe { fma_loop_avx2(n) }));
        }
    }
    None
}

/// `n` rounds of FMA_CHAINS independent 16-lane multiply-adds; returns a sum of the results so
/// that the loop is not optimised away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(n: u64) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-3));
    let mut acc: [__m512; FMA_CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

/// [`fma_loop_avx512`] with 8-lane AVX2 multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(n: u64) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm256_set1_ps(0.999), _mm256_set1_ps(1e-3));
    let mut acc: [__m256; FMA_CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut lanes = [0f32; 8];
    acc.iter()
        .map(|&a| {
            _mm256_storeu_ps(lanes.as_mut_ptr(), a);
            lanes.iter().sum::<f32>()
        })
        .sum()
}
