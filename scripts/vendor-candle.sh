#!/usr/bin/env bash
# Rebuilds third_party/candle-core from the crates.io release of candle-core 0.11.1 and
# third_party/candle-core.patch (third_party/README.md says what the patch changes and why).
#
#     bash scripts/vendor-candle.sh
#
# Needs the release unpacked in cargo's registry (any `cargo fetch` of the workspace before the
# patch, or `cargo fetch` in a project that depends on candle-core = "=0.11.1").
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.11.1
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-$version 2>/dev/null | head -n 1)
[ -n "$src" ] || { echo "vendor-candle: candle-core $version is not in cargo's registry (cargo fetch it first)" >&2; exit 1; }
dest=third_party/candle-core
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/src" "$src/LICENSE" "$tmp/"
# The manifest without the targets and dev-dependencies of the files left out.
python3 - "$src/Cargo.toml" "$tmp/Cargo.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
parts = re.split(r'(?m)^(?=\[)', text)
keep = [p for p in parts if not re.match(r'\[\[(example|test|bench)\]\]|\[dev-dependencies', p)]
open(sys.argv[2], 'w').write(''.join(keep))
PY
patch -s -d "$tmp" -p1 < third_party/candle-core.patch
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "vendor-candle: $dest is candle-core $version + third_party/candle-core.patch"
