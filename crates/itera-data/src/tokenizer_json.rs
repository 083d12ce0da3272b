//! What a `tokenizer.json` must pass before `tokenizers::Tokenizer::from_bytes` sees it. The
//! crate (0.23) panics on some malformed files instead of returning an error, and a panic kills
//! the page's worker; the trainer and the worker both call [`check`] first (issue 14, found by
//! itera-fuzz):
//! - a JSON syntax error inside `decoder` hits `expect("Helper")` (decoders/mod.rs:90);
//! - a BPE merge `(a, b)` whose merged token is longer than every vocabulary entry overruns a
//!   buffer (models/bpe/model.rs:267), and one whose `b` lacks `continuing_subword_prefix`
//!   underflows or cuts a character.

use serde_json::Value;

/// `Err` (with serde's line and column, or the bad merge) when `json` would make `tokenizers`
/// panic; `Ok` otherwise, which does not mean the file is a valid tokenizer.
pub fn check(json: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let Some(model) = v.get("model") else { return Ok(()) };
    let (Some(vocab), Some(merges)) =
        (model.get("vocab").and_then(Value::as_object), model.get("merges").and_then(Value::as_array))
    else {
        return Ok(());
    };
    let prefix = model.get("continuing_subword_prefix").and_then(Value::as_str).unwrap_or("");
    for (i, merge) in merges.iter().enumerate() {
        // `[a, b]`, or the legacy `"a b"`.
        let (a, b) = match merge {
            Value::Array(pair) => match (pair.first().and_then(Value::as_str), pair.get(1).and_then(Value::as_str)) {
                (Some(a), Some(b)) if pair.len() == 2 => (a, b),
                _ => continue, // not a pair of strings: `tokenizers` rejects it itself
            },
            Value::String(s) => match s.split_once(' ') {
                Some((a, b)) if !b.contains(' ') => (a, b),
                _ => continue,
            },
            _ => continue,
        };
        if !vocab.contains_key(a) || !vocab.contains_key(b) {
            continue; // `tokenizers` names the token itself (MergeTokenOutOfVocabulary)
        }
        let merged = b.strip_prefix(prefix).map(|rest| format!("{a}{rest}"));
        if !merged.is_some_and(|m| vocab.contains_key(&m)) {
            return Err(format!("merge {i} ({a:?}, {b:?}): the merged token is not in the vocabulary"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_and_merges_past_the_vocabulary_are_errors() {
        let e = check(br#"{"decoder":{"type":"ByteLevel" "x":1}}"#).unwrap_err();
        assert!(e.contains("column"), "{e}");
        assert!(check(br#"{"decoder":{"type":"ByteLevel","x":"\ud800"}}"#).is_err());
        let bpe = |merges: &str| {
            format!(r#"{{"model":{{"type":"BPE","vocab":{{"a":0,"bb":1,"abb":2,"b":3}},"merges":{merges}}}}}"#)
        };
        assert!(check(bpe(r#"[["a","bb"]]"#).as_bytes()).is_ok());
        assert!(check(bpe(r#"["a bb"]"#).as_bytes()).is_ok());
        // "a" + "abb" is longer than any entry: tokenizers slices past its buffer.
        let e = check(bpe(r#"[["a","abb"]]"#).as_bytes()).unwrap_err();
        assert!(e.contains("merge 0") && e.contains("not in the vocabulary"), "{e}");
        // Unknown tokens are left to tokenizers' own error.
        assert!(check(bpe(r#"[["a","zz"]]"#).as_bytes()).is_ok());
    }
}
