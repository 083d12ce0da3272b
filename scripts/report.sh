#!/usr/bin/env bash
# Regenerates report/ (efficiency_report.md, results.json, plots): trains whatever models are
# missing, then runs the benchmark harness on this machine. Every number in the report comes from
# this run. ITERA_DATA_DIR overrides the public corpora folder (default ../shared/data).
# `--train-only` stops after training (the benchmark wants a quiet machine: run it later).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${ITERA_DATA_DIR:-../shared/data}"
cargo build --release -p native-trainer
bin=target/release/native-trainer
# Each step's wall time goes to stderr and to runs/report-wall-times.tsv (docs/reproduce.md
# quotes them).
mkdir -p runs
timed() {
  local t0=$SECONDS
  "$@"
  printf '%s\t%s\n' "$((SECONDS - t0))" "$*" | tee -a runs/report-wall-times.tsv >&2
}

# The page's models (generated world corpus: speed, state, world QA).
if [ ! -f models/baseline/manifest.json ] || [ ! -f models/itera-lite/manifest.json ]; then
  timed "$bin"
fi
# A pair trained on real text, for held-out quality: TinyStories V2 train (head) only; the
# held-out texts below are never trained on.
for m in baseline itera-lite; do
  if [ ! -f "models/tinystories/$m/manifest.json" ]; then
    timed "$bin" train --model "$m" --preset demo --corpus "$data/tinystories_v2_train_head.txt" --steps 300 \
      --out "runs/tinystories-$m" --resume --export "models/tinystories/$m"
  fi
done
# The same at the `tiny` preset: a second size on the quality-vs-bytes plot.
for m in baseline itera-lite; do
  if [ ! -f "models/tinystories-tiny/$m/manifest.json" ]; then
    timed "$bin" train --model "$m" --preset tiny --corpus "$data/tinystories_v2_train_head.txt" --steps 1000 \
      --out "runs/tinystories-tiny-$m" --resume --export "models/tinystories-tiny/$m"
  fi
done
# A pair trained on the generated targeted tasks (MQAR, induction, selective copying). The `tiny`
# preset (40-60K parameters) trains at ~40K tokens/s, so it can take the ~12K steps these tasks need
# before the models start to use their context (the `demo` pair stayed at chance for 1.2M tokens).
for m in baseline itera-lite; do
  if [ ! -f "models/tasks/$m/manifest.json" ]; then
    timed "$bin" --threads 1 train --model "$m" --preset tiny --corpus tasks --steps 12000 --batch-size 16 --seq-len 128 \
      --warmup-steps 200 --eval-interval 1000 --checkpoint-interval 2000 \
      --out "runs/tasks-$m" --resume --export "models/tasks/$m"
  fi
done
# The same Itera-Lite with MoE off (plain Mamba blocks): an ablation beside the pair.
if [ ! -f "models/tasks/itera-lite-moe-off/manifest.json" ]; then
  timed "$bin" --threads 1 train --model itera-lite --experts 0 --preset tiny --corpus tasks --steps 12000 --batch-size 16 \
    --seq-len 128 --warmup-steps 200 --eval-interval 1000 --checkpoint-interval 2000 \
    --out "runs/tasks-itera-lite-moe-off" --resume --export "models/tasks/itera-lite-moe-off"
fi
# The same tasks at the `small` preset (d 64, 2 layers: the Mamba paper's size for its synthetic
# tasks, where docs/synthetic-tasks.md finds the recall ability within reach), same recipe.
for m in baseline itera-lite itera-lite-moe-off; do
  if [ ! -f "models/tasks-small/$m/manifest.json" ]; then
    flags="--model ${m%-moe-off}"; [ "$m" = itera-lite-moe-off ] && flags="$flags --experts 0"
    timed "$bin" --threads 1 train $flags --preset small --corpus tasks --steps 12000 --batch-size 16 --seq-len 128 \
      --warmup-steps 200 --eval-interval 1000 --checkpoint-interval 1000 \
      --out "runs/tasks-small-$m" --resume --export "models/tasks-small/$m"
  fi
done
# The same `small` tasks with the paper's recipe (docs/synthetic-tasks.md): the loss on the
# answers alone, fresh instances every row, lr 1e-3 constant, no warmup, weight decay or clipping.
for m in baseline itera-lite itera-lite-moe-off; do
  if [ ! -f "models/tasks-answers/$m/manifest.json" ]; then
    flags="--model ${m%-moe-off}"; [ "$m" = itera-lite-moe-off ] && flags="$flags --experts 0"
    timed "$bin" --threads 1 train $flags --preset small --corpus tasks --task-loss answers --steps 12000 --batch-size 16 \
      --seq-len 128 --lr 1e-3 --min-lr 1e-3 --warmup-steps 0 --weight-decay 0 --grad-clip 0 --eval-interval 1000 \
      --checkpoint-interval 1000 --out "runs/tasks-answers/$m" --resume --export "models/tasks-answers/$m"
  fi
done
# The Mamba paper's induction heads (docs/synthetic-tasks.md): 2 layers of width 64, its recipe
# (batch 8, constant lr, no weight decay, loss on the answer) at lr 3e-3, 6000 steps of 8 × 256.
for m in baseline itera-lite itera-lite-moe-off; do
  if [ ! -f "models/induction-heads/$m/manifest.json" ]; then
    flags="--model ${m%-moe-off}"; [ "$m" = itera-lite-moe-off ] && flags="$flags --experts 0"
    timed "$bin" --threads 1 train $flags --preset small --corpus induction-heads --batch-size 8 --lr 3e-3 --min-lr 3e-3 \
      --warmup-steps 0 --weight-decay 0 --grad-clip 0 --steps 6000 --eval-interval 250 --checkpoint-interval 1000 \
      --out "runs/induction-heads-$m" --resume --export "models/induction-heads/$m"
  fi
done

if [ "${1:-}" = "--train-only" ]; then
  echo "trained; the benchmark is the next run of this script" >&2
  exit 0
fi

# The demo pair trained with retrieval on a GPU, where its exports are in models/gpu-demo/
# (docs/reproduce.md, section 4): the models that read. No GPU here, so nothing trains them.
gpu=()
for m in baseline itera-lite; do [ -f "models/gpu-demo/$m/manifest.json" ] && gpu+=("models/gpu-demo/$m"); done
[ "${#gpu[@]}" = 2 ] || gpu=()
# The seed's size claim (docs/retrieval.md, "The seed's size claim"): the seed-preset baseline
# trained with retrieval on a GPU (models/gpu-seed/baseline: the f16 copy that came back, widened
# by `quantize --format f32`), and the reading Itera-Lites of other sizes, each where it exists:
# the demo one with many places (GPU), the small one, 24,000 steps on the CPU, and the sweep's
# points at the seed baseline's budget (`scripts/gpu/sweep-run.sh` on a GPU: 2,400 steps of
# 32 × 256 + 128 reading examples): the mid pair and the small Itera-Lite, and that budget in 12,000 steps
# of 4 × 256 + 32 for the small one. `bench` asks each one's
# questions with its weights in q8_0 and q4_0 too (--qa-formats).
for d in models/gpu-seed/baseline models/gpu-demo-many/itera-lite models/cpu-small/itera-lite-many-24k \
  models/mid/baseline models/mid/itera-lite models/gpu-small/itera-lite models/gpu-small-12k/itera-lite; do
  [ -f "$d/manifest.json" ] && gpu+=("$d")
done

# The WebGPU speed benchmark as measured on a GPU machine (docs/webgpu.md: `.bin/cmd5.sh` writes
# it there; copy it to report/webgpu-speed.json): its table joins the report, the GPU named.
webgpu=()
[ -f report/webgpu-speed.json ] && webgpu=(--webgpu report/webgpu-speed.json)

# Models trained alike (corpus, preset, steps) form a pair; the first pair listed (the page's
# models) is the one whose size, speed and energy the claims compare. World QA is asked here,
# 200 questions of each kind (the GPU runs' manifests carry none).
timed "$bin" bench --out report --world-qa 200 "${webgpu[@]}" \
  --models models/baseline models/itera-lite "${gpu[@]}" models/tinystories/baseline models/tinystories/itera-lite \
  models/tinystories-tiny/baseline models/tinystories-tiny/itera-lite models/tasks/baseline models/tasks/itera-lite models/tasks/itera-lite-moe-off \
  models/tasks-small/baseline models/tasks-small/itera-lite models/tasks-small/itera-lite-moe-off \
  models/tasks-answers/baseline models/tasks-answers/itera-lite models/tasks-answers/itera-lite-moe-off \
  models/induction-heads/baseline models/induction-heads/itera-lite models/induction-heads/itera-lite-moe-off \
  --eval "tinystories=$data/tinystories_v1_valid_head.txt" \
  --eval "wikitext2=$data/wikitext-2-raw_wiki.valid.raw" \
  --eval "enwik6=$data/enwik6" \
  --eval "alice29=$data/alice29.txt"
echo "report: report/efficiency_report.md"
