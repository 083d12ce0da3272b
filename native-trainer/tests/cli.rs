//! End-to-end claims about the real `native-trainer` binary: exact resume after SIGKILL, the NaN
//! guard, `score` against in-process logits, export round trip, and clear errors on bad input.

use candle_core::{Device, Tensor};
use native_trainer::checkpoint::Checkpoint;
use native_trainer::eval::target_logprobs;
use native_trainer::export::load_model_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_native-trainer");

/// A fresh scratch folder per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("itera-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Flags of a small, quick training run of the tiny preset on a small world.
fn tiny_run(model: &str, steps: usize, out: &Path) -> Vec<String> {
    tiny_run_with(model, steps, out, &[])
}

/// As [`tiny_run`], with some flags' values replaced.
fn tiny_run_with(model: &str, steps: usize, out: &Path, replace: &[(&str, &str)]) -> Vec<String> {
    let s = |v: &str| v.to_string();
    let mut args = vec![
        s("--threads"),
        s("1"),
        s("train"),
        s("--model"),
        s(model),
        s("--preset"),
        s("tiny"),
        s("--corpus"),
        s("world"),
        s("--world-entities"),
        s("300"),
        s("--vocab-size"),
        s("320"),
        s("--batch-size"),
        s("4"),
        s("--seq-len"),
        s("64"),
        s("--steps"),
        steps.to_string(),
        s("--warmup-steps"),
        s("5"),
        s("--eval-interval"),
        s("10"),
        s("--eval-batches"),
        s("2"),
        s("--checkpoint-interval"),
        s("5"),
        s("--qa-questions"),
        s("4"),
        s("--out"),
        out.display().to_string(),
    ];
    for (flag, value) in replace {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    args
}

fn run(args: &[String]) -> Output {
    Command::new(BIN).args(args).output().expect("spawning native-trainer")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "native-trainer failed: {}", stderr(o));
}

/// Every tensor of the checkpoint (weights and optimizer moments) as raw f32 values.
fn checkpoint_values(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = Checkpoint::load(dir).unwrap();
    let mut v: Vec<_> =
        ck.tensors.iter().map(|(n, t)| (n.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Starts a run and SIGKILLs it `after` its checkpoint reached `min_step` (mid-flight: it must
/// not have ended by then).
fn kill_after_checkpoint(args: &[String], run_dir: &Path, min_step: usize, after: Duration) {
    let mut child = Command::new(BIN).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !Checkpoint::load(run_dir).map(|c| c.meta.step >= min_step).unwrap_or(false) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(after); // land somewhere between checkpoints
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

/// SIGKILL at random instants of one run, again and again (each resume is killed too, up to 20
/// times; then it runs to its end): every resume picks up the last checkpoint, which always loads; the
/// run ends with every weight and optimizer moment bit-identical to an uninterrupted run, its
/// logs hold every step once, and the temp files of killed checkpoint writes are gone.
#[test]
fn a_run_killed_at_random_points_and_resumed_each_time_ends_bit_identical_to_an_uninterrupted_run() {
    let dir = scratch("resume");
    let (whole, killed) = (dir.join("whole"), dir.join("killed"));
    let steps = 120;
    // A checkpoint after every step (its write is then a good part of each step's time, so
    // that random kills hit it); the checkpoints' interval does not change the weights.
    let every_step = [("--checkpoint-interval", "1")];
    let t = Instant::now();
    assert_ok(&run(&tiny_run_with("itera-lite", steps, &whole, &every_step)));
    let took = t.elapsed().as_micros() as u64;

    let mut args = tiny_run_with("itera-lite", steps, &killed, &every_step);
    args.push("--resume".into());
    let temp_files = || -> Vec<String> {
        let names = std::fs::read_dir(&killed).into_iter().flatten().flatten();
        names.map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tmp-")).collect()
    };
    // Mostly mid-run (a random instant within four steps' time after the next checkpoint
    // appeared, so the writes of the next ones may be hit); every fourth, at a random instant of
    // the start (the world, the tokenizer, the first steps).
    const KILLS: usize = 20;
    let interval = Duration::from_micros(4 * took / steps as u64);
    let (mut rng, mut kills, mut mid_write, mut last_resume) = (11u64, Vec::new(), 0, 0u64);
    loop {
        let before = Checkpoint::load(&killed).ok().map(|c| c.meta.step);
        let mut child = Command::new(BIN).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let t0 = Instant::now();
        if kills.len() < KILLS {
            if kills.len() % 4 == 3 {
                std::thread::sleep(Duration::from_micros(splitmix(&mut rng) % 300_000));
            } else {
                while Checkpoint::load(&killed).ok().map(|c| c.meta.step) == before
                    && child.try_wait().unwrap().is_none()
                {
                    assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(Duration::from_micros(splitmix(&mut rng) % interval.as_micros() as u64));
            }
        }
        if kills.len() < KILLS && child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            // Whatever the instant, the run folder holds a checkpoint that loads, or none yet.
            let after = match Checkpoint::exists(&killed) {
                true => {
                    Some(Checkpoint::load(&killed).unwrap_or_else(|e| panic!("kill {}: {e:#}", kills.len())).meta.step)
                }
                false => None,
            };
            assert!(after >= before, "kill {}: the checkpoint went back from {before:?} to {after:?}", kills.len());
            mid_write += temp_files().contains(&format!(".checkpoint.safetensors.tmp-{pid}")) as usize;
            last_resume = before.unwrap_or(0) as u64; // where the killed one started (its hparams)
            kills.push((t0.elapsed().as_millis(), after));
            continue;
        }
        let out = child.wait_with_output().unwrap();
        assert_ok(&out);
        if stderr(&out).contains("already trained") {
            // The last kill came after the run had finished its work, as it exited.
            assert_eq!(before, Some(steps), "{}", stderr(&out));
        } else if let Some(step) = before {
            let said = format!("resuming {} at step {step}", killed.display());
            assert!(stderr(&out).contains(&said), "{}", stderr(&out));
            last_resume = step as u64;
        } else {
            last_resume = 0;
        }
        break;
    }
    println!(
        "{} kills (ms after the start, last checkpoint then): {kills:?}; {mid_write} while writing a checkpoint",
        kills.len()
    );
    let distinct: std::collections::BTreeSet<_> = kills.iter().filter_map(|(_, step)| *step).collect();
    assert!(kills.len() == KILLS && distinct.len() >= 10, "too few distinct kill points: {kills:?}");
    check_tensorboard_events(&killed, last_resume, steps);
    assert_eq!(temp_files(), Vec::<String>::new(), "the temp files of killed writes are removed");

    let (a, b) = (checkpoint_values(&whole), checkpoint_values(&killed));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "tensor {na} differs after {} kills and resumes", kills.len());
    }
    assert_eq!(Checkpoint::load(&killed).unwrap().meta.step, steps);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_nan_loss_stops_the_run_with_a_clear_message_and_the_last_checkpoint_intact() {
    let dir = scratch("nan");
    let out = dir.join("run");
    // An absurd learning rate sends the weights to ±1e30 after the first update: the next loss
    // overflows to inf/NaN.
    let args = tiny_run_with(
        "baseline",
        50,
        &out,
        &[("--lr", "1e30"), ("--warmup-steps", "0"), ("--checkpoint-interval", "1")],
    );
    let o = run(&args);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("the loss is") && err.contains("last good checkpoint"), "{err}");
    let ck = Checkpoint::load(&out).expect("the last good checkpoint loads");
    assert!(ck.meta.step >= 1 && ck.meta.step < 50, "checkpoint at step {}", ck.meta.step);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `native-trainer score --model MODEL --text TEXT --json JSON`, which must succeed; its JSON.
/// `native-trainer quantize --model SRC --format FORMAT --out OUT`.
fn quantize(src: &Path, format: &str, out: &Path) -> std::process::Output {
    let path = |p: &Path| p.display().to_string();
    run(&["quantize".into(), "--model".into(), path(src), "--format".into(), format.into(), "--out".into(), path(out)])
}

fn score_json(model: &Path, text: &Path, json: &Path) -> serde_json::Value {
    let path = |p: &Path| p.display().to_string();
    assert_ok(&run(&[
        "score".into(),
        "--model".into(),
        path(model),
        "--text".into(),
        path(text),
        "--json".into(),
        path(json),
    ]));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn score_of_an_exported_tiny_model_equals_the_in_process_logits_and_export_round_trips() {
    let dir = scratch("score");
    let (runs, exported) = (dir.join("run"), dir.join("export"));
    let mut args = tiny_run("itera-lite", 12, &runs);
    args.extend(["--export".to_string(), exported.display().to_string()]);
    assert_ok(&run(&args));

    // The export loads (sha256 checked against the manifest) and matches the checkpoint.
    let m = load_model_dir(&exported).unwrap();
    let from_run = load_model_dir(&runs).unwrap();
    let manifest = m.manifest.as_ref().expect("manifest.json");
    assert_eq!(manifest.files.len(), 3);
    assert_eq!(manifest.params.total, m.config.param_count().total);
    assert_eq!(manifest.training.steps, 12);
    assert!(manifest.eval.as_ref().unwrap().valid_loss.is_finite());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "mamba");
    assert_eq!(config["architectures"][0], "MambaForCausalLM");

    // `generate` reads a long prompt 256 tokens per pass: its greedy tokens are those of one
    // full-sequence pass each.
    let prompt: Vec<u32> = (0..700u32).map(|i| 1 + (i * 37) % (m.config.vocab_size() as u32 - 1)).collect();
    let greedy = itera_model::sample::SamplingConfig { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
    let got = native_trainer::eval::generate(&m.model, &prompt, 3, greedy, |_| Ok(true)).unwrap();
    let mut seq = prompt.clone();
    for &id in &got {
        let x = candle_core::Tensor::from_slice(&seq, (1, seq.len()), &candle_core::Device::Cpu).unwrap();
        let logits = m.model.forward(&x).unwrap().logits.squeeze(0).unwrap();
        let last = logits.get(seq.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(id, itera_model::sample::argmax(&last), "generate after a 700-token prompt");
        seq.push(id);
    }

    let text = "Q: Where was Ann born?\nA: in a city — naïve café 🚀\n";
    let text_file = dir.join("text.txt");
    std::fs::write(&text_file, text).unwrap();
    let score = score_json(&exported, &text_file, &dir.join("score.json"));
    let ids: Vec<u32> = score["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let logprobs: Vec<f64> = score["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(ids.len(), logprobs.len());

    // In process: one full-sequence forward over [EOT, t0 .. t_{n-2}], with both loaded models.
    let mut input = vec![m.eot];
    input.extend_from_slice(&ids[..ids.len() - 1]);
    let x = Tensor::from_slice(&input, (1, input.len()), &Device::Cpu).unwrap();
    for model in [&m.model, &from_run.model] {
        let logits = model.forward(&x).unwrap().logits.squeeze(0).unwrap();
        let want = target_logprobs(&logits, &ids).unwrap();
        for (i, (&a, &b)) in logprobs.iter().zip(&want).enumerate() {
            assert!((a - b as f64).abs() < 1e-4, "token {i}: score {a} vs in-process {b}");
        }
    }
    let nll_mean = score["nll_mean"].as_f64().unwrap();
    let expect = -logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    assert!((nll_mean - expect).abs() < 1e-6, "nll_mean {nll_mean} vs mean of logprobs {expect}");

    // Quantized copies: each loads through its manifest, scores near the f32 export, and says
    // what it was made from; quantizing a quantized export, or into the source, is refused.
    let f32_nll = nll_mean;
    let f32_weights = std::fs::metadata(exported.join("model.safetensors")).unwrap().len();
    for (format, tolerance) in [("f16", 0.01), ("q8_0", 0.05), ("q4_0", 0.5)] {
        let q = dir.join(format!("export-{format}"));
        assert_ok(&quantize(&exported, format, &q));
        let loaded = load_model_dir(&q).unwrap();
        let qm = loaded.manifest.as_ref().unwrap();
        assert_eq!(qm.dtype, format);
        assert!(qm.eval.is_none(), "{format}: the f32 figures must not be carried over");
        assert_eq!(qm.quantized_from.as_ref().unwrap().sha256, manifest.files[0].sha256);
        assert!(qm.files.iter().any(|f| f.name == "model.gguf") && !q.join("model.safetensors").exists());
        let bytes = std::fs::metadata(q.join("model.gguf")).unwrap().len();
        assert!(bytes < f32_weights, "{format}: {bytes} bytes, f32 {f32_weights}");
        let score = score_json(&q, &text_file, &dir.join(format!("score-{format}.json")));
        let nll = score["nll_mean"].as_f64().unwrap();
        println!("{format}: {bytes} bytes (f32 {f32_weights}), mean NLL {nll:.4} (f32 {f32_nll:.4})");
        assert!((nll - f32_nll).abs() <= tolerance * f32_nll, "{format}: NLL {nll} vs f32 {f32_nll}");
    }
    // An f16 export is a source too (what comes back from a GPU machine for a model too large in
    // f32): its f32 copy holds the f16 values widened (the same scores) and names the f16 weights
    // as its source; its q8_0 copy scores like the one made from the f32 export.
    let f16_dir = dir.join("export-f16");
    let f16_manifest = load_model_dir(&f16_dir).unwrap().manifest.unwrap();
    let f16_nll = score_json(&f16_dir, &text_file, &dir.join("score-f16-again.json"))["nll_mean"].as_f64().unwrap();
    let q8_nll = score_json(&dir.join("export-q8_0"), &text_file, &dir.join("score-q8-again.json"))["nll_mean"]
        .as_f64()
        .unwrap();
    for (format, want, tolerance) in [("f32", f16_nll, 1e-5), ("q8_0", q8_nll, 0.01)] {
        let out = dir.join(format!("from-f16-{format}"));
        assert_ok(&quantize(&f16_dir, format, &out));
        let m = load_model_dir(&out).unwrap().manifest.unwrap();
        assert_eq!(m.dtype, if format == "f32" { "float32" } else { format });
        let from = m.quantized_from.as_ref().expect("a copy of f16 weights says so");
        assert_eq!((from.name.as_str(), from.sha256.as_str()), ("model.gguf", f16_manifest.files[0].sha256.as_str()));
        assert!(m.eval.is_none(), "{format} from f16: the f32 figures must not be carried over");
        let nll = score_json(&out, &text_file, &dir.join(format!("score-from-f16-{format}.json")))["nll_mean"]
            .as_f64()
            .unwrap();
        println!("{format} from f16: mean NLL {nll:.6} (want {want:.6})");
        assert!((nll - want).abs() <= tolerance * want, "{format} from f16: NLL {nll} vs {want}");
    }
    let q8 = dir.join("export-q8_0").display().to_string();
    let again = dir.join("again").display().to_string();
    let o = run(&["quantize", "--model", &q8, "--format", "q4_0", "--out", &again].map(String::from));
    assert!(!o.status.success() && stderr(&o).contains("already q8_0"), "{}", stderr(&o));
    let src = exported.display().to_string();
    let o = run(&["quantize", "--model", &src, "--format", "q4_0", "--out", &src].map(String::from));
    assert!(!o.status.success() && stderr(&o).contains("is the source export"), "{}", stderr(&o));
    let o = run(&["quantize", "--model", &src, "--format", "q3_k", "--out", &again].map(String::from));
    assert!(!o.status.success() && stderr(&o).contains("unknown weight format `q3_k`"), "{}", stderr(&o));

    // A file that no longer matches the manifest's sha256 is refused.
    let mut cfg = std::fs::read(exported.join("config.json")).unwrap();
    cfg.push(b' ');
    std::fs::write(exported.join("config.json"), cfg).unwrap();
    let err = load_model_dir(&exported).err().expect("tampered export must not load");
    assert!(format!("{err:#}").contains("sha256 does not match"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sharded_export_loads_as_the_single_file_does_and_a_missing_shard_is_named() {
    let dir = scratch("shards");
    let (runs, single, sharded) = (dir.join("run"), dir.join("single"), dir.join("sharded"));
    assert_ok(&run(&tiny_run("itera-lite", 4, &runs)));
    let export = |out: &Path, extra: &[&str]| {
        let mut args = vec!["export".to_string(), "--checkpoint".into(), runs.display().to_string()];
        args.extend(["--out".to_string(), out.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        run(&args)
    };
    assert_ok(&export(&single, &[]));
    assert_ok(&export(&sharded, &["--max-shard-mb", "0.05"]));
    let m = load_model_dir(&sharded).unwrap();
    let listed: Vec<String> = m.manifest.as_ref().unwrap().files.iter().map(|f| f.name.clone()).collect();
    let shards: Vec<&String> = listed.iter().filter(|n| n.starts_with("model-")).collect();
    assert!(shards.len() >= 2, "{listed:?}");
    assert!(
        listed.contains(&"model.safetensors.index.json".to_string()) && !sharded.join("model.safetensors").exists()
    );
    let x = Tensor::from_slice(&[1u32, 2, 3, 4, 5], (1, 5), &Device::Cpu).unwrap();
    let a = m.model.forward(&x).unwrap().logits;
    let b = load_model_dir(&single).unwrap().model.forward(&x).unwrap().logits;
    assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // quantize reads the shards
    let q = dir.join("q8");
    let args =
        ["quantize", "--model", &sharded.display().to_string(), "--format", "q8_0", "--out", &q.display().to_string()];
    assert_ok(&run(&args.map(String::from)));
    let qm = load_model_dir(&q).unwrap();
    assert_eq!(qm.manifest.unwrap().quantized_from.unwrap().name, "model.safetensors.index.json");
    // a shard gone: named (the manifest's sha256 check reads it first)
    std::fs::remove_file(sharded.join(shards[0])).unwrap();
    let err = format!("{:#}", load_model_dir(&sharded).err().expect("must not load"));
    assert!(err.contains(shards[0].as_str()), "{err}");
    let o = export(&dir.join("x"), &["--max-shard-mb", "0"]);
    assert!(!o.status.success() && stderr(&o).contains("--max-shard-mb 0 is not a size > 0"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_clear_errors_with_a_nonzero_exit_and_nothing_overwritten() {
    let dir = scratch("bad");
    let s = |v: &str| v.to_string();

    // A corpus path that does not exist.
    let o = run(&[
        s("train"),
        s("--preset"),
        s("tiny"),
        s("--corpus"),
        s("/no/such/corpus.txt"),
        s("--out"),
        dir.join("x").display().to_string(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/corpus.txt"), "{}", stderr(&o));

    // An unknown preset or model.
    let o = run(&[s("train"), s("--preset"), s("huge"), s("--out"), dir.join("x").display().to_string()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown preset `huge`"), "{}", stderr(&o));
    let o = run(&[s("train"), s("--model"), s("gpt5"), s("--out"), dir.join("x").display().to_string()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown model `gpt5`"), "{}", stderr(&o));

    // A device this build cannot open, or that does not exist, is named before any work.
    let o = run(&tiny_run_with("baseline", 2, &dir.join("gpu"), &[("--device", "gpu")]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown device `gpu`"), "{}", stderr(&o));
    // Mixed precision on the CPU is refused by name (it is for GPUs), before any work.
    let o = run(&tiny_run_with("baseline", 2, &dir.join("bf16"), &[("--autocast", "bf16")]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--autocast bf16: mixed precision is for GPUs"), "{}", stderr(&o));
    assert!(!dir.join("bf16").join("checkpoint.safetensors").exists());
    if !cfg!(feature = "cuda") {
        let o = run(&tiny_run_with("baseline", 2, &dir.join("cuda"), &[("--device", "cuda:1")]));
        assert!(!o.status.success());
        assert!(stderr(&o).contains("--device cuda:1") && stderr(&o).contains("--features cuda"), "{}", stderr(&o));
        assert!(!dir.join("cuda").join("checkpoint.safetensors").exists());
    }

    // A corrupt checkpoint: resume fails, naming it, and leaves the file as it was.
    let run_dir = dir.join("corrupt");
    std::fs::create_dir_all(&run_dir).unwrap();
    let garbage = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all";
    std::fs::write(run_dir.join("checkpoint.safetensors"), garbage).unwrap();
    let mut args = tiny_run("baseline", 5, &run_dir);
    args.push(s("--resume"));
    let o = run(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
    assert_eq!(std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap(), garbage);

    // Without --resume, a folder holding a checkpoint is refused and left alone.
    let o = run(&tiny_run("baseline", 5, &run_dir));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already holds a checkpoint"), "{}", stderr(&o));
    assert_eq!(std::fs::read(run_dir.join("checkpoint.safetensors")).unwrap(), garbage);

    // Model folders that are not there, or are damaged.
    let o = run(&[s("eval"), s("--model"), s("/no/such/model")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/model"), "{}", stderr(&o));
    let o = run(&[s("export"), s("--checkpoint"), s("/no/such/run"), s("--out"), dir.join("e").display().to_string()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/run"), "{}", stderr(&o));
    assert!(!dir.join("e").exists(), "export created its folder despite failing");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `index --json`'s figures.
fn index_world(entities: &str, seed: &str, out: &Path, json: &Path) -> serde_json::Value {
    let s = |v: &str| v.to_string();
    let o = run(&[
        s("index"),
        s("--world-entities"),
        s(entities),
        s("--seed"),
        s(seed),
        s("--queries"),
        s("60"),
        s("--bm25"),
        s("--out"),
        out.display().to_string(),
        s("--json"),
        json.display().to_string(),
    ]);
    assert_ok(&o);
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn retrieval_index_train_eval_generate_and_export_work_together_and_mismatches_are_named() {
    let dir = scratch("retrieval");
    let s = |v: &str| v.to_string();
    let index = dir.join("index");
    let figures = index_world("300", "0", &index, &dir.join("index.json"));
    assert_eq!(figures["documents"], 300);
    assert!(figures["dense"]["recall_at_1"].as_f64().unwrap() >= 0.95, "{figures}");
    assert!(figures["bm25"]["recall_at_5"].as_f64().unwrap() >= 0.95, "{figures}");
    assert!(figures["bytes"].as_u64().unwrap() > 0);

    // Train with reading examples in the loop and export: the export carries the index.
    let (runs, exported) = (dir.join("run"), dir.join("export"));
    let idx = index.display().to_string();
    let mut args = tiny_run_with(
        "itera-lite",
        8,
        &runs,
        &[("--retrieval", &idx), ("--world-unseen", "0.1"), ("--reading-batch", "2"), ("--reading-entities", "200")],
    );
    args.extend([s("--export"), exported.display().to_string()]);
    assert_ok(&run(&args));
    let metrics = std::fs::read_to_string(runs.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"reading_loss\""), "no reading loss logged");
    let m = load_model_dir(&exported).unwrap();
    let manifest = m.manifest.as_ref().unwrap();
    let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    for f in ["index/index.json", "index/vectors.bin", "index/scales.bin", "index/idf.bin", "index/documents.jsonl"] {
        assert!(names.contains(&f), "{f} not in the manifest: {names:?}");
    }
    let r = manifest.retrieval.as_ref().expect("manifest.retrieval");
    assert_eq!((r.dir.as_str(), r.documents, r.k), ("index", 300, 1));
    let exported_index = itera_retrieval::Index::load(exported.join("index")).unwrap();
    assert_eq!(exported_index, itera_retrieval::Index::load(&index).unwrap());
    let ev = manifest.eval.as_ref().unwrap().retrieval.as_ref().expect("final eval with retrieval");
    assert_eq!(ev.heldout.total, 4);
    assert_eq!(ev.unseen.as_ref().map(|u| u.total), Some(4));
    assert_eq!(ev.unseen_recall, Some(1.0));
    assert!(ev.heldout_answer_nll.is_finite() && ev.heldout_answer_nll_off.is_finite());

    // eval --retrieval reports both settings in its JSON.
    let json = dir.join("eval.json");
    let o = run(&[
        s("eval"),
        s("--model"),
        exported.display().to_string(),
        s("--world-entities"),
        s("300"),
        s("--world-unseen"),
        s("0.1"),
        s("--qa-questions"),
        s("5"),
        s("--retrieval"),
        idx.clone(),
        s("--json"),
        json.display().to_string(),
        s("--questions-out"),
        dir.join("questions.json").display().to_string(),
    ]);
    assert_ok(&o);
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(e["retrieval"]["heldout"]["total"], 5);
    assert_eq!(e["retrieval"]["unseen_off"]["total"], 5);
    assert_eq!(e["world_qa"]["total"], 5);
    // --questions-out: the questions asked, with their expected answers (the examples among them).
    let asked: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("questions.json")).unwrap()).unwrap();
    let in_set = |set: &str| asked.iter().filter(|q| q["set"] == set).count();
    assert_eq!((asked.len(), in_set("held-out"), in_set("never trained on")), (10, 5, 5));
    for ex in e["retrieval"]["heldout"]["examples"].as_array().unwrap() {
        let q = asked.iter().find(|q| q["question"] == ex["question"]).expect("an example question was written");
        assert_eq!(q["expected"], ex["expected"]);
    }

    // generate --retrieval prints the retrieved biography (of the person asked about) with its score.
    let person = exported_index.document(7).unwrap().split(" was ").next().unwrap().to_string();
    let name: String = person
        .split_whitespace()
        .filter(|w| w.chars().next().unwrap().is_uppercase())
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let question = format!("Where did {name} study?");
    let o = run(&[
        s("generate"),
        s("--model"),
        exported.display().to_string(),
        s("--prompt"),
        question.clone(),
        s("--max-tokens"),
        s("4"),
        s("--retrieval"),
        idx.clone(),
    ]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(err.contains("retrieved from") && err.contains(&name), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("Q: {question}\nA:")));

    // An index of another world is refused by name, before any training.
    let other = dir.join("index-seed1");
    index_world("300", "1", &other, &dir.join("other.json"));
    let o = run(&tiny_run_with("baseline", 2, &dir.join("r2"), &[("--retrieval", &other.display().to_string())]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("was not built from this world"), "{}", stderr(&o));
    // A damaged index file is named.
    let mut v = std::fs::read(index.join("vectors.bin")).unwrap();
    v[10] ^= 0x55;
    std::fs::write(index.join("vectors.bin"), v).unwrap();
    let o = run(&tiny_run_with("baseline", 2, &dir.join("r3"), &[("--retrieval", &idx)]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("vectors.bin"), "{}", stderr(&o));
    // Retrieval reads world biographies: another corpus is refused.
    let o = run(&tiny_run_with("baseline", 2, &dir.join("r4"), &[("--retrieval", &idx), ("--corpus", "tasks")]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--corpus world"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- TensorBoard event files, read back by a decoder of this test's own (bit-by-bit CRC-32C,
// a generic protocol-buffer walk), independent of the writer's code.

fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
        }
    }
    !c
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c_bitwise(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// A protobuf field: (number, varint / fixed64 / bytes / fixed32 value).
#[derive(Debug, Clone)]
enum Field {
    Varint(u64),
    F64(f64),
    Bytes(Vec<u8>),
    F32(f32),
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*i];
        *i += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn fields(b: &[u8]) -> Vec<(u64, Field)> {
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        let key = varint(b, &mut i);
        let f = match key & 7 {
            0 => Field::Varint(varint(b, &mut i)),
            1 => {
                i += 8;
                Field::F64(f64::from_le_bytes(b[i - 8..i].try_into().unwrap()))
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                i += n;
                Field::Bytes(b[i - n..i].to_vec())
            }
            5 => {
                i += 4;
                Field::F32(f32::from_le_bytes(b[i - 4..i].try_into().unwrap()))
            }
            w => panic!("wire type {w} in an event"),
        };
        out.push((key >> 3, f));
    }
    out
}

fn get(fs: &[(u64, Field)], n: u64) -> Vec<&Field> {
    fs.iter().filter(|(k, _)| *k == n).map(|(_, f)| f).collect()
}

/// One record of an event file: (step, [(tag, scalar or text)]).
type EventRecord = (u64, Vec<(String, Result<f32, String>)>);

/// Every record of an event file, CRCs checked, after the file's version string.
fn read_events(path: &Path) -> (String, Vec<EventRecord>) {
    let b = std::fs::read(path).unwrap();
    let (mut i, mut version, mut out) = (0, String::new(), Vec::new());
    while i < b.len() {
        let len_bytes = &b[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(b[i + 8..i + 12].try_into().unwrap()), masked(len_bytes), "length CRC at {i}");
        let data = &b[i + 12..i + 12 + len];
        assert_eq!(
            u32::from_le_bytes(b[i + 12 + len..i + 16 + len].try_into().unwrap()),
            masked(data),
            "data CRC at {i}"
        );
        i += 16 + len;
        let ev = fields(data);
        assert!(matches!(get(&ev, 1).first(), Some(Field::F64(t)) if *t > 1.6e9), "every event has a wall time");
        if let Some(Field::Bytes(v)) = get(&ev, 3).first() {
            version = String::from_utf8(v.clone()).unwrap();
            continue;
        }
        let step = match get(&ev, 2).first() {
            Some(Field::Varint(s)) => *s,
            _ => 0,
        };
        let Some(Field::Bytes(summary)) = get(&ev, 5).first().cloned() else { panic!("an event without a summary") };
        let mut values = Vec::new();
        for v in get(&fields(summary), 1) {
            let Field::Bytes(v) = v else { panic!("a summary value that is not a message") };
            let v = fields(v);
            let Some(Field::Bytes(tag)) = get(&v, 1).first().cloned() else { panic!("a value without a tag") };
            let tag = String::from_utf8(tag.clone()).unwrap();
            let value = match (get(&v, 2).first(), get(&v, 8).first()) {
                (Some(Field::F32(x)), _) => Ok(*x),
                (_, Some(Field::Bytes(tensor))) => {
                    let t = fields(tensor);
                    assert!(matches!(get(&t, 1).first(), Some(Field::Varint(7))), "a text tensor is DT_STRING");
                    let Some(Field::Bytes(s)) = get(&t, 8).first().cloned() else { panic!("no string_val") };
                    Err(String::from_utf8(s.clone()).unwrap())
                }
                _ => panic!("{tag}: neither a scalar nor a text"),
            };
            values.push((tag, value));
        }
        out.push((step, values));
    }
    (version, out)
}

/// The run folder's TensorBoard events after a run killed at `resumed_at` and resumed to `steps`:
/// one event file, every metrics.jsonl line in it once with its value, the hyper-parameters as
/// text at the resume.
fn check_tensorboard_events(run_dir: &Path, resumed_at: u64, steps: usize) {
    let files: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(files.len(), 1, "one event file after a resume: {files:?}");
    let (version, events) = read_events(&files[0]);
    assert_eq!(version, "brain.Event:2");

    // Every metrics.jsonl line is there, once, with its value.
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scalar = |tag: &str, step: u64| -> Vec<f32> {
        events
            .iter()
            .filter(|(s, _)| *s == step)
            .flat_map(|(_, v)| v.iter().filter(|(t, _)| t == tag).filter_map(|(_, x)| x.clone().ok()))
            .collect()
    };
    let (mut train, mut eval) = (0, 0);
    for m in &metrics {
        let step = m["step"].as_u64().unwrap();
        if m["kind"] == "train" {
            assert_eq!(scalar("train/loss", step), [m["loss"].as_f64().unwrap() as f32], "train/loss at {step}");
            assert_eq!(scalar("train/lr", step), [m["lr"].as_f64().unwrap() as f32], "train/lr at {step}");
            assert_eq!(scalar("train/moe_aux_loss", step).len(), 1);
            // An Itera-Lite with MoE: how evenly each step's tokens went to the experts.
            let h = m["expert_load_entropy"].as_f64().expect("expert_load_entropy in metrics.jsonl");
            assert!(h > 0.0 && h <= 1.0, "expert-load entropy {h} at {step}");
            assert_eq!(scalar("train/expert_load_entropy", step), [h as f32], "expert-load entropy at {step}");
            train += 1;
        } else {
            assert_eq!(scalar("eval/valid_loss", step), [m["valid_loss"].as_f64().unwrap() as f32], "eval at {step}");
            eval += 1;
        }
    }
    assert_eq!(train, steps, "every step once");
    assert!(eval >= steps / 10, "the evaluations ({eval})");
    // The hyper-parameters as text, at the start and again at the resume.
    let texts: Vec<(u64, String)> = events
        .iter()
        .flat_map(|(s, v)| {
            v.iter().filter(|(t, _)| t == "hparams").filter_map(|(_, x)| x.clone().err().map(|t| (*s, t)))
        })
        .collect();
    // (The file was rewritten at the resume: its hyper-parameters are the resumed run's.)
    assert_eq!(texts.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [resumed_at], "hparams at the resume");
    assert!(texts[0].1.contains("\"batch_size\": 4") && texts[0].1.contains("\"state_size\""), "{}", texts[0].1);
}

/// A small seeded stream for kill times.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An export killed at random instants, many times, over an earlier export of the same folder:
/// every time the folder is a whole export that loads, its files matching its manifest.
#[test]
fn an_export_killed_at_random_points_leaves_a_whole_export_every_time() {
    let dir = scratch("export-kill");
    let (run_dir, out) = (dir.join("run"), dir.join("export"));
    assert_ok(&run(&tiny_run("itera-lite", 20, &run_dir)));
    let export_args = vec![
        "export".to_string(),
        "--checkpoint".into(),
        run_dir.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    let t = Instant::now();
    assert_ok(&run(&export_args));
    let took = t.elapsed().as_micros() as u64;
    let whole = |what: &str| {
        let loaded = load_model_dir(&out).unwrap_or_else(|e| panic!("{what}: the export does not load: {e:#}"));
        let manifest = loaded.manifest.unwrap_or_else(|| panic!("{what}: no manifest"));
        for f in &manifest.files {
            let bytes = std::fs::read(out.join(&f.name)).unwrap();
            assert_eq!(
                native_trainer::files::sha256_hex(&bytes),
                f.sha256,
                "{what}: {} differs from its manifest",
                f.name
            );
        }
    };
    whole("the first export");
    let staged = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".export."))
            .count()
    };
    let (mut rng, mut killed, mut mid_write) = (7u64, 0, 0);
    for i in 0..40 {
        let mut child =
            Command::new(BIN).args(&export_args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_micros(splitmix(&mut rng) % (took + 1)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        // Its staging folder left behind: this one was killed while it wrote the new export.
        mid_write += dir.join(format!(".export.tmp-{pid}")).exists() as usize;
        whole(&format!("kill {i}"));
    }
    println!("{killed} of 40 exports killed, {mid_write} of them while writing (an export takes {took} µs here)");
    assert!(mid_write >= 3, "too few exports were killed while writing ({mid_write}) for the test to mean anything");
    // The next export clears what the killed ones left.
    assert_ok(&run(&export_args));
    assert_eq!(staged(), 0, "staging folders of killed exports are removed");
    whole("after the clean-up");
}

/// A file-size limit (as a full disk) hit while writing a checkpoint: a clear error naming the
/// file, a nonzero exit, the last good checkpoint byte for byte as it was; then, without the
/// limit, the run resumes from it and completes.
#[test]
fn a_full_disk_during_a_checkpoint_is_a_clear_error_and_the_last_checkpoint_survives() {
    let dir = scratch("disk-full");
    let run_dir = dir.join("run");
    let steps = 60;
    kill_after_checkpoint(&tiny_run("itera-lite", steps, &run_dir), &run_dir, 10, Duration::ZERO);
    let ck = run_dir.join("checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();
    assert!(before.len() > 300 * 1024, "the checkpoint ({} bytes) must be larger than the limit", before.len());

    // bash's `ulimit -f` counts KiB: 300 KiB lets every log through, not a checkpoint.
    let mut resume = tiny_run("itera-lite", steps, &run_dir);
    resume.push("--resume".into());
    let limited = Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 300 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(&resume)
        .output()
        .unwrap();
    assert!(!limited.status.success(), "a run that cannot write its checkpoint must fail");
    let err = stderr(&limited);
    assert!(err.contains("checkpoint.safetensors") && err.contains("File too large"), "{err}");
    assert_eq!(std::fs::read(&ck).unwrap(), before, "the last good checkpoint is untouched");
    let leftovers: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");

    let out = run(&resume);
    assert_ok(&out);
    assert_eq!(Checkpoint::load(&run_dir).unwrap().meta.step, steps);
}

/// The training figures of every step of a run (`metrics.jsonl`): loss, text loss, reading
/// loss and gradient norm (before clipping).
fn step_figures(run_dir: &Path) -> Vec<[f64; 4]> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let lines = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
    let f = |m: &serde_json::Value, k: &str| m[k].as_f64().unwrap_or_else(|| panic!("no {k} in {m}"));
    lines
        .filter(|m| m["kind"] == "train")
        .map(|m| ["loss", "ce", "reading_loss", "grad_norm"].map(|k| f(&m, k)))
        .collect()
}

/// Data parallelism: two ranks, each on half of every batch (text windows and reading examples,
/// whose answers differ in length), follow the one-rank run of the same batch step by step — the
/// same losses and gradient norms to float tolerance, the same weights at the end — for the
/// baseline and for Itera-Lite with MoE off (the MoE's balancing loss is a statistic of each rank's
/// rows, so MoE runs differ there by design); a two-rank run killed and resumed ends bit-identical
/// to an uninterrupted two-rank run; a batch that does not divide among the ranks is refused.
#[test]
fn two_data_parallel_ranks_follow_the_one_rank_run_and_resume_bit_identically() {
    let dir = scratch("parallel");
    let index = dir.join("index");
    index_world("300", "0", &index, &dir.join("index.json"));
    let idx = index.display().to_string();
    let steps = 12;
    for (model, experts) in [("baseline", None), ("itera-lite", Some("0"))] {
        let mut flags = vec![
            ("--retrieval", idx.as_str()),
            ("--world-unseen", "0.1"),
            ("--reading-batch", "4"),
            ("--reading-entities", "200"),
            ("--grad-clip", "0.5"),
        ];
        flags.extend(experts.map(|e| ("--experts", e)));
        let one = dir.join(format!("{model}-1"));
        assert_ok(&run(&tiny_run_with(model, steps, &one, &flags)));
        let two = dir.join(format!("{model}-2"));
        flags.push(("--world-size", "2"));
        assert_ok(&run(&tiny_run_with(model, steps, &two, &flags)));
        let (a, b) = (step_figures(&one), step_figures(&two));
        assert_eq!(a.len(), steps);
        assert_eq!(b.len(), steps);
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            for (k, (p, q)) in x.iter().zip(y).enumerate() {
                assert!((p - q).abs() <= 1e-4 * p.abs().max(1e-3), "{model} step {}: figure {k}: {p} vs {q}", step + 1);
            }
        }
        for ((name, p), (_, q)) in checkpoint_values(&one).iter().zip(checkpoint_values(&two)) {
            if name.starts_with("adamw.") {
                continue; // the second moments of near-zero gradients carry no tolerance to speak of
            }
            let scale = p.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let worst = p.iter().zip(&q).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-4 * scale, "{model}: {name} differs by {worst} (scale {scale})");
        }
    }

    // Killed mid-run and resumed at the same world size: bit-identical to the uninterrupted run.
    let flags = [
        ("--retrieval", idx.as_str()),
        ("--world-unseen", "0.1"),
        ("--reading-batch", "4"),
        ("--reading-entities", "200"),
        ("--world-size", "2"),
        ("--checkpoint-interval", "1"),
    ];
    let (whole, killed) = (dir.join("whole"), dir.join("killed"));
    let steps = 40;
    assert_ok(&run(&tiny_run_with("itera-lite", steps, &whole, &flags)));
    let mut args = tiny_run_with("itera-lite", steps, &killed, &flags);
    kill_after_checkpoint(&args, &killed, 10, Duration::from_millis(3));
    args.push("--resume".into());
    assert_ok(&run(&args));
    assert_eq!(checkpoint_values(&whole), checkpoint_values(&killed));
    assert_eq!(step_figures(&whole), step_figures(&killed));

    // A batch the ranks cannot share evenly is refused before anything runs.
    let o = run(&tiny_run_with("baseline", 2, &dir.join("odd"), &[("--world-size", "3")]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--batch-size 4 does not divide among --world-size 3 ranks"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--task-loss answers`: the task corpus trained on its answers alone, rows of fresh instances;
/// the figures it logs are finite and the task accuracy is evaluated at the end; a run resumed
/// from its checkpoint ends with the same weights as one that was not stopped; any other corpus
/// is refused by name.
#[test]
fn task_answer_loss_trains_resumes_and_refuses_other_corpora() {
    let dir = scratch("task-loss");
    let args = |out: &Path, steps: usize| -> Vec<String> {
        let mut a = tiny_run_with(
            "itera-lite",
            steps,
            out,
            &[("--corpus", "tasks"), ("--task-loss", "answers"), ("--checkpoint-interval", "4")],
        );
        let v = a.iter().position(|x| x == "--vocab-size").unwrap();
        a.drain(v..v + 2); // task corpora: every merge there is
        a
    };
    let (whole, cut) = (dir.join("whole"), dir.join("cut"));
    let steps = 120;
    assert_ok(&run(&args(&whole, steps)));
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(whole.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<&serde_json::Value> = metrics.iter().filter(|m| m["kind"] == "train").collect();
    assert_eq!(train.len(), steps);
    for m in &train {
        let ce = m["ce"].as_f64().unwrap();
        // Chance over the task vocabulary is a few nats; the answers' loss starts near it.
        assert!(ce.is_finite() && ce > 0.1 && ce < 10.0, "answer loss {ce}");
    }
    let task_eval = metrics.iter().filter(|m| m["kind"] == "eval").count();
    assert!(task_eval > 0, "periodic evaluations logged");
    // Killed after a checkpoint, resumed: the same weights and moments as the run that was not.
    kill_after_checkpoint(&args(&cut, steps), &cut, 8, Duration::from_millis(3));
    let mut resumed = args(&cut, steps);
    resumed.push("--resume".into());
    assert_ok(&run(&resumed));
    assert_eq!(checkpoint_values(&whole), checkpoint_values(&cut), "resumed run");
    // The world corpus has no answers to train on alone.
    let o = run(&tiny_run_with("baseline", 2, &dir.join("w"), &[("--task-loss", "answers")]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--task-loss answers applies to `--corpus tasks`"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The model's weights in a run folder's checkpoint (no optimizer state), by name.
fn checkpoint_weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    checkpoint_values(dir).into_iter().filter(|(n, _)| !n.starts_with("adamw.")).collect()
}

#[test]
fn init_from_starts_a_run_at_another_runs_or_exports_weights_and_names_what_does_not_fit() {
    let dir = scratch("init-from");
    let path = |p: &Path| p.display().to_string();
    let source = dir.join("source");
    assert_ok(&run(&tiny_run("itera-lite", 10, &source)));
    let export = dir.join("export");
    assert_ok(&run(&["export".into(), "--checkpoint".into(), path(&source), "--out".into(), path(&export)]));
    let trained = checkpoint_weights(&source);

    // From the run folder and from its export, one step at a learning rate of 1e-12 (no weight
    // decay): the new run holds the source's weights, not a fresh init's.
    for (name, from) in [("from-run", &source), ("from-export", &export)] {
        let out = dir.join(name);
        let flags = [("--init-from", path(from)), ("--lr", "1e-12".into()), ("--weight-decay", "0".into())];
        let flags: Vec<(&str, &str)> = flags.iter().map(|(f, v)| (*f, v.as_str())).collect();
        assert_ok(&run(&tiny_run_with("itera-lite", 1, &out, &flags)));
        let got = checkpoint_weights(&out);
        assert_eq!(got.len(), trained.len(), "{name}");
        for ((n, a), (m, b)) in got.iter().zip(&trained) {
            assert_eq!(n, m);
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-6, "{name}: {n} differs from the source's by {diff}");
        }
    }
    // The export of a run started from another names its source (its tokens count its own).
    let from_export = dir.join("from-export-export");
    let o = run(&[
        "export".into(),
        "--checkpoint".into(),
        path(&dir.join("from-export")),
        "--out".into(),
        path(&from_export),
    ]);
    assert_ok(&o);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from_export.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["training"]["init_from"], path(&export));
    // A fresh run of the same flags (no --init-from) starts elsewhere: the comparison can fail.
    let fresh = dir.join("fresh");
    assert_ok(&run(&tiny_run_with("itera-lite", 1, &fresh, &[("--lr", "1e-12"), ("--weight-decay", "0")])));
    assert_ne!(checkpoint_weights(&fresh), trained);

    // Another model, a quantized export, a folder of nothing: named errors, no checkpoint written.
    let other = dir.join("other");
    let o = run(&tiny_run_with("itera-lite", 1, &other, &[("--init-from", &path(&source)), ("--preset", "small")]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("its model differs from this run's") && stderr(&o).contains("hidden_size"),
        "{}",
        stderr(&o)
    );
    assert!(!other.join("checkpoint.safetensors").exists());
    let q8 = dir.join("q8");
    assert_ok(&quantize(&export, "q8_0", &q8));
    let o = run(&tiny_run_with("itera-lite", 1, &other, &[("--init-from", &path(&q8))]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a quantized export cannot seed training"), "{}", stderr(&o));
    let o = run(&tiny_run_with("itera-lite", 1, &other, &[("--init-from", &path(&dir.join("nothing")))]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--init-from") && stderr(&o).contains("not a folder"), "{}", stderr(&o));
    assert!(!other.join("checkpoint.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
