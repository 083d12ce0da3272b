//! Whole-model claims, for both architectures: decode == full sequence, every variable trains,
//! a tiny model overfits, weights round-trip, bad weights are named errors.

mod common;
use candle_core::{DType, Device, Result, Tensor};
use common::*;
use itera_model::init::Rng;
use itera_model::optim::{clip_grad_norm, AdamW, AdamWConfig};
use itera_model::weights::{varmap_tensors, write_gguf, write_safetensors, write_sharded, WeightFormat};
use itera_model::{Config, Kernels, Model, ModelKind, MoeKernel, Preset, ScanKernel};

const VOCAB: usize = 97;

fn tiny(kind: ModelKind) -> Config {
    Config::preset(kind, Preset::Tiny, VOCAB)
}

/// Itera-Lite without MoE: plain Mamba blocks.
fn tiny_mamba() -> Config {
    match tiny(ModelKind::IteraLite) {
        Config::IteraLite(mut c) => {
            c.num_experts = 0;
            Config::IteraLite(c)
        }
        other => other,
    }
}

fn all_tiny() -> Vec<(&'static str, Config)> {
    vec![
        ("baseline", tiny(ModelKind::Baseline)),
        ("itera-lite", tiny(ModelKind::IteraLite)),
        ("mamba (MoE off)", tiny_mamba()),
    ]
}

#[test]
fn full_sequence_logits_equal_step_by_step_decode_logits() -> Result<()> {
    let mut rng = Rng::new(SEED);
    for (name, cfg) in all_tiny() {
        let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        shake(&varmap, &mut rng)?;
        let toks = tokens(&mut rng, 2, 13, VOCAB); // batch 2
        let full = model.forward(&toks)?.logits; // (2, 13, V)
        println!("{name}: max |logit| {}", max_abs(&full));
        // one token at a time, and a 6-token prefill followed by single steps
        for prefill in [1, 6] {
            let mut state = model.new_state(2)?;
            let mut pieces = vec![model.forward_with_state(&toks.narrow(1, 0, prefill)?, &mut state)?];
            for t in prefill..13 {
                pieces.push(model.forward_with_state(&toks.narrow(1, t, 1)?, &mut state)?);
            }
            assert_eq!(state.len(), 13);
            // The state holds what the analytic model says it does, per sequence.
            assert_eq!(state.bytes(), 2 * cfg.state_bytes(13), "{name}: state bytes");
            let stepped = Tensor::cat(&pieces, 1)?;
            let d = max_diff(&full, &stepped)?;
            println!("{name}, prefill {prefill}: max |full - decode| = {d:e}");
            assert!(d < 1e-4, "{name}: decode differs from the full sequence by {d}");
        }
    }
    Ok(())
}

#[test]
fn after_one_backward_every_trainable_variable_has_a_nonzero_gradient() -> Result<()> {
    let mut rng = Rng::new(SEED + 1);
    for (name, cfg) in all_tiny() {
        let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        let toks = tokens(&mut rng, 2, 33, VOCAB);
        let losses = model.loss(&toks.narrow(1, 0, 32)?, &toks.narrow(1, 1, 32)?)?;
        let grads = losses.total.backward()?;
        let vars = varmap_tensors(&varmap)?;
        let mut dead = Vec::new();
        for (n, v) in &vars {
            match grads.get(v) {
                Some(g) if max_abs(g) > 0.0 => {}
                _ => dead.push(n.clone()),
            }
        }
        println!("{name}: {} of {} variables have a nonzero gradient", vars.len() - dead.len(), vars.len());
        assert!(dead.is_empty(), "{name}: no gradient reaches {dead:?}");
    }
    Ok(())
}

#[test]
fn fast_kernels_and_reference_twins_give_the_same_loss_and_gradients() -> Result<()> {
    let mut rng = Rng::new(SEED + 2);
    for (name, cfg) in all_tiny() {
        let (varmap, mut model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        shake(&varmap, &mut rng)?;
        let toks = tokens(&mut rng, 2, 21, VOCAB);
        let (x, y) = (toks.narrow(1, 0, 20)?, toks.narrow(1, 1, 20)?);
        let mut run = |kernels| -> Result<(f32, Vec<Tensor>)> {
            model.set_kernels(kernels);
            let loss = model.loss(&x, &y)?.total;
            let grads = loss.backward()?;
            let g = varmap_tensors(&varmap)?.iter().map(|(_, v)| grads.get(v).unwrap().clone()).collect();
            Ok((loss.to_scalar::<f32>()?, g))
        };
        let (l_ref, g_ref) = run(Kernels::reference())?;
        // the CPU's fused kernels, what other devices run (chunked scan, elementary norms and
        // conv), and that path with the device ops' routing (an NVIDIA GPU's fused norm and
        // causal softmax, here by their CPU kernels)
        let gpu = Kernels { scan: ScanKernel::Chunked, moe: MoeKernel::Sparse, fused_ops: false, device_ops: false };
        let ops = Kernels { device_ops: true, ..gpu };
        for (kernels, what) in [(Kernels::default(), "fused"), (gpu, "chunked"), (ops, "device ops")] {
            let (l_fast, g_fast) = run(kernels)?;
            println!("{name}: loss {what} {l_fast} vs reference {l_ref}");
            assert!((l_fast - l_ref).abs() < 1e-5 * (1.0 + l_ref.abs()), "{name} {what}: loss {l_fast} vs {l_ref}");
            for (a, b) in g_fast.iter().zip(&g_ref) {
                let d = max_diff(a, b)?;
                assert!(d < 1e-4 * (1.0 + max_abs(b)), "{name} {what}: a gradient differs by {d}");
            }
        }
    }
    Ok(())
}

/// What `Kernels::for_device` runs on an NVIDIA GPU (a build with `--features cuda`) against the
/// CPU's reference twins: the loss and every gradient.
#[cfg(feature = "cuda")]
#[test]
fn the_cuda_kernels_give_the_reference_loss_and_gradients() -> Result<()> {
    let dev = Device::new_cuda(0)?;
    let mut rng = Rng::new(SEED + 5);
    for (name, cfg) in all_tiny() {
        let (varmap, mut model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        shake(&varmap, &mut rng)?;
        let toks = tokens(&mut rng, 2, 41, VOCAB);
        let (x, y) = (toks.narrow(1, 0, 40)?, toks.narrow(1, 1, 40)?);
        model.set_kernels(Kernels::reference());
        let loss_ref = model.loss(&x, &y)?.total;
        let grads_ref = loss_ref.backward()?;
        let tensors = varmap_tensors(&varmap)?;
        let on_gpu = tensors.iter().map(|(n, t)| Ok((n.clone(), t.to_device(&dev)?))).collect::<Result<_>>()?;
        let (gpu_varmap, mut gpu_model) = Model::init(&cfg, SEED, &dev)?;
        itera_model::weights::assign_varmap(&gpu_varmap, &on_gpu)?;
        // what the trainer runs there (with the device's fused ops), and with elementary ops instead
        for kernels in [Kernels::for_device(&dev), Kernels { device_ops: false, ..Kernels::for_device(&dev) }] {
            gpu_model.set_kernels(kernels);
            let loss = gpu_model.loss(&x.to_device(&dev)?, &y.to_device(&dev)?)?.total;
            let grads = loss.backward()?;
            let (l_gpu, l_ref) = (loss.to_scalar::<f32>()?, loss_ref.to_scalar::<f32>()?);
            println!("{name} (device ops {}): loss on CUDA {l_gpu} vs CPU reference {l_ref}", kernels.device_ops);
            assert!((l_gpu - l_ref).abs() < 1e-4 * (1.0 + l_ref.abs()), "{name}: loss {l_gpu} vs {l_ref}");
            let gpu_vars = varmap_tensors(&gpu_varmap)?;
            for ((n, v), (_, v_ref)) in gpu_vars.iter().zip(&tensors) {
                let g = grads.get(v).unwrap().to_device(&Device::Cpu)?;
                let g_ref = grads_ref.get(v_ref).unwrap();
                let d = max_diff(&g, g_ref)?;
                assert!(d < 1e-3 * (1.0 + max_abs(g_ref)), "{name}: the gradient of {n} differs by {d}");
            }
        }
    }
    Ok(())
}

/// The gradient norm with the device ops (`optim::clip_grad_norm_with`: one kernel per gradient
/// into one buffer, `fused/cuda.rs`) against the CPU's, on the same gradients: the norm, and the
/// gradients clipped and not.
#[cfg(feature = "cuda")]
#[test]
fn the_fused_cuda_gradient_norm_matches_the_cpu() -> Result<()> {
    use itera_model::optim::clip_grad_norm_with;
    let dev = Device::new_cuda(0)?;
    let mut rng = Rng::new(SEED + 13);
    for (name, cfg) in all_tiny() {
        let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        shake(&varmap, &mut rng)?;
        let toks = tokens(&mut rng, 2, 41, VOCAB);
        let (x, y) = (toks.narrow(1, 0, 40)?, toks.narrow(1, 1, 40)?);
        let tensors = varmap_tensors(&varmap)?;
        let on_gpu = tensors.iter().map(|(n, t)| Ok((n.clone(), t.to_device(&dev)?))).collect::<Result<_>>()?;
        let (gpu_varmap, mut gpu_model) = Model::init(&cfg, SEED, &dev)?;
        itera_model::weights::assign_varmap(&gpu_varmap, &on_gpu)?;
        gpu_model.set_kernels(Kernels::for_device(&dev));
        let gpu_vars = varmap_tensors(&gpu_varmap)?;
        for max_norm in [1e-3, 1e6] {
            let mut g_cpu = model.loss(&x, &y)?.total.backward()?;
            // the GPU's store holds the CPU's gradients (the same numbers to sum; an expert the
            // sparse MoE routed no token to has none)
            let mut g_gpu = gpu_model.loss(&x.to_device(&dev)?, &y.to_device(&dev)?)?.total.backward()?;
            for ((_, v), (_, v_ref)) in gpu_vars.iter().zip(&tensors) {
                match g_cpu.get(v_ref) {
                    Some(g) => g_gpu.insert(v, g.to_device(&dev)?),
                    None => g_gpu.remove(v),
                };
            }
            // the GPU's own gradients, every matrix's laid out transposed (as candle's elementary
            // matmul leaves a weight's gradient; the fused ops leave them contiguous), read in
            // place by the kernel: the same norm with the device ops as without
            let mut a = gpu_model.loss(&x.to_device(&dev)?, &y.to_device(&dev)?)?.total.backward()?;
            let mut transposed = 0;
            for (_, v) in &gpu_vars {
                let Some(g) = a.get(v).filter(|g| g.rank() == 2).cloned() else { continue };
                let t = g.t()?.contiguous()?.t()?;
                assert!(!t.is_contiguous() && max_diff(&t, &g)? == 0.0);
                a.insert(v, t);
                transposed += 1;
            }
            let mut b = gpu_model.loss(&x.to_device(&dev)?, &y.to_device(&dev)?)?.total.backward()?;
            let (n_fused, n_plain) = (
                clip_grad_norm_with(&mut a, &gpu_varmap, 1e6, true)?,
                clip_grad_norm_with(&mut b, &gpu_varmap, 1e6, false)?,
            );
            println!("{name}: {transposed} gradients not contiguous; norm {n_fused} fused vs {n_plain} elementary");
            assert!(transposed > 0, "{name}: no transposed gradient to read in place");
            assert!((n_fused - n_plain).abs() <= 1e-5 * n_plain, "{name}: norm {n_fused} vs {n_plain}");
            let n_cpu = clip_grad_norm(&mut g_cpu, &varmap, max_norm)?;
            let n_gpu = clip_grad_norm_with(&mut g_gpu, &gpu_varmap, max_norm, true)?;
            println!("{name}, max norm {max_norm}: norm on CUDA {n_gpu} vs CPU {n_cpu}");
            assert!((n_gpu - n_cpu).abs() <= 1e-5 * n_cpu, "{name}: norm {n_gpu} vs {n_cpu}");
            for ((n, v), (_, v_ref)) in gpu_vars.iter().zip(&tensors) {
                let Some(g_ref) = g_cpu.get(v_ref) else { continue };
                let g = g_gpu.get(v).unwrap().to_device(&Device::Cpu)?;
                let d = max_diff(&g, g_ref)?;
                assert!(d <= 1e-5 * (1e-6 + max_abs(g_ref)), "{name}: the clipped gradient of {n} differs by {d}");
            }
        }
    }
    Ok(())
}

/// The f32 ⇄ bf16 cast op's CUDA kernels (`fused::cast`, mixed precision's casts) against its CPU
/// path bit for bit: lengths with every remainder of 4, a view starting off the 4-value grid (the
/// scalar kernel), ties, infinities, NaNs and subnormals, and the gradient carried back.
#[cfg(feature = "cuda")]
#[test]
fn the_fused_cuda_cast_matches_the_cpu() -> Result<()> {
    use candle_core::{DType, Var};
    use itera_model::fused::cast;
    let dev = Device::new_cuda(0)?;
    let mut rng = Rng::new(SEED + 11);
    let special = [
        0.0f32,
        -0.0,
        1.0,
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
    ];
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|x| x.to_bits())
            .collect())
    };
    for n in [1usize, 2, 3, 4, 5, 7, 13, 4096, 4097, 100_003] {
        let mut v = randn(&mut rng, &[n], 3.0).to_vec1::<f32>()?;
        for (i, s) in special.iter().enumerate().take(n) {
            v[(i * 7919) % n] = *s;
        }
        let (xc, xg) = (Tensor::new(v.as_slice(), &Device::Cpu)?, Tensor::new(v.as_slice(), &dev)?);
        let (dc, dg) = (cast(&xc, DType::BF16)?, cast(&xg, DType::BF16)?);
        assert_eq!(bits(&dg)?, bits(&dc)?, "f32 to bf16, {n} values");
        assert_eq!(bits(&cast(&dg, DType::F32)?)?, bits(&cast(&dc, DType::F32)?)?, "bf16 to f32, {n} values");
        if n > 1 {
            // views from the second value: the one-value-a-thread kernels
            let tail = |t: &Tensor| t.narrow(0, 1, n - 1);
            assert_eq!(bits(&cast(&tail(&xg)?, DType::BF16)?)?, bits(&cast(&tail(&xc)?, DType::BF16)?)?, "{n} - 1 f32");
            assert_eq!(bits(&cast(&tail(&dg)?, DType::F32)?)?, bits(&cast(&tail(&dc)?, DType::F32)?)?, "{n} - 1 bf16");
        }
    }
    // the gradient through a product in bf16, as autocast runs it
    let (x, w, r) = (randn(&mut rng, &[33, 64], 1.0), randn(&mut rng, &[64, 17], 0.2), randn(&mut rng, &[33, 17], 1.0));
    let grads = |d: &Device| -> Result<Vec<Vec<u32>>> {
        let (xv, wv) = (Var::from_tensor(&x.to_device(d)?)?, Var::from_tensor(&w.to_device(d)?)?);
        let y = cast(&cast(&xv, DType::BF16)?.matmul(&cast(&wv, DType::BF16)?)?, DType::F32)?;
        let g = (y * r.to_device(d)?)?.sum_all()?.backward()?;
        Ok(vec![bits(g.get(&xv).unwrap())?, bits(g.get(&wv).unwrap())?])
    };
    let (gc, gg) = (grads(&Device::Cpu)?, grads(&dev)?);
    for (a, b) in gg.iter().zip(&gc) {
        // the products run on different hardware (cuBLAS against gemm): compare as values
        let d = a.iter().zip(b).map(|(a, b)| (f32::from_bits(*a) - f32::from_bits(*b)).abs()).fold(0f32, f32::max);
        let scale = b.iter().map(|b| f32::from_bits(*b).abs()).fold(0f32, f32::max);
        assert!(d <= 2e-2 * (1.0 + scale), "the gradient through the casts differs by {d} (scale {scale})");
    }
    Ok(())
}

/// The fused CUDA ops (`fused/cuda.rs`) against their CPU kernels at the presets' widths: RMSNorm,
/// the causal softmax, the rotary embedding and SwiGLU's gating in output and gradients, AdamW's in-place update against the host loop
/// over several steps, and its moments through a checkpoint's tensors.
#[cfg(feature = "cuda")]
#[test]
fn the_fused_cuda_ops_match_their_cpu_kernels() -> Result<()> {
    use candle_core::Var;
    use itera_model::fused::{causal_softmax, heads, merge_heads, rms_norm_fused, rope, rope_heads, swiglu};
    let dev = Device::new_cuda(0)?;
    let mut rng = Rng::new(SEED + 9);
    // Output and input gradients of `f` under a random cotangent, on the device of `xs`.
    let run = |f: &dyn Fn(&[Var]) -> Result<Tensor>, xs: &[Tensor], r: &Tensor| -> Result<Vec<Tensor>> {
        let vars = xs.iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
        let y = f(&vars)?;
        let grads = (&y * r.to_device(y.device())?)?.sum_all()?.backward()?;
        let mut out = vec![y.to_device(&Device::Cpu)?];
        for v in &vars {
            out.push(grads.get(v).unwrap().to_device(&Device::Cpu)?);
        }
        Ok(out)
    };
    let check = |what: &str, a: &[Tensor], b: &[Tensor]| -> Result<()> {
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            let d = max_diff(a, b)?;
            println!("{what} [{i}]: max diff {d:e} (scale {:.3})", max_abs(b));
            assert!(d <= 1e-4 * (1.0 + max_abs(b)), "{what} [{i}] differs by {d}");
        }
        Ok(())
    };
    // RMSNorm: rows past one 64-row block of the backward, widths of the presets and an odd one
    for dims in [vec![3, 50, 96], vec![2, 130, 256], vec![1, 70, 512], vec![5, 33]] {
        let d = *dims.last().unwrap();
        let (x, w) = (randn(&mut rng, &dims, 2.0), uniform(&mut rng, &[d], 0.5, 1.5));
        let r = randn(&mut rng, &dims, 1.0);
        let f = |v: &[Var]| rms_norm_fused(&v[0], &v[1], 1e-5);
        let cpu = run(&f, &[x.clone(), w.clone()], &r)?;
        let gpu = run(&f, &[x.to_device(&dev)?, w.to_device(&dev)?], &r)?;
        check(&format!("rms-norm {dims:?}"), &gpu, &cpu)?;
    }
    // The causal softmax: one query over many cached keys, the training shape, S > L
    for dims in [vec![1, 1, 1, 4096], vec![2, 4, 256, 256], vec![1, 2, 33, 300]] {
        let (x, r) = (randn(&mut rng, &dims, 3.0), randn(&mut rng, &dims, 1.0));
        let f = |v: &[Var]| causal_softmax(&v[0], 0.125);
        let cpu = run(&f, &[x.clone()], &r)?;
        let gpu = run(&f, &[x.to_device(&dev)?], &r)?;
        check(&format!("causal softmax {dims:?}"), &gpu, &cpu)?;
    }
    // The rotary embedding: the attention's (B, H, L, Dh) at the presets' head widths, one position
    for dims in [vec![2, 4, 256, 64], vec![1, 8, 33, 64], vec![1, 2, 1, 32]] {
        let (l, dh) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let angles = randn(&mut rng, &[l, dh / 2], 3.0);
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let (x, r) = (randn(&mut rng, &dims, 2.0), randn(&mut rng, &dims, 1.0));
        let cpu = run(&|v: &[Var]| rope(&v[0], &cos, &sin), &[x.clone()], &r)?;
        let (cos_d, sin_d) = (cos.to_device(&dev)?, sin.to_device(&dev)?);
        let gpu = run(&|v: &[Var]| rope(&v[0], &cos_d, &sin_d), &[x.to_device(&dev)?], &r)?;
        check(&format!("rope {dims:?}"), &gpu, &cpu)?;
    }
    // ... and with the move of the heads, (B, L, H·Dh) -> (B, H, L, Dh)
    for (b, l, h, dh) in [(2, 256, 8, 64), (1, 33, 3, 32)] {
        let angles = randn(&mut rng, &[l, dh / 2], 3.0);
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let (x, r) = (randn(&mut rng, &[b, l, h * dh], 2.0), randn(&mut rng, &[b, h, l, dh], 1.0));
        let cpu = run(&|v: &[Var]| rope_heads(&v[0], &cos, &sin, h), &[x.clone()], &r)?;
        let (cos_d, sin_d) = (cos.to_device(&dev)?, sin.to_device(&dev)?);
        let gpu = run(&|v: &[Var]| rope_heads(&v[0], &cos_d, &sin_d, h), &[x.to_device(&dev)?], &r)?;
        check(&format!("rope_heads {:?}", (b, l, h, dh)), &gpu, &cpu)?;
        // the heads moved without a rotation and back (a sine between, so each way is checked)
        let f = |v: &[Var]| merge_heads(&heads(&v[0], h)?.sin()?);
        let r2 = randn(&mut rng, &[b, l, h * dh], 1.0);
        let (cpu, gpu) = (run(&f, &[x.clone()], &r2)?, run(&f, &[x.to_device(&dev)?], &r2)?);
        check(&format!("heads, merge_heads {:?}", (b, l, h, dh)), &gpu, &cpu)?;
    }
    // SwiGLU's gating: the seed baseline's MLP width, an odd size
    for dims in [vec![2, 256, 1408], vec![3, 7, 5]] {
        let (g, u, r) = (randn(&mut rng, &dims, 3.0), randn(&mut rng, &dims, 1.0), randn(&mut rng, &dims, 1.0));
        let f = |v: &[Var]| swiglu(&v[0], &v[1]);
        let cpu = run(&f, &[g.clone(), u.clone()], &r)?;
        let gpu = run(&f, &[g.to_device(&dev)?, u.to_device(&dev)?], &r)?;
        check(&format!("swiglu {dims:?}"), &gpu, &cpu)?;
    }
    // The token embedding (its backward grouped by token on the host, one kernel) and the rows'
    // cross-entropy, against their CPU paths (candle's index_add; the host loop)
    for &(n, v, d) in &[(600, 97, 64), (5, 2048, 256)] {
        let w = randn(&mut rng, &[v, d], 1.0);
        let ids = tokens(&mut rng, 1, n, v).flatten_all()?;
        let r = randn(&mut rng, &[n, d], 1.0);
        let on = |dev: &Device| -> Result<Vec<Tensor>> {
            let w = Var::from_tensor(&w.to_device(dev)?)?;
            let y = itera_model::fused::embedding(&w, &ids.to_device(dev)?)?;
            let g = (&y * r.to_device(dev)?)?.sum_all()?.backward()?.get(&w).unwrap().to_device(&Device::Cpu)?;
            Ok(vec![y.to_device(&Device::Cpu)?, g])
        };
        check(&format!("embedding N={n} V={v} D={d}"), &on(&dev)?, &on(&Device::Cpu)?)?;
        let x = randn(&mut rng, &[n, v], 3.0);
        let on = |dev: &Device| -> Result<Vec<Tensor>> {
            let x = Var::from_tensor(&x.to_device(dev)?)?;
            let loss = itera_model::fused::cross_entropy_rows(&x, &ids.to_device(dev)?)?.mean(0)?;
            let g = (&loss * 0.7)?.backward()?.get(&x).unwrap().to_device(&Device::Cpu)?;
            Ok(vec![loss.to_device(&Device::Cpu)?, g])
        };
        check(&format!("cross-entropy N={n} V={v}"), &on(&dev)?, &on(&Device::Cpu)?)?;
    }
    // AdamW: the same parameters on the CPU (host loop) and the GPU (the kernel), the same
    // gradients each step (of Σ w·r + ½ Σ w², so they change as the weights do)
    let cfg = Config::preset(ModelKind::Baseline, Preset::Tiny, VOCAB);
    let (vm_cpu, _) = Model::init(&cfg, SEED, &Device::Cpu)?;
    shake(&vm_cpu, &mut rng)?;
    let tensors = varmap_tensors(&vm_cpu)?;
    let (vm_gpu, _) = Model::init(&cfg, SEED, &dev)?;
    let on_gpu = tensors.iter().map(|(n, t)| Ok((n.clone(), t.to_device(&dev)?))).collect::<Result<_>>()?;
    itera_model::weights::assign_varmap(&vm_gpu, &on_gpu)?;
    let adamw = AdamWConfig { weight_decay: 0.1, ..Default::default() };
    let (mut opt_cpu, mut opt_gpu) = (AdamW::new(&vm_cpu, adamw)?, AdamW::with_device_ops(&vm_gpu, adamw, true)?);
    let cots: Vec<Tensor> = tensors.iter().map(|(_, t)| randn(&mut rng, t.dims(), 1.0)).collect();
    let grads_of = |vm: &candle_nn::VarMap| -> Result<candle_core::backprop::GradStore> {
        let vars = varmap_tensors(vm)?;
        let data = vm.data().lock().unwrap();
        let mut loss = Tensor::zeros((), DType::F32, vars[0].1.device())?;
        for ((name, _), r) in vars.iter().zip(&cots) {
            let w = data[name].as_tensor();
            loss = (loss + ((w * r.to_device(w.device())?)? + (w.sqr()? * 0.5)?)?.sum_all()?)?;
        }
        loss.backward()
    };
    for step in 0..5 {
        if step == 3 {
            // the GPU's moments through a checkpoint's tensors into a fresh optimizer
            let state: std::collections::HashMap<String, Tensor> = opt_gpu.state_tensors()?.into_iter().collect();
            opt_gpu = AdamW::with_device_ops(&vm_gpu, adamw, true)?;
            opt_gpu.load_state(&state, opt_cpu.steps())?;
        }
        let scale = if step == 2 { 0.7 } else { 1.0 }; // clipping's factor, inside the update
        opt_cpu.step_scaled(&grads_of(&vm_cpu)?, 1e-2, scale)?;
        // the GPU's matrices' gradients transposed in memory (the layout candle's matmul backward
        // gives a weight), which the kernel reads in place
        let mut grads = grads_of(&vm_gpu)?;
        for (_, t) in varmap_tensors(&vm_gpu)? {
            if let Some(g) = grads.get(&t).filter(|g| g.rank() == 2).cloned() {
                let g = g.t()?.contiguous()?.t()?;
                assert!(!g.is_contiguous());
                grads.insert(&t, g);
            }
        }
        opt_gpu.step_scaled(&grads, 1e-2, scale)?;
    }
    for ((name, a), (_, b)) in varmap_tensors(&vm_gpu)?.iter().zip(&varmap_tensors(&vm_cpu)?) {
        let d = max_diff(&a.to_device(&Device::Cpu)?, b)?;
        assert!(d <= 1e-5 * (1.0 + max_abs(b)), "AdamW on the GPU: {name} differs from the host loop by {d}");
    }
    let (sa, sb) = (opt_gpu.state_tensors()?, opt_cpu.state_tensors()?);
    for ((name, a), (_, b)) in sa.iter().zip(&sb) {
        let d = max_diff(&a.to_device(&Device::Cpu)?, b)?;
        assert!(d <= 1e-5 * (1.0 + max_abs(b)), "AdamW on the GPU: moment {name} differs from the host loop by {d}");
    }
    println!("AdamW: 5 steps (a checkpoint's round trip after 3), weights and moments within 1e-5 of the host loop");
    Ok(())
}

#[test]
fn a_tiny_model_of_each_kind_overfits_one_64_token_sequence() -> Result<()> {
    let mut rng = Rng::new(SEED + 3);
    let seq = tokens(&mut rng, 1, 65, VOCAB);
    let (x, y) = (seq.narrow(1, 0, 64)?, seq.narrow(1, 1, 64)?);
    for kind in ModelKind::ALL {
        let cfg = tiny(kind);
        let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        let mut opt = AdamW::new(&varmap, AdamWConfig { weight_decay: 0.0, ..Default::default() })?;
        let mut ce = f32::INFINITY;
        let mut steps = 0;
        while steps < 400 && ce >= 0.1 {
            let losses = model.loss(&x, &y)?;
            ce = losses.ce.to_scalar::<f32>()?;
            let mut grads = losses.total.backward()?;
            clip_grad_norm(&mut grads, &varmap, 1.0)?;
            opt.step(&grads, 1e-2)?;
            steps += 1;
        }
        println!("{kind}: cross-entropy {ce:.4} after {steps} steps (uniform guess: {:.2})", (VOCAB as f32).ln());
        assert!(ce < 0.1, "{kind} did not overfit: loss {ce} after {steps} steps");
    }
    Ok(())
}

/// ||a - b|| / ||b||.
fn relative_error(a: &Tensor, b: &Tensor) -> Result<f32> {
    let num = (a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
    Ok(num / b.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt())
}

#[test]
fn each_weight_format_loads_back_with_logits_near_f32_and_fewer_bytes() -> Result<()> {
    let mut rng = Rng::new(SEED + 6);
    for (name, cfg) in all_tiny() {
        let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        shake(&varmap, &mut rng)?;
        let tensors = varmap_tensors(&varmap)?;
        let toks = tokens(&mut rng, 2, 17, VOCAB);
        let want = model.forward(&toks)?.logits;
        // (format, largest relative error of the logits allowed: these weights carry added
        // noise, and a changed top-2 choice moves an MoE output a lot; a wrong tensor mapping
        // gives ~1.4, unrelated logits of the same size)
        let mut sizes = Vec::new();
        for (format, tolerance) in
            [(WeightFormat::F32, 0.0), (WeightFormat::F16, 5e-3), (WeightFormat::Q8_0, 0.1), (WeightFormat::Q4_0, 0.9)]
        {
            let bytes = match format {
                WeightFormat::F32 => write_safetensors(&tensors)?,
                f => write_gguf(&tensors, f, &[("general.name", name.to_string())])?,
            };
            let loaded = Model::from_weights(&cfg, format, &bytes, &Device::Cpu)?;
            let err = relative_error(&loaded.forward(&toks)?.logits, &want)?;
            println!("{name} {format}: {} bytes, logits relative error {err:.2e}", bytes.len());
            assert!(err <= tolerance, "{name} {format}: logits relative error {err} over {tolerance}");
            sizes.push(bytes.len());
        }
        // fewer bits, fewer bytes (f16 and q8_0 are not ordered: a tiny model keeps matrices
        // narrower than a block in f32 under q8_0)
        assert!(sizes[1] < sizes[0] && sizes[2] < sizes[0] && sizes[3] < sizes[2], "{name}: sizes {sizes:?}");
    }
    Ok(())
}

#[test]
fn a_damaged_or_foreign_gguf_is_an_error_naming_the_problem() -> Result<()> {
    let cfg = tiny(ModelKind::IteraLite);
    let (varmap, _) = Model::init(&cfg, SEED, &Device::Cpu)?;
    let tensors = varmap_tensors(&varmap)?;
    let bytes = write_gguf(&tensors, WeightFormat::Q8_0, &[])?;
    let err = Model::from_gguf(&cfg, &bytes[..bytes.len() / 2], &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("GGUF"), "{err}");
    let err = Model::from_gguf(&cfg, b"GGUF but not really", &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("GGUF"), "{err}");
    let fewer: Vec<_> = tensors.iter().skip(1).cloned().collect();
    let err = Model::from_gguf(&cfg, &write_gguf(&fewer, WeightFormat::Q8_0, &[])?, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains(&format!("missing tensor `{}`", tensors[0].0)), "{err}");
    let err = Model::from_gguf(&tiny(ModelKind::Baseline), &bytes, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("missing tensor"), "{err}");
    Ok(())
}

/// GGUF headers whose tensor dimensions multiply past 2^64, or to zero (itera-fuzz, target
/// `gguf`): candle would wrap the product and then allocate for it, or view a dangling buffer;
/// `read_gguf` names them instead.
#[test]
fn a_gguf_tensor_of_overflowing_or_empty_shape_is_an_error_not_a_panic() {
    for (dim, says) in [(1u64 << 62, "elements"), (0, "has no elements")] {
        let b = one_tensor_gguf(dim);
        let err = itera_model::weights::read_gguf(&b, &Device::Cpu).expect_err("an error");
        assert!(err.to_string().contains("tensor `w` of shape") && err.to_string().contains(says), "{err}");
    }
}

/// A GGUF v2 file with one f32 tensor `w` of shape (dim, 8) and 64 bytes of data.
fn one_tensor_gguf(dim: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&2u32.to_le_bytes()); // version
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&0u64.to_le_bytes()); // metadata entries
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'w');
    b.extend_from_slice(&2u32.to_le_bytes()); // dimensions
    b.extend_from_slice(&dim.to_le_bytes());
    b.extend_from_slice(&8u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // f32
    b.extend_from_slice(&0u64.to_le_bytes()); // offset
    b.resize(b.len().div_ceil(32) * 32 + 64, 0);
    b
}

#[test]
fn sharded_weights_load_back_identically_and_bad_shards_are_named() -> Result<()> {
    let cfg = tiny(ModelKind::IteraLite);
    let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
    let tensors = varmap_tensors(&varmap)?;
    let (shards, index) = write_sharded(&tensors, 16 * 1024)?;
    assert!(shards.len() >= 3, "{} shards", shards.len());
    let n = shards.len();
    assert_eq!(shards[0].0, format!("model-00001-of-{n:05}.safetensors"));
    let get = |shards: &[(String, Vec<u8>)]| {
        let shards = shards.to_vec();
        move |f: &str| shards.iter().find(|(n, _)| n == f).map(|(_, b)| b.clone())
    };
    let loaded = Model::from_sharded(&cfg, &index, get(&shards), &Device::Cpu)?;
    let toks = tokens(&mut Rng::new(SEED), 1, 9, VOCAB);
    assert_eq!(max_diff(&loaded.forward(&toks)?.logits, &model.forward(&toks)?.logits)?, 0.0);
    let total: u64 =
        serde_json::from_slice::<serde_json::Value>(&index).unwrap()["metadata"]["total_size"].as_u64().unwrap();
    assert_eq!(total as usize, tensors.iter().map(|(_, t)| t.elem_count() * 4).sum::<usize>());

    let err = |index: &[u8], shards: &[(String, Vec<u8>)]| {
        Model::from_sharded(&cfg, index, get(shards), &Device::Cpu).err().expect("an error").to_string()
    };
    // a shard missing
    let e = err(&index, &shards[1..]);
    assert!(e.contains(&format!("shard `{}` is missing", shards[0].0)), "{e}");
    // a shard without one of the tensors the index places there, and one with a stray tensor
    let first: Vec<_> = tensors.iter().filter(|(n, _)| shards_of(&index, n) == shards[0].0).cloned().collect();
    let mut fewer = shards.clone();
    fewer[0].1 = write_safetensors(&first[1..])?;
    let e = err(&index, &fewer);
    assert!(e.contains(&format!("places `{}` in `{}`", first[0].0, shards[0].0)), "{e}");
    let mut more = first.clone();
    more.push(("stray.weight".into(), Tensor::zeros(2, DType::F32, &Device::Cpu)?));
    let mut extra = shards.clone();
    extra[0].1 = write_safetensors(&more)?;
    let e = err(&index, &extra);
    assert!(e.contains("holds `stray.weight`, which the index does not list"), "{e}");
    // an index that is not JSON, or names a file outside its folder
    assert!(err(b"{", &shards).contains("model.safetensors.index.json"));
    let outside = String::from_utf8(index.clone()).unwrap().replacen(&shards[0].0, "../x.safetensors", 1);
    assert!(err(outside.as_bytes(), &shards).contains("not a file beside the index"));
    Ok(())
}

/// The shard the index places `tensor` in.
fn shards_of(index: &[u8], tensor: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(index).unwrap();
    v["weight_map"][tensor].as_str().unwrap().to_string()
}

#[test]
fn save_then_load_gives_identical_logits() -> Result<()> {
    let mut rng = Rng::new(SEED + 4);
    for (name, cfg) in all_tiny() {
        let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        shake(&varmap, &mut rng)?;
        let bytes = write_safetensors(&varmap_tensors(&varmap)?)?;
        let loaded = Model::from_safetensors(&cfg, &bytes, &Device::Cpu)?;
        let toks = tokens(&mut rng, 2, 9, VOCAB);
        let d = max_diff(&model.forward(&toks)?.logits, &loaded.forward(&toks)?.logits)?;
        assert_eq!(d, 0.0, "{name}: logits changed by {d} across save/load");
    }
    Ok(())
}

#[test]
fn loading_a_missing_misshaped_or_foreign_tensor_is_an_error_naming_it() -> Result<()> {
    for (_, cfg) in all_tiny() {
        let (varmap, _) = Model::init(&cfg, SEED, &Device::Cpu)?;
        let tensors = varmap_tensors(&varmap)?;
        let victim = tensors[tensors.len() / 2].0.clone();

        let missing: Vec<_> = tensors.iter().filter(|(n, _)| *n != victim).cloned().collect();
        let err = Model::from_safetensors(&cfg, &write_safetensors(&missing)?, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains(&format!("missing tensor `{victim}`")), "{err}");

        let misshaped: Vec<_> = tensors
            .iter()
            .map(|(n, t)| {
                let t = if *n == victim {
                    Tensor::zeros(t.elem_count() + 1, DType::F32, &Device::Cpu).unwrap()
                } else {
                    t.clone()
                };
                (n.clone(), t)
            })
            .collect();
        let err = Model::from_safetensors(&cfg, &write_safetensors(&misshaped)?, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains(&format!("tensor `{victim}` has shape")), "{err}");

        let mut extra = tensors.clone();
        extra.push(("model.layers.99.stray.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu)?));
        let err = Model::from_safetensors(&cfg, &write_safetensors(&extra)?, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("model.layers.99.stray.weight"), "{err}");

        let err = Model::from_safetensors(&cfg, b"definitely not safetensors", &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("not a valid safetensors file"), "{err}");
    }
    // Weights of one architecture under the other's config: the first tensor asked for is missing.
    let (varmap, _) = Model::init(&tiny(ModelKind::Baseline), SEED, &Device::Cpu)?;
    let bytes = write_safetensors(&varmap_tensors(&varmap)?)?;
    let err = Model::from_safetensors(&tiny(ModelKind::IteraLite), &bytes, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("missing tensor `backbone.embeddings.weight`"), "{err}");
    Ok(())
}

#[test]
fn the_same_seed_gives_the_same_weights_and_another_seed_does_not() -> Result<()> {
    let cfg = tiny(ModelKind::IteraLite);
    let w =
        |seed| -> Result<Vec<u8>> { write_safetensors(&varmap_tensors(&Model::init(&cfg, seed, &Device::Cpu)?.0)?) };
    assert_eq!(w(1)?, w(1)?);
    assert_ne!(w(1)?, w(2)?);
    Ok(())
}

#[test]
fn parameter_count_matches_the_variables_the_model_creates() -> Result<()> {
    for (name, cfg) in all_tiny().into_iter().chain([
        ("baseline demo", Config::preset(ModelKind::Baseline, Preset::Demo, 4096)),
        ("itera-lite demo", Config::preset(ModelKind::IteraLite, Preset::Demo, 4096)),
    ]) {
        let (varmap, _) = Model::init(&cfg, SEED, &Device::Cpu)?;
        let stored: usize = varmap_tensors(&varmap)?.iter().map(|(_, t)| t.elem_count()).sum();
        assert_eq!(cfg.param_count().total, stored, "{name}");
    }
    Ok(())
}

#[test]
fn flops_counted_while_running_agree_with_the_analytic_formulas() -> Result<()> {
    use itera_model::flops::Counting;
    let mut rng = Rng::new(SEED + 6);
    let configs = all_tiny().into_iter().chain([
        ("baseline demo", Config::preset(ModelKind::Baseline, Preset::Demo, 512)),
        ("itera-lite demo", Config::preset(ModelKind::IteraLite, Preset::Demo, 512)),
    ]);
    for (name, cfg) in configs {
        let (_, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        // Decode: one token that sees `context` positions.
        for context in [1usize, 17, 64] {
            let mut state = model.new_state(1)?;
            if context > 1 {
                model.forward_with_state(&tokens(&mut rng, 1, context - 1, cfg.vocab_size()), &mut state)?;
            }
            let counter = Counting::start();
            model.forward_with_state(&tokens(&mut rng, 1, 1, cfg.vocab_size()), &mut state)?;
            let (counted, analytic) = (counter.total(), cfg.decode_flops_per_token(context));
            println!("{name} decode at {context}: counted {counted:.0}, analytic {analytic:.0}");
            assert!((counted / analytic - 1.0).abs() < 0.01, "{name}: counted {counted} vs analytic {analytic}");
        }
        // Training forward: every token of a (B, L) batch pays for L keys.
        let (b, l) = (2, 24);
        let counter = Counting::start();
        model.forward(&tokens(&mut rng, b, l, cfg.vocab_size()))?;
        let counted = counter.total() / (b * l) as f64;
        let analytic = cfg.train_flops_per_token(l) / 3.0;
        println!("{name} forward at L={l}: counted {counted:.0}/token, analytic {analytic:.0}/token");
        assert!((counted / analytic - 1.0).abs() < 0.01, "{name}: counted {counted} vs analytic {analytic}");
    }
    Ok(())
}

/// The answer-only loss is the plain next-token loss restricted to the chosen positions: with
/// every position chosen they agree, and with a few chosen it equals their mean by hand.
#[test]
fn loss_at_positions_is_the_cross_entropy_of_those_positions() -> Result<()> {
    let mut rng = Rng::new(SEED);
    for (name, cfg) in all_tiny() {
        let (varmap, model) = Model::init(&cfg, SEED, &Device::Cpu)?;
        shake(&varmap, &mut rng)?;
        let (b, l) = (2, 9);
        let x = tokens(&mut rng, b, l, VOCAB);
        let y = tokens(&mut rng, b, l, VOCAB);
        let all = Tensor::arange(0u32, (b * l) as u32, &Device::Cpu)?;
        let full = model.loss(&x, &y)?.ce.to_scalar::<f32>()?;
        let at_all = model.loss_at(&x, &all, &y.flatten_all()?)?.ce.to_scalar::<f32>()?;
        assert!((full - at_all).abs() < 1e-5, "{name}: {full} vs {at_all}");

        let picks = [3u32, 10, 17];
        let logp = candle_nn::ops::log_softmax(&model.forward(&x)?.logits.reshape((b * l, VOCAB))?, 1)?;
        let yv: Vec<u32> = y.flatten_all()?.to_vec1()?;
        let by_hand: f32 = picks
            .iter()
            .map(|&p| -logp.get(p as usize).unwrap().get(yv[p as usize] as usize).unwrap().to_scalar::<f32>().unwrap())
            .sum::<f32>()
            / 3.0;
        let targets: Vec<u32> = picks.iter().map(|&p| yv[p as usize]).collect();
        let at = model
            .loss_at(&x, &Tensor::new(&picks, &Device::Cpu)?, &Tensor::new(targets.as_slice(), &Device::Cpu)?)?
            .ce
            .to_scalar::<f32>()?;
        assert!((at - by_hand).abs() < 1e-5, "{name}: {at} vs {by_hand}");
    }
    Ok(())
}
