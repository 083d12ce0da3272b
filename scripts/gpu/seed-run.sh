#!/usr/bin/env bash
# There (a GPU machine; `run` with carry [".bin/native-trainer-cuda.xz"]): one seed-preset model
# (MODEL: baseline or itera-lite) with retrieval and many reading places, lr 1e-3 with 200 warm-up
# steps, STEPS (default 2,400: 55M tokens, the seed baseline's budget; the seed Itera-Lite, 39.85M
# parameters with its experts run densely, made 35K tokens/s on an H100 without the device ops,
# so about 1,100 s with them if they give it demo Itera-Lite's 1.48×: an estimate, not yet run),
# over two commands on one warm machine:
#   PART=1  trains for at most 540 s and leaves the run on the machine (its checkpoint with the
#           optimizer's moments is too large to come back);
#   PART=2  resumes it for at most 560 s, exports it and brings back a copy without evaluating
#           there: f16 for the baseline (`quantize --format f32` widens it here; evaluate here),
#           q8_0 for Itera-Lite (its 39.85M parameters are 80 MB in f16, over the 64 MiB a command
#           brings back); BACK names another format.
# Issue the second command within the machine's idle release (30 s) of the first's reply. Where
# time is short, fewer STEPS in one command with PART=2 (about 800 for the seed Itera-Lite: an
# unfinished run packed back is too large to come back, 420 MB).
set -euo pipefail
source scripts/gpu-env.sh ''
model=${MODEL:?MODEL=baseline or MODEL=itera-lite}
# AUTOCAST=bf16: the products in bf16 (`train --autocast`), the run folder named for it.
run=gpu-seed-$model${AUTOCAST:+-$AUTOCAST}
flags=(--reading-places many --lr 1e-3 --warmup-steps 200 ${AUTOCAST:+--autocast "$AUTOCAST"})
case "${PART:?PART=1 or PART=2}" in
  1) RUN=$run PRESET=seed PACK=0 bash scripts/gpu-run.sh "$model" "${STEPS:-2400}" 540 "${flags[@]}" ;;
  2) back=f16; [ "$model" = itera-lite ] && back=q8_0
     RUN=$run PRESET=seed BACK=${BACK:-$back} EVAL=0 bash scripts/gpu-run.sh "$model" "${STEPS:-2400}" 560 "${flags[@]}" ;;
  *) echo "PART must be 1 or 2" >&2; exit 2 ;;
esac
