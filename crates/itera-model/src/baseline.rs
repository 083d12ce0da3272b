//! The Transformer baseline: a Llama-style decoder (token embedding → N × [RMSNorm → causal
//! multi-head attention with RoPE → residual, RMSNorm → SwiGLU MLP → residual] → RMSNorm →
//! head tied to the embedding). No biases. Parameter names are Hugging Face `LlamaForCausalLM`'s.
//!
//! RoPE uses the rotate-half convention of HF Llama (`modeling_llama.py: rotate_half`), so the
//! q/k projection weights map 1:1 onto HF keys without the permutation Meta checkpoints need.
//!
//! Shape letters: B batch, L new tokens, S keys (cache + new), D hidden, H heads, Hkv kv heads,
//! Dh head dim, I MLP width, V vocab.

use crate::config::BaselineConfig;
use crate::ops::{linear, norm, project, softmax_last, Kernels};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::VarBuilder;

// ---------------------------------------------------------------------------------------------
// Rotary position embedding

pub(crate) struct Rope {
    pub(crate) cos: Tensor, // (max_pos, Dh/2)
    pub(crate) sin: Tensor, // (max_pos, Dh/2)
}

impl Rope {
    fn new(cfg: &BaselineConfig, dev: &Device) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        // inv_freq = 1 / theta^(2i / Dh)   (HF: _compute_default_rope_parameters)
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), dev)?;
        let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = pos.broadcast_mul(&inv_freq)?; // (max_pos, Dh/2)
        Ok(Self { cos: freqs.cos()?, sin: freqs.sin()? })
    }

    /// cos and sin (L, Dh/2) at positions offset..offset+L.
    fn at(&self, offset: usize, l: usize) -> Result<(Tensor, Tensor)> {
        let max = self.cos.dim(0)?;
        if offset + l > max {
            candle_core::bail!("baseline: position {} is past max_position_embeddings {max}", offset + l);
        }
        Ok((self.cos.narrow(0, offset, l)?, self.sin.narrow(0, offset, l)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks

pub(crate) struct Attention {
    pub(crate) q_proj: Tensor, // (H*Dh, D)
    pub(crate) k_proj: Tensor, // (Hkv*Dh, D)
    pub(crate) v_proj: Tensor, // (Hkv*Dh, D)
    pub(crate) o_proj: Tensor, // (D, H*Dh)
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &BaselineConfig, vb: VarBuilder) -> Result<Self> {
        let (d, kv) = (cfg.hidden_size, cfg.kv_dim());
        Ok(Self {
            q_proj: vb.get((d, d), "q_proj.weight")?,
            k_proj: vb.get((kv, d), "k_proj.weight")?,
            v_proj: vb.get((kv, d), "v_proj.weight")?,
            o_proj: vb.get((d, d), "o_proj.weight")?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// x (B, L, D) at positions offset..offset+L; with a cache, keys/values of earlier positions
    /// come from it and this call's are appended. Without one, on the CPU's fused kernels, the
    /// attention is the fused op (`fused::causal_attention`), else its twin [`attention`] (with
    /// the device's fused rotary embedding and causal softmax under `device_ops`).
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let fused = kernels.fused_ops;
        let (b, l, _) = x.dims3()?;
        let (h, hkv, dh) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (q, k, v) =
            (project(x, &self.q_proj, fused)?, project(x, &self.k_proj, fused)?, project(x, &self.v_proj, fused)?);
        let s = offset + l;
        // rope on q and k (3 per element); q·k and att·v (2 per multiply-add); scale, mask, softmax (5 per score)
        let n_scores = (b * h * l * s) as f64;
        crate::flops::add(3.0 * (b * (h + hkv) * l * dh) as f64 + 2.0 * 2.0 * n_scores * dh as f64 + 5.0 * n_scores);
        let (cos, sin) = rope.at(offset, l)?;
        let y = match cache {
            None if fused => crate::fused::causal_attention(&q, &k, &v, &cos, &sin, h, hkv)?,
            cache => attention(&q, &k, &v, &cos, &sin, h, hkv, cache, kernels.device_ops)?,
        };
        project(&y, &self.o_proj, fused)
    }
}

/// Causal self-attention with RoPE from elementary candle ops: q (B, L, H·Dh), k and v
/// (B, L, Hkv·Dh) projected for L new tokens, cos and sin (L, Dh/2) at their positions; with a
/// cache, the keys and values of earlier positions come from it and these are appended.
/// Returns (B, L, H·Dh). The reference twin of `fused::causal_attention`, and the decoding path.
/// `device_ops`: the rotary embedding with the move of the heads (`fused::rope_heads`) and the scale, the causal mask and the
/// softmax (`fused::causal_softmax`) as one op each (an NVIDIA GPU's path) instead of elementary
/// ones.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    n_heads: usize,
    n_kv_heads: usize,
    cache: Option<&mut KvCache>,
    device_ops: bool,
) -> Result<Tensor> {
    let (b, l, qd) = q.dims3()?;
    let (h, hkv) = (n_heads, n_kv_heads);
    let dh = qd / h;
    let heads = |x: &Tensor, n: usize| -> Result<Tensor> {
        x.reshape((b, l, n, dh))?.transpose(1, 2)?.contiguous() // (B, n, L, Dh)
    };
    // x * cos + rotate_half(x) * sin: with the device ops, one op that also moves the heads (no
    // transposed copy), else elementary ops (rope_slow has a backward)
    let (q, k) = if device_ops {
        (crate::fused::rope_heads(q, cos, sin, h)?, crate::fused::rope_heads(k, cos, sin, hkv)?)
    } else {
        let rope = |x: &Tensor| candle_nn::rotary_emb::rope_slow(x, cos, sin);
        (rope(&heads(q, h)?)?, rope(&heads(k, hkv)?)?.contiguous()?)
    }; // (B, H, L, Dh), (B, Hkv, L, Dh)
    let v = if device_ops { crate::fused::heads(v, hkv)? } else { heads(v, hkv)? }; // (B, Hkv, L, Dh)
    let (k, v) = match cache {
        Some(cache) => {
            let (k, v) = cache.append(&k, &v)?; // (B, Hkv, S, Dh)
            (k.contiguous()?, v.contiguous()?)
        }
        None => (k, v),
    };
    let (k, v) = (repeat_kv(k, h / hkv)?, repeat_kv(v, h / hkv)?); // (B, H, S, Dh)
    let s = k.dim(2)?;
    let scale = 1.0 / (dh as f64).sqrt();
    let att = if device_ops {
        crate::fused::causal_softmax(&crate::ops::matmul_t(&q, &k)?, scale)? // (B, H, L, S)
    } else {
        let scores = (crate::ops::matmul_t(&q, &k)? * scale)?; // (B, H, L, S)
        let scores = if l > 1 { scores.broadcast_add(&causal_mask(l, s, q.device())?)? } else { scores };
        softmax_last(&scores)?
    };
    let y = crate::ops::matmul(&att, &v)?; // (B, H, L, Dh)
    if device_ops {
        crate::fused::merge_heads(&y) // (B, L, H·Dh)
    } else {
        y.transpose(1, 2)?.reshape((b, l, qd))
    }
}

/// (L, S) additive mask: query i (absolute position S-L+i) sees keys 0..=S-L+i.
fn causal_mask(l: usize, s: usize, dev: &Device) -> Result<Tensor> {
    let past = s - l;
    let mask: Vec<f32> =
        (0..l).flat_map(|i| (0..s).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (l, s), dev)
}

/// (B, Hkv, S, Dh) -> (B, Hkv*rep, S, Dh), each kv head shared by `rep` query heads (GQA).
fn repeat_kv(x: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, hkv, s, dh) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, hkv, rep, s, dh))?.reshape((b, hkv * rep, s, dh))
}

pub(crate) struct SwiGlu {
    pub(crate) gate_proj: Tensor, // (I, D)
    pub(crate) up_proj: Tensor,   // (I, D)
    pub(crate) down_proj: Tensor, // (D, I)
}

impl SwiGlu {
    pub(crate) fn new(d: usize, i: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gate_proj: vb.get((i, d), "gate_proj.weight")?,
            up_proj: vb.get((i, d), "up_proj.weight")?,
            down_proj: vb.get((d, i), "down_proj.weight")?,
        })
    }

    /// SwiGLU: down(silu(gate x) * up x), the projections by the CPU's fused op under `fused`,
    /// the gating by the fused op (`fused::swiglu`: CPU and CUDA kernels) under `fused_gating`,
    /// else elementary ops.  x (.., D) -> (.., D)
    pub(crate) fn forward(&self, x: &Tensor, fused: bool, fused_gating: bool) -> Result<Tensor> {
        let (g, u) = (project(x, &self.gate_proj, fused)?, project(x, &self.up_proj, fused)?);
        let h = if fused_gating { crate::fused::swiglu(&g, &u)? } else { (g.silu()? * u)? }; // (.., I)
        crate::flops::add(5.0 * h.elem_count() as f64); // silu · mul
        project(&h, &self.down_proj, fused)
    }
}

pub(crate) struct DecoderLayer {
    pub(crate) input_layernorm: Tensor, // (D)
    pub(crate) self_attn: Attention,
    pub(crate) post_attention_layernorm: Tensor, // (D)
    pub(crate) mlp: SwiGlu,
}

// ---------------------------------------------------------------------------------------------
// Model

/// The Llama-style baseline. Build it with [`Baseline::new`] from any `VarBuilder` (a fresh
/// `VarMap` for training, safetensors bytes for inference).
pub struct Baseline {
    pub(crate) embed_tokens: Tensor, // (V, D), also the output head
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: Tensor, // (D)
    pub(crate) rope: Rope,
    cfg: BaselineConfig,
    kernels: Kernels,
}

/// Decoding state: one KV cache per layer. It grows by 2 · Hkv · Dh values per layer and token.
pub struct KvState {
    pub(crate) caches: Vec<KvCache>,
}

impl KvState {
    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        self.caches.first().map(|c| c.current_seq_len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys and values held (the tokens seen, not the spare capacity).
    pub fn bytes(&self) -> usize {
        let held = |t: Option<Tensor>| t.map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes());
        self.caches.iter().map(|c| held(c.k().ok().flatten()) + held(c.v().ok().flatten())).sum()
    }
}

impl Baseline {
    pub fn new(cfg: &BaselineConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (d, v) = (cfg.hidden_size, cfg.vocab_size);
        let vbm = vb.pp("model");
        let embed_tokens = vbm.get((v, d), "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vbm.pp(format!("layers.{i}"));
                Ok(DecoderLayer {
                    input_layernorm: vb.get(d, "input_layernorm.weight")?,
                    self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
                    post_attention_layernorm: vb.get(d, "post_attention_layernorm.weight")?,
                    mlp: SwiGlu::new(d, cfg.intermediate_size, vb.pp("mlp"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = vbm.get(d, "norm.weight")?;
        let rope = Rope::new(cfg, vb.device())?;
        Ok(Self { embed_tokens, layers, norm, rope, cfg: cfg.clone(), kernels: Kernels::default() })
    }

    pub fn config(&self) -> &BaselineConfig {
        &self.cfg
    }

    /// Fused RMSNorm or its elementary twin (the scan and MoE fields do not apply here).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Full-sequence forward (training, scoring).
    ///
    /// # Shapes
    /// tokens (B, L) u32 -> logits (B, L, V)
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.run(tokens, 0, None)
    }

    /// A fresh, empty decoding state for `batch` sequences.
    pub fn new_state(&self, batch: usize) -> KvState {
        let _ = batch; // caches take their batch size from the first tokens appended
        KvState { caches: (0..self.layers.len()).map(|_| KvCache::new(2, 256)).collect() }
    }

    /// Forward of the next L tokens (L = 1 to decode, more to prefill), attending to everything
    /// the state has seen; appends their keys and values to it.
    ///
    /// # Shapes
    /// tokens (B, L) u32 -> logits (B, L, V)
    pub fn forward_with_state(&self, tokens: &Tensor, state: &mut KvState) -> Result<Tensor> {
        let offset = state.len();
        self.run(tokens, offset, Some(&mut state.caches))
    }

    /// The final hidden states (after the last norm), before the head.
    ///
    /// # Shapes
    /// tokens (B, L) u32 -> (B, L, D)
    pub fn hidden(&self, tokens: &Tensor) -> Result<Tensor> {
        self.trunk(tokens, 0, None)
    }

    /// The output head (tied to the token embedding).  (V, D)
    pub fn head(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// Fused kernels or reference twins.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    fn run(&self, tokens: &Tensor, offset: usize, caches: Option<&mut Vec<KvCache>>) -> Result<Tensor> {
        linear(&self.trunk(tokens, offset, caches)?, &self.embed_tokens) // (B, L, V), head tied to the embedding
    }

    fn trunk(&self, tokens: &Tensor, offset: usize, mut caches: Option<&mut Vec<KvCache>>) -> Result<Tensor> {
        tokens.dims2()?; // (B, L)
        let (eps, k) = (self.cfg.rms_norm_eps, self.kernels);
        let mut x = crate::ops::embed(&self.embed_tokens, tokens, k.device_ops)?; // (B, L, D)
        for (i, layer) in self.layers.iter().enumerate() {
            let cache = caches.as_deref_mut().map(|c| &mut c[i]);
            let h = norm(&x, &layer.input_layernorm, eps, k.fused_norm())?;
            x = (x + layer.self_attn.forward(&h, &self.rope, offset, cache, k)?)?;
            crate::flops::add(2.0 * x.elem_count() as f64); // the two residual adds
            let h = norm(&x, &layer.post_attention_layernorm, eps, k.fused_norm())?;
            x = (&x + layer.mlp.forward(&h, k.fused_ops, k.fused_ops || k.device_ops)?)?;
        }
        norm(&x, &self.norm, eps, k.fused_norm())
    }
}
