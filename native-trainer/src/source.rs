//! Where training data comes from: the generated world (`world`), the generated targeted tasks
//! (`mqar`, `induction`, `selective-copy`, a comma list of them, or `tasks` for all three), the
//! Mamba paper's synthetic tasks (`induction-heads`, `selective-copying`: token sequences drawn
//! fresh every step, see `synthetic.rs`), or a file / folder (`PATH`; write `./tasks` for a file
//! that is called like a task).

use crate::data::Corpus;
use crate::synthetic::SyntheticTask;
use crate::tasks::{self, Instance, TaskKind};
use crate::world::{World, WorldConfig};
use anyhow::{Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The `--corpus` argument.
#[derive(Debug, Clone, PartialEq)]
pub enum CorpusSpec {
    /// The project's generated synthetic world (`itera_data::world`).
    World,
    /// The project's generated targeted tasks (see `tasks.rs`), in this order, taking turns.
    Tasks(Vec<TaskKind>),
    /// One of the Mamba paper's synthetic tasks (see `synthetic.rs`): not text.
    Synthetic(SyntheticTask),
    /// A text file, or a folder of .txt files.
    Path(PathBuf),
}

impl FromStr for CorpusSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty corpus (expected `world` or a path)".into()),
            "world" => Ok(CorpusSpec::World),
            "tasks" => Ok(CorpusSpec::Tasks(TaskKind::ALL.to_vec())),
            s if s.parse::<SyntheticTask>().is_ok() => Ok(CorpusSpec::Synthetic(s.parse()?)),
            s if s.split(',').next().is_some_and(|k| k.parse::<TaskKind>().is_ok()) => {
                let kinds = s.split(',').map(str::parse).collect::<Result<Vec<TaskKind>, String>>()?;
                if kinds.iter().any(|k| kinds.iter().filter(|x| *x == k).count() > 1) {
                    return Err(format!("task listed twice in `{s}`"));
                }
                Ok(CorpusSpec::Tasks(kinds))
            }
            path => Ok(CorpusSpec::Path(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for CorpusSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorpusSpec::World => f.write_str("world"),
            CorpusSpec::Tasks(k) if k.as_slice() == TaskKind::ALL => f.write_str("tasks"),
            CorpusSpec::Tasks(k) => f.write_str(&k.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")),
            CorpusSpec::Synthetic(t) => f.write_str(t.name()),
            CorpusSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A loaded corpus, with the world or the tasks it came from when it is a generated one.
pub struct Source {
    pub corpus: Corpus,
    pub world: Option<World>,
    pub tasks: Vec<TaskKind>,
    seed: u64,
}

/// Share of the world's entities re-rendered as validation biographies.
const WORLD_VALID_SHARE: f64 = 0.05;

impl Source {
    /// Loads `spec`. For the world, `entities`, `unseen` (the share never trained on) and `seed`
    /// pick which world; for a path,
    /// `valid_fraction` of its documents go to the validation split.
    pub fn load(spec: &CorpusSpec, entities: usize, unseen: f64, seed: u64, valid_fraction: f64) -> Result<Source> {
        match spec {
            CorpusSpec::World => {
                let cfg = WorldConfig { entities, seed, unseen_fraction: unseen, ..Default::default() };
                let world = World::generate(&cfg).context("generating the world corpus")?;
                let n_valid = ((entities as f64 * WORLD_VALID_SHARE).ceil() as usize).clamp(1, 2000);
                let corpus = Corpus {
                    name: format!("world (entities {entities}, seed {seed})"),
                    train: world.train_documents(),
                    valid: world.valid_documents(n_valid),
                };
                Ok(Source { corpus, world: Some(world), tasks: Vec::new(), seed })
            }
            CorpusSpec::Tasks(kinds) => {
                let texts = |n, salt| tasks::generate(kinds, n, seed ^ salt).iter().map(Instance::text).collect();
                let corpus = Corpus {
                    name: format!("{} (seed {seed})", spec),
                    train: texts(tasks::TRAIN_INSTANCES, tasks::TRAIN_SALT),
                    valid: texts(tasks::VALID_INSTANCES, tasks::VALID_SALT),
                };
                Ok(Source { corpus, world: None, tasks: kinds.clone(), seed })
            }
            CorpusSpec::Synthetic(t) => {
                anyhow::bail!("`{t}` is a synthetic task of token sequences, not a text corpus")
            }
            CorpusSpec::Path(p) => {
                Ok(Source { corpus: Corpus::from_path(p, valid_fraction)?, world: None, tasks: Vec::new(), seed })
            }
        }
    }

    /// Held-out task instances, `per_task` of each task (an instance stream of its own).
    pub fn task_eval_instances(&self, per_task: usize) -> Vec<Instance> {
        tasks::generate(&self.tasks, per_task * self.tasks.len(), self.seed ^ tasks::EVAL_SALT)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_spec_parses_and_prints_back() {
        for s in ["world", "tasks", "mqar", "induction,selective-copy", "induction-heads", "data/x.txt", "./tasks"] {
            let spec: CorpusSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!("mqar,induction,selective-copy".parse::<CorpusSpec>().unwrap().to_string(), "tasks");
        assert!(matches!("./tasks".parse::<CorpusSpec>().unwrap(), CorpusSpec::Path(_)));
        assert!(matches!("selective-copying".parse::<CorpusSpec>().unwrap(), CorpusSpec::Synthetic(_)));
        assert!("mqar,mqar".parse::<CorpusSpec>().unwrap_err().contains("twice"));
        assert!("mqar,copy".parse::<CorpusSpec>().unwrap_err().contains("unknown task `copy`"));
    }

    #[test]
    fn task_splits_come_from_separate_streams() {
        let src = Source::load(&"tasks".parse().unwrap(), 0, 0.0, 5, 0.05).unwrap();
        assert_eq!(src.corpus.valid.len(), tasks::VALID_INSTANCES);
        let train: std::collections::HashSet<&String> = src.corpus.train.iter().collect();
        let eval = src.task_eval_instances(100);
        assert_eq!(eval.len(), 300);
        assert!(eval.iter().all(|i| !train.contains(&i.text())), "an evaluation instance was trained on");
        assert!(src.corpus.valid.iter().all(|d| !train.contains(d)));
    }
}
