#!/usr/bin/env bash
# The main job, on a fresh machine: install what is missing, build the page with the default
# models, and serve it on 127.0.0.1 (PORT, default 8080). The default models are the pairs shipped
# in pretrained/ (pretrained/pairs.json, the page's models index: the demo pair, trained with
# retrieval on a GPU, 4-bit, which the page opens, and the small pair; pretrained/README.md); where
# they are absent, the pair in models/ is trained here if missing (`native-trainer`, about
# 10 minutes on 2 cores) and served. ITERA_MODELS=DIR serves the pair in DIR/baseline and
# DIR/itera-lite instead (your own exports, e.g. ITERA_MODELS=models), or the pairs of
# DIR/pairs.json, training nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

step "tools"
ensure_candle
ensure_wasm_target
ensure_wasm_bindgen
ensure_node_tools
ensure_trunk

step "models"
if [ -n "${ITERA_MODELS:-}" ]; then
  if [ ! -f "$ITERA_MODELS/pairs.json" ]; then
    for m in baseline itera-lite; do
      [ -f "$ITERA_MODELS/$m/manifest.json" ] || { echo "error: ITERA_MODELS=$ITERA_MODELS has neither pairs.json nor $m/manifest.json" >&2; exit 1; }
    done
  fi
  echo "serving the models in $ITERA_MODELS"
elif [ -f pretrained/pairs.json ] && [ -f pretrained/demo/baseline/manifest.json ] && [ -f pretrained/demo/itera-lite/manifest.json ]; then
  # scripts/copy-models.sh's default: pretrained/pairs.json
  echo "serving the shipped pairs of pretrained/pairs.json, the demo pair first (ITERA_MODELS=models serves your own)"
else
  if [ -f models/baseline/manifest.json ] && [ -f models/itera-lite/manifest.json ]; then
    echo "models/baseline and models/itera-lite are there (delete them to retrain)"
  else
    cargo run --release -p native-trainer
  fi
  export ITERA_MODELS=models
fi

step "page"
export TRUNK_SKIP_VERSION_CHECK=true
trunk build --release --offline

PORT="${PORT:-8080}"
step "serving the page at http://127.0.0.1:$PORT/ (Ctrl-C stops)"
exec trunk serve --release --offline --address 127.0.0.1 --port "$PORT"
