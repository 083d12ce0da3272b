//! A fuzz harness on stable Rust for every parser of bytes that come from outside the process:
//! `model.safetensors`, `model.gguf`, `config.json`, `tokenizer.json`, `manifest.json`, the retrieval index,
//! corpus text, `checkpoint.safetensors` and the worker's messages ([`targets`]).
//!
//! No coverage feedback (that needs nightly's sanitizer coverage): each execution takes a seed
//! input, applies a few seeded mutations ([`mutate`]) and runs the target under
//! `catch_unwind`. A finding is either a panic, or one allocation larger than the input
//! justifies ([`alloc::limit`]: 64 MiB + 64 bytes per input byte), measured by the counting
//! allocator of [`alloc`] when the binary or test installs it. Findings replay from their
//! (seed, execution) pair or their input.
//!
//! - `cargo test -p itera-fuzz --tests`: a bounded smoke run of every target (CI);
//! - `cargo run --release -p itera-fuzz -- [--target NAME] [--runs N | --seconds S] [--seed S]`:
//!   long runs by hand (docs/reliability.md has the figures).

pub mod alloc;
pub mod mutate;
pub mod targets;

use mutate::Rng;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};
pub use targets::{target, Target, TARGETS};

/// How long to fuzz one target.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    Runs(u64),
    Time(Duration),
}

/// A panic or an oversized allocation, with what replays it.
#[derive(Clone, Debug)]
pub struct Finding {
    pub target: &'static str,
    pub seed: u64,
    pub exec: u64, // executions below the seed count are the seeds themselves, unmutated
    pub what: String,
    pub input: Vec<u8>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "FINDING in `{}` (seed {}, execution {}): {}", self.target, self.seed, self.exec, self.what)?;
        write!(f, "input ({} bytes): {}", self.input.len(), hex(&self.input, 2048))
    }
}

/// What one target's run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    pub seconds: f64,
    pub largest_alloc: usize, // the largest single allocation of any execution
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn execs_per_second(&self) -> f64 {
        self.execs as f64 / self.seconds.max(1e-9)
    }
}

/// Lowercase hex of the first `cap` bytes, with `...` when cut.
pub fn hex(bytes: &[u8], cap: usize) -> String {
    let mut s: String = bytes.iter().take(cap).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > cap {
        s.push_str("...");
    }
    s
}

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `target` once on `input`: `Some(what)` when it panicked or allocated too much, and the
/// largest single allocation it made.
pub fn check(target: &Target, input: &[u8]) -> (Option<String>, usize) {
    alloc::begin(input);
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let largest = alloc::end();
    let what = match result {
        Err(_) => Some(format!("panic: {}", LAST_PANIC.with(|p| p.borrow().clone()))),
        Ok(()) if largest > alloc::limit(input.len()) => Some(format!(
            "one allocation of {largest} bytes for an input of {} bytes (limit {})",
            input.len(),
            alloc::limit(input.len())
        )),
        Ok(()) => None,
    };
    (what, largest)
}

/// Fuzzes `target` within `budget`: first its seeds as they are, then mutants. Stops early
/// after `max_findings` findings.
pub fn fuzz(target: &'static Target, seed: u64, budget: Budget, max_findings: usize) -> Report {
    // A quiet hook that keeps the message and location for the finding (restored after).
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string())));
    let seeds = (target.seeds)();
    assert!(!seeds.is_empty(), "target {} has no seeds", target.name);
    let start = Instant::now();
    let mut report = Report { target: target.name, execs: 0, seconds: 0.0, largest_alloc: 0, findings: Vec::new() };
    let mut input = Vec::new();
    loop {
        let exec = report.execs;
        let done = match budget {
            Budget::Runs(n) => exec >= n.max(seeds.len() as u64),
            // Checking the clock every 16 executions keeps it out of the fast targets' profile.
            Budget::Time(d) => exec >= seeds.len() as u64 && exec.is_multiple_of(16) && start.elapsed() >= d,
        };
        if done || report.findings.len() >= max_findings {
            break;
        }
        input.clear();
        if let Some(s) = seeds.get(exec as usize) {
            input.extend_from_slice(s);
        } else {
            let mut rng = Rng::new(seed, exec);
            let (base, other) = (rng.below(seeds.len()), rng.below(seeds.len()));
            input.extend_from_slice(&seeds[base]);
            mutate::mutate(&mut rng, &mut input, &seeds[other], target.dict);
        }
        let (what, largest) = check(target, &input);
        report.largest_alloc = report.largest_alloc.max(largest);
        if let Some(what) = what {
            report.findings.push(Finding { target: target.name, seed, exec, what, input: input.clone() });
        }
        report.execs += 1;
    }
    report.seconds = start.elapsed().as_secs_f64();
    panic::set_hook(previous);
    report
}
