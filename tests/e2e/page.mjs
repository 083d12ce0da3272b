// End-to-end test of the built page in real headless Chromium (Debian's, driven by
// playwright-core; nothing is downloaded). Run by scripts/test.sh after `trunk build` with the
// tiny test models:   node tests/e2e/page.mjs DIST_DIR
//
// 1. The page loads both models, generates 20 tokens with each, and every metric shows a
//    plausible value; the latency benchmark draws both curves; World QA answers; a reload reads
//    the models from the Cache API; the console has no errors; no request leaves the origin.
// 2. Served with a manifest whose sha256 does not match its file, the page shows a clear error
//    for that model instead of running it.

import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const DIST = process.argv[2];
if (!DIST || !fs.existsSync(path.join(DIST, "index.html"))) {
  console.error(`usage: node tests/e2e/page.mjs DIST_DIR (a built page; ${DIST} has no index.html)`);
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
  ".wasm": "application/wasm", ".json": "application/json", ".svg": "image/svg+xml" };

function serve(dir, rewrite = {}) {
  const root = path.resolve(dir);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const rel = decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname);
    const file = path.join(root, path.normalize(rel));
    if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end("not found");
      return;
    }
    let body = fs.readFileSync(file);
    if (rewrite[rel]) body = Buffer.from(rewrite[rel](body.toString()));
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] || "application/octet-stream", "content-length": body.length });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const failures = [];
function check(ok, what) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures.push(what);
}

async function openPage(browser, origin) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = { console: [], foreign: [] };
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
    check((await page.textContent("#backend")).includes("CPU"), "the backend badge names the CPU backend");

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
      check(p50 > 0 && p95 >= p50 && p95 < 10_000, `${model}: latency p50 ≤ p95, both plausible (${m[4]})`);
      check(parseFloat(m[5]) > 0, `${model}: tokens/s shown (${m[5]})`);
      check(/at (\d+) tokens/.test(m[6]) && Number(m[6].match(/at (\d+) tokens/)[1]) >= 20, `${model}: state memory at the context reached (${m[6]})`);
      check(/µJ$/.test(m[7]) && parseFloat(m[7]) > 0, `${model}: energy estimate shown (${m[7]})`);
    }
    check((await page.textContent("#energy-formula")).includes("Horowitz"), "the energy formula and its source are shown");
    check((await page.$$("#size-chart rect")).length === 6, "the size chart has both models' bars");
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
    await page.waitForFunction(() => document.querySelectorAll("#latency-chart circle").length === 8, null, { timeout: 300_000 });
    check(true, "latency vs context: 4 points for each model");

    const examples = await page.$$("#qa-examples button");
    check(examples.length > 0, "World QA offers example questions from the manifests");
    if (examples.length) {
      await examples[0].click();
      await page.click("#qa-ask");
      await page.waitForFunction(() => !document.querySelector("#qa-ask").disabled && document.querySelectorAll("[data-answer]").length === 2, null, { timeout: 60_000 });
      check(true, "World QA shows an answer row per model");
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

async function tamperedManifest(browser) {
  const rewrite = {
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
    await page.waitForFunction(() => document.querySelector('.card[data-model="itera-lite"]').dataset.status === "error", null, { timeout: 120_000 });
    const status = await page.textContent('.card[data-model="itera-lite"] .status');
    check(status.includes("sha256") && status.includes("does not match"), `a mismatched sha256 is a clear error: "${status.slice(0, 140)}…"`);
    check(await page.isDisabled("#generate"), "Generate stays disabled");
  } finally {
    await context.close();
    server.close();
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  await happyPath(browser);
  await tamperedManifest(browser);
} catch (e) {
  failures.push(String(e));
  console.log(`FAIL ${e}`);
} finally {
  await browser.close();
}
if (failures.length) {
  console.log(`\n${failures.length} e2e check(s) failed`);
  process.exit(1);
}
console.log("\nall e2e checks passed");
