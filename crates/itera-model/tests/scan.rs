//! The fused selective scan against its reference twin and against finite differences.

mod common;
use candle_core::{Result, Tensor, Var};
use common::*;
use itera_model::init::Rng;
use itera_model::scan::{
    gated_selective_scan, gated_selective_scan_chunked, gated_selective_scan_ref, mixer_scan, mixer_scan_ref,
    selective_scan_with_state, MixerInputs, ScanInputs,
};

/// The eight inputs of the scan, as variables.
struct Inputs {
    vars: Vec<Var>, // u, dt, a, b, c, d, dt_bias, z
}

const NAMES: [&str; 8] = ["u", "dt", "A", "B", "C", "D", "dt_bias", "z"];

impl Inputs {
    fn new(rng: &mut Rng, bsz: usize, l: usize, ed: usize, n: usize) -> Self {
        let tensors = [
            randn(rng, &[bsz, l, ed], 1.0),
            randn(rng, &[bsz, l, ed], 1.0),     // dt: softplus(dt + bias) ∈ (0, ~3)
            uniform(rng, &[ed, n], -2.0, -0.1), // A < 0
            randn(rng, &[bsz, l, n], 1.0),
            randn(rng, &[bsz, l, n], 1.0),
            randn(rng, &[ed], 1.0),
            uniform(rng, &[ed], -3.0, 0.0),
            randn(rng, &[bsz, l, ed], 1.0),
        ];
        Self { vars: tensors.iter().map(|t| Var::from_tensor(t).unwrap()).collect() }
    }

    fn with(&self, i: usize, t: Tensor) -> Vec<Tensor> {
        let mut v: Vec<Tensor> = self.vars.iter().map(|v| v.as_tensor().clone()).collect();
        v[i] = t;
        v
    }
}

fn scan_inputs(v: &[Tensor]) -> ScanInputs<'_> {
    ScanInputs { u: &v[0], dt: &v[1], a: &v[2], b: &v[3], c: &v[4], d: &v[5], dt_bias: &v[6], z: &v[7] }
}

type ScanFn = for<'a> fn(ScanInputs<'a>) -> Result<Tensor>;

/// `fast` against the reference twin at each (B, L, ED, N): the output and every input gradient
/// under a random cotangent, to 1e-4 relative. A gradient `fast` leaves absent counts as zero (at
/// L = 1 no decay multiplies a nonzero state: the reference's A gradient is zero, the chunked
/// scan records none).
fn matches_reference(fast: ScanFn, shapes: &[(usize, usize, usize, usize)], seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    for &(bsz, l, ed, n) in shapes {
        let x = Inputs::new(&mut rng, bsz, l, ed, n);
        let r = randn(&mut rng, &[bsz, l, ed], 1.0); // random cotangent
        let tensors: Vec<Tensor> = x.vars.iter().map(|v| v.as_tensor().clone()).collect();
        let run = |f: ScanFn| -> Result<(Tensor, Vec<Tensor>)> {
            let y = f(scan_inputs(&tensors))?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let g: Result<Vec<Tensor>> =
                x.vars.iter().map(|v| grads.get(v).cloned().map_or_else(|| v.zeros_like(), Ok)).collect();
            Ok((y, g?))
        };
        let (y_fast, g_fast) = run(fast)?;
        let (y_ref, g_ref) = run(gated_selective_scan_ref)?;
        let dy = max_diff(&y_fast, &y_ref)?;
        println!("B={bsz} L={l} ED={ed} N={n}: max |y - y_ref| = {dy:e}");
        assert!(dy <= 1e-4 * (1.0 + max_abs(&y_ref)), "output differs by {dy}");
        for (name, (gf, gr)) in NAMES.iter().zip(g_fast.iter().zip(&g_ref)) {
            let d = max_diff(gf, gr)?;
            let scale = max_abs(gr);
            println!("  grad {name}: max diff {d:e} (max |grad| {scale:.3})");
            assert!(d <= 1e-4 * (1.0 + scale), "grad {name} differs by {d} (scale {scale})");
        }
    }
    Ok(())
}

#[test]
fn fused_scan_matches_reference_output_and_every_input_gradient() -> Result<()> {
    // odd lengths, channel counts that do and do not fill the kernel's 64-channel blocks, state
    // sizes below, at and above its groups of 16 states (dB, dC summed over channels per group)
    matches_reference(
        gated_selective_scan,
        &[(1, 1, 1, 1), (2, 7, 5, 3), (3, 33, 40, 16), (1, 65, 64, 4), (2, 130, 33, 8), (2, 9, 130, 37)],
        SEED,
    )
}

#[test]
fn chunked_scan_matches_reference_output_and_every_input_gradient() -> Result<()> {
    // one chunk, lengths that leave a partial last chunk, exact powers of two, more than 256 steps
    let shapes =
        [(1, 1, 1, 1), (2, 2, 3, 2), (2, 7, 5, 3), (1, 16, 4, 4), (3, 33, 8, 16), (2, 130, 6, 8), (1, 300, 4, 2)];
    matches_reference(gated_selective_scan_chunked, &shapes, SEED + 7)
}

#[test]
fn fused_scan_gradients_match_finite_differences() -> Result<()> {
    let mut rng = Rng::new(SEED + 1);
    let x = Inputs::new(&mut rng, 1, 4, 2, 3);
    let r = randn(&mut rng, &[1, 4, 2], 1.0);
    let loss = |v: &[Tensor]| -> Result<f64> {
        Ok((gated_selective_scan(scan_inputs(v))? * &r)?.sum_all()?.to_scalar::<f32>()? as f64)
    };
    let tensors: Vec<Tensor> = x.vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = (gated_selective_scan(scan_inputs(&tensors))? * &r)?.sum_all()?.backward()?;
    let eps = 1e-2f32;
    for (which, var) in x.vars.iter().enumerate() {
        let g = grads.get(var).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let base = var.flatten_all()?.to_vec1::<f32>()?;
        for i in 0..base.len() {
            let probe = |delta: f32| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                loss(&x.with(which, Tensor::from_vec(v, var.shape(), var.device())?))
            };
            let fd = (probe(eps)? - probe(-eps)?) / (2.0 * eps as f64);
            let err = (fd - g[i] as f64).abs();
            assert!(err < 2e-3 * (1.0 + fd.abs()), "{} element {i}: analytic {} vs numeric {fd}", NAMES[which], g[i]);
        }
    }
    Ok(())
}

#[test]
fn stateful_scan_in_chunks_continues_exactly_where_the_full_scan_is() -> Result<()> {
    let mut rng = Rng::new(SEED + 2);
    // ED = 70 takes the serial path; ED = 64 with a 20-token prefill the parallel one.
    for &(bsz, ed, n, prefill) in &[(2, 70, 16, 5), (2, 64, 16, 20)] {
        let l = prefill + 6;
        let x = Inputs::new(&mut rng, bsz, l, ed, n);
        let all: Vec<Tensor> = x.vars.iter().map(|v| v.as_tensor().clone()).collect();
        let full = gated_selective_scan(scan_inputs(&all))?;
        let mut h = vec![0f32; bsz * ed * n];
        let mut pieces = Vec::new();
        let mut t = 0;
        for len in std::iter::once(prefill).chain(std::iter::repeat_n(1, 6)) {
            // time-major inputs are cut to [t, t + len); A, D and dt_bias stay whole
            let part: Vec<Tensor> =
                all.iter().map(|v| if v.rank() == 3 { v.narrow(1, t, len).unwrap() } else { v.clone() }).collect();
            pieces.push(selective_scan_with_state(scan_inputs(&part), &mut h)?);
            t += len;
        }
        let stepped = Tensor::cat(&pieces, 1)?;
        let d = max_diff(&full, &stepped)?;
        println!("ED={ed} prefill {prefill}: max |full - chunked| = {d:e}");
        assert!(d < 1e-5, "chunked scan differs by {d}");
    }
    Ok(())
}

/// The mixer's op (Δ's projection inside, B and C read from x_proj's output) against its twin:
/// the output and the gradient of each of its seven inputs, to the fused scan's tolerance.
#[test]
fn mixer_scan_matches_its_reference_twin_in_output_and_every_input_gradient() -> Result<()> {
    const MIXER: [&str; 7] = ["u", "z", "x_dbl", "dt_proj_w", "A", "D", "dt_bias"];
    let mut rng = Rng::new(SEED + 9);
    // channel counts that do and do not fill the 64-channel blocks; R = 1 and wider; N past 16
    for &(bsz, l, ed, n, r) in &[(1, 1, 1, 1, 1), (2, 7, 5, 3, 2), (3, 33, 40, 16, 4), (2, 65, 130, 17, 9)] {
        let tensors = [
            randn(&mut rng, &[bsz, l, ed], 1.0),
            randn(&mut rng, &[bsz, l, ed], 1.0),
            randn(&mut rng, &[bsz, l, r + 2 * n], 1.0),
            randn(&mut rng, &[ed, r], 0.5),
            uniform(&mut rng, &[ed, n], -2.0, -0.1),
            randn(&mut rng, &[ed], 1.0),
            uniform(&mut rng, &[ed], -3.0, 0.0),
        ];
        let vars: Vec<Var> = tensors.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let v: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let inputs =
            MixerInputs { u: &v[0], z: &v[1], x_dbl: &v[2], dt_proj_w: &v[3], a: &v[4], d: &v[5], dt_bias: &v[6] };
        let cot = randn(&mut rng, &[bsz, l, ed], 1.0);
        let run = |f: fn(MixerInputs) -> Result<Tensor>| -> Result<(Tensor, Vec<Tensor>)> {
            let y = f(inputs)?;
            let grads = (&y * &cot)?.sum_all()?.backward()?;
            let g: Result<Vec<Tensor>> =
                vars.iter().map(|v| grads.get(v).cloned().map_or_else(|| v.zeros_like(), Ok)).collect();
            Ok((y, g?))
        };
        let (y_fast, g_fast) = run(mixer_scan)?;
        let (y_ref, g_ref) = run(mixer_scan_ref)?;
        let dy = max_diff(&y_fast, &y_ref)?;
        println!("B={bsz} L={l} ED={ed} N={n} R={r}: max |y - y_ref| = {dy:e}");
        assert!(dy <= 1e-4 * (1.0 + max_abs(&y_ref)), "output differs by {dy}");
        for (name, (gf, gr)) in MIXER.iter().zip(g_fast.iter().zip(&g_ref)) {
            let d = max_diff(gf, gr)?;
            let scale = max_abs(gr);
            println!("  grad {name}: max diff {d:e} (max |grad| {scale:.3})");
            assert!(d <= 1e-4 * (1.0 + scale), "grad {name} differs by {d} (scale {scale})");
        }
    }
    Ok(())
}

#[test]
fn mismatched_shapes_are_an_error_naming_every_input() -> Result<()> {
    let mut rng = Rng::new(SEED + 3);
    let x = Inputs::new(&mut rng, 1, 4, 6, 3);
    let bad = x.with(3, randn(&mut rng, &[1, 5, 3], 1.0)); // B with the wrong length
    let err = gated_selective_scan(scan_inputs(&bad)).err().unwrap().to_string();
    assert!(err.contains("selective-scan shapes") && err.contains("B [1, 5, 3]"), "{err}");
    Ok(())
}

/// The CUDA kernels (a build with `--features cuda`, on a machine with an NVIDIA GPU) against
/// the CPU's reference twin: the output and every input gradient. Channel counts below, at and
/// above one warp and one block of 128 threads; state sizes 1 to 16.
#[cfg(feature = "cuda")]
#[test]
fn cuda_scan_matches_the_cpu_reference_output_and_every_input_gradient() -> Result<()> {
    let dev = candle_core::Device::new_cuda(0)?;
    let mut rng = Rng::new(SEED + 8);
    for &(bsz, l, ed, n) in &[(1, 1, 1, 1), (2, 7, 5, 3), (3, 33, 40, 16), (2, 130, 129, 8), (1, 300, 512, 16)] {
        let x = Inputs::new(&mut rng, bsz, l, ed, n);
        let r = randn(&mut rng, &[bsz, l, ed], 1.0);
        let cpu: Vec<Tensor> = x.vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y_ref = gated_selective_scan_ref(scan_inputs(&cpu))?;
        let grads = (&y_ref * &r)?.sum_all()?.backward()?;
        let g_ref: Vec<Tensor> = x.vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();

        let gpu_vars: Vec<Var> = cpu.iter().map(|t| Var::from_tensor(&t.to_device(&dev)?)).collect::<Result<_>>()?;
        let gpu: Vec<Tensor> = gpu_vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = gated_selective_scan(scan_inputs(&gpu))?;
        let grads = (&y * r.to_device(&dev)?)?.sum_all()?.backward()?;
        let dy = max_diff(&y.to_device(&candle_core::Device::Cpu)?, &y_ref)?;
        println!("B={bsz} L={l} ED={ed} N={n}: max |y_cuda - y_ref| = {dy:e}");
        assert!(dy <= 1e-4 * (1.0 + max_abs(&y_ref)), "output differs by {dy}");
        for ((name, v), gr) in NAMES.iter().zip(&gpu_vars).zip(&g_ref) {
            let g = grads.get(v).unwrap().to_device(&candle_core::Device::Cpu)?;
            let d = max_diff(&g, gr)?;
            let scale = max_abs(gr);
            println!("  grad {name}: max diff {d:e} (max |grad| {scale:.3})");
            assert!(d <= 1e-4 * (1.0 + scale), "grad {name} differs by {d} (scale {scale})");
        }
    }
    Ok(())
}
