// The page: two model workers (crates/itera-web, wasm), one per model, driven side by side.
// No model code runs here; this file only sends messages and draws what comes back.

const MODELS = [
  { key: "baseline", title: "Transformer baseline" },
  { key: "itera-lite", title: "Itera-Lite (SSM + sparse MoE)" },
];
// The page's models index (scripts/copy-models.mjs writes it at build time): the pairs it can
// serve, each with a label, a description and its two model folders under models/; the first is
// the default. The default pair always lies in models/baseline and models/itera-lite, which is
// what the page serves when the index is missing or unusable (and says why).
const PAIRS_URL = "models/pairs.json";
const FALLBACK_PAIR = {
  id: "default", label: "the models in models/baseline and models/itera-lite", description: "",
  "baseline": "baseline", "itera-lite": "itera-lite",
};
const PAIR_ID = /^[a-z0-9][a-z0-9_-]{0,39}$/;
const PAIR_FOLDER = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;
const BENCH_CONTEXTS = [64, 256, 1024, 4096];
const BENCH_STEPS = 16;
const COLORS = { "baseline": "#c2410c", "itera-lite": "#1d4ed8" };

const $ = (id) => document.getElementById(id);
const fmtBytes = (b) => b >= 1 << 20 ? `${+(b / (1 << 20)).toFixed(2)} MiB` : b >= 1024 ? `${+(b / 1024).toFixed(1)} KiB` : `${b} B`;
const fmtCount = (n) => n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : `${n}`;
const fmtMs = (ms) => ms == null || !isFinite(ms) ? "–" : ms < 10 ? `${ms.toFixed(2)} ms` : `${ms.toFixed(1)} ms`;
const quantile = (xs, q) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.round((s.length - 1) * q)];
};
// A single index search is often below the worker's timer resolution (Chromium: 0.1 ms).
const fmtQueryMs = (ms) => ms < 0.1 ? "< 0.1 ms" : fmtMs(ms);
// Text pasted or dropped in can hold lone UTF-16 surrogates (invalid UTF-8 reaches the page as
// U+FFFD already). JSON carries them, Rust strings cannot: each becomes U+FFFD before it is sent.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
const wellFormed = (s) => s.replace(LONE_SURROGATE, "\uFFFD");
// Why a generation ended (the worker's `done` reasons), in words.
const REASONS = {
  max_tokens: "reached max tokens", end_of_text: "the model ended the text", newline: "end of line",
  context_limit: "reached the model's context limit", aborted: "stopped", bench: "benchmark done",
};
// A crashed worker is replaced (and its model reloaded, from the cache) this many times per visit.
const MAX_RESTARTS = 3;
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

// ---------------------------------------------------------------------------------------------
// One card per model

class ModelView {
  constructor(spec) {
    this.spec = spec;
    this.manifest = null;
    this.busy = false;
    this.ready = false;
    this.listeners = [];
    this.bench = [];
    this.resetRun();
    const card = document.createElement("div");
    card.className = `card ${spec.key}`;
    card.dataset.model = spec.key;
    card.dataset.base = spec.base;
    card.innerHTML = `
      <h3>${esc(spec.title)}</h3>
      <div class="model-name" data-role="name">${esc(spec.base)}</div>
      <div class="backend" data-role="backend" data-kind="">backend: –</div>
      <div class="notice" data-role="notice" hidden></div>
      <div class="notice" data-role="notes" hidden></div>
      <div class="status" data-role="status">starting worker…</div>
      <div class="progress"><div data-role="bar"></div></div>
      <div class="retrieval" data-role="retrieval" data-state="loading">retrieval index: –</div>
      <div class="retrieved" data-role="retrieved" hidden></div>
      <div class="output" data-role="output" aria-live="polite"></div>
      <table class="metrics"><tbody data-role="metrics"></tbody></table>`;
    $("models").appendChild(card);
    this.card = card;
    this.el = (role) => card.querySelector(`[data-role=${role}]`);
    this.files = {};
    this.crashes = 0;
    this.notes = {};
    this.backendChoice = backendChoice;
    this.startWorker();
    this.renderMetrics();
  }

  startWorker() {
    this.worker = new Worker("./worker_loader.js");
    this.worker.onmessage = (ev) => this.onMessage(JSON.parse(ev.data));
    this.worker.onerror = (ev) => {
      ev.preventDefault(); // handled here: the card says what happened
      this.crashed(ev.message || "unknown error");
    };
  }

  // Another pair was chosen: the worker goes, with whatever it was doing, and so does the card.
  dispose() {
    this.disposed = true;
    this.worker.onmessage = null;
    this.worker.onerror = null;
    this.worker.terminate();
    for (const l of this.listeners.splice(0)) l.reject(new Error("another model pair was chosen"));
    this.card.remove();
  }

  // The worker died (a wasm trap, out of memory, an uncaught exception): its job is lost and its
  // state cannot be trusted. Start a new one, which reloads the model (from the cache); after
  // MAX_RESTARTS crashes, stay stopped and say so.
  crashed(what) {
    this.worker.terminate();
    this.crashes += 1;
    const job = this.busy ? " during a job" : "";
    this.loaded = null;
    this.files = {};
    if (this.crashes > MAX_RESTARTS) {
      this.note("crash", `The worker crashed ${this.crashes} times (last${job}: ${what}); reload the page to try again.`);
      this.fail(`the worker crashed: ${what}`);
      return;
    }
    this.note("crash", `The worker crashed${job} (${what}) and was restarted; the model was loaded again.`);
    this.ready = false;
    this.busy = false;
    this.setStatus("restarting", `the worker crashed (${what}); starting a new one`);
    for (const l of this.listeners.splice(0)) l.reject(new Error(`the worker crashed: ${what}`));
    updateButtons();
    this.startWorker();
  }

  // A lasting remark on the card (the Cache API missing, a crash), by topic.
  note(key, text) {
    if (text) this.notes[key] = text;
    else delete this.notes[key];
    const el = this.el("notes");
    el.textContent = Object.values(this.notes).join(" ");
    el.hidden = !el.textContent;
  }

  resetRun() {
    this.times = [];
    this.energy = [];
    this.prefillMs = null;
    this.stateBytes = 0;
    this.context = 0;
    this.generated = 0;
  }

  send(msg) { this.worker.postMessage(JSON.stringify(msg)); }

  // Resolves with the next message of one of `types` (and rejects on an error message).
  next(types) {
    return new Promise((resolve, reject) => this.listeners.push({ types, resolve, reject }));
  }

  // `key` is the machine-readable status (loading, ready, generating, done, aborted, error).
  setStatus(key, detail = "") {
    const s = this.el("status");
    s.textContent = detail ? `${key}: ${detail}` : key;
    s.classList.toggle("error", key === "error");
    this.card.dataset.status = key;
  }

  // A load that fails leaves the model unusable; a job that fails after the load (a prompt too
  // long for the model, say) is shown, and the model stays ready for the next one.
  fail(message) {
    if (!this.loaded) this.ready = false;
    this.busy = false;
    this.setStatus("error", message);
    console.warn(`${this.spec.key}: ${message}`);
    for (const l of this.listeners.splice(0)) l.reject(new Error(message));
    updateButtons();
  }

  onMessage(m) {
    if (this.disposed) return;
    switch (m.type) {
      case "ready":
        this.cpuName = m.backend;
        $("energy-formula").textContent = m.energy_formula;
        this.setStatus("loading");
        // On the GPU where the browser has WebGPU (the worker falls back to the CPU and says why),
        // or where the backend switch says, for a worker that replaces a crashed one.
        this.send({ type: "load", base: this.spec.base, backend: this.backendChoice || "auto" });
        break;
      case "backend":
        this.backend = m.backend;
        this.renderBackend(m.notice);
        break;
      case "status":
        if (m.status === "error") break; // the error message follows
        this.setStatus(m.status, m.status === "done" || m.status === "aborted" ? this.reasonText(m.detail) : m.detail);
        break;
      case "progress": {
        this.files[m.file] = m;
        const loaded = Object.values(this.files).reduce((a, f) => a + f.loaded, 0);
        const total = Object.values(this.files).reduce((a, f) => a + Math.max(f.total, f.loaded), 0);
        this.el("bar").style.width = `${total ? (100 * loaded) / total : 0}%`;
        this.downloadLabel = `${fmtBytes(loaded)}`;
        break;
      }
      case "loaded":
        this.manifest = m.manifest;
        this.loaded = m;
        this.el("name").textContent = `${m.manifest.name || this.spec.key}, weights ${m.manifest.dtype || "float32"} (${this.spec.base})`;
        this.retrieval = m.retrieval;
        this.note("cache", m.cache ? `Not cached: ${m.cache}.` : "");
        this.ready = true;
        this.el("bar").style.width = "100%";
        this.setStatus("ready");
        this.renderRetrieval();
        drawSizes();
        stateChart = stateChart.then(drawState).catch((e) => console.warn(`state chart: ${e.message}`));
        addQaExamples(m.manifest);
        updateButtons();
        break;
      case "prefill":
        this.prefillMs = m.ms;
        this.context = m.tokens;
        break;
      case "retrieved":
        if (this.onRetrieved) this.onRetrieved(m);
        break;
      case "token":
        this.times.push(m.ms);
        this.energy.push(m.energy_mj);
        this.stateBytes = m.state_bytes;
        this.context = m.context;
        this.generated += 1;
        if (this.onToken) this.onToken(m);
        break;
      case "bench_point":
        this.bench.push(m);
        drawLatency();
        break;
      case "peak":
        this.peak = m;
        break;
      case "error":
        this.fail(m.message);
        return;
    }
    this.renderMetrics();
    for (let i = 0; i < this.listeners.length; i++) {
      if (this.listeners[i].types.includes(m.type)) {
        this.listeners.splice(i, 1)[0].resolve(m);
        break;
      }
    }
  }

  reasonText(reason) {
    if (reason === "context_limit") return `${REASONS[reason]} (${this.context} tokens)`;
    return REASONS[reason] || reason;
  }

  get canRetrieve() { return this.retrieval?.state === "ready"; }

  get backendLabel() {
    const b = this.backend;
    if (!b) return "starting…";
    return b.kind === "webgpu" ? `WebGPU (${b.name})` : `CPU (${b.name})`;
  }

  // The card's badge, the notice when the GPU was asked for and not used, the page's summary.
  renderBackend(notice) {
    const el = this.el("backend");
    el.dataset.kind = this.backend.kind;
    el.textContent = `backend: ${this.backendLabel}`;
    const n = this.el("notice");
    n.hidden = !notice;
    n.textContent = notice || "";
    renderBackendSummary();
  }

  // Why this model answers without retrieval, in a few words (null when it can retrieve).
  get noRetrieval() {
    const r = this.retrieval;
    if (!r) return "not loaded";
    if (r.state === "absent") return "no retrieval index in this export";
    if (r.state === "failed") return `retrieval index unusable: ${r.message}`;
    return null;
  }

  renderRetrieval() {
    const r = this.retrieval, el = this.el("retrieval");
    el.dataset.state = r.state;
    el.title = "";
    if (r.state === "ready") {
      el.textContent = `retrieval index: ${r.documents} documents, ${fmtBytes(r.bytes)}; reads ${r.k} per question, ${r.order}`;
      el.title = `decoded and checked in ${fmtMs(r.ms)}`;
    } else if (r.state === "absent") {
      el.textContent = "retrieval: none (this export has no index; it answers from its weights alone)";
    } else {
      el.textContent = `retrieval unavailable: ${r.message}. The model runs without it.`;
    }
  }

  renderMetrics() {
    const p = this.manifest?.params;
    const fileBytes = this.manifest ? this.manifest.files.reduce((a, f) => a + f.bytes, 0) : null;
    const mean = this.times.length ? this.times.reduce((a, b) => a + b, 0) / this.times.length : null;
    const energy = this.energy.length ? this.energy[this.energy.length - 1] : null;
    const rows = [
      ["parameters (total / active per token)", p ? `${fmtCount(p.total)} / ${fmtCount(p.active_per_token)}` : "–"],
      ["download (this visit / files)", this.loaded ? `${fmtBytes(this.loaded.downloaded)} / ${fmtBytes(fileBytes)}` : (this.downloadLabel || "–")],
      ["load time", this.loaded ? fmtMs(this.loaded.load_ms) : "–"],
      ["prefill", this.prefillMs == null ? "–" : `${fmtMs(this.prefillMs)} (${this.context - this.generated} tokens)`],
      ["latency per token p50 / p95", this.times.length ? `${fmtMs(quantile(this.times, 0.5))} / ${fmtMs(quantile(this.times, 0.95))}` : "–"],
      ["tokens / s", mean ? (1000 / mean).toFixed(1) : "–"],
      ["state memory at context", this.context ? `${fmtBytes(this.stateBytes)} at ${this.context} tokens` : "–"],
      ["energy per token (estimate)", energy == null ? "–" : `${(energy * 1000).toFixed(1)} µJ`],
    ];
    this.el("metrics").innerHTML = rows
      .map(([k, v], i) => `<tr data-metric="${i}"><td>${esc(k)}</td><td>${esc(v)}</td></tr>`)
      .join("");
  }
}

let views = [];
const anyBusy = () => views.some((v) => v.busy);

function updateButtons() {
  const allReady = views.length > 0 && views.every((v) => v.ready);
  $("generate").disabled = !allReady || anyBusy();
  $("bench").disabled = !allReady || anyBusy();
  $("qa-ask").disabled = !allReady || anyBusy();
  $("stop").disabled = !anyBusy();
  // The switch needs a model that is on the GPU too.
  $("backend-choice").disabled = !allReady || anyBusy() || !views.some((v) => v.backend?.gpu_available);
  // Another pair can be chosen while the models load, not while they run a job.
  $("pair-choice").disabled = pairs.length < 2 || anyBusy();
}

// The header's badge: where each model runs.
function renderBackendSummary() {
  const labels = views.map((v) => v.backendLabel);
  $("backend").textContent = labels.every((l) => l === labels[0])
    ? `backend: ${labels[0]}`
    : `backend: ${views.map((v) => `${v.spec.key} ${v.backendLabel}`).join(", ")}`;
  const gpu = views.some((v) => v.backend?.kind === "webgpu");
  $("backend-choice").value = gpu ? "webgpu" : "cpu";
}

// Both models to the chosen backend (between jobs); each worker answers with a `backend` message.
$("backend-choice").addEventListener("change", async () => {
  const choice = $("backend-choice").value;
  backendChoice = choice; // a pair chosen later starts there too
  await Promise.all(views.map((v) => {
    const answered = v.next(["backend"]);
    v.backendChoice = choice;
    v.send({ type: "set_backend", backend: choice });
    return answered.catch((e) => console.warn(e.message));
  }));
  updateButtons();
});

function settings() {
  const num = (id, lo, hi, int) => {
    const raw = $(id).value;
    let v = Number(raw);
    if (!isFinite(v) || raw.trim() === "") v = lo;
    v = Math.min(hi, Math.max(lo, v));
    if (int) v = Math.round(v);
    if (String(v) !== raw) $(id).value = v; // what is used is what the field shows
    return v;
  };
  return {
    max_tokens: num("max-tokens", 1, 2000, true),
    temperature: num("temperature", 0, 5, false),
    top_k: num("top-k", 0, 5000, true),
    top_p: num("top-p", 0.01, 1, false),
    seed: num("seed", 0, Number.MAX_SAFE_INTEGER, true),
  };
}

// ---------------------------------------------------------------------------------------------
// Generate, side by side

// `perView(v)`: fields of the generate message that differ per model (retrieval).
async function runBoth(prompt, s, onEach, perView = () => ({})) {
  await Promise.all(views.map(async (v) => {
    v.busy = true;
    v.resetRun();
    updateButtons();
    const done = v.next(["done"]);
    v.onToken = (m) => onEach(v, m);
    v.send({ type: "generate", prompt, ...s, ...perView(v) });
    try {
      await done;
    } finally {
      v.busy = false;
      v.onToken = null;
      v.onRetrieved = null;
      v.renderMetrics();
      updateButtons();
    }
  }));
}

// Retrieved documents as a list: score (cosine of the int8 vectors), then the text.
function docsHtml(docs) {
  return `<ol class="docs">${docs.map((d) => `<li data-doc="${d.doc}"><span class="score" title="retrieval score (cosine similarity)">${d.score.toFixed(3)}</span> ${esc(d.text)}</li>`).join("")}</ol>`;
}

// A prompt as the output shows it: long ones by their end.
const PROMPT_SHOWN = 4000;
function promptHtml(prompt) {
  if (prompt.length <= PROMPT_SHOWN) return `<span class="prompt">${esc(prompt)}</span>`;
  return `<span class="prompt"><span class="hint">[${prompt.length.toLocaleString("en")} characters; the last ${PROMPT_SHOWN.toLocaleString("en")}:]</span> …${esc(prompt.slice(-PROMPT_SHOWN))}</span>`;
}

// The text of an input, well-formed; says on the page when characters had to be replaced.
function inputText(id) {
  const raw = $(id).value;
  const text = wellFormed(raw);
  const replaced = (raw.match(LONE_SURROGATE) || []).length;
  $("input-note").textContent = replaced
    ? `${replaced} invalid character${replaced > 1 ? "s" : ""} (lone UTF-16 surrogates) in the ${id === "prompt" ? "prompt" : "question"} replaced with U+FFFD.` : "";
  return text;
}

$("generate").addEventListener("click", async () => {
  const prompt = inputText("prompt");
  const useRetrieval = $("use-retrieval").checked;
  for (const v of views) {
    const box = v.el("retrieved");
    box.hidden = !useRetrieval;
    box.innerHTML = useRetrieval && !v.canRetrieve
      ? `<p class="na">${esc(v.noRetrieval)}: the prompt goes to the model as it is.</p>` : "";
    v.el("output").innerHTML = promptHtml(prompt);
    // With retrieval the model reads documents + question: show exactly that as the prompt.
    v.onRetrieved = (m) => {
      box.innerHTML = `<p class="who">retrieved for the question (search ${fmtQueryMs(m.query_ms)}):</p>${docsHtml(m.documents)}`;
      v.el("output").innerHTML = promptHtml(m.prompt);
    };
  }
  try {
    await runBoth(prompt, { ...settings(), stop_at_newline: false }, (v, m) => {
      const out = v.el("output");
      out.appendChild(document.createTextNode(m.text));
      out.scrollTop = out.scrollHeight;
    }, (v) => ({ retrieval: useRetrieval && v.canRetrieve }));
  } catch (e) {
    console.warn(e.message);
  }
});

$("stop").addEventListener("click", () => views.forEach((v) => v.busy && v.send({ type: "abort" })));

// ---------------------------------------------------------------------------------------------
// Latency vs context: one model at a time, so they do not share the CPU while measured.

$("bench").addEventListener("click", async () => {
  // Points of the other backend stay: switch backends and measure again to compare them.
  for (const v of views) v.bench = v.bench.filter((p) => p.backend !== v.backend?.kind);
  drawLatency();
  for (const v of views) {
    v.busy = true;
    updateButtons();
    try {
      const done = v.next(["done"]);
      v.send({ type: "bench", contexts: BENCH_CONTEXTS, steps: BENCH_STEPS });
      await done;
    } catch (e) {
      console.warn(e.message);
    } finally {
      v.busy = false;
      updateButtons();
    }
  }
});

function svgEl(w, h, body) {
  return `<svg viewBox="0 0 ${w} ${h}" role="img" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">${body}</svg>`;
}

function drawLatency() {
  const pts = views.flatMap((v) => v.bench.map((b) => ({ ...b, key: v.spec.key })));
  if (!pts.length) return;
  const W = 460, H = 260, L = 52, R = 12, T = 12, B = 36;
  const xs = BENCH_CONTEXTS.map(Math.log2);
  const x = (c) => L + ((Math.log2(c) - xs[0]) / (xs[xs.length - 1] - xs[0])) * (W - L - R);
  // Prefill as milliseconds per prompt token (its wall time over its tokens), beside decode's.
  const perToken = (p) => (p.prefill_tokens > 0 ? p.prefill_ms / p.prefill_tokens : null);
  const ymax = Math.max(...pts.map((p) => Math.max(p.p95_ms, perToken(p) ?? 0))) * 1.1 || 1;
  const y = (ms) => H - B - (ms / ymax) * (H - T - B);
  let body = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>`;
  for (const c of BENCH_CONTEXTS) body += `<text x="${x(c)}" y="${H - B + 14}" text-anchor="middle">${c}</text>`;
  body += `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">context (tokens, log scale)</text>`;
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    body += `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(v < 10 ? 1 : 0)}</text>`;
  }
  body += `<text transform="translate(12 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">ms / token</text>`;
  // One curve per model and backend: solid on the GPU (WebGPU), dashed on the CPU; prefill per
  // prompt token dotted, with hollow points.
  let legend = 0;
  for (const v of views) {
    for (const backend of ["webgpu", "cpu"]) {
      const ps = v.bench.filter((p) => p.backend === backend);
      if (!ps.length) continue;
      const col = COLORS[v.spec.key];
      const dash = backend === "cpu" ? ` stroke-dasharray="5 3"` : "";
      const name = `${v.spec.title}, ${backend === "webgpu" ? "WebGPU" : "CPU"}`;
      body += `<polyline fill="none" stroke="${col}" stroke-width="2"${dash} data-backend="${backend}" points="${ps.map((p) => `${x(p.context)},${y(p.median_ms)}`).join(" ")}"/>`;
      for (const p of ps) {
        body += `<line x1="${x(p.context)}" x2="${x(p.context)}" y1="${y(p.median_ms)}" y2="${y(p.p95_ms)}" stroke="${col}" opacity=".5"/>`;
        body += `<circle cx="${x(p.context)}" cy="${y(p.median_ms)}" r="3" fill="${col}" data-model="${v.spec.key}" data-backend="${backend}" data-context="${p.context}" data-median="${p.median_ms}"><title>${esc(name)} at ${p.context}: median ${fmtMs(p.median_ms)}, p95 ${fmtMs(p.p95_ms)}, mean ${fmtMs(p.mean_ms || 0)}, state ${fmtBytes(p.state_bytes)}</title></circle>`;
      }
      body += `<text x="${L + 8}" y="${T + 12 + 14 * legend++}" fill="${col}">${esc(name)}</text>`;
      const pre = ps.filter((p) => perToken(p) != null);
      if (!pre.length) continue;
      body += `<polyline fill="none" stroke="${col}" stroke-width="1.5" stroke-dasharray="1 3" data-prefill-line="${backend}" points="${pre.map((p) => `${x(p.context)},${y(perToken(p))}`).join(" ")}"/>`;
      for (const p of pre) {
        body += `<circle cx="${x(p.context)}" cy="${y(perToken(p))}" r="2.5" fill="white" stroke="${col}" data-model="${v.spec.key}" data-backend="${backend}" data-context="${p.context}" data-prefill="${perToken(p)}"><title>${esc(name)}: a prompt of ${p.prefill_tokens} tokens read in ${fmtMs(p.prefill_ms)}, ${fmtMs(perToken(p))} a token</title></circle>`;
      }
    }
  }
  $("latency-chart").innerHTML = svgEl(W, H, body);
  drawEfficiency();
  drawPrefill();
}

// Each model's prompt reading (prefill) speed per backend, at the shortest and longest context
// measured: tokens per second of the batched forward.
function drawPrefill() {
  const parts = [];
  for (const v of views) {
    for (const backend of ["webgpu", "cpu"]) {
      const ps = v.bench.filter((p) => p.backend === backend && p.prefill_tokens > 0 && p.prefill_ms > 0)
        .sort((a, b) => a.context - b.context);
      if (!ps.length) continue;
      const at = (p) => `${Math.round((1000 * p.prefill_tokens) / p.prefill_ms)} tokens/s (${p.prefill_tokens} tokens)`;
      parts.push(`<span data-prefill-speed="${v.spec.key}" data-backend="${backend}">${esc(v.spec.title)}, ${backend === "webgpu" ? "WebGPU" : "CPU"}: ${ps.length > 1 ? `${at(ps[0])} … ${at(ps.at(-1))}` : at(ps[0])}</span>`);
    }
  }
  $("prefill-speed").innerHTML = parts.length ? `Prompt reading (prefill, dotted): ${parts.join("; ")}.` : "";
}

// Each model's CPU decode step against the GEMV peak (the best rate any worker measured: the
// browser swaps in optimised wasm while it runs, so an early measurement can be low), at the
// shortest and longest context.
function drawEfficiency() {
  const peak = Math.max(0, ...views.map((v) => v.peak?.gflops || 0));
  const parts = [];
  for (const v of views) {
    const ps = v.bench.filter((p) => p.backend === "cpu" && p.gflops > 0).sort((a, b) => a.context - b.context);
    if (!ps.length || !peak) continue;
    const at = (p) => `${p.gflops.toFixed(2)} GFLOP/s at ${p.context} (${(100 * p.gflops / peak).toFixed(0)}%)`;
    parts.push(`<span data-efficiency="${v.spec.key}">${esc(v.spec.title)}: ${ps.length > 1 ? `${at(ps[0])} … ${at(ps.at(-1))}` : at(ps[0])}</span>`);
  }
  $("decode-efficiency").innerHTML = parts.length
    ? `CPU decode, FLOPs per step over its mean time, against a GEMV peak of <b data-peak>${peak.toFixed(2)} GFLOP/s</b> (one thread): ${parts.join("; ")}.` : "";
}

function drawSizes() {
  const ready = views.filter((v) => v.manifest);
  if (!ready.length) return;
  const W = 460, H = 200, L = 150, R = 70, rowH = 22;
  const rows = [];
  for (const v of ready) {
    const m = v.manifest;
    rows.push({ label: `${v.spec.key}: params`, value: m.params.total, text: fmtCount(m.params.total), key: v.spec.key, group: "p" });
    rows.push({ label: `${v.spec.key}: active/token`, value: m.params.active_per_token, text: fmtCount(m.params.active_per_token), key: v.spec.key, group: "p" });
    const bytes = m.files.reduce((a, f) => a + f.bytes, 0);
    rows.push({ label: `${v.spec.key}: download`, value: bytes, text: fmtBytes(bytes), key: v.spec.key, group: "b" });
    // The weights in each format `native-trainer quantize` writes (measured at export).
    for (const [fmt, b] of Object.entries(m.weight_bytes || {})) {
      rows.push({ label: `${v.spec.key}: weights ${fmt}`, value: b, text: fmtBytes(b), key: v.spec.key, group: "b" });
    }
  }
  const max = { p: Math.max(...rows.filter((r) => r.group === "p").map((r) => r.value)), b: Math.max(...rows.filter((r) => r.group === "b").map((r) => r.value)) };
  let body = "";
  rows.forEach((r, i) => {
    const yy = 10 + i * rowH;
    const w = ((W - L - R) * r.value) / (max[r.group] || 1);
    body += `<text x="${L - 6}" y="${yy + 12}" text-anchor="end">${esc(r.label)}</text>`;
    body += `<rect x="${L}" y="${yy}" width="${w}" height="${rowH - 6}" fill="${COLORS[r.key]}" opacity="${r.group === "b" ? 0.55 : 0.9}"/>`;
    body += `<text x="${L + w + 4}" y="${yy + 12}">${esc(r.text)}</text>`;
  });
  $("size-chart").innerHTML = svgEl(W, Math.max(H, 20 + rows.length * rowH), body);
}

// Decoding-state bytes against context, from itera-model's own formulas: the page's main-thread
// wasm (src/bin/app.rs) exposes them as wasmBindings.analytic; the config is a small JSON file.
const STATE_CONTEXTS = [16, 64, 256, 1024, 4096, 16384];
const analytic = {};
let stateChart = Promise.resolve(); // draws one after another

async function wasmBindings() {
  if (window.wasmBindings) return window.wasmBindings;
  await new Promise((resolve) => window.addEventListener("TrunkApplicationStarted", resolve, { once: true }));
  return window.wasmBindings;
}

async function drawState() {
  const pairNow = pairGeneration;
  for (const v of views.filter((v) => v.manifest && !analytic[v.spec.key])) {
    const config = await (await fetch(`${v.spec.base}config.json`)).text();
    const points = JSON.parse((await wasmBindings()).analytic(config, STATE_CONTEXTS));
    if (pairNow !== pairGeneration) return; // another pair was chosen meanwhile
    analytic[v.spec.key] = points;
  }
  const keys = Object.keys(analytic);
  if (!keys.length) return;
  const W = 460, H = 240, L = 62, R = 12, T = 12, B = 36;
  const all = keys.flatMap((k) => analytic[k].points.map((p) => p.state_bytes));
  const [lo, hi] = [Math.log10(Math.min(...all)), Math.log10(Math.max(...all))];
  const x = (c) => L + (Math.log2(c / STATE_CONTEXTS[0]) / Math.log2(STATE_CONTEXTS.at(-1) / STATE_CONTEXTS[0])) * (W - L - R);
  const y = (b) => H - B - ((Math.log10(b) - lo) / Math.max(hi - lo, 1e-9)) * (H - T - B);
  let body = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/>`;
  for (const c of STATE_CONTEXTS) body += `<text x="${x(c)}" y="${H - B + 14}" text-anchor="middle">${c}</text>`;
  body += `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">context (tokens, log scale)</text>`;
  // ticks at powers of 16 bytes: 1 KiB, 16 KiB, 256 KiB, 4 MiB, ...
  for (let e = Math.ceil(lo / Math.log10(16)); 16 ** e <= 10 ** hi; e++) {
    if (16 ** e >= 10 ** lo) body += `<text x="${L - 6}" y="${y(16 ** e) + 4}" text-anchor="end">${fmtBytes(16 ** e)}</text>`;
  }
  keys.forEach((k, i) => {
    const pts = analytic[k].points;
    body += `<polyline fill="none" stroke="${COLORS[k]}" stroke-width="2" points="${pts.map((p) => `${x(p.context)},${y(p.state_bytes)}`).join(" ")}"/>`;
    body += `<text x="${L + 8}" y="${T + 12 + 14 * i}" fill="${COLORS[k]}">${esc(k)}: ${fmtBytes(pts.at(-1).state_bytes)} at ${STATE_CONTEXTS.at(-1)}</text>`;
  });
  $("state-chart").innerHTML = svgEl(W, H, body);
}

// ---------------------------------------------------------------------------------------------
// World QA: each model answers greedily (the trainer's evaluation: one line, at most 24 tokens),
// once with the documents its index returns placed before the question and once without.

function addQaExamples(manifest) {
  const box = $("qa-examples");
  const ev = manifest?.eval;
  // Held-out: people the models read biographies of, never asked about. Unseen (retrieval
  // exports): people never trained on at all; only the index knows them.
  const sets = [[ev?.world_qa?.examples, false], [ev?.retrieval?.heldout?.examples, false], [ev?.retrieval?.unseen?.examples, true]];
  for (const [examples, unseen] of sets) {
    for (const ex of examples || []) {
      if ([...box.children].some((b) => b.dataset.question === ex.question)) continue;
      const b = document.createElement("button");
      b.textContent = ex.question;
      b.dataset.question = ex.question;
      b.dataset.expected = ex.expected;
      if (unseen) {
        b.classList.add("unseen");
        b.dataset.unseen = "";
        b.title = "about a person the models never trained on: only the retrieval index has the answer";
      }
      b.addEventListener("click", () => {
        $("qa-question").value = ex.question;
        $("qa-question").dataset.expected = ex.expected;
      });
      box.appendChild(b);
    }
  }
}

$("qa-question").addEventListener("input", () => delete $("qa-question").dataset.expected);

// One answer cell: pending, not applicable (no index), an error, or the answer with its cost.
function answerCell(v, slot, r, expected) {
  const attrs = `data-answer="${v.spec.key}" data-retrieval="${slot}"`;
  if (r === undefined) return `<td ${attrs} class="pending">…</td>`;
  if (r.na) return `<td ${attrs} class="na" title="${esc(r.na)}">no retrieval</td>`;
  if (r.error) return `<td ${attrs} class="wrong">error: ${esc(r.error)}</td>`;
  const text = r.answer === "" ? `<span class="empty">(empty)</span>` : esc(r.answer);
  const mark = !expected || r.reason === "aborted" ? ""
    : r.answer === expected ? ` <span class="right">✓</span>` : ` <span class="wrong">✗</span>`;
  const note = r.reason === "aborted" ? " (stopped)" : "";
  return `<td ${attrs}><span class="answer">${text}</span>${mark}${note}<small>${r.prompt_tokens} prompt tokens · ${fmtMs(r.ms)}</small></td>`;
}

function renderQa(question, expected, results) {
  const rows = views.map((v) => {
    const r = results[v.spec.key];
    return `<tr><td>${esc(v.spec.title)}</td>${answerCell(v, "on", r.on, expected)}${answerCell(v, "off", r.off, expected)}</tr>`;
  }).join("");
  // The documents each model read; one list when both indexes returned the same.
  const groups = new Map();
  for (const v of views) {
    const r = results[v.spec.key].on;
    if (!r || r.na || r.error) continue;
    const key = JSON.stringify(r.documents.map((d) => [d.doc, d.score, d.text]));
    if (!groups.has(key)) groups.set(key, { docs: r.documents, who: [] });
    groups.get(key).who.push(`${v.spec.title}: search ${fmtQueryMs(r.query_ms)}`);
  }
  let docs = [...groups.values()].map((g) =>
    `<div class="docs-group" data-docs><p class="who">${g.who.map(esc).join(" · ")}</p>${docsHtml(g.docs)}</div>`).join("");
  for (const v of views.filter((v) => results[v.spec.key].on?.na)) {
    docs += `<p class="na" data-no-retrieval="${v.spec.key}">${esc(v.spec.title)}: ${esc(v.noRetrieval)}; answered without retrieval only.</p>`;
  }
  $("qa-answers").innerHTML = `
    <p class="question">${esc(question)}${expected ? ` <span class="expected">expected: <b data-expected>${esc(expected)}</b></span>` : ""}</p>
    <table class="qa"><thead><tr><th>model</th><th>with retrieval</th><th>without retrieval</th></tr></thead><tbody>${rows}</tbody></table>
    <h3>Retrieved documents <span class="hint">(best first; score = cosine similarity)</span></h3>${docs || `<p class="hint">…</p>`}`;
}

$("qa-ask").addEventListener("click", async () => {
  const q = inputText("qa-question").trim();
  if (!q) return;
  const expected = $("qa-question").dataset.expected;
  const results = Object.fromEntries(views.map((v) => [v.spec.key, {}]));
  const render = () => renderQa(q, expected, results);
  render();
  await Promise.all(views.map(async (v) => {
    v.busy = true;
    updateButtons();
    try {
      for (const [slot, retrieval] of [["on", true], ["off", false]]) {
        const r = results[v.spec.key];
        if (retrieval && !v.canRetrieve) {
          r.on = { na: v.noRetrieval };
          render();
          continue;
        }
        const answer = v.next(["answer"]);
        v.send({ type: "answer", question: q, retrieval });
        try {
          r[slot] = await answer;
        } catch (e) {
          r[slot] = { error: e.message };
        }
        render();
        if (r[slot].reason === "aborted") break;
      }
    } finally {
      v.busy = false;
      updateButtons();
    }
  }));
  render();
});

// ---------------------------------------------------------------------------------------------
// Model pairs: the models index, the selector, switching.

let pairs = [];
let pair = null;
let pairGeneration = 0; // bumped by every switch: work for an earlier pair is dropped
let backendChoice = null; // the backend switch's last choice (null: the worker's own)
const pairNotices = { index: [], choice: "" };

// The index as the page can use it, and what is wrong with it (each problem in words).
async function loadIndex() {
  const fallback = (problem) => ({ pairs: [FALLBACK_PAIR], problems: [problem] });
  let res;
  try {
    res = await fetch(PAIRS_URL, { cache: "no-cache" });
  } catch (e) {
    return fallback(`it could not be read (${e.message})`);
  }
  if (!res.ok) return fallback(`it is missing (HTTP ${res.status})`);
  let index;
  try {
    index = JSON.parse(await res.text());
  } catch (e) {
    return fallback(`it is not valid JSON (${e.message})`);
  }
  if (!Array.isArray(index?.pairs)) return fallback(`it has no "pairs" list`);
  const list = [], problems = [];
  index.pairs.forEach((p, i) => {
    const why = pairProblem(p, list);
    if (!why) {
      list.push({ id: p.id, label: p.label, description: p.description || "", "baseline": p.baseline, "itera-lite": p["itera-lite"] });
      return;
    }
    problems.push(`pair ${i + 1}${typeof p?.id === "string" ? ` ("${p.id}")` : ""} is left out: ${why}`);
  });
  if (!list.length) return fallback(`it lists no usable pair${problems.length ? ` (${problems.join("; ")})` : ""}`);
  return { pairs: list, problems };
}

function pairProblem(p, earlier) {
  if (!p || typeof p !== "object" || Array.isArray(p)) return "it is not an object";
  if (typeof p.id !== "string" || !PAIR_ID.test(p.id)) return `its "id" must be lower-case letters, digits, "-" or "_"`;
  if (earlier.some((q) => q.id === p.id)) return "its id is listed twice";
  if (typeof p.label !== "string" || !p.label.trim()) return `it has no "label"`;
  if (p.description != null && typeof p.description !== "string") return `its "description" is not text`;
  for (const { key } of MODELS) {
    const f = p[key];
    if (typeof f !== "string" || !PAIR_FOLDER.test(f) || f.split("/").includes("..")) return `its "${key}" must be a folder under models/`;
  }
  return null;
}

// Why a pair's models cannot be loaded (a manifest missing), or null. Asked before the workers
// start on a pair other than the default, so a broken entry falls back instead of two errors.
async function pairMissing(p) {
  for (const { key } of MODELS) {
    const url = `models/${p[key]}/manifest.json`;
    try {
      const res = await fetch(url, { method: "HEAD", cache: "no-store" });
      if (!res.ok) return `${url} is missing (HTTP ${res.status})`;
    } catch (e) {
      return `${url} could not be read (${e.message})`;
    }
  }
  return null;
}

function renderPairNotice() {
  const all = [...pairNotices.index, pairNotices.choice].filter(Boolean);
  const el = $("pair-notice");
  el.textContent = all.join(" ");
  el.hidden = !all.length;
}

// Stops the current pair's workers, clears what was measured of them, and starts `p`'s (or the
// default pair's, with a notice, when `p`'s models are missing). `choice`: a notice about how `p`
// was chosen; `fromUser`: the selector chose it, so the address says it too (?pair=ID).
async function switchPair(p, choice = "", fromUser = false) {
  const mine = ++pairGeneration;
  if (p !== pairs[0]) {
    const missing = await pairMissing(p);
    if (mine !== pairGeneration) return;
    if (missing) {
      choice = `The pair "${p.id}" cannot be loaded: ${missing}. Showing the default pair, "${pairs[0].id}", instead.`;
      p = pairs[0];
    }
  }
  pair = p;
  for (const v of views) v.dispose();
  views = [];
  for (const k of Object.keys(analytic)) delete analytic[k];
  stateChart = Promise.resolve();
  $("latency-chart").innerHTML = `<p class="hint">Press “Latency vs context” to measure.</p>`;
  $("decode-efficiency").textContent = "";
  $("prefill-speed").textContent = "";
  $("size-chart").replaceChildren();
  $("state-chart").replaceChildren();
  $("qa-examples").replaceChildren();
  $("qa-answers").replaceChildren();
  $("backend").textContent = "backend: starting…";
  $("pair-choice").value = p.id;
  $("pair-description").textContent = p.description;
  document.body.dataset.pair = p.id;
  pairNotices.choice = choice;
  renderPairNotice();
  if (fromUser) {
    const url = new URL(location.href);
    url.searchParams.set("pair", p.id);
    history.replaceState(null, "", url);
  }
  views = MODELS.map((m) => new ModelView({ ...m, base: `models/${p[m.key]}/` }));
  updateButtons();
}

$("pair-choice").addEventListener("change", () => {
  const p = pairs.find((q) => q.id === $("pair-choice").value);
  if (p && p !== pair && !anyBusy()) switchPair(p, "", true);
});

async function start() {
  const index = await loadIndex();
  pairs = index.pairs;
  pairNotices.index = index.problems.length
    ? [`The models index (${PAIRS_URL}): ${index.problems.join("; ")}.${pairs[0] === FALLBACK_PAIR ? " Showing the default pair (models/baseline and models/itera-lite)." : ""}`] : [];
  $("pair-choice").replaceChildren(...pairs.map((p) => {
    const o = document.createElement("option");
    o.value = p.id;
    o.textContent = p.label;
    o.title = p.description;
    return o;
  }));
  const wanted = new URLSearchParams(location.search).get("pair");
  let p = pairs[0], choice = "";
  if (wanted !== null && wanted !== p.id) {
    p = pairs.find((q) => q.id === wanted);
    if (!p && pairs[0] === FALLBACK_PAIR) {
      choice = `The address asks for the pair "${wanted}", which needs the models index.`;
      p = pairs[0];
    } else if (!p) {
      choice = `There is no pair "${wanted}" in the models index (it lists ${pairs.map((q) => `"${q.id}"`).join(", ")}); showing the default pair, "${pairs[0].id}".`;
      p = pairs[0];
    }
  }
  await switchPair(p, choice);
}

updateButtons();
start();
