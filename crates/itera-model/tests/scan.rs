//! The fused selective scan against its reference twin and against finite differences.

mod common;
use candle_core::{Result, Tensor, Var};
use common::*;
use itera_model::init::Rng;
use itera_model::scan::{selective_scan, selective_scan_ref, selective_scan_with_state};

struct Inputs {
    u: Var,
    delta: Var,
    a: Var,
    b: Var,
    c: Var,
}

fn inputs(rng: &mut Rng, bsz: usize, l: usize, ed: usize, n: usize) -> Inputs {
    Inputs {
        u: Var::from_tensor(&randn(rng, &[bsz, l, ed], 1.0)).unwrap(),
        delta: Var::from_tensor(&uniform(rng, &[bsz, l, ed], 0.01, 1.0)).unwrap(),
        a: Var::from_tensor(&uniform(rng, &[ed, n], -2.0, -0.1)).unwrap(),
        b: Var::from_tensor(&randn(rng, &[bsz, l, n], 1.0)).unwrap(),
        c: Var::from_tensor(&randn(rng, &[bsz, l, n], 1.0)).unwrap(),
    }
}

type ScanFn = fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>;

#[test]
fn fused_scan_matches_reference_output_and_every_input_gradient() -> Result<()> {
    let mut rng = Rng::new(SEED);
    // odd lengths, channel counts that do and do not fill the kernel's 32-channel blocks
    for &(bsz, l, ed, n) in &[(1, 1, 1, 1), (2, 7, 5, 3), (3, 33, 40, 16), (1, 65, 64, 4), (2, 130, 33, 8)] {
        let x = inputs(&mut rng, bsz, l, ed, n);
        let r = randn(&mut rng, &[bsz, l, ed], 1.0); // random cotangent
        let run = |f: ScanFn| -> Result<(Tensor, Vec<Tensor>)> {
            let y = f(&x.u, &x.delta, &x.a, &x.b, &x.c)?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let g = [&x.u, &x.delta, &x.a, &x.b, &x.c].iter().map(|v| grads.get(v).unwrap().clone()).collect();
            Ok((y, g))
        };
        let (y_fast, g_fast) = run(selective_scan)?;
        let (y_ref, g_ref) = run(selective_scan_ref)?;
        let dy = max_diff(&y_fast, &y_ref)?;
        println!("B={bsz} L={l} ED={ed} N={n}: max |y - y_ref| = {dy:e}");
        assert!(dy <= 1e-4 * (1.0 + max_abs(&y_ref)), "output differs by {dy}");
        for (name, (gf, gr)) in ["u", "delta", "A", "B", "C"].iter().zip(g_fast.iter().zip(&g_ref)) {
            let d = max_diff(gf, gr)?;
            let scale = max_abs(gr);
            println!("  grad {name}: max diff {d:e} (max |grad| {scale:.3})");
            assert!(d <= 1e-4 * (1.0 + scale), "grad {name} differs by {d} (scale {scale})");
        }
    }
    Ok(())
}

#[test]
fn fused_scan_gradients_match_finite_differences() -> Result<()> {
    let mut rng = Rng::new(SEED + 1);
    let x = inputs(&mut rng, 1, 4, 2, 3);
    let r = randn(&mut rng, &[1, 4, 2], 1.0);
    let loss = |u: &Tensor, d: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor| -> Result<f64> {
        Ok((selective_scan(u, d, a, b, c)? * &r)?.sum_all()?.to_scalar::<f32>()? as f64)
    };
    let y = selective_scan(&x.u, &x.delta, &x.a, &x.b, &x.c)?;
    let grads = (y * &r)?.sum_all()?.backward()?;
    let eps = 1e-2f32;
    let vars = [&x.u, &x.delta, &x.a, &x.b, &x.c];
    for (which, var) in vars.iter().enumerate() {
        let g = grads.get(var).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let base = var.flatten_all()?.to_vec1::<f32>()?;
        for i in 0..base.len() {
            let probe = |delta: f32| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                let moved = Tensor::from_vec(v, var.shape(), var.device())?;
                let mut args: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                args[which] = moved;
                loss(&args[0], &args[1], &args[2], &args[3], &args[4])
            };
            let fd = (probe(eps)? - probe(-eps)?) / (2.0 * eps as f64);
            let err = (fd - g[i] as f64).abs();
            assert!(err < 2e-3 * (1.0 + fd.abs()), "input {which} element {i}: analytic {} vs numeric {fd}", g[i]);
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
        let x = inputs(&mut rng, bsz, l, ed, n);
        let full = selective_scan(&x.u, &x.delta, &x.a, &x.b, &x.c)?;
        let mut h = vec![0f32; bsz * ed * n];
        let mut pieces = Vec::new();
        let mut t = 0;
        for len in std::iter::once(prefill).chain(std::iter::repeat(1).take(6)) {
            let s = |v: &Var| v.narrow(1, t, len).unwrap();
            pieces.push(selective_scan_with_state(&s(&x.u), &s(&x.delta), &x.a, &s(&x.b), &s(&x.c), &mut h)?);
            t += len;
        }
        let stepped = Tensor::cat(&pieces, 1)?;
        let d = max_diff(&full, &stepped)?;
        println!("ED={ed} prefill {prefill}: max |full - chunked| = {d:e}");
        assert!(d < 1e-5, "chunked scan differs by {d}");
    }
    Ok(())
}
