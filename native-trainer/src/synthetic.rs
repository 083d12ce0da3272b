//! The Mamba paper's two synthetic tasks (Gu & Dao 2023, "Mamba", arXiv 2312.00752, §4.1 and
//! App. E.1), set up the way the paper trains them: a vocabulary of 16, the paper's lengths, a
//! fresh batch drawn every step, the loss on the answers alone.
//!
//! - **Induction heads** (§4.1.2; the task of H3, after Olsson et al. 2022): 256 tokens drawn
//!   uniformly from 16 symbols, a trigger `^` at one random position followed by a random symbol,
//!   and the trigger again as the last token: the model must answer the symbol that followed the
//!   first trigger. Scored at the train length and at 2×, 4× and 16× it (the paper's extrapolation).
//! - **Selective copying** (§4.1.1; the "variable" copying task of S4's `copying.py`): 4096
//!   positions, 16 of them (random, in order) holding data symbols and the rest the noise token
//!   `.`; then 16 markers `#`. At the i-th marker the model must answer the i-th data symbol. The
//!   16 tokens are S4's alphabet `A = 16`: 14 data symbols, the noise and the marker.
//!
//! Unlike the project's own tasks (`tasks.rs`), these are not text: the tokenizer is a fixed
//! word-level vocabulary (`<|endoftext|>` at id 0, as in every tokenizer of the project, then the
//! task's 16 or 17 tokens), an instance is exactly one training sequence, and only its answer
//! positions carry a loss. Chance is 1/16 (induction) and 1/14 (copying).

use crate::data::EOT;
use crate::tasks::TaskResult;
use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor, D};
use itera_model::init::Rng;
use itera_model::Model;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyntheticTask {
    InductionHeads,
    SelectiveCopying,
}

/// Symbols of the induction task, and its trigger.
const INDUCTION_SYMBOLS: usize = 16;
const TRIGGER: &str = "^";
/// Data symbols of the copying task (S4's alphabet of 16 less noise and marker), noise, marker.
const COPY_SYMBOLS: usize = 14;
const NOISE: &str = ".";
const MARKER: &str = "#";
/// Data tokens to copy (the paper: 16).
pub const COPY_TOKENS: usize = 16;

/// Seed salts of the training, validation and evaluation streams (never shared).
pub const TRAIN_SALT: u64 = 0x5e1e_c7ed_0000_0001;
pub const VALID_SALT: u64 = 0x5e1e_c7ed_0000_0002;
pub const EVAL_SALT: u64 = 0x5e1e_c7ed_0000_0003;

impl SyntheticTask {
    pub const ALL: [SyntheticTask; 2] = [SyntheticTask::InductionHeads, SyntheticTask::SelectiveCopying];

    pub fn name(self) -> &'static str {
        match self {
            SyntheticTask::InductionHeads => "induction-heads",
            SyntheticTask::SelectiveCopying => "selective-copying",
        }
    }

    /// The paper's training length: tokens per sequence (induction), positions before the
    /// markers (copying).
    pub fn train_len(self) -> usize {
        match self {
            SyntheticTask::InductionHeads => 256,
            SyntheticTask::SelectiveCopying => 4096,
        }
    }

    /// Multiples of the training length at which the model is scored: the paper's
    /// extrapolation test (induction heads; copying the same, so that a model trained short can
    /// be scored at the paper's 4096).
    pub const EVAL_MULTIPLES: [usize; 4] = [1, 2, 4, 16];

    /// Tokens of a model input for a sequence of length `len` (copying appends the markers).
    pub fn input_len(self, len: usize) -> usize {
        match self {
            SyntheticTask::InductionHeads => len,
            SyntheticTask::SelectiveCopying => len + COPY_TOKENS,
        }
    }

    /// The shortest length an instance can have.
    pub fn min_len(self) -> usize {
        match self {
            SyntheticTask::InductionHeads => 3,
            SyntheticTask::SelectiveCopying => COPY_TOKENS,
        }
    }

    /// The vocabulary in id order: `<|endoftext|>` (id 0, never inside a sequence), then the
    /// data symbols `a`, `b`, ..., then the task's special tokens.
    pub fn vocabulary(self) -> Vec<String> {
        let letters = |n: usize| (0..n).map(|i| ((b'a' + i as u8) as char).to_string());
        let mut v = vec![EOT.to_string()];
        match self {
            SyntheticTask::InductionHeads => {
                v.extend(letters(INDUCTION_SYMBOLS));
                v.push(TRIGGER.into());
            }
            SyntheticTask::SelectiveCopying => {
                v.extend(letters(COPY_SYMBOLS));
                v.push(NOISE.into());
                v.push(MARKER.into());
            }
        }
        v
    }

    /// Answer choices: the symbols a right answer is drawn from (chance = 1 / this).
    pub fn symbols(self) -> usize {
        match self {
            SyntheticTask::InductionHeads => INDUCTION_SYMBOLS,
            SyntheticTask::SelectiveCopying => COPY_SYMBOLS,
        }
    }

    /// The task's fixed word-level tokenizer: tokens are separated by spaces in text form.
    pub fn tokenizer(self) -> Result<Tokenizer> {
        let vocab: HashMap<String, u32> =
            self.vocabulary().into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        // No unknown token: a word outside the vocabulary is an encoding error, not a silent id.
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("<unk>".into())
            .build()
            .map_err(|e| anyhow!("building the {self} vocabulary: {e}"))?;
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(WhitespaceSplit));
        tok.add_special_tokens(vec![AddedToken::from(EOT, true)])
            .map_err(|e| anyhow!("marking {EOT} special in the {self} vocabulary: {e}"))?;
        Ok(tok)
    }

    /// One instance of length `len` (see the module docs); `len` must be at least
    /// [`Self::min_len`].
    pub fn instance(self, len: usize, rng: &mut Rng) -> Sequence {
        let len = len.max(self.min_len());
        match self {
            SyntheticTask::InductionHeads => {
                let (sym0, trigger) = (1, 1 + INDUCTION_SYMBOLS as u32);
                let mut tokens: Vec<u32> = (0..len).map(|_| sym0 + rng.below(INDUCTION_SYMBOLS) as u32).collect();
                // The first trigger anywhere before the last two positions, its symbol after it.
                let at = rng.below(len - 2);
                let memory = sym0 + rng.below(INDUCTION_SYMBOLS) as u32;
                tokens[at] = trigger;
                tokens[at + 1] = memory;
                tokens[len - 1] = trigger;
                Sequence { tokens, answers: vec![(len - 1, memory)] }
            }
            SyntheticTask::SelectiveCopying => {
                let (sym0, noise, marker) = (1, 1 + COPY_SYMBOLS as u32, 2 + COPY_SYMBOLS as u32);
                // torch.randperm(L + M)[:M].sort(): distinct positions, in order.
                let mut slots: Vec<usize> = (0..len).collect();
                for i in 0..COPY_TOKENS {
                    let j = i + rng.below(len - i);
                    slots.swap(i, j);
                }
                slots.truncate(COPY_TOKENS);
                slots.sort_unstable();
                let mut tokens = vec![noise; len + COPY_TOKENS];
                let mut answers = Vec::with_capacity(COPY_TOKENS);
                for (i, &s) in slots.iter().enumerate() {
                    let d = sym0 + rng.below(COPY_SYMBOLS) as u32;
                    tokens[s] = d;
                    tokens[len + i] = marker;
                    answers.push((len + i, d));
                }
                Sequence { tokens, answers }
            }
        }
    }

    /// `n` instances of length `len` from the stream seeded by `seed`.
    pub fn instances(self, n: usize, len: usize, seed: u64) -> Vec<Sequence> {
        let mut rng = Rng::new(seed ^ len as u64);
        (0..n).map(|_| self.instance(len, &mut rng)).collect()
    }
}

impl fmt::Display for SyntheticTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SyntheticTask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SyntheticTask::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| format!("unknown synthetic task `{s}`"))
    }
}

/// One model input and the answers it is scored on.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    /// (position, token): the model's output at `position` must be `token`.
    pub answers: Vec<(usize, u32)>,
}

impl Sequence {
    /// The text form: tokens separated by spaces (what the tokenizer encodes back to `tokens`).
    pub fn text(&self, tok: &Tokenizer) -> Result<String> {
        let words = self
            .tokens
            .iter()
            .map(|&id| tok.id_to_token(id).ok_or_else(|| anyhow!("token id {id} is not in the vocabulary")))
            .collect::<Result<Vec<_>>>()?;
        Ok(words.join(" "))
    }
}

/// A training batch of equal-length sequences: inputs (B, L), the flat positions `b * L + t` of
/// the answers (P,) and their tokens (P,).
pub struct AnswerBatch {
    pub inputs: Tensor,
    pub positions: Tensor,
    pub targets: Tensor,
}

pub fn batch(seqs: &[Sequence]) -> Result<AnswerBatch> {
    let l = seqs.first().map_or(0, |s| s.tokens.len());
    if seqs.iter().any(|s| s.tokens.len() != l) {
        anyhow::bail!("a batch of synthetic sequences must have one length");
    }
    let mut ids = Vec::with_capacity(seqs.len() * l);
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (b, s) in seqs.iter().enumerate() {
        ids.extend_from_slice(&s.tokens);
        for &(p, t) in &s.answers {
            positions.push((b * l + p) as u32);
            targets.push(t);
        }
    }
    let p = positions.len();
    Ok(AnswerBatch {
        inputs: Tensor::from_vec(ids, (seqs.len(), l), &Device::Cpu)?,
        positions: Tensor::from_vec(positions, p, &Device::Cpu)?,
        targets: Tensor::from_vec(targets, p, &Device::Cpu)?,
    })
}

/// Mean answer loss (nats) and the exact-match result of `seqs`, forwarded `batch_size` at a
/// time. Sequences of one call must share a length.
pub fn score(model: &Model, task: SyntheticTask, seqs: &[Sequence], batch_size: usize) -> Result<(f64, TaskResult)> {
    let len = seqs.first().map_or(0, |s| s.tokens.len());
    // `length` is the model input's; `evaluate` replaces it with the task's own length.
    let mut r = TaskResult { task: task.name().into(), length: Some(len), ..Default::default() };
    let mut nll = 0.0;
    for chunk in seqs.chunks(batch_size.max(1)) {
        let b = batch(chunk)?;
        let logits = model.forward(&b.inputs).with_context(|| format!("scoring {task} at length {len}"))?.logits;
        let (bsz, l, v) = logits.dims3()?;
        let picked = logits.reshape((bsz * l, v))?.index_select(&b.positions, 0)?; // (P, V)
        nll +=
            candle_nn::loss::cross_entropy(&picked, &b.targets)?.to_scalar::<f32>()? as f64 * b.targets.dim(0)? as f64;
        let predicted: Vec<u32> = picked.argmax(D::Minus1)?.to_vec1()?;
        let mut k = 0;
        for s in chunk {
            let mut all_right = true;
            for &(_, t) in &s.answers {
                let right = predicted[k] == t;
                r.answers_correct += right as usize;
                all_right &= right;
                k += 1;
            }
            r.answers += s.answers.len();
            r.instances_correct += all_right as usize;
            r.instances += 1;
        }
    }
    Ok((nll / r.answers.max(1) as f64, r))
}

/// Tokens scored at one evaluation length at most: `n` instances, fewer where they are long.
const EVAL_TOKENS: usize = 1 << 22;

/// Held-out exact match at each of the task's evaluation lengths (`train_len` × the multiples)
/// that the model accepts (the baseline ends at its position table), `n` instances each (at
/// least 16, fewer than `n` past 4M tokens), from the evaluation stream of `seed`.
pub fn evaluate(model: &Model, task: SyntheticTask, train_len: usize, n: usize, seed: u64) -> Result<Vec<TaskResult>> {
    let max_len = crate::eval::max_context(&model.config());
    SyntheticTask::EVAL_MULTIPLES
        .iter()
        .map(|&k| train_len * k)
        .filter(|&len| task.input_len(len) <= max_len)
        .map(|len| {
            let n = n.min((EVAL_TOKENS / task.input_len(len)).max(16));
            let seqs = task.instances(n, len, seed ^ EVAL_SALT);
            // Fewer long sequences per forward: the baseline's attention scores take B·H·L² floats
            // (at L = 4096 and batch 16, over 20 GB across its layers).
            let batch = ((1usize << 25) / task.input_len(len).pow(2)).clamp(1, 16);
            let mut r = score(model, task, &seqs, batch)?.1;
            r.length = Some(len); // the task's length (for copying: before the markers)
            Ok(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn induction_answer_is_the_symbol_after_the_first_trigger() {
        let task = SyntheticTask::InductionHeads;
        let trigger = task.vocabulary().iter().position(|t| t == TRIGGER).unwrap() as u32;
        for len in [3, 4, 256, 1024] {
            for s in task.instances(200, len, 9) {
                assert_eq!(s.tokens.len(), len);
                assert_eq!(s.answers.len(), 1);
                let (p, m) = s.answers[0];
                assert_eq!(p, len - 1);
                assert_eq!(s.tokens[p], trigger);
                let first = s.tokens.iter().position(|&t| t == trigger).unwrap();
                assert!(first < len - 2, "the first trigger leaves room for its symbol");
                assert_eq!(s.tokens.iter().filter(|&&t| t == trigger).count(), 2, "exactly two triggers");
                assert_eq!(s.tokens[first + 1], m);
                assert!(s.tokens.iter().all(|&t| (1..=17).contains(&t)), "no end-of-text inside");
            }
        }
    }

    #[test]
    fn copying_answers_are_the_data_symbols_in_order() {
        let task = SyntheticTask::SelectiveCopying;
        let (noise, marker) = (15, 16);
        for len in [16, 100, 4096] {
            for s in task.instances(50, len, 3) {
                assert_eq!(s.tokens.len(), len + COPY_TOKENS);
                let data: Vec<u32> = s.tokens[..len].iter().copied().filter(|&t| t != noise).collect();
                assert_eq!(data.len(), COPY_TOKENS);
                assert!(data.iter().all(|t| (1..=14).contains(t)));
                assert!(s.tokens[len..].iter().all(|&t| t == marker));
                let want: Vec<(usize, u32)> = data.iter().enumerate().map(|(i, &d)| (len + i, d)).collect();
                assert_eq!(s.answers, want);
            }
        }
    }

    #[test]
    fn the_vocabulary_has_sixteen_task_tokens_and_round_trips_through_the_tokenizer() {
        for task in SyntheticTask::ALL {
            let v = task.vocabulary();
            assert_eq!(v[0], EOT);
            let task_tokens = v.len() - 1;
            match task {
                SyntheticTask::InductionHeads => assert_eq!(task_tokens, 17, "16 symbols + the trigger"),
                SyntheticTask::SelectiveCopying => assert_eq!(task_tokens, 16, "S4's alphabet of 16"),
            }
            let tok = task.tokenizer().unwrap();
            assert_eq!(tok.get_vocab_size(true), v.len());
            assert_eq!(crate::data::eot_id(&tok).unwrap(), 0);
            let s = task.instance(64, &mut Rng::new(1));
            let text = s.text(&tok).unwrap();
            assert_eq!(crate::data::encode(&tok, &text).unwrap(), s.tokens);
            assert!(crate::data::encode(&tok, "a zz").is_err(), "an unknown word is an error");
            // The saved tokenizer.json loads back to the same ids.
            let back = crate::data::tokenizer_from_bytes(tok.to_string(false).unwrap().as_bytes()).unwrap();
            assert_eq!(crate::data::encode(&back, &text).unwrap(), s.tokens);
        }
    }

    /// Scored at the training length and its multiples, labelled with the task's length (for
    /// copying, the positions before the markers); the baseline only where its positions reach.
    #[test]
    fn evaluation_lengths_are_the_multiples_the_model_accepts() {
        use itera_model::{Config, ModelKind, Preset};
        let task = SyntheticTask::SelectiveCopying;
        let vocab = task.vocabulary().len();
        let lengths = |kind, train_len| {
            let cfg = Config::preset(kind, Preset::Tiny, vocab);
            let (_, model) = Model::init(&cfg, 1, &Device::Cpu).unwrap();
            let r = evaluate(&model, task, train_len, 2, 0).unwrap();
            assert!(r.iter().all(|t| t.instances == 2 && t.answers == 2 * COPY_TOKENS));
            r.iter().map(|t| t.length.unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(lengths(ModelKind::IteraLite, 16), [16, 32, 64, 256]);
        // 16 × 300 + 16 markers is past the baseline's 4096 positions; 4 × 300 + 16 is not.
        assert_eq!(lengths(ModelKind::Baseline, 300), [300, 600, 1200]);
    }

    #[test]
    fn streams_are_deterministic_and_differ_by_seed_and_length() {
        let t = SyntheticTask::InductionHeads;
        assert_eq!(t.instances(5, 256, 1), t.instances(5, 256, 1));
        assert_ne!(t.instances(5, 256, 1), t.instances(5, 256, 2));
        assert_ne!(t.instances(5, 256, 1)[0].tokens[..100], t.instances(5, 512, 1)[0].tokens[..100]);
    }
}
