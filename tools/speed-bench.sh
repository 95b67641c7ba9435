#!/usr/bin/env bash
# Where speculation wins on this machine: plain decoding against both shipped heads with the
# static 26-token tree, the EAGLE-2 tree at a few fixed budgets and at `--tree-budget auto`, in one
# `bench` run (methods interleaved prompt by prompt) on the first NUM_PROMPTS MT-bench questions,
# greedy, 128 new tokens; then verify latency against tree size, 1 to 64 nodes.
# Environment: NUM_PROMPTS (default 6), OUT (default runs/speed-bench.json), THREADS (default all),
# MODEL (default: the default model; e.g. a folder made by `import-gguf --dtype keep`).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
model=()
[ -n "${MODEL:-}" ] && model=(--model "$MODEL")
heads=assets/smollm2-135m-instruct
drafts=""
for head in eagle clover2; do
  drafts+="$head:$heads/$head:tree=mc_sim_7b_63,"
  for budget in 3 6; do drafts+="$head:$heads/$head:tree=eagle2:budget=$budget,"; done
  drafts+="$head:$heads/$head:tree=eagle2:budget=auto,"
done
cargo build --release
target/release/clover-engine "${threads[@]}" bench "${model[@]}" --drafts "${drafts%,}" --num-prompts "${NUM_PROMPTS:-6}" \
  --steps 128 --verify-latency 64 --json "${OUT:-runs/speed-bench.json}"
