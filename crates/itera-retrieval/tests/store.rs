//! Saved indexes: a round trip gives the same index and hits; every kind of corrupt, truncated
//! or mismatched folder is an error that names the file and the problem, never a panic.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use itera_retrieval::store::{DOCUMENTS_JSONL, IDF_BIN, INDEX_JSON, SCALES_BIN, VECTORS_BIN};
use itera_retrieval::{EncoderConfig, Error, Index, IndexManifest, Problem};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn small_index() -> Index {
    Index::build(common::world(50, 5).0, EncoderConfig::default()).unwrap()
}

/// A fresh folder holding `small_index()` saved, under cargo's per-test temp dir.
fn saved(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("itera-retrieval-store").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    small_index().save(&dir).unwrap();
    dir
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(INDEX_JSON)).unwrap()).unwrap()
}

fn set_manifest(dir: &Path, m: &Value) {
    std::fs::write(dir.join(INDEX_JSON), serde_json::to_vec_pretty(m).unwrap()).unwrap();
}

/// Replaces a file and updates its length and sha256 in index.json, as a buggy but consistent
/// writer would: what is left to catch it is the decoding.
fn rewrite_signed(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
    let mut m = manifest(dir);
    m["files"][name]["bytes"] = bytes.len().into();
    m["files"][name]["sha256"] = sha256_hex(bytes).into();
    set_manifest(dir, &m);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// Loads `dir`, expects an `Error::Invalid` for `file`, returns its problem and message.
fn load_err(dir: &Path, file: &str) -> (Problem, String) {
    let e = Index::load(dir).expect_err("a damaged index must not load");
    let msg = e.to_string();
    println!("{msg}");
    match e {
        Error::Invalid { file: f, problem } => {
            assert_eq!(f, file, "{msg}");
            assert!(msg.starts_with(file), "the message names the file: {msg}");
            (problem, msg)
        }
        other => panic!("expected Invalid for {file}, got {other:?}"),
    }
}

#[test]
fn save_then_load_gives_the_same_index_and_hits() {
    let dir = saved("round-trip");
    let (original, loaded) = (small_index(), Index::load(&dir).unwrap());
    assert_eq!(loaded, original);
    for (_, q) in common::world(50, 5).1.iter().take(20) {
        assert_eq!(loaded.search(q, 5), original.search(q, 5));
    }
    // Atomic writes leave no temp files, and a second save over the first one works.
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [DOCUMENTS_JSONL, IDF_BIN, INDEX_JSON, SCALES_BIN, VECTORS_BIN]);
    original.save(&dir).unwrap();
    assert_eq!(Index::load(&dir).unwrap(), original);
    // The bytes path (the browser's) reads the same.
    let (json, parts) = original.to_parts();
    let from_bytes =
        Index::from_parts(&json, |name| Ok(parts.iter().find(|(n, _)| *n == name).unwrap().1.clone())).unwrap();
    assert_eq!(from_bytes, original);
    let m = IndexManifest::parse(&json).unwrap();
    assert_eq!(m.expected_files(), [VECTORS_BIN, SCALES_BIN, IDF_BIN, DOCUMENTS_JSONL]);
    assert_eq!(m.total_bytes(), parts.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
}

#[test]
fn an_index_without_idf_has_no_idf_file_and_round_trips() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("itera-retrieval-store/no-idf");
    let _ = std::fs::remove_dir_all(&dir);
    let index =
        Index::build(common::world(30, 6).0, EncoderConfig { idf_buckets: 0, ..EncoderConfig::default() }).unwrap();
    index.save(&dir).unwrap();
    assert!(!dir.join(IDF_BIN).exists());
    assert_eq!(Index::load(&dir).unwrap(), index);
}

#[test]
fn wrong_format_version_is_refused() {
    let dir = saved("version");
    let mut m = manifest(&dir);
    m["format_version"] = 2.into();
    set_manifest(&dir, &m);
    let (p, msg) = load_err(&dir, INDEX_JSON);
    assert_eq!(p, Problem::FormatVersion { found: 2, supported: 1 }, "{msg}");
    m["format"] = "something-else".into();
    set_manifest(&dir, &m);
    assert!(matches!(load_err(&dir, INDEX_JSON).0, Problem::Format { .. }));
}

#[test]
fn unknown_encoder_kind_is_refused() {
    let dir = saved("kind");
    let mut m = manifest(&dir);
    m["encoder"]["kind"] = "learned-bert-v9".into();
    m["encoder"]["layers"] = 12.into(); // a newer kind may have other fields: the kind is reported
    set_manifest(&dir, &m);
    let (p, msg) = load_err(&dir, INDEX_JSON);
    assert!(matches!(p, Problem::UnknownEncoder { ref found, .. } if found == "learned-bert-v9"), "{msg}");
}

#[test]
fn dims_mismatch_is_refused() {
    let dir = saved("dims");
    let mut m = manifest(&dir);
    m["dims"] = 256.into();
    set_manifest(&dir, &m);
    let (p, msg) = load_err(&dir, INDEX_JSON);
    assert_eq!(p, Problem::DimsMismatch { index: 256, encoder: 128 }, "{msg}");
    // Both changed together: now vectors.bin is too short for docs × dims.
    m["encoder"]["dims"] = 256.into();
    set_manifest(&dir, &m);
    assert!(matches!(load_err(&dir, VECTORS_BIN).0, Problem::CountMismatch { .. }));
}

#[test]
fn count_mismatch_is_refused_without_trusting_the_count() {
    let dir = saved("count");
    let mut m = manifest(&dir);
    m["docs"] = 51.into();
    set_manifest(&dir, &m);
    let (p, msg) = load_err(&dir, VECTORS_BIN);
    assert_eq!(
        p,
        Problem::CountMismatch { what: "docs × dims bytes vs the listed length", expected: 51 * 128, found: 50 * 128 },
        "{msg}"
    );
    // A count of 10^15 documents (and bytes declared to match) is refused before anything is
    // read or allocated: the files are not that long.
    m["docs"] = 1_000_000_000_000_000u64.into();
    m["files"][VECTORS_BIN]["bytes"] = (1_000_000_000_000_000u64 * 128).into();
    m["files"][SCALES_BIN]["bytes"] = (4_000_000_000_000_000u64).into();
    set_manifest(&dir, &m);
    let (p, _) = load_err(&dir, VECTORS_BIN);
    assert!(matches!(p, Problem::Length { declared: 128_000_000_000_000_000, found: 6400 }), "{p:?}");
    // docs × dims overflowing u64 is refused too.
    m["docs"] = u64::MAX.into();
    set_manifest(&dir, &m);
    assert!(Index::load(&dir).is_err());
    // documents.jsonl with a line too many.
    let dir = saved("count-docs");
    let mut docs = std::fs::read(dir.join(DOCUMENTS_JSONL)).unwrap();
    docs.extend_from_slice(b"\"one more\"\n");
    rewrite_signed(&dir, DOCUMENTS_JSONL, &docs);
    let (p, msg) = load_err(&dir, DOCUMENTS_JSONL);
    assert_eq!(p, Problem::CountMismatch { what: "document lines vs docs", expected: 50, found: 51 }, "{msg}");
}

#[test]
fn sha256_mismatch_is_refused() {
    for name in [VECTORS_BIN, SCALES_BIN, IDF_BIN, DOCUMENTS_JSONL] {
        let dir = saved(&format!("sha-{name}"));
        let mut bytes = std::fs::read(dir.join(name)).unwrap();
        bytes[3] ^= 0x10;
        std::fs::write(dir.join(name), &bytes).unwrap();
        let (p, msg) = load_err(&dir, name);
        assert!(matches!(p, Problem::Sha256 { .. }), "{msg}");
    }
}

#[test]
fn truncated_vectors_are_refused() {
    let dir = saved("truncated");
    let bytes = std::fs::read(dir.join(VECTORS_BIN)).unwrap();
    std::fs::write(dir.join(VECTORS_BIN), &bytes[..bytes.len() - 100]).unwrap();
    let (p, msg) = load_err(&dir, VECTORS_BIN);
    assert_eq!(p, Problem::Length { declared: 6400, found: 6300 }, "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    std::fs::remove_file(dir.join(VECTORS_BIN)).unwrap();
    let e = Index::load(&dir).unwrap_err();
    assert!(matches!(e, Error::Io { ref path, .. } if path.ends_with(VECTORS_BIN)), "{e}");
}

#[test]
fn invalid_json_is_refused() {
    let dir = saved("json");
    let good = std::fs::read(dir.join(INDEX_JSON)).unwrap();
    std::fs::write(dir.join(INDEX_JSON), &good[..good.len() / 2]).unwrap();
    assert!(matches!(load_err(&dir, INDEX_JSON).0, Problem::Json(_)));
    std::fs::write(dir.join(INDEX_JSON), &good).unwrap();
    let mut m = manifest(&dir);
    m.as_object_mut().unwrap().remove("docs");
    set_manifest(&dir, &m);
    let (p, msg) = load_err(&dir, INDEX_JSON);
    assert!(matches!(p, Problem::Json(ref e) if e.contains("docs")), "{msg}");
    // A document line that is not a JSON string.
    std::fs::write(dir.join(INDEX_JSON), &good).unwrap();
    let docs = std::fs::read_to_string(dir.join(DOCUMENTS_JSONL)).unwrap();
    let broken = docs.replacen('\n', "\n{\"not\": \"a string\"}\n", 1);
    let broken = broken.rsplitn(3, '\n').nth(2).unwrap().to_string() + "\n"; // still 50 lines
    rewrite_signed(&dir, DOCUMENTS_JSONL, broken.as_bytes());
    let (p, msg) = load_err(&dir, DOCUMENTS_JSONL);
    assert!(matches!(p, Problem::Json(ref e) if e.starts_with("line 2")), "{msg}");
}

#[test]
fn invalid_utf8_is_refused() {
    let dir = saved("utf8");
    let mut docs = std::fs::read(dir.join(DOCUMENTS_JSONL)).unwrap();
    let second_line = docs.iter().position(|&b| b == b'\n').unwrap() + 3;
    docs[second_line] = 0xff;
    rewrite_signed(&dir, DOCUMENTS_JSONL, &docs);
    let (p, msg) = load_err(&dir, DOCUMENTS_JSONL);
    assert_eq!(p, Problem::Utf8 { line: 2 }, "{msg}");
    let mut bad = std::fs::read(dir.join(INDEX_JSON)).unwrap();
    bad.insert(1, 0xff);
    std::fs::write(dir.join(INDEX_JSON), bad).unwrap();
    assert!(matches!(load_err(&dir, INDEX_JSON).0, Problem::Json(_)));
}

#[test]
fn bad_values_and_file_lists_are_refused() {
    let dir = saved("values");
    let mut scales = std::fs::read(dir.join(SCALES_BIN)).unwrap();
    scales[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    rewrite_signed(&dir, SCALES_BIN, &scales);
    let (p, msg) = load_err(&dir, SCALES_BIN);
    assert!(matches!(p, Problem::Value(ref v) if v.contains("document 1")), "{msg}");

    let dir = saved("file-list");
    let mut m = manifest(&dir);
    let idf = m["files"].as_object_mut().unwrap().remove(IDF_BIN).unwrap();
    set_manifest(&dir, &m);
    assert_eq!(load_err(&dir, IDF_BIN).0, Problem::MissingFile);
    m["files"][IDF_BIN] = idf;
    m["files"]["../../etc/passwd"] = m["files"][IDF_BIN].clone();
    set_manifest(&dir, &m);
    assert_eq!(load_err(&dir, "../../etc/passwd").0, Problem::UnexpectedFile);
}

#[test]
fn a_failing_file_source_is_passed_through() {
    let (json, _) = small_index().to_parts();
    let e = Index::from_parts(&json, |name| Err(Error::Fetch { file: name.into(), message: "HTTP 404".into() }))
        .unwrap_err();
    assert_eq!(e.to_string(), "vectors.bin: HTTP 404");
}

#[test]
fn no_truncation_or_byte_flip_of_any_file_panics() {
    let (json, parts) = small_index().to_parts();
    let mut files: Vec<(&str, Vec<u8>)> = parts.clone();
    files.push((INDEX_JSON, json.clone()));
    for (name, bytes) in &files {
        let lens = [0, 1, bytes.len() / 3, bytes.len().saturating_sub(1)];
        let flips = (0..bytes.len()).step_by(bytes.len().div_ceil(40).max(1));
        let variants = lens.iter().map(|&l| bytes[..l].to_vec()).chain(flips.map(|i| {
            let mut b = bytes.clone();
            b[i] ^= 0xa5;
            b
        }));
        for damaged in variants {
            let index_json = if *name == INDEX_JSON { damaged.clone() } else { json.clone() };
            let r = Index::from_parts(&index_json, |n| {
                Ok(if n == *name { damaged.clone() } else { parts.iter().find(|(p, _)| *p == n).unwrap().1.clone() })
            });
            // A flip inside a JSON number or string of index.json can stay valid (and then fail
            // a later check, or not matter); every other damage must be refused.
            if *name != INDEX_JSON {
                assert!(r.is_err(), "{name}: damage not detected");
            }
        }
    }
}
