#!/usr/bin/env bash
# Runs every test of the workspace. Installs what it needs first and skips what is already there.
# CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

step "tools"
ensure_candle
ensure_wasm_target
ensure_wasm_bindgen
ensure_chromium
ensure_lavapipe
ensure_node_tools
ensure_trunk
cargo --version

step "format"
cargo fmt --all --check

step "tiny test models (train + export with the real CLI; the native outputs wasm must match)"
cargo build -p native-trainer
models=target/test-models
rm -rf "$models"
# Both read a retrieval index of the world (exported with them as index/); 10% of its people are
# never trained on, only indexed.
target/debug/native-trainer index --world-entities 300 --out "$models/index" --queries 100
for m in baseline itera-lite; do
  target/debug/native-trainer --threads 2 train --model "$m" --preset tiny --world-entities 300 --vocab-size 320 \
    --batch-size 8 --seq-len 64 --steps 150 --lr 5e-3 --qa-questions 6 --world-unseen 0.1 \
    --retrieval "$models/index" --reading-batch 4 --out "$models/runs/$m" --export "$models/$m"
done
# A quantized copy (model.gguf, 8-bit) for the loaders' round trip, native and in the browser.
target/debug/native-trainer quantize --model "$models/itera-lite" --format q8_0 --out "$models/itera-lite-q8_0"
target/debug/native-trainer quantize --model "$models/baseline" --format q8_0 --out "$models/baseline-q8_0"
# The page's models index (scripts/copy-models.mjs): two pairs, so the e2e test can switch.
cat > "$models/pairs.json" <<'JSON'
{"pairs": [
  {"id": "tiny", "label": "tiny pair (f32)", "description": "The tiny test models, trained in the test.", "baseline": "baseline", "itera-lite": "itera-lite"},
  {"id": "tiny-q8", "label": "tiny pair, 8-bit", "description": "The same tiny models, quantized to q8_0.", "baseline": "baseline-q8_0", "itera-lite": "itera-lite-q8_0"}
]}
JSON
cargo run -q -p itera-web --example golden -- "$models"

step "native tests (debug build, dependencies optimised)"
# --tests: unit and integration tests only, so no doc-test "0 passed" line closes the log.
# itera-webgpu's parity tests run on lavapipe (installed above): a missing adapter fails them.
ITERA_WEBGPU_REQUIRED=1 cargo test --workspace --tests

step "wasm: itera-model builds for wasm32; the worker's engine matches native in headless Chromium"
cargo build -p itera-model --target wasm32-unknown-unknown
CHROMEDRIVER=/usr/bin/chromedriver cargo test -p itera-web --target wasm32-unknown-unknown --tests -- --nocapture
CHROMEDRIVER=/usr/bin/chromedriver cargo test -p itera-retrieval --target wasm32-unknown-unknown --tests -- --nocapture
# Both models on the browser's WebGPU (SwiftShader here; webdriver.json enables it) against the CPU.
CHROMEDRIVER=/usr/bin/chromedriver cargo test -p itera-webgpu --target wasm32-unknown-unknown --tests -- --nocapture

step "page: trunk build with the tiny models, then end to end in headless Chromium"
TRUNK_SKIP_VERSION_CHECK=true ITERA_MODELS="$models" trunk build --release --offline --dist target/e2e-dist
node tests/e2e/page.mjs target/e2e-dist

step "the shipped pairs (pretrained/pairs.json): their index rebuilds bit for bit; in the page every pair answers the demo questions"
target/debug/native-trainer index --out target/pretrained-index --queries 0
# pretrained/index is the one copy; each model's index/ is a link to it (pretrained/README.md).
for d in pretrained pretrained/demo/baseline pretrained/demo/itera-lite pretrained/small/baseline pretrained/small/itera-lite pretrained/seed/baseline pretrained/mid/itera-lite; do
  for f in index.json vectors.bin scales.bin idf.bin documents.jsonl; do
    cmp "target/pretrained-index/$f" "$d/index/$f"
  done
done
# A folder of one pair (baseline/ and itera-lite/, no pairs.json) is served as before, as the
# index's only pair, in models/baseline and models/itera-lite.
rm -rf target/one-pair-check && mkdir -p target/one-pair-check
ITERA_MODELS=pretrained/demo sh scripts/copy-models.sh target/one-pair-check
node -e '
  const fs = require("fs"), { pairs } = JSON.parse(fs.readFileSync("target/one-pair-check/models/pairs.json"));
  if (pairs.length !== 1 || pairs[0].baseline !== "baseline" || pairs[0]["itera-lite"] !== "itera-lite") throw new Error(JSON.stringify(pairs));'
for m in baseline itera-lite; do
  (cd target/one-pair-check/models/$m && node -e '
    const fs = require("fs"), crypto = require("crypto");
    for (const f of JSON.parse(fs.readFileSync("manifest.json")).files)
      if (crypto.createHash("sha256").update(fs.readFileSync(f.name)).digest("hex") !== f.sha256) throw new Error(f.name);')
done
# The default build (no ITERA_MODELS), as scripts/serve.sh builds it: every shipped pair.
TRUNK_SKIP_VERSION_CHECK=true trunk build --release --offline --dist target/pretrained-dist
node tests/e2e/qa.mjs --min itera-lite=0.9 --min baseline=0.6 target/pretrained-dist pretrained/demo/questions.json
# The small pair (same world, so the same questions), chosen through the page's address.
node tests/e2e/qa.mjs --pair small --min itera-lite=0.8 --min baseline=0.6 target/pretrained-dist pretrained/demo/questions.json
# The seed's pair: the 26.75M-parameter Transformer (4-bit) beside the small Itera-Lite.
node tests/e2e/qa.mjs --pair seed --min itera-lite=0.8 --min baseline=0.9 target/pretrained-dist pretrained/demo/questions.json
# The seed's claim at equal budget: the same Transformer beside the mid Itera-Lite (4-bit), trained
# for its budget (86.0% / 83.5% of 200 + 200 questions by `eval`; it misses every birth date).
node tests/e2e/qa.mjs --pair budget --min itera-lite=0.75 --min baseline=0.9 target/pretrained-dist pretrained/demo/questions.json

step "all tests passed"
