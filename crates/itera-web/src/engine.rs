//! One model, ready to generate: weights, config and tokenizer from an export folder's bytes,
//! plus the caller-owned decoding state. No browser API here, so the same code runs natively
//! (tests compute the expected outputs with it) and in the worker.
//!
//! Two backends: the CPU (candle, always loaded) and, once [`Engine::attach_gpu`] succeeded, the
//! GPU (`itera_webgpu`: WebGPU in the browser, Vulkan & co natively). The `_async` methods run on
//! the active one; if the GPU fails mid-sequence, the engine switches to the CPU, re-reads the
//! sequence so far there, and says why ([`Engine::take_fallback`]). The plain methods are the CPU's.
//!
//! On the CPU, prompts go through candle (`Model::forward_with_state`, batched), and single tokens
//! through `itera_model::decode::Decoder` (plain slices, no allocation per step), which takes the
//! sequence over from candle's state at the first token after a prompt.

use candle_core::{Device, Tensor};
use itera_model::decode::Decoder;
use itera_model::sample::{argmax, Sampler, SamplingConfig};
use itera_model::weights::{self, WeightFormat, SHARD_INDEX};
use itera_model::{Config, Model, State};
use itera_webgpu::{Gpu, GpuModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tokenizers::Tokenizer;

pub const EOT: &str = "<|endoftext|>";

/// Tokens per forward pass when a prompt is read (the worker yields between passes: progress,
/// `abort`); one definition, in the model crate.
pub use itera_model::PREFILL_CHUNK;

/// Errors cross the worker boundary as text.
pub type Result<T> = std::result::Result<T, String>;

fn err<E: std::fmt::Display>(context: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{context}: {e}")
}

pub struct Engine {
    model: Model,
    config: Config,
    tokenizer: Tokenizer,
    eot: u32,
    state: Option<State>,
    /// The batch-1 decoder for single tokens on the CPU (built at the first one).
    decoder: Option<Decoder>,
    /// Whether the decoder holds the current sequence (then `state` is behind it).
    decoder_ahead: bool,
    /// The tokens of the current sequence (leading `<|endoftext|>` included), on either backend.
    seq: Vec<u32>,
    gpu: Option<GpuRun>,
    /// Why the GPU was given up during a job, until the worker reports it.
    fallback: Option<String>,
}

/// The model on the GPU, and whether it is the backend in use.
struct GpuRun {
    model: GpuModel,
    adapter: String,
    active: bool,
}

/// The CPU path, as the page names it.
pub fn cpu_name() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        if cfg!(target_feature = "simd128") {
            "wasm SIMD128"
        } else {
            "wasm"
        }
    } else {
        "native"
    }
}

/// Longest context on the GPU: the baseline's KV cache is allocated for it.
pub const GPU_MAX_CONTEXT: usize = 4096;

/// Which backend runs the model, as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `webgpu` or `cpu`.
    pub kind: String,
    /// The adapter's name (WebGPU), or the CPU path's ("wasm SIMD128", "native").
    pub name: String,
    /// Whether the model is also on the GPU (so that the page can offer the switch).
    pub gpu_available: bool,
}

/// The tensors of an export's weights file in `format`, for the GPU (which uploads them).
pub fn read_tensors(weights_bytes: &[u8], format: WeightFormat) -> Result<HashMap<String, Tensor>> {
    match format {
        WeightFormat::F32 => weights::read_safetensors(weights_bytes, &Device::Cpu),
        _ => weights::read_gguf(weights_bytes, &Device::Cpu),
    }
    .map_err(err(format.file_name()))
}

/// The tensors of a sharded export, for the GPU.
pub fn read_sharded_tensors(
    index_json: &[u8],
    shard: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<HashMap<String, Tensor>> {
    weights::read_sharded(index_json, shard, &Device::Cpu).map_err(err(SHARD_INDEX))
}

impl Engine {
    /// Builds the model from `config.json`, `tokenizer.json` and `model.safetensors` bytes.
    pub fn load(config_json: &[u8], tokenizer_json: &[u8], weights: &[u8]) -> Result<Engine> {
        Self::load_weights(config_json, tokenizer_json, weights, WeightFormat::F32)
    }

    /// As [`Engine::load`], with the weights in `format` (`model.gguf` for f16, q8_0, q4_0:
    /// dequantized to f32 on load, so the download shrinks and the arithmetic does not change).
    pub fn load_weights(
        config_json: &[u8],
        tokenizer_json: &[u8],
        weights: &[u8],
        format: WeightFormat,
    ) -> Result<Engine> {
        Self::build(config_json, tokenizer_json, format.file_name(), |c| {
            Model::from_weights(c, format, weights, &Device::Cpu)
        })
    }

    /// As [`Engine::load`], with f32 weights in shards: `model.safetensors.index.json` and the
    /// shards it names, from `shard(file)`.
    pub fn load_sharded(
        config_json: &[u8],
        tokenizer_json: &[u8],
        index_json: &[u8],
        shard: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<Engine> {
        Self::build(config_json, tokenizer_json, SHARD_INDEX, |c| {
            Model::from_sharded(c, index_json, shard, &Device::Cpu)
        })
    }

    /// As [`Engine::load`], from tensors already read (`read_tensors`, `read_sharded_tensors`):
    /// the worker reads them once for both the CPU and the GPU. `weights` names their file in errors.
    pub fn load_tensors(
        config_json: &[u8],
        tokenizer_json: &[u8],
        weights: &str,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Engine> {
        Self::build(config_json, tokenizer_json, weights, |c| Model::from_tensors(c, tensors, &Device::Cpu))
    }

    /// Config and tokenizer checked, then the model from `model` (its errors named by `weights`).
    fn build(
        config_json: &[u8],
        tokenizer_json: &[u8],
        weights: &str,
        model: impl FnOnce(&Config) -> candle_core::Result<Model>,
    ) -> Result<Engine> {
        let config: Config = serde_json::from_slice(config_json).map_err(err("config.json"))?;
        config.validate().map_err(err("config.json"))?;
        // tokenizers 0.23 panics on some malformed files (issue 14, found by itera-fuzz).
        itera_data::tokenizer_json::check(tokenizer_json).map_err(err("tokenizer.json"))?;
        let tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(err("tokenizer.json"))?;
        let eot = tokenizer.token_to_id(EOT).ok_or_else(|| format!("tokenizer.json has no {EOT} token"))?;
        if tokenizer.get_vocab_size(true) != config.vocab_size() {
            return Err(format!(
                "tokenizer.json has {} tokens, config.json says {}",
                tokenizer.get_vocab_size(true),
                config.vocab_size()
            ));
        }
        let model = model(&config).map_err(err(weights))?;
        Ok(Engine {
            model,
            config,
            tokenizer,
            eot,
            state: None,
            decoder: None,
            decoder_ahead: false,
            seq: Vec::new(),
            gpu: None,
            fallback: None,
        })
    }

    /// A fresh CPU state for a new sequence (the decoder takes it over at its first token).
    fn new_cpu_state(&mut self) -> Result<()> {
        self.state = Some(self.model.new_state(1).map_err(err("state"))?);
        self.decoder_ahead = false;
        Ok(())
    }

    /// Puts the model on `gpu` too (from the same `tensors` the CPU model was built from) and
    /// makes it the active backend. An error leaves the engine on the CPU.
    pub fn attach_gpu(&mut self, gpu: &Gpu, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let context = self.max_context().min(GPU_MAX_CONTEXT);
        let model = GpuModel::new(gpu, &self.config, tensors, context).map_err(|e| e.to_string())?;
        self.gpu = Some(GpuRun { model, adapter: gpu.adapter_name(), active: true });
        self.state = None;
        self.decoder_ahead = false;
        self.seq.clear();
        Ok(())
    }

    /// Switches between the GPU (`true`; it must be attached) and the CPU. The current
    /// sequence ends: the next job starts with a prefill.
    pub fn use_gpu(&mut self, on: bool) -> Result<()> {
        match (&mut self.gpu, on) {
            (Some(g), _) => g.active = on,
            (None, true) => return Err("this model is not on a GPU".into()),
            (None, false) => {}
        }
        self.state = None;
        self.decoder_ahead = false;
        self.seq.clear();
        Ok(())
    }

    fn on_gpu(&self) -> bool {
        self.gpu.as_ref().is_some_and(|g| g.active)
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendInfo {
        match &self.gpu {
            Some(g) if g.active => BackendInfo { kind: "webgpu".into(), name: g.adapter.clone(), gpu_available: true },
            g => BackendInfo { kind: "cpu".into(), name: cpu_name().into(), gpu_available: g.is_some() },
        }
    }

    /// Why the GPU was given up since the last call, if it was.
    pub fn take_fallback(&mut self) -> Option<String> {
        self.fallback.take()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn eot(&self) -> u32 {
        self.eot
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, false).map_err(err("encode"))?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(err("decode"))
    }

    /// Longest context the model accepts (the baseline's RoPE tables end there).
    pub fn max_context(&self) -> usize {
        match &self.config {
            Config::Baseline(c) => c.max_position_embeddings,
            Config::IteraLite(_) => usize::MAX,
        }
    }

    /// Refuses a prompt of `n` tokens that would not fit with its leading `<|endoftext|>` and
    /// room for one token after it.
    pub fn check_prompt(&self, n: usize) -> Result<()> {
        let max = self.max_context();
        if n + 1 >= max {
            return Err(format!(
                "the prompt is {} tokens; this model reads at most {} (its context of {max} less one for the reply)",
                n + 1,
                max - 1
            ));
        }
        Ok(())
    }

    /// Starts a new sequence: `<|endoftext|>` then `ids` (read [`PREFILL_CHUNK`] tokens per
    /// forward pass). Returns the logits (V) for the next token.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.check_prompt(ids.len())?;
        let mut input = Vec::with_capacity(ids.len() + 1);
        input.push(self.eot);
        input.extend_from_slice(ids);
        self.new_cpu_state()?;
        self.seq.clear();
        self.feed(&input)
    }

    /// Appends tokens to the current sequence; returns the logits (V) after the last one. Long
    /// inputs go through the model [`PREFILL_CHUNK`] tokens at a time, so that memory (the
    /// logits of every position, above all) stays bounded whatever the prompt's length.
    /// A single token goes through the decoder ([`Engine::step`]).
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if let [id] = ids {
            return self.step(*id).map(<[f32]>::to_vec);
        }
        if self.state.is_none() {
            return Err("feed before prefill".into());
        }
        if self.seq.len() + ids.len() > self.max_context() {
            return Err(format!("context limit of {} tokens reached", self.max_context()));
        }
        if self.decoder_ahead {
            // Tokens were decoded since candle's state was last current: it reads them again.
            let seen = std::mem::take(&mut self.seq);
            self.new_cpu_state()?;
            self.feed_candle(&seen)?;
        }
        self.feed_candle(ids)
    }

    /// `ids` through candle's batched forward, [`PREFILL_CHUNK`] tokens per pass.
    fn feed_candle(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let state = self.state.as_mut().ok_or("feed before prefill")?;
        let mut last = None;
        for chunk in ids.chunks(PREFILL_CHUNK) {
            let x = Tensor::from_slice(chunk, (1, chunk.len()), &Device::Cpu).map_err(err("input"))?;
            let logits = self.model.forward_with_state(&x, state).map_err(err("forward"))?; // (1, L, V)
            last = Some(logits.get(0).and_then(|l| l.get(chunk.len() - 1)).map_err(err("logits"))?);
            self.seq.extend_from_slice(chunk);
        }
        last.ok_or("feed of no tokens")?.to_vec1::<f32>().map_err(err("logits"))
    }

    /// Appends one token on the CPU through the batch-1 decoder; returns the logits (V) after it,
    /// in the decoder's own buffer (nothing is allocated per token, except when the KV cache or
    /// the token list fills and doubles).
    pub fn step(&mut self, id: u32) -> Result<&[f32]> {
        if self.seq.len() + 1 > self.max_context() {
            return Err(format!("context limit of {} tokens reached", self.max_context()));
        }
        if self.decoder.is_none() {
            self.decoder = Some(Decoder::new(&self.model).map_err(err("decoder"))?);
        }
        let decoder = self.decoder.as_mut().ok_or("no decoder")?;
        if !self.decoder_ahead {
            let state = self.state.as_ref().ok_or("feed before prefill")?;
            decoder.load(state).map_err(err("decoder"))?;
            decoder.reserve(state.len() + PREFILL_CHUNK);
            self.seq.reserve(PREFILL_CHUNK);
            self.decoder_ahead = true;
        }
        let logits = decoder.step(id).map_err(err("decode"))?;
        self.seq.push(id);
        Ok(logits)
    }

    /// [`Engine::step`] on the active backend, the logits written into `logits`.
    pub async fn step_async(&mut self, id: u32, logits: &mut Vec<f32>) -> Result<()> {
        if self.on_gpu() {
            *logits = self.feed_async(&[id]).await?;
        } else {
            let out = self.step(id)?;
            logits.clear();
            logits.extend_from_slice(out);
        }
        Ok(())
    }

    /// [`Engine::prefill`] on the active backend.
    pub async fn prefill_async(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if !self.on_gpu() {
            return self.prefill(ids);
        }
        self.check_prompt(ids.len())?;
        let mut input = Vec::with_capacity(ids.len() + 1);
        input.push(self.eot);
        input.extend_from_slice(ids);
        self.state = None;
        self.decoder_ahead = false;
        self.seq.clear();
        self.gpu_feed(&input).await
    }

    /// [`Engine::feed`] on the active backend.
    pub async fn feed_async(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if !self.on_gpu() {
            return self.feed(ids);
        }
        if self.seq.is_empty() {
            return Err("feed before prefill".into());
        }
        if self.seq.len() + ids.len() > self.max_context() {
            return Err(format!("context limit of {} tokens reached", self.max_context()));
        }
        self.gpu_feed(ids).await
    }

    /// `ids` after the sequence so far, on the GPU, [`PREFILL_CHUNK`] tokens per pass; if the
    /// GPU fails on one, the CPU reads the rest.
    async fn gpu_feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut logits = None;
        for (i, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
            if !self.on_gpu() {
                return self.feed(&ids[i * PREFILL_CHUNK..]);
            }
            logits = Some(self.gpu_forward(chunk.to_vec()).await?);
        }
        logits.ok_or_else(|| "feed of no tokens".to_string())
    }

    /// `ids` after the sequence so far, on the GPU; on a GPU error, the CPU takes over (it
    /// re-reads the whole sequence) and the reason is kept for [`Engine::take_fallback`].
    async fn gpu_forward(&mut self, ids: Vec<u32>) -> Result<Vec<f32>> {
        let g = self.gpu.as_mut().ok_or("this model is not on a GPU")?;
        if self.seq.is_empty() {
            g.model.reset();
        }
        match g.model.forward(&ids, false).await {
            Ok(logits) => {
                self.seq.extend_from_slice(&ids);
                Ok(logits)
            }
            Err(e) => {
                g.active = false;
                self.fallback = Some(format!("the GPU failed ({e}); running on the CPU"));
                let mut all = std::mem::take(&mut self.seq);
                all.extend_from_slice(&ids);
                self.new_cpu_state()?;
                self.feed(&all)
            }
        }
    }

    /// Tokens in the current sequence (including the leading `<|endoftext|>`).
    pub fn context_len(&self) -> usize {
        self.seq.len()
    }

    /// Bytes of decoding state held now: the KV cache grows, the SSM state does not. On the GPU,
    /// the same count for the tokens held (its buffers are allocated ahead).
    pub fn state_bytes(&self) -> usize {
        if self.on_gpu() {
            return self.config.state_bytes(self.seq.len());
        }
        match (&self.decoder, self.decoder_ahead) {
            (Some(d), true) => d.state_bytes(),
            _ => self.state.as_ref().map_or(0, |s| s.bytes()),
        }
    }

    /// Full-sequence logits (L, V) of `[<|endoftext|>] + ids`, without touching the state: the
    /// reference that wasm is compared with natively.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut input = vec![self.eot];
        input.extend_from_slice(ids);
        let x = Tensor::from_slice(&input, (1, input.len()), &Device::Cpu).map_err(err("input"))?;
        let out = self.model.forward(&x).map_err(err("forward"))?;
        out.logits.squeeze(0).and_then(|l| l.to_vec2::<f32>()).map_err(err("logits"))
    }

    /// Greedy continuation of `prompt` for up to `n` tokens (stops at `<|endoftext|>`).
    pub fn greedy(&mut self, prompt: &str, n: usize) -> Result<Vec<u32>> {
        let ids = self.encode(prompt)?;
        let mut logits = self.prefill(&ids)?;
        let mut out = Vec::new();
        while out.len() < n {
            let next = argmax(&logits);
            if next == self.eot {
                break;
            }
            out.push(next);
            logits = self.feed(&[next])?;
        }
        Ok(out)
    }

    pub fn sampler(cfg: SamplingConfig) -> Result<Sampler> {
        cfg.validate()?;
        Ok(Sampler::new(cfg))
    }

    /// Starts answering: prefills `[<|endoftext|>] + prompt`; [`GreedyAnswer::step`] then adds
    /// one token at a time (the worker yields between them, so `abort` gets through).
    pub fn start_answer(&mut self, prompt: &str) -> Result<GreedyAnswer> {
        let ids = self.encode(prompt)?;
        let logits = self.prefill(&ids)?;
        Ok(GreedyAnswer::after_prompt(logits, ids.len() + 1))
    }

    /// [`Engine::start_answer`] on the active backend.
    pub async fn start_answer_async(&mut self, prompt: &str) -> Result<GreedyAnswer> {
        let ids = self.encode(prompt)?;
        let logits = self.prefill_async(&ids).await?;
        Ok(GreedyAnswer::after_prompt(logits, ids.len() + 1))
    }

    /// The greedy answer to `prompt` (a QA or reading prompt), run to its end.
    pub fn answer(&mut self, prompt: &str) -> Result<GreedyAnswer> {
        let mut a = self.start_answer(prompt)?;
        while a.end().is_none() {
            a.step(self)?;
        }
        Ok(a)
    }
}

/// Most tokens of an answer (native-trainer/src/eval.rs `QA_MAX_TOKENS`).
pub const ANSWER_MAX_TOKENS: usize = 24;

/// A greedy answer in progress, decoded exactly as the trainer's evaluation does
/// (native-trainer/src/eval.rs `answer_greedily`): argmax after `[<|endoftext|>] + prompt`,
/// ending at `<|endoftext|>`, at the first newline, after [`ANSWER_MAX_TOKENS`] tokens or at the
/// context limit. The answer is the completion up to its first newline, trimmed.
pub struct GreedyAnswer {
    logits: Vec<f32>, // for the next token
    stream: TextStream,
    completion: String,
    tokens: usize,
    pub prompt_tokens: usize, // including the leading <|endoftext|>
    end: Option<&'static str>,
}

impl GreedyAnswer {
    /// An answer that starts after a prompt of `prompt_tokens` tokens (its leading
    /// `<|endoftext|>` included) whose last logits are `logits`.
    pub fn after_prompt(logits: Vec<f32>, prompt_tokens: usize) -> Self {
        GreedyAnswer {
            logits,
            stream: TextStream::default(),
            completion: String::new(),
            tokens: 0,
            prompt_tokens,
            end: None,
        }
    }

    /// Adds one token (nothing once ended), on the CPU.
    pub fn step(&mut self, engine: &mut Engine) -> Result<()> {
        if let Some(next) = self.advance(engine)? {
            let logits = engine.step(next)?;
            self.logits.clear();
            self.logits.extend_from_slice(logits);
        }
        Ok(())
    }

    /// Adds one token (nothing once ended), on the engine's active backend.
    pub async fn step_async(&mut self, engine: &mut Engine) -> Result<()> {
        if let Some(next) = self.advance(engine)? {
            engine.step_async(next, &mut self.logits).await?;
        }
        Ok(())
    }

    /// Takes the next token into the answer; returns it when it must be fed to the model (the
    /// answer goes on).
    fn advance(&mut self, engine: &Engine) -> Result<Option<u32>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let next = argmax(&self.logits);
        if next == engine.eot() {
            self.end = Some("end_of_text");
            return Ok(None);
        }
        self.completion.push_str(&self.stream.push(engine, next)?);
        self.tokens += 1;
        self.end = if self.completion.contains('\n') {
            Some("newline")
        } else if self.tokens >= ANSWER_MAX_TOKENS {
            Some("max_tokens")
        } else if engine.context_len() + 1 >= engine.max_context() {
            // Feeding it would fill the context: no next token could follow.
            Some("context_limit")
        } else {
            None
        };
        Ok(self.end.is_none().then_some(next))
    }

    /// Why it ended: `end_of_text`, `newline`, `max_tokens`, `context_limit`; `None` while running.
    pub fn end(&self) -> Option<&'static str> {
        self.end
    }

    /// Marks it ended (the worker's `abort`).
    pub fn stop(&mut self, reason: &'static str) {
        self.end.get_or_insert(reason);
    }

    /// The generated text so far.
    pub fn completion(&self) -> &str {
        &self.completion
    }

    /// The answer: the completion up to its first newline, trimmed (`itera_data::prompt::answer_of`).
    pub fn answer(&self) -> &str {
        itera_data::prompt::answer_of(&self.completion)
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// Streams text out of a growing list of token ids: byte-level tokens may end inside a UTF-8
/// character, so only the text up to the last complete character is released.
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize, // bytes of decoded text already released
}

impl TextStream {
    /// Adds a token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, engine: &Engine, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = engine.decode(&self.ids)?;
        let stable = text.trim_end_matches('\u{FFFD}');
        if stable.len() > self.emitted && stable.is_char_boundary(self.emitted) {
            let new = stable[self.emitted..].to_string();
            self.emitted = stable.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }
}

pub use itera_model::energy::{energy_formula, energy_mj_per_token};
