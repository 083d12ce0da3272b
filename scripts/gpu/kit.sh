#!/usr/bin/env bash
# Here (no GPU needed): builds and packs what the commands of scripts/gpu/ run on a GPU machine
# that has no Rust toolchain (docs/gpu.md), into .bin/ (git-ignored: carry it with `run`):
#   native-trainer-cuda.xz, throughput-cuda.xz   scripts/build-cuda.sh --bench
#   models-tests.xz, scan-tests.xz               itera-model's tests with --features cuda
#   webgpu-speed.xz                              itera-webgpu's speed example (Vulkan there)
#   peer-configs.json                            the Hugging Face configs of the peer bench
# and the Vulkan loader's packages into .gl/ (the device README's recipe), for webgpu.sh.
# Takes 20-40 minutes on 2 cores from a cold target/; skips nothing (the sources may have changed).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .bin
bash scripts/build-cuda.sh --bench --tests
xz -T0 -c target/cuda/native-trainer-cuda > .bin/native-trainer-cuda.xz
xz -T0 -c target/cuda/throughput-cuda > .bin/throughput-cuda.xz
xz -T0 -c target/cuda/itera-model-tests-cuda/models > .bin/models-tests.xz
xz -T0 -c target/cuda/itera-model-tests-cuda/scan > .bin/scan-tests.xz
cargo build --release -p itera-webgpu --example speed
strip -o target/webgpu-speed target/release/examples/speed
xz -T0 -c target/webgpu-speed > .bin/webgpu-speed.xz
python3 scripts/peer_bench.py --write-configs .bin/peer-configs.json --presets demo,seed
if ! ls .gl/*.deb >/dev/null 2>&1; then
  grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq && (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
ls -l .bin .gl
