#!/usr/bin/env bash
# There (a GPU machine; `run` with carry [".bin/native-trainer-cuda.xz", ".bin/models-tests.xz"],
# plus the pieces of an unfinished run, `runs/gpu-PRESET-MODEL.tar.xz.*`, to resume one): one
# point of issue 11's sweep, a model of PRESET trained with retrieval and many reading places
# for the seed baseline's budget (2,400 steps of 32 × 256 text + 128 reading examples, 55M
# tokens; lr 3e-3 cosine, the defaults of the presets under seed), for at most SECONDS (default
# 480). The fused CUDA ops' tests run first (20 s), and a failure stops the command before
# anything trains with them. A finished run comes back exported (f32, without its index:
# `native-trainer index` rebuilds it bit for bit) and is evaluated here; an unfinished one comes
# back packed, to be carried into the next command's `runs/`. BATCH, READING_BATCH and STEPS
# spread one budget over more, smaller steps (e.g. BATCH=4 READING_BATCH=32 STEPS=12000: about
# the same 55M tokens, the recipe that taught the small Itera-Lite to read on the CPU).
#
#     MODEL=itera-lite PRESET=mid bash scripts/gpu/sweep-run.sh
set -uo pipefail
source scripts/gpu-env.sh ''
out=${OUT:?OUT must name the folder whose files come back}
model=${MODEL:?MODEL=baseline or MODEL=itera-lite}
preset=${PRESET:?PRESET=tiny, small or mid}
if [ "${TESTS:-1}" = 1 ]; then
  models-tests --test-threads 1 cuda > "$out/tests.txt" 2>&1
  tail -n 5 "$out/tests.txt"
  grep -q "test result: ok" "$out/tests.txt" && ! grep -q "FAILED" "$out/tests.txt" ||
    { echo "sweep-run: the CUDA tests failed; nothing trained" >&2; exit 1; }
fi
RUN=gpu-$preset-$model PRESET=$preset EVAL=0 bash scripts/gpu-run.sh "$model" "${STEPS:-2400}" "${SECONDS_MAX:-480}" \
  --reading-places many
