//! Long fuzz runs by hand: every target (or one) for a number of executions or seconds each.
//!
//! ```text
//! cargo run --release -p itera-fuzz -- --seconds 60
//! cargo run --release -p itera-fuzz -- --target safetensors --runs 1000000 --seed 7
//! cargo run --release -p itera-fuzz -- --target config --replay finding.bin
//! ```
//! Prints, per target, executions, executions/s, the largest single allocation and the findings;
//! each finding's input is also written to `--findings DIR`. Exits 1 if anything was found.

use clap::Parser;
use itera_fuzz::{alloc, fuzz, target, Budget, TARGETS};
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

type Result<T> = std::result::Result<T, String>;

#[derive(Parser)]
#[command(about = "Fuzzes Itera-Lite's parsers of outside bytes (stable Rust, no coverage feedback)")]
struct Args {
    /// One target (default: all): protocol, config, manifest, corpus, safetensors, gguf, shards, checkpoint, index, tokenizer
    #[arg(long)]
    target: Option<String>,
    /// Executions per target (the seeds included)
    #[arg(long, conflicts_with = "seconds")]
    runs: Option<u64>,
    /// Seconds per target [default: 10]
    #[arg(long)]
    seconds: Option<f64>,
    /// Seed of the mutations; execution i of seed s is the same input on every machine
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop a target after this many findings
    #[arg(long, default_value_t = 10)]
    max_findings: usize,
    /// Folder for the inputs of findings (`TARGET-SEED-EXEC.bin`)
    #[arg(long, default_value = "target/itera-fuzz/findings")]
    findings: PathBuf,
    /// Run the target once on this file's bytes instead of fuzzing (needs --target)
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<()> {
    let targets: Vec<_> = match &args.target {
        None => TARGETS.iter().collect(),
        Some(name) => vec![target(name).ok_or_else(|| {
            let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
            format!("unknown target `{name}` (known: {})", names.join(", "))
        })?],
    };
    if let Some(path) = &args.replay {
        let [t] = targets[..] else { return Err("--replay needs --target".into()) };
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (what, largest) = itera_fuzz::check(t, &bytes);
        println!("{}: largest allocation {largest} bytes; {}", t.name, what.as_deref().unwrap_or("no finding"));
        std::process::exit(i32::from(what.is_some()));
    }
    let budget = match (args.runs, args.seconds) {
        (Some(n), _) => Budget::Runs(n),
        (None, s) => Budget::Time(Duration::from_secs_f64(s.unwrap_or(10.0))),
    };
    println!("{:<12} {:>12} {:>10} {:>14} {:>9}", "target", "executions", "exec/s", "largest alloc", "findings");
    let mut found = 0;
    for t in targets {
        let r = fuzz(t, args.seed, budget, args.max_findings);
        println!(
            "{:<12} {:>12} {:>10.0} {:>14} {:>9}",
            r.target,
            r.execs,
            r.execs_per_second(),
            r.largest_alloc,
            r.findings.len()
        );
        for f in &r.findings {
            println!("{f}");
            let _ = std::fs::create_dir_all(&args.findings);
            let path = args.findings.join(format!("{}-{}-{}.bin", f.target, f.seed, f.exec));
            if std::fs::write(&path, &f.input).is_ok() {
                println!("saved to {}", path.display());
            }
        }
        found += r.findings.len();
    }
    if !alloc::installed() {
        println!("(the counting allocator is not installed: allocations were not checked)");
    }
    std::process::exit(i32::from(found > 0));
}
