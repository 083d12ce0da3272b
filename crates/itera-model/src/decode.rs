//! Batch-1 decoding without candle: one token in, the next token's logits out, on plain `f32`
//! slices, with every buffer allocated ahead. A decode step is a chain of matrix-vector products
//! over all the weights (plus, for the baseline, attention over the KV cache); through candle each
//! of its ~40 ops allocates its output and dispatches on a layout, which at batch 1 costs more than
//! the arithmetic. Here the step runs [`gemv`] (the same kernel the page's GEMV peak measures) and
//! a few loops, and allocates nothing (a test counts it) unless the KV cache has to grow.
//!
//! The reference twin is [`Model::forward_with_state`] with L = 1, which the tests compare with
//! this, token by token, for both architectures (GQA and MoE included). Prefill stays with
//! candle (batched matmuls beat GEMVs there): [`Decoder::load`] continues from a candle
//! [`State`].
//!
//! Shape letters as in the models: D hidden, H heads, Hkv kv heads, Dh head dim, I MLP width,
//! ED inner, N state, R Δ rank, K conv width, E experts, F expert width, V vocab.

use crate::baseline::{Baseline, SwiGlu};
use crate::itera_lite::IteraLite;
use crate::scan::{dot, fast_exp, fast_sigmoid, fast_softplus};
use crate::{Model, State};
use candle_core::{DType, Result, Tensor};

/// y = W x for a row-major `w` of shape (y.len(), x.len()). Sixteen independent accumulators per
/// row, so that the compiler keeps them in SIMD registers (wasm `simd128`, or the host's).
pub fn gemv(w: &[f32], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    assert_eq!(w.len(), y.len() * k, "gemv: W is not (y, x)");
    if k == 0 {
        y.fill(0.0);
        return;
    }
    for (row, out) in w.chunks_exact(k).zip(y.iter_mut()) {
        let mut acc = [0f32; 16];
        let (rw, tw) = row.split_at(k - k % 16);
        let (rx, tx) = x.split_at(k - k % 16);
        for (cw, cx) in rw.chunks_exact(16).zip(rx.chunks_exact(16)) {
            for i in 0..16 {
                acc[i] += cw[i] * cx[i];
            }
        }
        let tail: f32 = tw.iter().zip(tx).map(|(a, b)| a * b).sum();
        *out = acc.iter().sum::<f32>() + tail;
    }
}

/// out = x / sqrt(mean(x²) + eps) ⊙ w (as `fused::rms_norm_fused`).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let inv = crate::fused::inv_rms(x, eps);
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
        *o = x * inv * w;
    }
}

/// A reduction of `x` by `f` in eight independent lanes (so that it vectorises), then across them.
#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(init, |a, &b| f(a, b));
    for c in chunks {
        for i in 0..8 {
            acc[i] = f(acc[i], c[i]);
        }
    }
    acc.iter().fold(tail, |a, &b| f(a, b))
}

fn silu(x: f32) -> f32 {
    x * fast_sigmoid(x)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// A SwiGLU feed-forward: down(silu(gate x) ⊙ up x).
struct Ffn {
    gate: Vec<f32>, // (I, D)
    up: Vec<f32>,   // (I, D)
    down: Vec<f32>, // (D, I)
    width: usize,
}

impl Ffn {
    fn new(m: &SwiGlu) -> Result<Self> {
        Ok(Self {
            gate: host(&m.gate_proj)?,
            up: host(&m.up_proj)?,
            down: host(&m.down_proj)?,
            width: m.gate_proj.dim(0)?,
        })
    }

    /// out = FFN(x); g and u are scratch of at least I values.
    fn forward(&self, x: &[f32], g: &mut [f32], u: &mut [f32], out: &mut [f32]) {
        let (g, u) = (&mut g[..self.width], &mut u[..self.width]);
        gemv(&self.gate, x, g);
        gemv(&self.up, x, u);
        for (g, &u) in g.iter_mut().zip(u.iter()) {
            *g = silu(*g) * u;
        }
        gemv(&self.down, g, out);
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline

struct LlamaLayer {
    ln1: Vec<f32>,
    wq: Vec<f32>, // (H·Dh, D)
    wk: Vec<f32>, // (Hkv·Dh, D)
    wv: Vec<f32>, // (Hkv·Dh, D)
    wo: Vec<f32>, // (D, H·Dh)
    ln2: Vec<f32>,
    mlp: Ffn,
    k: Vec<f32>, // (T, Hkv·Dh): RoPE'd keys of every position so far
    v: Vec<f32>, // (T, Hkv·Dh)
}

struct Llama {
    d: usize,
    h: usize,
    hkv: usize,
    dh: usize,
    eps: f32,
    max_pos: usize,
    embed: Vec<f32>, // (V, D), the head too
    norm: Vec<f32>,
    cos: Vec<f32>, // (max_pos, Dh/2)
    sin: Vec<f32>,
    layers: Vec<LlamaLayer>,
    // Scratch, sized once.
    x: Vec<f32>,
    hn: Vec<f32>,
    q: Vec<f32>,
    kn: Vec<f32>,
    vn: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    scores: Vec<f32>, // (H, T): grows with the cache
}

impl Llama {
    fn new(m: &Baseline) -> Result<Self> {
        let c = m.config();
        let (d, dh, kv) = (c.hidden_size, c.head_dim(), c.kv_dim());
        let layers = m
            .layers
            .iter()
            .map(|l| {
                Ok(LlamaLayer {
                    ln1: host(&l.input_layernorm)?,
                    wq: host(&l.self_attn.q_proj)?,
                    wk: host(&l.self_attn.k_proj)?,
                    wv: host(&l.self_attn.v_proj)?,
                    wo: host(&l.self_attn.o_proj)?,
                    ln2: host(&l.post_attention_layernorm)?,
                    mlp: Ffn::new(&l.mlp)?,
                    k: Vec::new(),
                    v: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let i = c.intermediate_size;
        Ok(Self {
            d,
            h: c.num_attention_heads,
            hkv: c.num_key_value_heads,
            dh,
            eps: c.rms_norm_eps as f32,
            max_pos: c.max_position_embeddings,
            embed: host(&m.embed_tokens)?,
            norm: host(&m.norm)?,
            cos: host(&m.rope.cos)?,
            sin: host(&m.rope.sin)?,
            layers,
            x: vec![0.0; d],
            hn: vec![0.0; d],
            q: vec![0.0; c.num_attention_heads * dh],
            kn: vec![0.0; kv],
            vn: vec![0.0; kv],
            att: vec![0.0; c.num_attention_heads * dh],
            o: vec![0.0; d],
            g: vec![0.0; i],
            u: vec![0.0; i],
            scores: Vec::new(),
        })
    }

    fn kv_dim(&self) -> usize {
        self.hkv * self.dh
    }

    /// Room for `tokens` positions in every cache (and the scores), so that steps up to there
    /// allocate nothing.
    fn reserve(&mut self, tokens: usize) {
        let kv = self.kv_dim();
        for l in &mut self.layers {
            l.k.reserve((tokens * kv).saturating_sub(l.k.len()));
            l.v.reserve((tokens * kv).saturating_sub(l.v.len()));
        }
        self.scores.reserve((self.h * tokens).saturating_sub(self.scores.len()));
    }

    fn clear(&mut self) {
        for l in &mut self.layers {
            l.k.clear();
            l.v.clear();
        }
    }

    fn load(&mut self, s: &crate::KvState) -> Result<usize> {
        let kv = self.kv_dim();
        let mut len = 0;
        for (layer, cache) in self.layers.iter_mut().zip(&s.caches) {
            layer.k.clear();
            layer.v.clear();
            if let (Some(k), Some(v)) = (cache.k()?, cache.v()?) {
                // (1, Hkv, S, Dh) -> rows (S, Hkv·Dh)
                let (b, _, t, _) = k.dims4()?;
                if b != 1 {
                    candle_core::bail!("decode: the state holds a batch of {b}; the decoder reads one sequence");
                }
                layer.k.extend(host(&k.squeeze(0)?.transpose(0, 1)?.contiguous()?)?);
                layer.v.extend(host(&v.squeeze(0)?.transpose(0, 1)?.contiguous()?)?);
                len = t;
            }
            debug_assert_eq!(layer.k.len(), len * kv);
        }
        Ok(len)
    }

    fn state_bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * 4).sum()
    }

    /// One token at position `pos` (the cache holds `pos` positions): the final hidden state in
    /// `self.hn`.
    fn step(&mut self, token: usize, pos: usize) -> Result<()> {
        if pos >= self.max_pos {
            candle_core::bail!("baseline: position {} is past max_position_embeddings {}", pos + 1, self.max_pos);
        }
        let (d, h, hkv, dh) = (self.d, self.h, self.hkv, self.dh);
        let (half, rep, kv) = (dh / 2, h / hkv, hkv * dh);
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        if self.layers.first().is_some_and(|l| l.k.len() + kv > l.k.capacity()) {
            self.reserve((2 * (pos + 1)).max(64));
        }
        self.x.copy_from_slice(&self.embed[token * d..(token + 1) * d]);
        let (cos, sin) = (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
        // x·cos + rotate_half(x)·sin on each head (HF Llama's convention).
        let rope = |v: &mut [f32]| {
            for head in v.chunks_exact_mut(dh) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * cos[i] - x2 * sin[i];
                    b[i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        };
        for l in &mut self.layers {
            rms_norm(&self.x, &l.ln1, self.eps, &mut self.hn);
            gemv(&l.wq, &self.hn, &mut self.q);
            gemv(&l.wk, &self.hn, &mut self.kn);
            gemv(&l.wv, &self.hn, &mut self.vn);
            rope(&mut self.q);
            rope(&mut self.kn);
            l.k.extend_from_slice(&self.kn);
            l.v.extend_from_slice(&self.vn);
            // Attention over the cache, streaming each K and V row once for every head:
            // scores (H, T), softmax per head, then the weighted sum of V.
            let t = pos + 1;
            self.scores.resize(h * t, 0.0);
            for j in 0..t {
                let krow = &l.k[j * kv..(j + 1) * kv];
                for qh in 0..h {
                    let o = (qh / rep) * dh; // this query head's kv head
                    self.scores[qh * t + j] = dot(&self.q[qh * dh..(qh + 1) * dh], &krow[o..o + dh]) * scale;
                }
            }
            for row in self.scores.chunks_exact_mut(t) {
                let max = lanes(row, f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|s| *s = fast_exp(*s - max));
                let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
                row.iter_mut().for_each(|s| *s *= inv);
            }
            self.att.fill(0.0);
            for j in 0..t {
                let vrow = &l.v[j * kv..(j + 1) * kv];
                for qh in 0..h {
                    let (o, p) = ((qh / rep) * dh, self.scores[qh * t + j]);
                    for (y, &v) in self.att[qh * dh..(qh + 1) * dh].iter_mut().zip(&vrow[o..o + dh]) {
                        *y += p * v;
                    }
                }
            }
            gemv(&l.wo, &self.att, &mut self.o);
            self.x.iter_mut().zip(&self.o).for_each(|(x, o)| *x += o);
            rms_norm(&self.x, &l.ln2, self.eps, &mut self.hn);
            l.mlp.forward(&self.hn, &mut self.g, &mut self.u, &mut self.o);
            self.x.iter_mut().zip(&self.o).for_each(|(x, o)| *x += o);
        }
        rms_norm(&self.x, &self.norm, self.eps, &mut self.hn);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Itera-Lite

struct Moe {
    norm: Vec<f32>,
    router: Vec<f32>, // (E, D)
    experts: Vec<Ffn>,
    top_k: usize,
}

struct MambaLayer {
    norm: Vec<f32>,
    in_proj: Vec<f32>, // (2ED, D)
    conv_w: Vec<f32>,  // (K, ED): tap j of every channel side by side
    conv_b: Vec<f32>,
    x_proj: Vec<f32>, // (R + 2N, ED)
    dt_w: Vec<f32>,   // (ED, R)
    dt_b: Vec<f32>,
    a: Vec<f32>, // (ED, N): A = -exp(A_log)
    d_skip: Vec<f32>,
    out_proj: Vec<f32>, // (D, ED)
    moe: Option<Moe>,
    window: Vec<f32>, // (K-1, ED): the last K-1 inner inputs, oldest first
    h: Vec<f32>,      // (ED, N)
}

struct Mamba {
    d: usize,
    ed: usize,
    n: usize,
    r: usize,
    k: usize,
    eps: f32,
    embed: Vec<f32>,
    norm_f: Vec<f32>,
    layers: Vec<MambaLayer>,
    // Scratch.
    x: Vec<f32>,
    hn: Vec<f32>,
    xz: Vec<f32>,   // (2ED)
    xc: Vec<f32>,   // (ED)
    xdbl: Vec<f32>, // (R + 2N)
    dt: Vec<f32>,   // (ED)
    y: Vec<f32>,    // (ED)
    o: Vec<f32>,    // (D)
    probs: Vec<f32>,
    chosen: Vec<usize>,
    g: Vec<f32>,
    u: Vec<f32>,
    e: Vec<f32>, // (D): one expert's output
}

impl Mamba {
    fn new(m: &IteraLite) -> Result<Self> {
        let c = m.config();
        let (d, ed, n, r, k) = (c.hidden_size, c.d_inner(), c.state_size, c.time_step_rank, c.conv_kernel);
        let layers = m
            .layers
            .iter()
            .map(|b| {
                let mx = &b.mixer;
                let moe = match &b.moe {
                    Some((norm, moe)) => Some(Moe {
                        norm: host(norm)?,
                        router: host(&moe.router)?,
                        experts: moe.experts.iter().map(Ffn::new).collect::<Result<Vec<_>>>()?,
                        top_k: moe.top_k,
                    }),
                    None => None,
                };
                Ok(MambaLayer {
                    norm: host(&b.norm)?,
                    in_proj: host(&mx.in_proj)?,
                    conv_w: host(&mx.conv_weight.t()?.contiguous()?)?,
                    conv_b: host(&mx.conv_bias)?,
                    x_proj: host(&mx.x_proj)?,
                    dt_w: host(&mx.dt_proj_w)?,
                    dt_b: host(&mx.dt_proj_b)?,
                    a: host(&mx.a_log.exp()?.neg()?)?,
                    d_skip: host(&mx.d_skip)?,
                    out_proj: host(&mx.out_proj)?,
                    moe,
                    window: vec![0.0; (k - 1) * ed],
                    h: vec![0.0; ed * n],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (e, f) = (c.num_experts, c.expert_intermediate_size);
        Ok(Self {
            d,
            ed,
            n,
            r,
            k,
            eps: c.layer_norm_epsilon as f32,
            embed: host(&m.embeddings)?,
            norm_f: host(&m.norm_f)?,
            layers,
            x: vec![0.0; d],
            hn: vec![0.0; d],
            xz: vec![0.0; 2 * ed],
            xc: vec![0.0; ed],
            xdbl: vec![0.0; r + 2 * n],
            dt: vec![0.0; ed],
            y: vec![0.0; ed],
            o: vec![0.0; d],
            probs: vec![0.0; e],
            chosen: Vec::with_capacity(e),
            g: vec![0.0; f],
            u: vec![0.0; f],
            e: vec![0.0; d],
        })
    }

    fn clear(&mut self) {
        for l in &mut self.layers {
            l.window.fill(0.0);
            l.h.fill(0.0);
        }
    }

    fn load(&mut self, s: &crate::SsmState) -> Result<usize> {
        for (layer, st) in self.layers.iter_mut().zip(&s.layers) {
            if st.conv.dim(0)? != 1 {
                candle_core::bail!(
                    "decode: the state holds a batch of {}; the decoder reads one sequence",
                    st.conv.dim(0)?
                );
            }
            layer.window.copy_from_slice(&host(&st.conv)?);
            layer.h.copy_from_slice(&st.ssm);
        }
        Ok(s.seen)
    }

    fn state_bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.window.len() + l.h.len()) * 4).sum()
    }

    /// One token: the final hidden state in `self.hn`.
    #[allow(clippy::needless_range_loop)] // a channel indexes several arrays at once
    fn step(&mut self, token: usize) {
        let (d, ed, n, r, k) = (self.d, self.ed, self.n, self.r, self.k);
        self.x.copy_from_slice(&self.embed[token * d..(token + 1) * d]);
        for l in &mut self.layers {
            // Mixer: in_proj, causal conv over the window + SiLU, x_proj, dt_proj, scan, out_proj.
            rms_norm(&self.x, &l.norm, self.eps, &mut self.hn);
            gemv(&l.in_proj, &self.hn, &mut self.xz);
            let (xs, z) = self.xz.split_at(ed);
            // Tap by tap over all channels (contiguous, so the loops vectorise), then SiLU.
            self.xc.copy_from_slice(&l.conv_b);
            for j in 0..k {
                let tap = &l.conv_w[j * ed..(j + 1) * ed];
                let input = if j + 1 < k { &l.window[j * ed..(j + 1) * ed] } else { xs };
                for ((acc, &w), &v) in self.xc.iter_mut().zip(tap).zip(input) {
                    *acc += v * w;
                }
            }
            self.xc.iter_mut().for_each(|v| *v *= fast_sigmoid(*v));
            if k > 1 {
                l.window.copy_within(ed.., 0);
                l.window[(k - 2) * ed..].copy_from_slice(xs);
            }
            gemv(&l.x_proj, &self.xc, &mut self.xdbl);
            let (dt_in, bc) = self.xdbl.split_at(r);
            let (b, c) = bc.split_at(n);
            gemv(&l.dt_w, dt_in, &mut self.dt);
            // h = exp(Δ A) h + Δ u B;  y = (C·h + D u) silu(z), as `scan::selective_scan_with_state`.
            // Δ and the gate silu(z) for all channels first (vector loops), then the state update.
            for (dt, &bias) in self.dt.iter_mut().zip(&l.dt_b) {
                *dt = fast_softplus(*dt + bias);
            }
            for (y, &z) in self.y.iter_mut().zip(z) {
                *y = z * fast_sigmoid(z);
            }
            for ch in 0..ed {
                let delta = self.dt[ch];
                let u = self.xc[ch];
                let dtx = delta * u;
                let a = &l.a[ch * n..(ch + 1) * n];
                let h = &mut l.h[ch * n..(ch + 1) * n];
                for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
                    *h = fast_exp(delta * a) * *h + dtx * b;
                }
                self.y[ch] *= dot(h, c) + l.d_skip[ch] * u;
            }
            gemv(&l.out_proj, &self.y, &mut self.o);
            self.x.iter_mut().zip(&self.o).for_each(|(x, o)| *x += o);

            // MoE: router softmax, top-k renormalised, the chosen experts' weighted sum.
            if let Some(moe) = &l.moe {
                rms_norm(&self.x, &moe.norm, self.eps, &mut self.hn);
                gemv(&moe.router, &self.hn, &mut self.probs);
                let max = self.probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for p in self.probs.iter_mut() {
                    *p = (*p - max).exp();
                    sum += *p;
                }
                self.probs.iter_mut().for_each(|p| *p /= sum);
                self.chosen.clear();
                for _ in 0..moe.top_k {
                    // The largest not yet chosen (the first of equals, as a stable sort would).
                    let mut best = None;
                    for (j, &p) in self.probs.iter().enumerate() {
                        if !self.chosen.contains(&j) && best.is_none_or(|b: usize| p > self.probs[b]) {
                            best = Some(j);
                        }
                    }
                    self.chosen.extend(best);
                }
                let total: f32 = self.chosen.iter().map(|&j| self.probs[j]).sum();
                self.o.fill(0.0);
                for &j in &self.chosen {
                    moe.experts[j].forward(&self.hn, &mut self.g, &mut self.u, &mut self.e);
                    let gate = self.probs[j] / total;
                    self.o.iter_mut().zip(&self.e).for_each(|(o, e)| *o += gate * e);
                }
                self.x.iter_mut().zip(&self.o).for_each(|(x, o)| *x += o);
            }
        }
        rms_norm(&self.x, &self.norm_f, self.eps, &mut self.hn);
    }
}

// ---------------------------------------------------------------------------------------------
// The decoder

enum Net {
    Llama(Box<Llama>),
    Mamba(Box<Mamba>),
}

/// A batch-1 decoder of either model: its own copy of the weights as plain `f32`, its own state
/// (KV cache or conv windows and SSM states) and buffers. Build it once per model; [`reset`]
/// or [`load`] starts a sequence, [`step`] reads the next token.
///
/// [`reset`]: Decoder::reset
/// [`load`]: Decoder::load
/// [`step`]: Decoder::step
pub struct Decoder {
    net: Net,
    vocab: usize,
    logits: Vec<f32>,
    pos: usize,
}

impl Decoder {
    /// Copies the model's weights (computed in f32, as the model does).
    pub fn new(model: &Model) -> Result<Self> {
        let (net, vocab) = match model {
            Model::Baseline(m) => (Net::Llama(Box::new(Llama::new(m)?)), m.config().vocab_size),
            Model::IteraLite(m) => (Net::Mamba(Box::new(Mamba::new(m)?)), m.config().vocab_size),
        };
        Ok(Self { net, vocab, logits: vec![0.0; vocab], pos: 0 })
    }

    /// An empty sequence.
    pub fn reset(&mut self) {
        match &mut self.net {
            Net::Llama(m) => m.clear(),
            Net::Mamba(m) => m.clear(),
        }
        self.pos = 0;
    }

    /// Continues the sequence a candle [`State`] of this model holds (batch 1), e.g. after a
    /// prefill by [`Model::forward_with_state`].
    pub fn load(&mut self, state: &State) -> Result<()> {
        self.pos = match (&mut self.net, state) {
            (Net::Llama(m), State::Kv(s)) => m.load(s)?,
            (Net::Mamba(m), State::Ssm(s)) => m.load(s)?,
            _ => candle_core::bail!("decode: the state belongs to the other architecture"),
        };
        Ok(())
    }

    /// Room for `tokens` positions in total, so that steps up to there allocate nothing (the
    /// baseline's KV cache; Itera-Lite's state never grows). Without it the cache doubles when full.
    pub fn reserve(&mut self, tokens: usize) {
        if let Net::Llama(m) = &mut self.net {
            m.reserve(tokens);
        }
    }

    /// Tokens read so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Bytes of decoding state held (the positions seen, not spare capacity).
    pub fn state_bytes(&self) -> usize {
        match &self.net {
            Net::Llama(m) => m.state_bytes(),
            Net::Mamba(m) => m.state_bytes(),
        }
    }

    /// Reads `token` after the sequence so far; returns the logits (V) for the next one.
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        let t = token as usize;
        if t >= self.vocab {
            candle_core::bail!("decode: token {token} is outside the vocabulary of {}", self.vocab);
        }
        let (embed, hn) = match &mut self.net {
            Net::Llama(m) => {
                m.step(t, self.pos)?;
                (&m.embed, &m.hn)
            }
            Net::Mamba(m) => {
                m.step(t);
                (&m.embed, &m.hn)
            }
        };
        gemv(embed, hn, &mut self.logits); // the head, tied to the embedding
        self.pos += 1;
        Ok(&self.logits)
    }
}
