//! One error type for the crate. Every failure to read an index names the file and what is wrong
//! with it, so a browser console or a CLI log says which download to redo or which writer to fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of a saved index (or `index.json` itself) is not what it should be.
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: Problem },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An `EncoderConfig` given to `Index::build` or `Encoder::fit` is out of range.
    #[error("encoder config: {0}")]
    Config(String),
    /// The caller's file source (`Index::from_parts`) could not provide a file, e.g. a failed fetch.
    #[error("{file}: {message}")]
    Fetch { file: String, message: String },
}

impl Error {
    pub(crate) fn invalid(file: &str, problem: Problem) -> Self {
        Error::Invalid { file: file.to_string(), problem }
    }

    /// The problem, when this is an [`Error::Invalid`] (what the tests match on).
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// What is wrong with one file of a saved index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("not an itera-retrieval index (format {found:?}, expected {expected:?})")]
    Format { found: String, expected: &'static str },
    #[error("format version {found}, this build reads version {supported}")]
    FormatVersion { found: u64, supported: u32 },
    #[error("unknown encoder kind {found:?}, this build knows {known:?}")]
    UnknownEncoder { found: String, known: &'static str },
    #[error("encoder config: {0}")]
    Config(String),
    #[error("dims mismatch: index.json says {index}, its encoder config says {encoder}")]
    DimsMismatch { index: usize, encoder: usize },
    #[error("count mismatch: {what}: expected {expected}, found {found}")]
    CountMismatch { what: &'static str, expected: u64, found: u64 },
    #[error("{}: {found} bytes, index.json declares {declared}", if .found < .declared { "truncated" } else { "too long" })]
    Length { declared: u64, found: u64 },
    #[error("sha256 mismatch: index.json declares {declared}, file has {found}")]
    Sha256 { declared: String, found: String },
    #[error("invalid UTF-8 on line {line}")]
    Utf8 { line: usize },
    #[error("missing from index.json's file list")]
    MissingFile,
    #[error("listed in index.json but not part of this format")]
    UnexpectedFile,
    #[error("{0}")]
    Value(String),
}
