// The page's latency benchmark, measured: opens a built page in headless Chromium (the CPU
// backend, one worker per model), presses "Benchmark" ROUNDS times (default 2) and prints, per
// model, the decode latency at each context and the decode step's FLOP rate against the GEMV peak
// the workers measured. A measurement, not a test (the tests run the benchmark on tiny models).
//
//   node tests/e2e/bench.mjs DIST [ROUNDS]     (DIST: a page built with the models to measure)

import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const [DIST, ROUNDS = "2"] = process.argv.slice(2);
if (!DIST || !fs.existsSync(path.join(DIST, "index.html")) || !(Number(ROUNDS) >= 1)) {
  console.error("usage: node tests/e2e/bench.mjs DIST [ROUNDS] (DIST: a built page)");
  process.exit(2);
}
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm",
  ".json": "application/json", ".svg": "image/svg+xml" };
const root = path.resolve(DIST);
const server = http.createServer((req, res) => {
  const rel = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const file = path.join(root, path.normalize(rel === "/" ? "/index.html" : rel));
  if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404).end("not found");
    return;
  }
  res.writeHead(200, { "content-type": TYPES[path.extname(file)] || "application/octet-stream" });
  res.end(fs.readFileSync(file));
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.waitForFunction(() => !document.querySelector("#bench").disabled, null, { timeout: 300_000 });
  for (let round = 1; round <= Number(ROUNDS); round++) {
    await page.click("#bench");
    await page.waitForFunction(() => !document.querySelector("#bench").disabled
      && document.querySelector("#decode-efficiency [data-peak]"), null, { timeout: 600_000 });
    const points = await page.$$eval("#latency-chart circle[data-median]", (cs) => cs.map((c) =>
      [c.dataset.model, c.dataset.backend, Number(c.dataset.context), Number(c.dataset.median)]));
    console.log(`round ${round}: ${await page.textContent("#decode-efficiency")}`);
    for (const [model, backend, context, ms] of points) console.log(`  ${model} (${backend}) at ${context}: median ${ms.toFixed(3)} ms`);
  }
} finally {
  await browser.close();
  server.close();
}
