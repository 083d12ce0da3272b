//! Sparse MoE dispatch against the dense reference, and the load-balancing loss by hand.

mod common;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use itera_model::config::{IteraLiteConfig, Preset};
use itera_model::init::{init_weights, Rng};
use itera_model::moe::{MoeKernel, SparseMoe};
use itera_model::Config;
use std::collections::HashMap;

fn moe_cfg(d: usize, e: usize, k: usize, h: usize) -> IteraLiteConfig {
    let mut c = IteraLiteConfig::preset(Preset::Tiny, 16);
    c.hidden_size = d;
    c.num_experts = e;
    c.num_experts_per_tok = k;
    c.expert_intermediate_size = h;
    c
}

#[test]
fn sparse_moe_matches_dense_reference_output_aux_and_gradients() -> Result<()> {
    let mut rng = Rng::new(SEED);
    // the last: 4 tokens for 16 experts, so that most get none
    for &(e, k, b, l) in &[(8, 2, 3, 17), (16, 2, 3, 17), (4, 1, 3, 17), (5, 3, 3, 17), (16, 2, 2, 2)] {
        let cfg = moe_cfg(24, e, k, 20);
        let varmap = VarMap::new();
        let moe = SparseMoe::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp("moe"))?;
        // A wider router than the init's makes routing decisive and varied.
        init_weights(&varmap, &Config::IteraLite(cfg.clone()), SEED)?;
        varmap.data().lock().unwrap()["moe.router.weight"].set(&randn(&mut rng, &[e, 24], 1.0))?;
        let x = randn(&mut rng, &[b, l, 24], 1.0);
        let r = randn(&mut rng, &[b, l, 24], 1.0);
        let run = |kernel, fused| -> Result<(Tensor, f32, HashMap<String, Tensor>)> {
            let (y, aux) = moe.forward(&x, kernel, fused)?;
            let grads = ((&y * &r)?.sum_all()? + &aux)?.backward()?;
            let data = varmap.data().lock().unwrap();
            let g = data.iter().filter_map(|(n, v)| grads.get(v).map(|g| (n.clone(), g.clone()))).collect();
            Ok((y, aux.to_scalar::<f32>()?, g))
        };
        let (yd, aux_d, gd) = run(MoeKernel::Dense, false)?;
        // Sparse with fused ops: the grouped experts op (`fused::experts`); without: its twin,
        // an index_select per expert and autograd.
        let (_, _, gt) = run(MoeKernel::Sparse, false)?;
        for fused in [true, false] {
            let (ys, aux_s, gs) = run(MoeKernel::Sparse, fused)?;
            let dy = max_diff(&ys, &yd)?;
            println!("E={e} k={k} fused {fused}: max |sparse - dense| = {dy:e}, aux {aux_s} vs {aux_d}");
            assert!(dy < 1e-5, "outputs differ by {dy}");
            assert!((aux_s - aux_d).abs() < 1e-7);
            // The dense path also reaches experts no token chose (with a zero weight); compare the
            // gradients the sparse path produces, and check the others are zero in the dense one.
            for (name, g) in &gd {
                match gs.get(name) {
                    Some(s) => {
                        let d = max_diff(s, g)?;
                        assert!(d < 1e-5 * (1.0 + max_abs(g)), "grad {name} differs by {d}");
                    }
                    None => assert_eq!(max_abs(g), 0.0, "{name}: dense grad nonzero but sparse has none"),
                }
            }
            assert!(gs.keys().all(|n| gd.contains_key(n)));
            // Both sparse paths leave the same experts without a gradient (the optimizer skips them).
            let mut names: Vec<_> = gs.keys().collect();
            let mut twin: Vec<_> = gt.keys().collect();
            names.sort();
            twin.sort();
            assert_eq!(names, twin, "fused {fused}: parameters with a gradient");
            println!("  {} of {} parameters with a gradient", names.len(), gd.len());
        }
    }
    Ok(())
}

#[test]
fn aux_loss_equals_a_hand_computed_value_on_a_fixed_routing() -> Result<()> {
    // 4 experts, top-2, D = 4 with the router = identity: the logits are the token itself.
    let cfg = {
        let mut c = moe_cfg(4, 4, 2, 8);
        c.router_aux_loss_coef = 0.5;
        c
    };
    let varmap = VarMap::new();
    let moe = SparseMoe::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    varmap.data().lock().unwrap()["router.weight"].set(&Tensor::eye(4, DType::F32, &Device::Cpu)?)?;
    let logits = [[2.0f64, 1.0, 0.0, -1.0], [0.0, 3.0, 2.5, 0.0], [1.0, 0.0, 0.5, 2.0]];
    let x = Tensor::new(&logits, &Device::Cpu)?.to_dtype(DType::F32)?;
    let routing = moe.route(&x, false)?;

    // By hand: softmax rows, their top-2, then α · E · Σ f_i P_i with f over all T·k choices.
    let probs: Vec<Vec<f64>> = logits
        .iter()
        .map(|row| {
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            row.iter().map(|v| v.exp() / z).collect()
        })
        .collect();
    let chosen = [[0u32, 1], [1, 2], [3, 0]]; // largest two logits of each row
    let mut f = [0f64; 4];
    for row in chosen {
        for j in row {
            f[j as usize] += 1.0 / 6.0;
        }
    }
    let p: Vec<f64> = (0..4).map(|j| probs.iter().map(|r| r[j]).sum::<f64>() / 3.0).collect();
    let want = 0.5 * 4.0 * (0..4).map(|j| f[j] * p[j]).sum::<f64>();

    assert_eq!(routing.chosen, chosen.concat());
    let got = routing.aux_loss.to_scalar::<f32>()? as f64;
    println!("aux loss {got} (hand-computed {want})");
    assert!((got - want).abs() < 1e-6, "aux {got} vs {want}");
    // Gates: the chosen probabilities renormalised over the pair.
    let gates = routing.gates.to_vec2::<f32>()?;
    for (t, row) in chosen.iter().enumerate() {
        let (a, b) = (probs[t][row[0] as usize], probs[t][row[1] as usize]);
        assert!((gates[t][0] as f64 - a / (a + b)).abs() < 1e-6);
        assert!((gates[t][1] as f64 - b / (a + b)).abs() < 1e-6);
    }
    Ok(())
}

#[test]
fn uniform_routing_gives_aux_loss_alpha() -> Result<()> {
    // A zero router gives uniform probabilities P_i = 1/E, and then α · E · Σ f_i / E = α
    // whatever the choice f (Σ f_i = 1): the value the Switch loss takes at balance.
    let cfg = moe_cfg(4, 4, 2, 8);
    let varmap = VarMap::new();
    let moe = SparseMoe::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    varmap.data().lock().unwrap()["router.weight"].set(&Tensor::zeros((4, 4), DType::F32, &Device::Cpu)?)?;
    let routing = moe.route(&Tensor::ones((8, 4), DType::F32, &Device::Cpu)?, false)?;
    let got = routing.aux_loss.to_scalar::<f32>()?;
    assert!((got - 0.01).abs() < 1e-7, "aux {got}");
    Ok(())
}

/// The expert-load entropy the trainer logs: 1 for equal loads, 0 for one expert taking all,
/// and while recording, the mean over every routing of the forward pass, from its real counts.
#[test]
fn expert_load_entropy_is_one_when_even_zero_when_collapsed_and_recorded_per_routing() -> Result<()> {
    use itera_model::moe::{expert_load, load_entropy, LoadRecording};
    assert!((load_entropy(&[3.0; 8]) - 1.0).abs() < 1e-12);
    assert_eq!(load_entropy(&[0.0, 0.0, 12.0, 0.0]), 0.0);
    let half = load_entropy(&[1.0, 1.0, 0.0, 0.0]); // ln 2 / ln 4
    assert!((half - 0.5).abs() < 1e-12, "{half}");

    let mut rng = Rng::new(SEED);
    let cfg = moe_cfg(24, 8, 2, 20);
    let varmap = VarMap::new();
    let moe = SparseMoe::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp("moe"))?;
    init_weights(&varmap, &Config::IteraLite(cfg.clone()), SEED)?;
    varmap.data().lock().unwrap()["moe.router.weight"].set(&randn(&mut rng, &[8, 24], 1.0))?;
    let (a, b) = (randn(&mut rng, &[2, 9, 24], 1.0), randn(&mut rng, &[1, 30, 24], 1.0));
    let want: Vec<f64> = [&a, &b]
        .iter()
        .map(|x| {
            let r = moe.route(&x.reshape(((), 24))?, false)?;
            Ok(load_entropy(&expert_load(&r, 8).iter().map(|&c| c as f32).collect::<Vec<_>>()))
        })
        .collect::<Result<_>>()?;
    assert!(want.iter().all(|&h| h > 0.0 && h < 1.0), "{want:?}");
    let rec = LoadRecording::start();
    assert_eq!(rec.normalized_entropy(), None, "nothing routed yet");
    moe.forward(&a, MoeKernel::Sparse, true)?;
    moe.forward(&b, MoeKernel::Sparse, true)?;
    let got = rec.normalized_entropy().unwrap();
    assert!((got - (want[0] + want[1]) / 2.0).abs() < 1e-12, "{got} vs {want:?}");
    drop(rec);
    moe.forward(&a, MoeKernel::Sparse, true)?; // not recording: nothing kept
    assert_eq!(LoadRecording::start().normalized_entropy(), None);
    Ok(())
}
