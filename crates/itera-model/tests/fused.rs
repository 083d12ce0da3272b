//! The fused CPU ops against their elementary-op twins: outputs and every gradient.

mod common;
use candle_core::{Result, Tensor, Var};
use common::*;
use itera_model::baseline::attention;
use itera_model::fused::{
    causal_attention, causal_softmax, conv_silu_fused, conv_silu_fused_zero_history, cross_entropy_rows, heads,
    linear as linear_fused, linear_cross_entropy, merge_heads, rms_norm_fused, rope, rope_heads, swiglu,
};
use itera_model::init::Rng;
use itera_model::ops::{causal_depthwise_conv, linear, rms_norm};

/// Output and the gradients of `vars` of `f`, under a random cotangent.
fn run(f: impl Fn() -> Result<Tensor>, vars: &[&Var], rng: &mut Rng) -> Result<(Tensor, Vec<Tensor>)> {
    let y = f()?;
    let r = randn(rng, y.dims(), 1.0);
    let grads = (&y * &r)?.sum_all()?.backward()?;
    Ok((y, vars.iter().map(|v| grads.get(v).unwrap().clone()).collect()))
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    let d = max_diff(a, b)?;
    let scale = max_abs(b);
    println!("{what}: max diff {d:e} (scale {scale:.3})");
    assert!(d <= 1e-5 * (1.0 + scale), "{what} differs by {d}");
    Ok(())
}

#[test]
fn fused_rms_norm_matches_the_elementary_twin_in_output_and_gradients() -> Result<()> {
    let mut rng = Rng::new(SEED);
    // rows that do and do not fill the kernel's 64-row chunks; widths that are not multiples of 8
    for dims in [vec![1, 1, 1], vec![2, 7, 5], vec![3, 50, 96], vec![130, 33], vec![2, 65, 256]] {
        let d = *dims.last().unwrap();
        let x = Var::from_tensor(&randn(&mut rng, &dims, 2.0))?;
        let w = Var::from_tensor(&uniform(&mut rng, &[d], 0.5, 1.5))?;
        let seed = rng.next_u64();
        let (yf, gf) = run(|| rms_norm_fused(&x, &w, 1e-5), &[&x, &w], &mut Rng::new(seed))?;
        let (yr, gr) = run(|| rms_norm(&x, &w, 1e-5), &[&x, &w], &mut Rng::new(seed))?;
        assert_close(&format!("{dims:?} output"), &yf, &yr)?;
        assert_close(&format!("{dims:?} grad x"), &gf[0], &gr[0])?;
        assert_close(&format!("{dims:?} grad w"), &gf[1], &gr[1])?;
    }
    Ok(())
}

#[test]
fn fused_conv_silu_matches_the_elementary_twin_in_output_and_gradients() -> Result<()> {
    let mut rng = Rng::new(SEED + 1);
    for &(b, l, c, k) in &[(1, 1, 1, 1), (2, 7, 5, 4), (3, 33, 40, 4), (1, 2, 9, 4), (2, 20, 64, 3)] {
        let xp = Var::from_tensor(&randn(&mut rng, &[b, k - 1 + l, c], 1.0))?;
        let w = Var::from_tensor(&randn(&mut rng, &[c, k], 0.5))?;
        let bias = Var::from_tensor(&randn(&mut rng, &[c], 0.5))?;
        let seed = rng.next_u64();
        let vars = [&xp, &w, &bias];
        let (yf, gf) = run(|| conv_silu_fused(&xp, &w, &bias), &vars, &mut Rng::new(seed))?;
        let (yr, gr) = run(|| causal_depthwise_conv(&xp, &w, &bias)?.silu(), &vars, &mut Rng::new(seed))?;
        let what = format!("B={b} L={l} C={c} K={k}");
        assert_close(&format!("{what} output"), &yf, &yr)?;
        for (name, (a, r)) in ["xp", "w", "bias"].iter().zip(gf.iter().zip(&gr)) {
            assert_close(&format!("{what} grad {name}"), a, r)?;
        }
    }
    Ok(())
}

#[test]
fn fused_conv_silu_with_zero_history_matches_the_padded_twin() -> Result<()> {
    let mut rng = Rng::new(SEED + 7);
    // L shorter than, equal to and longer than the K-1 rows of history; C not a multiple of 16
    for &(b, l, c, k) in &[(1, 1, 1, 1), (2, 2, 5, 4), (1, 3, 9, 4), (3, 33, 40, 4), (2, 20, 64, 3)] {
        let x = Var::from_tensor(&randn(&mut rng, &[b, l, c], 1.0))?;
        let w = Var::from_tensor(&randn(&mut rng, &[c, k], 0.5))?;
        let bias = Var::from_tensor(&randn(&mut rng, &[c], 0.5))?;
        let seed = rng.next_u64();
        let vars = [&x, &w, &bias];
        let (yf, gf) = run(|| conv_silu_fused_zero_history(&x, &w, &bias), &vars, &mut Rng::new(seed))?;
        let padded = || causal_depthwise_conv(&x.pad_with_zeros(1, k - 1, 0)?, &w, &bias)?.silu();
        let (yr, gr) = run(padded, &vars, &mut Rng::new(seed))?;
        let what = format!("zero history B={b} L={l} C={c} K={k}");
        assert_eq!(yf.dims(), [b, l, c], "{what}");
        assert_close(&format!("{what} output"), &yf, &yr)?;
        for (name, (a, r)) in ["x", "w", "bias"].iter().zip(gf.iter().zip(&gr)) {
            assert_close(&format!("{what} grad {name}"), a, r)?;
        }
    }
    Ok(())
}

#[test]
fn linear_cross_entropy_matches_the_elementary_twin() -> Result<()> {
    let mut rng = Rng::new(SEED + 3);
    // one row; fewer rows than a chunk; several chunks with a partial last one (chunks of 256)
    for &(n, d, v) in &[(1, 3, 5), (7, 16, 40), (600, 24, 70)] {
        let x = Var::from_tensor(&randn(&mut rng, &[n, d], 1.5))?;
        let w = Var::from_tensor(&randn(&mut rng, &[v, d], 1.0))?;
        let t = tokens(&mut rng, 1, n, v).flatten_all()?;
        let g = 0.5 + rng.uniform(); // an upstream gradient other than 1
        let grads_of = |loss: &Tensor| -> Result<Vec<Tensor>> {
            let grads = (loss * g)?.backward()?;
            Ok(vec![grads.get(&x).unwrap().clone(), grads.get(&w).unwrap().clone()])
        };
        let fused = linear_cross_entropy(&x, &w, &t)?;
        let twin = candle_nn::loss::cross_entropy(&linear(&x, &w)?, &t)?;
        let what = format!("N={n} D={d} V={v}");
        assert_close(&format!("{what} loss"), &fused, &twin)?;
        for (name, (a, r)) in ["x", "w"].iter().zip(grads_of(&fused)?.iter().zip(&grads_of(&twin)?)) {
            assert_close(&format!("{what} grad {name}"), a, r)?;
        }
        // without a variable to reach, the same loss (and no gradient prepared)
        let plain = linear_cross_entropy(&x.as_tensor().detach(), &w.as_tensor().detach(), &t)?;
        assert_close(&format!("{what} loss without gradient"), &plain, &twin)?;
    }
    Ok(())
}

#[test]
fn cross_entropy_rows_match_candles_loss() -> Result<()> {
    let mut rng = Rng::new(SEED + 4);
    for &(n, v) in &[(1, 5), (9, 40), (300, 70)] {
        let x = Var::from_tensor(&randn(&mut rng, &[n, v], 3.0))?;
        let t = tokens(&mut rng, 1, n, v).flatten_all()?;
        let g = 0.5 + rng.uniform(); // an upstream gradient other than 1
        let ours = cross_entropy_rows(&x, &t)?.mean(0)?;
        let twin = candle_nn::loss::cross_entropy(&x, &t)?;
        let what = format!("N={n} V={v}");
        assert_close(&format!("{what} loss"), &ours, &twin)?;
        let grad = |loss: &Tensor| -> Result<Tensor> { Ok((loss * g)?.backward()?.get(&x).unwrap().clone()) };
        assert_close(&format!("{what} grad"), &grad(&ours)?, &grad(&twin)?)?;
    }
    // a target outside the vocabulary is a named error
    let x = randn(&mut rng, &[2, 4], 1.0);
    let err = cross_entropy_rows(&x, &Tensor::new(&[1u32, 4], x.device())?).unwrap_err().to_string();
    assert!(err.contains("target 4 is outside the vocabulary of 4"), "{err}");
    Ok(())
}

/// Random q (B, L, H·Dh), k and v (B, L, Hkv·Dh) as variables, and RoPE's cos and sin (L, Dh/2).
fn attention_inputs(
    rng: &mut Rng,
    b: usize,
    l: usize,
    h: usize,
    hkv: usize,
    dh: usize,
) -> Result<(Var, Var, Var, Tensor, Tensor)> {
    let q = Var::from_tensor(&randn(rng, &[b, l, h * dh], 1.5))?;
    let k = Var::from_tensor(&randn(rng, &[b, l, hkv * dh], 1.5))?;
    let v = Var::from_tensor(&randn(rng, &[b, l, hkv * dh], 1.0))?;
    let angles = uniform(rng, &[l, dh / 2], -3.0, 3.0);
    Ok((q, k, v, angles.cos()?, angles.sin()?))
}

#[test]
fn fused_attention_matches_the_elementary_twin() -> Result<()> {
    let mut rng = Rng::new(SEED + 4);
    // (B, L, H, Hkv, Dh): one token; GQA; rows past one 64-row block and a partial last block
    for &(b, l, h, hkv, dh) in &[(1, 1, 1, 1, 2), (2, 7, 2, 1, 4), (2, 70, 4, 2, 8), (1, 130, 3, 3, 16)] {
        let (q, k, v, cos, sin) = attention_inputs(&mut rng, b, l, h, hkv, dh)?;
        let seed = rng.next_u64();
        let vars = [&q, &k, &v];
        let (yf, gf) = run(|| causal_attention(&q, &k, &v, &cos, &sin, h, hkv), &vars, &mut Rng::new(seed))?;
        let (yr, gr) = run(|| attention(&q, &k, &v, &cos, &sin, h, hkv, None, false), &vars, &mut Rng::new(seed))?;
        let what = format!("B={b} L={l} H={h} Hkv={hkv} Dh={dh}");
        assert_close(&format!("{what} output"), &yf, &yr)?;
        for (name, (a, r)) in ["q", "k", "v"].iter().zip(gf.iter().zip(&gr)) {
            assert_close(&format!("{what} grad {name}"), a, r)?;
        }
    }
    Ok(())
}

/// softmax(scale · x) with an additive -inf mask on the keys past each query, from candle ops:
/// what `attention` does without the fused op.
fn causal_softmax_twin(x: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = x.dims();
    let (l, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let mask: Vec<f32> =
        (0..l).flat_map(|i| (0..s).map(move |j| if j > s - l + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (l, s), x.device())?;
    itera_model::ops::softmax_last(&(x * scale)?.broadcast_add(&mask)?)
}

#[test]
fn fused_causal_softmax_matches_the_elementary_twin() -> Result<()> {
    let mut rng = Rng::new(SEED + 7);
    // one score; a query over cached keys (S > L); rows wider than a warp and not a multiple of
    // it; a (B, H, L, S) block as the attention makes it
    for dims in [vec![1, 1], vec![1, 9], vec![3, 5, 5], vec![2, 4, 37, 70], vec![2, 3, 64, 64]] {
        let x = Var::from_tensor(&randn(&mut rng, &dims, 3.0))?;
        let seed = rng.next_u64();
        let scale = 0.35;
        let (yf, gf) = run(|| causal_softmax(&x, scale), &[&x], &mut Rng::new(seed))?;
        let (yr, gr) = run(|| causal_softmax_twin(&x, scale), &[&x], &mut Rng::new(seed))?;
        assert_close(&format!("{dims:?} output"), &yf, &yr)?;
        assert_close(&format!("{dims:?} grad x"), &gf[0], &gr[0])?;
    }
    // the attention through it, as the GPU runs it, against the elementary path
    let (b, l, h, hkv, dh) = (2, 19, 4, 2, 8);
    let (q, k, v, cos, sin) = attention_inputs(&mut rng, b, l, h, hkv, dh)?;
    let seed = rng.next_u64();
    let vars = [&q, &k, &v];
    let (yf, gf) = run(|| attention(&q, &k, &v, &cos, &sin, h, hkv, None, true), &vars, &mut Rng::new(seed))?;
    let (yr, gr) = run(|| attention(&q, &k, &v, &cos, &sin, h, hkv, None, false), &vars, &mut Rng::new(seed))?;
    assert_close("attention output", &yf, &yr)?;
    for (name, (a, r)) in ["q", "k", "v"].iter().zip(gf.iter().zip(&gr)) {
        assert_close(&format!("attention grad {name}"), a, r)?;
    }
    // scores that are not (.., L, S ≥ L) are named
    let err = causal_softmax(&randn(&mut rng, &[2, 5, 3], 1.0), 1.0).unwrap_err().to_string();
    assert!(err.contains("causal-softmax") && err.contains("[2, 5, 3]"), "{err}");
    Ok(())
}

#[test]
fn fused_rope_matches_the_elementary_twin() -> Result<()> {
    let mut rng = Rng::new(SEED + 11);
    // (B, H, L, Dh) as the attention makes it (the twin's only rank): one position of one pair,
    // an odd L, the presets' head widths
    for dims in [vec![1, 1, 1, 2], vec![1, 1, 7, 6], vec![2, 3, 19, 8], vec![2, 4, 33, 64]] {
        let (l, dh) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let x = Var::from_tensor(&randn(&mut rng, &dims, 2.0))?;
        let angles = randn(&mut rng, &[l, dh / 2], 3.0);
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let seed = rng.next_u64();
        let (yf, gf) = run(|| rope(&x, &cos, &sin), &[&x], &mut Rng::new(seed))?;
        let (yr, gr) = run(|| candle_nn::rotary_emb::rope_slow(&x, &cos, &sin), &[&x], &mut Rng::new(seed))?;
        assert_close(&format!("rope {dims:?} output"), &yf, &yr)?;
        assert_close(&format!("rope {dims:?} grad x"), &gf[0], &gr[0])?;
    }
    // with the move of the heads: (B, L, H·Dh) in, (B, H, L, Dh) out, against the transpose
    // then the twin (the backward moves them back)
    for (b, l, h, dh) in [(1, 1, 1, 2), (2, 7, 3, 8), (2, 33, 4, 64)] {
        let x = Var::from_tensor(&randn(&mut rng, &[b, l, h * dh], 2.0))?;
        let angles = randn(&mut rng, &[l, dh / 2], 3.0);
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let seed = rng.next_u64();
        let (yf, gf) = run(|| rope_heads(&x, &cos, &sin, h), &[&x], &mut Rng::new(seed))?;
        let twin = || {
            let heads = x.reshape((b, l, h, dh))?.transpose(1, 2)?.contiguous()?;
            candle_nn::rotary_emb::rope_slow(&heads, &cos, &sin)
        };
        let (yr, gr) = run(twin, &[&x], &mut Rng::new(seed))?;
        assert_eq!(yf.dims(), [b, h, l, dh]);
        assert_close(&format!("rope_heads {:?} output", (b, l, h, dh)), &yf, &yr)?;
        assert_close(&format!("rope_heads {:?} grad x", (b, l, h, dh)), &gf[0], &gr[0])?;
    }
    // the heads moved without a rotation, both ways, against the transposes
    for (b, l, h, dh) in [(1, 1, 1, 3), (2, 7, 3, 8)] {
        let x = Var::from_tensor(&randn(&mut rng, &[b, l, h * dh], 2.0))?;
        let seed = rng.next_u64();
        let (yf, gf) = run(|| heads(&x, h), &[&x], &mut Rng::new(seed))?;
        let (yr, gr) = run(|| x.reshape((b, l, h, dh))?.transpose(1, 2)?.contiguous(), &[&x], &mut Rng::new(seed))?;
        assert_eq!(max_diff(&yf, &yr)? + max_diff(&gf[0], &gr[0])?, 0.0, "heads {:?}", (b, l, h, dh));
        let y = Var::from_tensor(&randn(&mut rng, &[b, h, l, dh], 2.0))?;
        let seed = rng.next_u64();
        let (yf, gf) = run(|| merge_heads(&y), &[&y], &mut Rng::new(seed))?;
        let (yr, gr) = run(|| y.transpose(1, 2)?.reshape((b, l, h * dh)), &[&y], &mut Rng::new(seed))?;
        assert_eq!(max_diff(&yf, &yr)? + max_diff(&gf[0], &gr[0])?, 0.0, "merge_heads {:?}", (b, l, h, dh));
    }
    let x = randn(&mut rng, &[2, 5, 12], 1.0);
    let err =
        rope_heads(&x, &randn(&mut rng, &[5, 2], 1.0), &randn(&mut rng, &[5, 2], 1.0), 5).unwrap_err().to_string();
    assert!(err.contains("5 heads"), "{err}");
    // shapes that do not fit are named
    let x = randn(&mut rng, &[2, 5, 7], 1.0);
    let err = rope(&x, &randn(&mut rng, &[5, 3], 1.0), &randn(&mut rng, &[5, 3], 1.0)).unwrap_err().to_string();
    assert!(err.contains("rope") && err.contains("Dh even"), "{err}");
    let x = randn(&mut rng, &[2, 5, 8], 1.0);
    let err = rope(&x, &randn(&mut rng, &[4, 4], 1.0), &randn(&mut rng, &[5, 4], 1.0)).unwrap_err().to_string();
    assert!(err.contains("cos") && err.contains("[4, 4]"), "{err}");
    Ok(())
}

#[test]
fn fused_swiglu_matches_the_elementary_twin() -> Result<()> {
    let mut rng = Rng::new(SEED + 5);
    // one element; more elements than one parallel chunk (2^14) with a partial last one
    for dims in [vec![1], vec![3, 7, 11], vec![5, 4000]] {
        let g = Var::from_tensor(&randn(&mut rng, &dims, 3.0))?;
        let u = Var::from_tensor(&randn(&mut rng, &dims, 1.0))?;
        let seed = rng.next_u64();
        let (yf, gf) = run(|| swiglu(&g, &u), &[&g, &u], &mut Rng::new(seed))?;
        let (yr, gr) = run(|| g.silu()? * u.as_tensor(), &[&g, &u], &mut Rng::new(seed))?;
        assert_close(&format!("{dims:?} output"), &yf, &yr)?;
        assert_close(&format!("{dims:?} grad gate"), &gf[0], &gr[0])?;
        assert_close(&format!("{dims:?} grad up"), &gf[1], &gr[1])?;
    }
    Ok(())
}

#[test]
fn fused_linear_matches_the_elementary_twin() -> Result<()> {
    let mut rng = Rng::new(SEED + 6);
    // one row; 3-d input; widths that fill no SIMD register; more rows than columns
    for (dims, m) in [(vec![1, 1], 1), (vec![2, 7, 5], 3), (vec![3, 33, 40], 17), (vec![300, 64], 96)] {
        let k = *dims.last().unwrap();
        let x = Var::from_tensor(&randn(&mut rng, &dims, 1.0))?;
        let w = Var::from_tensor(&randn(&mut rng, &[m, k], 0.5))?;
        let seed = rng.next_u64();
        let (yf, gf) = run(|| linear_fused(&x, &w), &[&x, &w], &mut Rng::new(seed))?;
        let (yr, gr) = run(|| linear(&x, &w), &[&x, &w], &mut Rng::new(seed))?;
        assert_close(&format!("{dims:?} × {m} output"), &yf, &yr)?;
        assert_close(&format!("{dims:?} × {m} grad x"), &gf[0], &gr[0])?;
        assert_close(&format!("{dims:?} × {m} grad w"), &gf[1], &gr[1])?;
    }
    Ok(())
}

#[test]
fn fused_ops_reject_mismatched_shapes_by_name() {
    let mut rng = Rng::new(SEED + 2);
    let x = randn(&mut rng, &[2, 3, 8], 1.0);
    let err = rms_norm_fused(&x, &randn(&mut rng, &[7], 1.0), 1e-5).unwrap_err().to_string();
    assert!(err.contains("rms-norm") && err.contains("[7]"), "{err}");
    let err = conv_silu_fused(&x, &randn(&mut rng, &[5, 4], 1.0), &randn(&mut rng, &[8], 1.0)).unwrap_err().to_string();
    assert!(err.contains("conv-silu") && err.contains("[5, 4]"), "{err}");
    let (x2, w2) = (randn(&mut rng, &[4, 8], 1.0), randn(&mut rng, &[10, 8], 1.0));
    let err = linear_cross_entropy(&x2, &w2, &Tensor::new(&[1u32, 2, 10, 3], &candle_core::Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("linear-cross-entropy") && err.contains("target 10"), "{err}");
    let err = linear_cross_entropy(
        &x2,
        &randn(&mut rng, &[10, 7], 1.0),
        &Tensor::new(&[1u32, 2, 3, 4], &candle_core::Device::Cpu).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("linear-cross-entropy") && err.contains("[10, 7]"), "{err}");
    let (q, kv) = (randn(&mut rng, &[1, 5, 8], 1.0), randn(&mut rng, &[1, 5, 4], 1.0));
    let (cos, sin) = (randn(&mut rng, &[5, 2], 1.0), randn(&mut rng, &[5, 2], 1.0));
    let err = causal_attention(&q, &kv, &kv, &cos, &sin, 3, 1).unwrap_err().to_string();
    assert!(err.contains("causal-attention") && err.contains("3 heads"), "{err}");
    let err = causal_attention(&q, &kv, &kv, &cos.narrow(0, 0, 4).unwrap(), &sin, 2, 1).unwrap_err().to_string();
    assert!(err.contains("causal-attention") && err.contains("[4, 2]"), "{err}");
    let err = swiglu(&randn(&mut rng, &[2, 3], 1.0), &randn(&mut rng, &[3, 2], 1.0)).unwrap_err().to_string();
    assert!(err.contains("swiglu") && err.contains("[3, 2]"), "{err}");
}
