//! The benchmark harness end to end on three pairs of tiny exported models (trained on the world,
//! the tasks and a play), with small counts: every field
//! of results.json is there and plausible, the counted FLOPs agree with the formula, the report
//! and its plots (SVG and PNG) are written. No timing assertions.

use native_trainer::bench::Results;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_native-trainer");

/// Few timed steps at one thread and a tiny training step: `bench` runs end to end, not to time.
const QUICK: &[&str] = &["--steps", "3", "--warmup", "1", "--threads", "1", "--train-shape", "2x32"];

fn run(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().expect("spawning native-trainer");
    assert!(out.status.success(), "native-trainer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Trains and exports a tiny model on `corpus` (`world`, `tasks` or a path), named `label`.
fn export_tiny(model: &str, corpus: &str, label: &str, dir: &Path) -> PathBuf {
    export_tiny_with(model, corpus, label, &[], dir)
}

fn export_tiny_with(model: &str, corpus: &str, label: &str, extra: &[&str], dir: &Path) -> PathBuf {
    let (run_dir, export) = (dir.join(format!("run-{model}-{label}")), dir.join(format!("{model}-{label}")));
    let vocab: &[&str] = if corpus == "tasks" { &[] } else { &["--vocab-size", "300"] };
    run(&[
        &["--threads", "1", "train", "--model", model, "--preset", "tiny", "--corpus", corpus][..],
        vocab,
        extra,
        &[
            "--world-entities",
            "200",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--steps",
            "6",
            "--qa-questions",
            "2",
            "--out",
            run_dir.to_str().unwrap(),
            "--export",
            export.to_str().unwrap(),
        ],
    ]
    .concat());
    export
}

#[test]
fn the_harness_runs_end_to_end_and_results_json_has_every_field() {
    let dir = std::env::temp_dir().join(format!("itera-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = native_trainer::source::shared_data_dir();
    let (alice, play) = (data.join("alice29.txt"), data.join("asyoulik.txt"));
    for f in [&alice, &play] {
        assert!(f.exists(), "{} is missing (ITERA_DATA_DIR overrides the data folder)", f.display());
    }
    let (b, i) = (export_tiny("baseline", "world", "world", &dir), export_tiny("itera-lite", "world", "world", &dir));
    let (tb, ti) = (export_tiny("baseline", "tasks", "tasks", &dir), export_tiny("itera-lite", "tasks", "tasks", &dir));
    let tm = export_tiny_with("itera-lite", "tasks", "tasks-moe-off", &["--experts", "0"], &dir);
    let play = play.to_str().unwrap();
    let (pb, pi) = (export_tiny("baseline", play, "play", &dir), export_tiny("itera-lite", play, "play", &dir));
    // `eval` scores a task model on held-out instances, as training did at its end.
    let eval_json = dir.join("eval-tasks.json");
    run(&[
        "eval",
        "--model",
        tb.to_str().unwrap(),
        "--corpus",
        "tasks",
        "--qa-questions",
        "3",
        "--seq-len",
        "32",
        "--json",
        eval_json.to_str().unwrap(),
    ]);
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    let tasks = eval["tasks"].as_array().expect("eval --json has per-task results");
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|t| t["instances"] == 3), "{tasks:?}");
    let report = dir.join("report");
    run(&[
        &[
            "bench",
            "--models",
            b.to_str().unwrap(),
            i.to_str().unwrap(),
            tb.to_str().unwrap(),
            ti.to_str().unwrap(),
            tm.to_str().unwrap(),
            pb.to_str().unwrap(),
            pi.to_str().unwrap(),
            "--out",
            report.to_str().unwrap(),
            "--contexts",
            "16,64",
        ][..],
        QUICK,
        &[
            "--eval",
            &format!("alice={}", alice.display()),
            "--eval-windows",
            "4",
            "--eval-seq-len",
            "32",
            "--world-qa",
            "3",
            "--world-unseen",
            "0",
        ],
    ]
    .concat());

    // Typed parse: a missing field is an error here.
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(report.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.models.len(), 7);
    assert_eq!(results.models[0].name, "baseline-tiny [world]");
    assert_eq!(results.models[3].name, "itera-lite-tiny [tasks]");
    assert_eq!(results.models[4].name, "itera-lite-tiny-moe-off [tasks]");
    assert_eq!(results.models[5].name, "baseline-tiny [asyoulik]");
    for m in &results.models[2..5] {
        let tasks = &m.train_eval.as_ref().unwrap().tasks;
        let names: Vec<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(names, ["mqar", "induction", "selective-copy"], "{}", m.name);
        assert!(tasks.iter().all(|t| t.instances == 2 && t.answers >= 2 && t.answers_correct <= t.answers));
    }
    // World QA asked by the bench itself (--world-qa 3) for the two world models only.
    for (k, m) in results.models.iter().enumerate() {
        let qa = m.train_eval.as_ref().unwrap().world_qa.as_ref();
        if k < 2 {
            assert_eq!((m.world_qa_questions, qa.map(|q| q.total)), (3, Some(3)), "{}", m.name);
        } else {
            assert_eq!((m.world_qa_questions, qa.is_none()), (0, true), "{}", m.name);
        }
    }
    assert_eq!((results.settings.world_qa, results.settings.world_unseen), (3, 0.0));
    assert!(results.machine.cores >= 1 && !results.machine.cpu.is_empty());
    for m in &results.models {
        assert!(m.params.total >= m.params.active_per_token && m.params.active_per_token > 0, "{}", m.name);
        assert!(m.bytes_f16 < m.bytes_f32 && m.bytes_f32 < m.bytes_all_files, "{}: byte counts", m.name);
        assert_eq!(m.per_context.len(), 2);
        for p in &m.per_context {
            assert!(
                (p.flops_counted / p.flops_analytic - 1.0).abs() < 0.01,
                "{} at {}: FLOPs {} vs {}",
                m.name,
                p.context,
                p.flops_counted,
                p.flops_analytic
            );
            assert_eq!(p.state_bytes_measured, p.state_bytes_analytic, "{} at {}: state bytes", m.name, p.context);
            assert!(p.energy_mj_estimate > 0.0);
        }
        let s = &m.speed[0];
        assert_eq!(s.threads, 1);
        assert!(s.prefill_tok_per_s > 0.0 && s.train_tok_per_s > 0.0, "{}: speeds", m.name);
        assert!(s.inference_peak_rss_bytes > 0 && s.train_peak_rss_bytes > 0, "{}: RSS", m.name);
        assert_eq!(s.decode.len(), 2);
        assert!(s.decode.iter().all(|d| d.median_ms > 0.0 && d.p95_ms >= d.median_ms && d.samples == 3));
        let q = &m.quality[0];
        assert_eq!(q.corpus, "alice");
        assert!(q.loss.is_finite() && q.perplexity > 1.0 && q.bits_per_byte > 0.0 && q.tokens > 0);
        assert!(m.training.is_some() && m.train_eval.is_some(), "{}: manifest figures", m.name);
    }
    // The SSM state does not grow with the context; the KV cache does.
    let state = |m: usize, c: usize| results.models[m].per_context[c].state_bytes_measured;
    assert!(state(0, 1) > state(0, 0));
    assert_eq!(state(1, 1), state(1, 0));

    let md = std::fs::read_to_string(report.join("efficiency_report.md")).unwrap();
    for section in [
        "## Models",
        "## The seed's claims, measured",
        "## Regime",
        "## Quality, pair by pair",
        "### baseline-tiny [world] vs itera-lite-tiny [world]",
        "### baseline-tiny [tasks] vs itera-lite-tiny [tasks], itera-lite-tiny-moe-off [tasks]",
        "| itera-lite-tiny-moe-off [tasks] vs baseline |",
        "| mqar: answers right (held-out) |",
        "| selective-copy: answers right (held-out) |",
        "| world QA: answers right (held-out) |",
        "World QA was measured by this benchmark instead: 3 questions of each kind",
        "### baseline-tiny [asyoulik] vs itera-lite-tiny [asyoulik]",
        "| alice (held-out): loss / bits per byte |",
        "| under 20% quality loss on induction (exact match,",
        "| under 20% quality loss on alice (itera-lite-tiny [asyoulik] vs baseline-tiny [asyoulik],",
        "analytic formula vs count",
        "100-300×",
        "50-200×",
        "2-10×",
        "< 20%",
    ] {
        assert!(md.contains(section), "efficiency_report.md lacks {section:?}");
    }
    // The report is a function of results.json alone: redrawing it gives the same text.
    std::fs::remove_file(report.join("efficiency_report.md")).unwrap();
    run(&["bench", "--render-only", "--out", report.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(report.join("efficiency_report.md")).unwrap(), md);
    for plot in ["latency_vs_context", "quality_vs_bytes", "energy_vs_params"] {
        let svg = std::fs::read_to_string(report.join(format!("{plot}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{plot}.svg");
        let png = std::fs::read(report.join(format!("{plot}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{plot}.png");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model that reads an index is asked its world questions again with its weights in each
/// `--qa-formats` format; a copy widened from f16 weights (what comes back from a GPU machine
/// for a model too large in f32) carries no figures of its own, so the bench measures them.
#[test]
fn a_reading_model_is_asked_in_each_format_and_an_f16_copy_gets_its_own_figures() {
    let dir = std::env::temp_dir().join(format!("itera-bench-formats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let index = dir.join("index");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run(&["index", "--world-entities", "200", "--out", &s(&index), "--queries", "0"]);
    let reader = export_tiny_with(
        "itera-lite",
        "world",
        "reader",
        &["--retrieval", &s(&index), "--reading-batch", "2", "--world-unseen", "0.1"],
        &dir,
    );
    let (f16, widened) = (dir.join("reader-f16"), dir.join("reader-widened"));
    run(&["quantize", "--model", &s(&reader), "--format", "f16", "--out", &s(&f16)]);
    run(&["quantize", "--model", &s(&f16), "--format", "f32", "--out", &s(&widened)]);
    let report = dir.join("report");
    run(&[
        &["bench", "--models", &s(&reader), &s(&widened), "--out", &s(&report), "--contexts", "16"][..],
        QUICK,
        &["--world-qa", "3", "--world-unseen", "0.1", "--qa-formats", "q8_0,q4_0"],
    ]
    .concat());
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(report.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.models.len(), 2);
    for m in &results.models {
        let formats: Vec<(&str, u64)> = m.formats.iter().map(|f| (f.format.as_str(), f.weight_bytes)).collect();
        assert_eq!(formats, [("q8_0", m.bytes_q8_0), ("q4_0", m.bytes_q4_0)], "{}", m.name);
        for f in &m.formats {
            assert_eq!(f.heldout.total, 3, "{} {}", m.name, f.format);
            assert_eq!(f.unseen.as_ref().map(|q| q.total), Some(3), "{} {}", m.name, f.format);
        }
        let e = m.train_eval.as_ref().expect("figures: the manifest's, or measured here");
        assert!(e.valid_loss.is_finite() && e.valid_tokens > 0 && e.unigram_loss > 0.0, "{}", m.name);
        let r = e.retrieval.as_ref().expect("asked with retrieval");
        assert_eq!((m.world_qa_questions, r.heldout.total), (3, 3), "{}", m.name);
    }
    // The widened copy's manifest has no figures (they were the f32 model's): the bench measured
    // them on the same validation split, so they are close to the f32 export's (f16 rounding).
    let (a, b) = (results.models[0].train_eval.as_ref().unwrap(), results.models[1].train_eval.as_ref().unwrap());
    assert_eq!(a.valid_tokens, b.valid_tokens);
    assert!((a.valid_loss - b.valid_loss).abs() < 0.01 * a.valid_loss, "{} vs {}", a.valid_loss, b.valid_loss);
    let md = std::fs::read_to_string(report.join("efficiency_report.md")).unwrap();
    assert!(md.contains("### World QA with retrieval by weight format"), "{md}");
    std::fs::remove_dir_all(&dir).unwrap();
}
