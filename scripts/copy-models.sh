#!/usr/bin/env sh
# trunk post-build hook: copies the exported models into the page's staging folder.
# Source: $ITERA_MODELS (default: pretrained/demo/, the shipped pair; ITERA_MODELS=models for the
# pair `native-trainer` trains). Each model folder must hold a manifest.json; every
# file it lists is copied, in its subfolder (a retrieval index is `index/...`).
set -eu
dest="$1/models"
src="${ITERA_MODELS:-pretrained/demo}"
for m in baseline itera-lite; do
  if [ ! -f "$src/$m/manifest.json" ]; then
    echo "error: $src/$m/manifest.json is missing; set ITERA_MODELS to a folder holding baseline/ and itera-lite/ exports (\`cargo run --release -p native-trainer\` trains them into models/)" >&2
    exit 1
  fi
  mkdir -p "$dest/$m"
  # Every `"name": "..."` value (file entries, and the model's own name, which is no file).
  for f in $(sed -n 's/.*"name": "\([^"]*\)".*/\1/p' "$src/$m/manifest.json") manifest.json; do
    case "$f" in /* | *..*) echo "warning: $src/$m/manifest.json: skipping the file name $f" >&2; continue ;; esac
    if [ -f "$src/$m/$f" ]; then
      mkdir -p "$(dirname "$dest/$m/$f")"
      cp "$src/$m/$f" "$dest/$m/$f"
    fi
  done
done
