//! Where training text comes from: the generated world (`world`) or a file / folder (`PATH`).

use crate::data::Corpus;
use crate::world::{World, WorldConfig};
use anyhow::{Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The `--corpus` argument.
#[derive(Debug, Clone, PartialEq)]
pub enum CorpusSpec {
    /// The project's generated synthetic world (see `world.rs`).
    World,
    /// A text file, or a folder of .txt files.
    Path(PathBuf),
}

impl FromStr for CorpusSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty corpus (expected `world` or a path)".into()),
            "world" => Ok(CorpusSpec::World),
            path => Ok(CorpusSpec::Path(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for CorpusSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorpusSpec::World => f.write_str("world"),
            CorpusSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A loaded corpus, with the world it came from when it is the generated one.
pub struct Source {
    pub corpus: Corpus,
    pub world: Option<World>,
}

/// Share of the world's entities re-rendered as validation biographies.
const WORLD_VALID_SHARE: f64 = 0.05;

impl Source {
    /// Loads `spec`. For the world, `entities` and `seed` pick which world; for a path,
    /// `valid_fraction` of its documents go to the validation split.
    pub fn load(spec: &CorpusSpec, entities: usize, seed: u64, valid_fraction: f64) -> Result<Source> {
        match spec {
            CorpusSpec::World => {
                let world = World::generate(&WorldConfig { entities, seed, ..Default::default() })
                    .context("generating the world corpus")?;
                let n_valid = ((entities as f64 * WORLD_VALID_SHARE).ceil() as usize).clamp(1, 2000);
                let corpus = Corpus {
                    name: format!("world (entities {entities}, seed {seed})"),
                    train: world.train_documents(),
                    valid: world.valid_documents(n_valid),
                };
                Ok(Source { corpus, world: Some(world) })
            }
            CorpusSpec::Path(p) => Ok(Source { corpus: Corpus::from_path(p, valid_fraction)?, world: None }),
        }
    }
}

/// The data folder of ../shared (public corpora), overridable with `ITERA_DATA_DIR`.
pub fn shared_data_dir() -> PathBuf {
    match std::env::var_os("ITERA_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    }
}

// Stored in checkpoints as its command-line spelling.
impl serde::Serialize for CorpusSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for CorpusSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
