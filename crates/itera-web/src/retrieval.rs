//! Retrieval in the worker: the index an export carries (`manifest.json`'s `retrieval`, files
//! under `index/`), searched for a question, and the prompt that places what it found before
//! the question in the format the model was trained to read (`itera_data::prompt`). No browser
//! API here, so the native tests run the same code.

use crate::engine::Result;
use itera_data::prompt::{qa_prompt, reading_prompt, ReadingConfig, ReadingOrder};
use itera_retrieval::store::INDEX_JSON;
use itera_retrieval::{Error as IndexError, Index};
use serde::{Deserialize, Serialize};

/// `manifest.json`'s `retrieval`: where the index is and how the model reads it
/// (native-trainer/src/export.rs `ManifestRetrieval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrievalSpec {
    pub dir: String,      // folder of the index inside the export, `index`
    pub documents: usize, // documents in the index
    pub k: usize,         // documents placed in the context per question
    pub order: ReadingOrder,
}

impl RetrievalSpec {
    /// The manifest's `retrieval`, checked: `None` when the key is absent (a model trained
    /// without an index), an error when it is there but malformed.
    pub fn from_manifest(manifest: &serde_json::Value) -> Result<Option<RetrievalSpec>> {
        let Some(v) = manifest.get("retrieval").filter(|v| !v.is_null()) else { return Ok(None) };
        let spec: RetrievalSpec =
            serde_json::from_value(v.clone()).map_err(|e| format!("manifest.json: `retrieval`: {e}"))?;
        spec.reading().validate().map_err(|e| format!("manifest.json: `retrieval`: {e}"))?;
        let dir = spec.dir.trim_matches('/');
        if dir.is_empty() || dir.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(format!("manifest.json: `retrieval`: dir {:?} is not a folder inside the export", spec.dir));
        }
        Ok(Some(RetrievalSpec { dir: dir.to_string(), ..spec }))
    }

    pub fn reading(&self) -> ReadingConfig {
        ReadingConfig { k: self.k, order: self.order }
    }

    /// The manifest's name of the index's file `file`: `index/vectors.bin`.
    pub fn path(&self, file: &str) -> String {
        format!("{}/{file}", self.dir)
    }

    /// Whether the manifest's file `name` belongs to the index.
    pub fn holds(&self, name: &str) -> bool {
        name.strip_prefix(&self.dir).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// One retrieved document, as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieved {
    pub doc: usize, // its line in documents.jsonl, 0-based
    pub score: f32, // cosine of the int8 vectors (higher is closer)
    pub text: String,
}

/// A loaded index and the reading format of the model it belongs to.
pub struct Retriever {
    index: Index,
    spec: RetrievalSpec,
}

impl Retriever {
    /// The index from the export's files: `file(name)` gives the bytes of a file the manifest
    /// lists (`index/index.json`, ...) or `None` if it lists no such file. Every file is checked
    /// against `index.json` (length, sha256, values), and the document count against the manifest.
    pub fn load(spec: RetrievalSpec, mut file: impl FnMut(&str) -> Option<Vec<u8>>) -> Result<Retriever> {
        const UNLISTED: &str = "not listed in manifest.json";
        let index_json = file(&spec.path(INDEX_JSON))
            .ok_or_else(|| format!("retrieval index {}: {UNLISTED}", spec.path(INDEX_JSON)))?;
        let index = Index::from_parts(&index_json, |name| {
            file(&spec.path(name)).ok_or_else(|| IndexError::Fetch { file: name.into(), message: UNLISTED.into() })
        })
        .map_err(|e| match e {
            // "retrieval index index/vectors.bin: sha256 mismatch: ..."
            IndexError::Invalid { .. } | IndexError::Fetch { .. } => format!("retrieval index {}/{e}", spec.dir),
            e => format!("retrieval index {}: {e}", spec.dir),
        })?;
        if index.len() != spec.documents {
            return Err(format!(
                "retrieval index {}: holds {} documents, manifest.json says {}",
                spec.dir,
                index.len(),
                spec.documents
            ));
        }
        Ok(Retriever { index, spec })
    }

    pub fn spec(&self) -> &RetrievalSpec {
        &self.spec
    }

    pub fn documents(&self) -> usize {
        self.index.len()
    }

    /// The `k` documents (the model's reading `k`) closest to `question`, best first.
    pub fn retrieve(&self, question: &str) -> Vec<Retrieved> {
        self.index
            .search(question, self.spec.k)
            .into_iter()
            .filter_map(|h| {
                Some(Retrieved { doc: h.doc, score: h.score, text: self.index.document(h.doc)?.to_string() })
            })
            .collect()
    }

    /// The prompt that asks `question` with `docs` in the context, in the model's reading order.
    pub fn prompt(&self, question: &str, docs: &[Retrieved]) -> String {
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        reading_prompt(&texts, question, self.spec.order)
    }
}

/// The prompt for `question`: read with `retrieved` documents (`retriever`'s format), or plain
/// `Q: {question}\nA:` when `retriever` is `None`.
pub fn question_prompt(question: &str, retriever: Option<(&Retriever, &[Retrieved])>) -> String {
    match retriever {
        Some((r, docs)) => r.prompt(question, docs),
        None => qa_prompt(question),
    }
}
