#!/usr/bin/env bash
# Builds native-trainer with `--features cuda` on a machine without a GPU (docs/gpu.md), into
# target/cuda/native-trainer-cuda (stripped): copy that binary to a GPU machine and run it there.
# Installs what it needs and skips what is there: the CUDA compiler and headers from PyPI into
# target/cuda-venv; the patched candle-core (third_party/candle-core) switched to load the CUDA
# driver at run time (stock 0.11.1 links it, which fails where there is no driver). The build runs
# in a copy of the tracked files (target/cuda-ws), so that switch never touches this checkout.
# CUDA_COMPUTE_CAP (default 90: H100 / H200) picks the GPU generation the kernels are built for.
# Flags --bench and --tests also build the throughput bench and itera-model's tests (below).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=target/cuda-venv
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
# One CUDA release, pinned (nvcc 13.0 would pull a newer nvvm otherwise).
# (NVRTC too: scripts/nvrtc-check.py compiles the run-time kernels with it, below.)
"$venv/bin/pip" install -q --disable-pip-version-check nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
  nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88
NV=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$NV/bin/nvcc" ] || { echo "error: no nvcc in $NV/bin after the install" >&2; exit 1; }

# The workspace's files (tracked, and untracked but not ignored), copied (the switch below edits the copy).
# (Emptied first so files deleted here vanish there; tar keeps modification times, so cargo
# rebuilds only what changed. A file edited here while the last build ran can carry an older
# time than that build's start, and cargo would take it as built: so every file whose content
# differs from the last copy's is touched after the copy.)
ws=target/cuda-ws
sums=target/cuda-ws.sha1
[ -d "$ws" ] && (cd "$ws" && find . -type f -not -path './third_party/*' -print0 | xargs -0 -r sha1sum) > "$sums"
rm -rf "$ws" && mkdir -p "$ws"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$ws"
if [ -s "$sums" ]; then
  (cd "$ws" && { sha1sum --quiet -c "$root/$sums" 2>/dev/null || true; } | sed -n 's/: FAILED$//p' | tr '\n' '\0' | xargs -0 -r touch)
fi
bash scripts/vendor-candle.sh # the patched candle-core (git-ignored, so not in the list above)
tar -cf - third_party/candle-core | tar -xf - -C "$ws"

# The copy's candle-core (the workspace's [patch.crates-io] points at third_party/candle-core, with
# the project's backward patch), with cudarc's `dynamic-linking` switched to `dynamic-loading`.
patched=$ws/third_party/candle-core
grep -q '"dynamic-linking",' "$patched/Cargo.toml" || { echo "error: $patched/Cargo.toml has no dynamic-linking feature to switch" >&2; exit 1; }
sed -i 's/"dynamic-linking",/"dynamic-loading",/' "$patched/Cargo.toml"

# candle-kernels links -lcudart: an unversioned name for the PyPI runtime.
mkdir -p target/cuda-lib && ln -sf "$NV/lib/libcudart.so.13" target/cuda-lib/libcudart.so
export PATH="$NV/bin:$PATH" NVCC="$NV/bin/nvcc" CUDA_HOME="$NV" CUDA_ROOT="$NV" CUDA_PATH="$NV" \
  CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" LIBRARY_PATH="$root/target/cuda-lib:${LIBRARY_PATH:-}"
(cd "$ws" && cargo build --release -p native-trainer --features cuda --target-dir "$root/target/cuda")
strip -o target/cuda/native-trainer-cuda target/cuda/release/native-trainer
ls -l target/cuda/native-trainer-cuda
# The kernels that NVRTC compiles at run time on the GPU machine, compiled here by the same
# compiler: an error costs no device time.
python3 scripts/nvrtc-check.py
# --bench: also the throughput bench (`throughput-cuda --device cuda`: the GPU's kernels timed);
# --tests: also itera-model's tests (`itera-model-tests-cuda/{scan,models}`: CUDA against the CPU).
for flag in "$@"; do
  case "$flag" in
    --bench) targets=(--bench throughput) ;;
    --tests) targets=(--test scan --test models) ;;
    *) echo "error: unknown flag $flag (expected --bench or --tests)" >&2; exit 1 ;;
  esac
  exes=$(cd "$ws" && cargo build --release -p itera-model --features cuda "${targets[@]}" --target-dir "$root/target/cuda" \
    --message-format=json \
    | sed -n 's/.*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p')
  [ -n "$exes" ] || { echo "error: cargo named no executable for $flag" >&2; exit 1; }
  mkdir -p target/cuda/itera-model-tests-cuda
  while read -r name exe; do
    case "$flag" in
      --bench) dst=target/cuda/$name-cuda ;;
      *) dst=target/cuda/itera-model-tests-cuda/$name ;;
    esac
    strip -o "$dst" "$exe" && ls -l "$dst"
  done <<<"$exes"
done
