//! The model worker (wasm32 only). All model work happens here, off the page's main thread:
//! fetch a model folder (manifest first) with progress, check every file's sha256 against the
//! manifest, keep the files in the Cache API so that a reload reads them locally, then generate
//! token by token (one message each) and measure decode latency against context length. An
//! export with a retrieval index (`index/`, the manifest's `retrieval`) also answers questions
//! with the documents it retrieves in the context; an index that cannot be used is reported and
//! the model runs without it.
//!
//! Jobs run as futures on the worker's event loop; after every token a job yields a macrotask
//! (a `MessageChannel` round trip, which setTimeout's 4 ms clamping would not allow), so that an
//! `abort` message gets through mid-generation.

use crate::engine::{
    cpu_name, energy_mj_per_token, read_sharded_tensors, read_tensors, Engine, GreedyAnswer, TextStream, PREFILL_CHUNK,
};
use crate::protocol::{BackendChoice, FromWorker, RetrievalStatus, Status, ToWorker};
use crate::retrieval::{question_prompt, RetrievalSpec, Retrieved, Retriever};
use itera_model::sample::SamplingConfig;
use itera_model::weights::{WeightFormat, SHARD_INDEX};
use js_sys::{Promise, Reflect, Uint8Array};
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{Cache, DedicatedWorkerGlobalScope, MessageChannel, MessageEvent, ReadableStreamDefaultReader, Response};

/// Cache API bucket for model files. A file is kept under its content (its sha256, which the
/// manifest names), so that two models sharing a file (the retrieval index of a pair) store it
/// once and download it once; each model folder's list of contents is kept beside them, and an
/// entry that no list names any more (a model changed on the server) is deleted after a load.
const CACHE_NAME: &str = "itera-lite-models-v2";
/// Buckets of earlier versions of the page (keyed by URL), deleted when the cache is opened.
const OLD_CACHES: [&str; 1] = ["itera-lite-models-v1"];
/// Key prefixes in the bucket (keys only, never fetched): contents, and model folders' lists.
const CONTENT_KEY: &str = "/itera-lite-cache/sha256/";
const RECORD_KEY: &str = "/itera-lite-cache/model/";

/// Send a progress message at most every this many bytes.
const PROGRESS_STEP: usize = 256 * 1024;

#[derive(Default)]
struct WorkerState {
    engine: RefCell<Option<Engine>>,
    retriever: RefCell<Option<Retriever>>,
    retrieval: RefCell<Option<RetrievalStatus>>, // as `Loaded` reported it
    busy: Cell<bool>,
    abort: Cell<bool>,
}

thread_local! {
    static STATE: Rc<WorkerState> = Rc::new(WorkerState::default());
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(msg: FromWorker) {
    let _ = scope().post_message(&JsValue::from_str(&msg.to_json()));
}

fn status(status: Status, detail: impl Into<String>) {
    post(FromWorker::Status { status, detail: detail.into() });
}

fn now() -> f64 {
    scope().performance().map(|p| p.now()).unwrap_or(0.0)
}

fn js_err(context: &str) -> impl Fn(JsValue) -> String + '_ {
    move |e| format!("{context}: {}", e.as_string().unwrap_or_else(|| format!("{e:?}")))
}

/// Which backend runs the model, as the page's badge shows it.
pub fn backend() -> String {
    format!("CPU ({})", cpu_name())
}

/// Entry point: install the message handler, then say `ready`.
pub fn start() {
    console_error_panic_hook::set_once();
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
        let Some(text) = ev.data().as_string() else {
            post(FromWorker::Error { message: "expected a JSON string message".into() });
            return;
        };
        match serde_json::from_str::<ToWorker>(&text) {
            Ok(ToWorker::Abort) => STATE.with(|s| s.abort.set(true)),
            Ok(msg) => {
                // Cleared here, in message order, so that an abort sent right after this job
                // is not lost even if it arrives before the job's first step.
                STATE.with(|s| s.abort.set(false));
                spawn_local(run_job(msg))
            }
            Err(e) => post(FromWorker::Error { message: format!("bad message {}: {e}", clip(&text, 200)) }),
        }
    });
    scope().set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget(); // lives as long as the worker
    post(FromWorker::Ready { backend: backend(), energy_formula: crate::engine::energy_formula() });
}

async fn run_job(msg: ToWorker) {
    let state = STATE.with(|s| s.clone());
    if state.busy.replace(true) {
        post(FromWorker::Error { message: "the worker is busy: stop the current job first".into() });
        return;
    }
    let result = match msg {
        ToWorker::Load { base, backend } => load(&state, &base, backend).await,
        ToWorker::SetBackend { backend } => set_backend(&state, backend),
        ToWorker::Generate { prompt, max_tokens, temperature, top_k, top_p, seed, stop_at_newline, retrieval } => {
            let sampling = SamplingConfig { temperature, top_k, top_p, seed };
            generate(&state, &prompt, max_tokens, sampling, stop_at_newline, retrieval).await
        }
        ToWorker::Answer { question, retrieval } => answer(&state, &question, retrieval).await,
        ToWorker::Bench { contexts, steps } => bench(&state, &contexts, steps).await,
        ToWorker::Abort => Ok(()),
    };
    state.busy.set(false);
    if let Err(message) = result {
        status(Status::Error, message.clone());
        post(FromWorker::Error { message });
    }
}

/// `text` quoted, cut to about `max` bytes (a message may hold a 1 MB prompt).
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return format!("{text:?}");
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

/// Lets queued messages (an abort) run before the next token.
async fn yield_now() {
    let Ok(channel) = MessageChannel::new() else { return };
    let port = channel.port1();
    let promise = Promise::new(&mut |resolve, _| port.set_onmessage(Some(resolve.unchecked_ref())));
    let _ = channel.port2().post_message(&JsValue::NULL);
    let _ = JsFuture::from(promise).await;
    port.set_onmessage(None);
}

// ---------------------------------------------------------------------------------------------
// Loading

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

async fn fetch_response(url: &str) -> Result<Response, String> {
    let resp = JsFuture::from(scope().fetch_with_str(url)).await.map_err(js_err(url))?;
    let resp: Response = resp.dyn_into().map_err(js_err(url))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {} {}", resp.status(), resp.status_text()));
    }
    Ok(resp)
}

/// The whole body of `url`, reporting progress for `file` as it arrives.
async fn fetch_bytes(url: &str, file: &str, expected: u64) -> Result<Vec<u8>, String> {
    let resp = fetch_response(url).await?;
    let total =
        resp.headers().get("content-length").ok().flatten().and_then(|v| v.parse::<u64>().ok()).unwrap_or(expected);
    let body = resp.body().ok_or_else(|| format!("{url}: empty response"))?;
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut out = Vec::with_capacity(total as usize);
    let mut reported = 0;
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(js_err(url))?;
        if Reflect::get(&chunk, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true) {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into()).map_err(js_err(url))?.unchecked_into();
        out.extend_from_slice(&value.to_vec());
        if out.len() - reported >= PROGRESS_STEP {
            reported = out.len();
            post(FromWorker::Progress { file: file.into(), loaded: out.len() as u64, total });
        }
    }
    post(FromWorker::Progress { file: file.into(), loaded: out.len() as u64, total: out.len() as u64 });
    Ok(out)
}

/// The page's model cache, or why there is none: the Cache API exists only in secure contexts
/// (https, localhost), and private windows may refuse it. Without it the files are fetched on
/// every visit.
async fn open_cache() -> Result<Cache, String> {
    let why = |e: JsValue| {
        let text = e
            .dyn_ref::<js_sys::Error>()
            .map(|e| format!("{}: {}", e.name(), e.message()))
            .unwrap_or_else(|| e.as_string().unwrap_or_else(|| format!("{e:?}")));
        format!("the Cache API is unavailable ({text}); the model's files are downloaded on every visit")
    };
    let caches = scope().caches().map_err(why)?;
    for old in OLD_CACHES {
        let _ = JsFuture::from(caches.delete(old)).await; // stale space; nothing depends on it
    }
    JsFuture::from(caches.open(CACHE_NAME)).await.map_err(why)?.dyn_into().map_err(why)
}

fn content_key(sha256: &str) -> String {
    format!("{CONTENT_KEY}{sha256}")
}

fn record_key(base: &str) -> String {
    format!("{RECORD_KEY}{}", String::from(js_sys::encode_uri_component(base)))
}

/// The cached bytes of the file with content `sha256`, if present and intact.
async fn cache_get(cache: &Cache, sha256: &str) -> Option<Vec<u8>> {
    let hit = JsFuture::from(cache.match_with_str(&content_key(sha256))).await.ok()?;
    let resp: Response = hit.dyn_into().ok()?;
    let buf = JsFuture::from(resp.array_buffer().ok()?).await.ok()?;
    let bytes = Uint8Array::new(&buf).to_vec();
    (sha256_hex(&bytes) == sha256).then_some(bytes)
}

async fn cache_put(cache: &Cache, key: &str, bytes: &[u8]) {
    let array = Uint8Array::from(bytes);
    if let Ok(resp) = Response::new_with_opt_buffer_source(Some(&array)) {
        if let Err(e) = JsFuture::from(cache.put_with_str(key, &resp)).await {
            web_sys::console::warn_1(&format!("could not cache {key}: {e:?}").into());
        }
    }
}

/// Notes in the cache which contents the model folder `base` uses now (before any of them is
/// stored, so that another worker's clean-up never takes a file this one is about to keep).
async fn cache_record(cache: &Cache, base: &str, shas: &[String]) {
    let json = serde_json::to_vec(shas).unwrap_or_default();
    cache_put(cache, &record_key(base), &json).await;
}

/// Deletes the cached contents that no model folder's list names (an old version of a file). The
/// keys are listed before the lists are read: a content stored meanwhile is not among them.
async fn cache_clean(cache: &Cache) -> Result<(), JsValue> {
    let keys: js_sys::Array = JsFuture::from(cache.keys()).await?.dyn_into()?;
    let mut contents = Vec::new();
    let mut records = Vec::new();
    for key in keys.iter() {
        let url = key.dyn_into::<web_sys::Request>()?.url();
        let path = web_sys::Url::new(&url)?.pathname();
        if let Some(sha) = path.strip_prefix(CONTENT_KEY) {
            contents.push((url, sha.to_string()));
        } else if path.starts_with(RECORD_KEY) {
            records.push(url);
        }
    }
    let mut used = std::collections::HashSet::new();
    for url in records {
        let resp: Response = JsFuture::from(cache.match_with_str(&url)).await?.dyn_into()?;
        let text = JsFuture::from(resp.text()?).await?.as_string().unwrap_or_default();
        // A list that cannot be read names nothing; its model finds its files missing and
        // downloads them again.
        used.extend(serde_json::from_str::<Vec<String>>(&text).unwrap_or_default());
    }
    for (url, sha) in contents {
        if !used.contains(&sha) {
            JsFuture::from(cache.delete_with_str(&url)).await?;
        }
    }
    Ok(())
}

/// Runs `work` holding the Web Lock `name` (workers of the page queue for it), or without a lock
/// where the browser has none (the Web Locks API needs a secure context, as the cache does).
async fn with_lock<T>(name: &str, work: impl std::future::Future<Output = T>) -> T {
    let request = Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|n| Reflect::get(&n, &"locks".into()))
        .and_then(|locks| Ok((Reflect::get(&locks, &"request".into())?.dyn_into::<js_sys::Function>()?, locks)));
    let Ok((request, locks)) = request else { return work.await };
    // The lock is held until the promise the callback returns settles: `release`, resolved when
    // the work is done. `granted` resolves when the callback runs.
    let mut resolve_release = None;
    let release = Promise::new(&mut |resolve, _| resolve_release = Some(resolve));
    let mut resolve_granted = None;
    let granted = Promise::new(&mut |resolve, _| resolve_granted = Some(resolve));
    let (Some(resolve_release), Some(resolve_granted)) = (resolve_release, resolve_granted) else {
        return work.await;
    };
    let callback = Closure::once_into_js(move |_lock: JsValue| -> JsValue {
        let _ = resolve_granted.call0(&JsValue::NULL);
        release.into()
    });
    if request.call2(&locks, &name.into(), &callback).is_err() {
        return work.await;
    }
    let _ = JsFuture::from(granted).await;
    let out = work.await;
    let _ = resolve_release.call0(&JsValue::NULL);
    out
}

async fn load(state: &WorkerState, base: &str, choice: BackendChoice) -> Result<(), String> {
    let t0 = now();
    let base = if base.ends_with('/') { base.to_string() } else { format!("{base}/") };
    status(Status::Loading, format!("reading {base}manifest.json"));
    let manifest_bytes = fetch_bytes(&format!("{base}manifest.json"), "manifest.json", 0).await?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest_bytes).map_err(|e| format!("{base}manifest.json: {e}"))?;
    let files = manifest["files"].as_array().ok_or_else(|| format!("{base}manifest.json lists no files"))?;
    // The index is optional: a problem with one of its files is kept for `Loaded`, not fatal.
    let spec = RetrievalSpec::from_manifest(&manifest);
    let in_index = |name: &str| matches!(&spec, Ok(Some(s)) if s.holds(name));
    let mut index_problem: Option<String> = None;
    let cache = open_cache().await;
    match &cache {
        Err(e) => web_sys::console::warn_1(&format!("{base}: {e}").into()),
        Ok(c) => {
            let shas: Vec<String> = files.iter().filter_map(|f| f["sha256"].as_str().map(String::from)).collect();
            cache_record(c, &base, &shas).await;
        }
    }
    let (mut blobs, mut total, mut downloaded) = (HashMap::new(), 0u64, 0u64);
    for f in files {
        let (Some(name), Some(sha)) = (f["name"].as_str(), f["sha256"].as_str()) else {
            return Err(format!("{base}manifest.json: a file entry lacks name or sha256"));
        };
        let is_index = in_index(name);
        if is_index && index_problem.is_some() {
            continue; // the index is unusable already: spare the download
        }
        // Names may hold a folder (`index/vectors.bin`): the URL is the path.
        let url = format!("{base}{name}");
        let expected = f["bytes"].as_u64().unwrap_or(0);
        let (bytes, fetched) = match fetch_checked(cache.as_ref().ok(), &url, name, sha, expected).await {
            Ok(got) => got,
            Err(e) if is_index => {
                index_problem = Some(e);
                continue;
            }
            Err(e) => {
                return Err(format!("{e}; refusing to run a model whose files differ from what its manifest describes"))
            }
        };
        downloaded += if fetched { bytes.len() as u64 } else { 0 };
        total += bytes.len() as u64;
        blobs.insert(name.to_string(), bytes);
    }
    if let Ok(c) = &cache {
        if let Err(e) = cache_clean(c).await {
            web_sys::console::warn_1(&format!("could not clean the model cache: {e:?}").into());
        }
    }
    let get = |name: &str| blobs.get(name).ok_or_else(|| format!("{base}manifest.json does not list {name}"));
    status(Status::Loading, "building the model");
    yield_now().await;
    let format = match manifest["dtype"].as_str() {
        Some(d) => WeightFormat::from_manifest_dtype(d).map_err(|e| format!("{base}manifest.json: {e}"))?,
        None => WeightFormat::F32,
    };
    // The weights are read once, for the CPU model and the GPU's upload alike.
    let (weights_file, tensors) = if blobs.contains_key(SHARD_INDEX) {
        // f32 weights in shards: every shard the manifest lists was downloaded and checked above.
        (SHARD_INDEX, read_sharded_tensors(get(SHARD_INDEX)?, |f| blobs.get(f).cloned())?)
    } else {
        (format.file_name(), read_tensors(get(format.file_name())?, format)?)
    };
    let mut engine = Engine::load_tensors(get("config.json")?, get("tokenizer.json")?, weights_file, tensors.clone())?;
    // The GPU too, where there is one and it was not declined: the CPU stays the fallback.
    let notice = if choice == BackendChoice::Cpu {
        None
    } else {
        status(Status::Loading, "putting the model on the GPU");
        yield_now().await;
        match itera_webgpu::Gpu::new().await {
            Ok(gpu) => engine.attach_gpu(&gpu, &tensors).err().map(|e| format!("WebGPU: {e}; running on the CPU")),
            Err(e) => Some(format!("{e}; running on the CPU")),
        }
    };
    post(FromWorker::Backend { backend: engine.backend(), notice });
    *state.engine.borrow_mut() = Some(engine);

    let retrieval = match spec {
        Ok(None) => RetrievalStatus::Absent,
        Err(message) => RetrievalStatus::Failed { message },
        Ok(Some(spec)) => match index_problem {
            Some(p) => RetrievalStatus::Failed { message: format!("retrieval index: {p}") },
            None => {
                status(Status::Loading, "reading the retrieval index");
                yield_now().await;
                let t = now();
                let bytes = blobs.iter().filter(|(n, _)| spec.holds(n)).map(|(_, b)| b.len() as u64).sum();
                match Retriever::load(spec, |name| blobs.remove(name)) {
                    Ok(r) => {
                        let s = r.spec();
                        let ready = RetrievalStatus::Ready {
                            documents: r.documents(),
                            k: s.k,
                            order: s.order,
                            bytes,
                            ms: now() - t,
                        };
                        *state.retriever.borrow_mut() = Some(r);
                        ready
                    }
                    Err(message) => RetrievalStatus::Failed { message },
                }
            }
        },
    };
    if let RetrievalStatus::Failed { message } = &retrieval {
        web_sys::console::warn_1(&format!("{base}: running without retrieval: {message}").into());
    }
    *state.retrieval.borrow_mut() = Some(retrieval.clone());
    let cache = cache.err();
    post(FromWorker::Loaded { manifest, bytes: total, downloaded, load_ms: now() - t0, retrieval, cache });
    status(Status::Ready, "");
    Ok(())
}

/// The bytes of one listed file, from the cache if they are there and match `sha256`, else
/// downloaded, checked and cached; and whether they were downloaded. With a cache, the lookup
/// and the download hold a lock named by the content: where the other model's worker is
/// fetching the same file (a pair's shared index), this one waits and then reads its copy.
async fn fetch_checked(
    cache: Option<&Cache>,
    url: &str,
    name: &str,
    sha256: &str,
    expected: u64,
) -> Result<(Vec<u8>, bool), String> {
    let Some(cache) = cache else { return download_checked(url, name, sha256, expected).await };
    let lock = format!("itera-lite-file-{sha256}");
    with_lock(&lock, async {
        if let Some(bytes) = cache_get(cache, sha256).await {
            post(FromWorker::Progress { file: name.into(), loaded: bytes.len() as u64, total: bytes.len() as u64 });
            return Ok((bytes, false));
        }
        let bytes = download_checked(url, name, sha256, expected).await?;
        cache_put(cache, &content_key(sha256), &bytes.0).await;
        Ok(bytes)
    })
    .await
}

/// The body of `url`, checked against the manifest's `sha256`.
async fn download_checked(url: &str, name: &str, sha256: &str, expected: u64) -> Result<(Vec<u8>, bool), String> {
    status(Status::Loading, format!("downloading {name}"));
    let bytes = fetch_bytes(url, name, expected).await?;
    let got = sha256_hex(&bytes);
    if got != sha256 {
        return Err(format!("{url}: sha256 {got} does not match manifest.json ({sha256})"));
    }
    Ok((bytes, true))
}

/// Switches the backend of the loaded model (between jobs: the busy flag keeps them out).
fn set_backend(state: &WorkerState, choice: BackendChoice) -> Result<(), String> {
    let mut slot = state.engine.borrow_mut();
    let engine = slot.as_mut().ok_or("no model is loaded")?;
    let notice = match choice {
        BackendChoice::Cpu => engine.use_gpu(false).err(),
        BackendChoice::Webgpu | BackendChoice::Auto => engine
            .use_gpu(true)
            .err()
            .map(|e| format!("{e} (no WebGPU adapter, or it failed at load); running on the CPU")),
    };
    post(FromWorker::Backend { backend: engine.backend(), notice });
    Ok(())
}

/// Reports a switch to the CPU made by the engine during a job (the GPU failed).
fn report_fallback(engine: &mut Engine) {
    if let Some(notice) = engine.take_fallback() {
        web_sys::console::warn_1(&notice.clone().into());
        post(FromWorker::Backend { backend: engine.backend(), notice: Some(notice) });
    }
}

/// Why `retrieval: true` cannot be honoured, in the words of `Loaded`'s report.
fn no_retrieval(state: &WorkerState) -> String {
    match &*state.retrieval.borrow() {
        Some(RetrievalStatus::Failed { message }) => format!("retrieval is off for this model: {message}"),
        _ => "this model has no retrieval index (its manifest.json names none)".into(),
    }
}

/// The retrieved documents for `question`, the search time, and the prompt that reads them; or,
/// without `retrieval`, no documents and the plain QA prompt.
fn prepare(
    state: &WorkerState,
    question: &str,
    retrieval: bool,
) -> Result<(Vec<Retrieved>, Option<f64>, String), String> {
    if !retrieval {
        return Ok((Vec::new(), None, question_prompt(question, None)));
    }
    let slot = state.retriever.borrow();
    let r = slot.as_ref().ok_or_else(|| no_retrieval(state))?;
    let t = now();
    let docs = r.retrieve(question);
    let ms = now() - t;
    let prompt = question_prompt(question, Some((r, &docs)));
    Ok((docs, Some(ms), prompt))
}

// ---------------------------------------------------------------------------------------------
// Generation and the latency benchmark

/// Starts a new sequence with `ids` (after `<|endoftext|>`), [`PREFILL_CHUNK`] tokens per pass,
/// yielding between passes so that an `abort` gets through; a long prompt reports how far it
/// got (as `busy`). Returns the logits for the next token, or `None` when aborted.
async fn read_prompt(
    state: &WorkerState,
    engine: &mut Engine,
    ids: &[u32],
    busy: Status,
) -> Result<Option<Vec<f32>>, String> {
    engine.check_prompt(ids.len())?;
    let mut chunks = ids.chunks(PREFILL_CHUNK);
    let first = chunks.next().unwrap_or(&[]);
    let mut logits = engine.prefill_async(first).await?;
    report_fallback(engine);
    let mut read = first.len();
    for (i, chunk) in chunks.enumerate() {
        if i % 16 == 0 && ids.len() > 16 * PREFILL_CHUNK {
            status(busy, format!("reading the prompt: {read} of {} tokens", ids.len()));
        }
        yield_now().await;
        if state.abort.get() {
            return Ok(None);
        }
        logits = engine.feed_async(chunk).await?;
        report_fallback(engine);
        read += chunk.len();
    }
    if ids.len() > 16 * PREFILL_CHUNK {
        status(busy, "");
    }
    Ok(Some(logits))
}

/// Ends a job that was stopped by `abort`.
fn aborted() {
    post(FromWorker::Done { tokens: 0, ms: 0.0, reason: "aborted".into() });
    status(Status::Aborted, "aborted");
}

async fn generate(
    state: &WorkerState,
    prompt: &str,
    max_tokens: usize,
    sampling: SamplingConfig,
    stop_at_newline: bool,
    retrieval: bool,
) -> Result<(), String> {
    // Only this job touches the engine until it ends (the busy flag keeps others out).
    let mut slot = state.engine.borrow_mut();
    let engine = slot.as_mut().ok_or("no model is loaded")?;
    let mut sampler = Engine::sampler(sampling)?;
    // With retrieval, the prompt is a question, read after what the index returns for it.
    let prompt = if retrieval {
        let (documents, query_ms, prompt) = prepare(state, prompt, true)?;
        post(FromWorker::Retrieved { documents, query_ms: query_ms.unwrap_or(0.0), prompt: prompt.clone() });
        prompt
    } else {
        prompt.to_string()
    };
    status(Status::Generating, "");
    let t0 = now();
    let ids = engine.encode(&prompt)?;
    let Some(mut logits) = read_prompt(state, engine, &ids, Status::Generating).await? else {
        return Ok(aborted());
    };
    post(FromWorker::Prefill { tokens: ids.len() + 1, ms: now() - t0 });
    let mut text = TextStream::default();
    let (mut n, mut reason) = (0usize, "max_tokens");
    while n < max_tokens {
        yield_now().await;
        if state.abort.get() {
            reason = "aborted";
            break;
        }
        let t = now();
        let next = itera_model::sample::Sampler::sample(&mut sampler, &logits);
        if next == engine.eot() {
            reason = "end_of_text";
            break;
        }
        let piece = text.push(engine, next)?;
        n += 1;
        let at_limit = engine.context_len() + 1 > engine.max_context();
        if !at_limit {
            engine.step_async(next, &mut logits).await?;
            report_fallback(engine);
        }
        let context = engine.context_len();
        post(FromWorker::Token {
            id: next,
            ms: now() - t,
            context,
            state_bytes: engine.state_bytes(),
            energy_mj: energy_mj_per_token(engine.config(), context),
            text: piece.clone(),
        });
        if stop_at_newline && piece.contains('\n') {
            reason = "newline";
            break;
        }
        if at_limit {
            reason = "context_limit";
            break;
        }
    }
    post(FromWorker::Done { tokens: n, ms: now() - t0, reason: reason.into() });
    status(if reason == "aborted" { Status::Aborted } else { Status::Done }, reason);
    Ok(())
}

/// Answers `question` greedily, exactly as the trainer's evaluation does, with the retrieved
/// documents in the context or without; yields between tokens so that `abort` gets through.
async fn answer(state: &WorkerState, question: &str, retrieval: bool) -> Result<(), String> {
    let mut slot = state.engine.borrow_mut();
    let engine = slot.as_mut().ok_or("no model is loaded")?;
    status(Status::Generating, if retrieval { "answering with retrieval" } else { "answering" });
    let (documents, query_ms, prompt) = prepare(state, question, retrieval)?;
    let t0 = now();
    let ids = engine.encode(&prompt)?;
    let mut a = match read_prompt(state, engine, &ids, Status::Generating).await? {
        Some(logits) => GreedyAnswer::after_prompt(logits, ids.len() + 1),
        None => {
            let mut a = GreedyAnswer::after_prompt(Vec::new(), ids.len() + 1);
            a.stop("aborted"); // the page waits for the answer message
            a
        }
    };
    while a.end().is_none() {
        yield_now().await;
        if state.abort.get() {
            a.stop("aborted");
            break;
        }
        a.step_async(engine).await?;
        report_fallback(engine);
    }
    let reason = a.end().unwrap_or("aborted");
    post(FromWorker::Answer {
        question: question.to_string(),
        retrieval,
        documents,
        query_ms,
        prompt_tokens: a.prompt_tokens,
        tokens: a.tokens(),
        ms: now() - t0,
        answer: a.answer().to_string(),
        reason: reason.into(),
    });
    status(if reason == "aborted" { Status::Aborted } else { Status::Done }, reason);
    Ok(())
}

/// For each context length c: prefill c - steps tokens (in chunks, yielding between them; its wall
/// time is the point's prefill figure), then time `steps` single-token decodes at positions
/// c - steps .. c, back to back: median and p95 of the steps, and their mean from one reading of
/// the clock around them all.
async fn bench(state: &WorkerState, contexts: &[usize], steps: usize) -> Result<(), String> {
    let mut slot = state.engine.borrow_mut();
    let engine = slot.as_mut().ok_or("no model is loaded")?;
    let steps = steps.max(2);
    let vocab = engine.config().vocab_size() as u32;
    status(Status::Benchmarking, "measuring this worker's GEMV rate");
    yield_now().await;
    // 16 MiB of f32 weights: past the caches, as a model's are.
    let (rows, cols) = (4096, 1024);
    post(FromWorker::Peak { gflops: crate::peak::gemv_gflops(rows, cols, 8, 60.0, now), rows, cols });
    status(Status::Benchmarking, "");
    // Untimed: a short prefill and a few decodes, so that the first point is not measured on the
    // browser's quick first compile of the model's code (it swaps in optimised code as it runs).
    let warm: Vec<u32> = (0..32u32).map(|i| 1 + (i * 7919) % (vocab - 1)).collect();
    if read_prompt(state, engine, &warm, Status::Benchmarking).await?.is_none() {
        return Ok(aborted());
    }
    let mut logits = Vec::with_capacity(vocab as usize);
    for i in 0..2 * steps as u32 {
        engine.step_async(1 + (i * 31) % (vocab - 1), &mut logits).await?;
    }
    for &c in contexts {
        if c > engine.max_context() || c <= steps + 1 {
            post(FromWorker::Error { message: format!("context {c} is outside this model's range; skipped") });
            continue;
        }
        // A fixed token pattern (the content does not change the cost).
        let filler: Vec<u32> = (0..(c - steps - 1) as u32).map(|i| 1 + (i * 7919) % (vocab - 1)).collect();
        let prefill_start = now();
        if read_prompt(state, engine, &filler, Status::Benchmarking).await?.is_none() {
            return Ok(aborted());
        }
        let prefill_ms = now() - prefill_start;
        // The timed steps run back to back (no yield between them: an `abort` waits for them),
        // so that their total, read once, gives the mean step exactly even where a step is
        // shorter than the timer's resolution.
        yield_now().await;
        if state.abort.get() {
            return Ok(aborted());
        }
        let mut times = Vec::with_capacity(steps);
        let start = now();
        for i in 0..steps {
            let t = now();
            engine.step_async(1 + (i as u32 * 31) % (vocab - 1), &mut logits).await?;
            times.push(now() - t);
        }
        let mean_ms = (now() - start) / steps as f64;
        times.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let median_ms = pick(0.5);
        post(FromWorker::BenchPoint {
            context: c,
            median_ms,
            p95_ms: pick(0.95),
            mean_ms,
            state_bytes: engine.state_bytes(),
            backend: engine.backend().kind,
            gflops: if mean_ms > 0.0 {
                engine.config().decode_flops_per_token(c) / (mean_ms * 1e-3) / 1e9
            } else {
                0.0
            },
            prefill_tokens: filler.len() + 1, // `<|endoftext|>` first
            prefill_ms,
        });
        report_fallback(engine);
    }
    post(FromWorker::Done { tokens: 0, ms: 0.0, reason: "bench".into() });
    status(Status::Done, "bench");
    Ok(())
}
