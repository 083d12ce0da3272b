// The page's latency benchmark, measured: opens a built page in headless Chromium (the CPU
// backend, one worker per model), presses "Benchmark" ROUNDS times (default 2) and prints, per
// model, the decode latency at each context, the decode step's FLOP rate against the GEMV peak
// the workers measured, and the speed of reading the prompt before each context (prefill). A measurement, not a test (the tests run the benchmark on tiny models).
//
//   node tests/e2e/bench.mjs DIST [ROUNDS]     (DIST: a page built with the models to measure)

import fs from "node:fs";
import path from "node:path";
import { withPage } from "./serve.mjs";

const [DIST, ROUNDS = "2"] = process.argv.slice(2);
if (!DIST || !fs.existsSync(path.join(DIST, "index.html")) || !(Number(ROUNDS) >= 1)) {
  console.error("usage: node tests/e2e/bench.mjs DIST [ROUNDS] (DIST: a built page)");
  process.exit(2);
}
await withPage(DIST, "#bench", async (page) => {
  for (let round = 1; round <= Number(ROUNDS); round++) {
    await page.click("#bench");
    await page.waitForFunction(() => !document.querySelector("#bench").disabled
      && document.querySelector("#decode-efficiency [data-peak]"), null, { timeout: 600_000 });
    const points = await page.$$eval("#latency-chart circle[data-median]", (cs) => cs.map((c) =>
      [c.dataset.model, c.dataset.backend, Number(c.dataset.context), Number(c.dataset.median)]));
    console.log(`round ${round}: ${await page.textContent("#decode-efficiency")}`);
    const prefill = await page.$$eval("#latency-chart circle[data-prefill]", (cs) => cs.map((c) =>
      [c.dataset.model, c.dataset.backend, Number(c.dataset.context), Number(c.dataset.prefill)]));
    for (const [model, backend, context, ms] of points) {
      const pre = prefill.find((p) => p[0] === model && p[1] === backend && p[2] === context);
      console.log(`  ${model} (${backend}) at ${context}: median ${ms.toFixed(3)} ms${pre ? `; prompt read at ${Math.round(1000 / pre[3])} tokens/s` : ""}`);
    }
    console.log(`  ${await page.textContent("#prefill-speed")}`);
  }
});
