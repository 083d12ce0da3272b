// End-to-end test of the built page in real headless Chromium (Debian's, driven by
// playwright-core; nothing is downloaded). Run by scripts/test.sh after `trunk build` with the
// tiny test models:   node tests/e2e/page.mjs DIST_DIR
//
// 1. The page loads both models (each with its retrieval index), generates 20 tokens with each,
//    and every metric shows a plausible value; the latency benchmark draws both curves; World QA
//    shows the retrieved documents with their scores and both models' answers with retrieval on
//    and off; free-form generation with "use retrieval" reads the retrieved documents; a reload
//    reads the models from the Cache API, where the index both models read is stored (and was
//    downloaded) once; the console has no errors; no request leaves the origin.
// 2. Served with a manifest whose sha256 does not match its file, the page shows a clear error
//    for that model instead of running it; a model whose manifest names no index says so.
// 3. Served with a damaged index (a sha256 mismatch for one model, a cut-off index.json for the
//    other), each model says what is wrong with its index and still generates and answers
//    without retrieval.
// 4. Hostile input: a prompt with lone UTF-16 surrogates, one of 1 MB, max tokens past the
//    context limit, Stop pressed over and over, a second Generate while one runs: each gets a
//    clear message and the page keeps working.
// 5. A model changed on the server between two visits is downloaded again (and cached anew);
//    without the Cache API (an insecure context, a private window) the page says so and works;
//    a worker that crashes is replaced, its model reloaded, and the card says what happened.
// 5b. The models index: the selector lists its pairs, another pair loads and generates, ?pair=ID
//    opens one; a wrong ?pair=, a missing or broken index, a pair whose models are missing: a
//    notice naming what is wrong, and the default pair.
// 6. In a Chromium with WebGPU (`--enable-unsafe-webgpu`: SwiftShader's adapter), both models
//    load onto the GPU and say so, generate there, switch to the CPU and generate again. (The
//    browser of 1-3 has no WebGPU: the models say they run on the CPU, and why.)

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { launch, serve } from "./serve.mjs";

const DIST = process.argv[2];
if (!DIST || !fs.existsSync(path.join(DIST, "index.html"))) {
  console.error(`usage: node tests/e2e/page.mjs DIST_DIR (a built page; ${DIST} has no index.html)`);
  process.exit(2);
}
const failures = [];
function check(ok, what) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures.push(what);
}

async function openPage(browser, origin) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = { console: [], foreign: [], requests: [] };
  page.on("request", (r) => problems.requests.push(r.url()));
  page.on("console", (m) => m.type() === "error" && problems.console.push(m.text()));
  if (process.env.E2E_VERBOSE) page.on("console", (m) => console.log(`  [console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => problems.console.push(String(e)));
  page.on("request", (r) => !r.url().startsWith(origin) && !r.url().startsWith("data:") && !r.url().startsWith("blob:") && problems.foreign.push(r.url()));
  await page.goto(origin + "/");
  return { context, page, problems };
}

const metric = (page, model, i) => page.$eval(`.card[data-model="${model}"] tr[data-metric="${i}"] td:last-child`, (e) => e.textContent);

async function happyPath(browser) {
  const server = await serve(DIST);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page, problems } = await openPage(browser, origin);
  try {
    const bothReady = () => {
      const cards = [...document.querySelectorAll(".card")];
      return cards.length === 2 && cards.every((c) => c.dataset.status === "ready");
    };
    await page.waitForFunction(bothReady, null, { timeout: 180_000 });
    check(true, "both models load");
    // Both test models read the same index (the same bytes): one worker downloads each of its
    // files, the other waits for it and reads the cached copy.
    const indexFiles = problems.requests.filter((u) => /\/models\/[^/]+\/index\//.test(u)).map((u) => u.replace(/.*\/index\//, ""));
    check(indexFiles.length >= 5 && new Set(indexFiles).size === indexFiles.length, `the index both models read is downloaded once (${indexFiles.length} requests: ${indexFiles.join(", ")})`);
    check((await page.textContent("#backend")).includes("CPU"), "the backend badge names the CPU backend");
    for (const model of ["baseline", "itera-lite"]) {
      const kind = await page.$eval(`.card[data-model="${model}"] [data-role=backend]`, (e) => e.dataset.kind);
      const notice = await page.textContent(`.card[data-model="${model}"] [data-role=notice]`);
      check(kind === "cpu" && /adapter/i.test(notice) && /CPU/.test(notice), `${model}: without WebGPU it runs on the CPU and says why (${notice})`);
    }
    check(await page.$eval("#backend-choice", (e) => e.disabled), "the backend switch is off when no model is on the GPU");
    for (const model of ["baseline", "itera-lite"]) {
      const r = await page.$eval(`.card[data-model="${model}"] [data-role=retrieval]`, (e) => [e.dataset.state, e.textContent]);
      check(r[0] === "ready" && /\d+ documents/.test(r[1]), `${model}: its retrieval index is loaded (${r[1]})`);
    }

    await page.fill("#max-tokens", "20");
    await page.fill("#temperature", "0.7");
    await page.click("#generate");
    await page.waitForFunction(() => !document.querySelector("#generate").disabled && [...document.querySelectorAll(".card")].every((c) => c.dataset.status === "done"), null, { timeout: 120_000 });
    for (const model of ["baseline", "itera-lite"]) {
      const out = await page.textContent(`.card[data-model="${model}"] .output`);
      check(out.length > (await page.inputValue("#prompt")).length, `${model}: generated text appears after the prompt`);
      const m = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => metric(page, model, i)));
      check(/\d/.test(m[0]) && m[0].includes("/"), `${model}: parameters shown (${m[0]})`);
      check(/(KiB|MiB|B) \/ /.test(m[1]), `${model}: bytes downloaded shown (${m[1]})`);
      check(/ms$/.test(m[2]), `${model}: load time shown (${m[2]})`);
      check(/ms \(\d+ tokens\)/.test(m[3]), `${model}: prefill time shown (${m[3]})`);
      const [p50, p95] = m[4].split(" / ").map(parseFloat);
      // A step of the tiny test models can be shorter than the browser's timer resolution
      // (0.1 ms): p50 may read 0.
      check(p50 >= 0 && p95 >= p50 && p95 < 10_000, `${model}: latency p50 ≤ p95, both plausible (${m[4]})`);
      check(parseFloat(m[5]) > 0, `${model}: tokens/s shown (${m[5]})`);
      check(/at (\d+) tokens/.test(m[6]) && Number(m[6].match(/at (\d+) tokens/)[1]) >= 20, `${model}: state memory at the context reached (${m[6]})`);
      check(/µJ$/.test(m[7]) && parseFloat(m[7]) > 0, `${model}: energy estimate shown (${m[7]})`);
    }
    check((await page.textContent("#energy-formula")).includes("Horowitz"), "the energy formula and its source are shown");
    // per model: params, active, download, and the weights in f32, f16, q8_0, q4_0
    check((await page.$$("#size-chart rect")).length === 14, "the size chart has both models' bars, each weight format too");
    check((await page.textContent("#size-chart")).includes("weights q4_0"), "the size chart names the 4-bit weights");
    await page.waitForFunction(() => document.querySelectorAll("#state-chart polyline").length === 2, null, { timeout: 30_000 });
    check(true, "the analytic state-memory chart (main-thread wasm) has both models' curves");

    // Stop: a long generation is aborted by the button, in both workers. (Greedy: the tiny test
    // models repeat one token and never reach end-of-text on this prompt.)
    await page.fill("#max-tokens", "2000");
    await page.fill("#temperature", "0");
    // Both clicks in one task: the tiny models write 2000 tokens in well under a second.
    await page.evaluate(() => {
      document.querySelector("#generate").click();
      document.querySelector("#stop").click();
    });
    await page.waitForFunction(() => [...document.querySelectorAll(".card")].every((c) => c.dataset.status === "aborted"), null, { timeout: 30_000 });
    check(await page.isEnabled("#generate"), "Stop aborts both generations and the page is ready again");

    await page.click("#bench");
    await page.waitForFunction(() => document.querySelectorAll("#latency-chart circle[data-median]").length === 8, null, { timeout: 300_000 });
    check(true, "latency vs context: 4 points for each model");
    const prefill = await page.$$eval("#latency-chart circle[data-prefill]", (cs) => cs.map((c) => [c.dataset.model, Number(c.dataset.context), Number(c.dataset.prefill)]));
    check(prefill.length === 8 && prefill.every(([, , ms]) => ms > 0 && Number.isFinite(ms)),
      `prefill per prompt token beside each decode point (${prefill.map(([m, c, ms]) => `${m}@${c} ${ms.toFixed(3)} ms`).join(", ")})`);
    const pre = await page.$$eval("#prefill-speed [data-prefill-speed]", (es) => es.map((e) => e.textContent));
    check(pre.length === 2 && pre.every((t) => /CPU: \d+ tokens\/s \(\d+ tokens\) … \d+ tokens\/s \(\d+ tokens\)$/.test(t)),
      `prompt reading speed per model is shown (${pre.join("; ")})`);
    const eff = await page.$$eval("#decode-efficiency [data-efficiency]", (es) => es.map((e) => e.textContent));
    const peak = await page.textContent("#decode-efficiency [data-peak]").catch(() => "");
    check(/^[\d.]+ GFLOP\/s$/.test(peak) && eff.length === 2 && eff.every((t) => /[\d.]+ GFLOP\/s at 64 \(\d+%\) … [\d.]+ GFLOP\/s at 4096 \(\d+%\)$/.test(t)),
      `the decode step's FLOP rate against the GEMV peak is shown (peak ${peak}: ${eff.join("; ")})`);

    const examples = await page.$$("#qa-examples button");
    check(examples.length > 0, "World QA offers example questions from the manifests");
    const unseen = await page.$("#qa-examples button[data-unseen]");
    check(unseen !== null, "World QA offers questions about people only the index knows (unseen)");
    if (examples.length) {
      await (unseen || examples[0]).click();
      const question = await page.inputValue("#qa-question");
      await askQa(page);
      for (const model of ["baseline", "itera-lite"]) {
        for (const slot of ["on", "off"]) {
          const cell = await page.$eval(`td[data-answer="${model}"][data-retrieval="${slot}"]`, (td) => [td.className, td.textContent]);
          check(cell[0] === "" && /prompt tokens/.test(cell[1]), `World QA: ${model} answers with retrieval ${slot} (${cell[1].trim()})`);
        }
      }
      const docs = await page.$$eval("#qa-answers [data-docs] ol.docs li", (lis) => lis.map((li) => li.textContent));
      check(docs.length > 0 && docs.every((d) => /^\d\.\d{3} \S/.test(d)), `World QA shows the retrieved documents with their scores (${(docs[0] || "").slice(0, 70)}…)`);
      const who = await page.$$eval("#qa-answers [data-docs] .who", (ps) => ps.map((p) => p.textContent).join(" · "));
      check(["Transformer", "Itera-Lite"].every((t) => who.includes(t)) && /search (< )?\d+(\.\d+)? ms/.test(who), `World QA shows whose documents they are and the query time (${who})`);
      check((await page.$("#qa-answers [data-expected]")) !== null, "World QA shows the expected answer of an example question");
      check((await page.textContent("#qa-answers .question")).includes(question), "World QA repeats the question asked");

      // Free-form generation with "use retrieval": the question is read after the documents.
      await page.check("#use-retrieval");
      await page.fill("#prompt", question);
      await page.fill("#max-tokens", "8");
      await page.click("#generate");
      await page.waitForFunction(() => !document.querySelector("#generate").disabled && [...document.querySelectorAll(".card")].every((c) => c.dataset.status === "done"), null, { timeout: 120_000 });
      for (const model of ["baseline", "itera-lite"]) {
        const card = `.card[data-model="${model}"]`;
        const doc = await page.$eval(`${card} [data-role=retrieved] li`, (li) => li.textContent).catch(() => "");
        const prompt = await page.textContent(`${card} .output .prompt`);
        check(/^\d\.\d{3} /.test(doc) && prompt.includes(doc.slice(6, 40)) && prompt.endsWith(`Q: ${question}\nA:`),
          `${model}: "use retrieval" shows the documents and generates after documents + question`);
      }
      await page.uncheck("#use-retrieval");
    }

    await page.reload();
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    for (const model of ["baseline", "itera-lite"]) {
      check((await metric(page, model, 1)).startsWith("0 B /"), `${model}: a reload reads the model from the Cache API (${await metric(page, model, 1)})`);
    }
    check(problems.console.length === 0, `no console errors${problems.console.length ? ": " + problems.console.join(" | ") : ""}`);
    check(problems.foreign.length === 0, `no request leaves the origin${problems.foreign.length ? ": " + problems.foreign.join(", ") : ""}`);
  } finally {
    await context.close();
    server.close();
  }
}

// The page reads its models index before it makes the cards: two cards, both ready.
const bothReady = () => {
  const cards = [...document.querySelectorAll(".card")];
  return cards.length === 2 && cards.every((c) => c.dataset.status === "ready");
};
const cardStatus = (page, model) => page.$eval(`.card[data-model="${model}"] .status`, (e) => [e.parentElement.dataset.status, e.textContent]);

// Clicks Generate (or runs `click` in the page) and waits until no job runs and every card's
// status is one of `statuses`.
async function generateAndWait(page, statuses = ["done"], click = () => document.querySelector("#generate").click()) {
  await page.evaluate(click);
  await page.waitForFunction((st) => !document.querySelector("#generate").disabled
    && [...document.querySelectorAll(".card")].every((c) => st.includes(c.dataset.status)), statuses, { timeout: 120_000 });
}

async function hostileInput(browser) {
  const server = await serve(DIST);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page, problems } = await openPage(browser, origin);
  try {
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    await page.fill("#temperature", "0");

    // Lone surrogates (what a broken paste can leave), U+FFFD and an emoji.
    await page.fill("#max-tokens", "5");
    await page.$eval("#prompt", (e) => { e.value = "Ulara \uD800Askowin\uDC00 was born in \uFFFD🙂"; });
    await generateAndWait(page);
    const note = await page.textContent("#input-note");
    check(/^2 invalid characters .* replaced with U\+FFFD/.test(note), `a prompt with lone surrogates is sent with them replaced, and the page says so ("${note}")`);
    for (const model of ["baseline", "itera-lite"]) {
      const out = await page.textContent(`.card[data-model="${model}"] .output`);
      const [, status] = await cardStatus(page, model);
      check(out.startsWith("Ulara \uFFFDAskowin\uFFFD was born in \uFFFD🙂") && status.startsWith("done: "), `${model}: runs on the repaired prompt (${status}: ${JSON.stringify(out)})`);
    }

    // Max tokens past what the field allows and past the baseline's context (4096 tokens): the
    // field shows the 2000 used; a prompt of 3991 tokens leaves the baseline 105.
    await page.fill("#max-tokens", "99999");
    await page.fill("#prompt", "Ulara Askowin was born in Pimouth. ".repeat(190));
    await generateAndWait(page);
    check(await page.inputValue("#max-tokens") === "2000", "max tokens above the field's range is shown as the 2000 used");
    const [, limit] = await cardStatus(page, "baseline");
    check(limit === "done: reached the model's context limit (4096 tokens)", `the baseline stops at its context limit and says so ("${limit}")`);
    const [, lite] = await cardStatus(page, "itera-lite");
    check(/^done: (reached max tokens|the model ended the text)$/.test(lite) && Number((await metric(page, "itera-lite", 6)).match(/at (\d+) tokens/)[1]) > 4096,
      `Itera-Lite (no context limit) reads past 4096 tokens (${lite}; ${await metric(page, "itera-lite", 6)})`);

    // Stop pressed five times during a generation, then a new one runs to its end.
    await page.fill("#prompt", "Ulara Askowin was born in");
    await generateAndWait(page, ["aborted"], () => {
      document.querySelector("#generate").click();
      for (let i = 0; i < 5; i++) document.querySelector("#stop").click();
    });
    await page.fill("#max-tokens", "8");
    await generateAndWait(page);
    check(true, "Stop pressed five times aborts once; the next generation runs to its end");

    // A second Generate while one runs is not taken: one generation, one prompt shown.
    await generateAndWait(page, ["done"], () => {
      document.querySelector("#generate").click();
      document.querySelector("#generate").click();
      document.querySelector("#qa-ask").click();
    });
    const prompts = await page.$$eval(".card .output .prompt", (ps) => ps.length);
    check(prompts === 2, `a second Generate (and an Ask) while generating is not taken: one run per model (${prompts} prompts shown)`);

    // A 1 MB prompt (688K tokens): the baseline says it is too long and stays usable; Itera-Lite
    // reads it chunk by chunk, shows how far it got, and stops when asked.
    await page.$eval("#prompt", (e) => { e.value = "Ulara Askowin was born in Pimouth. ".repeat((1 << 20) / 35 + 1).slice(0, 1 << 20); });
    const t0 = Date.now();
    await page.click("#generate");
    await page.waitForFunction(() => document.querySelector('.card[data-model="baseline"]').dataset.status === "error", null, { timeout: 60_000 });
    const [, tooLong] = await cardStatus(page, "baseline");
    check(/the prompt is \d+ tokens; this model reads at most 4095/.test(tooLong), `a 1 MB prompt is too long for the baseline, by name ("${tooLong.slice(0, 120)}")`);
    await page.waitForFunction(() => /reading the prompt: \d+ of \d+ tokens/.test(document.querySelector('.card[data-model="itera-lite"] .status').textContent)
      || document.querySelector('.card[data-model="itera-lite"]').dataset.status === "done", null, { timeout: 60_000 });
    const [, reading] = await cardStatus(page, "itera-lite");
    await page.click("#stop");
    await page.waitForFunction(() => !document.querySelector("#generate").disabled, null, { timeout: 60_000 });
    const [after] = await cardStatus(page, "itera-lite");
    check(/reading the prompt: \d+ of \d+ tokens/.test(reading) && after === "aborted", `Itera-Lite reads a 1 MB prompt in chunks, shows its progress and stops when asked ("${reading}", then ${after}, ${Date.now() - t0} ms)`);
    check((await page.textContent('.card[data-model="itera-lite"] .output .prompt')).includes("1,048,576 characters"), "the output shows a 1 MB prompt by its end, with its length");
    await page.fill("#prompt", "Ulara Askowin was born in");
    await generateAndWait(page);
    check(true, "both models generate again after the 1 MB prompt");
    check(problems.console.length === 0, `no console errors${problems.console.length ? ": " + problems.console.join(" | ") : ""}`);
  } finally {
    await context.close();
    server.close();
  }
}

// The page's models changed on the server between two visits; then no Cache API; then a crash.
async function changedModel(browser) {
  let changed = false;
  const weights = fs.readFileSync(path.join(DIST, "models/itera-lite/model.safetensors"));
  const newer = Buffer.from(weights);
  newer[newer.length - 1] ^= 1; // the last weight, a little different
  const rewrite = {
    "/models/itera-lite/model.safetensors": (bytes) => (changed ? newer : bytes),
    "/models/itera-lite/manifest.json": (text) => {
      if (!changed) return text;
      const m = JSON.parse(text);
      m.files.find((f) => f.name === "model.safetensors").sha256 = crypto.createHash("sha256").update(newer).digest("hex");
      return JSON.stringify(m);
    },
  };
  const server = await serve(DIST, rewrite);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page, problems } = await openPage(browser, origin);
  try {
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    changed = true;
    await page.reload();
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    // web/page.js's fmtBytes
    const fmt = (b) => b >= 1 << 20 ? `${+(b / (1 << 20)).toFixed(2)} MiB` : b >= 1024 ? `${+(b / 1024).toFixed(1)} KiB` : `${b} B`;
    const lite = await metric(page, "itera-lite", 1);
    check(lite.startsWith(`${fmt(newer.length)} /`), `a model changed on the server is downloaded again (itera-lite: ${lite})`);
    check((await metric(page, "baseline", 1)).startsWith("0 B /"), "an unchanged model still comes from the cache");
    await page.fill("#max-tokens", "5");
    await generateAndWait(page);
    await page.reload();
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    check((await metric(page, "itera-lite", 1)).startsWith("0 B /"), "the changed model is cached in place of the old one");
    check(problems.console.length === 0, `no console errors${problems.console.length ? ": " + problems.console.join(" | ") : ""}`);
  } finally {
    await context.close();
    server.close();
  }
}

// Each worker without a Cache API: for the first, `caches` throws (an insecure context); for the
// second, opening a cache is refused (a private window).
async function noCacheApi(browser) {
  const variants = [
    `Object.defineProperty(self, "caches", { get() { throw new DOMException("The operation is insecure.", "SecurityError"); } });`,
    `CacheStorage.prototype.open = () => Promise.reject(new DOMException("caches are off in private windows", "SecurityError"));`,
  ];
  let n = 0;
  const server = await serve(DIST, { "/worker_loader.js": (js) => variants[n++ % 2] + "\n" + js });
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page, problems } = await openPage(browser, origin);
  try {
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    const notes = await page.$$eval(".card [data-role=notes]", (es) => es.map((e) => e.textContent));
    check(notes.length === 2 && notes.every((t) => /^Not cached: the Cache API is unavailable \(SecurityError: .+\); the model's files are downloaded on every visit\.$/.test(t))
      && notes.some((t) => t.includes("insecure")) && notes.some((t) => t.includes("private")), `without the Cache API each card says so: "${notes.join('" / "')}"`);
    await page.fill("#max-tokens", "5");
    await generateAndWait(page);
    check(true, "both models generate without the Cache API");
    await page.reload();
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    const again = await metric(page, "baseline", 1);
    check(!again.startsWith("0 B /"), `without the Cache API a reload downloads again (${again})`);
    check(problems.console.length === 0, `no console errors${problems.console.length ? ": " + problems.console.join(" | ") : ""}`);
  } finally {
    await context.close();
    server.close();
  }
}

// The first two workers started crash at their first generation (an exception thrown in place of
// the wasm's message handler); the page must start new ones, which do not.
async function workerCrash(browser) {
  const crashing = `
    let handler = null;
    Object.defineProperty(self, "onmessage", { get: () => handler, set: (f) => { handler = f; } });
    let crashed = false;
    self.addEventListener("message", (ev) => {
      if (!crashed && String(ev.data).includes('"type":"generate"')) {
        crashed = true;
        throw new Error("simulated crash of the model's worker");
      }
      if (handler) handler(ev);
    });
  `;
  let started = 0;
  const server = await serve(DIST, { "/worker_loader.js": (js) => (started++ < 2 ? crashing : "") + js });
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page, problems } = await openPage(browser, origin);
  try {
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    await page.fill("#max-tokens", "5");
    await page.click("#generate");
    await page.waitForFunction(() => [...document.querySelectorAll(".card [data-role=notes]")].every((e) => e.textContent.includes("crashed")), null, { timeout: 60_000 });
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    const notes = await page.$$eval(".card [data-role=notes]", (es) => es.map((e) => e.textContent));
    check(notes.every((t) => /^The worker crashed during a job \(.*simulated crash.*\) and was restarted; the model was loaded again\.$/.test(t)),
      `a crashed worker is replaced and its model reloaded; the card says so ("${notes[0]}")`);
    check(started === 4, `one new worker per crash (${started} started)`);
    await generateAndWait(page);
    check(true, "both models generate after their workers were replaced");
    check(problems.console.length === 0, `no console errors${problems.console.length ? ": " + problems.console.join(" | ") : ""}`);
  } finally {
    await context.close();
    server.close();
  }
}

// Clicks "Ask both" and waits until all four answers (or their errors) are in.
async function askQa(page) {
  await page.click("#qa-ask");
  await page.waitForFunction(() => !document.querySelector("#qa-ask").disabled
    && document.querySelectorAll("td[data-answer]:not(.pending)").length === 4, null, { timeout: 120_000 });
}

async function tamperedManifest(browser) {
  const rewrite = {
    "/models/baseline/manifest.json": (text) => {
      const m = JSON.parse(text);
      delete m.retrieval;
      return JSON.stringify(m);
    },
    "/models/itera-lite/manifest.json": (text) => {
      const m = JSON.parse(text);
      const f = m.files.find((f) => f.name === "model.safetensors");
      f.sha256 = (f.sha256[0] === "0" ? "1" : "0") + f.sha256.slice(1);
      return JSON.stringify(m);
    },
  };
  const server = await serve(DIST, rewrite);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page } = await openPage(browser, origin);
  try {
    await page.waitForFunction(() => document.querySelector('.card[data-model="itera-lite"]')?.dataset.status === "error", null, { timeout: 120_000 });
    const status = await page.textContent('.card[data-model="itera-lite"] .status');
    check(status.includes("sha256") && status.includes("does not match"), `a mismatched sha256 is a clear error: "${status.slice(0, 140)}…"`);
    check(await page.isDisabled("#generate"), "Generate stays disabled");
    await page.waitForFunction(() => document.querySelector('.card[data-model="baseline"]').dataset.status === "ready", null, { timeout: 120_000 });
    const r = await page.$eval('.card[data-model="baseline"] [data-role=retrieval]', (e) => [e.dataset.state, e.textContent]);
    check(r[0] === "absent" && r[1].includes("no index"), `a model whose manifest names no index says so: "${r[1]}"`);
  } finally {
    await context.close();
    server.close();
  }
}

async function damagedIndex(browser) {
  // baseline: its manifest's sha256 of index/vectors.bin is wrong. itera-lite: index.json is cut
  // in half, and the manifest lists the cut file (so only the index's own checks can tell).
  const cut = fs.readFileSync(path.join(DIST, "models/itera-lite/index/index.json"), "utf8");
  const half = cut.slice(0, cut.length >> 1);
  const rewrite = {
    "/models/baseline/manifest.json": (text) => {
      const m = JSON.parse(text);
      const f = m.files.find((f) => f.name === "index/vectors.bin");
      f.sha256 = (f.sha256[0] === "0" ? "1" : "0") + f.sha256.slice(1);
      return JSON.stringify(m);
    },
    "/models/itera-lite/index/index.json": () => half,
    "/models/itera-lite/manifest.json": (text) => {
      const m = JSON.parse(text);
      const f = m.files.find((f) => f.name === "index/index.json");
      f.sha256 = crypto.createHash("sha256").update(half).digest("hex");
      f.bytes = Buffer.byteLength(half);
      return JSON.stringify(m);
    },
  };
  const server = await serve(DIST, rewrite);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page, problems } = await openPage(browser, origin);
  try {
    await page.waitForFunction(bothReady, null, { timeout: 180_000 });
    check(true, "both models load although their indexes are damaged");
    const says = { baseline: ["index/vectors.bin", "sha256", "does not match"], "itera-lite": ["index/index.json", "invalid JSON"] };
    for (const [model, words] of Object.entries(says)) {
      const r = await page.$eval(`.card[data-model="${model}"] [data-role=retrieval]`, (e) => [e.dataset.state, e.textContent]);
      check(r[0] === "failed" && words.every((w) => r[1].includes(w)) && r[1].includes("runs without it"), `${model}: a damaged index is a named error on the page: "${r[1].slice(0, 150)}"`);
    }
    await page.check("#use-retrieval");
    await page.fill("#max-tokens", "10");
    await page.click("#generate");
    await page.waitForFunction(() => !document.querySelector("#generate").disabled && [...document.querySelectorAll(".card")].every((c) => c.dataset.status === "done"), null, { timeout: 120_000 });
    for (const model of ["baseline", "itera-lite"]) {
      const card = `.card[data-model="${model}"]`;
      const out = await page.textContent(`${card} .output`);
      check(out.length > (await page.inputValue("#prompt")).length, `${model}: still generates without its index`);
      check((await page.textContent(`${card} [data-role=retrieved]`)).includes("retrieval index unusable"), `${model}: "use retrieval" says the prompt went without retrieval`);
    }
    await page.fill("#qa-question", "Where was Ulara Askowin born?");
    await askQa(page);
    for (const model of ["baseline", "itera-lite"]) {
      const on = await page.$eval(`td[data-answer="${model}"][data-retrieval="on"]`, (td) => td.className);
      const off = await page.$eval(`td[data-answer="${model}"][data-retrieval="off"]`, (td) => [td.className, td.textContent]);
      check(on === "na" && off[0] === "" && /prompt tokens/.test(off[1]), `World QA: ${model} answers without retrieval and marks "with retrieval" as unavailable`);
      check((await page.$(`#qa-answers [data-no-retrieval="${model}"]`)) !== null, `World QA: says why ${model} has no retrieved documents`);
    }
    check(problems.console.length === 0, `no console errors${problems.console.length ? ": " + problems.console.join(" | ") : ""}`);
  } finally {
    await context.close();
    server.close();
  }
}

// The models index (models/pairs.json): the selector lists its pairs; only the chosen pair's
// files are downloaded; choosing another stops the workers and loads its models, which generate;
// the address names the choice (?pair=ID) and a link with it opens that pair. A wrong ?pair=,
// an index that is missing or not JSON, a pair whose models are missing: a notice that names what
// is wrong, and the default pair.
async function modelPairs(browser) {
  const index = JSON.parse(fs.readFileSync(path.join(DIST, "models/pairs.json"), "utf8"));
  const [first, second] = index.pairs;
  if (!second) {
    check(false, `the test build's models index lists two pairs (${index.pairs.length})`);
    return;
  }
  const base = (p, m) => `models/${p[m]}/`;
  const cardBases = (page) => page.$$eval(".card", (cs) => cs.map((c) => c.dataset.base));
  const names = (page) => page.$$eval(".card [data-role=name]", (es) => es.map((e) => e.textContent));
  const pairNotice = (page) => page.$eval("#pair-notice", (e) => (e.hidden ? "" : e.textContent));
  const withServer = async (rewrite, query, fn) => {
    const server = await serve(DIST, rewrite);
    const origin = `http://127.0.0.1:${server.address().port}`;
    const context = await browser.newContext();
    const page = await context.newPage();
    const requests = [];
    page.on("request", (r) => requests.push(new URL(r.url()).pathname));
    try {
      await page.goto(`${origin}/${query}`);
      await fn(page, requests);
    } finally {
      await context.close();
      server.close();
    }
  };

  await withServer({}, "", async (page, requests) => {
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    const options = await page.$$eval("#pair-choice option", (os) => os.map((o) => [o.value, o.textContent]));
    check(JSON.stringify(options) === JSON.stringify(index.pairs.map((p) => [p.id, p.label])), `the selector lists the index's pairs (${options.map((o) => o[0]).join(", ")})`);
    check(await page.inputValue("#pair-choice") === first.id && !(await page.isDisabled("#pair-choice")), `the default pair is the index's first (${first.id}), and another can be chosen`);
    check((await page.textContent("#pair-description")) === first.description, "the pair's description is shown");
    check(JSON.stringify(await cardBases(page)) === JSON.stringify(["baseline", "itera-lite"].map((m) => base(first, m))), "the default pair's models come from models/baseline and models/itera-lite");
    const before = { names: await names(page), sizes: await Promise.all(["baseline", "itera-lite"].map((m) => metric(page, m, 1))) };
    const other = requests.filter((r) => r.startsWith(`/models/${second.id}/`));
    check(other.length === 0, `only the chosen pair's files are downloaded (${other.length} requests for the other pair's)`);

    await page.selectOption("#pair-choice", second.id);
    await page.waitForFunction((b) => JSON.stringify([...document.querySelectorAll(".card")].map((c) => c.dataset.base)) === b,
      JSON.stringify(["baseline", "itera-lite"].map((m) => base(second, m))), { timeout: 30_000 });
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    const after = { names: await names(page), sizes: await Promise.all(["baseline", "itera-lite"].map((m) => metric(page, m, 1))) };
    check(after.names.every((n, i) => n !== before.names[i]) && after.sizes.every((s, i) => s !== before.sizes[i]),
      `choosing "${second.id}" loads its models: ${after.names.join(" / ")}, ${after.sizes.join(" / ")} (were ${before.names.join(" / ")}, ${before.sizes.join(" / ")})`);
    check((await page.textContent("#pair-description")) === second.description && new URL(page.url()).searchParams.get("pair") === second.id,
      `the description follows the pair, and the address names it (${page.url().replace(/^.*\//, "")})`);
    check((await page.$$("#size-chart rect")).length === 14 && !(await page.$("#latency-chart svg")), "the size chart shows the new pair; the per-model charts start afresh");
    await page.fill("#max-tokens", "6");
    await generateAndWait(page);
    for (const model of ["baseline", "itera-lite"]) {
      const out = await page.textContent(`.card[data-model="${model}"] .output`);
      check(out.length > (await page.inputValue("#prompt")).length, `${model}: generates after the switch`);
    }
    check((await page.$$(".card")).length === 2, "the old cards are gone");

    // The address opens the pair it names; the default's files are not fetched then.
    requests.length = 0;
    await page.reload();
    await page.waitForFunction(bothReady, null, { timeout: 120_000 });
    const def = requests.filter((r) => r.startsWith("/models/baseline/") || r.startsWith("/models/itera-lite/"));
    check(await page.inputValue("#pair-choice") === second.id && JSON.stringify(await cardBases(page)) === JSON.stringify(["baseline", "itera-lite"].map((m) => base(second, m))) && def.length === 0,
      `a link with ?pair=${second.id} opens that pair, and only its files are fetched (${def.length} of the default's)`);
    check(await pairNotice(page) === "", "no notice for a good index and a good choice");
  });

  const fallsBack = async (what, rewrite, query, words) => {
    await withServer(rewrite, query, async (page) => {
      await page.waitForFunction(bothReady, null, { timeout: 120_000 });
      const notice = await pairNotice(page);
      const bases = await cardBases(page);
      check(words.every((w) => notice.includes(w)) && JSON.stringify(bases) === JSON.stringify(["models/baseline/", "models/itera-lite/"]),
        `${what}: a notice says so and the default pair loads ("${notice}")`);
    });
  };
  await fallsBack("?pair=nope", {}, "?pair=nope", [`no pair "nope"`, `default pair, "${first.id}"`]);
  await fallsBack("an index that is not JSON", { "/models/pairs.json": (t) => t.slice(0, t.length >> 1) }, "", ["The models index (models/pairs.json): it is not valid JSON", "default pair"]);
  await fallsBack("no index", { "/models/pairs.json": () => null }, `?pair=${second.id}`, ["The models index (models/pairs.json): it is missing (HTTP 404)", "default pair", `asks for the pair "${second.id}"`]);
  const gone = { id: "gone", label: "models that are not there", baseline: "gone/baseline", "itera-lite": "gone/itera-lite" };
  await fallsBack("a pair whose models are missing", { "/models/pairs.json": (t) => JSON.stringify({ pairs: [...JSON.parse(t).pairs, gone] }) }, "?pair=gone",
    ['pair "gone" cannot be loaded', "models/gone/baseline/manifest.json is missing (HTTP 404)", "default pair"]);
  await fallsBack("a pair entry that is wrong", { "/models/pairs.json": (t) => JSON.stringify({ pairs: [{ id: "../up", label: "x", baseline: "../../etc", "itera-lite": "x" }, ...JSON.parse(t).pairs] }) }, "",
    ['The models index (models/pairs.json): pair 1 ("../up") is left out: its "id"']);
}

async function webgpuPath(browser) {
  const server = await serve(DIST);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { context, page, problems } = await openPage(browser, origin);
  const cards = (status) => document.querySelectorAll(".card").length === 2 && [...document.querySelectorAll(".card")].every((c) => c.dataset.status === status);
  const generate = async (what) => {
    await page.click("#generate");
    await page.waitForFunction(() => !document.querySelector("#generate").disabled && [...document.querySelectorAll(".card")].every((c) => c.dataset.status === "done"), null, { timeout: 120_000 });
    for (const model of ["baseline", "itera-lite"]) {
      const out = await page.textContent(`.card[data-model="${model}"] .output`);
      check(out.length > (await page.inputValue("#prompt")).length, `${model}: generates on ${what}`);
    }
  };
  try {
    await page.waitForFunction(cards, "ready", { timeout: 180_000 });
    for (const model of ["baseline", "itera-lite"]) {
      const [kind, text] = await page.$eval(`.card[data-model="${model}"] [data-role=backend]`, (e) => [e.dataset.kind, e.textContent]);
      check(kind === "webgpu" && text.includes("WebGPU"), `${model}: runs on WebGPU (${text})`);
    }
    check((await page.textContent("#backend")).includes("WebGPU"), "the header badge says WebGPU");
    check(!(await page.$eval("#backend-choice", (e) => e.disabled)), "the backend switch is on");
    await page.fill("#max-tokens", "12");
    await generate("the GPU");
    await page.selectOption("#backend-choice", "cpu");
    await page.waitForFunction(() => [...document.querySelectorAll(".card [data-role=backend]")].every((e) => e.dataset.kind === "cpu"), null, { timeout: 30_000 });
    check(true, "both models switch to the CPU");
    await generate("the CPU after the switch");
    await page.selectOption("#backend-choice", "webgpu");
    await page.waitForFunction(() => [...document.querySelectorAll(".card [data-role=backend]")].every((e) => e.dataset.kind === "webgpu"), null, { timeout: 30_000 });
    await generate("the GPU again");
    // The backend chosen stays when another pair is chosen.
    const second = JSON.parse(fs.readFileSync(path.join(DIST, "models/pairs.json"), "utf8")).pairs[1];
    if (second) {
      await page.selectOption("#backend-choice", "cpu");
      await page.waitForFunction(() => [...document.querySelectorAll(".card [data-role=backend]")].every((e) => e.dataset.kind === "cpu"), null, { timeout: 30_000 });
      await page.selectOption("#pair-choice", second.id);
      await page.waitForFunction((id) => document.body.dataset.pair === id, second.id, { timeout: 30_000 });
      await page.waitForFunction(cards, "ready", { timeout: 120_000 });
      const kinds = await page.$$eval(".card [data-role=backend]", (es) => es.map((e) => e.dataset.kind));
      check(kinds.join() === "cpu,cpu" && (await page.$eval("#backend-choice", (e) => e.value)) === "cpu", `the pair "${second.id}" starts on the backend chosen before (${kinds.join(", ")})`);
      await generate(`the CPU, pair "${second.id}"`);
    }
    check(problems.console.length === 0, `no console errors with WebGPU${problems.console.length ? ": " + problems.console.join(" | ") : ""}`);
  } finally {
    await context.close();
    server.close();
  }
}

// Runs `paths` in one Chromium started with `flag` (besides the common ones); a thrown error is
// a failure, and the browser is closed whatever happens.
async function inBrowser(flag, paths) {
  const browser = await launch(flag);
  try {
    for (const path of paths) {
      // E2E_ONLY=hostileInput,workerCrash runs only those (while working on them).
      if (process.env.E2E_ONLY && !process.env.E2E_ONLY.split(",").includes(path.name)) continue;
      await path(browser);
    }
  } catch (e) {
    failures.push(String(e));
    console.log(`FAIL ${e}`);
  } finally {
    await browser.close();
  }
}

// Without WebGPU (no GPU at all), then with it (SwiftShader's adapter).
await inBrowser("--disable-gpu", [happyPath, modelPairs, tamperedManifest, damagedIndex, hostileInput, changedModel, noCacheApi, workerCrash]);
await inBrowser("--enable-unsafe-webgpu", [webgpuPath]);
if (failures.length) {
  console.log(`\n${failures.length} e2e check(s) failed`);
  process.exit(1);
}
console.log("\nall e2e checks passed");
