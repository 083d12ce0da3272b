# Sourced by scripts/serve.sh and scripts/test.sh: installs what the build and the tests need,
# from crates.io, Debian and npm only, and skips whatever is already there.

WASM_BINDGEN_VERSION=0.2.130 # = Cargo.lock = Trunk.toml [tools]
TRUNK_VERSION=0.22.1

# Each step's header also says how long the script has run and what disk and memory are left, so
# that a failed CI log shows whether the machine ran short.
step() {
  printf '\n=== %s\n    (%d s in; disk free: %s; memory available: %s MiB)\n' "$*" "$SECONDS" \
    "$(df -h --output=avail . 2>/dev/null | tail -n 1 | tr -d ' ')" "$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The patched candle-core every crate builds against (third_party/README.md): made from the
# crates.io release and third_party/candle-core.patch, skipped when it is there and current.
ensure_candle() {
  bash scripts/vendor-candle.sh
}

ensure_wasm_target() {
  rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
}

ensure_wasm_bindgen() {
  if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    # Without --locked: a locked dependency of this version is gone from the index (RECIPES.md).
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
  fi
}

ensure_trunk() {
  if ! trunk --version 2>/dev/null | grep -q "$TRUNK_VERSION"; then
    # trunk 0.22 declares a newer rustc than the machine's; it builds fine with this one.
    echo "compiling trunk $TRUNK_VERSION from crates.io (15-30 minutes on 2 cores, once)"
    cargo install trunk --version "$TRUNK_VERSION" --locked --ignore-rust-version
  fi
}

# wasm-opt from npm's binaryen 132 and playwright-core, into ./node_modules (package-lock.json).
ensure_node_tools() {
  if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ]; then
    npm ci --no-audit --no-fund
  fi
  export PATH="$PWD/node_modules/.bin:$PATH"
}

# Mesa's software Vulkan (lavapipe): the native WebGPU parity tests run on it (wgpu, no GPU needed).
ensure_lavapipe() {
  if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] && ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q mesa-vulkan-drivers libvulkan1
  fi
}

ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q chromium chromium-driver
  fi
}
