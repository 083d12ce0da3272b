#!/usr/bin/env bash
# Runs every test of the workspace. Installs what it needs first and skips what is already there.
# CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "toolchain"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
cargo --version

step "format"
cargo fmt --all --check

step "native tests (debug build, dependencies optimised)"
# --tests: unit and integration tests only, so no doc-test "0 passed" line closes the log.
cargo test --workspace --tests

step "itera-model builds for wasm32-unknown-unknown"
cargo build -p itera-model --target wasm32-unknown-unknown

step "all tests passed"
