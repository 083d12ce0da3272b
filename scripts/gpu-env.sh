# Sourced on a GPU machine that has the NVIDIA driver and CUDA 13 libraries but no Rust toolchain,
# before running binaries from `scripts/build-cuda.sh` (docs/gpu.md):
#
#     source scripts/gpu-env.sh [DIR]
#
# cudarc (inside candle) loads libcublas, libcublasLt, libcurand and libnvrtc by their unversioned
# names; a pip-installed CUDA (PyTorch's, for one) has only the versioned files. This links the
# unversioned names in /tmp/itera-cuda-lib to the first match under DIR (default: the folder of
# python3's `nvidia` package, else the first site-packages/nvidia under /opt, /usr and /root;
# from inside a script, `source scripts/gpu-env.sh ''`, or the script's arguments are taken for
# DIR) and puts that folder first
# on LD_LIBRARY_PATH. It also unpacks every `*.xz` of ITERA_BIN (default `.bin`) into
# /tmp/itera-bin, executable, and puts that on PATH.
itera_gpu_env() {
  local libs="${1:-}" lib f n
  if [ -z "$libs" ]; then
    libs=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null ||
      find -L /opt /usr /root -maxdepth 7 -type d -path '*site-packages/nvidia' 2>/dev/null | head -n 1)
  fi
  [ -d "$libs" ] || { echo "gpu-env: no CUDA library folder found (pass one: source scripts/gpu-env.sh DIR)" >&2; return 1; }
  lib=/tmp/itera-cuda-lib
  mkdir -p "$lib"
  for n in cublas cublasLt curand nvrtc; do
    f=$(find "$libs" -name "lib$n.so.*" 2>/dev/null | sort | head -n 1)
    [ -n "$f" ] || { echo "gpu-env: lib$n.so.* is not under $libs" >&2; return 1; }
    ln -sf "$f" "$lib/lib$n.so"
  done
  export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  mkdir -p /tmp/itera-bin
  for f in "${ITERA_BIN:-.bin}"/*.xz; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .xz)
    [ -x "/tmp/itera-bin/$n" ] || { xz -dc "$f" > "/tmp/itera-bin/$n" && chmod +x "/tmp/itera-bin/$n"; }
  done
  export PATH="/tmp/itera-bin:$PATH"
  echo "gpu-env: CUDA libraries from $libs; binaries: $(ls /tmp/itera-bin | tr '\n' ' ')"
}
itera_gpu_env "$@"
