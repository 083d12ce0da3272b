//! The text encoder: a fixed, untrained map from text to a unit vector.
//!
//! Text is lowercased and split into words (runs of alphanumeric characters). Each word gives
//! features: its character n-grams with `<` `>` word-boundary markers (fastText's subwords,
//! Bojanowski et al. 2017, arXiv 1607.04606), the whole word, and the pair it forms with the
//! previous word. Each feature is hashed ([`crate::hash`]) to one of `dims` buckets with a ±1
//! sign from another bit: a count-sketch (Charikar et al. 2002), i.e. a fixed sparse random
//! projection of the huge sparse feature vector, whose dot products are unbiased estimates of
//! the sparse ones. Optionally each feature is weighted by its IDF, counted over the indexed
//! documents at build time in a hashed table that is stored with the index, so queries are
//! encoded exactly as the documents were. Finally the vector is L2-normalised.
//!
//! Names matter most here: a biography repeats its person's full name in every sentence and
//! names one other person once, and the questions are "When was <name> born?". Raw term counts
//! (no sublinear tf) keep the six-fold subject ahead of the once-named relation; IDF silences
//! the template words every biography shares; whole words, weighted above n-grams, separate
//! "Zana Kolvworth" from the 170 other Zanas and the 30 other Kolvworths of a 100K world.
//! docs/retrieval.md has the measurements behind the default.

use crate::error::{Error, Result};
use crate::hash::{fnv1a, ln, mix, FNV_OFFSET};
use serde::{Deserialize, Serialize};

/// The encoder's name in configs and saved indexes. Anything that changes the vectors for the
/// same config (tokenising, hashing, weighting) must get a new name, so an old index is refused
/// instead of searched with mismatched queries.
pub const ENCODER_KIND: &str = "hashed-char-ngrams-v1";

/// Largest `dims` accepted: keeps int8 dot products far from i32 overflow (65536 · 128² < 2³¹).
pub const MAX_DIMS: usize = 1 << 16;
/// Largest IDF table accepted (16 MiB).
pub const MAX_IDF_BUCKETS: usize = 1 << 24;
/// IDF values are kept in sixteenths, one byte a slot (0..=255 → 0..=15.94): a quarter of an f32
/// table, which the page downloads, and exactly representable, so no float rounding can differ.
/// `ln(1 + 10⁶)` ≈ 13.8 still fits.
pub const IDF_STEP: f32 = 1.0 / 16.0;

// Feature-type tags, hashed first so a word and an identical n-gram land in different buckets.
const TAG_NGRAM: u8 = 1;
const TAG_WORD: u8 = 2;
const TAG_PAIR: u8 = 3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    pub kind: String,       // ENCODER_KIND; saved indexes with another kind are refused
    pub dims: usize,        // vector dimensions = count-sketch buckets
    pub ngram_min: usize,   // shortest character n-gram, the '<' '>' markers counted
    pub ngram_max: usize,   // longest character n-gram
    pub ngram_weight: f32,  // weight of each n-gram occurrence (0 = no n-grams)
    pub word_weight: f32,   // weight of each whole-word occurrence (0 = none)
    pub pair_weight: f32,   // weight of each adjacent word pair occurrence (0 = none)
    pub idf_buckets: usize, // hashed document-frequency table size (0 = no IDF)
}

impl Default for EncoderConfig {
    /// The measured choice (docs/retrieval.md): recall@1 1.0 on the 3000 questions of a
    /// 100K-person world, 132 B a document, under 1 ms a query. Word pairs stay off: millions of
    /// distinct pairs flood a 2^18-slot IDF table and every slot's IDF with it.
    fn default() -> Self {
        Self {
            kind: ENCODER_KIND.to_string(),
            dims: 128,
            ngram_min: 3,
            ngram_max: 5,
            ngram_weight: 1.0,
            word_weight: 2.0,
            pair_weight: 0.0,
            idf_buckets: 1 << 18,
        }
    }
}

impl EncoderConfig {
    /// Checks every field; the message names the field and its allowed range.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.kind != ENCODER_KIND {
            return Err(format!("unknown encoder kind {:?}, this build knows {ENCODER_KIND:?}", self.kind));
        }
        if self.dims == 0 || self.dims > MAX_DIMS {
            return Err(format!("dims {} is not in 1..={MAX_DIMS}", self.dims));
        }
        for (name, w) in
            [("ngram_weight", self.ngram_weight), ("word_weight", self.word_weight), ("pair_weight", self.pair_weight)]
        {
            if !(0.0..=1e6).contains(&w) {
                return Err(format!("{name} {w} is not a finite weight in 0..=1e6"));
            }
        }
        if self.ngram_weight == 0.0 && self.word_weight == 0.0 && self.pair_weight == 0.0 {
            return Err("ngram_weight, word_weight and pair_weight are all 0: no features".to_string());
        }
        if self.ngram_weight > 0.0 && !(1 <= self.ngram_min && self.ngram_min <= self.ngram_max && self.ngram_max <= 16)
        {
            return Err(format!(
                "n-gram sizes {}..={} are not within 1..=16, min ≤ max",
                self.ngram_min, self.ngram_max
            ));
        }
        if self.idf_buckets > MAX_IDF_BUCKETS {
            return Err(format!("idf_buckets {} is over {MAX_IDF_BUCKETS}", self.idf_buckets));
        }
        Ok(())
    }
}

/// A frozen encoder: its config plus, when IDF is on, the IDF table of the documents it was fit on.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoder {
    config: EncoderConfig,
    idf: Option<Vec<u8>>, // IDF in IDF_STEPs, len = config.idf_buckets; None when idf_buckets = 0
}

impl Encoder {
    /// Fixes the encoder for these documents: counts each hashed feature's document frequency
    /// when `config.idf_buckets > 0` (nothing to fit otherwise).
    pub fn fit<S: AsRef<str>>(config: EncoderConfig, documents: &[S]) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        if config.idf_buckets == 0 {
            return Ok(Self { config, idf: None });
        }
        let slots = config.idf_buckets;
        let mut df = vec![0u32; slots];
        let mut seen = Vec::new();
        for doc in documents {
            seen.clear();
            for_each_feature(&config, doc.as_ref(), |h, _| seen.push(idf_slot(h, slots)));
            seen.sort_unstable();
            seen.dedup();
            for &s in &seen {
                df[s] += 1;
            }
        }
        let idf = df.iter().map(|&d| idf_of(d, documents.len())).collect();
        Ok(Self { config, idf: Some(idf) })
    }

    /// An encoder from a stored IDF table (`Some` exactly when `config.idf_buckets > 0`).
    pub fn with_idf(config: EncoderConfig, idf: Option<Vec<u8>>) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        match &idf {
            None if config.idf_buckets == 0 => {}
            Some(t) if t.len() == config.idf_buckets => {}
            _ => {
                return Err(Error::Config(format!(
                    "idf_buckets is {} but the IDF table has {} entries",
                    config.idf_buckets,
                    idf.as_ref().map_or(0, Vec::len)
                )))
            }
        }
        Ok(Self { config, idf })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The IDF table, one weight per hashed feature slot, in [`IDF_STEP`]s.
    pub fn idf(&self) -> Option<&[u8]> {
        self.idf.as_deref()
    }

    pub fn dims(&self) -> usize {
        self.config.dims
    }

    /// The unit vector of `text` (all zeros when it has no feature with a nonzero weight).
    /// Features are added in text order and the norm summed in index order, all in IEEE
    /// arithmetic, so the result is bit-identical natively and in wasm.
    pub fn encode(&self, text: &str) -> Vec<f32> {
        let dims = self.config.dims;
        let mut v = vec![0f32; dims];
        for_each_feature(&self.config, text, |h, w| {
            let w = match &self.idf {
                Some(t) => w * (f32::from(t[idf_slot(h, t.len())]) * IDF_STEP),
                None => w,
            };
            let b = ((h >> 1) % dims as u64) as usize;
            v[b] += if h & 1 == 0 { w } else { -w };
        });
        let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for x in &mut v {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
        v
    }
}

/// IDF of a feature slot seen in `df` of `n` documents, in [`IDF_STEP`]s (rounded, at most 255):
/// `ln((1 + n) / (1 + df))`, which is 0 for a feature every document has. A feature no document
/// has also gets 0, not the maximum: it can match nothing, and in a query ("When", "did") it
/// would only add hash-collision noise.
fn idf_of(df: u32, n: usize) -> u8 {
    if df == 0 {
        return 0;
    }
    let idf = ln((1.0 + n as f64) / (1.0 + f64::from(df)));
    (idf / f64::from(IDF_STEP)).round().clamp(0.0, 255.0) as u8
}

/// The IDF slot takes bits 24.. of the hash; the bucket takes bits 1.. and the sign bit 0, so the
/// three are independent for any power-of-two sizes up to 2^23 buckets.
fn idf_slot(h: u64, slots: usize) -> usize {
    ((h >> 24) % slots as u64) as usize
}

/// Calls `f(word)` for each lowercased run of alphanumeric characters of `text`.
pub(crate) fn for_each_word(text: &str, mut f: impl FnMut(&str)) {
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            f(&word);
            word.clear();
        }
    }
    if !word.is_empty() {
        f(&word);
    }
}

/// Calls `f(hash, weight)` for each feature occurrence of `text`, in text order: per word, its
/// n-grams (shortest first, left to right), then the word, then the pair with the previous word.
fn for_each_feature(cfg: &EncoderConfig, text: &str, mut f: impl FnMut(u64, f32)) {
    let ngram_seed = fnv1a(FNV_OFFSET, &[TAG_NGRAM]);
    let word_seed = fnv1a(FNV_OFFSET, &[TAG_WORD]);
    let pair_seed = fnv1a(FNV_OFFSET, &[TAG_PAIR]);
    let mut marked = String::new(); // "<word>"
    let mut starts = Vec::new(); // byte offset of each char of `marked`, then its length
    let mut prev = String::new();
    for_each_word(text, |word| {
        if cfg.ngram_weight > 0.0 {
            marked.clear();
            marked.push('<');
            marked.push_str(word);
            marked.push('>');
            starts.clear();
            starts.extend(marked.char_indices().map(|(i, _)| i));
            starts.push(marked.len());
            let chars = starts.len() - 1;
            for n in cfg.ngram_min..=cfg.ngram_max.min(chars) {
                for i in 0..=chars - n {
                    let gram = &marked.as_bytes()[starts[i]..starts[i + n]];
                    f(mix(fnv1a(ngram_seed, gram)), cfg.ngram_weight);
                }
            }
        }
        if cfg.word_weight > 0.0 {
            f(mix(fnv1a(word_seed, word.as_bytes())), cfg.word_weight);
        }
        if cfg.pair_weight > 0.0 && !prev.is_empty() {
            // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash apart.
            let h = fnv1a(fnv1a(fnv1a(pair_seed, prev.as_bytes()), &[0xff]), word.as_bytes());
            f(mix(h), cfg.pair_weight);
        }
        prev.clear();
        prev.push_str(word);
    });
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    fn features(cfg: &EncoderConfig, text: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for_each_feature(cfg, text, |h, _| out.push(h));
        out
    }

    #[test]
    fn words_are_lowercased_alphanumeric_runs() {
        let mut words = Vec::new();
        for_each_word("Zana Kolvworth's field: ART-history, 1931.  Ölberg", |w| words.push(w.to_string()));
        assert_eq!(words, ["zana", "kolvworth", "s", "field", "art", "history", "1931", "ölberg"]);
    }

    #[test]
    fn feature_counts_follow_the_config() {
        let cfg =
            EncoderConfig { ngram_min: 3, ngram_max: 5, word_weight: 1.0, pair_weight: 1.0, ..Default::default() };
        // "<ab>" has 4 chars: 2 trigrams + 1 four-gram; "<cde>" has 5: 3 + 2 + 1. 2 words, 1 pair.
        assert_eq!(features(&cfg, "ab cde").len(), 3 + 6 + 2 + 1);
        let only_words = EncoderConfig { ngram_weight: 0.0, pair_weight: 0.0, ..cfg.clone() };
        assert_eq!(features(&only_words, "ab cde"), features(&only_words, "AB, Cde!"));
        assert_eq!(features(&only_words, "ab cde").len(), 2);
    }

    #[test]
    fn pairs_do_not_collide_across_the_word_boundary() {
        let cfg = EncoderConfig { ngram_weight: 0.0, word_weight: 0.0, pair_weight: 1.0, ..Default::default() };
        assert_ne!(features(&cfg, "ab c"), features(&cfg, "a bc"));
    }

    #[test]
    fn idf_is_zero_for_features_in_every_document_or_in_none() {
        assert_eq!(idf_of(0, 10), 0);
        assert_eq!(idf_of(10, 10), 0);
        assert_eq!(idf_of(1, 99), 63); // ln(100 / 2) = 3.912 = 62.6 sixteenths, rounded
        assert!(idf_of(1, 10) > idf_of(2, 10));
    }

    #[test]
    fn invalid_configs_are_refused_with_the_field_named() {
        let bad = [
            (EncoderConfig { dims: 0, ..Default::default() }, "dims"),
            (EncoderConfig { kind: "x".into(), ..Default::default() }, "kind"),
            (EncoderConfig { ngram_min: 4, ngram_max: 3, ..Default::default() }, "n-gram"),
            (EncoderConfig { word_weight: f32::NAN, ..Default::default() }, "word_weight"),
            (
                EncoderConfig { ngram_weight: 0.0, word_weight: 0.0, pair_weight: 0.0, ..Default::default() },
                "no features",
            ),
            (EncoderConfig { idf_buckets: usize::MAX, ..Default::default() }, "idf_buckets"),
        ];
        for (cfg, word) in bad {
            let e = Encoder::fit(cfg, &["a"]).unwrap_err().to_string();
            assert!(e.contains(word), "{e:?} should name {word}");
        }
    }
}
