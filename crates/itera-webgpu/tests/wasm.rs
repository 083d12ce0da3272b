//! The same golden logits in headless Chromium, through the browser's WebGPU (SwiftShader where
//! there is no GPU; scripts/test.sh starts Chromium with `--enable-unsafe-webgpu`, webdriver.json).
#![cfg(target_arch = "wasm32")]

mod common;

use candle_core::{Device, Tensor};
use common::{configs, model, rel_err, tokens, TOLERANCE, VOCAB};
use itera_webgpu::{Gpu, GpuModel};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Prefill 20 tokens (every row), then 3 decode steps, for every config, against the CPU model
/// (candle, in the same wasm module).
#[wasm_bindgen_test]
async fn gpu_logits_match_the_cpu_model_in_the_browser() {
    let gpu = Gpu::new().await.unwrap_or_else(|e| panic!("no WebGPU adapter in this browser: {e}"));
    web_sys::console::log_1(&format!("adapter: {}", gpu.adapter_name()).into());
    for (name, cfg) in configs() {
        let (cpu, tensors) = model(&cfg, 7).unwrap();
        let toks = tokens(23, 3);
        let mut g = GpuModel::new(&gpu, &cfg, &tensors, 32).unwrap();
        let mut state = cpu.new_state(1).unwrap();
        let want = cpu
            .forward_with_state(&Tensor::from_vec(toks[..20].to_vec(), (1, 20), &Device::Cpu).unwrap(), &mut state)
            .unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let got = g.forward(&toks[..20], true).await.unwrap();
        let err = rel_err(&got, &want);
        web_sys::console::log_1(&format!("{name}: prefill max relative error {err:.2e}").into());
        assert!(err <= TOLERANCE, "{name}: prefill logits differ by {err:.2e}");
        assert_eq!(got.len(), 20 * VOCAB);
        for &t in &toks[20..] {
            let want =
                cpu.forward_with_state(&Tensor::from_vec(vec![t], (1, 1), &Device::Cpu).unwrap(), &mut state).unwrap();
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            let got = g.forward(&[t], false).await.unwrap();
            let err = rel_err(&got, &want);
            assert!(err <= TOLERANCE, "{name}: a decode step differs by {err:.2e}");
        }
    }
}

/// Flash-decoding in the browser (the split and combine kernels through the browser's WGSL
/// compiler): the baselines with 320 tokens of cache, a 250-token prefill, then decode steps
/// over 251-260 keys (one split, then two from 257 keys, the second partial), against the CPU.
#[wasm_bindgen_test]
async fn decode_over_several_key_splits_matches_the_cpu_model_in_the_browser() {
    let gpu = Gpu::new().await.unwrap_or_else(|e| panic!("no WebGPU adapter in this browser: {e}"));
    for (name, cfg) in configs().into_iter().filter(|(name, _)| name.starts_with("baseline")) {
        let (cpu, tensors) = model(&cfg, 19).unwrap();
        let toks = tokens(260, 8);
        let mut g = GpuModel::new(&gpu, &cfg, &tensors, 320).unwrap();
        assert_eq!(g.dispatches(1, false).unwrap(), 2 + 7 * cfg.num_layers(), "{name}: the split path");
        let mut state = cpu.new_state(1).unwrap();
        let want = cpu
            .forward_with_state(&Tensor::from_vec(toks[..250].to_vec(), (1, 250), &Device::Cpu).unwrap(), &mut state)
            .unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let got = g.forward(&toks[..250], false).await.unwrap();
        let err = rel_err(&got, &want[249 * VOCAB..]);
        assert!(err <= TOLERANCE, "{name}: prefill's last logits differ by {err:.2e}");
        let mut worst = 0f32;
        for &t in &toks[250..] {
            let keys = g.len() + 1;
            let want =
                cpu.forward_with_state(&Tensor::from_vec(vec![t], (1, 1), &Device::Cpu).unwrap(), &mut state).unwrap();
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            let got = g.forward(&[t], false).await.unwrap();
            let err = rel_err(&got, &want);
            assert!(err <= TOLERANCE, "{name}: the decode step over {keys} keys differs by {err:.2e}");
            worst = worst.max(err);
        }
        web_sys::console::log_1(&format!("{name}: decode over 251-260 keys, max relative error {worst:.2e}").into());
    }
}
