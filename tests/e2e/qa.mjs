// World QA in the built page, measured: asks the page (headless Chromium, the CPU backend) the
// questions of one or more files and counts both models' exact answers with retrieval on and
// off, as a user clicking "Ask" would get them. A file is either what `native-trainer eval
// --retrieval ... --questions-out FILE` wrote (every question asked, with its expected answer and
// set) or an `eval --json` output (its few examples).
//
//   node tests/e2e/qa.mjs [--pair ID] DIST QUESTIONS.json [...]
//
// DIST is a page built with the models that EVAL.json measured (ITERA_MODELS=DIR trunk build).
// `--min MODEL=FRACTION` (repeatable) makes it a check: it exits 1 when MODEL answers less than
// FRACTION of all the questions right with retrieval. `--pair ID` asks the pair ID of the page's
// models index (?pair=ID) instead of its default. The test command runs it that way on the
// shipped pairs (pretrained/, with the demo pair's questions.json); elsewhere it only measures.

import fs from "node:fs";
import path from "node:path";
import { withPage } from "./serve.mjs";

const USAGE = "usage: node tests/e2e/qa.mjs [--min MODEL=FRACTION ...] [--pair ID] DIST EVAL.json [EVAL.json ...] (DIST: a built page)";
const minimum = {}; // model -> least share right with retrieval
const positional = [];
let pair = null; // the models index's pair to ask (null: the page's default)
for (let args = process.argv.slice(2); args.length;) {
  const arg = args.shift();
  if (arg === "--pair") {
    pair = args.shift();
    if (!/^[a-z0-9][a-z0-9_-]*$/.test(pair || "")) { console.error(`--pair wants a pair's id\n${USAGE}`); process.exit(2); }
    continue;
  }
  if (arg !== "--min") { positional.push(arg); continue; }
  const m = /^([\w-]+)=(0(\.\d+)?|1(\.0+)?)$/.exec(args.shift() || "");
  if (!m) { console.error(`--min wants MODEL=FRACTION (a share from 0 to 1), e.g. itera-lite=0.9\n${USAGE}`); process.exit(2); }
  minimum[m[1]] = Number(m[2]);
}
const [DIST, ...EVALS] = positional;
if (!DIST || !fs.existsSync(path.join(DIST, "index.html")) || EVALS.length === 0) {
  console.error(USAGE);
  process.exit(2);
}

// Every example of the eval files, once: [question, expected, kind].
const questions = new Map();
for (const file of EVALS) {
  const ev = JSON.parse(fs.readFileSync(file, "utf8"));
  const sets = Array.isArray(ev) ? ev.map((q) => [q.set, [q]])
    : [["held-out", ev.retrieval?.heldout?.examples], ["never trained on", ev.retrieval?.unseen?.examples],
      ["held-out", ev.world_qa?.examples]];
  for (const [kind, examples] of sets) {
    for (const ex of examples || []) if (!questions.has(ex.question)) questions.set(ex.question, [ex.expected, kind]);
  }
}
if (questions.size === 0) {
  console.error(`no examples in ${EVALS.join(", ")} (expected eval --json output with world QA)`);
  process.exit(2);
}

await withPage(DIST, "#qa-ask", async (page) => {
  if (pair !== null) {
    const shown = await page.evaluate(() => document.body.dataset.pair);
    if (shown !== pair) {
      console.error(`FAIL: the page shows the pair ${shown}, not ${pair} (${await page.textContent("#pair-notice")})`);
      process.exitCode = 1;
      return;
    }
    console.log(`pair ${pair}: ${await page.$eval(`#pair-choice option[value="${pair}"]`, (o) => o.textContent)}`);
  }
  const models = await page.$$eval(".card[data-model]", (cards) => cards.map((c) => c.dataset.model));
  const right = {}; // model -> set -> slot -> count
  const asked = {};
  for (const m of models) right[m] = {};
  for (const [question, [expected, kind]] of questions) {
    await page.fill("#qa-question", question);
    await page.click("#qa-ask");
    await page.waitForFunction(() => !document.querySelector("#qa-ask").disabled
      && document.querySelectorAll("td[data-answer]:not(.pending)").length === 2 * document.querySelectorAll(".card[data-model]").length,
    null, { timeout: 120_000 });
    asked[kind] = (asked[kind] || 0) + 1;
    const line = [];
    for (const m of models) {
      right[m][kind] ||= { on: 0, off: 0 };
      for (const slot of ["on", "off"]) {
        const answer = await page.$eval(`td[data-answer="${m}"][data-retrieval="${slot}"] .answer`, (e) => e.textContent)
          .catch(() => "(no answer)");
        if (answer === expected) right[m][kind][slot] += 1;
        // Wrong answers with retrieval are worth reading; without it nearly all are wrong.
        if (answer !== expected && slot === "on") line.push(`${m}: ${JSON.stringify(answer)}`);
      }
    }
    if (line.length || process.env.QA_VERBOSE) {
      console.log(`${question} [${kind}] expected ${JSON.stringify(expected)}: ${line.join(" · ") || "all right"}`);
    }
  }
  for (const m of models) {
    for (const [kind, n] of Object.entries(asked)) {
      const r = right[m][kind];
      console.log(`${m}, ${kind}: with retrieval ${r.on}/${n}, without ${r.off}/${n}`);
    }
  }
  // The checks: every model named by --min must be in the page and answer enough.
  for (const [m, least] of Object.entries(minimum)) {
    if (!models.includes(m)) {
      console.error(`FAIL: --min names ${m}, which the page does not have (it has ${models.join(", ")})`);
      process.exitCode = 1;
      continue;
    }
    const on = Object.values(right[m]).reduce((sum, r) => sum + r.on, 0);
    const share = on / questions.size;
    const verdict = share >= least ? "ok" : "FAIL";
    console.log(`${verdict}: ${m} answered ${on}/${questions.size} with retrieval (at least ${least} wanted)`);
    if (share < least) process.exitCode = 1;
  }
}, pair === null ? "" : `?pair=${pair}`);
