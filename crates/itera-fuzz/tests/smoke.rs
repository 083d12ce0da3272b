//! The bounded smoke run CI does: every target for a fixed number of executions, with the
//! counting allocator installed. A finding fails the test and prints its seed and input.

use itera_fuzz::{alloc, fuzz, target, Budget};
use std::sync::Mutex;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Executions per target. The whole smoke (9 targets, test profile) runs in about 20 s on
/// 2 cores, the tokenizer a third of it; docs/reliability.md has the measurement.
const RUNS: u64 = 200_000;
/// The mutation seed: fixed, so CI runs the same inputs every time.
const SEED: u64 = 299792458;

/// The allocation counter is process-wide: one target at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn smoke(name: &str, runs: u64) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = target(name).expect("a known target");
    let r = fuzz(t, SEED, Budget::Runs(runs), 5);
    eprintln!(
        "{name}: {} executions in {:.2} s ({:.0}/s), largest allocation {} bytes",
        r.execs,
        r.seconds,
        r.execs_per_second(),
        r.largest_alloc
    );
    assert!(alloc::installed(), "the counting allocator is not installed");
    if !r.findings.is_empty() {
        let all: Vec<String> = r.findings.iter().map(|f| f.to_string()).collect();
        panic!("{} finding(s) in `{name}`:\n{}", r.findings.len(), all.join("\n\n"));
    }
}

#[test]
fn protocol_survives_mutated_messages() {
    smoke("protocol", RUNS);
}

#[test]
fn config_survives_mutated_config_json() {
    smoke("config", RUNS);
}

#[test]
fn manifest_survives_mutated_manifest_json() {
    smoke("manifest", RUNS);
}

#[test]
fn corpus_reader_survives_mutated_text() {
    smoke("corpus", RUNS);
}

#[test]
fn safetensors_loader_survives_mutated_weights() {
    smoke("safetensors", RUNS);
}

/// A quarter of the others' executions: a GGUF execution dequantizes and builds two models,
/// about 6,300 a second in the test profile (200,000 took 32 s).
#[test]
fn gguf_loader_survives_mutated_quantized_weights() {
    smoke("gguf", RUNS / 4);
}

#[test]
fn shard_index_survives_mutation() {
    smoke("shards", RUNS);
}

#[test]
fn checkpoint_loader_survives_mutated_checkpoints() {
    smoke("checkpoint", RUNS);
}

#[test]
fn index_loader_survives_mutated_index_files() {
    smoke("index", RUNS);
}

#[test]
fn tokenizer_loader_survives_mutated_tokenizer_json() {
    smoke("tokenizer", RUNS);
}
