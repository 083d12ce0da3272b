//! The batch-1 decoder (`decode::Decoder`, plain slices) against its reference twin, the model's
//! own `forward_with_state` one token at a time: the same logits at every step, from an empty
//! sequence and after a candle prefill, for the baseline (MHA and GQA) and Itera-Lite (MoE on and
//! off); and its errors.

mod common;
use candle_core::{Device, Result, Tensor};
use common::*;
use itera_model::decode::{gemv, Decoder};
use itera_model::init::Rng;
use itera_model::{Config, Model, ModelKind, Preset};

const VOCAB: usize = 97;

fn configs() -> Vec<(&'static str, Config)> {
    let tiny = |k| Config::preset(k, Preset::Tiny, VOCAB);
    let mut gqa = tiny(ModelKind::Baseline);
    if let Config::Baseline(c) = &mut gqa {
        c.num_attention_heads = 4; // head dim 8, two query heads per kv head
        c.num_key_value_heads = 2;
    }
    let mut mamba = tiny(ModelKind::IteraLite);
    if let Config::IteraLite(c) = &mut mamba {
        c.num_experts = 0;
    }
    let mut top3 = tiny(ModelKind::IteraLite);
    if let Config::IteraLite(c) = &mut top3 {
        c.num_experts_per_tok = 3;
    }
    vec![
        ("baseline", tiny(ModelKind::Baseline)),
        ("baseline, GQA", gqa),
        ("itera-lite", tiny(ModelKind::IteraLite)),
        ("itera-lite, top-3", top3),
        ("mamba (MoE off)", mamba),
    ]
}

fn model(cfg: &Config, rng: &mut Rng) -> Result<Model> {
    let (varmap, model) = Model::init(cfg, SEED, &Device::Cpu)?;
    shake(&varmap, rng)?;
    Ok(model)
}

/// max |a - b| / (1 + max |b|)
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = 1.0 + b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn twin_step(model: &Model, state: &mut itera_model::State, token: u32) -> Result<Vec<f32>> {
    let x = Tensor::from_slice(&[token], (1, 1), &Device::Cpu)?;
    model.forward_with_state(&x, state)?.flatten_all()?.to_vec1::<f32>()
}

#[test]
fn decoder_steps_equal_the_models_own_decode_from_an_empty_sequence() -> Result<()> {
    let mut rng = Rng::new(SEED);
    for (name, cfg) in configs() {
        let model = model(&cfg, &mut rng)?;
        let mut dec = Decoder::new(&model)?;
        let mut state = model.new_state(1)?;
        // 70 tokens: past the KV cache's first capacity (64), so that it grows on the way.
        let mut worst = 0f32;
        for t in 0..70 {
            let token = rng.below(VOCAB) as u32;
            let want = twin_step(&model, &mut state, token)?;
            let got = dec.step(token)?;
            let d = rel_diff(got, &want);
            assert!(d < 5e-5, "{name}, token {t}: decoder differs from forward_with_state by {d}");
            worst = worst.max(d);
        }
        assert_eq!(dec.len(), 70);
        assert_eq!(dec.state_bytes(), state.bytes(), "{name}: state bytes");
        println!("{name}: 70 steps, worst relative difference {worst:e}");
    }
    Ok(())
}

#[test]
fn decoder_continues_a_candle_prefill_and_restarts_on_reset() -> Result<()> {
    let mut rng = Rng::new(SEED + 1);
    for (name, cfg) in configs() {
        let model = model(&cfg, &mut rng)?;
        let mut dec = Decoder::new(&model)?;
        let prompt = tokens(&mut rng, 1, 23, VOCAB);
        let mut state = model.new_state(1)?;
        model.forward_with_state(&prompt, &mut state)?;
        dec.load(&state)?;
        assert_eq!(dec.len(), 23, "{name}");
        for t in 0..12 {
            let token = rng.below(VOCAB) as u32;
            let want = twin_step(&model, &mut state, token)?;
            let d = rel_diff(dec.step(token)?, &want);
            assert!(d < 5e-5, "{name}, step {t} after the prefill: differs by {d}");
        }
        // reset: an empty sequence again, equal to a fresh state's first step.
        dec.reset();
        let mut fresh = model.new_state(1)?;
        let want = twin_step(&model, &mut fresh, 5)?;
        let d = rel_diff(dec.step(5)?, &want);
        assert!(d < 5e-5, "{name}: after reset, differs by {d}");
        assert_eq!(dec.len(), 1);
    }
    Ok(())
}

#[test]
fn decoder_errors_are_named() -> Result<()> {
    let mut rng = Rng::new(SEED + 2);
    let base = model(&Config::preset(ModelKind::Baseline, Preset::Tiny, VOCAB), &mut rng)?;
    let lite = model(&Config::preset(ModelKind::IteraLite, Preset::Tiny, VOCAB), &mut rng)?;
    let mut dec = Decoder::new(&base)?;
    let e = dec.step(VOCAB as u32).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = dec.load(&lite.new_state(1)?).unwrap_err().to_string();
    assert!(e.contains("other architecture"), "{e}");
    let mut batch2 = base.new_state(2)?;
    base.forward_with_state(&tokens(&mut rng, 2, 3, VOCAB), &mut batch2)?;
    let e = dec.load(&batch2).unwrap_err().to_string();
    assert!(e.contains("batch of 2"), "{e}");
    // Past the RoPE table: a named error, as the model's own path gives.
    let mut short = Config::preset(ModelKind::Baseline, Preset::Tiny, VOCAB);
    if let Config::Baseline(c) = &mut short {
        c.max_position_embeddings = 8;
    }
    let mut dec = Decoder::new(&model(&short, &mut rng)?)?;
    for _ in 0..8 {
        dec.step(1)?;
    }
    let e = dec.step(1).unwrap_err().to_string();
    assert!(e.contains("max_position_embeddings"), "{e}");
    Ok(())
}

#[test]
fn gemv_matches_the_plain_product_for_every_tail_length() {
    for cols in [0, 1, 15, 16, 17, 64, 100] {
        let rows = 7;
        let w: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 - 6.0).collect();
        let x: Vec<f32> = (0..cols).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut y = vec![1f32; rows];
        gemv(&w, &x, &mut y);
        for r in 0..rows {
            let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[c]).sum();
            assert!((y[r] - want).abs() <= 1e-4 * (1.0 + want.abs()), "cols {cols} row {r}: {} vs {want}", y[r]);
        }
    }
}
