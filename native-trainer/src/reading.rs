//! Reading what was retrieved: in-context retrieval for both models.
//!
//! A question is sent to a retriever; the documents it returns are placed in the model's context
//! before the question, and the model answers from what it reads. The prompt format is
//! `itera_data::prompt`, shared with the page.
//!
//! Training reads with the loss on the answer tokens only: the context is given, not to be
//! predicted, and an answer-only loss is what made reading learnable in the probes (see
//! docs/retrieval.md).

use crate::eval::{answer_greedily, QaResult};
use crate::synthetic::AnswerBatch;
use crate::world::{QaItem, World};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use itera_model::Model;
use itera_retrieval::{Hit, Index};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::Tokenizer;

pub use itera_data::prompt::{completion, reading_prompt as prompt, ReadingConfig, ReadingOrder, MAX_K};

/// An index and how to read from it.
pub struct Reader {
    pub index: Index,
    pub config: ReadingConfig,
}

impl Reader {
    /// Loads the index at `dir` (a named error if it is corrupt) and checks that it was built from
    /// `world`: one document per entity, each its biography.
    pub fn load(dir: &Path, config: ReadingConfig, world: &World) -> Result<Reader> {
        let reader = Reader::open(dir, config)?;
        check_index_matches(&reader.index, world, dir)?;
        Ok(reader)
    }

    /// Loads the index at `dir` (a named error if it is corrupt), whatever it was built from.
    pub fn open(dir: &Path, config: ReadingConfig) -> Result<Reader> {
        config.validate().map_err(anyhow::Error::msg)?;
        let index = Index::load(dir).with_context(|| format!("loading the retrieval index {}", dir.display()))?;
        Ok(Reader { index, config })
    }

    /// The `k` best documents for `question`.
    pub fn retrieve(&self, question: &str) -> Vec<Hit> {
        self.index.search(question, self.config.k)
    }

    /// The prompt that asks `question` with its retrieved documents in the context.
    pub fn prompt(&self, question: &str) -> String {
        self.prompt_with(question, &self.retrieve(question))
    }

    /// The prompt that asks `question` with the documents of `hits` in the context.
    pub fn prompt_with(&self, question: &str, hits: &[Hit]) -> String {
        let docs: Vec<&str> = hits.iter().filter_map(|h| self.index.document(h.doc)).collect();
        prompt(&docs, question, self.config.order)
    }
}

/// An index is read against one world: the same documents in the same order. A mismatch (another
/// seed, another size, another corpus) is named, with the first document that differs.
pub fn check_index_matches(index: &Index, world: &World, dir: &Path) -> Result<()> {
    let (n, want) = (index.len(), world.entities.len());
    let cfg = &world.config;
    if n != want {
        bail!(
            "the retrieval index {} holds {n} documents; the world (entities {want}, seed {}) has {want}: rebuild it with `native-trainer index --world-entities {want} --seed {}`",
            dir.display(),
            cfg.seed,
            cfg.seed
        );
    }
    if let Some(i) = (0..n).find(|&i| index.document(i) != Some(world.biography(i).as_str())) {
        bail!(
            "the retrieval index {} was not built from this world (entities {want}, seed {}): document {i} differs; rebuild it with `native-trainer index --world-entities {want} --seed {}`",
            dir.display(),
            cfg.seed,
            cfg.seed
        );
    }
    Ok(())
}

/// One reading example as tokens: `EOT`, the prompt, then the completion ` {answer}\n`; and the
/// number of tokens before the completion. Prompt and completion are encoded apart, as generation
/// sees them (the prompt is given, the answer is produced token by token).
pub fn example_tokens(tok: &Tokenizer, eot: u32, prompt: &str, answer: &str) -> Result<(Vec<u32>, usize)> {
    let mut ids = vec![eot];
    ids.extend(crate::data::encode(tok, prompt)?);
    let before = ids.len();
    ids.extend(crate::data::encode(tok, &completion(answer))?);
    Ok((ids, before))
}

/// Examples of different lengths as one batch, padded with `pad` after their end (a causal model
/// never reads what follows), with the loss on the completion tokens only: position `p` predicts
/// token `p + 1`.
pub fn answer_batch(examples: &[(Vec<u32>, usize)], pad: u32) -> Result<AnswerBatch> {
    let l = examples.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    if examples.is_empty() || l < 2 {
        bail!("a reading batch needs at least one example of two tokens");
    }
    let mut ids = Vec::with_capacity(examples.len() * l);
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (b, (ex, before)) in examples.iter().enumerate() {
        if *before == 0 || *before >= ex.len() {
            bail!("a reading example needs a prompt and a completion");
        }
        for p in before - 1..ex.len() - 1 {
            positions.push((b * l + p) as u32);
            targets.push(ex[p + 1]);
        }
        ids.extend_from_slice(ex);
        ids.resize((b + 1) * l, pad);
    }
    let p = positions.len();
    Ok(AnswerBatch {
        inputs: Tensor::from_vec(ids, (examples.len(), l), &Device::Cpu)?,
        positions: Tensor::from_vec(positions, p, &Device::Cpu)?,
        targets: Tensor::from_vec(targets, p, &Device::Cpu)?,
    })
}

/// QA exact match with retrieval: each question answered greedily after its retrieved documents.
/// Also returns the recall: the share of questions whose entity's own document was retrieved.
pub fn qa_with_retrieval(
    model: &Model,
    tok: &Tokenizer,
    eot: u32,
    reader: &Reader,
    items: &[QaItem],
) -> Result<(QaResult, f64)> {
    let mut result = QaResult::default();
    let mut found = 0;
    for item in items {
        let hits = reader.retrieve(&item.question);
        found += hits.iter().any(|h| h.doc == item.entity) as usize;
        result.push(item, answer_greedily(model, tok, eot, &reader.prompt_with(&item.question, &hits))?);
    }
    Ok((result, found as f64 / items.len().max(1) as f64))
}

/// Mean loss (nats per token) of each item's completion ` {answer}\n` after the prompt that
/// `prompt_of` gives it: a graded figure beside exact match (how much more likely the right answer
/// becomes with the document in the context), averaged over all answer tokens.
pub fn answer_nll(
    model: &Model,
    tok: &Tokenizer,
    eot: u32,
    items: &[QaItem],
    prompt_of: impl Fn(&QaItem) -> String,
) -> Result<f64> {
    let (mut sum, mut count) = (0.0, 0usize);
    for chunk in items.chunks(16) {
        let examples = chunk
            .iter()
            .map(|item| example_tokens(tok, eot, &prompt_of(item), &item.answer))
            .collect::<Result<Vec<_>>>()?;
        let b = answer_batch(&examples, eot)?;
        let n = b.targets.elem_count();
        let ce = model.loss_at(&b.inputs, &b.positions, &b.targets)?.ce.to_scalar::<f32>()?;
        sum += ce as f64 * n as f64;
        count += n;
    }
    Ok(if count == 0 { f64::NAN } else { sum / count as f64 })
}

/// Figures of a model read with retrieval, on the world it was trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrievalEval {
    pub k: usize,
    pub order: ReadingOrder,
    /// Held-out questions about trained entities: with retrieval, and how often the entity's own
    /// document was among the `k` retrieved.
    pub heldout: QaResult,
    pub heldout_recall: f64,
    /// Questions about unseen entities (never trained on, only indexed): with retrieval, without.
    pub unseen: Option<QaResult>,
    pub unseen_off: Option<QaResult>,
    pub unseen_recall: Option<f64>,
    /// Mean loss of the answer tokens (nats), with retrieval and without: held-out, then unseen.
    #[serde(default)]
    pub heldout_answer_nll: f64,
    #[serde(default)]
    pub heldout_answer_nll_off: f64,
    #[serde(default)]
    pub unseen_answer_nll: Option<f64>,
    #[serde(default)]
    pub unseen_answer_nll_off: Option<f64>,
}

/// `n` of `items`, the same ones on every call: the questions an evaluation asks.
///
/// A seeded uniform sample, not a stride: the world lists questions by entity then attribute,
/// and every `len / n`-th item can land on a single attribute (6000 questions, n = 100: stride
/// 60, every one a birth date; which the figures measured before this fix did).
pub fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    itera_data::rng::Rng::new(QUESTION_SAMPLE_SEED).sample(items, n)
}

/// Seed of the evaluation's question sample.
const QUESTION_SAMPLE_SEED: u64 = 0x0e7a_15a3_b1e5;

/// The questions an evaluation asks of `world`: `n` held-out ones and `n` about the people never
/// trained on, the same on every call (`eval --questions-out` writes them).
pub fn questions(world: &World, n: usize) -> (Vec<QaItem>, Vec<QaItem>) {
    (spread(&world.qa_heldout(), n), spread(&world.qa_unseen(), n))
}

/// World QA as every evaluation asks it: `n` held-out questions without retrieval and, with a
/// `reader`, what [`evaluate`] measures.
pub fn world_qa(
    model: &Model,
    tok: &Tokenizer,
    eot: u32,
    world: &World,
    reader: Option<&Reader>,
    n: usize,
) -> Result<(QaResult, Option<RetrievalEval>)> {
    let qa = crate::eval::qa_accuracy(model, tok, eot, &questions(world, n).0)?;
    let retrieval = reader.map(|r| evaluate(model, tok, eot, r, world, n)).transpose()?;
    Ok((qa, retrieval))
}

/// Retrieval on and off for `n` held-out and `n` unseen questions of `world`.
pub fn evaluate(
    model: &Model,
    tok: &Tokenizer,
    eot: u32,
    reader: &Reader,
    world: &World,
    n: usize,
) -> Result<RetrievalEval> {
    let (heldout_items, unseen_items) = questions(world, n);
    let (heldout, heldout_recall) = qa_with_retrieval(model, tok, eot, reader, &heldout_items)?;
    let with = |item: &QaItem| reader.prompt(&item.question);
    let without = |item: &QaItem| item.prompt();
    let heldout_answer_nll = answer_nll(model, tok, eot, &heldout_items, with)?;
    let heldout_answer_nll_off = answer_nll(model, tok, eot, &heldout_items, without)?;
    let (mut unseen, mut unseen_off, mut unseen_recall) = (None, None, None);
    let (mut unseen_answer_nll, mut unseen_answer_nll_off) = (None, None);
    if !unseen_items.is_empty() {
        let (r, recall) = qa_with_retrieval(model, tok, eot, reader, &unseen_items)?;
        unseen = Some(r);
        unseen_recall = Some(recall);
        unseen_off = Some(crate::eval::qa_accuracy(model, tok, eot, &unseen_items)?);
        unseen_answer_nll = Some(answer_nll(model, tok, eot, &unseen_items, with)?);
        unseen_answer_nll_off = Some(answer_nll(model, tok, eot, &unseen_items, without)?);
    }
    Ok(RetrievalEval {
        k: reader.config.k,
        order: reader.config.order,
        heldout,
        heldout_recall,
        unseen,
        unseen_off,
        unseen_recall,
        heldout_answer_nll,
        heldout_answer_nll_off,
        unseen_answer_nll,
        unseen_answer_nll_off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_batches_put_the_loss_on_the_completion_tokens_only() {
        // Two examples of different lengths: [EOT, prompt...] then the completion.
        let examples = vec![(vec![0, 5, 6, 7, 8, 9], 4), (vec![0, 5, 6, 9], 3)];
        let b = answer_batch(&examples, 0).unwrap();
        assert_eq!(b.inputs.dims(), [2, 6]);
        let inputs: Vec<u32> = b.inputs.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(inputs, [0, 5, 6, 7, 8, 9, 0, 5, 6, 9, 0, 0]);
        // Position p predicts token p + 1: the last prompt position predicts the first answer token.
        let positions: Vec<u32> = b.positions.to_vec1().unwrap();
        let targets: Vec<u32> = b.targets.to_vec1().unwrap();
        assert_eq!(positions, [3, 4, 6 + 2]);
        assert_eq!(targets, [8, 9, 9]);
        assert!(answer_batch(&[(vec![0, 5], 2)], 0).is_err(), "an example without a completion");
        assert!(answer_batch(&[], 0).is_err());
    }
}
