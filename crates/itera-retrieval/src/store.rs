//! A saved index: one folder, read natively from disk or in the browser from fetched bytes.
//!
//! ```text
//! index.json       format + version, encoder config, dims, docs, and {bytes, sha256} per file
//! vectors.bin      i8[docs][dims], row-major
//! scales.bin       f32 little-endian [docs]: vector j ≈ scales[j] · vectors[j]
//! idf.bin          u8[encoder.idf_buckets], IDF in sixteenths (only when IDF is on)
//! documents.jsonl  one JSON string per line, document j on line j + 1
//! ```
//! Files are written atomically (temp file in the folder, fsync, rename), `index.json` last, so
//! a reader sees either the old index or the new one, and a folder caught between the two fails
//! its sha256 check instead of serving mismatched vectors. Reading checks everything that
//! `index.json` promises before trusting it: lengths are compared with `docs × dims` before any
//! file is decoded, and nothing is allocated from a count field alone.

use crate::encoder::{Encoder, EncoderConfig, ENCODER_KIND};
use crate::error::{Error, Problem, Result};
use crate::index::Index;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "itera-retrieval-index";
pub const FORMAT_VERSION: u32 = 1;
pub const INDEX_JSON: &str = "index.json";
pub const VECTORS_BIN: &str = "vectors.bin";
pub const SCALES_BIN: &str = "scales.bin";
pub const IDF_BIN: &str = "idf.bin";
pub const DOCUMENTS_JSONL: &str = "documents.jsonl";

/// `index.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexManifest {
    pub format: String,      // FORMAT
    pub format_version: u32, // FORMAT_VERSION
    pub encoder: EncoderConfig,
    pub dims: usize,                        // = encoder.dims, checked
    pub docs: usize,                        // document count
    pub files: BTreeMap<String, FileEntry>, // every other file of the folder
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub sha256: String, // lowercase hex
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl IndexManifest {
    /// Parses and checks `index.json` on its own: format, version, encoder kind and config,
    /// dims, the file list, and that each binary file's declared length fits `docs` and `dims`.
    pub fn parse(index_json: &[u8]) -> Result<Self> {
        let bad = |p| Error::invalid(INDEX_JSON, p);
        let json = |e: serde_json::Error| bad(Problem::Json(e.to_string()));
        // Format, version and encoder kind first, from the untyped value: a newer file may not
        // fit this build's struct, and "version 2" says more than "missing field".
        let v: serde_json::Value = serde_json::from_slice(index_json).map_err(json)?;
        let format = v.get("format").and_then(|f| f.as_str()).unwrap_or_default();
        if format != FORMAT {
            return Err(bad(Problem::Format { found: format.to_string(), expected: FORMAT }));
        }
        match v.get("format_version").and_then(|f| f.as_u64()) {
            Some(n) if n == u64::from(FORMAT_VERSION) => {}
            n => return Err(bad(Problem::FormatVersion { found: n.unwrap_or(0), supported: FORMAT_VERSION })),
        }
        if let Some(kind) = v.pointer("/encoder/kind").and_then(|k| k.as_str()) {
            if kind != ENCODER_KIND {
                return Err(bad(Problem::UnknownEncoder { found: kind.to_string(), known: ENCODER_KIND }));
            }
        }
        let m: IndexManifest = serde_json::from_value(v).map_err(json)?;
        m.encoder.validate().map_err(|e| bad(Problem::Config(e)))?;
        if m.dims != m.encoder.dims {
            return Err(bad(Problem::DimsMismatch { index: m.dims, encoder: m.encoder.dims }));
        }
        let names = m.expected_files();
        for name in &names {
            if !m.files.contains_key(*name) {
                return Err(Error::invalid(name, Problem::MissingFile));
            }
        }
        if let Some(extra) = m.files.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(Error::invalid(extra, Problem::UnexpectedFile));
        }
        for (name, f) in &m.files {
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
                return Err(bad(Problem::Value(format!(
                    "sha256 of {name} is {:?}, not 64 lowercase hex digits",
                    f.sha256
                ))));
            }
        }
        let (docs, dims) = (m.docs as u64, m.dims as u64);
        let fixed = [
            (VECTORS_BIN, "docs × dims bytes vs the listed length", docs.checked_mul(dims)),
            (SCALES_BIN, "docs × 4 bytes vs the listed length", docs.checked_mul(4)),
            (IDF_BIN, "idf_buckets bytes vs the listed length", Some(m.encoder.idf_buckets as u64)),
        ];
        for (name, what, expected) in fixed {
            if let (Some(f), Some(expected)) = (m.files.get(name), expected) {
                if f.bytes != expected {
                    return Err(Error::invalid(name, Problem::CountMismatch { what, expected, found: f.bytes }));
                }
            } else if m.files.contains_key(name) {
                return Err(bad(Problem::Value(format!("docs × dims overflows for {name}"))));
            }
        }
        Ok(m)
    }

    /// The files to fetch besides `index.json`, in the order [`Index::from_parts`] asks for them.
    pub fn expected_files(&self) -> Vec<&'static str> {
        let mut names = vec![VECTORS_BIN, SCALES_BIN];
        if self.encoder.idf_buckets > 0 {
            names.push(IDF_BIN);
        }
        names.push(DOCUMENTS_JSONL);
        names
    }

    /// Total bytes of the listed files (for a download progress bar).
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|f| f.bytes).sum()
    }
}

/// Checks a fetched file against its `index.json` entry: length first (so a cut-off download
/// says "truncated"), then sha256.
fn check_file(name: &str, entry: &FileEntry, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != entry.bytes {
        return Err(Error::invalid(name, Problem::Length { declared: entry.bytes, found: bytes.len() as u64 }));
    }
    let found = sha256_hex(bytes);
    if found != entry.sha256 {
        return Err(Error::invalid(name, Problem::Sha256 { declared: entry.sha256.clone(), found }));
    }
    Ok(())
}

/// Little-endian f32s, each finite and ≥ 0 (length already checked as a multiple of 4).
fn parse_scales(name: &str, what: &str, bytes: &[u8]) -> Result<Vec<f32>> {
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
        return Err(Error::invalid(name, Problem::Value(format!("{what} {i} is {v}, not a finite value ≥ 0"))));
    }
    Ok(values)
}

/// `documents.jsonl`: one JSON string per line, exactly `docs` lines.
fn parse_documents(bytes: &[u8], docs: usize) -> Result<Vec<String>> {
    let bad = |p| Error::invalid(DOCUMENTS_JSONL, p);
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut out = Vec::new(); // grows with the file, never from `docs`
    if !bytes.is_empty() {
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            let text = std::str::from_utf8(line).map_err(|_| bad(Problem::Utf8 { line: i + 1 }))?;
            let doc: String =
                serde_json::from_str(text).map_err(|e| bad(Problem::Json(format!("line {}: {e}", i + 1))))?;
            out.push(doc);
        }
    }
    if out.len() != docs {
        return Err(bad(Problem::CountMismatch {
            what: "document lines vs docs",
            expected: docs as u64,
            found: out.len() as u64,
        }));
    }
    Ok(out)
}

impl Index {
    /// The folder's contents: `index.json`, then each other file with its name.
    pub fn to_parts(&self) -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
        let mut parts = vec![
            (VECTORS_BIN, self.vectors.iter().map(|&v| v as u8).collect()),
            (SCALES_BIN, self.scales.iter().flat_map(|s| s.to_le_bytes()).collect()),
        ];
        if let Some(idf) = self.encoder.idf() {
            parts.push((IDF_BIN, idf.to_vec()));
        }
        let mut docs = Vec::new();
        for d in &self.documents {
            serde_json::to_writer(&mut docs, d).expect("a String always serialises");
            docs.push(b'\n');
        }
        parts.push((DOCUMENTS_JSONL, docs));
        let manifest = IndexManifest {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            encoder: self.encoder.config().clone(),
            dims: self.dims(),
            docs: self.len(),
            files: parts
                .iter()
                .map(|(name, b)| (name.to_string(), FileEntry { bytes: b.len() as u64, sha256: sha256_hex(b) }))
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&manifest).expect("the manifest always serialises");
        json.push(b'\n');
        (json, parts)
    }

    /// sha256 (hex) of `vectors.bin` followed by `scales.bin`: changes whenever any stored vector
    /// does, and is the same on every platform (the golden tests compare it natively and in wasm).
    pub fn checksum(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.vectors.iter().map(|&v| v as u8).collect::<Vec<u8>>());
        for s in &self.scales {
            h.update(s.to_le_bytes());
        }
        format!("{:x}", h.finalize())
    }

    /// Writes the index into `dir` (created if missing), each file atomically, `index.json` last.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let (json, parts) = self.to_parts();
        for (name, bytes) in &parts {
            write_atomic(dir, name, bytes)?;
        }
        write_atomic(dir, INDEX_JSON, &json)?;
        // The renames are durable only once the folder itself is synced (ext4, xfs).
        #[cfg(unix)]
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        Ok(())
    }

    /// Reads an index that [`Index::save`] wrote.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| Error::Io { path, source })
        };
        Self::from_parts(&read(INDEX_JSON)?, read)
    }

    /// An index from `index.json`'s bytes and a source of the other files by name (the browser
    /// fetches them; see [`IndexManifest::expected_files`]). Every file is checked against
    /// `index.json` (length, sha256) and decoded with its values checked.
    pub fn from_parts(index_json: &[u8], mut file: impl FnMut(&str) -> Result<Vec<u8>>) -> Result<Self> {
        let m = IndexManifest::parse(index_json)?;
        let mut fetch = |name: &str| -> Result<Vec<u8>> {
            let bytes = file(name)?;
            check_file(name, &m.files[name], &bytes)?;
            Ok(bytes)
        };
        let vectors: Vec<i8> = fetch(VECTORS_BIN)?.into_iter().map(|b| b as i8).collect();
        let scales = parse_scales(SCALES_BIN, "scale of document", &fetch(SCALES_BIN)?)?;
        let idf = match m.encoder.idf_buckets {
            0 => None,
            _ => Some(fetch(IDF_BIN)?),
        };
        let documents = parse_documents(&fetch(DOCUMENTS_JSONL)?, m.docs)?;
        // The lengths and values were checked above, so these only fail on a bug here.
        let encoder =
            Encoder::with_idf(m.encoder, idf).map_err(|e| Error::invalid(IDF_BIN, Problem::Value(e.to_string())))?;
        Index::from_quantized(encoder, vectors, scales, documents)
            .map_err(|e| Error::invalid(VECTORS_BIN, Problem::Value(e.to_string())))
    }
}

/// Writes `dir/name` through a temp file in the same folder (same filesystem, so the rename is
/// atomic): a crash leaves the old file or the new one, never half of one.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|source| Error::Io { path, source })
}
