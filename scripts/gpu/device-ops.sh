#!/usr/bin/env bash
# There (a GPU machine; `run` with carry [".bin/models-tests.xz", ".bin/throughput-cuda.xz",
# ".bin/peer-configs.json"]; more of .bin may travel too: it fits beside the 29 MB tree): the fused
# CUDA ops (`Kernels::device_ops`, on by default there) tested against their CPU kernels, then the
# throughput rows timed with them and with candle's elementary ops instead, ROUNDS times
# alternating (default 2); with PEER=1 also the peer bench (PyTorch eager on the same GPU, with the
# matmul peak and MFU; ELEMENTARY=1 times our rows without the device ops there); with PROFILE=1
# last the kernel profile of a seed-baseline step, ours and PyTorch's (kernel_profile.py).
# AUTOCAST=bf16 runs all of it with both sides' matrix products in bf16 (`train --autocast`,
# PyTorch's torch.autocast; the tests stay f32).
# Figures land in $OUT: tests.txt, throughput-*.txt (the rows), peer-gpu.json, and with PROFILE=1
# profile.txt, kernel-profile.json and the two Nsight Compute CSVs (xz).
set -uo pipefail
source scripts/gpu-env.sh ''
out=${OUT:?OUT must name the folder whose files come back}
autocast=${AUTOCAST:-f32}
models-tests --test-threads 1 --nocapture cuda 2>&1 | tail -n 40 | tee "$out/tests.txt"
for r in $(seq "${ROUNDS:-2}"); do
  for row in "baseline demo" "baseline demo, elementary ops" "itera-lite demo" "itera-lite demo, elementary ops" \
    "baseline seed" "baseline seed, elementary ops"; do
    ITERA_AUTOCAST=$autocast ITERA_BENCH_STEPS=${STEPS:-10} throughput-cuda --device cuda --run "$row" --no-kernels 2>&1 \
      | grep -F "| $row |" | tee -a "$out/throughput-$r.txt"
  done
done
if [ "${PEER:-0}" = 1 ]; then
  extra=()
  [ "${ELEMENTARY:-0}" = 1 ] && extra=(--elementary-ops)
  ITERA_BENCH_STEPS=10 python3 scripts/peer_bench.py --no-venv --device cuda --configs .bin/peer-configs.json \
    --ours-bin throughput-cuda --autocast "$autocast" --presets "${PRESETS:-demo,seed}" --pairs "${PAIRS:-baseline}" --rounds "${PEER_ROUNDS:-2}" \
    "${extra[@]}" --out "$out/peer-gpu.json" 2>&1 | tail -n 30
fi
if [ "${PROFILE:-0}" = 1 ]; then
  python3 scripts/gpu/kernel_profile.py --autocast "$autocast" --preset "${PROFILE_PRESET:-seed}" --out "$out" > "$out/profile.txt" 2>&1
  head -n 60 "$out/profile.txt"
  xz -9 "$out"/ncu-*.csv
fi
