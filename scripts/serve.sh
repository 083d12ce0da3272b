#!/usr/bin/env bash
# The main job, on a fresh machine: install what is missing, train the default models if models/
# lacks them, build the page, and serve it on 127.0.0.1 (PORT, default 8080). ITERA_MODELS=DIR
# serves the pair in DIR/baseline and DIR/itera-lite instead (exports made elsewhere, e.g. on a
# GPU: docs/gpu.md), training nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

step "tools"
ensure_wasm_target
ensure_wasm_bindgen
ensure_node_tools
ensure_trunk

step "models"
if [ -n "${ITERA_MODELS:-}" ]; then
  for m in baseline itera-lite; do
    [ -f "$ITERA_MODELS/$m/manifest.json" ] || { echo "error: ITERA_MODELS=$ITERA_MODELS has no $m/manifest.json" >&2; exit 1; }
  done
  echo "serving the models in $ITERA_MODELS"
elif [ -f models/baseline/manifest.json ] && [ -f models/itera-lite/manifest.json ]; then
  echo "models/baseline and models/itera-lite are there (delete them to retrain)"
else
  cargo run --release -p native-trainer
fi

step "page"
export TRUNK_SKIP_VERSION_CHECK=true
trunk build --release --offline

PORT="${PORT:-8080}"
step "serving the page at http://127.0.0.1:$PORT/ (Ctrl-C stops)"
exec trunk serve --release --offline --address 127.0.0.1 --port "$PORT"
