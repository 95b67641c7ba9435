#!/usr/bin/env bash
# The README's results table: plain decoding, EAGLE-1 and Clover-2 (the shipped heads) on the six
# Spec-Bench categories of data/spec_bench/question.jsonl, at T = 0 and T = 1. Each
# method and temperature is one `eval` run over the first PER_CATEGORY questions of every category
# (first turn, 128 new tokens), then `metrics` against plain decoding at the same temperature.
# Heads draft at `--tree-budget auto` (chosen per head on this machine, calibrated afresh:
# `--recalibrate`, so a saved choice from an earlier run is not reused): at T = 0 the EAGLE-2 tree of
# the chosen budget, at T = 1 the chosen static tree drawn by sampling.
# Environment: PER_CATEGORY (default 5), OUT (default runs/spec-bench), THREADS (default all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

per="${PER_CATEGORY:-5}"
out="${OUT:-runs/spec-bench}"
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
engine=target/release/clover-engine
q=data/spec_bench/question.jsonl
heads=assets/smollm2-135m-instruct

cargo build --release
mkdir -p "$out"
for t in 0 1; do
  common=(--bench "$q" --per-category "$per" --max-turns 1 --max-new-tokens 128 --temperature "$t")
  "$engine" "${threads[@]}" eval "${common[@]}" --out "$out/plain-t$t.jsonl"
  for head in eagle clover2; do
    "$engine" "${threads[@]}" eval "${common[@]}" --draft "$head" --draft-model "$heads/$head" \
      --tree eagle2 --tree-budget auto --recalibrate --out "$out/$head-t$t.jsonl" 2> >(tee "$out/$head-t$t.log" >&2)
  done
done
for t in 0 1; do
  for m in plain eagle clover2; do
    echo "== $m, T = $t"
    "$engine" metrics --answers "$out/$m-t$t.jsonl" --baseline "$out/plain-t$t.jsonl" --json "$out/$m-t$t.json"
  done
done
