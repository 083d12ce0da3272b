//! Itera-Lite: a Mamba-1 backbone ("Mamba", arXiv 2312.00752) whose blocks each add a sparse
//! top-k Mixture-of-Experts feed-forward (see `moe.rs`).
//!
//! ```text
//! tokens → embeddings → N × [ x += Mixer(RMSNorm(x));  x += MoE(RMSNorm(x)) ] → RMSNorm → head (tied)
//! ```
//! The mixer follows HF `MambaMixer.slow_forward` (reference port: transformers
//! models/mamba/modeling_mamba.py) and state-spaces/mamba `mamba_simple.py`. With
//! `num_experts = 0` the MoE half disappears and the parameter names are exactly
//! `MambaForCausalLM`'s (`backbone.layers.{i}.mixer.A_log`, ...).
//!
//! Concerning auto-regressive inference: a block's whole memory of the past is its conv window
//! (the last K-1 inner inputs) and its SSM state h (ED × N). Both have a fixed size, so decoding
//! costs the same per token at any context length, unlike a Transformer's growing KV cache.
//!
//! Shape letters: B batch, L tokens, D hidden, ED inner (expand·D), N state, R Δ rank, K conv
//! width, V vocab.

use crate::config::IteraLiteConfig;
use crate::fused::{conv_silu_fused, conv_silu_fused_zero_history};
use crate::moe::SparseMoe;
use crate::ops::{causal_depthwise_conv, linear, norm, project};
use crate::ops::{Kernels, ScanKernel};
use crate::scan::{
    gated_selective_scan, gated_selective_scan_chunked, gated_selective_scan_ref, mixer_scan,
    selective_scan_with_state, MixerInputs, ScanInputs,
};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

// ---------------------------------------------------------------------------------------------
// Mixer

pub(crate) struct MambaMixer {
    pub(crate) in_proj: Tensor,     // (2ED, D): x and z
    pub(crate) conv_weight: Tensor, // (ED, K) — stored as HF's (ED, 1, K)
    pub(crate) conv_bias: Tensor,   // (ED)
    pub(crate) x_proj: Tensor,      // (R + 2N, ED): Δ-rank input, B, C
    pub(crate) dt_proj_w: Tensor,   // (ED, R)
    pub(crate) dt_proj_b: Tensor,   // (ED)
    pub(crate) a_log: Tensor,       // (ED, N), A = -exp(A_log)
    pub(crate) d_skip: Tensor,      // (ED)
    pub(crate) out_proj: Tensor,    // (D, ED)
    ed: usize,
    n: usize,
    r: usize,
    k: usize,
}

/// One block's decoding memory.
pub(crate) struct LayerState {
    pub(crate) conv: Tensor,  // (B, K-1, ED): the last K-1 inner inputs
    pub(crate) ssm: Vec<f32>, // (B, ED, N): h
}

impl MambaMixer {
    fn new(cfg: &IteraLiteConfig, vb: VarBuilder) -> Result<Self> {
        let (d, ed, n, r, k) = (cfg.hidden_size, cfg.d_inner(), cfg.state_size, cfg.time_step_rank, cfg.conv_kernel);
        Ok(Self {
            in_proj: vb.get((2 * ed, d), "in_proj.weight")?,
            conv_weight: vb.get((ed, 1, k), "conv1d.weight")?.reshape((ed, k))?,
            conv_bias: vb.get(ed, "conv1d.bias")?,
            x_proj: vb.get((r + 2 * n, ed), "x_proj.weight")?,
            dt_proj_w: vb.get((ed, r), "dt_proj.weight")?,
            dt_proj_b: vb.get(ed, "dt_proj.bias")?,
            a_log: vb.get((ed, n), "A_log")?,
            d_skip: vb.get(ed, "D")?,
            out_proj: vb.get((d, ed), "out_proj.weight")?,
            ed,
            n,
            r,
            k,
        })
    }

    /// x (B, L, D) -> (B, L, D). With `state`, continues from it and updates it (inference);
    /// without, starts from zeros (training).
    fn forward(&self, x: &Tensor, kernels: Kernels, state: Option<&mut LayerState>) -> Result<Tensor> {
        let (_, l, _) = x.dims3()?;
        let (ed, n, r, k) = (self.ed, self.n, self.r, self.k);
        // projected_states = self.in_proj(hidden_states); hidden_states, gate = chunk(2), as two
        // products with the weight's halves (row blocks: no copy), so that neither half is a
        // narrow of a (B, L, 2ED) activation, whose backward pads it with zeros to full size
        // (`fused_ops`: each by `fused::linear` of the row block, a contiguous view)
        let fused = kernels.fused_ops;
        let xs = project(x, &self.in_proj.narrow(0, 0, ed)?, fused)?; // (B, L, ED)
        let z = project(x, &self.in_proj.narrow(0, ed, ed)?, fused)?; // (B, L, ED)

        // Causal depthwise conv over time: K-1 rows of history (zeros, or the state's window).
        // The fused op reads zero history without a padded copy.
        let xp = match &state {
            Some(s) => Some(Tensor::cat(&[&s.conv, &xs], 1)?), // (B, K-1+L, ED)
            None if kernels.fused_ops => None,
            None => Some(xs.pad_with_zeros(1, k - 1, 0)?), // (B, K-1+L, ED)
        };
        let xc = match (&xp, kernels.fused_ops) {
            (None, _) => conv_silu_fused_zero_history(&xs, &self.conv_weight, &self.conv_bias)?, // (B, L, ED)
            (Some(xp), true) => conv_silu_fused(xp, &self.conv_weight, &self.conv_bias)?,
            (Some(xp), false) => causal_depthwise_conv(xp, &self.conv_weight, &self.conv_bias)?.silu()?,
        };

        // ssm_parameters = self.x_proj(hidden_states); time_step, B, C = split([R, N, N])
        let x_dbl = project(&xc, &self.x_proj, fused)?; // (B, L, R + 2N)
        let a = self.a_log.exp()?.neg()?; // (ED, N)

        // conv taps + bias + SiLU; dt bias + softplus; scan (Δ·x, then per state exp(Δ·A),
        // h = e·h + (Δx)·B, y += C·h); D skip; SiLU(z) gate
        let elems = xc.elem_count() as f64;
        crate::flops::add(elems * ((2 * k + 1 + 4) as f64 + 4.0 + 1.0 + 7.0 * n as f64 + 2.0 + 5.0));
        if state.is_none() && kernels.scan == ScanKernel::Fused && xc.device().is_cpu() {
            // Training on the CPU: Δ's projection and the scan in one op, nothing packed.
            crate::flops::add(2.0 * elems * r as f64); // dt_proj
            let (w, d, dt_bias) = (&self.dt_proj_w, &self.d_skip, &self.dt_proj_b);
            let y = mixer_scan(MixerInputs { u: &xc, z: &z, x_dbl: &x_dbl, dt_proj_w: w, a: &a, d, dt_bias })?;
            return project(&y, &self.out_proj, fused); // (B, L, D)
        }
        let dt = x_dbl.narrow(2, 0, r)?; // (B, L, R)
        let b = x_dbl.narrow(2, r, n)?; // (B, L, N)
        let c = x_dbl.narrow(2, r + n, n)?; // (B, L, N)
        let dt = linear(&dt, &self.dt_proj_w)?; // (B, L, ED), before bias and softplus
                                                // y = (scan(x, softplus(dt + dt_bias), A, B, C) + D x) * silu(z), fused in one kernel
        let inputs =
            ScanInputs { u: &xc, dt: &dt, a: &a, b: &b, c: &c, d: &self.d_skip, dt_bias: &self.dt_proj_b, z: &z };
        let y = match state {
            Some(s) => {
                let xp = xp.as_ref().expect("the state's window was put in front");
                s.conv = xp.narrow(1, l, k - 1)?.contiguous()?; // keep the last K-1 inputs
                selective_scan_with_state(inputs, &mut s.ssm)?
            }
            None => match kernels.scan {
                ScanKernel::Fused => gated_selective_scan(inputs)?,
                ScanKernel::Reference => gated_selective_scan_ref(inputs)?,
                ScanKernel::Chunked => gated_selective_scan_chunked(inputs)?,
            },
        }; // (B, L, ED)
        project(&y, &self.out_proj, fused) // (B, L, D)
    }
}

// ---------------------------------------------------------------------------------------------
// Block and model

pub(crate) struct Block {
    pub(crate) norm: Tensor, // (D)
    pub(crate) mixer: MambaMixer,
    pub(crate) moe: Option<(Tensor, SparseMoe)>, // (moe_norm (D), experts)
}

/// The hybrid model. Build it with [`IteraLite::new`] from any `VarBuilder`.
pub struct IteraLite {
    pub(crate) embeddings: Tensor, // (V, D), also the output head
    pub(crate) layers: Vec<Block>,
    pub(crate) norm_f: Tensor, // (D)
    cfg: IteraLiteConfig,
    kernels: Kernels,
}

/// Decoding state of every block: conv windows and SSM states, fixed size at any context.
pub struct SsmState {
    pub(crate) layers: Vec<LayerState>,
    pub(crate) seen: usize,
}

impl SsmState {
    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        self.seen
    }
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Bytes of conv windows and SSM states: the same after 1 token or 100,000.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.conv.elem_count() * l.conv.dtype().size_in_bytes() + l.ssm.len() * std::mem::size_of::<f32>())
            .sum()
    }
}

impl IteraLite {
    pub fn new(cfg: &IteraLiteConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d = cfg.hidden_size;
        let vbb = vb.pp("backbone");
        let embeddings = vbb.get((cfg.vocab_size, d), "embeddings.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vbb.pp(format!("layers.{i}"));
                let moe = if cfg.moe() {
                    Some((vb.get(d, "moe_norm.weight")?, SparseMoe::new(cfg, vb.pp("moe"))?))
                } else {
                    None
                };
                Ok(Block { norm: vb.get(d, "norm.weight")?, mixer: MambaMixer::new(cfg, vb.pp("mixer"))?, moe })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm_f = vbb.get(d, "norm_f.weight")?;
        Ok(Self { embeddings, layers, norm_f, cfg: cfg.clone(), kernels: Kernels::default() })
    }

    pub fn config(&self) -> &IteraLiteConfig {
        &self.cfg
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Switch between the fast paths and their reference twins.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Full-sequence forward (training, scoring).
    ///
    /// # Shapes
    /// tokens (B, L) u32 -> (logits (B, L, V), MoE load-balancing loss () averaged over blocks;
    /// zero without MoE)
    pub fn forward(&self, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        self.run(tokens, None)
    }

    /// A fresh decoding state for `batch` sequences: zero conv windows and SSM states.
    pub fn new_state(&self, batch: usize) -> Result<SsmState> {
        let (ed, n, k) = (self.cfg.d_inner(), self.cfg.state_size, self.cfg.conv_kernel);
        let dev = self.embeddings.device();
        let layers = (0..self.layers.len())
            .map(|_| {
                Ok(LayerState {
                    conv: Tensor::zeros((batch, k - 1, ed), self.embeddings.dtype(), dev)?,
                    ssm: vec![0f32; batch * ed * n],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SsmState { layers, seen: 0 })
    }

    /// Forward of the next L tokens (1 to decode, more to prefill) from `state`, which is updated.
    ///
    /// # Shapes
    /// tokens (B, L) u32 -> logits (B, L, V)
    pub fn forward_with_state(&self, tokens: &Tensor, state: &mut SsmState) -> Result<Tensor> {
        let (b, l) = tokens.dims2()?;
        let sb = state.layers.first().map(|s| s.conv.dim(0)).transpose()?.unwrap_or(b);
        if sb != b {
            candle_core::bail!("itera-lite: state was made for batch {sb}, tokens have batch {b}");
        }
        let (logits, _) = self.run(tokens, Some(state))?;
        state.seen += l;
        Ok(logits)
    }

    /// The final hidden states (after the last norm), before the head, and the MoE loss.
    ///
    /// # Shapes
    /// tokens (B, L) u32 -> ((B, L, D), ())
    pub fn hidden(&self, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        self.trunk(tokens, None)
    }

    /// The output head (tied to the token embedding).  (V, D)
    pub fn head(&self) -> &Tensor {
        &self.embeddings
    }

    fn run(&self, tokens: &Tensor, state: Option<&mut SsmState>) -> Result<(Tensor, Tensor)> {
        let (x, aux) = self.trunk(tokens, state)?;
        Ok((linear(&x, &self.embeddings)?, aux)) // (B, L, V), head tied to the embedding
    }

    fn trunk(&self, tokens: &Tensor, mut state: Option<&mut SsmState>) -> Result<(Tensor, Tensor)> {
        tokens.dims2()?; // (B, L)
        let eps = self.cfg.layer_norm_epsilon;
        let mut x = crate::ops::embed(&self.embeddings, tokens, self.kernels.device_ops)?; // (B, L, D)
        let mut aux = Tensor::zeros((), DType::F32, x.device())?;
        for (i, block) in self.layers.iter().enumerate() {
            let layer_state = state.as_deref_mut().map(|s| &mut s.layers[i]);
            let (fused, fused_norm) = (self.kernels.fused_ops, self.kernels.fused_norm());
            x = (&x + block.mixer.forward(&norm(&x, &block.norm, eps, fused_norm)?, self.kernels, layer_state)?)?;
            crate::flops::add(x.elem_count() as f64); // residual add
            if let Some((moe_norm, moe)) = &block.moe {
                let (y, layer_aux) = moe.forward(&norm(&x, moe_norm, eps, fused_norm)?, self.kernels.moe, fused)?;
                x = (x + y)?;
                crate::flops::add(x.elem_count() as f64); // residual add
                aux = (aux + layer_aux)?;
            }
        }
        let aux = (aux / self.layers.len() as f64)?;
        Ok((norm(&x, &self.norm_f, eps, self.kernels.fused_norm())?, aux))
    }
}
