#!/usr/bin/env bash
# Trains the draft heads shipped in assets/ for the default model (SmolLM2-135M-Instruct):
#   1. gen-data over ShareGPT conversations [0, 1000), cut at 512 tokens (the last 5% held out);
#   2. distill Clover-2 and EAGLE-1 on that same data with the same batches (2048 tokens a step),
#      learning rate (1e-3), warm-up (20 steps) and linear decay to 0 at step 240 (about one epoch);
#   3. export both heads as bf16 into assets/smollm2-135m-instruct/{clover2,eagle}.
# Every stage resumes: rerun the script (with a larger STEPS, up to 240) to continue training.
# Environment: STEPS (train until this many steps, default 240), RUNS (work folder, default runs/),
# THREADS (CPU threads per distill run, default all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

steps="${STEPS:-240}"
runs="${RUNS:-runs}"
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
engine=target/release/clover-engine

cargo build --release
tools/fetch-default-model.sh
tools/fetch-sharegpt.sh
"$engine" gen-data --out "$runs/sharegpt-512" --start 0 --end 1000 --max-len 512

for head in clover2 eagle; do
  resume=()
  [ -f "$runs/$head/config.json" ] && resume=(--resume)
  "$engine" "${threads[@]}" distill --data "$runs/sharegpt-512" --head "$head" --out "$runs/$head" \
    --steps "$steps" --batch-tokens 2048 --lr 1e-3 --warmup 20 --total-steps 240 --max-len 512 \
    --eval-every 20 --eval-tokens 2048 --seed 0 "${resume[@]}"
  shipped="assets/smollm2-135m-instruct/$head"
  "$engine" export-head --from "$runs/$head" --out "$shipped"
  cp "$runs/$head/loss.svg" "$runs/$head/accuracy.svg" "$shipped/"
  cp "$runs/$head/metrics.jsonl" "$shipped/training-metrics.jsonl"
done
