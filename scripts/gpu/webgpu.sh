#!/usr/bin/env bash
# There (a GPU machine; `run` with carry [".bin/webgpu-speed.xz", ".gl"]): the WebGPU speed benchmark on the
# GPU's Vulkan driver (docs/webgpu.md), with NVML energy, into $OUT/webgpu-speed.json.
set -euo pipefail
out=${OUT:?OUT must name the folder whose files come back}
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json WGPU_BACKEND=vulkan
xz -dc .bin/webgpu-speed.xz > /tmp/speed && chmod +x /tmp/speed
RAYON_NUM_THREADS=1 /tmp/speed --presets "${PRESETS:-demo,small,mid,seed}" --json "$out/webgpu-speed.json"
