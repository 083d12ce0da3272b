//! Text corpora and the byte-level BPE tokenizer (being written).
