#!/usr/bin/env bash
# Makes third_party/candle-core (git-ignored): the crates.io release of candle-core 0.11.1 with
# third_party/candle-core.patch applied (third_party/README.md says what the patch changes and
# why). The workspace's [patch.crates-io] builds every crate against it, so no cargo command of
# the workspace works before this has run once; scripts/test.sh, scripts/serve.sh and
# scripts/build-cuda.sh run it first. It skips the work when the copy is already of this patch.
#
#     bash scripts/vendor-candle.sh           # make it if missing or out of date
#     bash scripts/vendor-candle.sh --force   # make it again
#
# The release comes from cargo's registry cache, fetched through cargo (crates.io) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=0.11.1
dest=third_party/candle-core
patch_file=third_party/candle-core.patch
stamp="$version $(sha256sum "$patch_file" | cut -d' ' -f1)"
if [ "${1:-}" != "--force" ] && [ "$(cat "$dest/.itera-patch" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
find_src() { ls -d "$registry"/*/candle-core-$version 2>/dev/null | head -n 1 || true; }
src=$(find_src)
if [ -z "$src" ]; then
  # A throw-away crate outside the workspace that depends on the release: `cargo fetch` there
  # brings it into the registry cache (this workspace's own fetch would need the copy first).
  fetch=$(mktemp -d)
  mkdir -p "$fetch/src" && touch "$fetch/src/lib.rs"
  printf '[package]\nname = "candle-fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\ncandle-core = "=%s"\n' \
    "$version" > "$fetch/Cargo.toml"
  (cd "$fetch" && cargo fetch -q)
  rm -rf "$fetch"
  src=$(find_src)
  [ -n "$src" ] || { echo "vendor-candle: candle-core $version is not in $registry after cargo fetch" >&2; exit 1; }
fi
tmp=$(mktemp -d "$root/third_party/.candle-core.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/src" "$src/LICENSE" "$tmp/"
# The manifest without the targets and dev-dependencies of the files left out (examples, tests, benches).
python3 - "$src/Cargo.toml" "$tmp/Cargo.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
parts = re.split(r'(?m)^(?=\[)', text)
keep = [p for p in parts if not re.match(r'\[\[(example|test|bench)\]\]|\[dev-dependencies', p)]
open(sys.argv[2], 'w').write(''.join(keep))
PY
(cd "$tmp" && git apply -p1 "$root/$patch_file")
echo "$stamp" > "$tmp/.itera-patch"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "vendor-candle: $dest is candle-core $version + $patch_file"
