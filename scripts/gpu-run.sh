#!/usr/bin/env bash
# One training run on a GPU machine lent for short commands (docs/gpu.md): trains MODEL with
# retrieval in the loop for at most SECONDS, resuming the run in runs/gpu-MODEL if one is there,
# then (when the run is complete) exports it, evaluates it with retrieval and packs what comes
# back into $OUT (at most 8 files of < 16 MiB: the export without its index as tar.xz pieces,
# metrics.jsonl, eval.json, log.txt). An unfinished run packs its run folder instead, so the
# next command can carry it back and resume.
#
#     source scripts/gpu-env.sh; bash scripts/gpu-run.sh itera-lite 2400 540 [extra train flags]
#
# TRAINER (default native-trainer-cuda on PATH), DEVICE (default cuda), PRESET (default demo),
# BATCH and READING_BATCH (default 32 and 128: text rows of 256 tokens and reading examples per
# step) and QUESTIONS (default 200, per kind) change what it runs; RUN (default gpu-MODEL) names the run
# folder under runs/, so that several runs of one model can go side by side (each with its own
# OUT); UPDATE=1 also evaluates the export on another world's index (seed 1, a knowledge update
# without retraining); PACK=0 leaves an unfinished run in place without packing it (a machine kept warm between
# commands resumes it from there); BACK=q8_0 (or q4_0, f16) also quantizes the export, evaluates
# that copy and packs it instead of the f32 one (for a model too large to come back in f32: the
# seed preset's ~100 MB). EVAL=0 skips the evaluations there (they run on the machine's CPU: the
# seed preset's took longer than a command has left); evaluate what comes back instead. The
# world is the default one (10,000 people, 10% never trained on) and its index is built in
# runs/world-index if missing.
set -euo pipefail
model=${1:?usage: gpu-run.sh MODEL STEPS SECONDS [train flags...]}
steps=${2:?steps}
seconds=${3:?seconds}
shift 3
trainer=${TRAINER:-native-trainer-cuda}
out=${OUT:?OUT must name the folder whose files come back}
name=${RUN:-gpu-$model}
run=runs/$name
index=runs/world-index
started=$(date +%s)
log() { echo "[gpu-run $(($(date +%s) - started)) s] $*" | tee -a "$out/log.txt"; }
mkdir -p "$out" runs

[ -f "$index/index.json" ] || "$trainer" index --out "$index" --queries 200 2>&1 | tail -n 2 | tee -a "$out/log.txt"
# A run folder that came back packed (run.tar.xz.*) is unpacked first.
if [ ! -d "$run" ] && ls "$run".tar.xz.* >/dev/null 2>&1; then
  cat "$run".tar.xz.* | xz -dc | tar -xf - -C runs && log "unpacked $run from its pieces"
fi
resume=()
[ -f "$run/checkpoint.safetensors" ] && resume=(--resume)
log "training $model (${PRESET:-demo}) to $steps steps on ${DEVICE:-cuda}, at most $seconds s ${resume[*]}"
set +e
timeout --signal=KILL "$seconds" "$trainer" train --model "$model" --preset "${PRESET:-demo}" --device "${DEVICE:-cuda}" \
  --world-unseen 0.1 --retrieval "$index" --batch-size "${BATCH:-32}" --reading-batch "${READING_BATCH:-128}" --steps "$steps" \
  --eval-interval 400 --checkpoint-interval 100 --qa-questions 0 "${resume[@]}" "$@" --out "$run" > "$out/train.txt" 2>&1
rc=$?
set -e
tail -n 5 "$out/train.txt" | tee -a "$out/log.txt"
cp "$run/metrics.jsonl" "$out/metrics.jsonl" 2>/dev/null || true
if [ "$rc" -ne 0 ]; then
  # Killed by the time limit (or failed): the checkpoint is whole (written atomically); pack the
  # run folder so that a later command can resume it.
  if [ "${PACK:-1}" = 0 ]; then log "training stopped (exit $rc); $run stays to resume"; exit 0; fi
  log "training stopped (exit $rc); packing $run to resume"
  tar -C runs -cf - "$name" | xz -T0 -3 | split -b 15M - "$out/$name.tar.xz."
  exit 0
fi
export_dir=runs/export-$name
"$trainer" export --checkpoint "$run" --out "$export_dir" 2>&1 | tail -n 1 | tee -a "$out/log.txt"
evals=${EVAL:-1}
[ "$evals" = 1 ] && "$trainer" eval --model "$export_dir" --world-unseen 0.1 --retrieval "$export_dir/index" --qa-questions "${QUESTIONS:-200}" \
  --json "$out/eval.json" 2>&1 | grep -v '^  Q:' | tee -a "$out/log.txt"
# UPDATE=1: also the knowledge update, the same model reading a world it never saw (seed 1).
if [ "${UPDATE:-0}" = 1 ] && [ "$evals" = 1 ]; then
  [ -f runs/world-index-seed1/index.json ] || "$trainer" index --seed 1 --out runs/world-index-seed1 2>&1 | tail -n 1 | tee -a "$out/log.txt"
  "$trainer" eval --model "$export_dir" --seed 1 --retrieval runs/world-index-seed1 --qa-questions "${QUESTIONS:-200}" \
    --json "$out/eval-update.json" 2>&1 | grep -v '^  Q:' | tee -a "$out/log.txt"
fi
back="export-$name"
if [ -n "${BACK:-}" ]; then
  back="export-$name-$BACK"
  "$trainer" quantize --model "$export_dir" --format "$BACK" --out "runs/$back" 2>&1 | tail -n 1 | tee -a "$out/log.txt"
  [ "$evals" = 1 ] && "$trainer" eval --model "runs/$back" --world-unseen 0.1 --retrieval "$export_dir/index" --qa-questions "${QUESTIONS:-200}" \
    --json "$out/eval-$BACK.json" 2>&1 | grep -v '^  Q:' | tee -a "$out/log.txt"
fi
# The index is rebuilt bit for bit by `native-trainer index` (same world): it stays behind.
tar -C runs -cf - --exclude=index "$back" | xz -T0 -3 | split -b 15M - "$out/$back.tar.xz."
log "done; back: $(ls "$out" | tr '\n' ' ')"
