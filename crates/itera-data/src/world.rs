//! The embedded default corpus: a deterministic "synthetic world" of fictional people.
//!
//! The project neither downloads nor embeds third-party text, so its default training corpus, its
//! retrieval corpus and its targeted knowledge task are all generated here, from a seed:
//!
//! - **People.** `N` fictional entities (10,000 by default, at most 100,000), each with a unique full
//!   name built from syllable tables, a birth date, a birth city, a university, a field of study, an
//!   employer and one relation (mentor, doctor, ...) to another entity of the same world. Cities,
//!   universities and employers come from generated pools of a few hundred names, and every value is
//!   drawn uniformly, so no answer dominates: guessing the commonest value scores about 1-3%.
//! - **Biographies.** Each entity renders as one short document, one sentence per attribute. Every
//!   attribute has four paraphrase templates and the sentence order is shuffled per document, so a
//!   model has to learn the facts, not a phrasing or a position. Every sentence names its entity in
//!   full, so a single sentence states a single fact unambiguously (and is a self-contained unit for
//!   retrieval).
//! - **QA split.** The entities are split once, by a seeded shuffle. For the "QA-train" fraction (half
//!   by default) the six question/answer pairs are training documents too: they teach the `Q:`/`A:`
//!   format and the step from a fact read in a biography to an answer. The pairs of the other
//!   ("QA-held-out") entities are never trained on, although their biographies are. The held-out set
//!   [`World::qa_heldout`] thus measures, by exact match of the greedy completion, whether the model
//!   can answer questions about facts it has only read in biographies.
//! - **Validation.** [`World::valid_documents`] re-renders biographies with a different template and
//!   order draw, so the validation loss measures knowledge of the facts rather than memorised
//!   sentences.
//!
//! Everything is a pure function of [`WorldConfig`]. Each purpose (pools, people, split, the rendering
//! of each document, orders) draws from its own SplitMix64 stream, so the result does not depend on
//! which method is called first, and documents are rendered on demand from the stored entities.

use crate::rng::Rng;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The fewest entities of a world: every entity's relation names a *different* entity.
pub const MIN_ENTITIES: usize = 2;
/// The most entities of a world: enough for a 100K-document retrieval corpus, small enough to
/// generate in well under a second.
pub const MAX_ENTITIES: usize = 100_000;

/// What to generate: how many entities, from which seed, and which fraction is QA-train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Number of entities, in `MIN_ENTITIES..=MAX_ENTITIES`.
    pub entities: usize,
    /// Seed of every random draw.
    pub seed: u64,
    /// Fraction of entities whose QA pairs are in the training documents, in `[0, 1]`.
    pub qa_train_fraction: f64,
    /// Fraction of entities that are never trained on at all, neither biography nor QA ("unseen":
    /// only a retrieval index holds them), taken from the QA-held-out side; `qa_train_fraction +
    /// unseen_fraction` must be at most 1. 0 (the default) leaves every biography in training.
    #[serde(default)]
    pub unseen_fraction: f64,
}

impl Default for WorldConfig {
    /// 10,000 entities, seed 0, half of them QA-train.
    fn default() -> Self {
        Self { entities: 10_000, seed: 0, qa_train_fraction: 0.5, unseen_fraction: 0.0 }
    }
}

impl WorldConfig {
    /// Checks the bounds, with an error that names the offending field and its allowed range.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_ENTITIES..=MAX_ENTITIES).contains(&self.entities) {
            bail!(
                "world: `entities` must be in {MIN_ENTITIES}..={MAX_ENTITIES}, got {} (every entity's relation \
                 names another entity, and the corpus is capped at {MAX_ENTITIES} entities)",
                self.entities
            );
        }
        // Written as a negated range test so that NaN is rejected too.
        if !(0.0..=1.0).contains(&self.qa_train_fraction) {
            bail!("world: `qa_train_fraction` must be in [0, 1], got {}", self.qa_train_fraction);
        }
        if !(0.0..=1.0).contains(&self.unseen_fraction) || self.qa_train_fraction + self.unseen_fraction > 1.0 {
            bail!(
                "world: `unseen_fraction` must be in [0, 1 - qa_train_fraction] = [0, {}], got {}",
                1.0 - self.qa_train_fraction,
                self.unseen_fraction
            );
        }
        Ok(())
    }
}

/// One fictional person. Every field is the exact answer string of its question, except
/// `relation_to`, whose answer is that entity's `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// Unique full name, "First Last".
    pub name: String,
    /// E.g. "March 3, 1978".
    pub birth_date: String,
    pub birth_city: String,
    pub university: String,
    /// An ordinary academic field, e.g. "marine biology".
    pub field: String,
    pub employer: String,
    /// One of [`RELATION_KINDS`], e.g. "mentor".
    pub relation_kind: String,
    /// Index of the related entity; never the entity itself.
    pub relation_to: usize,
}

/// A queryable attribute of an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attribute {
    BirthDate,
    BirthCity,
    University,
    Field,
    Employer,
    Relation,
}

impl Attribute {
    /// Every attribute, in a fixed order (the order of QA items per entity).
    pub const ALL: [Attribute; 6] = [
        Attribute::BirthDate,
        Attribute::BirthCity,
        Attribute::University,
        Attribute::Field,
        Attribute::Employer,
        Attribute::Relation,
    ];

    /// The snake_case name used in [`QaItem::attribute`] and reports.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::BirthDate => "birth_date",
            Attribute::BirthCity => "birth_city",
            Attribute::University => "university",
            Attribute::Field => "field",
            Attribute::Employer => "employer",
            Attribute::Relation => "relation",
        }
    }

    /// The inverse of [`Attribute::name`].
    pub fn from_name(name: &str) -> Option<Attribute> {
        Attribute::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The paraphrase templates of the attribute's biography sentence: `{n}` is the full name, `{v}`
    /// the value and `{k}` the relation kind. No template starts with `{v}` unless the value is
    /// capitalised (fields are lower case), and none puts an article before `{k}`.
    fn templates(self) -> &'static [&'static str] {
        match self {
            Attribute::BirthDate => &[
                "{n} was born on {v}.",
                "{n}'s date of birth is {v}.",
                "{v} is the day {n} was born.",
                "The birth of {n} took place on {v}.",
            ],
            Attribute::BirthCity => &[
                "{n} was born in {v}.",
                "{v} is the birthplace of {n}.",
                "{n}'s hometown is {v}.",
                "{n} is a native of {v}.",
            ],
            Attribute::University => &[
                "{n} attended {v}.",
                "{n} is a graduate of {v}.",
                "{v} is where {n} went to university.",
                "{n} earned a degree at {v}.",
            ],
            Attribute::Field => &[
                "{n} studied {v}.",
                "{n} majored in {v}.",
                "{n}'s field of study was {v}.",
                "The subject {n} studied was {v}.",
            ],
            Attribute::Employer => {
                &["{n} works for {v}.", "{n} is employed by {v}.", "{v} employs {n}.", "{n} has a job at {v}."]
            }
            Attribute::Relation => &[
                "{n}'s {k} is {v}.",
                "{v} is the {k} of {n}.",
                "{v} serves as {n}'s {k}.",
                "{v} is known as {n}'s {k}.",
            ],
        }
    }

    /// The question template. One per attribute: the task measures recall of facts, and a single
    /// phrasing keeps the learned Q/A format from being a confound.
    fn question_template(self) -> &'static str {
        match self {
            Attribute::BirthDate => "When was {n} born?",
            Attribute::BirthCity => "Where was {n} born?",
            Attribute::University => "Which university did {n} attend?",
            Attribute::Field => "What did {n} study?",
            Attribute::Employer => "Which company does {n} work for?",
            Attribute::Relation => "Who is {n}'s {k}?",
        }
    }
}

/// One question about one entity, with its exact answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QaItem {
    /// Index of the entity asked about.
    pub entity: usize,
    /// [`Attribute::name`] of the attribute asked about.
    pub attribute: String,
    pub question: String,
    pub answer: String,
}

impl QaItem {
    /// The evaluation prompt, `"Q: {question}\nA:"`; the expected completion is `" {answer}\n"`.
    pub fn prompt(&self) -> String {
        crate::prompt::qa_prompt(&self.question)
    }

    /// The training text of the pair, `"Q: {question}\nA: {answer}\n"`.
    pub fn text(&self) -> String {
        self.prompt() + &crate::prompt::completion(&self.answer)
    }
}

/// A generated world: its entities, the QA split, and on-demand renderings of its documents.
#[derive(Debug, Clone)]
pub struct World {
    pub config: WorldConfig,
    pub entities: Vec<Entity>,
    /// `qa_train[i]`: entity `i`'s QA pairs are training documents.
    qa_train: Vec<bool>,
    /// `unseen[i]`: nothing of entity `i` is a training document (never with `qa_train[i]`).
    unseen: Vec<bool>,
}

// Stream purposes: each kind of draw has its own stream, so adding a draw to one purpose does not
// shift the others, and a document renders the same whatever was rendered before it.
const STREAM_POOLS: u64 = 1;
const STREAM_PEOPLE: u64 = 2;
const STREAM_SPLIT: u64 = 3;
const STREAM_BIOGRAPHY: u64 = 4;
const STREAM_QA_ORDER: u64 = 5;
const STREAM_DOC_ORDER: u64 = 6;
const STREAM_VALID_PICK: u64 = 7;
const STREAM_VALID_RENDER: u64 = 8;

/// The SplitMix64 output function: a bijective mixer, so distinct inputs give distinct seeds.
fn mix(x: u64) -> u64 {
    Rng::new(x).next_u64()
}

/// The stream of one (seed, purpose, index), e.g. the training rendering of entity 17.
fn stream(seed: u64, purpose: u64, index: u64) -> Rng {
    Rng::new(mix(mix(mix(seed) ^ purpose) ^ index))
}

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len())]
}

fn shuffle<T>(rng: &mut Rng, xs: &mut [T]) {
    for i in (1..xs.len()).rev() {
        xs.swap(i, rng.below(i + 1));
    }
}

// ---- Names -------------------------------------------------------------------------------------
// Curated syllables rather than free letter strings: the names stay pronounceable (and tokenise into
// a few BPE pieces), while the combinations are clearly invented.

const FIRST_ONSETS: [&str; 30] = [
    "Al", "Bel", "Cal", "Dar", "El", "Fen", "Gal", "Hal", "Is", "Jor", "Kel", "Lir", "Mar", "Nor", "Or", "Per", "Quel",
    "Ros", "Sel", "Tam", "Ul", "Val", "Wen", "Yar", "Zan", "Bri", "Cor", "Thar", "Mi", "Tor",
];
const FIRST_ENDINGS: [&str; 20] = [
    "a", "an", "en", "ia", "ic", "is", "o", "on", "or", "us", "ette", "iel", "wyn", "ard", "ine", "ara", "ell", "ias",
    "ek", "ima",
];
const SURNAME_STEMS: [&str; 30] = [
    "Ask", "Brel", "Cask", "Dov", "Eld", "Fark", "Grel", "Hask", "Ith", "Jast", "Kolv", "Lund", "Morv", "Nask", "Orm",
    "Pell", "Quarr", "Rask", "Stav", "Threl", "Ulv", "Vask", "Wyr", "Yarn", "Zell", "Brom", "Carv", "Drav", "Fenn",
    "Tolv",
];
const SURNAME_LINKS: [&str; 5] = ["a", "e", "i", "o", ""];
// No tail ends in "s", so "{n}'s" always reads naturally.
const SURNAME_TAILS: [&str; 24] = [
    "bright", "dale", "den", "ford", "gard", "holt", "ley", "mar", "mere", "more", "ner", "quist", "ridge", "shaw",
    "stead", "strom", "ton", "vale", "wick", "win", "worth", "by", "lund", "berg",
];

fn first_name(rng: &mut Rng) -> String {
    format!("{}{}", pick(rng, &FIRST_ONSETS), pick(rng, &FIRST_ENDINGS))
}

fn surname(rng: &mut Rng) -> String {
    let (stem, link, tail) = (pick(rng, &SURNAME_STEMS), pick(rng, &SURNAME_LINKS), pick(rng, &SURNAME_TAILS));
    // A bare joint must not double a letter ("Quarrridge"): link those with a vowel instead.
    let link = if link.is_empty() && stem.chars().last() == tail.chars().next() { "e" } else { link };
    format!("{stem}{link}{tail}")
}

// Place and brand words: onset-vowel-coda syllables. Inner syllables take only soft codas, so that
// no unpronounceable consonant cluster forms at a joint.
const ONSETS: [&str; 24] = [
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "t", "tr", "v", "w", "z", "th",
    "sh", "st",
];
const VOWELS: [&str; 8] = ["a", "e", "i", "o", "u", "ai", "ei", "ou"];
const CODAS: [&str; 12] = ["", "n", "r", "l", "s", "m", "nd", "rn", "th", "x", "sk", "lt"];
const SOFT_CODAS: usize = 5;

fn word(rng: &mut Rng, syllables: usize) -> String {
    let mut w = String::new();
    for s in 0..syllables {
        w.push_str(pick(rng, &ONSETS));
        w.push_str(pick(rng, &VOWELS));
        w.push_str(pick(rng, if s + 1 == syllables { &CODAS } else { &CODAS[..SOFT_CODAS] }));
    }
    capitalise(&w)
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ---- Pools -------------------------------------------------------------------------------------

/// Pool sizes: a few hundred values each, so at 10,000 entities a value covers ~0.3-0.7% of them.
/// Seeds of the further worlds of [`World::generate_with_many_places`] (xored with the world's).
const MANY_PLACES_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

const CITY_POOL: usize = 300;
const UNIVERSITY_POOL: usize = 150;
const EMPLOYER_POOL: usize = 300;

const CITY_TAILS: [&str; 14] = [
    "ford", "haven", "port", "bridge", "field", "mouth", "dale", "burg", "holm", "wick", "stead", "moor", "crest",
    "fall",
];
const COMPANY_SUFFIXES: [&str; 20] = [
    "Industries",
    "Labs",
    "Systems",
    "Holdings",
    "Dynamics",
    "Foods",
    "Logistics",
    "Works",
    "Group",
    "Analytics",
    "Textiles",
    "Robotics",
    "Pharmaceuticals",
    "Motors",
    "Media",
    "Energy",
    "Software",
    "Instruments",
    "Mining",
    "Insurance",
];
const COMPANY_TRADES: [&str; 8] =
    ["Shipping", "Brewing", "Trading", "Railway", "Publishing", "Ferry", "Canning", "Telegraph"];
const BRAND_ENDINGS: [&str; 8] = ["ex", "ix", "ora", "tech", "soft", "corp", "io", "ium"];

/// Ordinary academic fields, written out: these are everyday words, not generated ones.
pub const FIELDS: [&str; 40] = [
    "marine biology",
    "astrophysics",
    "organic chemistry",
    "medieval history",
    "linguistics",
    "civil engineering",
    "economics",
    "philosophy",
    "mathematics",
    "computer science",
    "architecture",
    "sociology",
    "psychology",
    "geology",
    "botany",
    "music theory",
    "classical literature",
    "political science",
    "anthropology",
    "statistics",
    "mechanical engineering",
    "electrical engineering",
    "nursing",
    "law",
    "journalism",
    "art history",
    "agricultural science",
    "veterinary medicine",
    "materials science",
    "oceanography",
    "meteorology",
    "archaeology",
    "nutrition science",
    "urban planning",
    "theatre studies",
    "biochemistry",
    "ecology",
    "accounting",
    "public health",
    "robotics",
];

/// Relation kinds. All are one-directional, so "Who is X's K?" has exactly one answer: with a
/// symmetric kind such as "sibling", another entity's "Y's sibling is X" would make Y a second
/// correct answer to the question about X. None starts with a vowel (no "a"/"an" to agree).
pub const RELATION_KINDS: [&str; 6] = ["mentor", "doctor", "lawyer", "landlord", "tutor", "biographer"];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const FIRST_YEAR: usize = 1900;
const LAST_YEAR: usize = 2005;

fn days_in_month(month: usize, year: usize) -> usize {
    match month {
        1 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        1 => 28,
        3 | 5 | 8 | 10 => 30,
        _ => 31,
    }
}

fn birth_date(rng: &mut Rng) -> String {
    let year = FIRST_YEAR + rng.below(LAST_YEAR - FIRST_YEAR + 1);
    let month = rng.below(12);
    let day = 1 + rng.below(days_in_month(month, year));
    format!("{} {day}, {year}", MONTHS[month])
}

/// Draws until a value not yet in `seen` comes up, and records it. The spaces drawn from are orders of
/// magnitude larger than what is taken from them, so a long run of misses means a bug, reported as
/// an error rather than a hang.
fn draw_unique(
    rng: &mut Rng,
    seen: &mut HashSet<String>,
    what: &str,
    draw: impl Fn(&mut Rng) -> String,
) -> Result<String> {
    const MAX_MISSES: usize = 10_000;
    for _ in 0..MAX_MISSES {
        let v = draw(rng);
        if seen.insert(v.clone()) {
            return Ok(v);
        }
    }
    bail!("world: no new {what} after {MAX_MISSES} draws ({} drawn so far)", seen.len())
}

fn pool(rng: &mut Rng, n: usize, what: &str, draw: impl Fn(&mut Rng) -> String) -> Result<Vec<String>> {
    let mut seen = HashSet::with_capacity(n);
    (0..n).map(|_| draw_unique(rng, &mut seen, what, &draw)).collect()
}

struct Pools {
    cities: Vec<String>,
    universities: Vec<String>,
    employers: Vec<String>,
}

impl Pools {
    fn generate(seed: u64) -> Result<Pools> {
        let mut rng = stream(seed, STREAM_POOLS, 0);
        let cities = pool(&mut rng, CITY_POOL, "city name", |r| match r.below(6) {
            0 | 1 => format!("{}{}", word(r, 1), pick(r, &CITY_TAILS)),
            2 => format!("Port {}", word(r, 2)),
            3 => format!("{} Falls", word(r, 2)),
            4 => format!("New {}", word(r, 2)),
            _ => word(r, 2),
        })?;
        let universities = pool(&mut rng, UNIVERSITY_POOL, "university name", |r| match r.below(6) {
            0 | 1 => format!("University of {}", cities[r.below(cities.len())]),
            2 => format!("{} Institute of Technology", surname(r)),
            3 => format!("{} State University", cities[r.below(cities.len())]),
            4 => format!("{} College", surname(r)),
            _ => format!("Royal Academy of {}", cities[r.below(cities.len())]),
        })?;
        let employers = pool(&mut rng, EMPLOYER_POOL, "company name", |r| match r.below(4) {
            0 => format!("{} {}", word(r, 2), pick(r, &COMPANY_SUFFIXES)),
            1 => format!("{} & {}", surname(r), surname(r)),
            2 => format!("{} {} Company", cities[r.below(cities.len())], pick(r, &COMPANY_TRADES)),
            _ => {
                let (stem, ending) = (word(r, 1), pick(r, &BRAND_ENDINGS));
                // "Vu" + "ex" would read "Vuex": put a consonant between two vowels.
                let vowel = |c: Option<char>| c.is_some_and(|c| "aeiou".contains(c));
                let joint = if vowel(stem.chars().last()) && vowel(ending.chars().next()) { "r" } else { "" };
                format!("{stem}{joint}{ending}")
            }
        })?;
        Ok(Pools { cities, universities, employers })
    }
}

/// Fills `{n}` (name), `{v}` (value) and `{k}` (relation kind) in one pass, so that a value can never
/// be mistaken for a placeholder.
fn fill(template: &str, name: &str, value: &str, kind: &str) -> String {
    let mut out = String::with_capacity(template.len() + name.len() + value.len() + kind.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let sub = match tail.get(..3) {
            Some("{n}") => name,
            Some("{v}") => value,
            Some("{k}") => kind,
            _ => {
                out.push('{');
                rest = &tail[1..];
                continue;
            }
        };
        out.push_str(sub);
        rest = &tail[3..];
    }
    out.push_str(rest);
    out
}

impl World {
    /// Generates the world of `cfg`: pools, entities and the QA split. Errors on a config out of
    /// bounds (see [`WorldConfig::validate`]).
    pub fn generate(cfg: &WorldConfig) -> Result<World> {
        cfg.validate()?;
        World::generate_from(cfg, Pools::generate(cfg.seed)?)
    }

    /// Like [`World::generate`], but each person's birth city, university and employer is drawn
    /// from this world's own names and those of the world of seed `other_seed` together (the union
    /// of both worlds' pools). Its people are still its own. Retrieval training reads about such a
    /// world so that it learns to copy names that the trained world's text made familiar, not only
    /// new ones (docs/retrieval.md).
    pub fn generate_sharing_places(cfg: &WorldConfig, other_seed: u64) -> Result<World> {
        cfg.validate()?;
        let (mut own, other) = (Pools::generate(cfg.seed)?, Pools::generate(other_seed)?);
        own.cities.extend(other.cities);
        own.universities.extend(other.universities);
        own.employers.extend(other.employers);
        World::generate_from(cfg, own)
    }

    /// Like [`World::generate_sharing_places`], with the names of many worlds: each person's birth
    /// city, university and employer is drawn half of the time from the names of the world of seed
    /// `other_seed`, and half from this world's own and those of `extra` further generated worlds
    /// (seeds derived from this one's). A reading pool built so holds far more new names of places
    /// and organisations than a model can learn by heart (750 a world), so reading has to copy
    /// them, as it must for a world never seen (the knowledge update of docs/retrieval.md); the
    /// other half keeps the names the trained text made familiar.
    pub fn generate_with_many_places(cfg: &WorldConfig, other_seed: u64, extra: usize) -> Result<World> {
        cfg.validate()?;
        let mut new = Pools::generate(cfg.seed)?;
        for k in 1..=extra as u64 {
            let more = Pools::generate(cfg.seed ^ MANY_PLACES_SEED.wrapping_mul(k))?;
            new.cities.extend(more.cities);
            new.universities.extend(more.universities);
            new.employers.extend(more.employers);
        }
        // Half of the draws from the familiar names: their list repeated to the new names' length
        // (a draw is uniform over the entries).
        let other = Pools::generate(other_seed)?;
        let familiar =
            |names: &[String], to: usize| -> Vec<String> { names.iter().cycle().take(to).cloned().collect() };
        let pools = Pools {
            cities: [familiar(&other.cities, new.cities.len()), new.cities].concat(),
            universities: [familiar(&other.universities, new.universities.len()), new.universities].concat(),
            employers: [familiar(&other.employers, new.employers.len()), new.employers].concat(),
        };
        World::generate_from(cfg, pools)
    }

    fn generate_from(cfg: &WorldConfig, pools: Pools) -> Result<World> {
        let n = cfg.entities;

        let mut rng = stream(cfg.seed, STREAM_PEOPLE, 0);
        // Names are re-drawn on collision (in generation order, so deterministically). The space is
        // 600 first names x 3,600 surnames, so even at 100,000 entities under 5% of draws collide.
        let mut names = HashSet::with_capacity(n);
        let mut entities = Vec::with_capacity(n);
        for i in 0..n {
            let name = draw_unique(&mut rng, &mut names, "full name", |r| format!("{} {}", first_name(r), surname(r)))?;
            let birth_date = birth_date(&mut rng);
            let birth_city = pools.cities[rng.below(pools.cities.len())].clone();
            let university = pools.universities[rng.below(pools.universities.len())].clone();
            let field = pick(&mut rng, &FIELDS).to_string();
            let employer = pools.employers[rng.below(pools.employers.len())].clone();
            let relation_kind = pick(&mut rng, &RELATION_KINDS).to_string();
            // Uniform over the other n - 1 entities: draw from 0..n-1 and skip over `i`.
            let other = rng.below(n - 1);
            let relation_to = if other >= i { other + 1 } else { other };
            entities.push(Entity {
                name,
                birth_date,
                birth_city,
                university,
                field,
                employer,
                relation_kind,
                relation_to,
            });
        }

        // An exact-size split (a seeded shuffle, the first `round(f * n)` are QA-train) rather than a
        // coin per entity, so the two sets have the advertised sizes at every n.
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut stream(cfg.seed, STREAM_SPLIT, 0), &mut order);
        let train_count = ((cfg.qa_train_fraction * n as f64).round() as usize).min(n);
        let mut qa_train = vec![false; n];
        for &i in &order[..train_count] {
            qa_train[i] = true;
        }
        // Unseen entities come from the far end of the same order, so they are QA-held-out, and a
        // world with `unseen_fraction` 0 is the world it always was.
        let unseen_count = ((cfg.unseen_fraction * n as f64).round() as usize).min(n - train_count);
        let mut unseen = vec![false; n];
        for &i in &order[n - unseen_count..] {
            unseen[i] = true;
        }
        Ok(World { config: cfg.clone(), entities, qa_train, unseen })
    }

    fn value_str(&self, entity: usize, a: Attribute) -> &str {
        let e = &self.entities[entity];
        match a {
            Attribute::BirthDate => &e.birth_date,
            Attribute::BirthCity => &e.birth_city,
            Attribute::University => &e.university,
            Attribute::Field => &e.field,
            Attribute::Employer => &e.employer,
            Attribute::Relation => &self.entities[e.relation_to].name,
        }
    }

    /// The exact answer string of attribute `a` of `entity` (for [`Attribute::Relation`], the related
    /// entity's full name). Panics if `entity` is out of range, like slice indexing.
    pub fn value(&self, entity: usize, a: Attribute) -> String {
        self.value_str(entity, a).to_string()
    }

    /// The biography sentence of attribute `a` of `entity`, in paraphrase `template`
    /// (modulo the attribute's template count).
    fn sentence(&self, entity: usize, a: Attribute, template: usize) -> String {
        let e = &self.entities[entity];
        let templates = a.templates();
        fill(templates[template % templates.len()], &e.name, self.value_str(entity, a), &e.relation_kind)
    }

    /// One sentence per attribute, each in a drawn template, in a drawn order.
    fn render_biography(&self, entity: usize, rng: &mut Rng) -> String {
        let mut order = Attribute::ALL;
        shuffle(rng, &mut order);
        let sentences: Vec<String> = order
            .iter()
            .map(|&a| {
                let template = rng.below(a.templates().len());
                self.sentence(entity, a, template)
            })
            .collect();
        let mut doc = sentences.join(" ");
        doc.push('\n');
        doc
    }

    /// The training rendering of `entity`'s biography (the same string every call). Panics if `entity`
    /// is out of range.
    pub fn biography(&self, entity: usize) -> String {
        self.render_biography(entity, &mut stream(self.config.seed, STREAM_BIOGRAPHY, entity as u64))
    }

    /// Whether `entity`'s QA pairs are training documents. Panics if `entity` is out of range.
    pub fn is_qa_train(&self, entity: usize) -> bool {
        self.qa_train[entity]
    }

    /// The question about attribute `a` of `entity`. Panics if `entity` is out of range.
    pub fn question(&self, entity: usize, a: Attribute) -> String {
        let e = &self.entities[entity];
        fill(a.question_template(), &e.name, "", &e.relation_kind)
    }

    /// The QA pair about attribute `a` of `entity`. Panics if `entity` is out of range.
    pub fn qa_item(&self, entity: usize, a: Attribute) -> QaItem {
        QaItem {
            entity,
            attribute: a.name().to_string(),
            question: self.question(entity, a),
            answer: self.value(entity, a),
        }
    }

    /// Whether nothing of `entity` is trained on (see [`WorldConfig::unseen_fraction`]). Panics if
    /// `entity` is out of range.
    pub fn is_unseen(&self, entity: usize) -> bool {
        self.unseen[entity]
    }

    /// Every entity's biography in its training rendering, by entity index: the retrieval corpus
    /// (unseen entities included: an index holds what training never saw).
    pub fn biographies(&self) -> Vec<String> {
        (0..self.entities.len()).map(|i| self.biography(i)).collect()
    }

    fn qa_items(&self, keep: impl Fn(usize) -> bool) -> Vec<QaItem> {
        (0..self.entities.len()).filter(|&i| keep(i)).flat_map(|i| Attribute::ALL.map(|a| self.qa_item(i, a))).collect()
    }

    /// The training corpus: every biography (but those of unseen entities) plus, per QA-train entity,
    /// one document of its six QA pairs in a drawn order, all in a seeded shuffled order (so that
    /// biographies and QA documents interleave).
    pub fn train_documents(&self) -> Vec<String> {
        let n = self.entities.len();
        let mut docs: Vec<String> = Vec::with_capacity(2 * n);
        docs.extend((0..n).filter(|&i| !self.unseen[i]).map(|i| self.biography(i)));
        for i in (0..n).filter(|&i| self.qa_train[i]) {
            let mut attributes = Attribute::ALL;
            shuffle(&mut stream(self.config.seed, STREAM_QA_ORDER, i as u64), &mut attributes);
            docs.push(attributes.iter().map(|&a| self.qa_item(i, a).text()).collect());
        }
        shuffle(&mut stream(self.config.seed, STREAM_DOC_ORDER, 0), &mut docs);
        docs
    }

    /// `n` validation documents: biographies of a seeded sample of entities (without repeats while
    /// `n` ≤ the entity count, cycling after), each rendered with a draw of its own that is independent
    /// of the training rendering.
    pub fn valid_documents(&self, n: usize) -> Vec<String> {
        let mut order: Vec<usize> = (0..self.entities.len()).collect();
        shuffle(&mut stream(self.config.seed, STREAM_VALID_PICK, 0), &mut order);
        // Facts of unseen entities cannot be known: their biographies are no validation text.
        order.retain(|&i| !self.unseen[i]);
        (0..n)
            .map(|k| {
                let entity = order[k % order.len()];
                self.render_biography(entity, &mut stream(self.config.seed, STREAM_VALID_RENDER, k as u64))
            })
            .collect()
    }

    /// Every QA pair of the held-out entities whose biographies are trained on (the pairs never
    /// are), by entity index then [`Attribute::ALL`] order.
    pub fn qa_heldout(&self) -> Vec<QaItem> {
        self.qa_items(|i| !self.qa_train[i] && !self.unseen[i])
    }

    /// Every QA pair of the unseen entities (nothing of them is trained on), by entity index then
    /// [`Attribute::ALL`] order.
    pub fn qa_unseen(&self) -> Vec<QaItem> {
        self.qa_items(|i| self.unseen[i])
    }

    /// Every QA pair of the QA-train entities (also in [`World::train_documents`]), by entity index
    /// then [`Attribute::ALL`] order.
    pub fn qa_train(&self) -> Vec<QaItem> {
        self.qa_items(|i| self.qa_train[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(entities: usize, seed: u64) -> World {
        World::generate(&WorldConfig { entities, seed, qa_train_fraction: 0.5, unseen_fraction: 0.0 }).unwrap()
    }

    /// Which template of attribute `a` renders in `doc`, found by text (not by the generator's draws).
    fn template_in(w: &World, doc: &str, entity: usize, a: Attribute) -> Option<usize> {
        (0..a.templates().len()).find(|&t| doc.contains(&w.sentence(entity, a, t)))
    }

    #[test]
    fn generation_is_deterministic_for_a_seed_and_differs_across_seeds() {
        let (a, b, c) = (world(300, 7), world(300, 7), world(300, 8));
        assert_eq!(a.entities, b.entities);
        assert_eq!(a.train_documents(), b.train_documents());
        assert_eq!(a.valid_documents(50), b.valid_documents(50));
        let texts = |w: &World| w.qa_heldout().iter().map(QaItem::text).collect::<Vec<_>>();
        assert_eq!(texts(&a), texts(&b));
        assert_ne!(a.entities, c.entities);
        assert_ne!(a.train_documents(), c.train_documents());
        assert_ne!(texts(&a), texts(&c));
    }

    #[test]
    fn a_world_sharing_places_draws_them_from_both_worlds_and_keeps_its_own_people() {
        let cfg = WorldConfig { entities: 3_000, seed: 5, qa_train_fraction: 1.0, unseen_fraction: 0.0 };
        let (own, other) = (World::generate(&cfg).unwrap(), world(300, 0));
        let shared = World::generate_sharing_places(&cfg, 0).unwrap();
        let names = |w: &World| w.entities.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&shared), names(&own), "the people are the world's own");
        let (own_pools, other_pools) = (Pools::generate(5).unwrap(), Pools::generate(0).unwrap());
        for (field, mine, theirs) in [
            ("birth city", &own_pools.cities, &other_pools.cities),
            ("university", &own_pools.universities, &other_pools.universities),
            ("employer", &own_pools.employers, &other_pools.employers),
        ] {
            let value = |e: &Entity| match field {
                "birth city" => e.birth_city.clone(),
                "university" => e.university.clone(),
                _ => e.employer.clone(),
            };
            let from_other = shared.entities.iter().filter(|e| theirs.contains(&value(e))).count();
            let anywhere = shared.entities.iter().filter(|e| mine.contains(&value(e)) || theirs.contains(&value(e)));
            assert_eq!(anywhere.count(), 3_000, "{field}: every value from one of the pools");
            assert!((1_200..=1_800).contains(&from_other), "{field}: {from_other} of 3,000 from the other world");
            // And they are the other world's names, as its own people have them.
            assert!(other.entities.iter().any(|e| shared.entities.iter().any(|s| value(s) == value(e))));
        }
        assert_eq!(shared.entities.len(), World::generate_sharing_places(&cfg, 0).unwrap().entities.len());
        assert_eq!(names(&shared), names(&World::generate_sharing_places(&cfg, 0).unwrap()));
    }

    #[test]
    fn a_world_with_many_places_draws_half_familiar_names_and_many_new_ones() {
        let cfg = WorldConfig { entities: 6_000, seed: 5, qa_train_fraction: 1.0, unseen_fraction: 0.0 };
        let many = World::generate_with_many_places(&cfg, 0, 32).unwrap();
        assert_eq!(
            many.entities.iter().map(|e| &e.name).collect::<Vec<_>>(),
            World::generate(&cfg).unwrap().entities.iter().map(|e| &e.name).collect::<Vec<_>>(),
            "the people are the world's own"
        );
        let (familiar, own) = (Pools::generate(0).unwrap(), Pools::generate(5).unwrap());
        for (field, theirs, mine) in [
            ("birth city", &familiar.cities, &own.cities),
            ("university", &familiar.universities, &own.universities),
            ("employer", &familiar.employers, &own.employers),
        ] {
            let values: Vec<String> = many
                .entities
                .iter()
                .map(|e| match field {
                    "birth city" => e.birth_city.clone(),
                    "university" => e.university.clone(),
                    _ => e.employer.clone(),
                })
                .collect();
            let from_familiar = values.iter().filter(|v| theirs.contains(v)).count();
            assert!((2_600..=3_400).contains(&from_familiar), "{field}: {from_familiar} of 6,000 familiar");
            let new: HashSet<&String> = values.iter().filter(|v| !theirs.contains(v)).collect();
            let from_own = new.iter().filter(|v| mine.contains(v)).count();
            // 33 worlds' names share the other half: far more distinct names than one world has.
            assert!(
                new.len() > 1_000 && from_own < 200,
                "{field}: {} new names, {from_own} of this world's own",
                new.len()
            );
        }
        let again = World::generate_with_many_places(&cfg, 0, 32).unwrap();
        assert!(many.entities.iter().zip(&again.entities).all(|(a, b)| a.birth_city == b.birth_city), "deterministic");
    }

    #[test]
    fn full_names_are_unique_and_relations_point_to_other_entities() {
        let w = world(10_000, 0);
        let names: HashSet<&str> = w.entities.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), w.entities.len());
        for (i, e) in w.entities.iter().enumerate() {
            assert!(e.relation_to != i && e.relation_to < w.entities.len(), "entity {i} relates to {}", e.relation_to);
            assert_eq!(w.value(i, Attribute::Relation), w.entities[e.relation_to].name);
        }
    }

    #[test]
    fn heldout_answers_are_stated_in_their_entitys_training_biography() {
        let w = world(2_000, 1);
        let heldout = w.qa_heldout();
        assert_eq!(heldout.len(), 6 * 1_000);
        for q in &heldout {
            assert!(!w.is_qa_train(q.entity));
            let bio = w.biography(q.entity);
            assert!(bio.contains(&w.entities[q.entity].name), "{bio}");
            assert!(bio.contains(&q.answer), "answer {:?} not in {bio}", q.answer);
        }
        // And that biography is a training document.
        let train: HashSet<String> = w.train_documents().into_iter().collect();
        assert!(heldout.iter().all(|q| train.contains(&w.biography(q.entity))));
    }

    #[test]
    fn heldout_questions_never_appear_in_training_documents_but_qa_train_pairs_do() {
        let w = world(400, 2);
        let docs = w.train_documents();
        assert_eq!(docs.len(), 400 + 200);
        let corpus = docs.concat();
        for q in w.qa_heldout() {
            assert!(!corpus.contains(&q.question), "held-out question in training: {}", q.question);
        }
        let qa_train = w.qa_train();
        assert_eq!(qa_train.len(), 6 * 200);
        for q in &qa_train {
            assert!(corpus.contains(&q.text()), "missing QA-train pair: {}", q.text());
        }
    }

    #[test]
    fn every_attribute_uses_at_least_three_templates_and_sentence_order_varies() {
        let w = world(500, 3);
        let mut first_attributes = HashSet::new();
        for a in Attribute::ALL {
            let used: HashSet<usize> =
                (0..w.entities.len()).filter_map(|i| template_in(&w, &w.biography(i), i, a)).collect();
            assert!(used.len() >= 3, "{} uses templates {used:?}", a.name());
        }
        for i in 0..w.entities.len() {
            let bio = w.biography(i);
            let first = Attribute::ALL
                .into_iter()
                .find(|&a| (0..a.templates().len()).any(|t| bio.starts_with(&w.sentence(i, a, t))));
            first_attributes.insert(first.expect("biography starts with a fact sentence"));
        }
        assert_eq!(first_attributes.len(), Attribute::ALL.len(), "first sentences: {first_attributes:?}");
    }

    #[test]
    fn validation_documents_restate_the_same_facts_in_other_renderings() {
        let w = world(1_000, 4);
        let valid = w.valid_documents(200);
        let train: HashSet<String> = (0..w.entities.len()).map(|i| w.biography(i)).collect();
        let fresh = valid.iter().filter(|d| !train.contains(*d)).count();
        assert!(fresh >= 190, "only {fresh} of 200 validation documents differ from training renderings");
        // Every validation document states the complete facts of an entity it names.
        for doc in &valid {
            let complete = (0..w.entities.len())
                .filter(|&i| doc.contains(&w.entities[i].name))
                .any(|i| Attribute::ALL.iter().all(|&a| template_in(&w, doc, i, a).is_some()));
            assert!(complete, "{doc}");
        }
    }

    #[test]
    fn attribute_values_are_spread_out() {
        let w = world(10_000, 0);
        for a in Attribute::ALL {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for i in 0..w.entities.len() {
                *counts.entry(w.value(i, a)).or_default() += 1;
            }
            let top = counts.values().max().copied().unwrap_or(0);
            assert!(top * 20 < w.entities.len(), "{}: the commonest value covers {top} of 10000", a.name());
            assert!(counts.len() >= 30, "{}: only {} distinct values", a.name(), counts.len());
        }
        let kinds: HashSet<&str> = w.entities.iter().map(|e| e.relation_kind.as_str()).collect();
        assert_eq!(kinds.len(), RELATION_KINDS.len());
    }

    #[test]
    fn qa_items_use_the_exact_prompt_and_text_format_and_the_split_follows_the_fraction() {
        let w =
            World::generate(&WorldConfig { entities: 1_000, seed: 5, qa_train_fraction: 0.3, unseen_fraction: 0.0 })
                .unwrap();
        assert_eq!((0..1_000).filter(|&i| w.is_qa_train(i)).count(), 300);
        let q = &w.qa_heldout()[0];
        assert_eq!(q.prompt(), format!("Q: {}\nA:", q.question));
        assert_eq!(q.text(), format!("{} {}\n", q.prompt(), q.answer));
        assert_eq!(Attribute::from_name(&q.attribute), Some(Attribute::BirthDate));
        let name = &w.entities[q.entity].name;
        assert_eq!(q.question, format!("When was {name} born?"));
        let all = World::generate(&WorldConfig { entities: 10, seed: 5, qa_train_fraction: 1.0, unseen_fraction: 0.0 })
            .unwrap();
        assert!(all.qa_heldout().is_empty() && all.qa_train().len() == 60);
    }

    #[test]
    fn unseen_entities_are_in_no_training_or_validation_text_and_zero_changes_nothing() {
        let cfg = WorldConfig { entities: 400, seed: 3, qa_train_fraction: 0.5, unseen_fraction: 0.1 };
        let w = World::generate(&cfg).unwrap();
        let unseen: Vec<usize> = (0..400).filter(|&i| w.is_unseen(i)).collect();
        assert_eq!(unseen.len(), 40);
        assert!(unseen.iter().all(|&i| !w.is_qa_train(i)));
        assert_eq!(w.qa_unseen().len(), 6 * 40);
        assert_eq!(w.qa_heldout().len(), 6 * (200 - 40));
        let text = w.train_documents().concat() + &w.valid_documents(400).concat();
        // Their names may appear as another entity's relation; their own facts may not.
        for &i in &unseen {
            assert!(!text.contains(&w.biography(i)), "unseen {}'s biography is trained on", w.entities[i].name);
            assert!(!text.contains(&format!("{}'s field of study", w.entities[i].name)));
            assert!(!text.contains(&format!("Q: When was {} born?", w.entities[i].name)));
        }
        assert_eq!(w.biographies().len(), 400);
        // Fraction 0 is the world it always was.
        let plain = World::generate(&WorldConfig { unseen_fraction: 0.0, ..cfg.clone() }).unwrap();
        let before = World::generate(&WorldConfig { entities: 400, seed: 3, ..Default::default() }).unwrap();
        assert_eq!(plain.train_documents(), before.train_documents());
        assert_eq!(plain.qa_heldout().len(), 6 * 200);
        let msg = World::generate(&WorldConfig { unseen_fraction: 0.6, ..cfg }).unwrap_err().to_string();
        assert!(msg.contains("unseen_fraction"), "{msg}");
    }

    #[test]
    fn bad_configs_are_errors_naming_the_problem() {
        let bad = |entities, qa_train_fraction| {
            World::generate(&WorldConfig { entities, seed: 0, qa_train_fraction, unseen_fraction: 0.0 })
                .err()
                .map(|e| e.to_string())
        };
        for entities in [0, 1, 100_001] {
            let msg = bad(entities, 0.5).expect("out-of-range entity count accepted");
            assert!(msg.contains("entities") && msg.contains("100000"), "{msg}");
        }
        for fraction in [-0.1, 1.5, f64::NAN] {
            let msg = bad(100, fraction).expect("bad fraction accepted");
            assert!(msg.contains("qa_train_fraction") && msg.contains("[0, 1]"), "{msg}");
        }
        assert!(bad(MIN_ENTITIES, 0.0).is_none() && bad(MAX_ENTITIES, 1.0).is_none());
    }

    #[test]
    fn hundred_thousand_entities_generate_with_their_documents_quickly() {
        let start = std::time::Instant::now();
        let w = world(MAX_ENTITIES, 9);
        let docs = w.train_documents();
        let heldout = w.qa_heldout();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(docs.len(), MAX_ENTITIES + MAX_ENTITIES / 2);
        assert_eq!(heldout.len(), 6 * MAX_ENTITIES / 2);
        // Generous for a debug build of this crate on a slow shared CPU; release is far faster.
        assert!(secs < 10.0, "100,000 entities took {secs:.1} s");
    }
}
