//! Text corpora and the byte-level BPE tokenizer.
//!
//! **Corpora.** A corpus is a file, or a folder of `.txt` files read in sorted order (not
//! recursively). It is cut into documents in one of two ways:
//! - text containing `<|endoftext|>` (TinyStories V2 style) is split on it: one story, one document;
//! - any other text (a book, WikiText, Shakespeare) is cut at blank-line paragraph boundaries into
//!   chunks of about [`CHUNK`]..[`MAX_CHUNK`] bytes. A long text has no natural documents, but the
//!   train/valid split below needs many units to spread over the text.
//!
//! An `<|endoftext|>` document is trimmed of surrounding whitespace (the separator sits on its own
//! line, and a story's leading space is noise); a chunk loses its leading blank lines and trailing
//! whitespace but keeps the first line's indentation (verse, plays, headings). Blank documents are
//! dropped.
//!
//! **The split.** Document `i` (0-based) goes to validation when `floor((i + 1) f) > floor(i f)`,
//! `f` the valid fraction: every `1/f`-th document, spread evenly over the corpus, `floor(n f)` of
//! `n` in all. No randomness, so the same files always give the same split. A corpus too small to
//! reach one validation document gives its last one; a single document is cut by bytes (at a char
//! boundary), its last `f` part to validation, as nanoGPT does with Tiny Shakespeare.
//!
//! **The tokenizer** is GPT-2's scheme, trained here with the Hugging Face `tokenizers` crate:
//! the text's UTF-8 bytes are mapped to 256 printable characters before BPE sees them, and all 256
//! start in the vocabulary. Every byte string has an encoding, so encode→decode is exact for any
//! UTF-8 input (emoji, CJK, control characters, odd whitespace): no `<unk>`, no normalisation. The
//! GPT-2 regex pre-splits words so merges never cross a word boundary. `<|endoftext|>` is a
//! special token with id 0; it ends every document in the training stream. The crate is built with
//! its fancy-regex backend (feature `unstable_wasm`, no C onig) so the native trainer and the
//! browser build split text identically. The tokenizer saves as a standard `tokenizer.json` that
//! Python `tokenizers`/`transformers` load.

use anyhow::{anyhow, bail, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The document separator, and the special token with id 0.
pub const EOT: &str = "<|endoftext|>";

/// A chunk of text without `<|endoftext|>` closes at the first blank line after this many bytes.
pub const CHUNK: usize = 4096;

/// A chunk that reaches this size without a blank line closes at a line end (or, for a line
/// longer than this, at a char boundary), so no document grows without bound.
pub const MAX_CHUNK: usize = 8192;

/// The smallest and largest vocabulary `train_tokenizer` accepts: 256 bytes + EOT + a few merges,
/// and what fits a `u16` token id.
pub const VOCAB_RANGE: std::ops::RangeInclusive<usize> = 260..=65536;

/// A named text corpus split into training and validation documents.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The file's stem or the folder's name.
    pub name: String,
    /// Training documents, in corpus order.
    pub train: Vec<String>,
    /// Validation documents, in corpus order.
    pub valid: Vec<String>,
}

impl Corpus {
    /// Reads a file, or a folder's `.txt` files in sorted order, cuts the text into documents
    /// (on `<|endoftext|>`, else into paragraph chunks) and splits them (see the module docs).
    pub fn from_path(path: &Path, valid_fraction: f64) -> Result<Corpus> {
        check_fraction(valid_fraction)?;
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!("corpus path {} does not exist", path.display()),
            _ => anyhow!("cannot read corpus path {}: {e}", path.display()),
        })?;
        let files = if meta.is_dir() { txt_files(path)? } else { vec![path.to_path_buf()] };
        let mut docs = Vec::new();
        for file in &files {
            let bytes = std::fs::read(file).map_err(|e| anyhow!("cannot read corpus file {}: {e}", file.display()))?;
            docs.extend(documents_from_bytes(file, bytes)?);
        }
        let name = match (meta.is_dir(), path.file_stem(), path.file_name()) {
            (false, Some(stem), _) => stem.to_string_lossy().into_owned(),
            (true, _, Some(dir)) => dir.to_string_lossy().into_owned(),
            _ => path.display().to_string(),
        };
        Corpus::from_documents(&name, docs, valid_fraction).map_err(|e| anyhow!("corpus at {}: {e}", path.display()))
    }

    /// Splits ready-made documents (kept as they are; blank ones dropped) into train and valid.
    pub fn from_documents(name: &str, docs: Vec<String>, valid_fraction: f64) -> Result<Corpus> {
        check_fraction(valid_fraction)?;
        let mut docs: Vec<String> = docs.into_iter().filter(|d| !d.trim().is_empty()).collect();
        if docs.is_empty() {
            bail!("corpus `{name}` is empty: no non-blank documents");
        }
        let (mut train, mut valid) = (Vec::new(), Vec::new());
        if docs.len() == 1 {
            let doc = docs.pop().unwrap_or_default();
            let cut = byte_cut(&doc, valid_fraction)
                .ok_or_else(|| anyhow!("corpus `{name}` is a single document too short to split: {doc:?}"))?;
            train.push(doc[..cut].to_string());
            valid.push(doc[cut..].to_string());
        } else {
            for (i, doc) in docs.into_iter().enumerate() {
                let to_valid = ((i + 1) as f64 * valid_fraction).floor() > (i as f64 * valid_fraction).floor();
                (if to_valid { &mut valid } else { &mut train }).push(doc);
            }
            // Fewer than 1/f documents: none reached validation, so it takes the last one.
            if valid.is_empty() {
                valid.extend(train.pop());
            }
        }
        Ok(Corpus { name: name.to_string(), train, valid })
    }

    /// Total UTF-8 bytes of the training documents.
    pub fn train_bytes(&self) -> usize {
        self.train.iter().map(String::len).sum()
    }

    /// Total UTF-8 bytes of the validation documents.
    pub fn valid_bytes(&self) -> usize {
        self.valid.iter().map(String::len).sum()
    }
}

fn check_fraction(valid_fraction: f64) -> Result<()> {
    // Written so that NaN fails too.
    if !(valid_fraction > 0.0 && valid_fraction <= 0.5) {
        bail!("valid_fraction must be in (0, 0.5], got {valid_fraction}");
    }
    Ok(())
}

/// The `.txt` files directly inside `dir`, sorted by name.
fn txt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let list_err = |e: std::io::Error| anyhow!("cannot list corpus folder {}: {e}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let path = entry.map_err(list_err)?.path();
        let is_txt = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt"));
        if is_txt && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        bail!("corpus folder {} has no .txt files", dir.display());
    }
    files.sort();
    Ok(files)
}

/// One corpus file's documents from its bytes (what [`Corpus::from_path`] does with each file):
/// invalid UTF-8 is an error naming `file` and the first bad byte; the text is split on EOT or
/// into paragraph chunks (see the module docs).
pub fn documents_from_bytes(file: &Path, bytes: Vec<u8>) -> Result<Vec<String>> {
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "corpus file {} is not valid UTF-8: bad byte at offset {}",
            file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(split_documents(&text))
}

/// One file's documents: split on EOT when it has one, else paragraph chunks.
fn split_documents(text: &str) -> Vec<String> {
    if text.contains(EOT) {
        text.split(EOT).map(str::trim).filter(|d| !d.is_empty()).map(str::to_string).collect()
    } else {
        chunk_text(text)
    }
}

/// Drops leading blank lines (keeping the first line's indentation) and trailing whitespace.
fn tidy(doc: &str) -> &str {
    let doc = doc.trim_end();
    let mut start = 0;
    for line in doc.split_inclusive('\n') {
        if !line.trim().is_empty() {
            break;
        }
        start += line.len();
    }
    &doc[start..]
}

/// Cuts a text without EOT into chunks of whole paragraphs, closing a chunk at the first blank
/// line past `CHUNK` bytes, or at a line end before it passes `MAX_CHUNK`. The text of each chunk
/// is a verbatim slice (interior blank lines included) apart from `tidy`.
fn chunk_text(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut push = |s: &str| {
        let s = tidy(s);
        if !s.is_empty() {
            docs.push(s.to_string());
        }
    };
    // The open chunk runs from `start` to `end`, the end of its last non-blank line.
    let mut open: Option<(usize, usize)> = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let line_start = pos;
        pos += line.len();
        if line.trim().is_empty() {
            if let Some((start, end)) = open {
                if text[start..end].trim_end().len() >= CHUNK {
                    push(&text[start..end]);
                    open = None;
                }
            }
            continue;
        }
        if let Some((start, end)) = open {
            if pos - start > MAX_CHUNK {
                push(&text[start..end]);
                open = None;
            }
        }
        if line.len() > MAX_CHUNK {
            // A line with no end in sight (minified text, one-line files): cut at char boundaries.
            let mut rest = line;
            while !rest.is_empty() {
                let mut cut = rest.len().min(MAX_CHUNK);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                push(&rest[..cut]);
                rest = &rest[cut..];
            }
            continue;
        }
        open = Some((open.map_or(line_start, |(start, _)| start), pos));
    }
    if let Some((start, end)) = open {
        push(&text[start..end]);
    }
    docs
}

/// Where to cut a single document so that about `fraction` of its bytes come after the cut:
/// a char boundary strictly inside it, or `None` for a document of one char.
fn byte_cut(doc: &str, fraction: f64) -> Option<usize> {
    let len = doc.len();
    if len < 2 {
        return None; // one byte (or none) cannot be cut strictly inside; `clamp(1, 0)` would panic
    }
    let mut cut = ((len as f64 * (1.0 - fraction)).round() as usize).clamp(1, len - 1);
    while cut > 0 && !doc.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 {
        // The first char is longer than the target train part: cut right after it.
        cut = doc.char_indices().nth(1)?.0;
    }
    Some(cut)
}

/// Trains a byte-level BPE tokenizer (GPT-2 style, EOT = id 0) with exactly `vocab_size` tokens.
///
/// Any `<|endoftext|>` inside `docs` is cut out first so no merge learns pieces of it. Training
/// is deterministic: the same documents and size give a byte-identical `tokenizer.json`. A corpus
/// too small to supply `vocab_size - 257` merges is an error that says how far BPE got.
pub fn train_tokenizer(docs: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let tok = train_tokenizer_up_to(docs, vocab_size)?;
    let got = tok.get_vocab_size(true);
    if got != vocab_size {
        bail!(
            "BPE ran out of pairs to merge at {got} tokens, short of the {vocab_size} asked for: \
             the corpus is too small; ask for at most {got}"
        );
    }
    Ok(tok)
}

/// Like [`train_tokenizer`], but a corpus with a closed vocabulary (the generated tasks) may stop
/// short of `vocab_size`: BPE merges until no pair is left, so every word is one token.
pub fn train_tokenizer_up_to(docs: &[String], vocab_size: usize) -> Result<Tokenizer> {
    if !VOCAB_RANGE.contains(&vocab_size) {
        bail!(
            "vocab_size must be in {}..={} (256 bytes + {EOT} + merges), got {vocab_size}",
            VOCAB_RANGE.start(),
            VOCAB_RANGE.end()
        );
    }
    if docs.iter().all(|d| d.trim().is_empty()) {
        bail!("no text to train the tokenizer on ({} documents, all blank)", docs.len());
    }
    let mut tok = Tokenizer::new(BPE::default());
    // add_prefix_space = false: a leading space would be invented text, and break exact decoding.
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .show_progress(false)
        .initial_alphabet(alphabet)
        // The first special token gets id 0, before the alphabet.
        .special_tokens(vec![AddedToken::from(EOT, true)])
        .build()
        .into();
    let pieces = docs.iter().flat_map(|d| d.split(EOT)).filter(|p| !p.is_empty());
    tok.train(&mut trainer, pieces).map_err(|e| anyhow!("BPE training failed: {e}"))?;
    check_eot(&tok)?;
    Ok(tok)
}

/// Loads a `tokenizer.json` (ours or any other with an `<|endoftext|>` token).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read tokenizer {}: {e}", path.display()))?;
    tokenizer_from_bytes(&bytes).map_err(|e| anyhow!("tokenizer {}: {e}", path.display()))
}

/// Parses `tokenizer.json` bytes (the browser has no file system).
pub fn tokenizer_from_bytes(json: &[u8]) -> Result<Tokenizer> {
    // tokenizers 0.23 panics on some malformed files (issue 14, found by itera-fuzz).
    itera_data::tokenizer_json::check(json).map_err(|e| anyhow!("not a valid tokenizer.json: {e}"))?;
    let tok = Tokenizer::from_bytes(json).map_err(|e| anyhow!("not a valid tokenizer.json: {e}"))?;
    check_eot(&tok)?;
    Ok(tok)
}

fn check_eot(tok: &Tokenizer) -> Result<()> {
    eot_id(tok).map(|_| ())
}

/// Writes `tokenizer.json` atomically: a temp file in the same folder, then a rename, so a crash
/// never leaves a half-written tokenizer beside a checkpoint.
pub fn save_tokenizer(tok: &Tokenizer, path: &Path) -> Result<()> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let json = tok.to_string(true).map_err(|e| anyhow!("cannot serialise tokenizer: {e}"))?;
    let name = path.file_name().ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(json.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot save tokenizer to {}: {e}", path.display())
    })
}

/// The id of `<|endoftext|>`.
pub fn eot_id(tok: &Tokenizer) -> Result<u32> {
    tok.token_to_id(EOT).ok_or_else(|| anyhow!("the tokenizer has no {EOT} token"))
}

/// Token ids of `text`. Adds nothing: a literal `<|endoftext|>` in the text becomes the EOT id.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok.encode_fast(text, false).map_err(|e| anyhow!("cannot encode text: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

/// The text of `ids`, special tokens included. Ids outside the vocabulary are an error (the
/// library would skip them silently). A byte sequence cut mid-character decodes lossily (U+FFFD).
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    if let Some(bad) = ids.iter().find(|&&id| tok.id_to_token(id).is_none()) {
        bail!("token id {bad} is not in the vocabulary ({} tokens)", tok.get_vocab_size(true));
    }
    tok.decode(ids, false).map_err(|e| anyhow!("cannot decode ids: {e}"))
}

/// Every document encoded and followed by the EOT id, concatenated (the training stream).
/// Batches of about 1 MiB go through `encode_batch_fast`, which spreads them over threads.
pub fn encode_documents(tok: &Tokenizer, docs: &[String]) -> Result<Vec<u32>> {
    const BATCH_BYTES: usize = 1 << 20;
    let eot = eot_id(tok)?;
    let mut out = Vec::with_capacity(docs.iter().map(String::len).sum::<usize>() / 3);
    let mut i = 0;
    while i < docs.len() {
        let (mut j, mut bytes) = (i, 0);
        while j < docs.len() && (j == i || bytes + docs[j].len() <= BATCH_BYTES) {
            bytes += docs[j].len();
            j += 1;
        }
        let batch: Vec<&str> = docs[i..j].iter().map(String::as_str).collect();
        let encs = tok.encode_batch_fast(batch, false).map_err(|e| anyhow!("cannot encode documents: {e}"))?;
        for enc in &encs {
            out.extend_from_slice(enc.get_ids());
            out.push(eot);
        }
        i = j;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ITERA_DATA_DIR`, else `../shared/data` beside the workspace root. Panics if absent: CI
    /// always has it, so a missing folder is a setup error, not a reason to skip.
    pub(crate) fn data_dir() -> PathBuf {
        let dir = std::env::var_os("ITERA_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
        assert!(
            dir.is_dir(),
            "test data folder {} not found: set ITERA_DATA_DIR to the shared/data folder (see shared/data/README.md)",
            dir.display()
        );
        dir
    }

    /// A fresh, empty folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "itera-data-{tag}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The TinyStories V1 head (≈200 KB), cut into documents.
    fn small_docs() -> Vec<String> {
        let text = std::fs::read_to_string(data_dir().join("tinystories_v1_train_head.txt")).unwrap();
        split_documents(&text)
    }

    fn small_tokenizer() -> Tokenizer {
        train_tokenizer(&small_docs(), 1024).unwrap()
    }

    fn odd_strings() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            " ",
            "   ",
            "  leading spaces",
            "trailing spaces   ",
            "multiple   inner    spaces",
            "\ttab\t\tand tabs\t",
            "windows\r\nline\r\nendings\r\n",
            "lone\rcarriage return",
            "\n\n\nnewlines\n\n",
            "emoji 😀 thumbs 👍🏽 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 keycap 1️⃣",
            "combining e\u{301} a\u{308}\u{332} Z\u{327}\u{30c}",
            "漢字とひらがな、カタカナ。한국어 中文",
            "RTL: مرحبا بالعالم — שלום עולם \u{200f}mark",
            "controls \u{0}NUL \u{1}\u{7}\u{8}\u{1b}[0m \u{7f} \u{85}",
            "zero width \u{200b}\u{200d}\u{feff} bom, nbsp\u{a0}, ideographic\u{3000}space",
            "replacement \u{fffd} and max \u{10ffff}",
            "contractions: don't you'll we've 'S 'LL",
            "numbers 1234567890 3.14159 1e-9 0x1F",
            "<|endoftext|>",
            "before<|endoftext|>after <|endoftext|><|endoftext|>",
            "<|endoftext| almost <|end",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("long word ".to_string() + &"x".repeat(5000));
        v.push((0u32..0x800).filter_map(char::from_u32).collect());
        v
    }

    #[test]
    fn tokenizer_round_trip_is_exact_on_odd_utf8() {
        let tok = small_tokenizer();
        for s in odd_strings() {
            let ids = encode(&tok, &s).unwrap();
            assert_eq!(decode(&tok, &ids).unwrap(), s, "round trip of {s:?} via {ids:?}");
        }
        // The training stream decodes to the documents joined by EOT.
        let docs = odd_strings();
        let stream = encode_documents(&tok, &docs).unwrap();
        let expected: String = docs.iter().map(|d| format!("{d}{EOT}")).collect();
        assert_eq!(decode(&tok, &stream).unwrap(), expected);
    }

    #[test]
    fn trained_tokenizer_has_requested_size_and_eot_is_id_0_and_one_token() {
        let docs = small_docs();
        for size in [260, 1000, 2048] {
            let tok = train_tokenizer(&docs, size).unwrap();
            assert_eq!(tok.get_vocab_size(true), size);
            // Ids are dense 0..size, as the model's embedding table assumes.
            assert!((0..size as u32).all(|id| tok.id_to_token(id).is_some()), "gap in ids of {size}");
            assert_eq!(eot_id(&tok).unwrap(), 0);
            assert_eq!(encode(&tok, EOT).unwrap(), vec![0]);
            assert_eq!(encode(&tok, &format!("a{EOT}b")).unwrap().iter().filter(|&&i| i == 0).count(), 1);
        }
        // BPE actually compresses: well under one token per byte on text like its training set.
        let tok = train_tokenizer(&docs, 2048).unwrap();
        let text = &docs[docs.len() / 2];
        let n = encode(&tok, text).unwrap().len();
        assert!(n * 3 < text.len(), "{n} tokens for {} bytes", text.len());
    }

    #[test]
    fn tokenizer_too_large_for_corpus_is_an_error_naming_the_reachable_size() {
        let err = train_tokenizer(&["ab ab ab".to_string()], 300).unwrap_err().to_string();
        assert!(err.contains("ran out of pairs") && err.contains("at most 259"), "{err}");
    }

    #[test]
    fn tokenizer_training_is_deterministic() {
        let docs = small_docs();
        let a = train_tokenizer(&docs, 1500).unwrap().to_string(false).unwrap();
        let b = train_tokenizer(&docs, 1500).unwrap().to_string(false).unwrap();
        assert!(a == b, "two trainings on the same documents gave different tokenizer.json");
    }

    #[test]
    fn saved_tokenizer_loads_back_with_identical_encodings() {
        let tok = small_tokenizer();
        let dir = TempDir::new("tok");
        let path = dir.0.join("tokenizer.json");
        save_tokenizer(&tok, &path).unwrap();
        // Only the final file is left: the temp file was renamed away.
        let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tokenizer.json")]);
        let loaded = load_tokenizer(&path).unwrap();
        assert_eq!(loaded.to_string(false).unwrap(), tok.to_string(false).unwrap());
        let bytes = std::fs::read(&path).unwrap();
        let from_bytes = tokenizer_from_bytes(&bytes).unwrap();
        let docs = small_docs();
        let sample = &docs[..20];
        let expected = encode_documents(&tok, sample).unwrap();
        assert_eq!(encode_documents(&loaded, sample).unwrap(), expected);
        assert_eq!(encode_documents(&from_bytes, sample).unwrap(), expected);
        for s in odd_strings() {
            assert_eq!(encode(&loaded, &s).unwrap(), encode(&tok, &s).unwrap(), "{s:?}");
        }
        // The standard tokenizer.json layout that Python `tokenizers` reads.
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["model"]["type"], "BPE");
        assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");
        assert_eq!(json["pre_tokenizer"]["add_prefix_space"], false);
        assert_eq!(json["decoder"]["type"], "ByteLevel");
        assert!(json["normalizer"].is_null());
        assert_eq!(json["added_tokens"][0]["content"], EOT);
        assert_eq!(json["added_tokens"][0]["id"], 0);
        assert_eq!(json["added_tokens"][0]["special"], true);
    }

    #[test]
    fn tinystories_corpus_splits_on_eot_deterministically_and_disjointly() {
        let path = data_dir().join("tinystories_v2_train_head.txt");
        let raw = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = raw.split(EOT).map(str::trim).filter(|d| !d.is_empty()).collect();
        assert_eq!(expected.len(), 1727, "the README's story count");
        let c = Corpus::from_path(&path, 0.1).unwrap();
        assert_eq!(c.name, "tinystories_v2_train_head");
        assert!(c.train[0].starts_with("Once upon a time there was a little boy named Ben."));
        assert!(c.train.iter().chain(&c.valid).all(|d| !d.contains(EOT) && d.trim() == d));
        // Every story lands on exactly one side.
        let mut all: Vec<&str> = c.train.iter().chain(&c.valid).map(String::as_str).collect();
        let mut want = expected.clone();
        all.sort_unstable();
        want.sort_unstable();
        assert_eq!(all, want);
        assert_eq!(c.valid.len(), 172, "floor(1727 * 0.1) stories to validation");
        let frac = c.valid_bytes() as f64 / (c.train_bytes() + c.valid_bytes()) as f64;
        assert!((0.08..0.12).contains(&frac), "valid byte fraction {frac}");
        // Story 10 (1-based) is the first to validation; stories keep their order on each side.
        assert_eq!(c.valid[0], expected[9]);
        assert_eq!(c.train[..9], expected[..9]);
        let again = Corpus::from_path(&path, 0.1).unwrap();
        assert_eq!((again.train, again.valid), (c.train, c.valid));
    }

    #[test]
    fn folder_corpus_reads_txt_files_in_sorted_order_and_ignores_others() {
        let dir = TempDir::new("folder");
        // Created out of order: the listing order of a folder is not sorted.
        std::fs::write(dir.0.join("c.txt"), "gamma story").unwrap();
        std::fs::write(dir.0.join("notes.md"), "not a corpus file").unwrap();
        std::fs::write(dir.0.join("a.txt"), format!("alpha one\n{EOT}\nalpha two\n{EOT}\n")).unwrap();
        std::fs::write(dir.0.join("b.txt"), "beta story").unwrap();
        std::fs::write(dir.0.join("data.json"), "{}").unwrap();
        std::fs::create_dir(dir.0.join("sub.txt")).unwrap();
        std::fs::write(dir.0.join("sub.txt").join("d.txt"), "nested, not read").unwrap();
        let c = Corpus::from_path(&dir.0, 0.5).unwrap();
        // Documents in order: alpha one, alpha two, beta, gamma; with f = 1/2 the odd ones validate.
        assert_eq!(c.train, vec!["alpha one", "beta story"]);
        assert_eq!(c.valid, vec!["alpha two", "gamma story"]);
        assert!(c.name.starts_with("itera-data-folder-"), "{}", c.name);
    }

    #[test]
    fn text_without_eot_is_chunked_at_paragraphs_losing_no_text() {
        let path = data_dir().join("alice29.txt");
        let raw = std::fs::read_to_string(&path).unwrap();
        let c = Corpus::from_path(&path, 0.1).unwrap();
        let n = c.train.len() + c.valid.len();
        assert!(n >= raw.len() / MAX_CHUNK && n <= raw.len() / CHUNK + 1, "{n} chunks of {} bytes", raw.len());
        assert!(c.valid.len() >= 2, "{} valid chunks", c.valid.len());
        let chunks = chunk_text(&raw);
        assert_eq!(chunks.len(), n);
        assert!(chunks.iter().all(|d| d.len() <= MAX_CHUNK));
        // All but the last close at a blank line past CHUNK bytes (the book has short paragraphs).
        assert!(chunks[..n - 1].iter().all(|d| d.len() >= CHUNK));
        assert!(chunks[0].starts_with("                ALICE'S ADVENTURES IN WONDERLAND"));
        // Only whitespace between chunks is dropped.
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&chunks.join("\n")), squash(&raw));
    }

    #[test]
    fn lines_without_blank_lines_are_cut_before_max_chunk() {
        let line = "a passage of text on one line, one of many with no blank line between them\n";
        let text = line.repeat(1000);
        let chunks = chunk_text(&text);
        assert!(chunks.len() >= text.len() / MAX_CHUNK);
        assert!(chunks.iter().all(|d| d.len() <= MAX_CHUNK && d.ends_with("between them")));
        // A single line longer than MAX_CHUNK is cut at char boundaries ("é" is two bytes).
        let long = "é".repeat(MAX_CHUNK);
        let pieces = chunk_text(&long);
        assert_eq!(pieces.concat(), long);
        assert!(pieces.iter().all(|p| p.len() <= MAX_CHUNK));
    }

    #[test]
    fn single_document_corpus_is_split_by_bytes_at_a_char_boundary() {
        let doc = "ünïcödé text ".repeat(50);
        let c = Corpus::from_documents("one", vec![doc.clone(), "   ".into()], 0.1).unwrap();
        assert_eq!((c.train.len(), c.valid.len()), (1, 1));
        assert_eq!(c.train[0].clone() + &c.valid[0], doc);
        let frac = c.valid_bytes() as f64 / doc.len() as f64;
        assert!((0.09..0.11).contains(&frac), "{frac}");
        let tiny = Corpus::from_documents("tiny", vec!["é!".into()], 0.5).unwrap();
        assert_eq!((tiny.train, tiny.valid), (vec!["é".to_string()], vec!["!".to_string()]));
        assert!(Corpus::from_documents("x", vec!["é".into()], 0.5).is_err());
        // One byte: an error naming the corpus, not a panic in `clamp` (issue 14).
        let err = Corpus::from_documents("one-byte", vec!["a".into()], 0.05).unwrap_err().to_string();
        assert!(err.contains("one-byte") && err.contains("too short"), "{err}");
        // Too few documents for 1/f still gives one to validation.
        let few = Corpus::from_documents("few", vec!["a".into(), "b".into(), "c".into()], 0.1).unwrap();
        assert_eq!((few.train, few.valid), (vec!["a".to_string(), "b".to_string()], vec!["c".to_string()]));
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = TempDir::new("bad");
        let msg = |r: Result<Corpus>| r.unwrap_err().to_string();

        let missing = dir.0.join("no-such-corpus.txt");
        let e = msg(Corpus::from_path(&missing, 0.1));
        assert!(e.contains("no-such-corpus.txt") && e.contains("does not exist"), "{e}");

        let bad = dir.0.join("bad-utf8.txt");
        std::fs::write(&bad, b"hello \xff world").unwrap();
        let e = msg(Corpus::from_path(&bad, 0.1));
        assert!(e.contains("bad-utf8.txt") && e.contains("not valid UTF-8") && e.contains("offset 6"), "{e}");

        let empty_dir = dir.0.join("empty");
        std::fs::create_dir(&empty_dir).unwrap();
        std::fs::write(empty_dir.join("readme.md"), "x").unwrap();
        let e = msg(Corpus::from_path(&empty_dir, 0.1));
        assert!(e.contains("empty") && e.contains("no .txt files"), "{e}");

        let blank = dir.0.join("blank.txt");
        std::fs::write(&blank, format!("\n \n{EOT}\n\t\n")).unwrap();
        let e = msg(Corpus::from_path(&blank, 0.1));
        assert!(e.contains("blank.txt") && e.contains("is empty"), "{e}");

        for f in [0.0, -0.1, 0.6, f64::NAN] {
            let e = msg(Corpus::from_path(&blank, f));
            assert!(e.contains("valid_fraction must be in (0, 0.5]"), "{f}: {e}");
        }

        let docs = vec!["some text".to_string()];
        for size in [0, 259, 65537] {
            let e = train_tokenizer(&docs, size).unwrap_err().to_string();
            assert!(e.contains("vocab_size must be in 260..=65536"), "{size}: {e}");
        }
        let e = train_tokenizer(&[" ".to_string()], 300).unwrap_err().to_string();
        assert!(e.contains("no text"), "{e}");

        let e = load_tokenizer(&dir.0.join("missing.json")).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
        let e = tokenizer_from_bytes(b"{not json").unwrap_err().to_string();
        assert!(e.contains("not a valid tokenizer.json"), "{e}");
        // Found by itera-fuzz: a syntax error inside `decoder` panicked in tokenizers 0.23.
        let e =
            tokenizer_from_bytes(br#"{"version":"1.0","decoder":{"type":"ByteLevel" "x":1}}"#).unwrap_err().to_string();
        assert!(e.contains("not a valid tokenizer.json") && e.contains("column"), "{e}");

        let tok = small_tokenizer();
        let e = decode(&tok, &[5, 1024]).unwrap_err().to_string();
        assert!(e.contains("1024") && e.contains("not in the vocabulary"), "{e}");
    }
}
