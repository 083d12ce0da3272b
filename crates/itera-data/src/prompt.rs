//! Prompt formats: one definition for training, evaluation, `generate` and the page.
//!
//! - a question: `Q: {question}\nA:`, its training text `Q: {question}\nA: {answer}\n`;
//! - a question with retrieved documents in the context (in-context retrieval):
//!   - document-first: `{doc}…Q: {question}\nA:`
//!   - question-first ("Just Read Twice", arXiv 2407.05483): `Q: {question}\n{doc}…Q: {question}\nA:`,
//!     so a recurrent model knows what to look for while it reads.
//!
//! Every document ends with a newline (a world biography does; one is added otherwise), and the
//! answer follows as ` {answer}\n`, exactly as without retrieval. The model's answer is its
//! completion up to the first newline, trimmed.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The QA prompt: `Q: {question}\nA:`.
pub fn qa_prompt(question: &str) -> String {
    format!("Q: {question}\nA:")
}

/// The completion a correct answer is trained as: ` {answer}\n`.
pub fn completion(answer: &str) -> String {
    format!(" {answer}\n")
}

/// The answer in a completion: the text up to the first newline, trimmed.
pub fn answer_of(completion: &str) -> &str {
    completion.split('\n').next().unwrap_or("").trim()
}

/// Where the question goes relative to the retrieved documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReadingOrder {
    /// The question before the documents and again after them.
    #[default]
    QuestionFirst,
    /// The documents, then the question.
    DocumentFirst,
}

impl ReadingOrder {
    pub fn name(self) -> &'static str {
        match self {
            ReadingOrder::QuestionFirst => "question-first",
            ReadingOrder::DocumentFirst => "document-first",
        }
    }
}

impl fmt::Display for ReadingOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReadingOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "question-first" => Ok(ReadingOrder::QuestionFirst),
            "document-first" => Ok(ReadingOrder::DocumentFirst),
            _ => Err(format!("unknown reading order `{s}` (expected `question-first` or `document-first`)")),
        }
    }
}

/// The prompt that asks `question` with `docs` in the context; the model's completion is the answer
/// up to the first newline. With no documents it is the plain QA prompt.
pub fn reading_prompt(docs: &[&str], question: &str, order: ReadingOrder) -> String {
    let mut p = String::new();
    if order == ReadingOrder::QuestionFirst && !docs.is_empty() {
        p.push_str("Q: ");
        p.push_str(question);
        p.push('\n');
    }
    for d in docs {
        p.push_str(d);
        if !d.ends_with('\n') {
            p.push('\n');
        }
    }
    p.push_str(&qa_prompt(question));
    p
}

/// The most documents one prompt holds (a world biography is ~70 tokens).
pub const MAX_K: usize = 8;

/// How a model reads retrieved documents: how many, in which order. Stored in checkpoints (a
/// resume must match them) and in the export's manifest (the page reads the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingConfig {
    /// Documents placed in the context per question.
    pub k: usize,
    pub order: ReadingOrder,
}

impl Default for ReadingConfig {
    fn default() -> Self {
        Self { k: 1, order: ReadingOrder::QuestionFirst }
    }
}

impl ReadingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_K).contains(&self.k) {
            return Err(format!("the documents read per question (k) must be in 1..={MAX_K}, got {}", self.k));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_the_qa_format() {
        let q = "Where was Ana Bo born?";
        assert_eq!(qa_prompt(q), "Q: Where was Ana Bo born?\nA:");
        assert_eq!(reading_prompt(&[], q, ReadingOrder::QuestionFirst), qa_prompt(q));
        assert_eq!(
            reading_prompt(&["Ana Bo was born in Ri.\n", "X"], q, ReadingOrder::DocumentFirst),
            "Ana Bo was born in Ri.\nX\nQ: Where was Ana Bo born?\nA:"
        );
        assert_eq!(
            reading_prompt(&["Ana Bo was born in Ri.\n"], q, ReadingOrder::QuestionFirst),
            "Q: Where was Ana Bo born?\nAna Bo was born in Ri.\nQ: Where was Ana Bo born?\nA:"
        );
        assert_eq!(completion("Ri"), " Ri\n");
        assert_eq!(answer_of(" Ri\nQ: more"), "Ri");
        assert_eq!(answer_of("  "), "");
        for o in [ReadingOrder::QuestionFirst, ReadingOrder::DocumentFirst] {
            assert_eq!(o.to_string().parse::<ReadingOrder>().unwrap(), o);
        }
        assert!("both".parse::<ReadingOrder>().unwrap_err().contains("question-first"));
        assert!(ReadingConfig { k: 0, order: ReadingOrder::QuestionFirst }.validate().is_err());
        assert!(ReadingConfig { k: MAX_K + 1, ..Default::default() }.validate().is_err());
        assert!(ReadingConfig::default().validate().is_ok());
    }
}
