//! One model on the GPU: weights uploaded once, decoding state on the GPU, and a plan of dispatches
//! per number of new tokens (recorded once, replayed every call with that many tokens).

use crate::ops::{encode, Buf, Input, Recorder};
use crate::{Gpu, GpuError, Result};
use candle_core::Tensor;
use itera_model::config::{BaselineConfig, Config, IteraLiteConfig};
use std::collections::HashMap;

const MAX_HEAD_DIM: usize = 256; // attention.wgsl: MAX_DH
const MAX_STATE: usize = 64; // mamba.wgsl: MAX_N
const MAX_EXPERTS: usize = 64; // moe.wgsl: MAX_E

// Flash-decoding (attention.wgsl, `attend_split` / `attend_combine`): a decode step's keys are cut
// into splits of about SPLIT_KEYS, one workgroup each per head, at most MAX_SPLITS of them (longer
// splits past MAX_SPLITS · SPLIT_KEYS keys). Not tuned: no GPU where this was written
// (`examples/speed.rs` measures it).
const SPLIT_KEYS: usize = 256;
const MAX_SPLITS: usize = 32;

/// How a decode step over `keys` keys is split, for a plan sized for `max_splits` splits:
/// (splits, keys per split). As many splits as SPLIT_KEYS keys take, capped at `max_splits`, the
/// keys shared out evenly in whole 64-key tiles (the kernel's tile), so the last split holds the
/// rest: every split holds at least one key. One split up to SPLIT_KEYS keys.
fn split_layout(keys: usize, max_splits: usize) -> (usize, usize) {
    let keys = keys.max(1);
    let splits = keys.div_ceil(SPLIT_KEYS).clamp(1, max_splits.max(1));
    let len = keys.div_ceil(splits).next_multiple_of(64);
    // Fewer splits where the rounding up left the last ones empty (possible past the cap).
    (keys.div_ceil(len), len)
}

/// A model on the GPU, batch 1. Feed it tokens with [`GpuModel::forward`]; it remembers them
/// (KV cache or SSM state) until [`GpuModel::reset`].
pub struct GpuModel {
    gpu: Gpu,
    cfg: Config,
    /// Each weight in chunks of whole rows (first row, rows, buffer): one chunk unless the tensor
    /// is larger than the adapter binds at once (then the matrices the linear kernels read, and
    /// the embedding table, are split by rows; any other tensor that large is refused).
    weights: HashMap<String, Vec<Chunk>>,
    state: State,
    /// Position of the next token (tokens seen since the last reset).
    pos: usize,
    /// The longest context this model accepts (the baseline's cache and RoPE tables end there).
    max_context: usize,
    /// Uniform holding `pos` for the kernels that need it, and the decode step's split of the
    /// keys (`split_layout`), written before every call.
    step: Buf,
    /// Flash-decoding: the splits a decode plan is sized for (its grid and partials), enough for
    /// `max_context` keys. The plan is recorded once per token count, and the position changes
    /// every step: so the grid is sized for the longest context, and the splits a step does not
    /// use return at once (their count and length reach the kernels through `step`). 1 (a
    /// context of at most SPLIT_KEYS, or an Itera-Lite model): the decode step runs the
    /// single-pass `attend` as a prefill does.
    max_splits: usize,
    plans: HashMap<(usize, bool), Plan>,
    /// Itera-Lite's experts run batched (three dispatches per layer, top-k only; their matrices
    /// concatenated by expert) when every concatenation fits one binding; else one expert at a
    /// time, densely, each matrix split by rows as any other.
    batched_moe: bool,
}

/// Rows `first..first + rows` of a weight, in a buffer of their own.
struct Chunk {
    first: usize,
    rows: usize,
    buf: Buf,
}

enum State {
    /// Per layer: key and value caches (max_context, kv_heads·dh); and the RoPE tables.
    Baseline { k: Vec<Buf>, v: Vec<Buf>, cos_sin: Buf },
    /// Per layer: conv window (K-1, ED), SSM state (ED, N), [A | D | dt_bias] (ED, N + 2).
    IteraLite { window: Vec<Buf>, h: Vec<Buf>, prm: Vec<Buf> },
}

/// The recorded dispatches for `l` new tokens, with their activations.
struct Plan {
    tokens: Buf,
    logits: Buf,
    readback: Buf,
    logits_len: usize,
    ops: Vec<crate::ops::Op>,
}

fn storage(gpu: &Gpu, floats: usize, label: &str) -> Buf {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (floats.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn upload(gpu: &Gpu, data: &[f32], label: &str) -> Result<Buf> {
    let bytes = (data.len() * 4) as u64;
    if bytes > gpu.max_binding_bytes() {
        return Err(GpuError::Unsupported(format!(
            "{label} takes {bytes} bytes; this adapter binds at most {} per buffer",
            gpu.max_binding_bytes()
        )));
    }
    // Through the queue rather than mapped at creation (see ops.rs: a lost device).
    let buf = storage(gpu, data.len(), label);
    gpu.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
    Ok(buf)
}

/// `data`, a (rows, row_len) matrix, in chunks of whole rows, each within the adapter's binding
/// limit (one chunk when it fits).
fn upload_rows(gpu: &Gpu, data: &[f32], row_len: usize, label: &str) -> Result<Vec<Chunk>> {
    let row_bytes = (row_len.max(1) * 4) as u64;
    let per = (gpu.max_binding_bytes() / row_bytes) as usize;
    if per == 0 {
        return Err(GpuError::Unsupported(format!(
            "{label}: one row takes {row_bytes} bytes; this adapter binds at most {} per buffer",
            gpu.max_binding_bytes()
        )));
    }
    let rows = data.len() / row_len.max(1);
    let mut chunks = Vec::with_capacity(rows.div_ceil(per));
    for first in (0..rows).step_by(per) {
        let n = per.min(rows - first);
        let buf = upload(gpu, &data[first * row_len..(first + n) * row_len], label)?;
        chunks.push(Chunk { first, rows: n, buf });
    }
    Ok(chunks)
}

/// A tensor's values as f32, checked against the shape the config implies.
fn values(tensors: &HashMap<String, Tensor>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = tensors.get(name).ok_or_else(|| GpuError::Input(format!("weights: `{name}` is missing")))?;
    if t.dims() != shape {
        return Err(GpuError::Input(format!("weights: `{name}` has shape {:?}, the config needs {shape:?}", t.dims())));
    }
    t.flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| GpuError::Input(format!("weights: `{name}`: {e}")))
}

/// The matrices `parts` ((name, rows) each, `cols` columns) stacked by rows into one, with every
/// column k multiplied by the norm weight `norm[k]` when one is named: the RMSNorm before a
/// projection folded into it (rmsnorm(x)·Wᵀ = (x·(W·diag(w))ᵀ) / rms(x); linear.wgsl, MODE 1,
/// applies the 1 / rms(x)). One matrix for several projections of the same input is one dispatch
/// instead of several.
fn stacked(
    tensors: &HashMap<String, Tensor>,
    parts: &[(&str, usize)],
    cols: usize,
    norm: Option<&str>,
) -> Result<Vec<f32>> {
    let w = norm.map(|n| values(tensors, n, &[cols])).transpose()?;
    let mut all = Vec::with_capacity(parts.iter().map(|p| p.1).sum::<usize>() * cols);
    for &(name, rows) in parts {
        let v = values(tensors, name, &[rows, cols])?;
        match &w {
            Some(w) => all.extend(v.chunks_exact(cols).flat_map(|row| row.iter().zip(w).map(|(a, b)| a * b))),
            None => all.extend(v),
        }
    }
    Ok(all)
}

/// Puts weights on the GPU by name, for [`GpuModel::new`].
struct Uploader<'a> {
    gpu: &'a Gpu,
    tensors: &'a HashMap<String, Tensor>,
    weights: HashMap<String, Vec<Chunk>>,
}

impl Uploader<'_> {
    /// The tensor `name` as it is. Matrices (2-D: what the linear kernels read, and the embedding
    /// table) may be split by rows; the other tensors (norms, biases, conv taps (ED, 1, K)) are
    /// small next to them, and stay whole.
    fn put(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let v = values(self.tensors, name, shape)?;
        let chunks = if shape.len() == 2 {
            upload_rows(self.gpu, &v, shape[1], name)?
        } else {
            vec![Chunk { first: 0, rows: shape[0], buf: upload(self.gpu, &v, name)? }]
        };
        self.weights.insert(name.to_string(), chunks);
        Ok(())
    }

    /// A matrix made at upload by [`stacked`], under the new name `name`, split by rows as any
    /// other (a chunk may end inside one of the parts: the kernels see one matrix).
    fn put_stacked(&mut self, name: &str, parts: &[(&str, usize)], cols: usize, norm: Option<&str>) -> Result<()> {
        let v = stacked(self.tensors, parts, cols, norm)?;
        self.weights.insert(name.to_string(), upload_rows(self.gpu, &v, cols, name)?);
        Ok(())
    }
}

/// The tied head with the final norm folded in (`stacked`): a second copy of the embedding table,
/// the first (unscaled) kept for the lookup. The alternative, scaling the activations by the norm
/// weight on their way into the head, would need a fourth input to every linear kernel (or a
/// variant with a binding of its own) for one matrix; the copy costs vocab × D floats (with a
/// 4,096-token vocabulary: 4 MiB more at the demo preset, a quarter of its weights; 8 MiB, 7%, at
/// the seed), far below what any adapter that runs them holds.
const HEAD: &str = "lm_head.weight (final norm folded in)";

impl GpuModel {
    /// Uploads a model from its tensors (Hugging Face names, as `itera_model::weights` reads them
    /// from any export format). `max_context` bounds the tokens between resets (the baseline's KV
    /// cache is allocated for it; at most its `max_position_embeddings`).
    pub fn new(gpu: &Gpu, cfg: &Config, tensors: &HashMap<String, Tensor>, max_context: usize) -> Result<GpuModel> {
        let mut up = Uploader { gpu, tensors, weights: HashMap::new() };
        let mut batched_moe = false;
        let (state, max_context) = match cfg {
            Config::Baseline(c) => {
                check_baseline(c)?;
                let max_context = max_context.min(c.max_position_embeddings).max(1);
                let (d, kv, i, vocab) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.vocab_size);
                up.put("model.embed_tokens.weight", &[vocab, d])?;
                up.put_stacked(HEAD, &[("model.embed_tokens.weight", vocab)], d, Some("model.norm.weight"))?;
                for l in 0..c.num_hidden_layers {
                    let p = format!("model.layers.{l}");
                    let n = |s: &str| format!("{p}.{s}.weight");
                    // [q; k; v] (D + 2·KV, D) and [gate; up] (2I, D), each with the norm before it.
                    let (q, k, v) = (n("self_attn.q_proj"), n("self_attn.k_proj"), n("self_attn.v_proj"));
                    let qkv = [(q.as_str(), d), (k.as_str(), kv), (v.as_str(), kv)];
                    up.put_stacked(&format!("{p}.input_layernorm+qkv"), &qkv, d, Some(&n("input_layernorm")))?;
                    up.put(&n("self_attn.o_proj"), &[d, d])?;
                    let (g, u) = (n("mlp.gate_proj"), n("mlp.up_proj"));
                    let gate_up = [(g.as_str(), i), (u.as_str(), i)];
                    let norm = n("post_attention_layernorm");
                    up.put_stacked(&format!("{p}.post_attention_layernorm+gate_up"), &gate_up, d, Some(&norm))?;
                    up.put(&n("mlp.down_proj"), &[d, i])?;
                }
                // RoPE tables as the CPU path computes them: inv_freq in f64 -> f32, angle in f32.
                let (dh, half) = (c.head_dim(), c.head_dim() / 2);
                let inv: Vec<f32> =
                    (0..half).map(|j| 1.0 / c.rope_theta.powf(2.0 * j as f64 / dh as f64) as f32).collect();
                let mut cs = vec![0f32; 2 * max_context * half];
                for pos in 0..max_context {
                    for j in 0..half {
                        let angle = pos as f32 * inv[j];
                        cs[pos * half + j] = angle.cos();
                        cs[(max_context + pos) * half + j] = angle.sin();
                    }
                }
                let cos_sin = upload(gpu, &cs, "rope tables")?;
                let cache = |what: &str| -> Result<Vec<Buf>> {
                    let bytes = (max_context * kv * 4) as u64;
                    if bytes > gpu.max_binding_bytes() {
                        return Err(GpuError::Unsupported(format!(
                            "a {what} cache of {max_context} tokens takes {bytes} bytes per layer; this adapter binds at most {}",
                            gpu.max_binding_bytes()
                        )));
                    }
                    Ok((0..c.num_hidden_layers).map(|_| storage(gpu, max_context * kv, what)).collect())
                };
                (State::Baseline { k: cache("key")?, v: cache("value")?, cos_sin }, max_context)
            }
            Config::IteraLite(c) => {
                check_itera(c)?;
                let (d, ed, n, r, k) = (c.hidden_size, c.d_inner(), c.state_size, c.time_step_rank, c.conv_kernel);
                let vocab = c.vocab_size;
                up.put("backbone.embeddings.weight", &[vocab, d])?;
                up.put_stacked(HEAD, &[("backbone.embeddings.weight", vocab)], d, Some("backbone.norm_f.weight"))?;
                let mut prm = Vec::new();
                for l in 0..c.num_hidden_layers {
                    let p = format!("backbone.layers.{l}");
                    // in_proj with the block's norm folded in (`stacked`).
                    let in_proj = format!("{p}.mixer.in_proj.weight");
                    let norm = format!("{p}.norm.weight");
                    up.put_stacked(&format!("{p}.norm+in_proj"), &[(&in_proj, 2 * ed)], d, Some(&norm))?;
                    up.put(&format!("{p}.mixer.conv1d.weight"), &[ed, 1, k])?;
                    up.put(&format!("{p}.mixer.conv1d.bias"), &[ed])?;
                    up.put(&format!("{p}.mixer.x_proj.weight"), &[r + 2 * n, ed])?;
                    up.put(&format!("{p}.mixer.dt_proj.weight"), &[ed, r])?;
                    up.put(&format!("{p}.mixer.out_proj.weight"), &[d, ed])?;
                    // [A | D | dt_bias] per channel, A = -exp(A_log) in f32 as the CPU path.
                    let a_log = values(tensors, &format!("{p}.mixer.A_log"), &[ed, n])?;
                    let dskip = values(tensors, &format!("{p}.mixer.D"), &[ed])?;
                    let bias = values(tensors, &format!("{p}.mixer.dt_proj.bias"), &[ed])?;
                    let mut v = Vec::with_capacity(ed * (n + 2));
                    for ch in 0..ed {
                        v.extend(a_log[ch * n..(ch + 1) * n].iter().map(|x| -x.exp()));
                        v.push(dskip[ch]);
                        v.push(bias[ch]);
                    }
                    prm.push(upload(gpu, &v, "scan parameters")?);
                    if c.moe() {
                        let (e, h) = (c.num_experts, c.expert_intermediate_size);
                        // (In u64: on wasm32 the product may pass usize.)
                        let (limit, eu) = (gpu.max_binding_bytes(), e as u64);
                        batched_moe = eu * (h * 4) as u64 * d as u64 <= limit && eu * (d * 4) as u64 <= limit;
                        up.put(&format!("{p}.moe_norm.weight"), &[d])?;
                        up.put(&format!("{p}.moe.router.weight"), &[e, d])?;
                        let name = |j: usize, what: &str| format!("{p}.moe.experts.{j}.{what}.weight");
                        if batched_moe {
                            for (what, shape) in [("gate_proj", [h, d]), ("up_proj", [h, d]), ("down_proj", [d, h])] {
                                // One matrix (E·rows, cols), within the limit: one chunk.
                                let names: Vec<String> = (0..e).map(|j| name(j, what)).collect();
                                let parts: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), shape[0])).collect();
                                up.put_stacked(&format!("{p}.moe.experts.{what}"), &parts, shape[1], None)?;
                            }
                        } else {
                            // Each expert's [gate; up] as one matrix. The norm is not folded into
                            // them (nor into the router): the norm's output, rounded as the batched
                            // path's (experts.wgsl normalises first), keeps the two paths' logits
                            // within 1e-6 of each other (`weights_over_the_binding_limit_are_split_by_rows`);
                            // folded, the router's logits (×40 in the tests) round apart by ~2e-5.
                            for j in 0..e {
                                let (g, u) = (name(j, "gate_proj"), name(j, "up_proj"));
                                let gate_up = [(g.as_str(), h), (u.as_str(), h)];
                                up.put_stacked(&format!("{p}.moe.experts.{j}.gate_up"), &gate_up, d, None)?;
                                up.put(&name(j, "down_proj"), &[d, h])?;
                            }
                        }
                    }
                }
                let layers = c.num_hidden_layers;
                let window = (0..layers).map(|_| storage(gpu, (k - 1) * ed, "conv window")).collect();
                let h = (0..layers).map(|_| storage(gpu, ed * n, "ssm state")).collect();
                (State::IteraLite { window, h, prm }, max_context.max(1))
            }
        };
        let weights = up.weights;
        // Flash-decoding's splits, their partials ((heads, max_splits, 2 + dh) floats) within one
        // binding: fewer splits on an adapter that binds less (at worst one, `attend`).
        let max_splits = match cfg {
            Config::Baseline(c) => {
                let per_split = (c.num_attention_heads * (c.head_dim() + 2) * 4) as u64;
                let fit = (gpu.max_binding_bytes() / per_split).min(MAX_SPLITS as u64) as usize;
                max_context.div_ceil(SPLIT_KEYS).min(fit).max(1)
            }
            Config::IteraLite(_) => 1,
        };
        let step = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut model = GpuModel {
            gpu: gpu.clone(),
            cfg: cfg.clone(),
            weights,
            state,
            pos: 0,
            max_context,
            step,
            max_splits,
            plans: HashMap::new(),
            batched_moe,
        };
        model.reset();
        gpu.check("uploading the weights")?;
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Tokens seen since the last reset.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// The dispatches one forward of `tokens` new tokens records (every row's logits with `all`):
    /// the fixed cost of a call grows with them. Records a plan to count it (not kept).
    pub fn dispatches(&self, tokens: usize, all: bool) -> Result<usize> {
        if tokens == 0 {
            return Err(GpuError::Input("dispatches: no tokens".into()));
        }
        Ok(self.record(tokens, all)?.ops.len())
    }

    /// Whether Itera-Lite's experts run batched (top-k only, three dispatches per layer) rather
    /// than one expert at a time (when their concatenated matrices pass the binding limit).
    pub fn batched_experts(&self) -> bool {
        self.batched_moe
    }

    /// Forgets every token: zero SSM states and conv windows (the KV cache is simply overwritten).
    pub fn reset(&mut self) {
        self.pos = 0;
        if let State::IteraLite { window, h, .. } = &self.state {
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            for b in window.iter().chain(h) {
                enc.clear_buffer(b, 0, None);
            }
            self.gpu.queue.submit([enc.finish()]);
        }
    }

    /// Runs the next `tokens` (one to decode, more to prefill) and returns the logits of the last
    /// one (V values), or of every one (L × V, row-major) with `all`.
    pub async fn forward(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        let (vocab, l) = (self.vocab(), tokens.len());
        if l == 0 {
            return Err(GpuError::Input("forward: no tokens".into()));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(GpuError::Input(format!("token id {t} is outside the vocabulary of {vocab}")));
        }
        self.gpu.check("starting a forward pass")?;
        if matches!(self.state, State::Baseline { .. }) && self.pos + l > self.max_context {
            return Err(GpuError::Input(format!(
                "{} tokens would pass this model's context of {} on the GPU",
                self.pos + l,
                self.max_context
            )));
        }
        let key = (l, all);
        if !self.plans.contains_key(&key) {
            let plan = self.record(l, all)?;
            // Keep the decode plan and the last prefill plan: prompts rarely repeat their length.
            self.plans.retain(|k, _| k.0 == 1);
            self.plans.insert(key, plan);
        }
        let plan = &self.plans[&key];
        let gpu = &self.gpu;
        gpu.queue.write_buffer(&plan.tokens, 0, bytemuck::cast_slice(tokens));
        // The split of the keys of the last new token (0..=pos + l - 1): used by a decode step.
        let (splits, split_len) = split_layout(self.pos + l, self.max_splits);
        let step = [self.pos, splits, split_len, 0].map(|v| v as u32);
        gpu.queue.write_buffer(&self.step, 0, bytemuck::cast_slice(&step));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        encode(&plan.ops, &mut enc);
        let bytes = (plan.logits_len * 4) as u64;
        enc.copy_buffer_to_buffer(&plan.logits, 0, &plan.readback, 0, bytes);
        gpu.queue.submit([enc.finish()]);

        let (tx, rx) = futures_channel::oneshot::channel();
        let slice = plan.readback.slice(..bytes);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Runtime(format!("waiting for the forward pass: {e}")))?;
        let mapped = rx.await.map_err(|_| GpuError::Runtime("the read-back was dropped".into()))?;
        mapped.map_err(|e| GpuError::Runtime(format!("reading the logits back: {e}")))?;
        let out = {
            let view = slice.get_mapped_range().map_err(|e| GpuError::Runtime(format!("mapping the logits: {e}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        plan.readback.unmap();
        gpu.check("running the forward pass")?;
        self.pos += l;
        Ok(out)
    }

    fn vocab(&self) -> usize {
        match &self.cfg {
            Config::Baseline(c) => c.vocab_size,
            Config::IteraLite(c) => c.vocab_size,
        }
    }

    /// A weight that is never split (norms, conv taps and biases).
    fn w(&self, name: &str) -> &Buf {
        &self.weights[name][0].buf // every name was uploaded by `new` from the same config
    }

    /// y[m, y_off..y_off+n] (=|+=) f(x) · Wᵀ for the weight `name` (n, k), chunk by chunk of its
    /// rows (each chunk's dispatch reads all of x's row: a folded norm sees the whole row).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        rec: &mut Recorder,
        x: (&Buf, usize, usize),
        name: &str,
        y: (&Buf, usize, usize),
        m: usize,
        k: usize,
        acc: bool,
        input: Input,
    ) {
        for c in &self.weights[name] {
            rec.linear(x, (&c.buf, 0), (y.0, y.1, y.2 + c.first), m, c.rows, k, acc, input);
        }
    }

    /// The rows of the table `name` (vocab, d) for `tokens`, chunk by chunk.
    fn embed(&self, rec: &mut Recorder, tokens: &Buf, name: &str, y: &Buf, l: usize, d: usize) {
        for c in &self.weights[name] {
            rec.embed(tokens, &c.buf, y, l, d, c.first, c.rows);
        }
    }

    /// Records the plan for `l` new tokens.
    fn record(&self, l: usize, all: bool) -> Result<Plan> {
        let gpu = &self.gpu;
        let vocab = self.vocab();
        let rows_out = if all { l } else { 1 };
        let logits_len = rows_out * vocab;
        let tokens = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tokens"),
            size: (l * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let logits = storage(gpu, logits_len, "logits");
        let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits read-back"),
            size: (logits_len * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut rec = Recorder::new(&gpu.device, &gpu.queue, &gpu.kernels);
        let (d, eps, x) = match (&self.cfg, &self.state) {
            (Config::Baseline(c), State::Baseline { k, v, cos_sin }) => {
                let x = self.record_baseline(&mut rec, c, l, &tokens, k, v, cos_sin);
                (c.hidden_size, c.rms_norm_eps, x)
            }
            (Config::IteraLite(c), State::IteraLite { window, h, prm }) => {
                let x = self.record_itera(&mut rec, c, l, &tokens, window, h, prm);
                (c.hidden_size, c.layer_norm_epsilon, x)
            }
            _ => unreachable!("the state is built from the config"),
        };
        // The final norm and the tied head (one matrix: `HEAD`) on the rows asked for.
        let first = l - rows_out;
        self.linear(&mut rec, (&x, d, first * d), HEAD, (&logits, vocab, 0), rows_out, d, false, Input::Norm(eps));
        let ops = rec.ops;
        gpu.check("recording the forward pass")?;
        Ok(Plan { tokens, logits, readback, logits_len, ops })
    }

    /// The baseline's layers; returns the residual stream. Six dispatches a layer: the norm and
    /// q|k|v (one matrix), RoPE and the caches, attention, o_proj, the norm and gate|up (one
    /// matrix), down_proj on SwiGLU's product; seven in a decode step with flash-decoding
    /// (attention in two: the splits, their combination).
    #[allow(clippy::too_many_arguments)]
    fn record_baseline(
        &self,
        rec: &mut Recorder,
        c: &BaselineConfig,
        l: usize,
        tokens: &Buf,
        k_cache: &[Buf],
        v_cache: &[Buf],
        cos_sin: &Buf,
    ) -> Buf {
        let gpu = &self.gpu;
        let (d, kv, i, eps) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.rms_norm_eps);
        let (heads, kv_heads, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let x = storage(gpu, l * d, "x");
        let qkv = storage(gpu, l * (d + 2 * kv), "q | k | v");
        let qr = storage(gpu, l * d, "q rotated");
        let att = storage(gpu, l * d, "attention");
        let gu = storage(gpu, l * 2 * i, "gate | up");
        // A decode step splits its keys over workgroups (flash-decoding) when the cache holds
        // more than one split's worth; the partials are shared by the layers, one after the other.
        let flash = (l == 1 && self.max_splits > 1)
            .then(|| storage(gpu, heads * self.max_splits * (dh + 2), "attention partials"));
        self.embed(rec, tokens, "model.embed_tokens.weight", &x, l, d);
        for layer in 0..c.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            let (caches, k, v) = ((&k_cache[layer], &v_cache[layer]), &k_cache[layer], &v_cache[layer]);
            // h = input_layernorm(x); q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ
            let name = format!("{p}.input_layernorm+qkv");
            self.linear(rec, (&x, d, 0), &name, (&qkv, d + 2 * kv, 0), l, d, false, Input::Norm(eps));
            rec.rope_qkv(&self.step, &qkv, cos_sin, &qr, caches, l, (heads, kv_heads), dh, self.max_context);
            match &flash {
                Some(part) => {
                    rec.attend_split(&self.step, &qr, caches, part, &att, (heads, kv_heads), dh, self.max_splits)
                }
                None => rec.attend(&self.step, &qr, k, v, &att, l, heads, kv_heads, dh),
            }
            let o_proj = format!("{p}.self_attn.o_proj.weight");
            self.linear(rec, (&att, d, 0), &o_proj, (&x, d, 0), l, d, true, Input::Plain);
            // h = post_attention_layernorm(x); x += (silu(h·Wgᵀ) · h·Wuᵀ)·Wdᵀ
            let name = format!("{p}.post_attention_layernorm+gate_up");
            self.linear(rec, (&x, d, 0), &name, (&gu, 2 * i, 0), l, d, false, Input::Norm(eps));
            let down = format!("{p}.mlp.down_proj.weight");
            self.linear(rec, (&gu, 2 * i, 0), &down, (&x, d, 0), l, i, true, Input::SwiGlu);
        }
        x
    }

    #[allow(clippy::too_many_arguments)]
    fn record_itera(
        &self,
        rec: &mut Recorder,
        c: &IteraLiteConfig,
        l: usize,
        tokens: &Buf,
        window: &[Buf],
        hs: &[Buf],
        prm: &[Buf],
    ) -> Buf {
        let gpu = &self.gpu;
        let (d, ed, n, r, k) = (c.hidden_size, c.d_inner(), c.state_size, c.time_step_rank, c.conv_kernel);
        let eps = c.layer_norm_epsilon;
        let shape = (l, ed, n, k, r);
        let x = storage(gpu, l * d, "x");
        let h = storage(gpu, l * d, "h");
        let xz = storage(gpu, l * 2 * ed, "xz");
        let xc = storage(gpu, l * ed, "xc");
        let dbl = storage(gpu, l * (r + 2 * n), "x_dbl");
        let dt = storage(gpu, l * ed, "dt");
        let y = storage(gpu, l * ed, "y");
        let (e, hw, top) = (c.num_experts, c.expert_intermediate_size, c.num_experts_per_tok);
        // Batched: the chosen experts (rows, k) and their gates, and the SwiGLU products (rows·k, H).
        // Per expert: router logits, dense gates (rows, e), one expert's gate | up (rows, 2H) and output.
        let moe_bufs = c.moe().then(|| {
            if self.batched_moe {
                let sel = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("chosen experts"),
                    size: (l * top * 4) as u64,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                vec![sel, storage(gpu, l * top, "gates"), storage(gpu, l * top * hw, "swiglu")]
            } else {
                vec![
                    storage(gpu, l * e, "router logits"),
                    storage(gpu, l * e, "gates"),
                    storage(gpu, l * 2 * hw, "gate | up"),
                    storage(gpu, l * d, "expert out"),
                ]
            }
        });
        self.embed(rec, tokens, "backbone.embeddings.weight", &x, l, d);
        for layer in 0..c.num_hidden_layers {
            let p = format!("backbone.layers.{layer}");
            let w = |s: &str| self.w(&format!("{p}.{s}"));
            // xz = norm(x)·W_inᵀ (one matrix: the norm folded in)
            self.linear(rec, (&x, d, 0), &format!("{p}.norm+in_proj"), (&xz, 2 * ed, 0), l, d, false, Input::Norm(eps));
            rec.conv(shape, &xz, w("mixer.conv1d.weight"), w("mixer.conv1d.bias"), &window[layer], &xc);
            let (x_proj, dt_proj) = (format!("{p}.mixer.x_proj.weight"), format!("{p}.mixer.dt_proj.weight"));
            self.linear(rec, (&xc, ed, 0), &x_proj, (&dbl, r + 2 * n, 0), l, ed, false, Input::Plain);
            self.linear(rec, (&dbl, r + 2 * n, 0), &dt_proj, (&dt, ed, 0), l, r, false, Input::Plain);
            // (The scan also moves the conv window on.)
            rec.scan(shape, &xz, &xc, &dt, &dbl, &prm[layer], &hs[layer], &y, &window[layer]);
            let out_proj = format!("{p}.mixer.out_proj.weight");
            self.linear(rec, (&y, ed, 0), &out_proj, (&x, d, 0), l, ed, true, Input::Plain);
            match moe_bufs.as_deref() {
                Some([sel, gates, m]) => {
                    let s = (l, d, e, top, hw);
                    let (router, norm) = (w("moe.router.weight"), w("moe_norm.weight"));
                    rec.experts_route(s, &x, norm, router, &h, sel, gates, eps);
                    let gate = w("moe.experts.gate_proj");
                    rec.experts_gate_up(s, &h, gate, w("moe.experts.up_proj"), sel, m);
                    rec.experts_down(s, m, w("moe.experts.down_proj"), sel, gates, &x);
                }
                Some([rl, gates, gu, eo]) => {
                    rec.rmsnorm(&x, w("moe_norm.weight"), &h, l, d, eps);
                    let router = format!("{p}.moe.router.weight");
                    self.linear(rec, (&h, d, 0), &router, (rl, e, 0), l, d, false, Input::Plain);
                    rec.route(rl, gates, l, e, top);
                    // Every expert on every token, weighted by the gates (zero off the chosen k).
                    for j in 0..e {
                        let gate_up = format!("{p}.moe.experts.{j}.gate_up");
                        self.linear(rec, (&h, d, 0), &gate_up, (gu, 2 * hw, 0), l, d, false, Input::Plain);
                        let down = format!("{p}.moe.experts.{j}.down_proj.weight");
                        self.linear(rec, (gu, 2 * hw, 0), &down, (eo, d, 0), l, hw, false, Input::SwiGlu);
                        rec.axpy(eo, gates, &x, l, d, e, j);
                    }
                }
                _ => {}
            }
        }
        x
    }
}

fn check_baseline(c: &BaselineConfig) -> Result<()> {
    c.validate().map_err(|e| GpuError::Input(format!("config: {e}")))?;
    if c.head_dim() > MAX_HEAD_DIM || !c.head_dim().is_multiple_of(2) {
        return Err(GpuError::Unsupported(format!(
            "head dim {} (the kernels take even sizes up to {MAX_HEAD_DIM})",
            c.head_dim()
        )));
    }
    Ok(())
}

fn check_itera(c: &IteraLiteConfig) -> Result<()> {
    c.validate().map_err(|e| GpuError::Input(format!("config: {e}")))?;
    if c.state_size > MAX_STATE {
        return Err(GpuError::Unsupported(format!(
            "state size {} (the scan kernel takes up to {MAX_STATE})",
            c.state_size
        )));
    }
    if c.moe() && (c.num_experts > MAX_EXPERTS || c.num_experts_per_tok > c.num_experts) {
        return Err(GpuError::Unsupported(format!(
            "{} experts, top-{} (the router kernel takes up to {MAX_EXPERTS})",
            c.num_experts, c.num_experts_per_tok
        )));
    }
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// Every key in exactly one non-empty split, in whole tiles but the last, within the plan's
    /// splits; one split up to SPLIT_KEYS keys; past the cap, longer splits.
    #[test]
    fn split_layout_covers_the_keys_in_non_empty_splits() {
        for max_splits in [1, 2, 3, 16, MAX_SPLITS] {
            for keys in 1..=(MAX_SPLITS + 3) * SPLIT_KEYS {
                let (splits, len) = split_layout(keys, max_splits);
                assert!((1..=max_splits).contains(&splits), "{keys} keys, {max_splits}: {splits} splits");
                assert!(len.is_multiple_of(64) && len >= 64, "{keys} keys: length {len}");
                assert!(splits * len >= keys && (splits - 1) * len < keys, "{keys} keys: {splits} × {len}");
                if keys <= SPLIT_KEYS {
                    assert_eq!(splits, 1, "{keys} keys");
                }
                if keys <= max_splits * SPLIT_KEYS {
                    assert!(len <= SPLIT_KEYS, "{keys} keys, {max_splits}: length {len}");
                }
            }
        }
        assert_eq!(split_layout(0, 0), (1, 64));
        assert_eq!(split_layout(700, 16), (3, 256));
        assert_eq!(split_layout(4096, 16), (16, 256));
        assert_eq!(split_layout(4096, 2), (2, 2048));
    }
}
