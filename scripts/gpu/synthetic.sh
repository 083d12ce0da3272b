#!/usr/bin/env bash
# There (a GPU machine; `run` with carry [".bin/native-trainer-cuda.xz"], and INIT's folder): selective copying at the paper's length
# (4,096 positions + 16 markers; docs/synthetic-tasks.md) on the GPU alone, plain Mamba small
# (EXPERTS=0, the default) or Itera-Lite (EXPERTS=8), batch BATCH (default 64, the paper's), lr
# LR (default 1e-3) decaying to MIN_LR (default LR: constant) over STEPS, clipped at CLIP (default 0:
# none), for at most SECONDS_MAX (default 540), resuming runs/sc-gpu if it was carried back
# (runs/sc-gpu.tar.xz.*), else starting from INIT's weights if set (a run folder, carried: the
# curriculum's last stage of docs/synthetic-tasks.md); QA held-out instances per length at the end
# (default 50); packs the run folder back into $OUT, with its metrics.
set -euo pipefail
source scripts/gpu-env.sh ''
out=${OUT:?OUT must name the folder whose files come back}
run=runs/sc-gpu
mkdir -p runs
if [ ! -d "$run" ] && ls "$run".tar.xz.* >/dev/null 2>&1; then cat "$run".tar.xz.* | xz -dc | tar -xf - -C runs; fi
resume=()
if [ -f "$run/checkpoint.safetensors" ]; then resume=(--resume)
elif [ -n "${INIT:-}" ]; then resume=(--init-from "$INIT"); fi
set +e
timeout --signal=KILL "${SECONDS_MAX:-540}" native-trainer-cuda train --device cuda --model itera-lite \
  --experts "${EXPERTS:-0}" --preset small --corpus selective-copying --batch-size "${BATCH:-64}" \
  --lr "${LR:-1e-3}" --min-lr "${MIN_LR:-${LR:-1e-3}}" --warmup-steps 0 --weight-decay 0 --grad-clip "${CLIP:-0}" \
  --steps "${STEPS:-20000}" --qa-questions "${QA:-50}" --eval-interval 250 --checkpoint-interval 100 "${resume[@]}" --out "$run" > "$out/train.txt" 2>&1
set -e
tail -n 5 "$out/train.txt"
cp "$run/metrics.jsonl" "$out/" 2>/dev/null || true
tar -C runs -cf - sc-gpu | xz -T0 -3 | split -b 15M - "$out/sc-gpu.tar.xz."
ls -l "$out"
