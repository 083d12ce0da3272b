#!/usr/bin/env sh
# trunk post-build hook: copies the model pairs the page serves, with its models index
# (models/pairs.json), into the page's staging folder. Source: $ITERA_MODELS, default pretrained/
# (pretrained/pairs.json: the shipped pairs, the demo pair first); a folder holding baseline/ and
# itera-lite/ exports (ITERA_MODELS=models for the pair `native-trainer` trains, the tests' tiny
# models) is served as one pair. scripts/copy-models.mjs does the work (Node.js is on PATH
# wherever trunk builds the page: its wasm-opt is npm's); it says what each layout means.
set -eu
exec node "$(dirname "$0")/copy-models.mjs" "$1"
