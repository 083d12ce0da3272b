// trunk post-build hook (through scripts/copy-models.sh): copies the model pairs the page serves
// into its staging folder, with the page's models index.
//
//     node scripts/copy-models.mjs STAGING_DIR      # source: $ITERA_MODELS, default pretrained/
//
// The source is either
//   - a folder with a models index, `pairs.json` (pretrained/pairs.json: the shipped pairs):
//       {"pairs": [{"id": "demo", "label": "...", "description": "...",
//                   "baseline": "demo/baseline", "itera-lite": "demo/itera-lite"}, ...]}
//     the model folders relative to the index; the first pair is the page's default; or
//   - a folder holding `baseline/` and `itera-lite/` exports (ITERA_MODELS=models, the tests' tiny
//     models, your own pair): one pair, for which an index of one entry is written.
// Each model folder must hold a manifest.json; every file it lists is copied, in its subfolder (a
// retrieval index is `index/...`). The default pair goes to STAGING_DIR/models/baseline and
// models/itera-lite (where the page looks when its index is unusable), pair ID's to
// models/ID/baseline and models/ID/itera-lite, and STAGING_DIR/models/pairs.json lists them with
// the folders relative to models/ (pretrained/README.md, "The page's models index").
import fs from "node:fs";
import path from "node:path";

const MODELS = ["baseline", "itera-lite"];
// What the page accepts too (web/page.js): ids go into URLs (?pair=ID) and folder names.
const ID = /^[a-z0-9][a-z0-9_-]{0,39}$/;

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

const staging = process.argv[2];
if (!staging) fail("usage: node scripts/copy-models.mjs STAGING_DIR");
const dest = path.join(staging, "models");
const src = process.env.ITERA_MODELS || "pretrained";
const indexFile = path.join(src, "pairs.json");

function readManifest(folder) {
  const file = path.join(folder, "manifest.json");
  if (!fs.existsSync(file)) {
    fail(`${file} is missing; set ITERA_MODELS to a folder holding baseline/ and itera-lite/ exports, or a models index pairs.json (\`cargo run --release -p native-trainer\` trains a pair into models/)`);
  }
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    fail(`${file}: ${e.message}`);
  }
}

// Copies the manifest and every file it lists from `from` to `to`.
function copyModel(from, to) {
  const manifest = readManifest(from);
  const names = (Array.isArray(manifest.files) ? manifest.files : []).map((f) => f?.name).filter((n) => typeof n === "string");
  for (const name of [...names, "manifest.json"]) {
    if (path.isAbsolute(name) || name.split(/[\\/]/).includes("..")) {
      console.warn(`warning: ${from}/manifest.json: skipping the file name ${name}`);
      continue;
    }
    const file = path.join(from, name);
    if (fs.existsSync(file)) {
      fs.mkdirSync(path.dirname(path.join(to, name)), { recursive: true });
      fs.copyFileSync(file, path.join(to, name));
    }
  }
  return manifest;
}

let pairs;
if (fs.existsSync(indexFile)) {
  let index;
  try {
    index = JSON.parse(fs.readFileSync(indexFile, "utf8"));
  } catch (e) {
    fail(`${indexFile}: ${e.message}`);
  }
  if (!Array.isArray(index?.pairs) || !index.pairs.length) fail(`${indexFile}: expected {"pairs": [...]} with at least one pair`);
  const seen = new Set();
  pairs = index.pairs.map((p, i) => {
    const where = `${indexFile}: pair ${i + 1}`;
    if (typeof p?.id !== "string" || !ID.test(p.id)) fail(`${where}: "id" must match ${ID} (it goes into the page's URL and folder names)`);
    if (MODELS.includes(p.id) || seen.has(p.id)) fail(`${where}: the id "${p.id}" is taken`);
    seen.add(p.id);
    if (typeof p.label !== "string" || !p.label.trim()) fail(`${where} (${p.id}): "label" must be a non-empty string`);
    if (p.description !== undefined && typeof p.description !== "string") fail(`${where} (${p.id}): "description" must be a string`);
    for (const m of MODELS) {
      if (typeof p[m] !== "string" || !p[m] || path.isAbsolute(p[m])) fail(`${where} (${p.id}): "${m}" must be a folder relative to the index`);
      if (!fs.existsSync(path.join(src, p[m], "manifest.json"))) fail(`${where} (${p.id}): its ${m} folder ${path.join(src, p[m])} has no manifest.json`);
    }
    return { id: p.id, label: p.label, description: p.description || "", from: Object.fromEntries(MODELS.map((m) => [m, path.join(src, p[m])])) };
  });
} else if (MODELS.every((m) => fs.existsSync(path.join(src, m, "manifest.json")))) {
  // Today's layout: one pair. Its id and label are the folder's name.
  const name = path.basename(path.resolve(src));
  const names = MODELS.map((m) => readManifest(path.join(src, m)).name || m);
  pairs = [{
    id: ID.test(name.toLowerCase()) && !MODELS.includes(name.toLowerCase()) ? name.toLowerCase() : "default",
    label: name,
    description: `${names.join(" and ")}, built into the page from ${src} (ITERA_MODELS).`,
    from: Object.fromEntries(MODELS.map((m) => [m, path.join(src, m)])),
  }];
} else {
  fail(`${src} has neither a models index (pairs.json) nor baseline/manifest.json and itera-lite/manifest.json; set ITERA_MODELS to a folder holding baseline/ and itera-lite/ exports (\`cargo run --release -p native-trainer\` trains them into models/)`);
}

const out = [];
pairs.forEach((p, i) => {
  const entry = { id: p.id, label: p.label, description: p.description };
  for (const m of MODELS) {
    entry[m] = i === 0 ? m : `${p.id}/${m}`;
    copyModel(p.from[m], path.join(dest, entry[m]));
  }
  out.push(entry);
});
fs.mkdirSync(dest, { recursive: true });
fs.writeFileSync(path.join(dest, "pairs.json"), JSON.stringify({ pairs: out }, null, 2) + "\n");
console.log(`models: ${out.map((p) => p.id).join(", ")} (default ${out[0].id}) from ${src}`);
