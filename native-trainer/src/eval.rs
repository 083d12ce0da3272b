//! Evaluation: loss / perplexity / bits per byte over a token stream, world-QA exact match,
//! per-token scoring of a text, and generation.

use crate::world::QaItem;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use itera_model::sample::{Sampler, SamplingConfig};
use itera_model::{Config, Model};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// Summed next-token loss over windows of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSum {
    pub nll: f64,      // Σ -ln p(token), nats
    pub tokens: usize, // predicted tokens
}

impl LossSum {
    pub fn mean(&self) -> f64 {
        self.nll / self.tokens.max(1) as f64
    }
    pub fn perplexity(&self) -> f64 {
        self.mean().exp()
    }
    /// Bits per byte of the text the predicted tokens cover.
    pub fn bits_per_byte(&self, bytes: usize) -> f64 {
        self.nll / std::f64::consts::LN_2 / bytes.max(1) as f64
    }
}

/// Windows of `seq_len + 1` tokens starting every `seq_len` tokens, so that every token after the
/// first is predicted exactly once. At most `max_windows` (None: all).
pub fn windows(stream_len: usize, seq_len: usize, max_windows: Option<usize>) -> Vec<usize> {
    let mut starts: Vec<usize> = (0..).map(|i| i * seq_len).take_while(|s| s + seq_len < stream_len).collect();
    if let Some(m) = max_windows {
        starts.truncate(m);
    }
    starts
}

/// Mean next-token cross-entropy over the given windows, in batches of `batch`.
pub fn stream_loss(model: &Model, stream: &[u32], seq_len: usize, starts: &[usize], batch: usize) -> Result<LossSum> {
    let mut total = LossSum::default();
    for chunk in starts.chunks(batch.max(1)) {
        let mut ids = Vec::with_capacity(chunk.len() * (seq_len + 1));
        for &s in chunk {
            ids.extend_from_slice(&stream[s..s + seq_len + 1]);
        }
        let data = Tensor::from_vec(ids, (chunk.len(), seq_len + 1), &Device::Cpu)?;
        let (x, y) = (data.narrow(1, 0, seq_len)?, data.narrow(1, 1, seq_len)?);
        let ce = model.loss(&x, &y)?.ce.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let n = chunk.len() * seq_len;
        total.nll += ce * n as f64;
        total.tokens += n;
    }
    Ok(total)
}

/// Log-probabilities of each target under logits.  logits (L, V), targets (L) -> (L)
pub fn target_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    Ok(logp.gather(&idx, 1)?.squeeze(1)?.to_vec1::<f32>()?)
}

/// Longest context a model accepts (the baseline's RoPE tables end; the SSM has no limit).
pub fn max_context(cfg: &Config) -> usize {
    match cfg {
        Config::Baseline(c) => c.max_position_embeddings,
        Config::IteraLite(_) => usize::MAX,
    }
}

/// Per-token scores of a text, as written by `score --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Score {
    pub tokens: Vec<u32>,         // token ids of the text
    pub token_texts: Vec<String>, // each token decoded on its own
    pub logprobs: Vec<f32>,       // ln p(token_i | EOT, token_0..i-1)
    pub nll_mean: f64,            // mean of -logprobs, nats per token
    pub bits_per_byte: f64,       // Σ -logprobs / ln 2 / UTF-8 bytes of the text
}

/// Scores every token of `text`, conditioning the first on the end-of-text token (a document
/// boundary, as in training). Runs through the decoding state in chunks, so the SSM has no length
/// limit; the baseline stops at its `max_position_embeddings`, which is an error here.
pub fn score_text(model: &Model, tok: &Tokenizer, eot: u32, text: &str) -> Result<Score> {
    let ids = crate::data::encode(tok, text)?;
    if ids.is_empty() {
        anyhow::bail!("the text is empty: nothing to score");
    }
    let limit = max_context(&model.config());
    if ids.len() + 1 > limit {
        anyhow::bail!(
            "the text is {} tokens; this model reads at most {} (max_position_embeddings)",
            ids.len(),
            limit - 1
        );
    }
    let mut input = Vec::with_capacity(ids.len());
    input.push(eot);
    input.extend_from_slice(&ids[..ids.len() - 1]);
    let mut state = model.new_state(1)?;
    let mut logprobs = Vec::with_capacity(ids.len());
    const CHUNK: usize = 256;
    for (inp, tgt) in input.chunks(CHUNK).zip(ids.chunks(CHUNK)) {
        let x = Tensor::from_slice(inp, (1, inp.len()), &Device::Cpu)?;
        let logits = model.forward_with_state(&x, &mut state)?.squeeze(0)?; // (L, V)
        logprobs.extend(target_logprobs(&logits, tgt)?);
    }
    let nll: f64 = logprobs.iter().map(|&l| -l as f64).sum();
    let token_texts = ids.iter().map(|&i| crate::data::decode(tok, &[i])).collect::<Result<Vec<_>>>()?;
    Ok(Score {
        nll_mean: nll / ids.len() as f64,
        bits_per_byte: nll / std::f64::consts::LN_2 / text.len() as f64,
        tokens: ids,
        token_texts,
        logprobs,
    })
}

/// Tokens per forward pass when [`generate`] reads its prompt (the page reads by the same).
pub use itera_model::PREFILL_CHUNK;

/// Generates up to `max_new` tokens after `prompt`, calling `on_token` with each; stops early when
/// `on_token` returns false or the context limit is reached. Returns the generated ids.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_new: usize,
    sampling: SamplingConfig,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        anyhow::bail!("generate: the prompt encodes to no tokens");
    }
    sampling.validate().map_err(anyhow::Error::msg)?;
    let limit = max_context(&model.config());
    if prompt.len() >= limit {
        anyhow::bail!(
            "the prompt is {} tokens; this model reads at most {} (its context of {limit} less one for the reply)",
            prompt.len(),
            limit - 1
        );
    }
    let mut sampler = Sampler::new(sampling);
    let mut state = model.new_state(1)?;
    // The prompt PREFILL_CHUNK tokens per pass: the logits of a whole long prompt at once
    // (L × V floats) could exhaust memory, and only the last row is needed.
    let mut logits = None;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        let x = Tensor::from_slice(chunk, (1, chunk.len()), &Device::Cpu)?;
        logits = Some(model.forward_with_state(&x, &mut state)?.squeeze(0)?); // (L, V)
    }
    let mut logits = logits.context("generate: no prompt")?;
    let mut out = Vec::new();
    while out.len() < max_new && state.len() < limit {
        let last = logits.get(logits.dim(0)? - 1)?.to_vec1::<f32>()?;
        let next = sampler.sample(&last);
        out.push(next);
        if !on_token(next)? {
            break;
        }
        let x = Tensor::from_slice(&[next], (1, 1), &Device::Cpu)?;
        logits = model.forward_with_state(&x, &mut state)?.squeeze(0)?;
    }
    Ok(out)
}

/// World-QA exact match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QaResult {
    pub correct: usize,
    pub total: usize,
    pub examples: Vec<QaExample>, // the first few, for a human to look at
    /// [correct, asked] per attribute (`birth_date`, ...): which kinds of question fail.
    #[serde(default)]
    pub by_attribute: std::collections::BTreeMap<String, [usize; 2]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QaExample {
    pub question: String,
    pub expected: String,
    pub answer: String,
}

impl QaResult {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// "birth_date 50/50, birth_city 12/50, ..." in attribute order of the map.
    pub fn by_attribute_line(&self) -> String {
        let parts: Vec<String> = self.by_attribute.iter().map(|(a, [ok, n])| format!("{a} {ok}/{n}")).collect();
        parts.join(", ")
    }
}

/// Longest answer generated per question, in tokens.
const QA_MAX_TOKENS: usize = 24;

/// The greedy completion of `prompt` (after `EOT`), up to the first newline, trimmed.
pub fn answer_greedily(model: &Model, tok: &Tokenizer, eot: u32, prompt: &str) -> Result<String> {
    let greedy = SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
    let mut ids = vec![eot];
    ids.extend(crate::data::encode(tok, prompt)?);
    let mut text = String::new();
    generate(model, &ids, QA_MAX_TOKENS, greedy, |id| {
        if id == eot {
            return Ok(false);
        }
        text.push_str(&crate::data::decode(tok, &[id])?);
        Ok(!text.contains('\n'))
    })?;
    Ok(itera_data::prompt::answer_of(&text).to_string())
}

impl QaResult {
    /// Counts one answer against its item (keeping the first few as examples).
    pub fn push(&mut self, item: &QaItem, answer: String) {
        let ok = answer == item.answer;
        self.correct += ok as usize;
        self.total += 1;
        let tally = self.by_attribute.entry(item.attribute.clone()).or_default();
        tally[0] += ok as usize;
        tally[1] += 1;
        if self.examples.len() < 5 {
            self.examples.push(QaExample { question: item.question.clone(), expected: item.answer.clone(), answer });
        }
    }
}

/// Answers each question greedily after `EOT Q: <question>\nA:` and compares the text up to the
/// first newline, trimmed, with the expected answer.
pub fn qa_accuracy(model: &Model, tok: &Tokenizer, eot: u32, items: &[QaItem]) -> Result<QaResult> {
    let mut result = QaResult::default();
    for item in items {
        let answer = answer_greedily(model, tok, eot, &item.prompt())
            .with_context(|| format!("answering {:?}", item.question))?;
        result.push(item, answer);
    }
    Ok(result)
}
