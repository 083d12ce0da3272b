//! Test data shared by the native and the wasm tests: a tiny generator of biographies shaped
//! like the project's world (crates/itera-data/src/world.rs, which this crate does not depend on),
//! and the golden values both platforms must reproduce.
#![allow(dead_code)] // each test file uses a different part

use itera_retrieval::{Encoder, EncoderConfig, Index};

/// sha256 of `vectors.bin` + `scales.bin` of `golden_index()`. Asserted natively
/// (tests/golden.rs) and in headless Chromium (tests/wasm.rs): a change that moves any stored
/// vector, on either platform, fails here. Regenerate on purpose, in its own commit.
pub const GOLDEN_CHECKSUM: &str = "eb0f4d9ae24a0490489a4bced5194ab05cc433ff6095439f21576cb44a7f1e14";
/// sha256 of the f32 bits (little-endian) of the golden index's encoding of `GOLDEN_QUERIES[0]`.
pub const GOLDEN_QUERY_VECTOR: &str = "6a29559977bff005e7e6c2801de161da453b553d219d60bc756356005282e333";
/// (question, expected top-3 documents) on `golden_index()`. Doc 0 is Pena Kolwick's, 57 Belette
/// Threvar's, 9 Ilse Haskoholt's own; 57 names her once, as Belette's mentor, and is not in the
/// top 10: a question about the relation's other side needs more than this retriever.
pub const GOLDEN_QUERIES: [(&str, [usize; 3]); 3] = [
    ("When was Pena Kolwick born?", [0, 84, 118]),
    ("What did Belette Threvar study?", [57, 101, 115]),
    ("Whose mentor is Ilse Haskoholt?", [9, 38, 171]),
];

/// SplitMix64 (deterministic, no dependency).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const FIRST_A: &[&str] = &["Za", "Ta", "Ke", "Pe", "Ga", "Al", "Da", "Ro", "Il", "Ul", "Be", "Tha"];
const FIRST_B: &[&str] = &["na", "mo", "lette", "rek", "len", "rine", "sell", "se", "ara", "line", "ric"];
const LAST_A: &[&str] =
    &["Kol", "Ith", "Thre", "Brel", "Tolv", "Rask", "Jast", "Hask", "Stav", "Ask", "Lund", "Fenn", "Kel", "Brand"];
const LAST_B: &[&str] =
    &["vworth", "eford", "laner", "wick", "mere", "mar", "omere", "oholt", "ibright", "owin", "var", "oth"];
const PLACE_A: &[&str] = &["Dru", "Lir", "Thol", "Bur", "Pim", "Zend", "Wou", "Quar"];
const PLACE_B: &[&str] = &["shesk", "foum", "ci Falls", "heil", "outh", "rund", "drend", "ston"];
const FIELDS: &[&str] = &["art history", "economics", "civil engineering", "oceanography", "law", "nutrition science"];
const COMPANIES: &[&str] = &["Peissoft", "Port Trading Company", "Askamore & Lundoshaw", "Jastawin & Quarriquist"];
const SCHOOLS: &[&str] = &["Haskberg College", "Ithagard College", "Askewin Institute of Technology"];
const MONTHS: &[&str] = &["January", "March", "May", "July", "September", "October", "November"];
const RELATIONS: &[&str] = &["tutor", "mentor", "landlord", "biographer", "neighbour"];

/// `n` biographies (six shuffled, paraphrased facts naming the person in full, one of them
/// naming another person) and, per person, "When was X born?" and "What did X study?".
pub fn world(n: usize, seed: u64) -> (Vec<String>, Vec<(usize, String)>) {
    let mut rng = Rng(seed);
    let mut names: Vec<String> = Vec::new();
    while names.len() < n {
        let name = format!("{}{} {}{}", rng.pick(FIRST_A), rng.pick(FIRST_B), rng.pick(LAST_A), rng.pick(LAST_B));
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut docs = Vec::new();
    let mut queries = Vec::new();
    for (i, p) in names.iter().enumerate() {
        let place = format!("{}{}", rng.pick(PLACE_A), rng.pick(PLACE_B));
        let date = format!("{} {}, {}", rng.pick(MONTHS), 1 + rng.below(28), 1920 + rng.below(90));
        let (field, company, school) = (rng.pick(FIELDS), rng.pick(COMPANIES), rng.pick(SCHOOLS));
        let other = &names[(i + 1 + rng.below(n.max(2) - 1)) % n];
        let rel = rng.pick(RELATIONS);
        let v = rng.below(2) == 0;
        let mut facts = [
            if v { format!("{p} was born in {place}.") } else { format!("{place} is the birthplace of {p}.") },
            if v { format!("{p} was born on {date}.") } else { format!("The birth of {p} took place on {date}.") },
            if v { format!("{p} studied {field}.") } else { format!("{p}'s field of study was {field}.") },
            if v { format!("{p} works for {company}.") } else { format!("{p} is employed by {company}.") },
            if v {
                format!("{p} is a graduate of {school}.")
            } else {
                format!("{school} is where {p} went to university.")
            },
            format!("{other} is the {rel} of {p}."),
        ];
        for j in (1..facts.len()).rev() {
            facts.swap(j, rng.below(j + 1));
        }
        docs.push(facts.join(" ") + "\n");
        queries.push((i, format!("When was {p} born?")));
        queries.push((i, format!("What did {p} study?")));
    }
    (docs, queries)
}

/// 200 biographies with seed 7, indexed with the default encoder: the golden fixture.
pub fn golden_index() -> Index {
    let (docs, _) = world(200, 7);
    Index::build(docs, EncoderConfig::default()).unwrap()
}

/// A `docs`-vector index of `dims` whose vectors are patterned bytes (no encoding: building
/// 100K real vectors takes seconds in a debug build), for timing the search loop alone. The
/// encoder's IDF comes from the golden documents, so queries encode as they would for real.
pub fn synthetic_index(docs: usize, dims: usize) -> Index {
    let config = EncoderConfig { dims, ..EncoderConfig::default() };
    let encoder = Encoder::fit(config, &world(200, 7).0).unwrap();
    let mut rng = Rng(99);
    let vectors = (0..docs * dims).map(|_| ((rng.next() % 255) as i16 - 127) as i8).collect();
    let scales = (0..docs).map(|_| 1.0 / 127.0 / (dims as f32).sqrt()).collect();
    let documents = (0..docs).map(|i| format!("document {i}")).collect();
    Index::from_quantized(encoder, vectors, scales, documents).unwrap()
}

/// p-th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Hex sha256 of f32s as little-endian bytes (the raw bits, before quantisation).
pub fn f32_sha256(v: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}
